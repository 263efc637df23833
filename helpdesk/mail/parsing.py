"""Raw bytes -> ``InboundMessage``: the only module that imports mail-parser.

Parsing starts from bytes, never from a decoded str, so 8-bit mail in legacy
charsets reaches the MIME parser intact. Headers are decoded leniently (RFC 2047,
unknown charsets replaced) because real mail breaks every rule; a message is only
refused when it has no usable structure at all.
"""
from __future__ import annotations

import base64
import binascii
import email.errors
import email.feedparser
import email.policy
import email.utils
import hashlib
import re
import unicodedata
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from html import unescape

import mailparser
import nh3

from helpdesk.core.model import Attachment, InboundMessage
from helpdesk.mail.bounce import parse_bounce

# No whitespace or control characters (a Message-ID goes into our own In-Reply-To and
# References headers) and a sane length (the database column holds 998).
_MSGID = re.compile(r"<([^<>\s\x00-\x1f\x7f]{1,900})>")
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


class UnparseableMessage(Exception):
    """The bytes are not a mail we can read at all."""


_FEED_CHUNK = 64 * 1024


def _message_from_bytes(raw: bytes) -> Message:
    """``email.message_from_bytes(raw)`` (what ``mailparser.parse_from_bytes`` does),
    fed to the same parser in 64 KB pieces.

    The one-shot call decodes the whole mail to a str and reads it back through a
    ``StringIO``, which stores 4 bytes per character: a 25 MB mail peaked at +164 MB.
    Fed in pieces, the result is the same and the peak about twice the mail.
    """
    parser = email.feedparser.BytesFeedParser(policy=email.policy.compat32)
    view = memoryview(raw)
    for start in range(0, len(raw), _FEED_CHUNK):
        parser.feed(bytes(view[start:start + _FEED_CHUNK]))
    return parser.close()


# An "=?" that no "?=" closes within 200 characters of its line. An encoded-word is at
# most 75 characters (RFC 2047 section 2); longer ones are broken anyway.
_UNCLOSED_WORD = re.compile(rb"=\?(?![^\r\n]{0,200}?\?=)")


def _defused(raw: bytes) -> bytes:
    """The mail as the parsers get it: in header blocks (the mail's, and each MIME part's
    after a ``--boundary`` line) every unclosed "=?" is broken up as "= ?".

    The email package's encoded-word regex scans the rest of the line for a "?=" from
    every "=?": quadratic, so one crafted 56 KB header cost 14 s of CPU in parsing (and
    a 1 MB one hours). Only the parsers see this copy; the raw bytes are kept as received.
    """
    if _UNCLOSED_WORD.search(raw) is None:
        return raw  # the usual case: no copy
    lines = raw.splitlines(keepends=True)
    in_header = True
    for i, line in enumerate(lines):
        if not line.strip():
            in_header = False
        elif line.startswith(b"--"):
            in_header = True  # a MIME boundary (or a signature): headers may follow
        elif in_header and b"=?" in line:
            lines[i] = _UNCLOSED_WORD.sub(b"= ?", line)
    return b"".join(lines)


def parse_message(raw: bytes, envelope_recipients: tuple[str, ...] = ()) -> InboundMessage:
    if not raw or raw.isspace():
        raise UnparseableMessage("empty message")
    try:
        mail = mailparser.MailParser(_message_from_bytes(_defused(raw)))
    except Exception as exc:  # mail-parser raises a zoo of types on broken MIME
        raise UnparseableMessage(f"mail-parser: {type(exc).__name__}: {exc}") from exc
    msg: Message = mail.message
    headers = _headers(msg)
    if not headers:
        raise UnparseableMessage("no headers")
    raw_addresses = _raw_address_headers(msg)
    trace = _trace(msg)
    sender_name, sender = _first_address(raw_addresses.get("from", ()))
    html = "\n".join(mail.text_html)
    text = "\n".join(mail.text_plain) or html_to_text(html)
    bounce = parse_bounce(msg)
    # Last: reading the attachments empties the parts they came from (see _attachments).
    attachments = tuple(_attachments(mail.attachments, msg))
    del mail, msg
    return InboundMessage(
        message_id=_first_msgid(headers.get("message-id", ())),
        content_hash=hashlib.sha256(raw).hexdigest(),
        sender=sender,
        sender_name=sender_name,
        to=_addresses(raw_addresses.get("to", ())),
        cc=_addresses(raw_addresses.get("cc", ())),
        reply_to=_addresses(raw_addresses.get("reply-to", ())),
        subject=_one_line(headers.get("subject", ("",))[0]),
        date=_date(headers.get("date", ("",))[0]),
        in_reply_to=tuple(_msgids(" ".join(headers.get("in-reply-to", ())))),
        references=tuple(_msgids(" ".join(headers.get("references", ())))),
        text=text,
        html=html,
        attachments=attachments,
        headers=headers,
        envelope_recipients=tuple(dict.fromkeys(
            [a.lower() for a in envelope_recipients]
            + list(_addresses(raw_addresses.get("delivered-to", ())
                              + raw_addresses.get("x-original-to", ()))))),
        return_path=_return_path(headers),
        bounce=bounce,
        size=len(raw),
        trace=trace,
    )


def _decode(value: object) -> str:
    text = str(value)
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, UnicodeError, ValueError, email.errors.MessageError):  # CharsetError too
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _headers(msg: Message) -> dict[str, tuple[str, ...]]:
    headers: dict[str, list[str]] = {}
    for name, value in msg.items():
        headers.setdefault(name.lower(), []).append(_decode(value))
    return {k: tuple(v) for k, v in headers.items()}


_TRACE_HEADERS = ("received", "authentication-results")


def _trace(msg: Message) -> tuple[tuple[str, str], ...]:
    """The Received and Authentication-Results headers top down, unfolded: their order
    tells which hop added what (``helpdesk.core.trust``)."""
    return tuple((name.lower(), " ".join(str(value).split())) for name, value in msg.items()
                 if name.lower() in _TRACE_HEADERS)


_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "delivered-to", "x-original-to")


def _raw_address_headers(msg: Message) -> dict[str, tuple[str, ...]]:
    """Address headers as received, encoded-words still encoded: addresses are parsed
    first and display names decoded after (RFC 2047 section 5), so a display name like
    ``=?utf-8?q?Ana=0D=0ABcc:_victim@evil.example?=`` can never smuggle in an address
    (see ``_address_pairs``)."""
    found: dict[str, list[str]] = {}
    for name, value in msg.items():
        if name.lower() in _ADDRESS_HEADERS:
            found.setdefault(name.lower(), []).append(" ".join(str(value).split()))
    return {k: tuple(v) for k, v in found.items()}


def _one_line(text: str) -> str:
    return " ".join(text.split())


_ENCODED_WORD = re.compile(r"=\?[^?]*\?[qQbB]\?.*?\?=")  # as lenient as email.header's
_MASK = re.compile(r"hdew(\d+)x")


def _address_pairs(values: tuple[str, ...]) -> list[tuple[str, str]]:
    """(display name, addr-spec) pairs of raw address headers.

    Every encoded-word is masked as an opaque atom while the list is parsed, so whatever
    it decodes to (commas, "@", ":", CR LF) can never become an address or a group; it
    is put back afterwards, for ``_decode`` to turn into the display name.
    """
    pairs = []
    for value in values:
        words: list[str] = []

        def mask(m: re.Match[str]) -> str:
            words.append(m.group(0))
            return f"hdew{len(words) - 1}x"

        def unmask(text: str) -> str:
            return _MASK.sub(lambda m: words[int(m[1])] if int(m[1]) < len(words) else m[0],
                             text)

        for name, addr in email.utils.getaddresses([_ENCODED_WORD.sub(mask, value)]):
            pairs.append((unmask(name), unmask(addr)))
    return pairs


def _addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for _name, addr in _address_pairs(values):
        addr = addr.strip().lower()
        if _usable(addr):
            found.setdefault(addr, None)
    return tuple(found)


def _first_address(values: tuple[str, ...]) -> tuple[str, str]:
    for name, addr in _address_pairs(values):
        if _usable(addr.strip()):
            return _one_line(_decode(name)), addr.strip().lower()
    return "", ""


def _usable(addr: str) -> bool:
    """An address we may write to: it goes into our headers and SMTP envelopes."""
    return "@" in addr and addr.isprintable() and not any(c.isspace() for c in addr)


def _msgids(text: str) -> list[str]:
    ids = _MSGID.findall(text)
    bare = text.strip().strip("<>")
    if not ids and bare and _MSGID.fullmatch(f"<{bare}>"):
        ids = [bare]  # some clients omit the angle brackets
    return ids


def _first_msgid(values: tuple[str, ...]) -> str:
    ids = _msgids(values[0]) if values else []
    return ids[0] if ids else ""


def _date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _return_path(headers: dict[str, tuple[str, ...]]) -> str | None:
    if "return-path" not in headers:
        return None
    value = headers["return-path"][0].strip()
    return value.strip("<>").strip().lower()


_BLOCK_END = re.compile(r"(?i)</(p|div|li|tr|h[1-6])>|<br\s*/?>")


def html_to_text(html: str) -> str:
    """The words of an HTML-only mail, for the places that show plain text."""
    if not html:
        return ""
    stripped = nh3.clean(_BLOCK_END.sub("\n", html), tags=set())
    lines = (" ".join(line.split()) for line in unescape(stripped).splitlines())
    return "\n".join(lines).strip()


def sanitise_filename(name: str) -> str:
    """A file name safe to show and to offer for download: no path, no controls."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_FILENAME.sub("_", name).strip(" .")
    return name[:200] or "attachment"


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")


def _b64decode(payload: str | bytes) -> bytes:
    """Base64 as leniently as the email package reads it: real attachments come with
    stray characters and broken padding, and must not cost the customer's message."""
    try:
        return base64.b64decode(payload)
    except (binascii.Error, ValueError):
        text = payload.decode("ascii", "ignore") if isinstance(payload, bytes) else payload
        clean = _NOT_BASE64.sub("", text.split("=", 1)[0])
        clean = clean[:len(clean) - 1] if len(clean) % 4 == 1 else clean
        return base64.b64decode(clean + "=" * (-len(clean) % 4))


def _attachments(items: list[dict], msg: Message) -> list[Attachment]:
    """The attachments mail-parser found, as bytes; *msg* is of no use afterwards.

    For a base64 part mail-parser's payload is the part's own string (no copy), so the
    wire text and the decoded file would both be held until the end of the parse: 1.75x
    the attachments. Each string is let go here as soon as its bytes are decoded (the
    part is emptied), so a large mail costs one part's worth at a time.
    """
    holders = {id(part._payload): part for part in msg.walk() if isinstance(part._payload, str)}
    result = []
    for item in items:
        payload = item.get("payload") or ""
        item["payload"] = None
        part = holders.pop(id(payload), None)
        if part is not None and part._payload is payload:
            part._payload = ""  # the last other reference: freed once decoded below
        if item.get("binary"):
            data = _b64decode(payload)
        else:
            data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
        del payload
        result.append(Attachment(
            filename=sanitise_filename(str(item.get("filename") or "attachment")),
            content_type=str(item.get("mail_content_type") or "application/octet-stream"),
            data=data,
        ))
    return result
