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

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from helpdesk.app import App
from helpdesk.core.decide import Outcome as Disposition
from helpdesk.core.decide import decide, route, support_addresses
from helpdesk.core.model import InboundMessage
from helpdesk.core.selfservice import Suggestion
from helpdesk.inbound.verify import sender_trust
from helpdesk.mail.parsing import HeaderLimits, parse_message
from helpdesk.store import cases
from helpdesk.store.apply import apply_decision
from helpdesk.store.db import is_storage_trouble
from helpdesk.store.orm import CaseAddress, Inbound, Message
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
    with app.reads() as session:  # a re-delivery is known before anything is parsed
        known = _received(session, source, source_key)
    if known is not None:
        return known
    # Parsed before the write lock: it takes time.
    msg = parse_message(raw, envelope_recipients, header_limits(app))
    suggestions = _suggestions(app, msg)  # a search, before the write lock too
    with app.sessions.begin() as session:
        known = _received(session, source, source_key)  # by another process meanwhile
        if known is not None:
            return known
        now = app.clock.now()
        inbound = Inbound(source=source, source_key=source_key, received_at=now, raw=b"",
                          envelope_recipients=list(envelope_recipients), status="done")
        session.add(inbound)
        session.flush()
        duplicate = _duplicate_of(session, msg)
        if duplicate is not None:
            _record_addresses(session, app, duplicate, msg)
            inbound.outcome, inbound.case_id = "duplicate", duplicate.case_id
            log.info("DUPLICATE inbound=%s mid=%s case=%s", inbound.id, msg.message_id,
                     duplicate.case_id)
            del msg, duplicate
            _store_raw(session, inbound, raw)
            return Outcome("duplicate", inbound.id)
        policy = app.policy
        secret = app.settings.helpdesk.secret
        key = cases.reply_secret(session, secret.get_secret_value() if secret else None)
        trust = sender_trust(msg, policy, key, app.settings.trust.authserv_ids)
        context = cases.load_context(session, msg, policy, key, now, trust)
        if _expire_candidates(session, app, context, now):
            context = cases.load_context(session, msg, policy, key, now, trust)
        decision = decide(msg, replace(context, suggestions=suggestions), policy)
        case = apply_decision(session, app, decision, msg, inbound.id, now)
        inbound.outcome = str(decision.outcome)
        inbound.case_id = case.id if case else None
        if decision.outcome is Disposition.HELD:
            # Over a limit: nothing was done or sent. Kept with the reason in the
            # quarantine, where `helpdesk failed retry` takes it through again later.
            inbound.status, inbound.error = "failed", "held: " + "; ".join(decision.reasons)
        elif msg.parse_events and (case is None or decision.store_as is None):
            # not stored on a case, whose events would hold them: keep them with the mail
            inbound.error = "; ".join(f"{type_}: {detail}" for type_, detail in msg.parse_events)
        log.info("%s inbound=%s mid=%s case=%s%s", str(decision.outcome).upper(), inbound.id,
                 msg.message_id, case.ref if case else "-",
                 f" reasons={list(decision.reasons)}" if decision.reasons else "")
        outcome = Outcome(str(decision.outcome), inbound.id, case.ref if case else None,
                          "; ".join(decision.reasons))
        for type_, detail in msg.parse_events:
            log.warning("%s inbound=%s mid=%s %s", type_.upper(), inbound.id, msg.message_id, detail)
        del msg, decision, context, case  # the attachments are stored: let them go
        _store_raw(session, inbound, raw)
        return outcome


def _received(session: Session, source: str, source_key: str) -> Outcome | None:
    known = session.scalar(select(Inbound).where(Inbound.source == source,
                                                 Inbound.source_key == source_key))
    if known is None:
        return None
    return Outcome("duplicate", known.id, reason=f"already received as {known.outcome}")


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


def _store_raw(session: Session, inbound: Inbound, raw: bytes) -> None:
    """Put the received bytes into *inbound*'s row, last thing in the transaction.

    Memory, on SQLite: writing a value into a row builds the whole record in memory,
    and any later UPDATE of the row reads it back and builds it again; a bound
    ``bytes`` is copied once more and stays bound in the cached statement. So the row
    is inserted with an empty ``raw``, everything else in it is flushed first, and the
    bytes go in through an incremental blob handle over a ``zeroblob``: one transient
    copy (the record), none kept. Other databases get a plain UPDATE.
    """
    session.flush()  # no UPDATE of this row may follow: it would copy the mail again
    if len(raw) >= _TRIM_ABOVE:
        _release_freed_memory()
    connection = session.connection()
    blobopen = getattr(connection.connection.dbapi_connection, "blobopen", None)
    if connection.dialect.name != "sqlite" or blobopen is None:
        inbound.raw = raw
        session.flush()
        return
    connection.execute(update(Inbound).where(Inbound.id == inbound.id)
                       .values(raw=func.zeroblob(len(raw))))
    view = memoryview(raw)
    with blobopen("inbound", "raw", inbound.id) as blob:
        for start in range(0, len(view), _BLOB_CHUNK):
            blob.write(view[start:start + _BLOB_CHUNK])
    set_committed_value(inbound, "raw", raw)


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


def _expire_candidates(session: Session, app: App, context, now) -> bool:
    """Run a matched case's overdue closure first, so that a reply after the 7 days
    meets a closed case (and opens a new one) even if no sweep ran in between. A due
    reminder is left to the sweep: the reply may be the very answer it would ask for."""
    expired = False
    for view in context.candidates.views:
        expired |= run_due_step(session, app, view.id, now, closing_only=True)
    return expired


def _duplicate_of(session: Session, msg: InboundMessage) -> Message | None:
    key = msg.message_id or f"sha256:{msg.content_hash}"
    return session.scalar(select(Message).where(Message.dedupe_key == key))


def _record_addresses(session: Session, app: App, existing: Message, msg: InboundMessage) -> None:
    policy = app.policy
    for address in support_addresses(msg, policy):
        if not session.scalar(select(CaseAddress.id).where(CaseAddress.case_id == existing.case_id,
                                                           CaseAddress.address == address)):
            session.add(CaseAddress(case_id=existing.case_id, address=address))


def _quarantine(app: App, raw: bytes, source: str, source_key: str,
                envelope_recipients: tuple[str, ...], exc: Exception) -> Outcome:
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    log.error("QUARANTINE source=%s key=%s: %s", source, source_key, reason,
              exc_info=not _expected(exc))
    try:
        with app.sessions.begin() as session:
            row = session.scalar(select(Inbound).where(Inbound.source == source,
                                                       Inbound.source_key == source_key))
            new = row is None
            if row is None:
                row = Inbound(source=source, source_key=source_key, received_at=app.clock.now(),
                              raw=b"", envelope_recipients=list(envelope_recipients),
                              status="failed")
                session.add(row)
            else:
                row.attempts += 1
            row.status, row.outcome, row.error = "failed", "quarantined", reason
            session.flush()
            if new:
                _store_raw(session, row, raw)
            return Outcome("quarantined", row.id, reason=reason)
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
