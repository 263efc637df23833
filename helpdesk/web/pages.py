"""What the portal's pages show, read in a fixed number of SQL statements.

The list is one page of the store's listing (``store.listing``: the page and its
total). A case is its row, its participants, its messages, their attachments, its
linked cases and (staff) its events and suggestions: seven statements however long
its history.
A case outside the viewer's scope is ``None``, exactly like a case that does not exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, union_all
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import lifecycle
from helpdesk.core.access import Scope, Viewer, customer_sees_message, effective_scope, may_see
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.store import cases as stored_cases
from helpdesk.store.listing import ORDERS, SORTS, CaseQuery, CaseRow, list_cases
from helpdesk.store.orm import Attachment, Case, CaseLink, Event, Message, Participant


def status_label(app: App, category: str, status: str) -> str:
    cat = app.settings.categories.get(category)
    try:
        return lifecycle.label(Lifecycle(cat.lifecycle), status) if cat else status
    except ValueError:
        return status


def category_label(app: App, category: str) -> str:
    cat = app.settings.categories.get(category)
    return cat.label if cat else category


def is_final(app: App, category: str, status: str) -> bool:
    cat = app.settings.categories.get(category)
    return status in lifecycle.FINAL_STATUSES[Lifecycle(cat.lifecycle)] if cat else True


def status_choices(app: App) -> list[tuple[str, str]]:
    """Every status of the configured categories' lifecycles, with its label."""
    seen: dict[str, str] = {}
    for cat in app.settings.categories.values():
        for name, label in lifecycle.STATUSES[Lifecycle(cat.lifecycle)].items():
            seen.setdefault(name, label)
    return list(seen.items())


@dataclass
class ListParams:
    scope: Scope
    status: str  # "" open cases, "all", or one status
    category: str
    q: str
    sort: str
    order: str
    page: int


def list_params(app: App, viewer: Viewer, args: dict[str, str]) -> ListParams:
    """The query string, checked: anything unknown falls back to the default."""
    statuses = {name for name, _ in status_choices(app)}
    status = args.get("status", "")
    sort = args.get("sort", "updated")
    order = args.get("order", "desc")
    try:
        page = max(1, min(int(args.get("page", "1")), 100_000))
    except ValueError:
        page = 1
    category = args.get("category", "")
    return ListParams(
        scope=effective_scope(args.get("scope"), viewer),
        status=status if status == "all" or status in statuses else "",
        category=category if category in app.settings.categories else "",
        q=args.get("q", "").strip()[:200],
        sort=sort if sort in SORTS else "updated",
        order=order if order in ORDERS else "desc",
        page=page)


@dataclass
class ListPage:
    params: ListParams
    rows: list[CaseRow]
    total: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def case_list(session: Session, app: App, viewer: Viewer, params: ListParams) -> ListPage:
    size = app.settings.web.page_size if app.settings.web else 25
    scope: dict[str, Any] = {}
    if viewer.only_case:
        scope = {"ref": viewer.only_case, "participant": viewer.address}
    elif params.scope is Scope.MINE:
        scope = {"participant": viewer.address}
    elif params.scope is Scope.COMPANY:
        scope = {"participant": viewer.address, "or_domain": viewer.company}
    query = CaseQuery(
        status=params.status if params.status not in ("", "all") else None,
        open_only=params.status == "", category=params.category or None, q=params.q or None,
        sort=params.sort, order=params.order, limit=size, offset=(params.page - 1) * size,
        **scope)
    page = list_cases(session, query, count=True)
    return ListPage(params, page.rows, page.total or 0, size)


@dataclass
class ThreadMessage:
    id: int
    direction: str
    kind: str
    sender: str
    to: list[str]
    cc: list[str]
    subject: str
    date: datetime
    text: str
    internal: bool  # staff only: a customer never sees it
    attachments: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CasePage:
    case: Case
    participants: list[Participant]
    messages: list[ThreadMessage]
    linked: list[dict[str, Any]]
    events: list[Event]
    suggestions: list[Any]
    final: bool


def case_page(session: Session, app: App, viewer: Viewer, ref: str) -> CasePage | None:
    case = session.scalar(select(Case).where(Case.ref == ref.upper()))
    if case is None:
        return None
    participants = list(session.scalars(select(Participant).where(Participant.case_id == case.id)
                                        .order_by(Participant.id)))
    if not may_see(viewer, case.ref, {p.address for p in participants}, case.requester_domain):
        return None
    rows = session.execute(
        select(Message.id, Message.direction, Message.kind, Message.from_addr, Message.to_addrs,
               Message.cc_addrs, Message.subject, Message.date, Message.text)
        .where(Message.case_id == case.id).order_by(Message.date, Message.id)).all()
    messages = []
    for r in rows:
        internal = not customer_sees_message(r.direction, r.kind)
        if internal and not viewer.staff:
            continue
        messages.append(ThreadMessage(r.id, r.direction, r.kind, r.from_addr, r.to_addrs or [],
                                      r.cc_addrs or [], r.subject, r.date, r.text, internal))
    by_id = {m.id: m for m in messages}
    for a in session.execute(
            select(Attachment.id, Attachment.message_id, Attachment.filename, Attachment.size,
                   Attachment.content_type)
            .where(Attachment.message_id.in_(select(Message.id)
                                             .where(Message.case_id == case.id)))
            .order_by(Attachment.id)):
        if a.message_id in by_id:
            by_id[a.message_id].attachments.append(
                {"id": a.id, "filename": a.filename, "size": a.size})
    linked = _linked(session, app, viewer, case.id)
    events = list(session.scalars(select(Event).where(Event.case_id == case.id)
                                  .order_by(Event.id))) if viewer.staff else []
    # The articles the acknowledgement suggested (rows of their own). Staff only.
    suggestions = stored_cases.suggestions(session, case.id) if viewer.staff else []
    return CasePage(case, participants, messages, linked, events, suggestions,
                    is_final(app, case.category, case.status))


def _linked(session: Session, app: App, viewer: Viewer, case_id: int) -> list[dict[str, Any]]:
    """The cases linked to this one that the viewer may see. A stranger who typed a
    case's tag opens a new case linked to it *for staff*: its ref, subject and status
    are the other person's, so a customer sees only linked cases in their own scope."""
    other = Case.__table__.alias("other")
    visible: list[Any] = []
    if not viewer.staff:
        if viewer.only_case:  # a case link opens that case only
            return []
        mine = other.c.id.in_(select(Participant.case_id)
                              .where(Participant.address == viewer.address))
        visible = [or_(mine, other.c.requester_domain == viewer.company)
                   if viewer.company else mine]
    columns = (other.c.ref, other.c.subject, other.c.category, other.c.status)
    rows = session.execute(union_all(
        select(*columns).join(CaseLink, CaseLink.linked_case_id == other.c.id)
        .where(CaseLink.case_id == case_id, *visible),
        select(*columns).join(CaseLink, CaseLink.case_id == other.c.id)
        .where(CaseLink.linked_case_id == case_id, *visible)))
    return [{"ref": r.ref, "subject": r.subject,
             "status_label": status_label(app, r.category, r.status)} for r in rows]


def attachment(session: Session, app: App, viewer: Viewer, ref: str,
               attachment_id: int) -> tuple[str, bytes] | None:
    """(file name, bytes) of an attachment the viewer may see; None otherwise."""
    found = session.execute(
        select(Attachment, Message.direction, Message.kind, Case.ref, Case.requester_domain,
               Case.id).join(Message, Message.id == Attachment.message_id)
        .join(Case, Case.id == Message.case_id)
        .where(Attachment.id == attachment_id, Case.ref == ref.upper())).first()
    if found is None:
        return None
    att, direction, kind, case_ref, domain, case_id = found
    participants = set(session.scalars(select(Participant.address)
                                       .where(Participant.case_id == case_id)))
    if not may_see(viewer, case_ref, participants, domain):
        return None
    if not viewer.staff and not customer_sees_message(direction, kind):
        return None
    if att.data is not None:
        return att.filename, att.data
    root = app.settings.resolve(app.settings.helpdesk.attachments)
    path = Path(root) / att.sha256[:2] / att.sha256
    try:
        return att.filename, path.read_bytes()
    except OSError:
        return None
