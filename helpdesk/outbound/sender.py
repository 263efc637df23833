"""Deliver the outbox: claim a due row, hand it to the transport, record the outcome.

Exactly once, as far as SMTP allows:

1. **Claim** each row in its own short transaction before touching the network:
   ``UPDATE outbox SET claimed_until = now + lease WHERE id = :id AND status = 'queued'
   AND next_attempt_at <= now AND (claimed_until IS NULL OR claimed_until < now)``.
   Only the sender that changed one row goes on, so two senders (threads,
   processes, a cron ``fetch`` next to the daemon) never send the same row.
2. **Render** a row queued without its bytes (every mail, the first time): in a read
   transaction (``render``), then the bytes are stored in a short write of their own
   (``keep_rendered``), so the write lock is never held while a template runs and
   every later attempt sends exactly these bytes. A mail that cannot be rendered (a
   broken template) is a temporary failure like a 4xx: it stays queued with the
   reason in ``last_error`` (``helpdesk status`` reports it) and goes out once the
   template is fixed, or is given up like any mail after ``MAX_ATTEMPTS``/``MAX_AGE``.
3. **Send** with no transaction open.
4. **Record** in another transaction: ``sent`` only after the server accepted the
   mail. A row marked ``sent`` is never picked again.

The one honest duplicate (SPEC, end): if the process dies between 3 and 4, the
claim runs out after ``lease`` and the row is sent again.

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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from helpdesk.clock import Clock
from helpdesk.config import Settings
from helpdesk.outbound.render import Render, forget_sign_in_link, keep_rendered
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
    "LEASE", "MAX_AGE", "claim_lease", "MAX_ATTEMPTS", "ConnectionFailure", "DeliveryError",
    "MaildirTransport", "SendResult", "SmtpTransport", "Transport", "make_transport",
    "send_due",
]

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)  # a claim older than this belongs to a dead sender


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


@dataclass(frozen=True)
class _Claimed:
    id: int
    mail_from: str
    recipients: tuple[str, ...]
    message_id: str
    raw: bytes | None  # None: not rendered yet, or it could not be (``render_error``)
    claimed_until: datetime
    render_error: str | None = None


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
             reads: sessionmaker[Session] | None = None) -> SendResult:
    """Send up to ``limit`` due outbox rows; closes the transport's connection at the end.

    ``render`` makes the bytes of a row queued without them (``outbound.render``), in a
    session of ``reads`` (read-only sessions: ``App.reads``; default ``sessions``).
    """
    reads = reads or sessions
    now = clock.now()
    with reads() as session:
        ids = session.scalars(
            select(Outbox.id)
            .where(Outbox.status == "queued", Outbox.next_attempt_at <= now,
                   or_(Outbox.claimed_until.is_(None), Outbox.claimed_until < now))
            .order_by(Outbox.next_attempt_at, Outbox.id)
            .limit(limit)).all()
    result = SendResult()
    try:
        for outbox_id in ids:
            claimed = _claim(sessions, clock, outbox_id, lease)
            if claimed is None:
                continue  # another sender has it, or it changed since we looked
            if claimed.raw is None:
                claimed = _render(sessions, reads, claimed, render)
            outcome = _attempt(transport, claimed)
            with sessions.begin() as session:
                result += _record(session, claimed, outcome, clock.now())
            if outcome.stop_batch:
                log.warning("outbound delivery stopped for this pass: %s", outcome.reason)
                result += SendResult(error=outcome.reason)
                break
    finally:
        transport.close()
    return result


def _claim(sessions: sessionmaker[Session], clock: Clock, outbox_id: int,
           lease: timedelta) -> _Claimed | None:
    with sessions.begin() as session:
        now = clock.now()
        until = now + lease
        claimed = session.execute(
            update(Outbox)
            .where(Outbox.id == outbox_id, Outbox.status == "queued",
                   Outbox.next_attempt_at <= now,
                   or_(Outbox.claimed_until.is_(None), Outbox.claimed_until < now))
            .values(claimed_until=until)
            .execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        row = session.get_one(Outbox, outbox_id, populate_existing=True)
        return _Claimed(outbox_id, row.mail_from, tuple(row.recipients), row.message_id,
                        row.raw, until)


def _render(sessions: sessionmaker[Session], reads: sessionmaker[Session], mail: _Claimed,
            render: Render | None) -> _Claimed:
    """The claimed mail with its bytes: rendered under a read transaction, kept in a
    short write. When it cannot be rendered, ``render_error`` says why."""
    if render is None:
        return replace(mail, render_error="queued without its bytes, and this sender "
                                          "cannot render mail")
    try:
        with reads() as session:
            row = session.get_one(Outbox, mail.id)
            rendered = render(session, row)
    except Exception as exc:
        if is_storage_trouble(exc):
            raise  # the database, not the mail: like a failed claim, end the pass
        log.exception("outbox=%s: could not render the mail", mail.id)
        return replace(mail, render_error=f"could not render the mail: "
                                          f"{type(exc).__name__}: {exc}")
    with sessions.begin() as session:
        return replace(mail, raw=keep_rendered(session, row, rendered))


def _attempt(transport: Transport, mail: _Claimed) -> _Outcome:
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


def _record(session: Session, mail: _Claimed, outcome: _Outcome, now: datetime) -> SendResult:
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


def _mark_undeliverable(session: Session, case_id: int, addresses: list[str], now: datetime) -> None:
    """A hard refusal at RCPT time is as good as a bounce: stop mailing that address."""
    for address in addresses:
        changed = session.execute(update(Participant).where(
            Participant.case_id == case_id, Participant.address == address,
            Participant.undeliverable.is_(False)).values(undeliverable=True)).rowcount
        if changed:
            session.add(Event(case_id=case_id, at=now, type="participant_undeliverable",
                              detail={"address": address, "source": "smtp refusal"}))
