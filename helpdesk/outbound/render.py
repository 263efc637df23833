"""Render a queued mail after the transaction that queued it, outside the write lock.

Queuing (``helpdesk.outbound.queue``) fixes everything about a mail but its body:
the recipients, the Message-ID, the threading headers, and in ``Outbox.render`` the
template values the case does not hold (the note, the reminder, the mail being
answered...). The sender renders the mail the first time it claims the row, from
those and the case as it is then, in a read transaction (``render_mail``), and keeps
the bytes in a short write of their own (``keep_rendered``), so every retry sends the
very same mail. Rendering and MIME building are most of the cost of a mail and grow
with what the customer wrote: done this way, no mail holds the database's write lock
for them, and a sweep of a thousand reminders stays short.
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
from helpdesk.core.amplification import excerpt
from helpdesk.core.decide import Mail
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.model import Direction, InboundMessage
from helpdesk.mail import compose
from helpdesk.mail.context import build_context
from helpdesk.store import cases
from helpdesk.store.orm import Case, Message, Outbox, Participant


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    html: str
    raw: bytes


Render = Callable[[Session, Outbox], Rendered]


def render_spec(envelope: compose.Envelope, mail: Mail, message: InboundMessage | None,
                values: dict[str, Any]) -> dict[str, Any]:
    """What ``Outbox.render`` holds for a case's mail: the envelope but for the outbox
    row's own columns (sender, recipients, Message-ID), and the template values
    ``_context`` needs."""
    return _to_json({
        "envelope": _envelope_fields(envelope),
        "message": _message_fields(message),
        "note": mail.note or "\n".join(mail.errors),
        "errors": list(mail.errors),
        **values,
    })


def notice_spec(envelope: compose.Envelope, category: str, message: InboundMessage | None,
                note: str = "", **values: Any) -> dict[str, Any]:
    """``Outbox.render`` of a mail about no case (one too large to take, a sign-in link,
    the answer to ``#cases``): its category's templates, the message it answers, the
    note, and template values such as ``portal`` and ``case_list``."""
    return _to_json({"envelope": _envelope_fields(envelope), "category": category,
                     "message": _message_fields(message), "note": note, "errors": [],
                     **values})


def _envelope_fields(envelope: compose.Envelope) -> dict[str, Any]:
    return {"from_name": envelope.from_name, "subject": envelope.subject,
            "in_reply_to": envelope.in_reply_to, "references": list(envelope.references),
            "reply_to": envelope.reply_to, "auto_submitted": envelope.auto_submitted,
            "loop_value": envelope.loop_value, "case_ref": envelope.case_ref}


def _message_fields(message: InboundMessage | None) -> dict[str, Any] | None:
    return None if message is None else {
        "sender": message.sender, "sender_name": message.sender_name,
        "subject": message.subject, "text": message.text, "date": message.date}


def render_mail(session: Session, app: App, row: Outbox) -> Rendered:
    """The body and the final bytes of a queued mail, from its row (and its case)."""
    assert row.render is not None
    spec = _from_json(row.render)
    now = row.created_at  # the mail is dated, and speaks, as of when it was decided
    if row.case_id is None:
        category, context = spec["category"], _notice_context(app, spec, now)
    else:
        case = session.get_one(Case, row.case_id)
        category, context = case.category, _context(session, app, case, spec, now)
    body = app.renderer.render(category, row.kind, context)
    envelope = compose.Envelope(
        from_address=row.mail_from, to=tuple(row.recipients), message_id=row.message_id,
        **{**spec["envelope"], "references": tuple(spec["envelope"]["references"])})
    return Rendered(body.text, body.html, compose.build(envelope, body.text, body.html, now))


def outbox_renderer(app: App) -> Render:
    """The ``render`` the sender calls, in a read transaction, for a row whose ``raw``
    is still NULL."""
    def render(session: Session, row: Outbox) -> Rendered:
        return render_mail(session, app, row)
    return render


def keep_rendered(session: Session, row: Outbox, mail: Rendered) -> bytes:
    """Store a rendered mail's bytes in its row, and its text in the case's copy of the
    mail, in the caller's (short) write transaction; return the bytes to send.

    If another sender stored bytes first (its claim ran out while this one rendered),
    those win: a mail never goes out as two different renderings.
    """
    stored = session.execute(update(Outbox).where(Outbox.id == row.id, Outbox.raw.is_(None))
                             .values(raw=mail.raw)
                             .execution_options(synchronize_session=False)).rowcount
    if not stored:
        return session.scalars(select(Outbox.raw).where(Outbox.id == row.id)).one()
    text, html = case_copy(mail, row.render)
    session.execute(update(Message).where(Message.dedupe_key == row.message_id)
                    .values(text=text, html=html))
    return mail.raw


def case_copy(mail: Rendered, spec: dict[str, Any] | None) -> tuple[str, str]:
    """The text and HTML the case keeps of a mail: a personal copy's sign-in link is
    the recipient's alone, so the case (which other participants read) gets the
    plain case page instead."""
    portal = (spec or {}).get("portal") or {}
    link = portal.get("case_url") or ""
    if "?t=" not in link:
        return mail.text, mail.html
    plain = link.partition("?t=")[0]
    return mail.text.replace(link, plain), mail.html.replace(link, plain)


def forget_sign_in_link(row: Outbox) -> None:
    """Once a mail that carried someone's sign-in link has gone (or never will), its row
    keeps neither its bytes nor its template values: the tokens are stored as hashes
    only, so that a copy of the database signs nobody in (``store.tokens``)."""
    portal = (row.render or {}).get("portal") or {}
    if portal.get("login_url") or "?t=" in (portal.get("case_url") or ""):
        row.raw, row.render = None, None


def _notice_context(app: App, spec: dict[str, Any], now: datetime) -> dict[str, Any]:
    msg = spec["message"]
    return build_context(
        helpdesk={"name": app.settings.helpdesk.name, "address": app.settings.helpdesk.address},
        case=None, now=now, message=msg and {**msg, "date": msg["date"] or now},
        note=spec["note"], portal=spec.get("portal"), case_list=spec.get("case_list"))


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
        # A stranger's text in our mail to others: quoted, never in full (limits.quote_chars).
        description=excerpt(first_text or (msg["text"] if msg else ""),
                            app.settings.limits.quote_chars),
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
        portal=spec.get("portal"),
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
