"""The ingest pipeline: raw bytes -> parsed -> decided -> one transaction.

Every transport calls ``ingest_raw`` (the SMTP and LMTP listeners, ``helpdesk
ingest``) or ``ingest_many`` (IMAP, a batch at a time). It is idempotent per
``(source, source_key)`` and per Message-ID, so a re-delivery after a crash changes
nothing. A mail that fails anywhere is kept with its raw bytes and the reason (the
quarantine: ``helpdesk failed``) and the caller moves on; only storage trouble that
may pass (the database unreachable, locked past its timeout, a full disk) raises
``StorageUnavailable``, so that the transport leaves the mail where it is and tries
again later.

A mail is parsed before its write transaction begins, and its answers are rendered
after it (by the sender): the write lock is held for the mails' own reads and writes
only, however large or strange a mail. The mails of one IMAP batch share their
commits (``ingest_many``: group commit, and why it keeps every mail exactly once);
a bound on their number and time keeps another writer's wait short.

The transaction is SQLAlchemy Core on one connection, with statements built once
(``store.cases``, ``store.apply``, ``outbound.facts``): about 16 statements for a
new case, no ORM unit of work. A mail stored by another process at the same moment
fails the insert of its ``inbound`` row (the key is unique) and is found, stored, on
the second try.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core.decide import Context, decide, route, support_addresses
from helpdesk.core.decide import Outcome as Disposition
from helpdesk.core.model import InboundMessage
from helpdesk.core.selfservice import Suggestion
from helpdesk.inbound.verify import sender_trust
from helpdesk.mail.parsing import HeaderLimits, parse_message
from helpdesk.outbound.facts import CaseFacts
from helpdesk.store import cases, tables
from helpdesk.store.apply import apply_decision
from helpdesk.store.db import is_storage_trouble, orm_session
from helpdesk.store.orm import Inbound
from helpdesk.sweep import run_due_step

log = logging.getLogger(__name__)


class StorageUnavailable(Exception):
    """The database could not take the mail; the transport must keep it and retry."""

    @classmethod
    def of(cls, exc: BaseException) -> StorageUnavailable:
        return cls(str(getattr(exc, "orig", None) or exc))


_KEPT = ("quarantined", str(Disposition.HELD))  # the outcomes that leave a mail quarantined


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # new_case | reply | staff_reply | machine | bounce | duplicate | ... | quarantined
    inbound_id: int | None
    ref: str | None = None
    reason: str = ""
    first: str | None = None  # a duplicate: the outcome of the mail when it first came

    @property
    def quarantined(self) -> bool:
        """Kept in the quarantine: it failed, or it was held over a limit (``held``)."""
        return self.status in _KEPT

    @property
    def in_quarantine(self) -> bool:
        """Quarantined now, or a second delivery of a mail quarantined when it first came
        (an IMAP message re-fetched after a crash belongs in the failed folder too)."""
        return self.quarantined or self.first in _KEPT


@dataclass(frozen=True, slots=True)
class Received:
    """One mail as a transport took it: its bytes and its idempotency key."""

    raw: bytes
    source: str
    source_key: str
    envelope_recipients: tuple[str, ...] = ()


def ingest_raw(app: App, raw: bytes, *, source: str, source_key: str | None = None,
               envelope_recipients: tuple[str, ...] = ()) -> Outcome:
    """Ingest one mail in a transaction of its own (``ingest_many`` of one)."""
    mail = Received(raw, source, source_key or hashlib.sha256(raw).hexdigest(),
                    envelope_recipients)
    try:
        return ingest_many(app, [mail])[0]
    except StorageUnavailable:
        raise
    except Exception as exc:  # quarantine, never lose, never stop the loop
        return _quarantine(app, mail, exc)


#: A group commit holds the write lock for at most this many mails' writes, and opens
#: no further mail after this long: what another writer (the sender recording a sent
#: mail, a sweep) may have to wait behind it.
GROUP_MAILS = 50
GROUP_SECONDS = 0.05


def ingest_many(app: App, mails: Sequence[Received]) -> list[Outcome]:
    """Ingest ``mails`` (one IMAP batch), their outcomes in the same order.

    Group commit: all of them are parsed first, outside the write lock, and then
    decided and written one after another in few transactions (``GROUP_MAILS``,
    ``GROUP_SECONDS``), each mail in a SAVEPOINT of its own. Exactly once still holds:

    - a mail's rows, its outbox rows included, are in its transaction, so a mail is
      sent only if the decision that sends it committed; nothing here acknowledges a
      mail to its transport, and the transport does so only after this returns, i.e.
      after every commit (a crash before a commit loses only writes of mails nobody
      acknowledged: they come again and are decided once, then);
    - a mail that fails rolls back to its savepoint (the others keep their writes)
      and is quarantined in its place, in the same transaction;
    - every decision sees the writes of the mails before it in the group (same
      transaction), so a reply right behind the mail that opened its case, or a second
      copy of a mail, is handled as it would be one transaction at a time. (Except
      after a conflict: a mail whose insert met another process's row at the same
      moment is decided again after the rest of its batch.)

    Storage trouble raises ``StorageUnavailable``: the transaction in hand rolls back,
    and the mails of earlier, committed transactions are found as received (and just
    acknowledged) when the transport tries again.
    """
    outcomes: list[Outcome | None] = [None] * len(mails)
    todo = list(range(len(mails)))
    for _attempt in (1, 2):
        # A conflict: another process stored the same mail (or took the same number) at
        # the same moment; the second try sees its row and finds a duplicate.
        try:
            todo = _ingest_pass(app, mails, todo, outcomes)
        except Exception as exc:
            if is_storage_trouble(exc):
                raise StorageUnavailable.of(exc) from exc
            raise
        if not todo:
            break
    for index in todo:
        outcomes[index] = _quarantine(app, mails[index],
                                      RuntimeError("conflicting concurrent writes"))
    assert all(outcome is not None for outcome in outcomes)
    return cast(list[Outcome], outcomes)


@dataclass(slots=True)
class _Parsed:
    """A mail read and searched for (or that could not be read: ``error``), waiting for
    its write; ``msg`` is let go (its attachments stored) before the raw bytes are."""

    index: int
    mail: Received
    msg: InboundMessage | None
    suggestions: tuple[Suggestion, ...] = ()
    error: Exception | None = None


def _ingest_pass(app: App, mails: Sequence[Received], todo: list[int],
                 outcomes: list[Outcome | None]) -> list[int]:
    """Ingest the mails ``todo`` names into ``outcomes``; those that met a conflicting
    write, to try again. Quarantined mails are written in their place in the group."""
    with app.read_engine.connect() as db:  # a re-delivery is known before anything is parsed
        known = _received_many(db, [mails[index] for index in todo])
        cases.remember_secret_key(db, app)
    pending: deque[_Parsed] = deque()
    limits = header_limits(app)
    for index in todo:
        mail = mails[index]
        if (outcome := known.get((mail.source, mail.source_key))) is not None:
            outcomes[index] = outcome
            continue
        try:  # parsed and searched before the write lock: it takes time
            msg = parse_message(mail.raw, mail.envelope_recipients, limits)
        except Exception as exc:
            pending.append(_Parsed(index, mail, None, error=exc))
            continue
        pending.append(_Parsed(index, mail, msg, _suggestions(app, msg)))
        del msg
    conflicted: list[int] = []
    while pending:
        with app.engine.begin() as db:
            opened, count = time.monotonic(), 0
            while pending and (count == 0 or count < GROUP_MAILS
                               and time.monotonic() - opened < GROUP_SECONDS):
                parsed = pending.popleft()
                count += 1
                error = parsed.error
                if error is None:
                    try:
                        with db.begin_nested():
                            outcomes[parsed.index] = _store(db, app, parsed)
                    except IntegrityError:
                        conflicted.append(parsed.index)
                    except Exception as exc:  # quarantine, never lose, never stop the loop
                        if is_storage_trouble(exc):
                            raise StorageUnavailable.of(exc) from exc
                        error = exc
                if error is not None:
                    with db.begin_nested():
                        outcomes[parsed.index] = _quarantine_in(db, app, parsed.mail, error)
                del parsed, error
    return conflicted


def _store(db: Connection, app: App, parsed: _Parsed) -> Outcome:
    """Decide one parsed mail and write it, in the caller's transaction."""
    mail, msg, parsed.msg = parsed.mail, parsed.msg, None
    assert msg is not None
    now = app.clock.now()
    duplicate = _duplicate_of(db, msg)
    if duplicate is not None:
        inbound_id = _insert_inbound(db, mail, now, "done", "duplicate")
        _record_addresses(db, app, duplicate, msg)
        log.info("DUPLICATE inbound=%s mid=%s case=%s", inbound_id, msg.message_id, duplicate)
        del msg
        _store_raw(db, inbound_id, mail.raw, duplicate)
        return Outcome("duplicate", inbound_id)
    policy = app.policy
    key = cases.secret_key(db, app)
    trust = sender_trust(msg, policy, key, app.settings.trust.authserv_ids)
    context = cases.load_context(db, msg, policy, key, now, trust)
    if _expire_candidates(db, app, context, now):
        context = cases.load_context(db, msg, policy, key, now, trust)
    decision = decide(msg, replace(context, suggestions=parsed.suggestions), policy)
    status, error = "done", None
    if decision.outcome is Disposition.HELD:
        # Over a limit: nothing was done or sent. Kept with the reason in the
        # quarantine, where `helpdesk failed retry` takes it through again later.
        status, error = "failed", "held: " + "; ".join(decision.reasons)
    elif msg.parse_events and (decision.new_case is None and decision.case is None
                               or decision.store_as is None):
        # not stored on a case, whose events would hold them: keep them with the mail
        error = "; ".join(f"{type_}: {detail}" for type_, detail in msg.parse_events)
    inbound_id = _insert_inbound(db, mail, now, status, str(decision.outcome), error)
    case = apply_decision(db, app, decision, msg, inbound_id, now)
    log.info("%s inbound=%s mid=%s case=%s%s", str(decision.outcome).upper(), inbound_id,
             msg.message_id, case.ref if case else "-",
             f" reasons={list(decision.reasons)}" if decision.reasons else "")
    outcome = Outcome(str(decision.outcome), inbound_id, case.ref if case else None,
                      "; ".join(decision.reasons))
    for type_, detail in msg.parse_events:
        log.warning("%s inbound=%s mid=%s %s", type_.upper(), inbound_id, msg.message_id, detail)
    case_id = case.id if case else None
    del msg, decision, context, case  # the attachments are stored: let them go
    _store_raw(db, inbound_id, mail.raw, case_id)
    return outcome


_INBOUND = tables.inbound
_RECEIVED = select(_INBOUND.c.id, _INBOUND.c.outcome).where(
    _INBOUND.c.source == bindparam("source"), _INBOUND.c.source_key == bindparam("key"))
_RECEIVED_MANY = select(_INBOUND.c.source_key, _INBOUND.c.id, _INBOUND.c.outcome).where(
    _INBOUND.c.source == bindparam("source"),
    _INBOUND.c.source_key.in_(bindparam("keys", expanding=True)))
_INSERT_INBOUND = insert(_INBOUND)


def _received(db: Connection | Session, source: str, source_key: str) -> Outcome | None:
    known = db.execute(_RECEIVED, {"source": source, "key": source_key}).first()
    if known is None:
        return None
    return _already(known.id, known.outcome)


def _received_many(db: Connection, mails: Sequence[Received]) -> dict[tuple[str, str], Outcome]:
    """Those of ``mails`` stored already, by (source, key): one query per source."""
    keys: dict[str, list[str]] = {}
    for mail in mails:
        keys.setdefault(mail.source, []).append(mail.source_key)
    return {(source, key): _already(inbound_id, outcome)
            for source, group in keys.items()
            for key, inbound_id, outcome in db.execute(_RECEIVED_MANY,
                                                      {"source": source, "keys": group})}


def _already(inbound_id: int, outcome: str | None) -> Outcome:
    return Outcome("duplicate", inbound_id, reason=f"already received as {outcome}",
                   first=outcome)


def _insert_inbound(db: Connection, mail: Received, now: datetime, status: str,
                    outcome: str, error: str | None = None) -> int:
    """The row of a received mail, without its bytes yet (``_store_raw``, last)."""
    return db.execute(_INSERT_INBOUND, {
        "source": mail.source, "source_key": mail.source_key, "received_at": now, "raw": b"",
        "envelope_recipients": list(mail.envelope_recipients), "status": status,
        "outcome": outcome, "error": error, "attempts": 1}).inserted_primary_key[0]


_BLOB_CHUNK = 1 << 20
#: 1 MB, not 4: in a many-message fetch a 3.8 MB mail left RSS ~7 MB higher for good
#: without the trim (bench/README.md, Memory); two such mails in 1,000 in the bench corpus.
_TRIM_ABOVE = 1 << 20


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent elsewhere (musl, macOS)
    except (OSError, AttributeError):
        return None


def _release_freed_memory() -> None:
    """Give the memory freed since the parse back to the system (glibc only).

    After a large mail, glibc keeps most of what the parse freed (its mmap threshold
    has grown to the size of the parts), and SQLite's copies of the mail are large
    enough to be mapped afresh instead of reusing it: the peak is then the two added
    together. A few milliseconds, for mails of 1 MB or more only.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_SET_RAW = update(_INBOUND).where(_INBOUND.c.id == bindparam("inbound_id"))
_SET_ZEROBLOB = _SET_RAW.values(raw=func.zeroblob(bindparam("size")))


def _store_raw(db: Connection, inbound_id: int, raw: bytes, case_id: int | None = None) -> None:
    """Put the received bytes (and the case it went to) into the inbound row, last thing
    in the transaction.

    Memory, on SQLite: writing a value into a row builds the whole record in memory,
    and any later UPDATE of the row reads it back and builds it again; a bound
    ``bytes`` is copied once more and stays bound in the cached statement. So the row
    is inserted with an empty ``raw``, and the bytes go in last, through an incremental
    blob handle over a ``zeroblob``: one transient copy (the record), none kept. Other
    databases get a plain UPDATE.
    """
    if len(raw) >= _TRIM_ABOVE:
        _release_freed_memory()
    blobopen = getattr(db.connection.dbapi_connection, "blobopen", None)
    if db.dialect.name != "sqlite" or blobopen is None:
        db.execute(_SET_RAW, {"inbound_id": inbound_id, "case_id": case_id, "raw": raw})
        return
    db.execute(_SET_ZEROBLOB, {"inbound_id": inbound_id, "case_id": case_id, "size": len(raw)})
    view = memoryview(raw)
    with blobopen("inbound", "raw", inbound_id) as blob:
        for start in range(0, len(view), _BLOB_CHUNK):
            blob.write(view[start:start + _BLOB_CHUNK])


def header_limits(app: App) -> HeaderLimits:
    limits = app.settings.limits
    return HeaderLimits(header_chars=limits.header_chars, subject_chars=limits.subject_chars)


def _suggestions(app: App, msg: InboundMessage) -> tuple[Suggestion, ...]:
    """The knowledge-base candidates in case this mail opens a case (the core decides
    whether it does, and which of them to show): a search costs well under a
    millisecond, less than finding out first whether the mail is a reply."""
    if not app.policy.self_service.suggestions:
        return ()
    try:
        return app.knowledge_base.suggest_for(msg.subject, msg.text, route(msg, app.policy).name)
    except Exception:  # a broken knowledge base costs the suggestions, never the mail
        log.exception("knowledge base search failed; no suggestions for mid=%s", msg.message_id)
        return ()


def _expire_candidates(db: Connection, app: App, context: Context, now: datetime) -> bool:
    """Run a matched case's overdue closure first, so that a reply after the 7 days
    meets a closed case (and opens a new one) even if no sweep ran in between. A due
    reminder is left to the sweep: the reply may be the very answer it would ask for."""
    due = cases.due(db, [view.id for view in context.candidates.views], now)
    if not due:
        return False
    expired = False
    with orm_session(db) as session:
        for case_id in due:
            expired |= run_due_step(session, app, case_id, now, closing_only=True)
    return expired


_CASE_OF_KEY = select(tables.message.c.case_id).where(
    tables.message.c.dedupe_key == bindparam("key"))


def _duplicate_of(db: Connection, msg: InboundMessage) -> int | None:
    """The case of the message this one is a copy of (same Message-ID, or same bytes)."""
    return db.scalar(_CASE_OF_KEY, {"key": msg.dedupe_key})


def _record_addresses(db: Connection, app: App, case_id: int, msg: InboundMessage) -> None:
    """The support addresses a second copy of a mail came to, on the first copy's case."""
    facts = CaseFacts(db, case_id, ())
    for address in support_addresses(msg, app.policy):
        facts.add_address(address)
    facts.write()


def _quarantine(app: App, mail: Received, exc: Exception) -> Outcome:
    """Keep ``mail`` in the quarantine, in a transaction of its own."""
    try:
        with app.engine.begin() as db:
            return _quarantine_in(db, app, mail, exc)
    except Exception as db_exc:
        if is_storage_trouble(db_exc):
            raise StorageUnavailable.of(db_exc) from db_exc
        raise


def _quarantine_in(db: Connection, app: App, mail: Received, exc: Exception) -> Outcome:
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    log.error("QUARANTINE source=%s key=%s: %s", mail.source, mail.source_key, reason,
              exc_info=not _expected(exc))
    known = _received(db, mail.source, mail.source_key)
    if known is None:
        inbound_id = _insert_inbound(db, mail, app.clock.now(), "failed", "quarantined", reason)
        _store_raw(db, inbound_id, mail.raw)
    else:
        inbound_id = known.inbound_id
        i = _INBOUND.c
        db.execute(update(_INBOUND).where(i.id == inbound_id).values(
            attempts=i.attempts + 1, status="failed", outcome="quarantined", error=reason))
    return Outcome("quarantined", inbound_id, reason=reason)


def _expected(exc: Exception) -> bool:
    from helpdesk.mail.parsing import UnparseableMessage
    return isinstance(exc, UnparseableMessage)


def retry_failed(app: App, inbound_id: int) -> Outcome:
    """Run a quarantined mail through the pipeline again (after a fix or a config change).

    The retry goes in under the transport's key, so the quarantined row first steps
    aside (a key of its own) and is deleted only once the retry has committed: should
    the retry fail (the database locked or gone) or the process die meanwhile, the mail
    is still in the quarantine, where it was. A mail that fails again is quarantined
    anew, under its key.
    """
    aside = f"retrying:{inbound_id}"
    with app.sessions.begin() as session:
        row = session.get(Inbound, inbound_id)
        if row is None or row.status != "failed":
            raise LookupError(f"no quarantined message with id {inbound_id}")
        raw, source, key = row.raw, row.source, row.source_key
        recipients = tuple(row.envelope_recipients or ())
        row.source_key = aside
    if key == aside:  # a retry that died before: the transport's key is not known any more
        key = hashlib.sha256(raw).hexdigest()
    try:
        outcome = ingest_raw(app, raw, source=source, source_key=key,
                             envelope_recipients=recipients)
    except BaseException:
        _step_back(app, inbound_id, key)
        raise
    with app.sessions.begin() as session:
        session.execute(delete(Inbound).where(Inbound.id == inbound_id))
    return outcome


def _step_back(app: App, inbound_id: int, key: str) -> None:
    """The quarantined row under its own key again, if the database lets us; if not, it
    stays in the quarantine under the key it stepped aside to."""
    try:
        with app.sessions.begin() as session:
            session.execute(update(Inbound).where(Inbound.id == inbound_id)
                            .values(source_key=key))
    except Exception as exc:
        log.warning("quarantined message %s stays under its retry key: %s", inbound_id, exc)


def notify_too_large(app: App, header_bytes: bytes, size: int, *, source: str = "too_large",
                     source_key: str | None = None) -> Outcome:
    """Tell the sender, politely and once, that a mail was too large to take.

    Only the headers were read. They are kept in ``inbound`` under the
    transport's key, so a crash before the mail left the inbox cannot make a
    second notice. Machine mail gets no answer, as always. Raises
    ``StorageUnavailable`` like ``ingest_raw``.
    """
    from helpdesk.core.classify import machine_reasons
    from helpdesk.core.model import MailKind
    from helpdesk.outbound.queue import queue_notice

    source_key = source_key or hashlib.sha256(header_bytes).hexdigest()
    try:
        msg = replace(parse_message(header_bytes, limits=header_limits(app)), size=size)
    except Exception:  # headers we cannot read: nobody to answer
        msg = None
        log.warning("oversized mail with unreadable headers; not answered")
    policy = app.policy
    reason = f"{size} bytes is over max_message_size"
    try:
        with app.sessions.begin() as session:
            known = _received(session, source, source_key)
            if known is not None:
                return known
            now = app.clock.now()
            row = Inbound(source=source, source_key=source_key, received_at=now,
                          raw=header_bytes, status="done", outcome="too_large", error=reason)
            session.add(row)
            if msg is not None and msg.sender and not machine_reasons(msg, policy.hygiene):
                queue_notice(session, app, route(msg, policy).name, MailKind.TOO_LARGE, msg, now)
            session.flush()
            log.info("TOO_LARGE inbound=%s size=%s", row.id, size)
            return Outcome("too_large", row.id, reason=reason)
    except Exception as exc:
        if is_storage_trouble(exc):
            raise StorageUnavailable.of(exc) from exc
        raise
