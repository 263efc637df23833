"""The ingest pipeline: raw bytes -> parsed -> decided -> one transaction.

Every transport (IMAP, the SMTP listener, ``helpdesk ingest``) calls
``ingest_raw``. It is idempotent per ``(source, source_key)`` and per Message-ID,
so a re-delivery after a crash changes nothing. A mail that fails anywhere is
kept with its raw bytes and the reason (the quarantine: ``helpdesk failed``) and
the caller moves on; only storage trouble that may pass (the database unreachable,
locked past its timeout, a full disk) raises ``StorageUnavailable``, so that the
transport leaves the mail where it is and tries again later.

The mail is parsed before its write transaction begins, and its answers are
rendered after it (by the sender): the write lock is held for the mail's own
reads and writes only, however large or strange the mail.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core.decide import Context, decide, route, support_addresses
from helpdesk.core.decide import Outcome as Disposition
from helpdesk.core.model import InboundMessage
from helpdesk.core.selfservice import Suggestion
from helpdesk.inbound.verify import sender_trust
from helpdesk.mail.parsing import HeaderLimits, parse_message
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


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # new_case | reply | staff_reply | machine | bounce | duplicate | ... | quarantined
    inbound_id: int | None
    ref: str | None = None
    reason: str = ""

    @property
    def quarantined(self) -> bool:
        """Kept in the quarantine: it failed, or it was held over a limit (``held``)."""
        return self.status in ("quarantined", str(Disposition.HELD))


def ingest_raw(app: App, raw: bytes, *, source: str, source_key: str | None = None,
               envelope_recipients: tuple[str, ...] = ()) -> Outcome:
    source_key = source_key or hashlib.sha256(raw).hexdigest()
    for attempt in (1, 2):
        try:
            return _ingest_once(app, raw, source, source_key, envelope_recipients)
        except IntegrityError:
            # Another process stored the same mail (or took the same number) at
            # the same moment; the second try sees its row and finds a duplicate.
            if attempt == 2:
                break
        except Exception as exc:  # quarantine, never lose, never stop the loop
            if is_storage_trouble(exc):
                raise StorageUnavailable.of(exc) from exc
            return _quarantine(app, raw, source, source_key, envelope_recipients, exc)
    return _quarantine(app, raw, source, source_key, envelope_recipients,
                       RuntimeError("conflicting concurrent writes"))


def _ingest_once(app: App, raw: bytes, source: str, source_key: str,
                 envelope_recipients: tuple[str, ...]) -> Outcome:
    with app.read_engine.connect() as db:  # a re-delivery is known before anything is parsed
        known = _received(db, source, source_key)
        cases.remember_secret_key(db, app)
    if known is not None:
        return known
    # Parsed before the write lock: it takes time.
    msg = parse_message(raw, envelope_recipients, header_limits(app))
    suggestions = _suggestions(app, msg)  # a search, before the write lock too
    with app.engine.begin() as db:
        known = _received(db, source, source_key)  # by another process meanwhile
        if known is not None:
            return known
        now = app.clock.now()
        duplicate = _duplicate_of(db, msg)
        if duplicate is not None:
            inbound_id = _insert_inbound(db, source, source_key, envelope_recipients, now,
                                         "done", "duplicate")
            _record_addresses(db, app, duplicate, msg)
            log.info("DUPLICATE inbound=%s mid=%s case=%s", inbound_id, msg.message_id, duplicate)
            del msg
            _store_raw(db, inbound_id, raw, duplicate)
            return Outcome("duplicate", inbound_id)
        policy = app.policy
        key = cases.secret_key(db, app)
        trust = sender_trust(msg, policy, key, app.settings.trust.authserv_ids)
        context = cases.load_context(db, msg, policy, key, now, trust)
        if _expire_candidates(db, app, context, now):
            context = cases.load_context(db, msg, policy, key, now, trust)
        decision = decide(msg, replace(context, suggestions=suggestions), policy)
        status, error = "done", None
        if decision.outcome is Disposition.HELD:
            # Over a limit: nothing was done or sent. Kept with the reason in the
            # quarantine, where `helpdesk failed retry` takes it through again later.
            status, error = "failed", "held: " + "; ".join(decision.reasons)
        elif msg.parse_events and (decision.new_case is None and decision.case is None
                                   or decision.store_as is None):
            # not stored on a case, whose events would hold them: keep them with the mail
            error = "; ".join(f"{type_}: {detail}" for type_, detail in msg.parse_events)
        inbound_id = _insert_inbound(db, source, source_key, envelope_recipients, now, status,
                                     str(decision.outcome), error)
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
        _store_raw(db, inbound_id, raw, case_id)
        return outcome


_INBOUND = tables.inbound
_RECEIVED = select(_INBOUND.c.id, _INBOUND.c.outcome).where(
    _INBOUND.c.source == bindparam("source"), _INBOUND.c.source_key == bindparam("key"))
_INSERT_INBOUND = insert(_INBOUND)


def _received(db: Connection | Session, source: str, source_key: str) -> Outcome | None:
    known = db.execute(_RECEIVED, {"source": source, "key": source_key}).first()
    if known is None:
        return None
    return Outcome("duplicate", known.id, reason=f"already received as {known.outcome}")


def _insert_inbound(db: Connection, source: str, source_key: str,
                    envelope_recipients: tuple[str, ...], now: datetime, status: str,
                    outcome: str, error: str | None = None) -> int:
    """The row of a received mail, without its bytes yet (``_store_raw``, last)."""
    return db.execute(_INSERT_INBOUND, {
        "source": source, "source_key": source_key, "received_at": now, "raw": b"",
        "envelope_recipients": list(envelope_recipients), "status": status,
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
    return db.scalar(_CASE_OF_KEY, {"key": msg.message_id or f"sha256:{msg.content_hash}"})


_ADDRESSES_OF = select(tables.case_address.c.address).where(
    tables.case_address.c.case_id == bindparam("case_id"))


def _record_addresses(db: Connection, app: App, case_id: int, msg: InboundMessage) -> None:
    known = set(db.scalars(_ADDRESSES_OF, {"case_id": case_id}))
    new = [{"case_id": case_id, "address": address}
           for address in support_addresses(msg, app.policy) if address not in known]
    if new:
        db.execute(insert(tables.case_address), new)


def _quarantine(app: App, raw: bytes, source: str, source_key: str,
                envelope_recipients: tuple[str, ...], exc: Exception) -> Outcome:
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    log.error("QUARANTINE source=%s key=%s: %s", source, source_key, reason,
              exc_info=not _expected(exc))
    i = _INBOUND.c
    try:
        with app.engine.begin() as db:
            known = _received(db, source, source_key)
            if known is None:
                inbound_id = _insert_inbound(db, source, source_key, envelope_recipients,
                                             app.clock.now(), "failed", "quarantined", reason)
                _store_raw(db, inbound_id, raw)
            else:
                inbound_id = known.inbound_id
                db.execute(update(_INBOUND).where(i.id == inbound_id).values(
                    attempts=i.attempts + 1, status="failed", outcome="quarantined",
                    error=reason))
            return Outcome("quarantined", inbound_id, reason=reason)
    except Exception as db_exc:
        if is_storage_trouble(db_exc):
            raise StorageUnavailable.of(db_exc) from db_exc
        raise


def _expected(exc: Exception) -> bool:
    from helpdesk.mail.parsing import UnparseableMessage
    return isinstance(exc, UnparseableMessage)


def retry_failed(app: App, inbound_id: int) -> Outcome:
    """Run a quarantined mail through the pipeline again (after a fix or a config change)."""
    with app.sessions.begin() as session:
        row = session.get(Inbound, inbound_id)
        if row is None or row.status != "failed":
            raise LookupError(f"no quarantined message with id {inbound_id}")
        raw, source, key = row.raw, row.source, row.source_key
        recipients = tuple(row.envelope_recipients or ())
        session.delete(row)  # re-ingest under the same key; quarantined again if it still fails
    return ingest_raw(app, raw, source=source, source_key=key, envelope_recipients=recipients)


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
