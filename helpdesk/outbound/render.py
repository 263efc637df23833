"""Render a queued mail when the sender first claims it.

Queuing (``helpdesk.outbound.queue``) fixes everything about a mail but its body:
the recipients, the Message-ID, the threading headers, and in ``Outbox.render`` the
template values the case does not hold (the note, the reminder, the mail being
answered...). Mail queued in bulk by the sweep is rendered from those and the case
as it is when the sender claims the row, and the bytes are stored in that same
claim, so every retry sends the very same mail: rendering and MIME building are most
of the cost of a mail, and this keeps a sweep of a thousand reminders short. Mail
that answers a message is rendered at once with the same code (``render_mail``).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import lifecycle
from helpdesk.core.decide import Mail
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.model import Direction, InboundMessage
from helpdesk.mail import compose
from helpdesk.mail.templates import build_context
from helpdesk.store import cases
from helpdesk.store.orm import Case, Message, Outbox, Participant

Render = Callable[[Session, Outbox], bytes]


def render_spec(envelope: compose.Envelope, mail: Mail, message: InboundMessage | None,
                values: dict[str, Any]) -> dict[str, Any]:
    """What ``Outbox.render`` holds: the envelope but for the outbox row's own columns
    (sender, recipients, Message-ID), and the template values ``_context`` needs."""
    return _to_json({
        "envelope": {
            "from_name": envelope.from_name, "subject": envelope.subject,
            "in_reply_to": envelope.in_reply_to, "references": list(envelope.references),
            "reply_to": envelope.reply_to, "auto_submitted": envelope.auto_submitted,
            "loop_value": envelope.loop_value, "case_ref": envelope.case_ref},
        "message": None if message is None else {
            "sender": message.sender, "sender_name": message.sender_name,
            "subject": message.subject, "text": message.text, "date": message.date},
        "note": mail.note or "\n".join(mail.errors),
        "errors": list(mail.errors),
        **values,
    })


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    html: str
    raw: bytes


def render_mail(session: Session, app: App, row: Outbox) -> Rendered:
    """The body and the final bytes of a case's mail, from its row and the case."""
    assert row.render is not None and row.case_id is not None
    spec = _from_json(row.render)
    case = session.get_one(Case, row.case_id)
    now = row.created_at  # the mail is dated, and speaks, as of when it was decided
    body = app.renderer.render(case.category, row.kind, _context(session, app, case, spec, now))
    envelope = compose.Envelope(
        from_address=row.mail_from, to=tuple(row.recipients), message_id=row.message_id,
        **{**spec["envelope"], "references": tuple(spec["envelope"]["references"])})
    return Rendered(body.text, body.html, compose.build(envelope, body.text, body.html, now))


def outbox_renderer(app: App) -> Render:
    """The ``render`` the sender calls for a row whose ``raw`` is still NULL: it also
    gives the case's copy of the mail (``message``) its text."""
    def render(session: Session, row: Outbox) -> bytes:
        mail = render_mail(session, app, row)
        session.execute(update(Message).where(Message.dedupe_key == row.message_id)
                        .values(text=mail.text, html=mail.html))
        return mail.raw
    return render


def _context(session: Session, app: App, case: Case, spec: dict[str, Any],
             now: datetime) -> dict[str, Any]:
    msg = spec["message"]
    if msg is not None:
        msg = {**msg, "date": msg["date"] or now}
    first_text = session.scalar(select(Message.text).where(
        Message.case_id == case.id, Message.direction == str(Direction.IN))
        .order_by(Message.id).limit(1))
    existing = spec.get("existing_case_id")
    existing_case = None if existing is None else session.get_one(Case, existing)
    old = spec.get("old_case_id")
    return build_context(
        helpdesk={"name": app.settings.helpdesk.name, "address": app.settings.helpdesk.address},
        case=_case_dict(session, app, case),
        message=msg,
        description=first_text or (msg["text"] if msg else ""),
        note=spec["note"],
        reminder=spec.get("reminder"),
        reopen_days=max(1, math.ceil(app.settings.timers.resolved_close_after / timedelta(days=1))),
        old_case=None if old is None else _brief(session.get_one(Case, old)),
        existing_case=None if existing_case is None else {
            **_brief(existing_case),
            "status_label": lifecycle.label(
                Lifecycle(app.settings.categories[existing_case.category].lifecycle),
                existing_case.status)},
        output=spec.get("output", ""),
        relay=spec.get("relay"),
        errors=spec["errors"],
        suggestions=[{"slug": s.slug, "title": s.title, "url": s.url, "summary": s.summary,
                      "score": s.score} for s in cases.suggestions(session, case.id)],
        now=now,
    )


def _case_dict(session: Session, app: App, case: Case) -> dict[str, Any]:
    category = app.settings.categories[case.category]
    lc = Lifecycle(category.lifecycle)
    return {
        "ref": case.ref, "subject": case.subject, "status": case.status,
        "status_label": lifecycle.label(lc, case.status),
        "category": case.category, "category_label": category.label,
        "requester": case.requester, "requester_name": case.requester_name,
        "created_at": case.created_at,
        "participants": list(session.scalars(
            select(Participant.address).where(Participant.case_id == case.id)
            .order_by(Participant.id))),
        "linked_refs": cases.linked_refs(session, case.id),
    }


def _brief(case: Case) -> dict[str, Any]:
    return {"ref": case.ref, "subject": case.subject}


_DATETIME = "$datetime"  # JSON has no dates: {"$datetime": iso} stands for one


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_DATETIME}:
            return datetime.fromisoformat(value[_DATETIME])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value
