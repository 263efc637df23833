"""The database tables, as typed SQLAlchemy 2.x models.

Nothing here does I/O beyond the database, and nothing is SQLite-only: the same
models run on PostgreSQL. Timestamps are aware UTC everywhere (``UTCDateTime``),
because SQLite forgets the zone and a naive datetime is a bug waiting to happen.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; pass an aware UTC value")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Inbound(Base):
    """Every received mail exactly as it came, and what became of it.

    ``(source, source_key)`` is the idempotency key of the transport (IMAP
    ``mailbox:uidvalidity:uid``, SMTP content hash, a file's hash), so a re-delivery
    is recognised before anything is parsed. Failed rows are the quarantine.
    """

    __tablename__ = "inbound"
    __table_args__ = (UniqueConstraint("source", "source_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(200))
    source_key: Mapped[str] = mapped_column(String(300))
    received_at: Mapped[datetime]
    envelope_recipients: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), index=True)  # done | failed
    outcome: Mapped[str | None] = mapped_column(String(40))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("case.id"))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=1)
    # Last on purpose: SQLite builds a row's whole record in memory when it writes
    # it, unless the big blob is the final column (then it is streamed in place).
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class RefCounter(Base):
    """The last number handed out per prefix; bumped inside the case's transaction."""

    __tablename__ = "ref_counter"
    prefix: Mapped[str] = mapped_column(String(8), primary_key=True)
    last: Mapped[int] = mapped_column(Integer)


class Case(Base):
    __tablename__ = "case"
    __table_args__ = (Index("ix_case_dup", "category", "requester_domain", "duplicate_key"),
                      Index("ix_case_opened_by", "opened_by", "created_at"),
                      Index("ix_case_opened_by_domain", "opened_by_domain", "created_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(20), unique=True)
    category: Mapped[str] = mapped_column(String(60), index=True)
    status: Mapped[str] = mapped_column(String(40), index=True)
    subject: Mapped[str] = mapped_column(Text)
    requester: Mapped[str] = mapped_column(String(320), index=True)
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    requester_domain: Mapped[str] = mapped_column(String(255), index=True)
    reply_token: Mapped[str] = mapped_column(String(40))
    duplicate_key: Mapped[str | None] = mapped_column(String(300))
    assignee: Mapped[str | None] = mapped_column(String(320))
    # Who wrote the mail that opened it (From; the requester may be its Reply-To), and
    # that address's domain: what `limits.new_cases_per_sender` counts.
    opened_by: Mapped[str | None] = mapped_column(String(320))
    opened_by_domain: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(index=True)  # the portal sorts by these
    updated_at: Mapped[datetime] = mapped_column(index=True)
    status_since: Mapped[datetime]
    # The waiting clock (waiting / pending_seller / resolved) and the next timer step.
    clock_started_at: Mapped[datetime | None]
    reminders_sent: Mapped[int] = mapped_column(default=0)
    due_at: Mapped[datetime | None] = mapped_column(index=True)
    # When the held new-case staff notice goes out (knowledge_base.hold_staff_notice);
    # None once it went, or when it was dropped because the customer solved the case.
    notice_due_at: Mapped[datetime | None] = mapped_column(index=True)

    participants: Mapped[list[Participant]] = relationship(
        back_populates="case", order_by="Participant.id")


class CaseLink(Base):
    __tablename__ = "case_link"
    __table_args__ = (UniqueConstraint("case_id", "linked_case_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"), index=True)
    linked_case_id: Mapped[int] = mapped_column(ForeignKey("case.id"), index=True)
    reason: Mapped[str] = mapped_column(String(40))  # reopened | unknown_sender


class Suggestion(Base):
    """A knowledge-base article the acknowledgement of a case suggested, as it was then."""

    __tablename__ = "suggestion"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"), index=True)
    rank: Mapped[int]  # 1 = the best
    slug: Mapped[str] = mapped_column(String(300), index=True)
    title: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="")
    score: Mapped[float] = mapped_column(Float)


class CaseAddress(Base):
    """Each support address a case's mail came to."""

    __tablename__ = "case_address"
    __table_args__ = (UniqueConstraint("case_id", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"), index=True)
    address: Mapped[str] = mapped_column(String(320))


class Participant(Base):
    __tablename__ = "participant"
    __table_args__ = (UniqueConstraint("case_id", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"), index=True)
    address: Mapped[str] = mapped_column(String(320), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(20))  # requester | cc
    added_at: Mapped[datetime]
    undeliverable: Mapped[bool] = mapped_column(Boolean, default=False)

    case: Mapped[Case] = relationship(back_populates="participants")


class Message(Base):
    """A mail of a case, in or out. ``dedupe_key`` (the Message-ID, or the content
    hash of a mail that has none) is unique: the same mail never lands twice."""

    __tablename__ = "message"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"), index=True)
    direction: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(20))
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    dedupe_key: Mapped[str] = mapped_column(String(998), unique=True)
    from_addr: Mapped[str] = mapped_column(String(320))
    to_addrs: Mapped[list[str]] = mapped_column(default=list)
    cc_addrs: Mapped[list[str]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text)
    date: Mapped[datetime]
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text, default="")
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))


class Attachment(Base):
    """Stored content-addressed: on disk under its sha256, or in ``data``."""

    __tablename__ = "attachment"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)  # when stored in the database


class Event(Base):
    """The audit trail: every change of a case, with who/why in ``detail``."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"), index=True)
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Outbox(Base):
    """Mail waiting to leave.

    Who gets it, its Message-ID and its threading headers are fixed in the transaction
    that decided to send, so a reply to it threads correctly. The body is rendered
    later, from ``render`` (the template values that are not in the case) and the
    case, by the sender when it first claims the row: ``raw`` is NULL until then and
    never changes after, so a retry sends the very same bytes. Rendering off the
    deciding transaction keeps a sweep of a thousand reminders short.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("case.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    mail_from: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column()
    message_id: Mapped[str] = mapped_column(String(998))
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    render: Mapped[dict[str, Any] | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(10), default="queued")  # queued | sent | dead
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class AutoMail(Base):
    """One row per recipient of each automatic mail: what the rate limits count."""

    __tablename__ = "auto_mail"
    __table_args__ = (Index("ix_auto_mail_address_at", "address", "at"),
                      Index("ix_auto_mail_case_at", "case_id", "at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("case.id"))
    at: Mapped[datetime]


class MailboxState(Base):
    """Per IMAP mailbox: the UID watermark and the health that `status` reports."""

    __tablename__ = "mailbox_state"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    uidvalidity: Mapped[int | None] = mapped_column(Integer)
    last_uid: Mapped[int] = mapped_column(default=0)
    last_fetch_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None]


class HookRun(Base):
    """An activation hook run of a connections case; makes restarts run it once."""

    __tablename__ = "hook_run"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case.id"), index=True)
    attempt: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending|running|succeeded|failed
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    exit_status: Mapped[int | None]
    stdout: Mapped[str | None] = mapped_column(Text)
    stderr_tail: Mapped[str | None] = mapped_column(Text)


class KeyValue(Base):
    """Small persistent settings the daemon makes itself (the reply-token key)."""

    __tablename__ = "key_value"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class WebToken(Base):
    """A link that signs an address in to the web portal, stored as the SHA-256 of
    the token (the token itself is only in the mail).

    ``login``: from `POST /login`, works once, for 15 minutes. ``case``: in every mail
    to a participant, signs that address in to that one case; it can be used again
    until it expires (the person may open the same mail twice, on two devices).
    """

    __tablename__ = "web_token"
    __table_args__ = (Index("ix_web_token_address_at", "address", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(10))  # login | case
    address: Mapped[str] = mapped_column(String(320))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("case.id"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]


class WebSession(Base):
    """A signed-in browser: the cookie holds a random id, the table its SHA-256."""

    __tablename__ = "web_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("case.id"))  # a case link's session
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
