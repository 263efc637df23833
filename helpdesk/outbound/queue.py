"""Queue a case's mail: who gets it, its headers, and what to render it from.

This runs inside the transaction of whatever decided to send (an inbound mail,
a timer, a command), so the mail and the change that caused it commit together
or not at all; its body is rendered later, by the sender (``render``). Automatic mail is rate-limited here, per recipient and per case,
counted in the database: the last line of defence against a mail loop.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core.decide import Audience, Mail
from helpdesk.core.model import Direction, InboundMessage, MailKind
from helpdesk.core.refs import reply_address, tagged_subject
from helpdesk.mail import compose
from helpdesk.mail.templates import build_context
from helpdesk.outbound.facts import Facts
from helpdesk.outbound.render import render_mail, render_spec
from helpdesk.store.orm import AutoMail, Case, Event, Message, Outbox

log = logging.getLogger(__name__)

# Mail a person wrote (relayed) carries no Auto-Submitted; acknowledgements are
# "auto-replied" (RFC 3834 3.1.7); everything the system says on its own is
# "auto-generated".
HUMAN_KINDS = frozenset({MailKind.RELAY})
AUTO_REPLIED_KINDS = frozenset({MailKind.ACK, MailKind.DUPLICATE, MailKind.TOO_LARGE,
                                MailKind.COMMAND_ERROR})
# Mail to our own staff is never rate-limited: staff must hear of every case.
UNLIMITED_KINDS = frozenset({MailKind.RELAY, MailKind.STAFF_NOTICE, MailKind.MANUAL_REVIEW,
                             MailKind.COMMAND_ERROR, MailKind.SOLVED_NOTICE})


@dataclass(frozen=True, slots=True)
class Extras:
    """Template values that only some kinds of mail have."""

    message: InboundMessage | None = None
    old_case: Case | None = None
    existing_case: Case | None = None
    output: str = ""
    reminder: dict[str, Any] | None = None
    author: tuple[str, str] | None = None  # (address, name) of a relayed staff answer


def queue_mail(session: Session, app: App, case: Case, mail: Mail, now: datetime,
               extras: Extras = Extras(), facts: Facts | None = None) -> bool:
    """Queue one mail of ``case``; False when nobody is left to send it to.

    Without ``facts`` (a mail answering a message, a hook's mail) it is rendered now:
    a broken template then fails the whole transaction, and the inbound mail that
    caused it is quarantined for the admin to retry, nothing half-done. With
    ``facts`` (timer steps: a sweep's chunk, one case's due step) the rows are
    written without the body, which the sender renders when it first claims the row
    (``helpdesk.outbound.render``); a template broken by then makes that row dead.
    """
    render_now = facts is None
    facts = facts or Facts(session)
    recipients = _recipients(app, case, mail.to, extras.message, facts)
    if mail.kind not in UNLIMITED_KINDS:
        recipients = _within_limits(session, app, case, mail.kind, recipients, now, facts)
    if not recipients:
        return False
    settings = app.settings
    category = settings.categories[case.category]
    from_address = category.addresses[0].lower()
    first, last = facts.thread(case.id)
    parent = extras.message.message_id if extras.message and extras.message.message_id else last
    envelope = compose.Envelope(
        from_address=from_address,
        from_name=f"{settings.helpdesk.name} ({category.label})",
        to=tuple(recipients),
        subject=tagged_subject(case.ref, case.subject),
        message_id=compose.new_message_id(settings.helpdesk.domain),
        in_reply_to=parent,
        references=compose.references_for(first, parent),
        reply_to=reply_address(from_address, case.ref, case.reply_token)
        if settings.threading.reply_address else None,
        auto_submitted=None if mail.kind in HUMAN_KINDS else (
            "auto-replied" if mail.kind in AUTO_REPLIED_KINDS else "auto-generated"),
        loop_value=settings.helpdesk.address.lower(),
        case_ref=case.ref,
    )
    outbox = {"case_id": case.id, "kind": str(mail.kind), "mail_from": from_address,
              "recipients": list(recipients), "message_id": envelope.message_id, "raw": None,
              "render": render_spec(envelope, mail, extras.message, _values(mail, extras)),
              "status": "queued", "attempts": 0, "next_attempt_at": now, "created_at": now}
    body = None
    if render_now:
        row = Outbox(**outbox)
        body = render_mail(session, app, row)
        row.raw = body.raw
        session.add(row)
    else:
        facts.add(Outbox, **outbox)
    # Without a body yet, the sender fills in its text and html when it renders the mail.
    facts.add(Message, case_id=case.id, direction=str(Direction.OUT), kind=str(mail.kind),
              message_id=envelope.message_id, dedupe_key=envelope.message_id,
              from_addr=from_address, to_addrs=list(recipients), cc_addrs=[],
              subject=envelope.subject, date=now, headers={},
              text=body.text if body else "", html=body.html if body else "")
    if mail.kind not in UNLIMITED_KINDS:
        for address in recipients:
            facts.add(AutoMail, address=address, case_id=case.id, at=now)
    return True


def _recipients(app: App, case: Case, audience: Audience, message: InboundMessage | None,
                facts: Facts) -> list[str]:
    policy_staff = app.settings.staff
    if audience is Audience.SENDER:
        return [message.sender] if message and message.sender else []
    if audience is Audience.STAFF:
        if case.assignee:
            return [case.assignee]
        notify = app.settings.categories[case.category].notify
        return [a.lower() for a in notify] or [s for s in policy_staff if not s.startswith("@")]
    return facts.participants(case.id)


def limit_windows(app: App, now: datetime) -> list[datetime]:
    """The start of every rate-limit window, as of ``now``: what ``ChunkFacts`` preloads."""
    limits = app.settings.limits
    return [now - window for _, window in (*limits.auto_mail_per_case,
                                           *limits.auto_mail_per_recipient)]


def _within_limits(session: Session, app: App, case: Case | None, kind: MailKind,
                   recipients: list[str], now: datetime, facts: Facts) -> list[str]:
    limits = app.settings.limits
    for count, window in limits.auto_mail_per_case if case is not None else ():
        if facts.sent_for_case(case.id, now - window) >= count:
            _limited(case, kind, recipients, f"{count} per {_span(window)} for this case", now,
                     facts)
            return []
    allowed = []
    for address in recipients:
        over = next((f"{count} per {_span(window)} to {address}"
                     for count, window in limits.auto_mail_per_recipient
                     if facts.sent_to(address, now - window) >= count), None)
        if over:
            _limited(case, kind, [address], over, now, facts)
        else:
            allowed.append(address)
    return allowed


def _limited(case: Case | None, kind: MailKind, recipients: list[str], limit: str,
             now: datetime, facts: Facts) -> None:
    log.warning("rate limit: not sending %s of case=%s to %s (%s)", kind,
                case.ref if case else "-", recipients, limit)
    if case is not None:
        facts.add(Event, case_id=case.id, at=now, type="rate_limited",
                  detail={"kind": str(kind), "recipients": recipients, "limit": limit})


def _span(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _values(mail: Mail, extras: Extras) -> dict[str, Any]:
    """The template values of ``extras`` that the case will not hold at render time."""
    relay = None
    if mail.relay_text:
        author, name = extras.author or ("", "")
        relay = {"author": author, "author_name": name, "text": mail.relay_text,
                 "html_safe": ""}  # relays are our own rendering of the staff text
    return {"relay": relay, "reminder": extras.reminder, "output": extras.output,
            "old_case_id": extras.old_case.id if extras.old_case else None,
            "existing_case_id": extras.existing_case.id if extras.existing_case else None}


def queue_notice(session: Session, app: App, category: str, kind: MailKind,
                 msg: InboundMessage, now: datetime) -> Outbox | None:
    """A mail about a message that belongs to no case (e.g. one too large to take)."""
    recipients = _within_limits(session, app, None, kind, [msg.sender], now, Facts(session)) \
        if msg.sender else []
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
