"""The values the pure core works on: plain frozen dataclasses, no I/O.

An inbound message is parsed once at the edge (``helpdesk.mail.parsing``) into an
``InboundMessage``; everything after that reads only these records.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str  # already sanitised: no path separators, no control characters
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class BouncedRecipient:
    address: str
    action: str  # "failed", "delayed", "delivered", ...
    status: str  # RFC 3463 code such as "5.1.1", or "" when the report gives none
    diagnostic: str

    @property
    def permanent(self) -> bool:
        return self.action == "failed" and (self.status.startswith("5") or not self.status)


@dataclass(frozen=True, slots=True)
class Bounce:
    """A delivery status notification about a mail somebody sent."""

    recipients: tuple[BouncedRecipient, ...]
    original_message_id: str | None  # the Message-ID of the mail that bounced, bare (no <>)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One received mail, as the core sees it.

    Addresses are lower-cased addr-specs. Message-IDs are bare (no angle brackets).
    ``headers`` maps lower-cased header names to every value they had, decoded to str.
    """

    message_id: str  # "" when the mail had none
    content_hash: str  # sha256 hex of the raw bytes
    sender: str  # From address ("" when unusable)
    sender_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    subject: str
    date: datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    html: str
    attachments: tuple[Attachment, ...] = ()
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    envelope_recipients: tuple[str, ...] = ()  # SMTP RCPT TO, Delivered-To, X-Original-To
    return_path: str | None = None  # None: no header; "": the null sender <>
    on_behalf: tuple[str, ...] = ()  # the Sender header's address (who sent it for From)
    bounce: Bounce | None = None
    size: int = 0
    # The trace headers, top down, as (lower-cased name, value): "received" and
    # "authentication-results" only. Their order says which hop wrote what (core.trust).
    trace: tuple[tuple[str, str], ...] = ()
    # What reading the mail left out or cut (address_rejected, header_cut, ...), as
    # (type, detail) events for the case it ends up in.
    parse_events: tuple[tuple[str, dict[str, object]], ...] = ()

    def header(self, name: str) -> str:
        """The first value of a header, or "" (names are case-insensitive)."""
        values = self.headers.get(name.lower(), ())
        return values[0] if values else ""

    def has_header(self, name: str) -> bool:
        return name.lower() in self.headers

    @property
    def dedupe_key(self) -> str:
        """What makes two deliveries one mail: its Message-ID, or its bytes' hash."""
        return self.message_id or f"sha256:{self.content_hash}"

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Every Message-ID this mail says it answers, most specific first."""
        seen: dict[str, None] = {}
        for mid in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(mid, None)
        return tuple(seen)


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class MailKind(StrEnum):
    """What a stored message is; also the name of the template that renders outgoing ones."""

    # inbound
    NEW = "new"  # the mail that opened a case
    REPLY = "reply"  # a participant's reply
    STAFF = "staff"  # a staff member's reply (relayed unless it holds only commands)
    MACHINE = "machine"  # auto-replies, bounces, list mail: stored, never answered
    UNVERIFIED = "unverified"  # From a staff address, not verified: internal, never relayed
    # outbound
    ACK = "ack"
    RELAY = "relay"
    REMINDER = "reminder"
    CLOSURE = "closure"
    SOLUTION = "solution"
    REOPENED = "reopened"
    CLOSED_NOTICE = "closed_notice"
    STATUS = "status"
    COMMAND_ERROR = "command_error"
    CREDENTIALS = "credentials"
    MANUAL_REVIEW = "manual_review"
    DUPLICATE = "duplicate"
    NOT_COMPLETED = "not_completed"
    TOO_LARGE = "too_large"
    STAFF_NOTICE = "staff_notice"
    LOGIN = "login"  # a sign-in link for the web portal, to the address that asked
    CASE_LIST = "case_list"  # the answer to `#cases`: the sender's open cases
    UNVERIFIED_STAFF = "unverified_staff"  # to staff: a mail in a staff name was not verified
    SELF_SOLVED = "self_solved"  # to the customer: their `solved` reply resolved the case
    SOLVED_NOTICE = "solved_notice"  # to staff: the customer solved the case themselves
