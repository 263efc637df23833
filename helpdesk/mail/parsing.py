"""Raw bytes -> ``InboundMessage``: the only module that imports mail-parser.

Parsing starts from bytes, never from a decoded str, so 8-bit mail in legacy
charsets reaches the MIME parser intact. Headers are decoded leniently (RFC 2047,
raw UTF-8 per RFC 6532, unknown charsets replaced) because real mail breaks every
rule; a message is only refused when it has no usable structure at all.

Every header is written by someone who may be hostile (SPEC, Round 2: Trust). An
address is kept only when ``helpdesk.core.addresses`` finds it one plain address,
a header longer than ``limits.header_chars`` and a subject longer than
``limits.subject_chars`` are cut, and what was left out or cut becomes an event
for the mail's case (``InboundMessage.parse_events``). Each step is linear in the
size of the mail.
"""
from __future__ import annotations

import base64
import binascii
import email.errors
import email.feedparser
import email.policy
import email.utils
import functools
import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header
from email.message import Message
from html import unescape

import mailparser
import nh3

from helpdesk.core.addresses import NotAnAddress, check_address, split_mailboxes
from helpdesk.core.model import Attachment, InboundMessage
from helpdesk.core.text import display_name, one_line, shown, visible
from helpdesk.mail.bounce import parse_bounce
from helpdesk.mail.charsets import decode_text

# No whitespace or control characters (a Message-ID goes into our own In-Reply-To and
# References headers) and a sane length (the database column holds 998).
_MSGID = re.compile(r"<([^<>\s\x00-\x1f\x7f]{1,900})>")
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """``limits.header_chars`` and ``limits.subject_chars`` (their defaults here)."""

    header_chars: int = 16_000  # a longer header field is cut (before it is decoded)
    subject_chars: int = 1_000  # a longer subject is cut (after it is decoded)


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


class _BodyReader(mailparser.MailParser):
    """mail-parser's reading of a mail's text, HTML and attachments, and nothing more.

    ``MailParser.parse`` also builds its views of the headers (every address header,
    Date and Received parsed with their defects, and a dictionary of every header,
    twice): a third of its time, and of no use here, where every header is read by
    ``_fields`` and ``_AddressReader``. Those two steps are left out; the walk over
    the parts, which is what decides the bodies and the attachments, is mail-parser's
    own. (Its private hooks: a new mail-parser that renames them fails the parsing
    tests at once rather than reading mail differently.)
    """

    def _reset(self) -> None:
        self._attachments: list[dict] = []
        self._text_plain: list[str] = []
        self._text_html: list[str] = []
        self._text_not_managed: list[str] = []
        self._defects: list[dict] = []
        self._defects_categories: set[str] = set()
        self._has_defects = False

    def _make_mail(self, complete: bool = True) -> dict:
        return {}

    def _decode_body_payload(self, part: Message, charset: str, part_index: int) -> str:
        # mail-parser falls back to UTF-8 with replacement when the label's charset
        # fails, which turns a mislabelled legacy body (GBK labelled GB2312, code page
        # 949 labelled KS C 5601...) into nothing but U+FFFD: the customer's text lost.
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            return ""
        return decode_text(payload, part.get_content_charset())


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


# What the email package takes as a line of a header block: a field name and its colon,
# a folded line, or an mbox "From " line.
_HEADER_LINE = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:|[ \t]|From )")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _mended(raw: bytes) -> bytes:
    """The mail as the parsers get it: a broken line among the headers ("X-Spam Status:
    No", a stray word before a field) folded into the header above it.

    The email package ends the header block at such a line and reads the rest, From,
    Subject and all, as the body: a customer's mail without a sender. A broken line is
    only mended when fields follow it; one with none after it is where the body starts
    (a missing blank line), as the package reads it."""
    end = _HEADER_END.search(raw)
    head = raw[:end.start() if end else len(raw)]
    lines = head.split(b"\n")
    broken = [i for i, line in enumerate(lines) if i and line.strip(b"\r")
              and not _HEADER_LINE.match(line)]
    if not broken:
        return raw  # the usual case: no copy
    last_field = max(i for i, line in enumerate(lines) if _HEADER_LINE.match(line))
    for i in broken:
        if i < last_field:
            lines[i] = b" " + lines[i]
    return b"\n".join(lines) + raw[len(head):]


def parse_message(raw: bytes, envelope_recipients: tuple[str, ...] = (),
                  limits: HeaderLimits = HeaderLimits()) -> InboundMessage:
    if not raw or raw.isspace():
        raise UnparseableMessage("empty message")
    events = _Events()
    try:
        msg = _message_from_bytes(_defused(_mended(raw)))
        _cut_headers(msg, limits.header_chars, events)
        if msg.epilogue is None:
            # mail-parser reads the epilogue when a part's start boundary is missing,
            # and fails on a mail cut short, which has none (bounces quoting a cut mail).
            msg.epilogue = ""
        mail = _BodyReader(msg)
    except Exception as exc:  # mail-parser raises a zoo of types on broken MIME
        raise UnparseableMessage(f"mail-parser: {type(exc).__name__}: {exc}") from exc
    fields = _fields(msg)
    if not fields:
        raise UnparseableMessage("no headers")
    headers = _headers(fields)
    addresses = _AddressReader(fields, events)
    sender_name, sender = addresses.first("from")
    on_behalf = addresses.read("sender")
    trace = _trace(msg)
    html = "\n".join(mail.text_html)
    text = "\n".join(mail.text_plain) or html_to_text(html) or _unsplit_body(msg)
    bounce = parse_bounce(msg)
    # Last: reading the attachments empties the parts they came from (see _attachments).
    attachments = tuple(_attachments(mail.attachments, msg))
    del mail, msg
    return InboundMessage(
        message_id=_first_msgid(headers.get("message-id", ())),
        content_hash=hashlib.sha256(raw).hexdigest(),
        sender=sender,
        sender_name=sender_name,
        to=addresses.read("to"),
        cc=addresses.read("cc"),
        reply_to=addresses.read("reply-to"),
        subject=_subject(headers.get("subject", ("",))[0], limits.subject_chars, events),
        date=_date(headers.get("date", ("",))[0]),
        in_reply_to=tuple(_msgids(" ".join(headers.get("in-reply-to", ())))),
        references=tuple(_msgids(" ".join(headers.get("references", ())))),
        text=text,
        html=html,
        attachments=attachments,
        headers=headers,
        envelope_recipients=tuple(dict.fromkeys(
            (*addresses.checked("envelope", envelope_recipients),
             *addresses.read("delivered-to"), *addresses.read("x-original-to")))),
        return_path=addresses.return_path(),
        on_behalf=on_behalf,
        bounce=bounce,
        size=len(raw),
        trace=trace,
        parse_events=events.recorded(),
    )


class _Events:
    """What reading a mail left out or cut, as events for its case: the first
    ``KEPT`` of each type, and how many more there were (a mail with 50,000 bad
    addresses must not become 50,000 rows)."""

    KEPT = 10

    def __init__(self) -> None:
        self._kept: list[tuple[str, dict[str, object]]] = []
        self._counts: Counter[str] = Counter()

    def add(self, type_: str, detail: dict[str, object]) -> None:
        self._counts[type_] += 1
        if self._counts[type_] <= self.KEPT:
            self._kept.append((type_, detail))

    def recorded(self) -> tuple[tuple[str, dict[str, object]], ...]:
        omitted = {t: n - self.KEPT for t, n in self._counts.items() if n > self.KEPT}
        return (*self._kept, *([("events_omitted", omitted)] if omitted else []))


def _cut_headers(msg: Message, header_chars: int, events: _Events) -> None:
    """Cut every header field longer than *header_chars*, in the mail and in each MIME
    part, before anything decodes them: the email package decodes encoded-words in
    time quadratic in a header's length (and mail-parser and the bounce reader use it).

    ``Message._headers`` is the parser's own list of (name, raw value) pairs; it is
    rebuilt here because deleting and re-adding each field would be quadratic too.
    """
    for part in msg.walk():
        if any(len(value) > header_chars for _, value in part._headers):
            part._headers = [(name, _cut(name, value, header_chars, events))
                             for name, value in part._headers]


def _cut(name: str, value: str, header_chars: int, events: _Events) -> str:
    if len(value) <= header_chars:
        return value
    events.add("header_cut", {"header": name.lower(), "chars": len(value),
                              "limit": header_chars})
    value = value[:header_chars]
    if name.lower() in _ADDRESS_HEADERS:
        # An address cut in two may be another, valid one (ana@x.example.evil.org ->
        # ana@x.example): the element the cut fell into goes as a whole.
        value = value[:max(0, value.rfind(","))]
    return value


def _fields(msg: Message) -> list[tuple[str, str]]:
    """(lower-cased name, value) of every header of the mail: unfolded, raw 8-bit bytes
    read as UTF-8 (RFC 6532), encoded-words still encoded."""
    return [(name.lower(), _unfold(_eight_bit(str(value)))) for name, value in msg.raw_items()]


def _eight_bit(value: str) -> str:
    """A header value with the raw 8-bit bytes the parser kept as surrogates read as
    UTF-8 (RFC 6532); bytes that are not UTF-8 are read as windows-1252, the legacy
    charset of most such mail, unless they are UTF-8 with a stray byte or two
    (``charsets.decode_text``)."""
    if value.isascii():
        return value
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # cut in the middle of a character
            return data[:exc.start].decode("utf-8")
        return decode_text(data, None)  # UTF-8 with a stray byte, or windows-1252


def _unsplit_body(msg: Message) -> str:
    """The body of a multipart the parser could not split into parts (no boundary
    parameter, or none of its lines in the body): mail clients show it as text, and
    so do we, rather than store the customer's mail without its words."""
    if msg.get_content_maintype() != "multipart" or not isinstance(msg.get_payload(), str):
        return ""
    data = msg.get_payload(decode=True)
    return decode_text(data, msg.get_content_charset()).strip() if data else ""


def _unfold(value: str) -> str:
    """RFC 5322 section 2.2.3: a folded header is one line again."""
    return value.replace("\r", "").replace("\n", "")


def _decode(value: str) -> str:
    """The text of a header: every encoded-word (RFC 2047) decoded, the rest as it is.

    One word at a time (``email.header.decode_header`` turns the non-ASCII text of a
    whole RFC 6532 header into escapes or an error), so a word that cannot be decoded
    stays as it was written and costs the others nothing. Whitespace between two
    encoded-words is dropped (RFC 2047 section 6.2).
    """
    if "=?" not in value:
        return value
    parts: list[str] = []
    end, after_word = 0, False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[end:match.start()]
        word = _decode_word(match.group(0))
        if not (after_word and word is not None and (not gap or gap.isspace())):
            parts.append(gap)
        parts.append(match.group(0) if word is None else word)
        end, after_word = match.end(), word is not None
    parts.append(value[end:])
    return "".join(parts)


def _decode_word(word: str) -> str | None:
    try:
        pieces = decode_header(word)
    except (ValueError, email.errors.MessageError):  # bad base64, non-ASCII inside
        return None
    text = []
    for data, charset in pieces:
        if isinstance(data, str):
            text.append(data)
            continue
        text.append(decode_text(data, (charset or "").partition("*")[0]))
    return "".join(text)


def _headers(fields: list[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    headers: dict[str, list[str]] = {}
    for name, value in fields:
        headers.setdefault(name, []).append(_decode(value))
    return {k: tuple(v) for k, v in headers.items()}


_TRACE_HEADERS = ("received", "authentication-results")


def _trace(msg: Message) -> tuple[tuple[str, str], ...]:
    """The Received and Authentication-Results headers top down, unfolded: their order
    tells which hop added what (``helpdesk.core.trust``)."""
    return tuple((name.lower(), " ".join(str(value).split())) for name, value in msg.items()
                 if name.lower() in _TRACE_HEADERS)


def _subject(value: str, subject_chars: int, events: _Events) -> str:
    subject = one_line(value)
    if len(subject) > subject_chars:
        events.add("header_cut", {"header": "subject", "chars": len(subject),
                                  "limit": subject_chars})
        subject = subject[:subject_chars].rstrip()
    return subject


_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender", "delivered-to", "x-original-to")
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[qQbB]\?.*?\?=")  # as lenient as email.header's
_MASK = re.compile(r"hdew(\d{1,9})x")


class _AddressReader:
    """The checked addresses of a mail's address headers; every element that is not
    one plain address (``helpdesk.core.addresses``) is left out and recorded."""

    def __init__(self, fields: list[tuple[str, str]], events: _Events) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in fields:
            if name in _ADDRESS_HEADERS or name == "return-path":
                self._values.setdefault(name, []).append(" ".join(value.split()))
        self._events = events

    def read(self, header: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(address for _, address in self._mailboxes(header)))

    def first(self, header: str) -> tuple[str, str]:
        """(display name, address) of the first plain mailbox of *header*, or ("", "")."""
        return next(iter(self._mailboxes(header)), ("", ""))

    def checked(self, header: str, addresses: tuple[str, ...]) -> list[str]:
        """*addresses* that were given alone (an SMTP envelope), checked."""
        found = []
        for text in addresses:
            try:
                found.append(_checked(text))
            except NotAnAddress as exc:
                self._reject(header, text, str(exc))
        return found

    def return_path(self) -> str | None:
        """None: no Return-Path; "": the null sender ``<>``; else the checked address
        (None too, and recorded, when it is not one)."""
        values = self._values.get("return-path")
        if not values:
            return None
        if values[0].strip(" <>") == "":
            return ""
        return next(iter(self._mailboxes("return-path", values[:1])), ("", None))[1]

    def _mailboxes(self, header: str, values: list[str] | None = None) -> list[tuple[str, str]]:
        """(display name, checked address) pairs of *header*.

        Every encoded-word is masked as an opaque atom while the list is split, so
        whatever it decodes to (commas, "@", ":", CR LF) can never become an address
        or a group (RFC 2047 section 5); it is put back afterwards: in a display
        name it is decoded, in an address it makes the element no address at all.
        """
        found = []
        for value in self._values.get(header, []) if values is None else values:
            words: list[str] = []

            def mask(m: re.Match[str]) -> str:
                words.append(m.group(0))
                return f"hdew{len(words) - 1}x"

            def unmask(text: str) -> str:
                return _MASK.sub(lambda m: words[int(m[1])] if int(m[1]) < len(words)
                                 else m[0], text)

            for mailbox in split_mailboxes(_ENCODED_WORD.sub(mask, value)):
                try:
                    if mailbox.problem:
                        raise NotAnAddress(mailbox.problem)
                    address = _checked(unmask(mailbox.address))
                except NotAnAddress as exc:
                    self._reject(header, unmask(mailbox.written), str(exc))
                    continue
                found.append((display_name(_decode(unmask(mailbox.name))), address))
        return found

    def _reject(self, header: str, written: str, reason: str) -> None:
        self._events.add("address_rejected", {"header": header, "value": shown(written),
                                              "reason": reason})


@functools.lru_cache(maxsize=4096)
def _checked(text: str) -> str:
    """``check_address``, remembered for the addresses that passed: a desk's mail comes
    from and to the same few thousand addresses (its own first), and the check is a
    tenth of a parse. Bounded; a rejected text is checked again (and recorded) each time."""
    return check_address(text)


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


_BLOCK_END = re.compile(r"(?i)</(p|div|li|tr|h[1-6])>|<br\s*/?>")


def html_to_text(html: str) -> str:
    """The words of an HTML-only mail, for the places that show plain text."""
    if not html:
        return ""
    stripped = nh3.clean(_BLOCK_END.sub("\n", html), tags=set())
    lines = (" ".join(line.split()) for line in unescape(stripped).splitlines())
    return "\n".join(lines).strip()


def sanitise_filename(name: str) -> str:
    """A file name safe to show and to offer for download: no path, no controls, and
    no bidi override (``invoice<U+202E>fdp.exe`` is shown as ``invoiceexe.pdf``)."""
    name = visible(unicodedata.normalize("NFC", name)).replace("\\", "/").rsplit("/", 1)[-1]
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
