"""Render queued mail after the transaction that queued it, outside the write lock.

Queuing (``helpdesk.outbound.queue``) fixes everything about a mail but its body:
the recipients, the Message-ID, the threading headers, and in ``Outbox.render`` the
template values the case does not hold (the note, the reminder, the mail being
answered...). The sender renders the mail the first time it claims the row, from
those and the case as it is then, in a read transaction (``render_batch``), and keeps
the bytes in a short write of their own (``outbox.keep``), so every retry sends the
very same mail. Rendering and MIME building are most of the cost of a mail and grow
with what the customer wrote: done this way, no mail holds the database's write lock
for them, and a sweep of a thousand reminders stays short.

A batch of claimed mail is rendered together: what its cases hold (the case, its
participants, linked cases, first words, suggestions) is read with one query per
kind of fact for all of them (``_CaseFacts``), not once per mail; a case's
acknowledgement and its staff notice usually share them.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import lifecycle
from helpdesk.core.amplification import excerpt
from helpdesk.core.decide import Mail
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.model import Direction, InboundMessage
from helpdesk.mail import compose
from helpdesk.mail.context import build_context
from helpdesk.outbound.outbox import Bytes, Claimed
from helpdesk.store.db import is_storage_trouble
from helpdesk.store.orm import Case, CaseLink, Message, Outbox, Participant, Suggestion

if TYPE_CHECKING:
    from helpdesk.mail.templates import TemplateBatch


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    html: str
    raw: bytes


# Renders a batch of claimed mail in a read session: per mail, its rendering or why not.
Render = Callable[[Session, Sequence[Claimed]], list["Rendered | Exception"]]


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


def render_batch(session: Session, app: App, mails: Sequence[Claimed]
                 ) -> list[Rendered | Exception]:
    """The body and final bytes of each claimed mail, from its row and its case, or the
    exception that kept it from being rendered (a broken template). Trouble with the
    database itself is raised: it is no fault of the mail."""
    facts = _CaseFacts(session.connection(), app, mails)
    templates = app.renderer.batch()
    out: list[Rendered | Exception] = []
    for mail in mails:
        try:
            out.append(_render(app, templates, facts, mail))
        except Exception as exc:
            if is_storage_trouble(exc):
                raise
            out.append(exc)
    return out


def _render(app: App, templates: TemplateBatch, facts: _CaseFacts, mail: Claimed) -> Rendered:
    assert mail.spec is not None
    spec = _from_json(mail.spec)
    now = mail.created_at  # the mail is dated, and speaks, as of when it was decided
    if mail.case_id is None:
        category, context = spec["category"], _notice_context(app, spec, now)
    else:
        category = facts.cases[mail.case_id]["category"]
        context = _context(app, facts, mail.case_id, spec, now)
    body = templates.render(category, mail.kind, context)
    envelope = compose.Envelope(
        from_address=mail.mail_from, to=mail.recipients, message_id=mail.message_id,
        **{**spec["envelope"], "references": tuple(spec["envelope"]["references"])})
    return Rendered(body.text, body.html, compose.build(envelope, body.text, body.html, now))


def outbox_renderer(app: App) -> Render:
    """The ``render`` the sender calls, in a read transaction, for the claimed rows whose
    ``raw`` is still NULL."""
    def render(session: Session, mails: Sequence[Claimed]) -> list[Rendered | Exception]:
        return render_batch(session, app, mails)
    return render


def to_keep(mail: Claimed, rendered: Rendered) -> Bytes:
    """What ``outbox.keep`` stores of a rendered mail: its bytes, and the case's copy."""
    text, html = case_copy(rendered, mail.spec)
    return Bytes(mail.id, mail.message_id, rendered.raw, text, html)


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
    if carries_sign_in_link(row.render):
        row.raw, row.render = None, None


def carries_sign_in_link(spec: dict[str, Any] | None) -> bool:
    """Whether a mail rendered from ``spec`` (``Outbox.render``) holds a sign-in link."""
    portal = (spec or {}).get("portal") or {}
    return bool(portal.get("login_url") or "?t=" in (portal.get("case_url") or ""))


def _notice_context(app: App, spec: dict[str, Any], now: datetime) -> dict[str, Any]:
    msg = spec["message"]
    return build_context(
        helpdesk={"name": app.settings.helpdesk.name, "address": app.settings.helpdesk.address},
        case=None, now=now, message=msg and {**msg, "date": msg["date"] or now},
        note=spec["note"], portal=spec.get("portal"), case_list=spec.get("case_list"))


class _CaseFacts:
    """What the templates say about the cases of a batch of mail, read with one query
    per kind of fact: the cases (and those their mails name as old or existing ones),
    participants, linked references, the first words of each, suggestions."""

    def __init__(self, conn: Connection, app: App, mails: Sequence[Claimed]) -> None:
        ids = {m.case_id for m in mails if m.case_id is not None}
        named = {(m.spec or {}).get(key) for m in mails for key in ("old_case_id",
                                                                    "existing_case_id")}
        self.cases = _cases(conn, ids | {i for i in named if i is not None})
        self.participants = _by_case(conn, select(Participant.case_id, Participant.address)
                                     .where(Participant.case_id.in_(ids))
                                     .order_by(Participant.id))
        linked = _by_case(conn, select(CaseLink.case_id, Case.ref)
                          .join(Case, Case.id == CaseLink.linked_case_id)
                          .where(CaseLink.case_id.in_(ids)))
        for case_id, refs in _by_case(conn, select(CaseLink.linked_case_id, Case.ref)
                                      .join(Case, Case.id == CaseLink.case_id)
                                      .where(CaseLink.linked_case_id.in_(ids))).items():
            linked[case_id] = linked.get(case_id, []) + refs
        self.linked = {case_id: sorted(set(refs)) for case_id, refs in linked.items()}
        # Only as much of the first inbound text as an excerpt can show: the same excerpt.
        limit = app.settings.limits.quote_chars
        first = (select(func.min(Message.id)).where(Message.case_id.in_(ids),
                                                    Message.direction == str(Direction.IN))
                 .group_by(Message.case_id))
        self.first_text = dict(conn.execute(
            select(Message.case_id, func.substr(Message.text, 1, limit + 1))
            .where(Message.id.in_(first.scalar_subquery()))).all())
        self.suggestions = _by_case(conn, select(
            Suggestion.case_id, Suggestion.slug, Suggestion.title, Suggestion.url,
            Suggestion.summary, Suggestion.score)
            .where(Suggestion.case_id.in_(ids)).order_by(Suggestion.rank), whole=True)


def _cases(conn: Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
    return {row.id: row._asdict() for row in conn.execute(
        select(Case.id, Case.ref, Case.subject, Case.status, Case.category, Case.requester,
               Case.requester_name, Case.created_at).where(Case.id.in_(ids)))}


def _by_case(conn: Connection, query: Any, whole: bool = False) -> dict[int, list[Any]]:
    """``{case id: [the rest of each row]}``, in the query's order; each row's second
    column alone, or with ``whole`` the row as a dict without the case id."""
    grouped: dict[int, list[Any]] = defaultdict(list)
    for row in conn.execute(query):
        grouped[row[0]].append({k: v for k, v in row._asdict().items() if k != "case_id"}
                               if whole else row[1])
    return grouped


def _context(app: App, facts: _CaseFacts, case_id: int, spec: dict[str, Any],
             now: datetime) -> dict[str, Any]:
    msg = spec["message"]
    if msg is not None:
        msg = {**msg, "date": msg["date"] or now}
    existing = spec.get("existing_case_id")
    existing_case = None if existing is None else facts.cases[existing]
    old = spec.get("old_case_id")
    return build_context(
        helpdesk={"name": app.settings.helpdesk.name, "address": app.settings.helpdesk.address},
        case=_case_dict(app, facts, case_id),
        message=msg,
        # A stranger's text in our mail to others: quoted, never in full (limits.quote_chars).
        description=excerpt(facts.first_text.get(case_id) or (msg["text"] if msg else ""),
                            app.settings.limits.quote_chars),
        note=spec["note"],
        reminder=spec.get("reminder"),
        reopen_days=max(1, math.ceil(app.settings.timers.resolved_close_after / timedelta(days=1))),
        old_case=None if old is None else _brief(facts.cases[old]),
        existing_case=None if existing_case is None else {
            **_brief(existing_case),
            "status_label": lifecycle.label(
                Lifecycle(app.settings.categories[existing_case["category"]].lifecycle),
                existing_case["status"])},
        output=spec.get("output", ""),
        relay=spec.get("relay"),
        errors=spec["errors"],
        suggestions=[dict(s) for s in facts.suggestions.get(case_id, [])],
        now=now,
        portal=spec.get("portal"),
    )


def _case_dict(app: App, facts: _CaseFacts, case_id: int) -> dict[str, Any]:
    case = facts.cases[case_id]
    category = app.settings.categories[case["category"]]
    lc = Lifecycle(category.lifecycle)
    return {
        "ref": case["ref"], "subject": case["subject"], "status": case["status"],
        "status_label": lifecycle.label(lc, case["status"]),
        "category": case["category"], "category_label": category.label,
        "requester": case["requester"], "requester_name": case["requester_name"],
        "created_at": case["created_at"],
        "participants": list(facts.participants.get(case_id, [])),
        "linked_refs": facts.linked.get(case_id, []),
    }


def _brief(case: dict[str, Any]) -> dict[str, Any]:
    return {"ref": case["ref"], "subject": case["subject"]}


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
