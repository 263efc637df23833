"""Queue a case's mail: render it, build it, and write it to the outbox.

This runs inside the transaction of whatever decided to send (an inbound mail,
a timer, a command), so the mail and the change that caused it commit together
or not at all. Automatic mail is rate-limited here, per recipient and per case,
counted in the database: the last line of defence against a mail loop.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import lifecycle
from helpdesk.core.decide import Audience, Mail
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.model import Direction, InboundMessage, MailKind
from helpdesk.core.refs import reply_address, tagged_subject
from helpdesk.mail import compose
from helpdesk.mail.templates import build_context
from helpdesk.store import cases
from helpdesk.store.orm import AutoMail, Case, Event, Message, Outbox, Participant

log = logging.getLogger(__name__)

# Mail a person wrote (relayed) carries no Auto-Submitted; acknowledgements are
# "auto-replied" (RFC 3834 3.1.7); everything the system says on its own is
# "auto-generated".
HUMAN_KINDS = frozenset({MailKind.RELAY})
AUTO_REPLIED_KINDS = frozenset({MailKind.ACK, MailKind.DUPLICATE, MailKind.TOO_LARGE,
                                MailKind.COMMAND_ERROR})
# Mail to our own staff is never rate-limited: staff must hear of every case.
UNLIMITED_KINDS = frozenset({MailKind.RELAY, MailKind.STAFF_NOTICE, MailKind.MANUAL_REVIEW,
                             MailKind.COMMAND_ERROR})


@dataclass(frozen=True, slots=True)
class Extras:
    """Template values that only some kinds of mail have."""

    message: InboundMessage | None = None
    old_case: Case | None = None
    existing_case: Case | None = None
    output: str = ""
    reminder: dict[str, Any] | None = None
    author: tuple[str, str] | None = None  # (address, name) of a relayed staff answer
    relay_html: str = ""


def queue_mail(session: Session, app: App, case: Case, mail: Mail, now: datetime,
               extras: Extras = Extras()) -> Outbox | None:
    recipients = _recipients(session, app, case, mail.to, extras.message)
    if mail.kind not in UNLIMITED_KINDS:
        recipients = _within_limits(session, app, case, mail.kind, recipients, now)
    if not recipients:
        return None
    settings = app.settings
    category = settings.categories[case.category]
    from_address = category.addresses[0].lower()
    reply_to = reply_address(from_address, case.ref, case.reply_token) \
        if settings.threading.reply_address else None
    first, last = _thread(session, case.id)
    parent = extras.message.message_id if extras.message and extras.message.message_id else last
    envelope = compose.Envelope(
        from_address=from_address,
        from_name=f"{settings.helpdesk.name} ({category.label})",
        to=tuple(recipients),
        subject=tagged_subject(case.ref, case.subject),
        message_id=compose.new_message_id(settings.helpdesk.domain),
        in_reply_to=parent,
        references=compose.references_for(first, parent),
        reply_to=reply_to,
        auto_submitted=None if mail.kind in HUMAN_KINDS else (
            "auto-replied" if mail.kind in AUTO_REPLIED_KINDS else "auto-generated"),
        loop_value=settings.helpdesk.address.lower(),
        case_ref=case.ref,
    )
    body = app.renderer.render(case.category, str(mail.kind),
                               _context(session, app, case, mail, now, extras))
    raw = compose.build(envelope, body.text, body.html, now)
    row = Outbox(case_id=case.id, kind=str(mail.kind), mail_from=from_address,
                 recipients=list(recipients), message_id=envelope.message_id, raw=raw,
                 status="queued", attempts=0, next_attempt_at=now, created_at=now)
    session.add(row)
    session.add(Message(case_id=case.id, direction=str(Direction.OUT), kind=str(mail.kind),
                        message_id=envelope.message_id, dedupe_key=envelope.message_id,
                        from_addr=from_address, to_addrs=list(recipients), cc_addrs=[],
                        subject=envelope.subject, date=now, headers={}, text=body.text,
                        html=body.html))
    if mail.kind not in UNLIMITED_KINDS:
        session.add_all(AutoMail(address=a, case_id=case.id, at=now) for a in recipients)
    session.flush()
    return row


def _recipients(session: Session, app: App, case: Case, audience: Audience,
                message: InboundMessage | None) -> list[str]:
    policy_staff = app.settings.staff
    if audience is Audience.SENDER:
        return [message.sender] if message and message.sender else []
    if audience is Audience.STAFF:
        if case.assignee:
            return [case.assignee]
        notify = app.settings.categories[case.category].notify
        return [a.lower() for a in notify] or [s for s in policy_staff if not s.startswith("@")]
    rows = session.scalars(select(Participant).where(Participant.case_id == case.id,
                                                     Participant.undeliverable.is_(False))
                           .order_by(Participant.id)).all()
    return [p.address for p in rows]


def _within_limits(session: Session, app: App, case: Case | None, kind: MailKind,
                   recipients: list[str], now: datetime) -> list[str]:
    limits = app.settings.limits
    for count, window in limits.auto_mail_per_case if case is not None else ():
        sent = session.scalar(select(func.count()).select_from(AutoMail).where(
            AutoMail.case_id == case.id, AutoMail.at > now - window))
        if sent >= count:
            _limited(session, case, kind, recipients, f"{count} per {_span(window)} for this case", now)
            return []
    allowed = []
    for address in recipients:
        over = next((f"{count} per {_span(window)} to {address}"
                     for count, window in limits.auto_mail_per_recipient
                     if session.scalar(select(func.count()).select_from(AutoMail).where(
                         AutoMail.address == address, AutoMail.at > now - window)) >= count), None)
        if over:
            _limited(session, case, kind, [address], over, now)
        else:
            allowed.append(address)
    return allowed


def _limited(session: Session, case: Case | None, kind: MailKind, recipients: list[str],
             limit: str, now: datetime) -> None:
    log.warning("rate limit: not sending %s of case=%s to %s (%s)", kind,
                case.ref if case else "-", recipients, limit)
    if case is not None:
            session.add(Event(case_id=case.id, at=now, type="rate_limited",
                          detail={"kind": str(kind), "recipients": recipients, "limit": limit}))


def _span(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# Mail only staff got, and machine mail, is nobody's parent: a customer's client could
# not find it (In-Reply-To would name a mail the customer never saw).
_NOT_A_PARENT = tuple(str(k) for k in (MailKind.STAFF_NOTICE, MailKind.MANUAL_REVIEW,
                                       MailKind.COMMAND_ERROR, MailKind.MACHINE))


def _thread(session: Session, case_id: int) -> tuple[str | None, str | None]:
    """The first and the latest Message-ID of a case: the root and the parent."""
    first = session.scalar(select(Message.message_id).where(Message.case_id == case_id)
                           .order_by(Message.id).limit(1))
    last = session.scalar(select(Message.message_id).where(
        Message.case_id == case_id, Message.kind.not_in(_NOT_A_PARENT))
        .order_by(Message.id.desc()).limit(1))
    return first, last


def _case_dict(session: Session, app: App, case: Case) -> dict[str, Any]:
    category = app.settings.categories[case.category]
    lc = Lifecycle(category.lifecycle)
    return {
        "ref": case.ref, "subject": case.subject, "status": case.status,
        "status_label": lifecycle.label(lc, case.status),
        "category": case.category, "category_label": category.label,
        "requester": case.requester, "requester_name": case.requester_name,
        "created_at": case.created_at,
        "participants": [p.address for p in session.scalars(
            select(Participant).where(Participant.case_id == case.id).order_by(Participant.id))],
        "linked_refs": cases.linked_refs(session, case.id),
    }


def _context(session: Session, app: App, case: Case, mail: Mail, now: datetime,
             extras: Extras) -> dict[str, Any]:
    msg = extras.message
    first_text = session.scalar(select(Message.text).where(
        Message.case_id == case.id, Message.direction == str(Direction.IN))
        .order_by(Message.id).limit(1))
    relay = None
    if mail.relay_text:
        author, name = extras.author or ("", "")
        relay = {"author": author, "author_name": name, "text": mail.relay_text,
                 "html_safe": extras.relay_html}
    return build_context(
        helpdesk={"name": app.settings.helpdesk.name, "address": app.settings.helpdesk.address},
        case=_case_dict(session, app, case),
        message=None if msg is None else {
            "sender": msg.sender, "sender_name": msg.sender_name, "subject": msg.subject,
            "text": msg.text, "date": msg.date or now},
        description=first_text or (msg.text if msg else ""),
        note=mail.note or "\n".join(mail.errors),
        reminder=extras.reminder,
        reopen_days=max(1, math.ceil(app.settings.timers.resolved_close_after / timedelta(days=1))),
        old_case=_brief(extras.old_case),
        existing_case=None if extras.existing_case is None else {
            **_brief(extras.existing_case),
            "status_label": lifecycle.label(
                Lifecycle(app.settings.categories[extras.existing_case.category].lifecycle),
                extras.existing_case.status)},
        output=extras.output,
        relay=relay,
        errors=mail.errors,
        now=now,
    )


def _brief(case: Case | None) -> dict[str, Any] | None:
    return None if case is None else {"ref": case.ref, "subject": case.subject}


def queue_notice(session: Session, app: App, category: str, kind: MailKind,
                 msg: InboundMessage, now: datetime) -> Outbox | None:
    """A mail about a message that belongs to no case (e.g. one too large to take)."""
    recipients = _within_limits(session, app, None, kind, [msg.sender], now) if msg.sender else []
    if not recipients:
        return None
    settings = app.settings
    from_address = settings.categories[category].addresses[0].lower()
    envelope = compose.Envelope(
        from_address=from_address, from_name=settings.helpdesk.name, to=tuple(recipients),
        subject=f"Re: {msg.subject}" if msg.subject else "Your message",
        message_id=compose.new_message_id(settings.helpdesk.domain),
        in_reply_to=msg.message_id or None,
        references=compose.references_for(None, msg.message_id or None, msg.references),
        auto_submitted="auto-replied", loop_value=settings.helpdesk.address.lower())
    context = build_context(
        helpdesk={"name": settings.helpdesk.name, "address": settings.helpdesk.address},
        case=None, now=now,
        message={"sender": msg.sender, "sender_name": msg.sender_name, "subject": msg.subject,
                 "text": msg.text, "date": msg.date or now},
        note=f"{msg.size} bytes; the limit is {settings.limits.max_message_size} bytes")
    body = app.renderer.render(category, str(kind), context)
    row = Outbox(case_id=None, kind=str(kind), mail_from=from_address, recipients=recipients,
                 message_id=envelope.message_id, raw=compose.build(envelope, body.text, body.html, now),
                 status="queued", attempts=0, next_attempt_at=now, created_at=now)
    session.add(row)
    session.add_all(AutoMail(address=a, case_id=None, at=now) for a in recipients)
    return row
