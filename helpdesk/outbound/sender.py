"""Deliver the outbox: claim a batch of due rows, render them, send each, record each.

Exactly once, as far as SMTP allows:

1. **Claim** a batch before touching the network: one statement sets
   ``claimed_until = now + BATCH_WINDOW + lease`` on up to ``limit`` due rows that are
   unclaimed or whose claim ran out (``outbox.claim``; SQLite's write lock, or
   PostgreSQL's ``FOR UPDATE SKIP LOCKED``, makes it atomic). Only the sender that
   changed a row may send it, so two senders (the daemon's sending process, a cron
   ``fetch`` next to it, a second daemon) never send the same row.
2. **Render** the rows queued without their bytes (every mail, the first time): all of
   the batch in one read transaction (``render``), then their bytes are stored in one
   short write (``outbox.keep``), so the write lock is never held while a template runs
   and every later attempt sends exactly these bytes (a row that got bytes meanwhile
   keeps them and they are what is sent). A mail that cannot be rendered (a broken
   template) is a temporary failure like a 4xx: it stays queued with the reason in
   ``last_error`` (``helpdesk status`` reports it) and goes out once the template is
   fixed, or is given up like any mail after ``MAX_ATTEMPTS``/``MAX_AGE``.
3. **Send** each with no transaction open, over one connection, but only while the
   batch's window is open (``BATCH_WINDOW`` after the claim): every send then starts
   with at least ``lease`` left on its claim, as when rows were claimed one by one, so
   a claim never runs out under a send that keeps to the SMTP timeouts. A connection
   that answered within the last second is reused without a NOOP
   (``transport.FRESH``): should the server have dropped it, the next ``MAIL FROM``
   fails, which delivered nothing, and that mail is tried again later.
4. **Record** each mail right after the server answered, before the next mail is
   sent: ``sent`` only after the server accepted the mail, and only while the row is
   still ours. On SQLite the common case (all accepted, the claim not run out) is
   recorded in the senders' own file (``outbound.accepted``), which never waits for
   the database's write lock, and folded into the outbox at the end of the pass and
   by every claim, before it claims (``_folding``); on PostgreSQL it is one ``UPDATE``
   of the row (``outbox.mark_sent``: still queued, our claim unchanged). Anything
   else takes the careful path, ``_record_carefully``. A row marked ``sent``, or
   recorded as accepted, is never picked again.
5. **Give back** what the pass did not try (the server went down, the window closed,
   an error): ``claimed_until`` is cleared on those rows while the claim is still ours
   (``outbox.release``), so they are due again at once (``_end_pass``). A row that was
   tried is never given back: if its record fails (storage trouble) it is tried again
   a few times while the claim is ours (``_record_in_time``), and if it still fails,
   the row waits out its claim.

The one honest duplicate (SPEC, end): if the process dies between 3 and 4 for a mail,
its claim runs out after ``lease`` (plus what was left of the window) and that mail is
sent again; every other row of the batch was either recorded (sent, deferred, dead)
before the next send began, or never sent, so nothing else repeats. The record is per
mail, not per batch, on purpose: a record held back for the batch would widen that
window to every mail sent since the last record. A sender that is stopped (``stop``),
signalled or orphaned (``outbound.sending``) finishes the mail in hand through 4 and
gives back the rest (5), so it leaves no claim behind.

Outcomes: accepted → ``sent`` (recipients the server refused for good are named in
``last_error`` and, for a case's mail, in a ``delivery_failed`` event); 4xx, a
refused connection or a timeout → stays ``queued`` with ``attempts + 1`` and a
backoff; 5xx → ``dead``; ``MAX_ATTEMPTS`` tries or ``MAX_AGE`` after it was queued
→ ``dead``. When some recipients accepted and others were deferred, the row is
finished (so nobody gets it twice) and the deferred ones continue in a new row with
the same bytes. A failure to reach the server stops the batch: the rows behind it
keep their turn and nobody hammers a server that is down.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, update
from sqlalchemy.orm import Session, sessionmaker

from helpdesk.clock import Clock
from helpdesk.config import Settings
from helpdesk.outbound import outbox
from helpdesk.outbound.accepted import AcceptedLog, accepted_log
from helpdesk.outbound.outbox import Accepted, Claimed
from helpdesk.outbound.render import Render, carries_sign_in_link, forget_sign_in_link, to_keep
from helpdesk.outbound.transport import (
    ConnectionFailure,
    DeliveryError,
    MaildirTransport,
    Refused,
    SmtpTransport,
    Transport,
    make_transport,
)
from helpdesk.core.timers import retry_at
from helpdesk.store.db import is_storage_trouble
from helpdesk.store.orm import Event, Outbox, Participant

__all__ = [
    "BATCH_WINDOW", "LEASE", "MAX_AGE", "claim_lease", "MAX_ATTEMPTS", "ConnectionFailure",
    "DeliveryError",
    "MaildirTransport", "SendResult", "SmtpTransport", "Transport", "make_transport",
    "send_due",
]

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)  # a claim older than this belongs to a dead sender
# How long after its claim a batch may still start sending: what it has not started by
# then goes back to the outbox. Short, so that a claimed batch goes out, or comes back,
# soon; long enough for a batch of mail to render and go out on a busy machine.
BATCH_WINDOW = timedelta(seconds=10)


def claim_lease(settings: Settings) -> timedelta:
    """How long a claim holds: longer than one send can take (connect, TLS, DATA,
    each bounded by the SMTP timeout), short enough that a mail claimed by a
    process that was killed goes out soon after the restart."""
    smtp = settings.outbound.smtp
    return 3 * smtp.timeout + timedelta(seconds=15) if smtp else timedelta(seconds=30)
MAX_ATTEMPTS = 20
MAX_AGE = timedelta(days=3)  # counted from created_at; then a temporary failure is final


@dataclass(frozen=True)
class SendResult:
    """Rows this pass marked ``sent`` / rescheduled / marked ``dead``.

    ``retried`` also counts a row split off for recipients that were deferred
    while others accepted. ``error`` is the connection failure that stopped the
    batch, if one did.
    """

    sent: int = 0
    retried: int = 0
    dead: int = 0
    error: str | None = None

    def __add__(self, other: SendResult) -> SendResult:
        return SendResult(self.sent + other.sent, self.retried + other.retried,
                          self.dead + other.dead, other.error or self.error)

    @property
    def more_may_be_due(self) -> bool:
        """The pass did work and met no connection failure: another pass may find more."""
        return bool(self.sent or self.retried or self.dead) and not self.error


@dataclass(frozen=True)
class _Outcome:
    """What the server said, per recipient. ``reason`` is set when it was one answer
    for the whole message (MAIL FROM, DATA, the connection)."""

    accepted: tuple[str, ...] = ()
    permanent: dict[str, str] = field(default_factory=dict)
    temporary: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    stop_batch: bool = False


def send_due(sessions: sessionmaker[Session], clock: Clock, transport: Transport, *,
             limit: int = 100, lease: timedelta = LEASE, render: Render | None = None,
             reads: sessionmaker[Session] | None = None,
             stop: Callable[[], bool] = lambda: False,
             keep_connection: bool = False) -> SendResult:
    """Send up to ``limit`` due outbox rows; closes the transport's connection at the end
    unless ``keep_connection`` (the caller sends more soon, and closes it).

    ``render`` makes the bytes of rows queued without them (``outbound.render``), in a
    session of ``reads`` (read-only sessions: ``App.reads``; default ``sessions``).
    ``stop`` is asked before each mail: once it says so, the rest is given back.
    """
    engine: Engine = sessions.kw["bind"]
    accepted = accepted_log(engine)
    claimed_at = clock.now()
    # One connection for the pass: each transaction on it is short, none spans a send.
    with engine.connect() as conn:
        with _folding(conn, accepted):
            batch = outbox.claim(conn, claimed_at, claimed_at + BATCH_WINDOW + lease, limit)
        untried = list(reversed(batch))  # popped oldest first
        result = SendResult()
        try:
            batch = _render(conn, reads or sessions, batch, render)
            untried = list(reversed(batch))
            while untried and clock.now() <= claimed_at + BATCH_WINDOW and not stop():
                mail = untried.pop()
                outcome = _attempt(transport, mail)
                result += _record_in_time(conn, accepted, mail, outcome, clock)
                if outcome.stop_batch:
                    log.warning("outbound delivery stopped for this pass: %s", outcome.reason)
                    result += SendResult(error=outcome.reason)
                    break
        finally:
            if not keep_connection:
                transport.close()
            _end_pass(conn, accepted, untried)
    return result


RECORD_TRIES = 5
RECORD_PAUSE = 1.0  # seconds between tries
RECORD_MARGIN = timedelta(seconds=10)  # no try this close to the end of the claim


def _record_in_time(conn: Connection, accepted: AcceptedLog | None, mail: Claimed,
                    outcome: _Outcome, clock: Clock) -> SendResult:
    """``_record``, tried again on storage trouble (the write lock past its timeout, a
    dropped database connection, a full disk) while the claim is still ours: a mail the
    server accepted and we could not record would otherwise go out a second time when
    the claim runs out. Gives up (raises) after ``RECORD_TRIES`` or near the end of the
    claim; then the row waits out its claim."""
    tries = 1
    while True:
        try:
            return _record(conn, accepted, mail, outcome, clock)
        except Exception as exc:
            if (not is_storage_trouble(exc) or tries == RECORD_TRIES
                    or clock.now() + RECORD_MARGIN >= mail.claimed_until):
                raise
            log.warning("outbox=%s: recording it failed (%s); trying again", mail.id, exc)
        tries += 1
        time.sleep(RECORD_PAUSE)


def _render(conn: Connection, reads: sessionmaker[Session], batch: list[Claimed],
            render: Render | None) -> list[Claimed]:
    """The batch with the bytes of every mail that has or can get them: rendered under
    one read transaction, kept in one short write. A mail that cannot be rendered gets
    ``render_error`` saying why."""
    todo = [mail for mail in batch if mail.raw is None]
    if not todo:
        return batch
    if render is None:
        return [replace(m, render_error="queued without its bytes, and this sender cannot "
                                        "render mail") if m.raw is None else m for m in batch]
    try:
        with reads() as session:
            results = render(session, todo)
    except Exception as exc:
        if is_storage_trouble(exc):
            raise  # the database, not the mail: like a failed claim, end the pass
        results = [exc] * len(todo)
    errors: dict[int, str] = {}
    keep = []
    for mail, rendered in zip(todo, results, strict=True):
        if isinstance(rendered, Exception):
            log.error("outbox=%s: could not render the mail", mail.id, exc_info=rendered)
            errors[mail.id] = f"could not render the mail: {type(rendered).__name__}: {rendered}"
        else:
            keep.append(to_keep(mail, rendered))
    kept = {}
    if keep:
        with conn.begin():
            kept = outbox.keep(conn, keep)
    return [replace(m, raw=kept[m.id]) if m.id in kept
            else replace(m, render_error=errors[m.id]) if m.id in errors else m
            for m in batch]


@contextmanager
def _folding(conn: Connection, accepted: AcceptedLog | None) -> Iterator[None]:
    """A write transaction on ``conn`` that first applies the accepted log (SQLite).

    Every claim runs in one: no sender claims a row whose mail the log says went out.
    The log is locked after the database (a record never waits for the database's
    lock) and until the database committed; only then are the records it applied
    removed. Should the log be busy for long (a sender stopped in the middle of a
    record), the database's lock is let go while we wait for the log. A record is
    applied only while its row is still queued under the claim it was sent with; a row
    found sent at the record's time had it applied already (a crash between the
    commit and the removal)."""
    if accepted is None:
        with conn.begin():
            yield
        return
    while True:  # the database's lock, then the log's, never one held waiting long
        transaction = conn.begin()
        try:
            records = accepted.fold_begin()
        except BaseException:
            transaction.rollback()
            raise
        if records is not None:
            break
        transaction.rollback()
        accepted.wait_free()
    try:
        with transaction:
            if records and outbox.mark_sent(conn, records) < len(records):
                _explain_unapplied(conn, records)
            yield
    except BaseException:
        accepted.fold_abort()
        raise
    try:
        accepted.fold_end(records)
    except Exception:  # applying them again changes nothing
        log.exception("could not remove %d applied record(s) of sent mail", len(records))


def _explain_unapplied(conn: Connection, records: list[Accepted]) -> None:
    found = outbox.sent_at(conn, [r.outbox_id for r in records])
    for record in records:
        at = found[record.outbox_id]
        if at is None:
            log.warning("outbox=%s: its record of delivery at %s found the row changed; "
                        "left as it is", record.outbox_id, record.sent_at)
        elif at != record.sent_at:
            log.warning("outbox=%s was sent at %s and again at %s (its claim ran out)",
                        record.outbox_id, at, record.sent_at)


def _end_pass(conn: Connection, accepted: AcceptedLog | None, untried: list[Claimed]) -> None:
    """Give back the rows this pass did not try (they are due again at once, for anyone)
    and apply what it sent, in one transaction. Should that fail, the untried rows wait
    out their claim and the next claim applies the records."""
    if not untried and not (accepted and accepted.unfolded):
        return
    try:
        if conn.in_transaction():  # a failed record left its transaction open
            conn.rollback()
        with _folding(conn, accepted):
            outbox.release(conn, untried)
    except Exception:
        log.exception("could not give back %d claimed outbox row(s) nor apply the record "
                      "of the mail sent; the next pass will", len(untried))


def _attempt(transport: Transport, mail: Claimed) -> _Outcome:
    if not mail.recipients:
        return _Outcome(reason="no recipients")
    if mail.raw is None:  # a broken template: try again later, it may be fixed by then
        return _whole(mail.recipients, mail.render_error or "no bytes", permanent=False)
    try:
        refused = transport.send(mail.mail_from, mail.recipients, mail.raw)
    except ConnectionFailure as exc:
        return _whole(mail.recipients, exc.reason, permanent=False, stop_batch=True)
    except DeliveryError as exc:
        return _whole(mail.recipients, exc.reason, permanent=exc.permanent)
    except Exception as exc:  # a bug or a surprise: retry later, never crash the pass
        log.exception("outbox=%s: unexpected error while sending", mail.id)
        transport.close()  # the connection's state is unknown
        return _whole(mail.recipients, f"{type(exc).__name__}: {exc}", permanent=False)
    return _split(mail.recipients, refused)


def _whole(recipients: Sequence[str], reason: str, *, permanent: bool,
           stop_batch: bool = False) -> _Outcome:
    replies = dict.fromkeys(recipients, reason)
    if permanent:
        return _Outcome(permanent=replies, reason=reason)
    return _Outcome(temporary=replies, reason=reason, stop_batch=stop_batch)


def _split(recipients: Sequence[str], refused: Refused) -> _Outcome:
    permanent = {a: reply for a, (code, reply) in refused.items() if code >= 500}
    temporary = {a: reply for a, (code, reply) in refused.items() if code < 500}
    accepted = tuple(a for a in recipients if a not in refused)
    return _Outcome(accepted=accepted, permanent=permanent, temporary=temporary)


def _describe(replies: dict[str, str]) -> str:
    """``ann@x, bob@x: 451 busy`` when they all got the same answer."""
    if len(set(replies.values())) == 1:
        return f"{', '.join(replies)}: {next(iter(replies.values()))}"
    return "; ".join(f"{addr}: {reply}" for addr, reply in replies.items())


def _record(conn: Connection, accepted: AcceptedLog | None, mail: Claimed, outcome: _Outcome,
            clock: Clock) -> SendResult:
    """Record what became of a mail. The common case, all accepted while the claim is
    ours: in the accepted log (SQLite: no wait behind the database's write lock), or in
    one statement. Anything else through ``_record_carefully``, in a transaction."""
    now = clock.now()
    whole = outcome.accepted and not (outcome.permanent or outcome.temporary)
    record = Accepted(mail.id, mail.claimed_until, now, carries_sign_in_link(mail.spec))
    if whole and accepted is not None and _logged(accepted, record, clock):
        log.info("sent outbox=%s mid=%s to=%d", mail.id, mail.message_id, len(outcome.accepted))
        return SendResult(sent=1)
    with conn.begin():
        if whole and outbox.mark_sent(conn, [record]):
            log.info("sent outbox=%s mid=%s to=%d", mail.id, mail.message_id,
                     len(outcome.accepted))
            return SendResult(sent=1)
        with Session(bind=conn) as session:  # joins the transaction, leaves its end to conn
            result = _record_carefully(session, mail, outcome, now)
            session.flush()
        return result


def _logged(accepted: AcceptedLog, record: Accepted, clock: Clock) -> bool:
    """Whether the log took the record; if it cannot (locked, full), the database may."""
    try:
        return accepted.add(record, clock.now)
    except Exception as exc:
        if not is_storage_trouble(exc):
            raise
        log.warning("outbox=%s: the log of sent mail could not take it (%s); recording it "
                    "in the database", record.outbox_id, exc)
        return False


def _record_carefully(session: Session, mail: Claimed, outcome: _Outcome,
                      now: datetime) -> SendResult:
    row = session.get_one(Outbox, mail.id, with_for_update=True, populate_existing=True)
    if row.status != "queued":  # our claim ran out and another sender finished the row
        if outcome.accepted:
            log.warning("outbox=%s mid=%s was already %s by another sender (claim ran out); "
                        "it may have gone out twice", row.id, row.message_id, row.status)
        return SendResult()
    if row.claimed_until != mail.claimed_until and not outcome.accepted:
        log.warning("outbox=%s: claim ran out while sending; leaving it to its new holder",
                    row.id)
        return SendResult()

    attempts = row.attempts + 1
    temporary, permanent = dict(outcome.temporary), dict(outcome.permanent)
    reason = outcome.reason
    row.attempts, row.claimed_until = attempts, None
    if temporary and (attempts >= MAX_ATTEMPTS or now - row.created_at >= MAX_AGE):
        give_up = f"gave up after {attempts} attempt{'' if attempts == 1 else 's'}"
        permanent.update({a: f"{give_up}: {r}" for a, r in temporary.items()})
        temporary = {}
        reason = reason and f"{give_up}: {reason}"

    if temporary and not outcome.accepted and not permanent:  # try it all again later
        row.next_attempt_at = retry_at(attempts, now)
        row.last_error = reason or _describe(temporary)
        log.warning("deferred outbox=%s mid=%s attempt=%d until %s: %s", row.id,
                    row.message_id, attempts, row.next_attempt_at.isoformat(), row.last_error)
        return SendResult(retried=1)

    notes = []
    if permanent:
        notes.append(reason or f"failed: {_describe(permanent)}")
    if temporary:  # some accepted or refused for good, the rest deferred: split
        remainder = Outbox(
            case_id=row.case_id, kind=row.kind, mail_from=row.mail_from,
            recipients=list(temporary), message_id=row.message_id, raw=row.raw,
            status="queued", attempts=attempts, next_attempt_at=retry_at(attempts, now),
            last_error=_describe(temporary), created_at=row.created_at)
        session.add(remainder)
        session.flush()
        notes.append(f"deferred to outbox {remainder.id}: {_describe(temporary)}")
        log.warning("deferred outbox=%s (from outbox=%s) mid=%s to=%d until %s: %s",
                    remainder.id, row.id, row.message_id, len(temporary),
                    remainder.next_attempt_at.isoformat(), remainder.last_error)
    if not outcome.accepted and not permanent and not temporary:
        notes.append(reason or "no recipients")
    row.last_error = "; ".join(notes) or None

    forget_sign_in_link(row)  # sent or dead: its bytes are of no more use
    if outcome.accepted:
        row.status, row.sent_at = "sent", now
        log.info("sent outbox=%s mid=%s to=%d", row.id, row.message_id, len(outcome.accepted))
    else:
        row.status = "dead"
        log.error("dead outbox=%s mid=%s attempts=%d: %s", row.id, row.message_id, attempts,
                  row.last_error)
    if permanent and row.case_id is not None:
        session.add(Event(case_id=row.case_id, at=now, type="delivery_failed", detail={
            "outbox_id": row.id, "message_id": row.message_id, "kind": row.kind,
            "refused": permanent, "delivered": list(outcome.accepted),
            **({"deferred": list(temporary)} if temporary else {}),
        }))
        if not outcome.reason:  # the server refused these addresses themselves (RCPT 5xx)
            _mark_undeliverable(session, row.case_id, list(outcome.permanent), now)
    return SendResult(sent=1 if outcome.accepted else 0, dead=0 if outcome.accepted else 1,
                      retried=1 if temporary else 0)


def _mark_undeliverable(session: Session, case_id: int, addresses: list[str],
                        now: datetime) -> None:
    """A hard refusal at RCPT time is as good as a bounce: stop mailing that address."""
    for address in addresses:
        changed = session.execute(update(Participant).where(
            Participant.case_id == case_id, Participant.address == address,
            Participant.undeliverable.is_(False)).values(undeliverable=True)).rowcount
        if changed:
            session.add(Event(case_id=case_id, at=now, type="participant_undeliverable",
                              detail={"address": address, "source": "smtp refusal"}))
