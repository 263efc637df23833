"""Queries about cases: each looks up just what one mail or one command needs,
through an index, so the cost of a mail never grows with the number of cases.

The hot path (an inbound mail's transaction) works on ``CaseRecord``s read and
written with Core statements (``store.tables``). The functions that take ``db``
run on a ``Connection`` or on an ORM ``Session`` alike (web actions and commands
pass theirs); ``by_ref`` and ``suggestions`` return ORM objects, for the commands
and the web.
"""
from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from helpdesk.core.access import asks_for_case_list
from helpdesk.core.amplification import OpenedCases, mailbox
from helpdesk.core.decide import Context, Policy, duplicate_key, route
from helpdesk.core.matching import Candidates, CaseView
from helpdesk.core.model import InboundMessage
from helpdesk.core.refs import (
    format_ref,
    is_own_message_id,
    parse_reply_address,
    parse_staff_reply_address,
    reply_token,
    staff_reply_token,
    subject_tags,
)
from helpdesk.core.trust import UNVERIFIED, SenderTrust
from helpdesk.store import tables
from helpdesk.store.orm import Case, Suggestion

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from helpdesk.app import App

    Db = Connection | Session

OPEN_CONNECTION_STATUSES = ("in_progress", "pending_seller")


@dataclass(slots=True, eq=False)
class CaseRecord:
    """A case row as the hot path reads and changes it; ``save`` writes what changed."""

    id: int
    ref: str
    category: str
    status: str
    subject: str
    requester: str
    requester_name: str
    requester_domain: str
    reply_token: str
    duplicate_key: str | None
    assignee: str | None
    opened_by: str | None
    opened_by_domain: str | None
    created_at: datetime
    updated_at: datetime
    status_since: datetime
    clock_started_at: datetime | None
    reminders_sent: int
    due_at: datetime | None
    notice_due_at: datetime | None
    saved: dict[str, Any] = field(default_factory=dict, repr=False)  # as last read or written

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _COLUMNS}

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.values().items() if self.saved.get(k, _UNSET) != v}


_COLUMNS = tuple(f.name for f in fields(CaseRecord) if f.name != "saved")
_UNSET = object()
# The hot path's statements are built once: SQLAlchemy then only looks up their
# compiled form (building one costs more than running it).
_CASE = tables.case
_SELECT_CASE = select(*(_CASE.c[name] for name in _COLUMNS))
_CASE_BY_ID = _SELECT_CASE.where(_CASE.c.id == bindparam("case_id"))
_CASE_BY_REF = _SELECT_CASE.where(_CASE.c.ref == bindparam("ref"))
_INSERT_CASE = insert(_CASE)
_UPDATE_CASE = update(_CASE).where(_CASE.c.id == bindparam("case_id"))


def _record(row: Any) -> CaseRecord:
    values = dict(row._mapping)
    return CaseRecord(**values, saved=values)


def load(db: Db, case_id: int) -> CaseRecord:
    return _record(db.execute(_CASE_BY_ID, {"case_id": case_id}).one())


def load_by_ref(db: Db, ref: str) -> CaseRecord | None:
    row = db.execute(_CASE_BY_REF, {"ref": ref.upper()}).first()
    return _record(row) if row else None


def create(db: Db, **values: Any) -> CaseRecord:
    """Insert a new case; its record, with the id the database gave it."""
    values["id"] = db.execute(_INSERT_CASE, values).inserted_primary_key[0]
    return CaseRecord(**values, saved=dict(values))


def save(db: Db, case: CaseRecord) -> None:
    """Write the columns of ``case`` that changed since it was read (none: no statement)."""
    changed = case.changes()
    if changed:
        db.execute(_UPDATE_CASE, {"case_id": case.id, **changed})
        case.saved.update(changed)


_PEOPLE = tables.participant.c
_PARTICIPANTS_OF = select(_PEOPLE.address, _PEOPLE.undeliverable).where(
    _PEOPLE.case_id == bindparam("case_id"))
_SUGGESTED = tables.suggestion.c
_SLUGS_OF = select(_SUGGESTED.slug).where(_SUGGESTED.case_id == bindparam("case_id")).order_by(
    _SUGGESTED.rank)


def view(db: Db, case: CaseRecord | Case, policy: Policy) -> CaseView:
    rows = db.execute(_PARTICIPANTS_OF, {"case_id": case.id}).all()
    return CaseView(
        id=case.id, ref=case.ref, category=case.category,
        lifecycle=policy.category(case.category).lifecycle, status=case.status,
        subject=case.subject, requester=case.requester, requester_domain=case.requester_domain,
        participants=frozenset(address for address, _ in rows),
        undeliverable=frozenset(address for address, undeliverable in rows if undeliverable),
        assignee=case.assignee,
        suggested=tuple(db.scalars(_SLUGS_OF, {"case_id": case.id})),
        notice_held=case.notice_due_at is not None,
    )


def suggestions(session: Session, case_id: int) -> list[Suggestion]:
    """What the acknowledgement of a case suggested, best first."""
    return list(session.scalars(select(Suggestion).where(Suggestion.case_id == case_id)
                                .order_by(Suggestion.rank)))


def by_ref(session: Session, ref: str) -> Case | None:
    return session.scalar(select(Case).where(Case.ref == ref.upper()))


_MESSAGE = tables.message.c
_CASES_OF_MESSAGE_IDS = select(_MESSAGE.message_id, _MESSAGE.case_id).where(
    _MESSAGE.message_id.in_(bindparam("ids", expanding=True)))


def _case_ids_of_message_ids(db: Db, message_ids: tuple[str, ...]) -> dict[str, int]:
    return dict(db.execute(_CASES_OF_MESSAGE_IDS, {"ids": list(message_ids[:50])}).all())


def case_of_message_ids(db: Db, message_ids: tuple[str, ...]) -> CaseRecord | None:
    """The case that sent or received one of these Message-IDs (most specific first)."""
    if not message_ids:
        return None
    found = _case_ids_of_message_ids(db, message_ids)
    for mid in message_ids:
        if mid in found:
            return load(db, found[mid])
    return None


def cases_of_thread(db: Db, message_ids: tuple[str, ...], domain: str,
                    secret: bytes) -> tuple[CaseRecord | None, CaseRecord | None]:
    """(the case one of our own Message-IDs names, the case one made by anyone else
    names): each the most specific such id's. Ours are keyed (``is_own_message_id``)."""
    if not message_ids:
        return None, None
    found = _case_ids_of_message_ids(db, message_ids)
    named = [mid for mid in message_ids if mid in found]
    own = next((mid for mid in named if is_own_message_id(mid, domain, secret)), None)
    theirs = next((mid for mid in named if mid != own), None) if own is None else None
    return (load(db, found[own]) if own else None,
            load(db, found[theirs]) if theirs else None)


def case_of_reply_address(db: Db, msg: InboundMessage, secret: bytes) -> CaseRecord | None:
    """The case whose reply address the mail was sent to: the case's own (its token
    keyed with the ref), or a staff member's (keyed with the sender's address too)."""
    for address in (*msg.envelope_recipients, *msg.to, *msg.cc):
        parsed = parse_reply_address(address)
        if parsed and parsed[2] == reply_token(secret, parsed[1]):
            if case := load_by_ref(db, parsed[1]):
                return case
        staff = parse_staff_reply_address(address)
        if staff and staff[2] == staff_reply_token(secret, staff[1], msg.sender):
            if case := load_by_ref(db, staff[1]):
                return case
    return None


def opened_cases(db: Db, sender: str, policy: Policy,
                 now: datetime) -> tuple[OpenedCases, ...]:
    """How many cases ``sender``, and its domain, opened in each new-case window (one
    query); a public mail domain's count is not asked for (it is never one sender)."""
    windows = [window for _, window in policy.new_cases_per_sender]
    if not windows:
        return ()
    sender = mailbox(sender)  # as ``Case.opened_by`` holds it
    domain = sender.rpartition("@")[2]
    by_domain = domain not in policy.public_domains
    since = {f"since_{i}": now - window for i, window in enumerate(windows)}
    row = db.execute(_opened_counts(len(windows), by_domain),
                     {"sender": sender, "domain": domain, "oldest": min(since.values()),
                      **since}).one()
    n = len(windows)
    return tuple(OpenedCases(window, row[i] or 0, (row[n + i] or 0) if by_domain else 0)
                 for i, window in enumerate(windows))


@functools.cache
def _opened_counts(windows: int, by_domain: bool) -> Select[Any]:
    """The statement of ``opened_cases``: the sender's count in each window, then its
    domain's (whose cases include the sender's own)."""
    c = _CASE.c
    since = [bindparam(f"since_{i}") for i in range(windows)]
    mine = c.opened_by == bindparam("sender")
    counts = [func.count().filter(and_(mine, c.created_at > s)) for s in since]
    if by_domain:
        counts += [func.count().filter(c.created_at > s) for s in since]
    who = c.opened_by_domain == bindparam("domain") if by_domain else mine
    return select(*counts).where(who, c.created_at > bindparam("oldest"))


def case_of_subject(db: Db, subject: str) -> CaseRecord | None:
    for ref in subject_tags(subject):
        if case := load_by_ref(db, ref):
            return case
    return None


def load_context(db: Db, msg: InboundMessage, policy: Policy, secret: bytes,
                 now: datetime | None = None, sender_trust: SenderTrust = UNVERIFIED) -> Context:
    """Everything ``decide`` needs about this mail's cases. ``now`` counts the sender's
    recent new cases (None: no mail that can open one, e.g. a web reply to a case);
    ``sender_trust`` is what the caller verified of the sender."""
    views: dict[int, CaseView] = {}  # a case found twice is read once

    def as_view(case: CaseRecord | None) -> CaseView | None:
        if case is None:
            return None
        if case.id not in views:
            views[case.id] = view(db, case, policy)
        return views[case.id]

    own, theirs = cases_of_thread(db, msg.thread_ids, policy.hygiene.own_domain, secret)
    candidates = Candidates(
        by_message_id=as_view(own),
        by_reply_address=as_view(case_of_reply_address(db, msg, secret)),
        by_subject_tag=as_view(case_of_subject(db, msg.subject)),
        by_their_message_id=as_view(theirs),
    )
    bounced = None
    if msg.bounce is not None:
        original = msg.bounce.original_message_id
        bounced = as_view(case_of_message_ids(db, (original,) if original else ()))
        if bounced is None:  # a bounce that quotes only our subject line
            bounced = (candidates.by_message_id or candidates.by_their_message_id
                       or candidates.by_subject_tag)
    category = route(msg, policy)
    key = duplicate_key(msg, category)
    duplicate = None
    if key:
        row = db.execute(_OPEN_DUPLICATE, {"category": category.name, "key": key,
                                           "domain": msg.sender.rpartition("@")[2]}).first()
        duplicate = _record(row) if row else None
    return Context(candidates=candidates, bounced_case=bounced, open_duplicate=as_view(duplicate),
                   sender_trust=sender_trust,
                   opened_cases=opened_cases(db, msg.sender, policy, now) if now else (),
                   sender_known=asks_for_case_list(msg.subject, msg.text)
                   and is_participant(db, msg.sender))


_OPEN_DUPLICATE = _SELECT_CASE.where(
    _CASE.c.category == bindparam("category"), _CASE.c.requester_domain == bindparam("domain"),
    _CASE.c.duplicate_key == bindparam("key"),
    _CASE.c.status.in_(OPEN_CONNECTION_STATUSES)).limit(1)
_DUE = select(_CASE.c.id).where(_CASE.c.id.in_(bindparam("ids", expanding=True)),
                                _CASE.c.due_at <= bindparam("now"))


def due(db: Db, case_ids: list[int], now: datetime) -> list[int]:
    """Those of ``case_ids`` whose next timer step is due as of ``now``."""
    if not case_ids:
        return []
    return list(db.scalars(_DUE, {"ids": case_ids, "now": now}))


_ANY_PARTICIPANT = select(_PEOPLE.id).where(_PEOPLE.address == bindparam("address")).limit(1)


def is_participant(db: Db, address: str) -> bool:
    """Whether the address is the requester or a participant of any case."""
    return db.scalar(_ANY_PARTICIPANT, {"address": address.lower()}) is not None


_COUNTER = tables.ref_counter
_BUMP = (update(_COUNTER).where(_COUNTER.c.prefix == bindparam("counter"))
         .values(last=_COUNTER.c.last + 1).returning(_COUNTER.c.last))
_INSERT_COUNTER = insert(_COUNTER)


def next_ref(db: Db, prefix: str) -> str:
    """Hand out the next number for a prefix inside the caller's transaction.

    The UPDATE takes the row's write lock, so concurrent writers queue up and never
    get the same number (and ``case.ref`` is unique besides).
    """
    bumped = db.execute(_BUMP, {"counter": prefix}).scalar()
    if bumped is None:
        db.execute(_INSERT_COUNTER, {"prefix": prefix, "last": 1})
        bumped = 1
    return format_ref(prefix, bumped)


_SECRET_ROW = "reply_secret"
_KV = tables.key_value
_STORED_SECRET = select(_KV.c.value).where(_KV.c.key == _SECRET_ROW)


def reply_secret(db: Db, configured: str | None) -> bytes:
    """The key of the reply-address tokens: from config, else made once and kept."""
    if configured:
        return configured.encode()
    value = db.scalar(_STORED_SECRET)
    if value is None:
        value = secrets.token_hex(32)
        db.execute(insert(_KV), {"key": _SECRET_ROW, "value": value})
    return value.encode()


def secret_key(db: Db, app: App) -> bytes:
    """The key of reply-address tokens and of our Message-IDs: the process's copy once
    it is known (``remember_secret_key``), else read (or made) in ``db``'s transaction."""
    if app.secret_key is not None:
        return app.secret_key
    secret = app.settings.helpdesk.secret
    return reply_secret(db, secret.get_secret_value() if secret else None)


def remember_secret_key(db: Db, app: App) -> None:
    """Keep the key in the process once it is committed (``db`` only reads committed
    rows): it never changes once made, so no later mail reads it again. A key made by a
    transaction that then rolled back must never be kept, hence not from a write."""
    if app.secret_key is not None:
        return
    secret = app.settings.helpdesk.secret
    if secret:
        app.secret_key = secret.get_secret_value().encode()
        return
    value = db.scalar(_STORED_SECRET)
    if value is not None:
        app.secret_key = value.encode()
