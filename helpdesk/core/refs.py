"""Reference numbers, subject tags and per-case reply addresses (pure)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable

_TAG = re.compile(r"\[([A-Z]{1,6}-\d{6,})\]")
# Reply and forward prefixes of the mail clients people use, in many languages,
# with the "RE[2]:" / "Re^2:" counters some clients add, and our own tags.
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|antwort|odp|rif|r|ref|réf|res|rv|tr|wg|fw|fwd|doorst|"
    r"enc|encaminhar|vb|vl|ynt|atb|svar|odg|trs|πρθ|απ|σχετ|ответ|回复|回覆|答复|转发|轉寄)"
    r"\s*(?:\[\d+\]|\^\d+|\(\d+\))?\s*[:：]\s*|\[[A-Z]{1,6}-\d{6,}\]\s*)+",
    re.IGNORECASE,
)
_REPLY_ADDRESS = re.compile(r"^(?P<local>[^+@]+)\+(?P<ref>[A-Za-z]{1,6}-\d{6,})\.(?P<token>[a-z2-7]{8})@(?P<domain>.+)$")
_STAFF_REPLY_ADDRESS = re.compile(
    r"^(?P<local>[^+@]+)\+(?P<ref>[A-Za-z]{1,6}-\d{6,})\.s\.(?P<token>[a-z2-7]{16})@(?P<domain>.+)$")


def format_ref(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}"


_TYPED_REF = re.compile(r"^\s*(?:(?P<prefix>[A-Za-z]{1,6})\s*-?\s*)?(?P<number>\d{1,9})\s*$")


def ref_candidates(typed: str, prefixes: Iterable[str]) -> tuple[str, ...]:
    """The references an admin may mean: ``cc-42`` and ``CC-000042`` mean ``CC-000042``;
    a bare ``42`` means 42 of every prefix (the caller keeps those that exist)."""
    m = _TYPED_REF.match(typed)
    if m is None:
        return ()
    number = int(m["number"])
    if m["prefix"]:
        return (format_ref(m["prefix"].upper(), number),)
    return tuple(format_ref(prefix, number) for prefix in dict.fromkeys(prefixes))


def subject_tags(subject: str) -> tuple[str, ...]:
    """Every reference tag in a subject, first one first."""
    return tuple(dict.fromkeys(_TAG.findall(subject)))


def tagged_subject(ref: str, subject: str) -> str:
    """The subject our mail of a case carries: one tag, the customer's words."""
    return f"[{ref}] {strip_prefixes(subject) or '(no subject)'}"


def strip_prefixes(subject: str) -> str:
    """``"AW: RE[2]: [CC-000042] Printer"`` -> ``"Printer"``."""
    return _PREFIX.sub("", " ".join(subject.split())).strip()


def untagged_subject(subject: str) -> str:
    """A new case's subject made from a reply: ``"Re: [CC-000001] Printer"`` -> ``"Printer"``.
    The old tag would otherwise stand in the new case's list row and in all its mail."""
    return " ".join(_TAG.sub(" ", strip_prefixes(subject)).split())


def normalise_subject(subject: str) -> str:
    """For comparing two requests: no prefixes, no tags, case and spacing folded."""
    return " ".join(_TAG.sub(" ", strip_prefixes(subject)).casefold().split())


def reply_token(secret: bytes, ref: str) -> str:
    """An unguessable token for a case: anyone can type a ref, nobody can type this."""
    digest = hmac.new(secret, ref.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:5]).decode().lower()


def reply_address(base_address: str, ref: str, token: str) -> str:
    local, _, domain = base_address.partition("@")
    return f"{local}+{ref}.{token}@{domain}"


def parse_reply_address(address: str) -> tuple[str, str, str] | None:
    """``support+CC-000042.k7f3qabc@x`` -> ``("support@x", "CC-000042", "k7f3qabc")``."""
    m = _REPLY_ADDRESS.match(address.lower())
    if not m:
        return None
    return f"{m['local']}@{m['domain']}", m["ref"].upper(), m["token"]


def staff_reply_token(secret: bytes, ref: str, staff_address: str) -> str:
    """The token of one staff member's reply address for a case: keyed with their
    address too, so it is a secret only the mail sent to them carries, and a reply to
    it proves that they wrote it. Longer than a case's token: it grants #commands."""
    message = f"staff:{ref}:{staff_address.lower()}".encode()
    return base64.b32encode(hmac.new(secret, message, hashlib.sha256).digest()[:10]).decode().lower()


def staff_reply_address(base_address: str, ref: str, token: str) -> str:
    local, _, domain = base_address.partition("@")
    return f"{local}+{ref}.s.{token}@{domain}"


def parse_staff_reply_address(address: str) -> tuple[str, str, str] | None:
    """``support+CC-000042.s.<16 chars>@x`` -> ``("support@x", "CC-000042", token)``."""
    m = _STAFF_REPLY_ADDRESS.match(address.lower())
    if not m:
        return None
    return f"{m['local']}@{m['domain']}", m["ref"].upper(), m["token"]


def base_address(address: str) -> str:
    """The support address a case's or a staff member's reply address stands for,
    else the address itself."""
    parsed = parse_reply_address(address) or parse_staff_reply_address(address)
    return parsed[0] if parsed else address.lower()


def message_id_mac(secret: bytes, unique: str) -> str:
    """What makes one of our Message-IDs ours: a keyed hash of its unique part."""
    digest = hmac.new(secret, f"message-id:{unique}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode().lower()


_OWN_MESSAGE_ID = re.compile(r"^helpdesk\.(?P<unique>[0-9a-f]{16})\.(?P<mac>[a-z2-7]{16})@(?P<domain>.+)$")


def is_own_message_id(message_id: str, domain: str, secret: bytes) -> bool:
    """Did we generate this Message-ID (``helpdesk.<unique>.<mac>@<our domain>``)?
    Anyone who saw one of our mails can repeat it, but nobody can make up a new one."""
    m = _OWN_MESSAGE_ID.match(message_id.lower())
    if not m or m["domain"] != domain.lower():
        return False
    return hmac.compare_digest(m["mac"], message_id_mac(secret, m["unique"]))
