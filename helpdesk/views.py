"""Read-only views of cases and the quarantine, shaped as the CLI's --json contract."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select

from helpdesk.app import App
from helpdesk.mail.parsing import parse_message
from helpdesk.store import cases
from helpdesk.store.orm import Attachment, Case, CaseAddress, Event, Inbound, Message, Participant


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _case_summary(session: Any, app: App, case: Case) -> dict[str, Any]:
    participants = session.scalars(select(Participant).where(Participant.case_id == case.id)
                                   .order_by(Participant.id)).all()
    category = app.settings.categories.get(case.category)
    from helpdesk.core import lifecycle
    from helpdesk.core.lifecycle import Lifecycle
    return {
        "ref": case.ref,
        "category": case.category,
        "category_label": category.label if category else case.category,
        "status": case.status,
        "status_label": lifecycle.label(Lifecycle(category.lifecycle), case.status)
        if category else case.status,
        "subject": case.subject,
        "requester": case.requester,
        "participants": [p.address for p in participants],
        "undeliverable": [p.address for p in participants if p.undeliverable],
        "assignee": case.assignee,
        "addresses": list(session.scalars(select(CaseAddress.address)
                                          .where(CaseAddress.case_id == case.id)
                                          .order_by(CaseAddress.id))),
        "created_at": _iso(case.created_at),
        "updated_at": _iso(case.updated_at),
        "due_at": _iso(case.due_at),
        "linked_refs": cases.linked_refs(session, case.id),
    }


_SORT = {"created": Case.created_at, "updated": Case.updated_at, "status": Case.status}


def list_cases(app: App, *, status: str | None = None, category: str | None = None,
               requester: str | None = None, company: str | None = None,
               sort: str = "created") -> list[dict[str, Any]]:
    query = select(Case)
    if status:
        query = query.where(Case.status == status)
    if category:
        query = query.where(Case.category == category)
    if requester:
        query = query.where(Case.requester == requester.lower())
    if company:
        query = query.where(Case.requester_domain == company.lower().lstrip("@"))
    query = query.order_by(_SORT[sort], Case.id)
    with app.sessions() as session:
        return [_case_summary(session, app, c) for c in session.scalars(query)]


def show_case(app: App, ref: str) -> dict[str, Any] | None:
    with app.sessions() as session:
        case = cases.by_ref(session, ref)
        if case is None:
            return None
        result = _case_summary(session, app, case)
        messages = session.scalars(select(Message).where(Message.case_id == case.id)
                                   .order_by(Message.id)).all()
        result["messages"] = [{
            "direction": m.direction, "kind": m.kind, "from": m.from_addr, "to": m.to_addrs,
            "cc": m.cc_addrs, "subject": m.subject, "message_id": m.message_id,
            "date": _iso(m.date), "text": m.text,
            "attachments": [{"filename": a.filename, "content_type": a.content_type,
                             "size": a.size, "sha256": a.sha256}
                            for a in session.scalars(select(Attachment)
                                                     .where(Attachment.message_id == m.id))],
        } for m in messages]
        result["suggestions"] = [{"slug": s.slug, "title": s.title, "url": s.url, "score": s.score}
                                 for s in cases.suggestions(session, case.id)]
        result["events"] = [{"at": _iso(e.at), "type": e.type, "detail": e.detail}
                            for e in session.scalars(select(Event).where(Event.case_id == case.id)
                                                     .order_by(Event.id))]
        # The history of linked cases, so a case reopened as a new one carries the old story.
        result["linked"] = [{"ref": r, "status": c.status, "subject": c.subject}
                            for r in result["linked_refs"] if (c := cases.by_ref(session, r))]
        return result


def render_case_text(case: dict[str, Any]) -> str:
    lines = [f"{case['ref']}  [{case['category_label']}]  {case['status_label']}",
             f"Subject:      {case['subject']}",
             f"Requester:    {case['requester']}",
             f"Participants: {', '.join(case['participants'])}",
             f"Created:      {case['created_at']}   Updated: {case['updated_at']}"]
    if case["assignee"]:
        lines.append(f"Assignee:     {case['assignee']}")
    if case["linked_refs"]:
        lines.append(f"Linked:       {', '.join(case['linked_refs'])}")
    if case["suggestions"]:
        lines.append("Suggested:    " + "\n              ".join(
            f"{s['title']} ({s['url']}, score {s['score']:.2f})" for s in case["suggestions"]))
    lines.append("\nMessages:")
    for m in case["messages"]:
        arrow = "<-" if m["direction"] == "in" else "->"
        lines.append(f"  {m['date'][:19]} {arrow} {m['kind']:<13} {m['from']}: {m['subject']}")
    lines.append("\nEvents:")
    for e in case["events"]:
        lines.append(f"  {e['at'][:19]} {e['type']:<22} {e['detail']}")
    return "\n".join(lines)


def list_failed(app: App) -> list[dict[str, Any]]:
    with app.sessions() as session:
        rows = session.scalars(select(Inbound).where(Inbound.status == "failed")
                               .order_by(Inbound.id)).all()
        return [{"id": r.id, "source": r.source, "received_at": _iso(r.received_at),
                 "error": r.error, "attempts": r.attempts, "size": len(r.raw),
                 "subject": _subject(r.raw)} for r in rows]


def _subject(raw: bytes) -> str:
    try:
        return parse_message(raw).subject
    except Exception:  # it is in the quarantine because it does not parse
        return ""
