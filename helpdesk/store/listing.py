"""One listing of cases for every overview: `helpdesk cases list` and the web portal.

A page of cases costs a fixed number of SQL statements whatever the number of cases
stored or shown: the page itself, its total, and (``details``) one statement each for
the participants, the support addresses and the linked cases of the whole page, which
select by the same filtered page as a subquery (no per-case query, no huge IN list).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.orm import Session

from helpdesk.core import lifecycle
from helpdesk.core.access import ref_query
from helpdesk.store.orm import Case, CaseAddress, CaseLink, Participant

FINAL_STATUSES = tuple(sorted({s for final in lifecycle.FINAL_STATUSES.values() for s in final}))
SORTS = ("created", "updated", "status")
ORDERS = ("asc", "desc")

# `status` sorts by where a status stands in its lifecycle, not alphabetically:
# new, being worked on, waiting on the customer, solved, finished.
_STATUS_RANK = {"open": 0, "in_progress": 1, "waiting": 2, "pending_seller": 2,
                "resolved": 3, "delivered": 4, "closed": 4, "not_completed": 4}


@dataclass(frozen=True, slots=True)
class CaseQuery:
    """What to list. Every filter given narrows the list (AND)."""

    status: str | None = None  # one machine name; None: any
    open_only: bool = False  # every status but the final ones (closed, delivered, not_completed)
    category: str | None = None
    requester: str | None = None  # exactly this requester address
    company: str | None = None  # requester of this domain
    participant: str | None = None  # cases this address takes part in ...
    or_domain: str | None = None  # ... or whose requester is of this domain (company scope)
    ref: str | None = None  # exactly this case
    q: str | None = None  # a case ID, or words of the subject / requester (all must match)
    sort: str = "updated"
    order: str = "desc"
    limit: int | None = None
    offset: int = 0


@dataclass(slots=True)
class CaseRow:
    id: int
    ref: str
    category: str
    status: str
    subject: str
    requester: str
    requester_name: str
    assignee: str | None
    created_at: datetime
    updated_at: datetime
    due_at: datetime | None
    participants: list[str] = field(default_factory=list)
    undeliverable: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    linked_refs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CasePage:
    rows: list[CaseRow]
    total: int | None  # None when not counted


_COLUMNS = (Case.id, Case.ref, Case.category, Case.status, Case.subject, Case.requester,
            Case.requester_name, Case.assignee, Case.created_at, Case.updated_at, Case.due_at)


def _filtered(query: CaseQuery, what: Any, dialect: str = "sqlite") -> Select[Any]:
    stmt = select(*what) if isinstance(what, tuple) else select(what)
    conditions: list[Any] = []
    if query.status:
        conditions.append(Case.status == query.status)
    if query.open_only:
        conditions.append(Case.status.not_in(FINAL_STATUSES))
    if query.category:
        conditions.append(Case.category == query.category)
    if query.requester:
        conditions.append(Case.requester == query.requester.lower())
    if query.company:
        conditions.append(Case.requester_domain == query.company.lower().lstrip("@"))
    if query.ref:
        conditions.append(Case.ref == query.ref.upper())
    if query.participant:
        mine = Case.id.in_(select(Participant.case_id)
                           .where(Participant.address == query.participant.lower()))
        conditions.append(or_(mine, Case.requester_domain == query.or_domain.lower())
                          if query.or_domain else mine)
    if query.q and query.q.strip():
        conditions.append(_text_search(query.q, dialect))
    return stmt.where(and_(*conditions)) if conditions else stmt


def _contains(column: Any, word: str, dialect: str) -> Any:
    """Case-insensitive substring. SQLite's LIKE already ignores ASCII case (and its
    lower() folds no more than that), so plain LIKE there: four times faster than
    lower(x) LIKE lower(y) over 100,000 subjects. PostgreSQL: ILIKE."""
    pattern = "%" + word.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
    if dialect == "sqlite":
        return column.like(pattern, escape="/")
    return column.ilike(pattern, escape="/")


def _text_search(q: str, dialect: str) -> Any:
    ref = ref_query(q)
    if ref:
        return Case.ref == ref
    words = q.split()[:8]
    matches = [or_(*(_contains(c, w, dialect)
                     for c in (Case.subject, Case.requester, Case.requester_name)))
               for w in words]
    if len(words) == 1 and words[0].isdigit():  # "42": CC-000042, BL-000042 ... too
        return or_(Case.ref.endswith(f"-{int(words[0]):06d}"), *matches)
    return and_(*matches)


def _ordered(stmt: Select[Any], query: CaseQuery) -> Select[Any]:
    if query.sort not in SORTS or query.order not in ORDERS:
        raise ValueError(f"sort must be one of {SORTS} and order one of {ORDERS}")
    if query.sort == "status":
        key: Any = case(_STATUS_RANK, value=Case.status, else_=5)
    else:
        key = Case.created_at if query.sort == "created" else Case.updated_at
    if query.order == "desc":
        return stmt.order_by(key.desc(), Case.id.desc())
    return stmt.order_by(key.asc(), Case.id.asc())


def _paged(stmt: Select[Any], query: CaseQuery) -> Select[Any]:
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    if query.offset:
        stmt = stmt.offset(query.offset)
    return stmt


def list_cases(session: Session, query: CaseQuery, *, count: bool = False,
               details: bool = False) -> CasePage:
    """A page of cases; with ``count`` also how many match in all; with ``details``
    also their participants, support addresses and linked cases."""
    dialect = session.get_bind().dialect.name
    if query.sort == "status" and query.limit is not None:
        # Sorting by a computed rank cannot use an index: sort the narrow ids, then
        # fetch the page's rows (a third less time over 30,000 open cases).
        ids = _paged(_ordered(_filtered(query, Case.id, dialect), query), query)
        page = _ordered(select(*_COLUMNS).where(Case.id.in_(ids)), query)
    else:
        page = _paged(_ordered(_filtered(query, _COLUMNS, dialect), query), query)
    rows = [CaseRow(*r) for r in session.execute(page)]
    total = None
    if count:
        total = len(rows) if query.limit is None and not query.offset else \
            session.scalar(_filtered(query, func.count(Case.id), dialect)) or 0
    if details and rows:
        _add_details(session, query, rows, dialect)
    return CasePage(rows, total)


def _add_details(session: Session, query: CaseQuery, rows: list[CaseRow], dialect: str) -> None:
    ids = _paged(_ordered(_filtered(query, Case.id, dialect), query), query)
    by_id = {row.id: row for row in rows}
    for case_id, address, bad in session.execute(
            select(Participant.case_id, Participant.address, Participant.undeliverable)
            .where(Participant.case_id.in_(ids)).order_by(Participant.id)):
        by_id[case_id].participants.append(address)
        if bad:
            by_id[case_id].undeliverable.append(address)
    for case_id, address in session.execute(
            select(CaseAddress.case_id, CaseAddress.address)
            .where(CaseAddress.case_id.in_(ids)).order_by(CaseAddress.id)):
        by_id[case_id].addresses.append(address)
    linked: dict[int, set[str]] = defaultdict(set)
    other = Case.__table__.alias("other")
    for case_id, ref in session.execute(
            select(CaseLink.case_id, other.c.ref)
            .join(other, other.c.id == CaseLink.linked_case_id)
            .where(CaseLink.case_id.in_(ids))
            .union_all(select(CaseLink.linked_case_id, other.c.ref)
                       .join(other, other.c.id == CaseLink.case_id)
                       .where(CaseLink.linked_case_id.in_(ids)))):
        linked[case_id].add(ref)
    for case_id, refs in linked.items():
        if case_id in by_id:
            by_id[case_id].linked_refs = sorted(refs)
