"""Queue a case's mail: who gets it, its headers, and what to render it from.

This runs inside the transaction of whatever decided to send (an inbound mail,
a timer, a command), so the mail and the change that caused it commit together
or not at all; its body is rendered later, by the sender, outside that transaction
(``render``). Automatic mail is rate-limited here, per recipient and per case,
counted in the database: the last line of defence against a mail loop.

A mail goes out as one or more copies (``copies``): one for everyone, or, when only
staff get it, one per staff member, each with that person's own staff reply address
as Reply-To. Answering it is how a staff member proves who they are (SPEC, Trust).
Mail caused by a mail from outside is also bounded in how many outside addresses it
reaches (``RecipientBudget``, ``limits.recipients_per_mail``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core.amplification import admit, mailbox, span
from helpdesk.core.decide import Audience, Mail
from helpdesk.core.matching import CaseView
from helpdesk.core.model import Direction, InboundMessage, MailKind
from helpdesk.core.refs import reply_address, staff_reply_address, staff_reply_token, tagged_subject
from helpdesk.mail import compose
from helpdesk.outbound.facts import CaseFacts, ChunkFacts, Facts
from helpdesk.outbound.render import notice_spec, render_spec
from helpdesk.store import tokens
from helpdesk.store.cases import CaseRecord, secret_key
from helpdesk.store.orm import AutoMail, Case, Event, Message, Outbox, WebToken

if TYPE_CHECKING:
    from sqlalchemy import Connection

    AnyFacts = Facts | ChunkFacts | CaseFacts
    AnyCase = Case | CaseRecord

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
    old_case: AnyCase | CaseView | None = None
    existing_case: AnyCase | None = None
    output: str = ""
    reminder: dict[str, Any] | None = None
    author: tuple[str, str] | None = None  # (address, name) of a relayed staff answer


class RecipientBudget:
    """The outside addresses the mails of one decision may still reach in all
    (``core.amplification.admit``): one per inbound mail from outside."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counted: frozenset[str] = frozenset()

    def admit(self, recipients: Iterable[str], is_staff: Callable[[str], bool]
              ) -> tuple[list[str], list[str]]:
        admitted, refused = admit(recipients, self.counted, self.limit, is_staff)
        self.counted |= {a for a in admitted if not is_staff(a)}
        return admitted, refused


@dataclass(frozen=True, slots=True)
class Copy:
    """One copy of a mail: who gets it, where their answer goes, and the template
    values that are theirs alone (``portal``: their own sign-in link)."""

    to: tuple[str, ...]
    reply_to: str | None
    values: dict[str, Any]


def copies(session: Session | Connection, app: App, case: AnyCase, mail: Mail,
           recipients: list[str], now: datetime, facts: AnyFacts) -> list[Copy]:
    """The copies one mail goes out as. All of them share its Message-ID: one mail,
    personalised, as mailing lists do.

    - Only staff of the case get it: one copy each, whose Reply-To is that member's own
      staff reply address (a secret only that copy carries: an answer sent to it is
      theirs; SPEC, Trust). Nobody sees another's address.
    - The web portal is configured and it goes to the participants: one copy each,
      whose ``portal.case_url`` signs that person in to this case.
    - Otherwise one copy for everyone.
    """
    settings = app.settings
    from_address = settings.categories[case.category].addresses[0].lower()
    reply_to = (reply_address(from_address, case.ref, case.reply_token)
                if settings.threading.reply_address else None)
    portal = _plain_portal(app, case)
    policy = app.policy
    if reply_to and all(policy.is_staff_for(case.category, r) for r in recipients):
        key = secret_key(session, app)
        return [Copy((r,), staff_reply_address(from_address, case.ref,
                                               staff_reply_token(key, case.ref, r)),
                     {"portal": portal}) for r in recipients]
    web = settings.web
    if web is None or portal is None or mail.to is not Audience.PARTICIPANTS:
        return [Copy(tuple(recipients), reply_to, {"portal": portal})]
    personal = []
    for address in recipients:
        token, row = tokens.token_row("case", address, case.id, now, web.case_link_ttl)
        facts.add(WebToken, **row)
        personal.append(Copy((address,), reply_to, {"portal": {
            **portal, "expires_at": row["expires_at"],
            "case_url": f"{portal['case_url']}?t={token}"}}))
    return personal


def _plain_portal(app: App, case: AnyCase) -> dict[str, Any] | None:
    """The portal's links for anyone: the case page and the overview (None without web)."""
    web = app.settings.web
    if web is None:
        return None
    base = web.effective_base_url
    return {"case_url": f"{base}/cases/{case.ref}", "login_url": "", "expires_at": None,
            "cases_url": f"{base}/cases"}


def queue_mail(session: Session | Connection, app: App, case: AnyCase, mail: Mail, now: datetime,
               extras: Extras = Extras(), facts: AnyFacts | None = None,
               budget: RecipientBudget | None = None) -> bool:
    """Queue one mail of ``case``; False when nobody is left to send it to.

    The rows are written without the body, which the sender renders when it first
    claims the row (``helpdesk.outbound.render``): no template runs while the deciding
    transaction holds the write lock. ``facts``: a sweep's chunk (``ChunkFacts``), the
    case of an inbound mail (``CaseFacts``), else one query per question.
    With a ``budget`` (a mail from outside caused it), outside addresses past it get
    nothing, and an event says who.
    """
    facts = facts or Facts(session)
    recipients = _recipients(app, case, mail.to, extras.message, facts)
    if mail.kind not in UNLIMITED_KINDS:
        recipients = _within_limits(app, case, mail.kind, recipients, now, facts)
    if budget is not None:
        recipients, refused = budget.admit(
            recipients, lambda address: app.policy.is_staff_for(case.category, address))
        if refused:
            _limited(case, mail.kind, refused, f"{budget.limit} recipients per mail", now, facts,
                     event="recipients_limit")
    if not recipients:
        return False
    settings = app.settings
    category = settings.categories[case.category]
    from_address = category.addresses[0].lower()
    first, last = facts.thread(case.id)
    # Participants' mail threads on the latest mail of the case they have (the mail that
    # caused this one is stored by now when it is theirs); a mail to one person answers
    # what that person wrote.
    answered = extras.message.message_id if extras.message else ""
    parent = last if mail.to is Audience.PARTICIPANTS or not answered else answered
    envelope = compose.Envelope(
        from_address=from_address,
        from_name=f"{settings.helpdesk.name} ({category.label})",
        to=tuple(recipients),
        subject=tagged_subject(case.ref, case.subject),
        message_id=compose.new_message_id(settings.helpdesk.domain, secret_key(session, app)),
        in_reply_to=parent,
        references=compose.references_for(first, parent),
        auto_submitted=None if mail.kind in HUMAN_KINDS else (
            "auto-replied" if mail.kind in AUTO_REPLIED_KINDS else "auto-generated"),
        loop_value=settings.helpdesk.address.lower(),
        case_ref=case.ref,
    )
    values = _values(mail, extras, settings.helpdesk.show_agent_address)
    for copy in copies(session, app, case, mail, recipients, now, facts):
        spec = render_spec(replace(envelope, to=copy.to, reply_to=copy.reply_to), mail,
                           extras.message, {**values, **copy.values})
        facts.add(Outbox, case_id=case.id, kind=str(mail.kind), mail_from=from_address,
                  recipients=list(copy.to), message_id=envelope.message_id, raw=None,
                  render=spec, status="queued", attempts=0, next_attempt_at=now,
                  created_at=now)
    # Without a body yet, the sender fills in its text and html when it renders the mail.
    facts.add(Message, case_id=case.id, direction=str(Direction.OUT), kind=str(mail.kind),
              message_id=envelope.message_id, dedupe_key=envelope.message_id,
              from_addr=from_address, to_addrs=list(recipients), cc_addrs=[],
              subject=envelope.subject, date=now, headers={}, text="", html="")
    if mail.kind not in UNLIMITED_KINDS:
        for address in recipients:
            facts.add(AutoMail, address=mailbox(address), case_id=case.id, at=now)
    return True


def _recipients(app: App, case: AnyCase, audience: Audience, message: InboundMessage | None,
                facts: AnyFacts) -> list[str]:
    if audience is Audience.SENDER:
        return [message.sender] if message and message.sender else []
    if audience is Audience.STAFF and case.assignee and app.policy.is_staff_for(
            case.category, case.assignee):  # an assignee no longer staff gets nothing more
        return [case.assignee]
    if audience in (Audience.STAFF, Audience.NOTIFY):
        notify = app.settings.categories[case.category].notify
        return [a.lower() for a in notify] or [s for s in app.settings.staff
                                               if not s.startswith("@")]
    return facts.participants(case.id)


def limit_windows(app: App, now: datetime) -> list[datetime]:
    """The start of every rate-limit window, as of ``now``: what ``ChunkFacts`` preloads."""
    limits = app.settings.limits
    return [now - window for _, window in (*limits.auto_mail_per_case,
                                           *limits.auto_mail_per_recipient)]


def _within_limits(app: App, case: AnyCase | None, kind: MailKind, recipients: list[str],
                   now: datetime, facts: AnyFacts) -> list[str]:
    limits = app.settings.limits
    for count, window in limits.auto_mail_per_case if case is not None else ():
        if facts.sent_for_case(case.id, now - window) >= count:
            _limited(case, kind, recipients, f"{count} per {span(window)} for this case", now,
                     facts)
            return []
    allowed = []
    for address in recipients:  # counted per inbox: victim+1@ and victim+2@ are one
        over = next((f"{count} per {span(window)} to {address}"
                     for count, window in limits.auto_mail_per_recipient
                     if facts.sent_to(mailbox(address), now - window) >= count), None)
        if over:
            _limited(case, kind, [address], over, now, facts)
        else:
            allowed.append(address)
    return allowed


def _limited(case: AnyCase | None, kind: MailKind, recipients: list[str], limit: str,
             now: datetime, facts: AnyFacts, event: str = "rate_limited") -> None:
    log.warning("%s: not sending %s of case=%s to %s (%s)", event, kind,
                case.ref if case else "-", recipients, limit)
    if case is not None:
        facts.add(Event, case_id=case.id, at=now, type=event,
                  detail={"kind": str(kind), "recipients": recipients, "limit": limit})


def _values(mail: Mail, extras: Extras, show_agent_address: bool) -> dict[str, Any]:
    """The template values of ``extras`` that the case will not hold at render time."""
    relay = None
    if mail.relay_text and extras.author:
        address, name = extras.author
        # A staff member's address is theirs, not the customer's to keep: the mail
        # names them, and only an admin who wants replies to reach them directly
        # shows it (templates cannot leak what they are not given).
        relay = {"author": address if show_agent_address else "", "author_name": name,
                 "text": mail.relay_text,
                 "html_safe": ""}  # relays are our own rendering of the staff text
    return {"relay": relay, "reminder": extras.reminder, "output": extras.output,
            "old_case_id": extras.old_case.id if extras.old_case else None,
            "existing_case_id": extras.existing_case.id if extras.existing_case else None}


def queue_notice(session: Session, app: App, category: str, kind: MailKind,
                 msg: InboundMessage, now: datetime) -> Outbox | None:
    """A mail about a message that belongs to no case (e.g. one too large to take)."""
    recipients = _within_limits(app, None, kind, [msg.sender], now, Facts(session)) \
        if msg.sender else []
    if not recipients:
        return None
    settings = app.settings
    from_address = settings.categories[category].addresses[0].lower()
    envelope = compose.Envelope(
        from_address=from_address, from_name=settings.helpdesk.name, to=tuple(recipients),
        subject=f"Re: {msg.subject}" if msg.subject else "Your message",
        message_id=compose.new_message_id(settings.helpdesk.domain, secret_key(session, app)),
        in_reply_to=msg.message_id or None,
        references=compose.references_for(None, msg.message_id or None, msg.references),
        auto_submitted="auto-replied", loop_value=settings.helpdesk.address.lower())
    note = f"{msg.size} bytes; the limit is {settings.limits.max_message_size} bytes"
    row = Outbox(case_id=None, kind=str(kind), mail_from=from_address, recipients=recipients,
                 message_id=envelope.message_id, raw=None,
                 render=notice_spec(envelope, category, msg, note),
                 status="queued", attempts=0, next_attempt_at=now, created_at=now)
    session.add(row)
    session.add_all(AutoMail(address=mailbox(a), case_id=None, at=now) for a in recipients)
    return row
