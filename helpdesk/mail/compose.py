"""Build outgoing mail as bytes, with the headers that keep other systems quiet.

Headers go through the email package's policy, which refuses CR/LF in a value;
we additionally fold any whitespace in customer-supplied text to single spaces,
so a subject like ``"Hi\\r\\nBcc: victim@x"`` stays one harmless line.
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

LOOP_HEADER = "X-Helpdesk-Loop"
#: The most customer text (a subject) one header of ours carries. The email package
#: parses and folds a header in time quadratic in its length (a 400 KB subject cost
#: 6 s); no mail client shows more than this.
MAX_HEADER_TEXT = 2000


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


def new_message_id(domain: str) -> str:
    return f"helpdesk.{secrets.token_hex(12)}@{domain}"


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """Customer text made a harmless header value: one line, no control characters, and
    no "=?": the policy would decode what follows as an RFC 2047 encoded-word (text we
    could not decode would be decoded a second time, and can break folding)."""
    return " ".join(_CONTROL.sub("", text).split()).replace("=?", "= ?")


def _address(addr: str, name: str = "") -> Address:
    local, _, domain = addr.partition("@")
    return Address(display_name=one_line(name), username=local, domain=domain)


def build(envelope: Envelope, text: str, html: str, date: datetime) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = _address(envelope.from_address, envelope.from_name)
    msg["To"] = [_address(a) for a in envelope.to]
    msg["Subject"] = one_line(envelope.subject[:4 * MAX_HEADER_TEXT])[:MAX_HEADER_TEXT]
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = f"<{envelope.message_id}>"
    if envelope.in_reply_to:
        msg["In-Reply-To"] = f"<{envelope.in_reply_to}>"
    if envelope.references:
        msg["References"] = " ".join(f"<{mid}>" for mid in envelope.references)
    if envelope.reply_to:
        msg["Reply-To"] = _address(envelope.reply_to)
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
