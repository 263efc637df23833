"""Build outgoing mail as bytes, with the headers that keep other systems quiet.

Headers are built by the email package's header classes (``Address``) from checked
values only: every address passes ``check_address`` again here, so a bug upstream
fails the mail instead of sending it. Text from a customer becomes one harmless line
(``one_line``, ``display_name``), so a subject like ``"Hi\\r\\nBcc: victim@x"``
stays one line, and it is cut (``MAX_TEXT_CHARS``, ``MAX_NAME_CHARS``): the email
package folds a header in time quadratic in its length (a 1 MB subject took minutes).

A mail goes out in 7-bit headers, domains in IDNA (A-label) form, unless one of its
addresses has a UTF-8 local part: then it is an RFC 6532 mail with UTF-8 headers,
which needs a server that offers SMTPUTF8 (see ``outbound.transport``).
"""
from __future__ import annotations

import email.policy
import email.utils
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage

from helpdesk.core.refs import message_id_mac
from helpdesk.core.addresses import ascii_address, check_address
from helpdesk.core.text import display_name

LOOP_HEADER = "X-Helpdesk-Loop"


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who a mail is from and to, and where it sits in its thread."""

    from_address: str
    from_name: str
    to: tuple[str, ...]
    subject: str
    message_id: str  # bare, no angle brackets
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_to: str | None = None
    auto_submitted: str | None = None  # "auto-replied" | "auto-generated" | None for relays
    loop_value: str = ""
    case_ref: str | None = None


def new_message_id(domain: str, secret: bytes) -> str:
    """``helpdesk.<unique>.<mac>@<domain>``: the keyed hash lets us tell a reply naming
    one of our mails from one naming a Message-ID somebody else made up
    (``refs.is_own_message_id``)."""
    unique = secrets.token_hex(8)
    return f"helpdesk.{unique}.{message_id_mac(secret, unique)}@{domain}"


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
# The email package folds a header in time quadratic in its length, and a display name
# of non-ASCII words costs about a millisecond a character: text is cut first. More
# than any subject can be (``limits.subject_chars`` is at most 2,000, plus the tag),
# more than any display name needs.
MAX_TEXT_CHARS = 2_100
MAX_NAME_CHARS = 100


def one_line(text: str) -> str:
    """Customer text made a harmless header value: one line, no control characters, and
    no "=?": the policy would decode what follows as an RFC 2047 encoded-word (text we
    could not decode would be decoded a second time, and can break folding)."""
    return " ".join(_CONTROL.sub("", text[:MAX_TEXT_CHARS]).split()).replace("=?", "= ?")


def _address(addr: str, name: str = "", *, utf8: bool) -> Address:
    """One element of an address header, from a checked address only."""
    check_address(addr)  # raises NotAnAddress: never write what is not one
    local, _, domain = (addr if utf8 else ascii_address(addr) or addr).rpartition("@")
    name = one_line(display_name(name[:MAX_TEXT_CHARS])[:MAX_NAME_CHARS])
    return Address(display_name=name, username=local, domain=domain)


# A Message-ID as RFC 5322 section 3.6.4 has it, id-left "@" id-right. A mail that came
# without one is known by its content hash ("sha256:..."), which is no Message-ID.
_MSG_ID = re.compile(r"[^<>@\s\x00-\x1f\x7f]+@[^<>@\s\x00-\x1f\x7f]+")


def _needs_utf8(addresses: tuple[str, ...]) -> bool:
    """Whether a mail to and from *addresses* must have UTF-8 headers: only a UTF-8
    local part has no ASCII form (a UTF-8 domain has its A-label)."""
    return any(not address.rpartition("@")[0].isascii() for address in addresses)


def build(envelope: Envelope, text: str, html: str, date: datetime) -> bytes:
    utf8 = _needs_utf8((envelope.from_address, *envelope.to, *filter(None, [envelope.reply_to])))
    msg = EmailMessage(policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
    msg["From"] = _address(envelope.from_address, envelope.from_name, utf8=utf8)
    msg["To"] = [_address(a, utf8=utf8) for a in envelope.to]
    msg["Subject"] = one_line(envelope.subject)
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = f"<{envelope.message_id}>"
    if envelope.in_reply_to and _MSG_ID.fullmatch(envelope.in_reply_to):
        msg["In-Reply-To"] = f"<{envelope.in_reply_to}>"
    if references := [mid for mid in envelope.references if _MSG_ID.fullmatch(mid)]:
        msg["References"] = " ".join(f"<{mid}>" for mid in references)
    if envelope.reply_to:
        msg["Reply-To"] = _address(envelope.reply_to, utf8=utf8)
    if envelope.auto_submitted:
        msg["Auto-Submitted"] = envelope.auto_submitted
        msg["Precedence"] = "auto_reply"
    # Asks Exchange and friends not to answer with out-of-office or read receipts.
    msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = envelope.loop_value
    if envelope.case_ref:
        msg["X-Helpdesk-Case"] = envelope.case_ref
    msg.set_content(text, cte="quoted-printable")
    if html:
        msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


def references_for(first: str | None, parent: str | None, previous: tuple[str, ...] = ()) -> tuple[str, ...]:
    """RFC 5322 References: the thread's root, what the parent referenced, the parent."""
    chain = [m for m in (first, *previous, parent) if m]
    return tuple(dict.fromkeys(chain))[-20:]
