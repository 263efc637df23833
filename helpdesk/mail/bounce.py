"""Recognise delivery status notifications (bounces) and say who bounced and why.

Pure: takes an already parsed ``email.message.Message`` (compat32 or the default policy)
and returns a ``Bounce`` or None. Two paths:

* RFC 3464 ``multipart/report; report-type=delivery-status``: read the per-recipient
  blocks of the ``message/delivery-status`` part.
* The plain-text reports some MTAs still send (Postfix's old style, qmail, Exim): only
  when the sender or subject says it is a bounce, then read the recipient paragraphs.

The bounced mail's Message-ID links the bounce to its case, so it is looked for in the
returned message (``message/rfc822``, ``text/rfc822-headers``, or quoted in the text).

Never raises: bounces are written by every MTA on earth, often badly. Anything
unexpected yields whatever was extracted so far, or None.
"""
from __future__ import annotations

import base64
import binascii
import quopri
import re
from collections.abc import Iterable, Iterator
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr

from helpdesk.core.model import Bounce, BouncedRecipient

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})  # RFC 3464, RFC 6533
_MAX_PARTS = 200  # a real report has 2-4 parts; bound the walk over hostile nesting

_BOUNCE_SENDER = re.compile(r"^(mailer[-_]?daemon|postmaster)([-+._].*)?$", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"^\s*(undelivered mail returned to sender|delivery status notification|mail delivery failed"
    r"|failure notice|undeliverable\b|undelivered mail|delivery failure|returned mail:"
    r"|mail system error|warning: message .* delayed)",
    re.I,
)
# Where the quoted copy of the original message starts in a plain-text bounce.
_COPY_MARKER = re.compile(
    r"^\s*(-+ ?below this line is a copy of the message"  # qmail
    r"|-+ ?this is a copy of the message"  # Exim
    r"|-+ ?the header of the original message is following"  # Exim, headers only
    r"|-+ ?(original|returned|undelivered) message"  # Postfix 1.x, sendmail, others
    r"|-+ ?message headers? follows?)",
    re.I | re.M,
)
# "<addr>: ..." (Postfix, qmail), with Postfix's "(expanded from <alias>)".
_ANGLE_RECIPIENT = re.compile(r"^<([^<>\s]+@[^<>\s]+)>(?:\s*\(expanded from <([^<>\s]*)>\))?:\s*(.*)", re.S)
# Exim lists failed addresses after one of these lines, indented two spaces, details four.
_EXIM_LIST = re.compile(r"(address\(es\) failed|not yet been delivered (is|are)):\s*$", re.I)
_EXIM_ADDRESS = re.compile(r"^\s{1,3}<?([^<>\s]+@[^<>\s]+?)>?(\s.*)?$")
_EXIM_GENERATED = re.compile(r"\(generated from <?([^<>\s()]+@[^<>\s()]+)>?\)", re.I)
_DELAY_WORDING = re.compile(
    r"has not yet been delivered|have not yet been delivered|will continue trying|still being retried"
    r"|this is only a warning|delivery attempts will continue",
    re.I,
)
_ENHANCED_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_BASIC_CODE = re.compile(r"(?<![\d.])([45])\d\d(?![\d.])")
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(.+)$", re.I | re.M)
_BLOCK_SPLIT = re.compile(r"\n[ \t]*\n")


def parse_bounce(msg: Message) -> Bounce | None:
    """The ``Bounce`` that ``msg`` reports, or None when it is not a bounce."""
    try:
        parts = list(_parts(msg))
        reports = [p for p in parts if p.get_content_type() in _DSN_TYPES]
        if reports:
            recipients = _dedupe(r for part in reports for r in _dsn_recipients(part))
            return Bounce(recipients, _original_message_id(msg, parts))
        return _plain_bounce(msg, parts)
    except Exception:  # noqa: BLE001 - garbage in must never crash the pipeline
        return None


# --- walking and decoding -------------------------------------------------------------------


def _parts(msg: Message) -> Iterator[Message]:
    """Every part of ``msg`` in order, NOT descending into attached messages.

    A human forwarding a bounce as an attachment wrote a human mail; and the returned
    original inside a report must not be mistaken for the report itself.
    """
    stack, seen = [msg], 0
    while stack and seen < _MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        if part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def _text(part: Message) -> str:
    """The decoded text of a leaf part ("" when there is none)."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, errors="replace")
    except LookupError:  # unknown charset name
        return data.decode("latin-1")


def _header(msg: Message, name: str) -> str:
    """A header as text, encoded-words decoded, without trusting either policy's parser."""
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            raw = " ".join(str(value).split())
            try:
                return str(make_header(decode_header(raw)))
            except Exception:  # noqa: BLE001 - a broken encoded-word: keep it raw
                return raw
    return ""


def _bare_id(value: str) -> str | None:
    value = value.strip()
    if m := re.search(r"<([^<>\s]+)>", value):
        return m.group(1)
    token = value.split()[0] if value.split() else ""
    return token.strip("<>") or None


def _address(value: str) -> str:
    """``rfc822; <Bob@Example.net>`` -> ``bob@example.net``."""
    value = value.split(";", 1)[1] if ";" in value else value
    return value.strip().strip("<>").strip().lower()


def _status_in(text: str) -> str:
    """An RFC 3463 code found in free text; a bare SMTP 5xx/4xx maps to X.0.0."""
    if m := _ENHANCED_STATUS.search(text):
        return m.group(1)
    if m := _BASIC_CODE.search(text):
        return f"{m.group(1)}.0.0"
    return ""


def _dedupe(recipients: Iterable[BouncedRecipient]) -> tuple[BouncedRecipient, ...]:
    seen: dict[str, BouncedRecipient] = {}
    for r in recipients:
        seen.setdefault(r.address, r)
    return tuple(seen.values())


# --- RFC 3464 ------------------------------------------------------------------------------


def _status_text(part: Message) -> str:
    """The raw text of a delivery-status part, whatever shape the parser left it in.

    The email package splits ``message/delivery-status`` into a list of header-only
    Messages (one per block) and ``message/global-delivery-status`` into one Message whose
    body holds the later blocks. A base64 body ends up as the body of a header-less block.
    Rebuild the text and parse it ourselves, so all three look the same.
    """
    payload = part.get_payload()
    if not isinstance(payload, list):
        return _text(part) if payload else ""
    chunks = []
    for block in payload:
        if not isinstance(block, Message):
            continue
        head = "\n".join(f"{k}: {v}" for k, v in block.raw_items())
        body = block.get_payload()
        chunks.append(head + ("\n\n" + body if isinstance(body, str) and body.strip() else ""))
    text = "\n\n".join(chunks).strip()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if encoding == "base64":
            text = base64.b64decode(text).decode("utf-8", errors="replace")
        elif encoding == "quoted-printable":
            data = quopri.decodestring(text.encode("utf-8", "surrogateescape"))
            text = data.decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        pass  # mislabelled: it was plain text after all
    return text


def _fields(block: str) -> list[tuple[str, str]]:
    """``Name: value`` lines of one block, continuation lines unfolded."""
    fields: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
        elif ":" in line:
            name, value = line.split(":", 1)
            fields.append((name.strip().lower(), value.strip()))
    return fields


def _recipient_blocks(text: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for block in _BLOCK_SPLIT.split(text.replace("\r\n", "\n")):
        current: dict[str, str] = {}
        for name, value in _fields(block):
            # A second recipient field in one block means a missing blank line: start anew.
            if name in ("final-recipient", "original-recipient") and name in current:
                out.append(current)
                current = {}
            current.setdefault(name, value)
        out.append(current)
    return [b for b in out if "final-recipient" in b or "original-recipient" in b]


def _dsn_recipients(part: Message) -> Iterator[BouncedRecipient]:
    for block in _recipient_blocks(_status_text(part)):
        # Original-Recipient is the address WE addressed (before aliases/forwarding), which
        # is the one to mark undeliverable; Final-Recipient is required, so it is the fallback.
        address = _address(block.get("original-recipient", "")) or _address(block.get("final-recipient", ""))
        if "@" not in address:
            continue
        diagnostic = block.get("diagnostic-code", "")
        diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic else diagnostic.strip()
        status = _status_in(block.get("status", "")) or _status_in(diagnostic)
        action = block.get("action", "").split()[0].lower() if block.get("action", "").split() else ""
        if not action:  # required by RFC 3464, but infer it rather than drop the recipient
            action = "delayed" if status.startswith("4") else "failed"
        yield BouncedRecipient(address=address, action=action, status=status, diagnostic=diagnostic)


# --- the original Message-ID ------------------------------------------------------------------


def _original_message_id(msg: Message, parts: list[Message], text: str = "") -> str | None:
    for part in parts:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else None
            if isinstance(inner, Message) and (mid := _bare_id(_header(inner, "Message-ID"))):
                return mid
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/global-headers"):
            if mid := _quoted_message_id(_text(part)):
                return mid
    if text and (mid := _quoted_message_id(text)):
        return mid
    for name in ("X-Original-Message-ID", "In-Reply-To"):
        if mid := _bare_id(_header(msg, name)):
            return mid
    references = _header(msg, "References").split()
    return _bare_id(references[-1]) if references else None


def _quoted_message_id(text: str) -> str | None:
    match = _QUOTED_MESSAGE_ID.search(text)
    return _bare_id(match.group(1)) if match else None


# --- plain-text bounces ------------------------------------------------------------------------


def _looks_like_bounce(msg: Message) -> bool:
    local = parseaddr(_header(msg, "From"))[1].rpartition("@")[0]
    return bool(
        _BOUNCE_SENDER.match(local)
        or _BOUNCE_SUBJECT.match(_header(msg, "Subject"))
        or "@" in _header(msg, "X-Failed-Recipients")  # Exim sets it only on bounces
    )


def _plain_bounce(msg: Message, parts: list[Message]) -> Bounce | None:
    if not _looks_like_bounce(msg):
        return None
    body = next((_text(p) for p in parts if p.get_content_type() == "text/plain"), "")
    body = body.replace("\r\n", "\n")
    marker = _COPY_MARKER.search(body)
    report, copy = (body[: marker.start()], body[marker.start() :]) if marker else (body, "")
    action = "delayed" if _DELAY_WORDING.search(report) else "failed"

    found = [*_angle_recipients(report), *_exim_recipients(report)]
    if not found:  # last resort: Exim's header, without a diagnostic
        failed = getaddresses([_header(msg, "X-Failed-Recipients")])
        found = [(addr.lower(), "") for _, addr in failed if "@" in addr]
    recipients = _dedupe(
        BouncedRecipient(address=addr, action=action, status=_status_in(diag), diagnostic=diag)
        for addr, diag in found
    )
    original = _original_message_id(msg, parts, copy or body)
    if not recipients and original is None:
        return None  # a mailer-daemon mail we cannot read: leave it to the machine rules
    return Bounce(recipients, original)


def _angle_recipients(report: str) -> Iterator[tuple[str, str]]:
    """Postfix and qmail: a paragraph that starts ``<addr>:``; the rest is the diagnostic."""
    for paragraph in _BLOCK_SPLIT.split(report):
        if m := _ANGLE_RECIPIENT.match(paragraph.strip()):
            address = (m.group(2) or m.group(1)).lower()  # the alias we wrote to, if expanded
            yield address, " ".join(m.group(3).split())


def _exim_recipients(report: str) -> Iterator[tuple[str, str]]:
    """Exim: after "The following address(es) failed:", ``  addr`` then indented details."""
    lines = report.split("\n")
    start = next((i + 1 for i, line in enumerate(lines) if _EXIM_LIST.search(line)), None)
    if start is None:
        return
    entries: list[tuple[str, list[str]]] = []
    for line in lines[start:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent >= 4 and entries:
            entries[-1][1].append(line)
        elif m := _EXIM_ADDRESS.match(line):
            entries.append((m.group(1).lower(), []))
        else:
            break  # back at the left margin: the list is over
    for address, details in entries:
        diagnostic = " ".join(" ".join(details).split())
        if g := _EXIM_GENERATED.search(diagnostic):
            address = g.group(1).lower()  # the address we wrote to, before redirection
        yield address, diagnostic
