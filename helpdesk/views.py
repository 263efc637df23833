"""Read-only views of cases and the quarantine, shaped as the CLI's --json contract."""
from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from helpdesk.app import App
from helpdesk.core.refs import ref_candidates
from helpdesk.mail.parsing import parse_message
from helpdesk.store import cases
from helpdesk.store.orm import Attachment, Case, Event, Inbound, Message


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def list_cases(app: App, *, status: str | None = None, category: str | None = None,
               requester: str | None = None, company: str | None = None,
               sort: str = "created", descending: bool = False, limit: int | None = None,
               offset: int = 0) -> list[dict[str, Any]]:
    """The cases by ``sort``, in a fixed number of queries (store.listing)."""
    from helpdesk.store.listing import CaseQuery
    from helpdesk.store.listing import list_cases as listing
    query = CaseQuery(status=status, category=category, requester=requester, company=company,
                      sort=sort, order="desc" if descending else "asc", limit=limit,
                      offset=offset)
    with app.reads() as session:
        return [_row_summary(app, row) for row in listing(session, query, details=True).rows]


def _row_summary(app: App, row: Any) -> dict[str, Any]:
    from helpdesk.core import lifecycle
    from helpdesk.core.lifecycle import Lifecycle
    category = app.settings.categories.get(row.category)
    return {
        "ref": row.ref,
        "category": row.category,
        "category_label": category.label if category else row.category,
        "status": row.status,
        "status_label": lifecycle.label(Lifecycle(category.lifecycle), row.status)
        if category else row.status,
        "subject": row.subject,
        "requester": row.requester,
        "participants": row.participants,
        "undeliverable": row.undeliverable,
        "assignee": row.assignee,
        "addresses": row.addresses,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "due_at": _iso(row.due_at),
        "linked_refs": row.linked_refs,
    }


def resolve_ref(app: App, typed: str) -> str:
    """The reference of the one case ``typed`` means (``CC-000001``, ``cc-1``, or ``1`` when
    only one prefix has a case 1); LookupError naming the candidates otherwise."""
    prefixes = [c.prefix for c in app.settings.categories.values()]
    candidates = ref_candidates(typed, prefixes) or (typed.strip().upper(),)
    with app.reads() as session:
        found = list(session.scalars(select(Case.ref).where(Case.ref.in_(candidates))
                                     .order_by(Case.ref)))
    if len(found) == 1:
        return found[0]
    if found:
        raise LookupError(f"{typed} is ambiguous: {' or '.join(found)}")
    raise LookupError(f"no case {typed}")


def show_case(app: App, ref: str) -> dict[str, Any] | None:
    from helpdesk.store.listing import CaseQuery
    from helpdesk.store.listing import list_cases as listing
    with app.reads() as session:
        found = listing(session, CaseQuery(ref=ref.upper(), limit=1), details=True).rows
        if not found:
            return None
        case = found[0]
        result = _row_summary(app, case)
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
    """``cases show`` for a terminal: the case, then every message with its body."""
    lines = [f"{case['ref']}  [{case['category_label']}]  {case['status_label']}",
             f"Subject:      {printable(case['subject'])}",
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
        # Outgoing mail is shown with whom it went to, incoming with who wrote it.
        who = (f"to {', '.join(m['to'] + m['cc'])}" if m["direction"] == "out"
               else f"from {m['from']}" + (f", cc {', '.join(m['cc'])}" if m["cc"] else ""))
        arrow = "->" if m["direction"] == "out" else "<-"
        lines += ["", f"  {m['date'][:19]} {arrow} {m['kind']}  {who}",
                  f"  Subject: {printable(m['subject'])}"]
        lines += [f"  Attachment: {printable(a['filename'])} ({a['size']} bytes)"
                  for a in m["attachments"]]
        body = printable(m["text"], keep_lines=True).strip("\n")
        lines += [f"    {line}".rstrip() for line in body.split("\n")] if body else \
            ["    (the body is written when the outbox sends it)" if m["direction"] == "out"
             else "    (no text)"]
    lines.append("\nEvents:")
    for e in case["events"]:
        lines.append(f"  {e['at'][:19]} {e['type']:<22} {printable(str(e['detail']))}")
    return "\n".join(lines)


# Mail text is written by strangers: control characters (a terminal's escape
# sequences among them) are shown as "?" rather than sent to the admin's terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, keep_lines: bool = False) -> str:
    """``text`` safe to print on a terminal (one line unless ``keep_lines``)."""
    text = text.replace("\r\n", "\n")
    return (_CONTROL if keep_lines else _CONTROL_OR_NEWLINE).sub("?", text.expandtabs(4))


def list_failed(app: App) -> list[dict[str, Any]]:
    with app.reads() as session:
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


def failed_message(app: App, inbound_id: int) -> dict[str, Any] | None:
    """One quarantined message: why it failed, its header block as received, its bytes."""
    with app.reads() as session:
        row = session.get(Inbound, inbound_id)
        if row is None or row.status != "failed":
            return None
        return {"id": row.id, "source": row.source, "received_at": _iso(row.received_at),
                "error": row.error, "attempts": row.attempts, "size": len(row.raw),
                "raw": row.raw}


def render_failed_text(failed: dict[str, Any]) -> str:
    raw: bytes = failed["raw"]
    # The header block as it came, up to the first empty line: a mail that failed to
    # parse is shown without parsing it again.
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    head = raw[:min(ends)] if ends else raw
    lines = [f"Quarantined message {failed['id']}",
             f"Received:  {failed['received_at']} via {failed['source']} "
             f"({failed['size']} bytes, {failed['attempts']} attempt(s))",
             f"Reason:    {printable(failed['error'] or '')}",
             "", "Headers:"]
    lines += [f"  {printable(line)}" for line in
              head.decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n")]
    lines += ["", f"`helpdesk failed show {failed['id']} --raw` prints the message as received; "
                  f"`helpdesk failed retry {failed['id']}` runs it again."]
    return "\n".join(lines)
