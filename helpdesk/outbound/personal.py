"""Mail to one person about no single case: a portal sign-in link (``login``) and the
answer to ``#cases`` (``case_list``). Queued in the caller's transaction and rendered
by the outbox sender outside it, like every mail.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import lifecycle
from helpdesk.core.amplification import mailbox
from helpdesk.core.access import viewer_for
from helpdesk.core.decide import Mail, route
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.model import InboundMessage, MailKind
from helpdesk.mail import compose
from helpdesk.mail.templates import DEFAULT_DIR
from helpdesk.outbound.facts import Facts
from helpdesk.outbound.queue import _within_limits
from helpdesk.outbound.render import notice_spec
from helpdesk.policy import access_directory
from helpdesk.store import tokens
from helpdesk.store.cases import secret_key
from helpdesk.store.listing import CaseQuery, CaseRow, list_cases
from helpdesk.store.orm import AutoMail, Outbox, WebToken

CASE_LIST_SIZE = 30  # per list in the mail; the portal shows them all


def queue_caseless(session: Session, app: App, mail: Mail, msg: InboundMessage | None,
                   now: datetime) -> None:
    if mail.kind is MailKind.CASE_LIST and msg is not None and msg.sender:
        queue_case_list(session, app, msg, now)


def queue_login(session: Session, app: App, address: str, now: datetime) -> bool:
    """Mail a sign-in link to ``address``; False when it had its 5 this hour.

    Not counted in the automatic-mail limits: anyone can type an address into the
    form, and a flood of requests must not use up the person's acknowledgements.
    """
    address = address.lower()
    if tokens.logins_since(session, address, now - timedelta(hours=1)) >= tokens.LOGINS_PER_HOUR:
        return False
    token, row = tokens.token_row("login", address, None, now, tokens.LOGIN_TTL)
    session.add(WebToken(**row))
    web = app.settings.web
    base = web.effective_base_url if web else ""
    settings = app.settings
    portal = {"case_url": "", "login_url": f"{base}/login/{token}",
              "expires_at": row["expires_at"], "cases_url": f"{base}/cases"}
    envelope = compose.Envelope(
        from_address=settings.helpdesk.address.lower(), from_name=settings.helpdesk.name,
        to=(address,), subject=f"Your sign-in link for {settings.helpdesk.name}",
        message_id=compose.new_message_id(settings.helpdesk.domain, secret_key(session, app)),
        auto_submitted="auto-generated", loop_value=settings.helpdesk.address.lower())
    _add(session, DEFAULT_DIR, MailKind.LOGIN, envelope, None, now, portal=portal)
    return True


def queue_case_list(session: Session, app: App, msg: InboundMessage, now: datetime) -> bool:
    """Answer ``#cases``: the sender's open cases and, with ``company_domains``, their
    company's. Rate-limited like every automatic answer."""
    kind = MailKind.CASE_LIST
    if not _within_limits(app, None, kind, [msg.sender], now, Facts(session)):
        return False
    settings = app.settings
    category = route(msg, app.policy).name
    web = settings.web
    base = web.effective_base_url if web else ""
    viewer = viewer_for(msg.sender, access_directory(settings))
    company = viewer.company if web is None or web.company_domains else None
    mine = list_cases(session, CaseQuery(participant=msg.sender, open_only=True,
                                         limit=CASE_LIST_SIZE), count=True)
    theirs = list_cases(session, CaseQuery(company=company, open_only=True,
                                           limit=CASE_LIST_SIZE + len(mine.rows)),
                        count=True) if company else None
    seen = {r.id for r in mine.rows}
    others = [r for r in theirs.rows if r.id not in seen][:CASE_LIST_SIZE] if theirs else []
    everyone = list_cases(session, CaseQuery(participant=msg.sender, or_domain=company,
                                             open_only=True, limit=0), count=True)
    case_list = {"mine": [_item(app, r, base) for r in mine.rows],
                 "company": [_item(app, r, base) for r in others],
                 "company_domain": company or "",
                 "more": max(0, (everyone.total or 0) - len(mine.rows) - len(others))}
    address = settings.categories[category].addresses[0].lower()
    envelope = compose.Envelope(
        from_address=address, from_name=settings.helpdesk.name, to=(msg.sender,),
        subject=f"Re: {msg.subject}" if msg.subject.strip() else "Your open cases",
        message_id=compose.new_message_id(settings.helpdesk.domain, secret_key(session, app)),
        in_reply_to=msg.message_id or None,
        references=compose.references_for(None, msg.message_id or None, msg.references),
        auto_submitted="auto-replied", loop_value=settings.helpdesk.address.lower())
    portal = {"case_url": "", "login_url": "", "expires_at": None,
              "cases_url": f"{base}/cases"} if web else None
    _add(session, category, kind, envelope, msg, now, portal=portal, case_list=case_list)
    session.add(AutoMail(address=mailbox(msg.sender), case_id=None, at=now))
    return True


def _item(app: App, row: CaseRow, base: str) -> dict[str, Any]:
    category = app.settings.categories.get(row.category)
    label = lifecycle.label(Lifecycle(category.lifecycle), row.status) if category else row.status
    return {"ref": row.ref, "subject": row.subject, "status_label": label,
            "category_label": category.label if category else row.category,
            "updated_at": row.updated_at, "url": f"{base}/cases/{row.ref}" if base else ""}


def _add(session: Session, category: str, kind: MailKind, envelope: compose.Envelope,
         message: InboundMessage | None, now: datetime, **values: Any) -> Outbox:
    """Queue the mail without its body: the sender renders it outside the write lock."""
    row = Outbox(case_id=None, kind=str(kind), mail_from=envelope.from_address,
                 recipients=list(envelope.to), message_id=envelope.message_id, raw=None,
                 render=notice_spec(envelope, category, message, **values), status="queued",
                 attempts=0, next_attempt_at=now, created_at=now)
    session.add(row)
    return row
