"""What the portal's buttons do: the same decisions as mail and the command line.

A reply (and a staff note or assignment, which are replies made of `#commands`) is
turned into an ``InboundMessage`` from the signed-in address and goes through
``decide`` and ``apply_decision`` (in the request's session: ``apply_in_session``) as
if it had been mailed to the case's reply address by a sender whose identity was
verified (``SenderTrust(True, "web")``). A status change (Close, or staff's status
form) is ``apply_commands`` then ``apply_decision``, exactly what ``cases set-status``
runs.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core.access import Viewer, may_see
from helpdesk.core.commands import Command
from helpdesk.core.decide import Context, Outcome, apply_commands, decide
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.matching import Candidates, CaseView
from helpdesk.core.model import InboundMessage
from helpdesk.core.refs import tagged_subject
from helpdesk.core.trust import SenderTrust
from helpdesk.store import cases
from helpdesk.store.apply import apply_in_session
from helpdesk.store.orm import Case, Message
from helpdesk.sweep import run_due_step

log = logging.getLogger(__name__)

WEB_TRUST = SenderTrust(True, "web", "")
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_TEXT = 100_000


class NotFound(Exception):
    """No such case for this person (missing, or outside their scope: the same)."""


class Refused(Exception):
    """The change is not allowed; the message says why."""


@dataclass(frozen=True, slots=True)
class Done:
    ref: str  # the case the person should see now (a reply to a closed case opens a new one)
    outcome: str


def _load(session: Session, app: App, viewer: Viewer, ref: str) -> tuple[Case, CaseView]:
    case = cases.by_ref(session, ref)
    if case is None:
        raise NotFound(ref)
    view = cases.view(session, case, app.policy)
    if not may_see(viewer, case.ref, view.participants, case.requester_domain):
        raise NotFound(ref)
    return case, view


def reply(app: App, viewer: Viewer, ref: str, text: str, nonce: str) -> Done:
    """Add ``text`` to the case as if the viewer had mailed it (staff: relayed,
    `#commands` work). ``nonce`` (one per form) makes a double submit harmless."""
    text = text.replace("\r\n", "\n").strip()[:MAX_TEXT]
    if not text:
        raise Refused("The message is empty.")
    if not NONCE.match(nonce or ""):
        raise Refused("The form is incomplete; reload the page and try again.")
    domain = app.settings.helpdesk.domain
    message_id = f"web.{nonce}@{domain}"
    with app.sessions.begin() as session:
        seen = session.scalar(select(Message.case_id).where(Message.dedupe_key == message_id))
        if seen is not None:  # the same form sent twice: it is in already
            return Done(session.get_one(Case, seen).ref, "duplicate")
        case, view = _load(session, app, viewer, ref)
        now = app.clock.now()
        if run_due_step(session, app, case.id, now, closing_only=True):  # as ingest does
            view = cases.view(session, case, app.policy)
        address = app.settings.categories[case.category].addresses[0].lower()
        msg = InboundMessage(
            message_id=message_id, content_hash=hashlib.sha256(text.encode()).hexdigest(),
            sender=viewer.address, sender_name="", to=(address,), cc=(), reply_to=(),
            subject=f"Re: {tagged_subject(case.ref, case.subject)}", date=now,
            in_reply_to=(), references=(), text=text, html="",
            headers={"x-helpdesk-via": ("web",)}, size=len(text.encode()))
        # A reply to a closed case opens a new one: bounded as a mail's would be.
        context = Context(candidates=Candidates(by_reply_address=view), sender_trust=WEB_TRUST,
                          opened_cases=cases.opened_cases(session, viewer.address, app.policy,
                                                          now))
        decision = decide(msg, context, app.policy)
        if decision.outcome is Outcome.HELD:
            log.info("WEB HELD by=%s case=%s: %s", viewer.address, case.ref, decision.reasons)
            raise Refused("You have opened too many new cases in a short time; "
                          "please try again later.")
        touched = apply_in_session(session, app, decision, msg, now)
        log.info("WEB %s by=%s case=%s -> %s", str(decision.outcome).upper(), viewer.address,
                 case.ref, touched.ref if touched else "-")
        return Done(touched.ref if touched else case.ref, str(decision.outcome))


def note(app: App, viewer: Viewer, ref: str, text: str, nonce: str) -> Done:
    """Staff: an internal note (a reply starting with `#note`: never relayed)."""
    _staff_only(viewer)
    return reply(app, viewer, ref, "#note\n" + text.strip(), nonce)


def assign(app: App, viewer: Viewer, ref: str, address: str, nonce: str) -> Done:
    """Staff: `#assign ADDRESS`, with the rules of a mailed command."""
    _staff_only(viewer)
    address = " ".join(address.split())
    if not address:
        raise Refused("Give the address to assign the case to.")
    return reply(app, viewer, ref, f"#assign {address}", nonce)


def close(app: App, viewer: Viewer, ref: str) -> Done:
    """The Close button: customer care cases become `closed`; a connections request,
    which has no `closed`, is cancelled (`not_completed`), as `#cancel` does."""
    with app.sessions.begin() as session:
        case, view = _load(session, app, viewer, ref)
        lc = Lifecycle(app.settings.categories[case.category].lifecycle)
        command = Command("cancel", "cancelled on the web portal") \
            if lc is Lifecycle.connections else Command("close", "")
    return _set(app, viewer, ref, command)


def set_status(app: App, viewer: Viewer, ref: str, status: str, note_text: str = "") -> Done:
    """Staff: any status change, as `cases set-status REF STATUS --note TEXT`."""
    _staff_only(viewer)
    return _set(app, viewer, ref, Command("status", f"{status} {note_text}".strip()))


def _set(app: App, viewer: Viewer, ref: str, command: Command) -> Done:
    with app.sessions.begin() as session:
        case, view = _load(session, app, viewer, ref)
        decision = apply_commands(view, (command,), app.policy, actor=viewer.address)
        if decision.outcome is Outcome.REJECTED:
            raise Refused("; ".join(decision.reasons))
        now = app.clock.now()
        apply_in_session(session, app, decision, None, now, actor=viewer.address)
        log.info("WEB STATUS by=%s case=%s %s -> %s", viewer.address, case.ref, view.status,
                 case.status)
        return Done(case.ref, "status")


def _staff_only(viewer: Viewer) -> None:
    if not viewer.staff:
        raise NotFound("staff only")
