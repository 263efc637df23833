"""Raw bytes -> ``InboundMessage``: the only module that imports mail-parser.

Parsing starts from bytes, never from a decoded str, so 8-bit mail in legacy
charsets reaches the MIME parser intact. Headers are decoded leniently (RFC 2047,
unknown charsets replaced) because real mail breaks every rule; a message is only
refused when it has no usable structure at all.
"""
from __future__ import annotations

import base64
import email.errors
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

_MSGID = re.compile(r"<([^<>\s]+)>")
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


class UnparseableMessage(Exception):
    """The bytes are not a mail we can read at all."""


def parse_message(raw: bytes, envelope_recipients: tuple[str, ...] = ()) -> InboundMessage:
    if not raw.strip():
        raise UnparseableMessage("empty message")
    try:
        mail = mailparser.parse_from_bytes(raw)
    except Exception as exc:  # mail-parser raises a zoo of types on broken MIME
        raise UnparseableMessage(f"mail-parser: {type(exc).__name__}: {exc}") from exc
    msg: Message = mail.message
    headers = _headers(msg)
    if not headers:
        raise UnparseableMessage("no headers")
    sender_name, sender = _first_address(headers.get("from", ()))
    return InboundMessage(
        message_id=_first_msgid(headers.get("message-id", ())),
        content_hash=hashlib.sha256(raw).hexdigest(),
        sender=sender,
        sender_name=sender_name,
        to=_addresses(headers.get("to", ())),
        cc=_addresses(headers.get("cc", ())),
        reply_to=_addresses(headers.get("reply-to", ())),
        subject=_one_line(headers.get("subject", ("",))[0]),
        date=_date(headers.get("date", ("",))[0]),
        in_reply_to=tuple(_msgids(" ".join(headers.get("in-reply-to", ())))),
        references=tuple(_msgids(" ".join(headers.get("references", ())))),
        text="\n".join(mail.text_plain) or html_to_text("\n".join(mail.text_html)),
        html="\n".join(mail.text_html),
        attachments=tuple(_attachments(mail.attachments)),
        headers=headers,
        envelope_recipients=tuple(dict.fromkeys(
            [a.lower() for a in envelope_recipients]
            + list(_addresses(headers.get("delivered-to", ()) + headers.get("x-original-to", ()))))),
        return_path=_return_path(headers),
        bounce=parse_bounce(msg),
        size=len(raw),
    )


def _decode(value: object) -> str:
    text = str(value)
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _headers(msg: Message) -> dict[str, tuple[str, ...]]:
    headers: dict[str, list[str]] = {}
    for name, value in msg.items():
        headers.setdefault(name.lower(), []).append(_decode(value))
    return {k: tuple(v) for k, v in headers.items()}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for _name, addr in email.utils.getaddresses(list(values)):
        addr = addr.strip().lower()
        if "@" in addr and not any(c.isspace() for c in addr):
            found.setdefault(addr, None)
    return tuple(found)


def _first_address(values: tuple[str, ...]) -> tuple[str, str]:
    for name, addr in email.utils.getaddresses(list(values)):
        if "@" in addr:
            return _one_line(name), addr.strip().lower()
    return "", ""


def _msgids(text: str) -> list[str]:
    ids = _MSGID.findall(text)
    if not ids and text.strip() and " " not in text.strip():
        ids = [text.strip().strip("<>")]  # some clients omit the angle brackets
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


def _attachments(items: list[dict]) -> list[Attachment]:
    result = []
    for item in items:
        payload = item.get("payload") or ""
        if item.get("binary"):
            data = base64.b64decode(payload)
        else:
            data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
        result.append(Attachment(
            filename=sanitise_filename(str(item.get("filename") or "attachment")),
            content_type=str(item.get("mail_content_type") or "application/octet-stream"),
            data=data,
        ))
    return result
