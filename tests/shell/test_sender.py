"""The outbox sender against a real aiosmtpd MTA and a real SQLite file."""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from helpdesk.clock import FixedClock
from helpdesk.config import Settings, SmtpSection
from helpdesk.outbound import accepted
from helpdesk.outbound.render import outbox_renderer
from helpdesk.outbound.sender import (
    MaildirTransport,
    SendResult,
    SmtpTransport,
    make_transport,
    send_due,
)
from helpdesk.store.db import make_engine, make_sessions, upgrade
from helpdesk.store.orm import Case, Event, Outbox
from helpdesk.inbound.ingest import ingest_raw
from tests.servers.helpdesk import make_mail
from tests.servers.smtp import TEST_PASSWORD, TEST_USER, MTAServer

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ANN, BOB = "ann@customer.test", "bob@customer.test"


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'helpdesk.db'}")
    upgrade(engine)
    yield make_sessions(engine)
    engine.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


def smtp_to(server: Controller | MTAServer, **settings: Any) -> SmtpTransport:
    settings.setdefault("security", "none")
    settings.setdefault("timeout", "5s")
    return SmtpTransport(SmtpSection(host=server.hostname, port=server.port, **settings))


def render(n: int = 1, to: tuple[str, ...] = (ANN,)) -> tuple[str, bytes]:
    msg = EmailMessage(policy=SMTP)  # CRLF, as it goes on the wire
    msg["From"] = "Example Support <support@example.com>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"[CC-{n:06d}] We got your message"
    msg["Message-ID"] = mid = f"<out-{n}@example.com>"
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(f"Hello,\n\nyour reference is CC-{n:06d}.\n.\nA line with a lone dot above.\n")
    return mid, msg.as_bytes()


def queue(sessions: sessionmaker[Session], clock: FixedClock, n: int = 1,
          to: tuple[str, ...] = (ANN,), **columns: Any) -> int:
    mid, raw = render(n, to)
    values: dict[str, Any] = {"status": "queued", "attempts": 0, "next_attempt_at": clock.now(),
                              "created_at": clock.now(), **columns}
    with sessions.begin() as db:
        row = Outbox(kind="ack", mail_from="support@example.com", recipients=list(to),
                     message_id=mid, raw=raw, **values)
        db.add(row)
        db.flush()
        return row.id


def outbox(sessions: sessionmaker[Session], outbox_id: int) -> Outbox:
    with sessions() as db:
        return db.get_one(Outbox, outbox_id)


def make_case(sessions: sessionmaker[Session], clock: FixedClock) -> int:
    now = clock.now()
    with sessions.begin() as db:
        case = Case(ref="CC-000001", category="customer_care", status="open", subject="Help",
                    requester=ANN, requester_domain="customer.test", reply_token="k7f3q",
                    created_at=now, updated_at=now, status_since=now)
        db.add(case)
        db.flush()
        return case.id


# -- delivery and exactly once ---------------------------------------------------

def test_delivers_once_and_marks_sent(sessions, clock, mta, caplog):
    caplog.set_level(logging.INFO, logger="helpdesk.outbound.sender")
    oid = queue(sessions, clock)

    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()

    [delivery] = mta.handler.envelopes
    assert (delivery.mail_from, delivery.rcpt_tos) == ("support@example.com", [ANN])
    assert delivery.content == render()[1]  # the very bytes queued, dot-stuffing undone
    row = outbox(sessions, oid)
    assert (row.status, row.sent_at, row.attempts, row.claimed_until, row.last_error) == (
        "sent", T0, 1, None, None)
    assert f"sent outbox={oid} mid=<out-1@example.com> to=1" in caplog.messages


def test_one_connection_serves_the_whole_batch(sessions, clock, mta):
    for n in range(1, 4):
        queue(sessions, clock, n)
    assert send_due(sessions, clock, smtp_to(mta)).sent == 3
    assert len(mta.handler.envelopes) == 3
    assert mta.handler.connections == 1


def test_limit_caps_the_batch_oldest_first(sessions, clock, mta):
    first = queue(sessions, clock, 1)
    clock.advance(seconds=1)
    queue(sessions, clock, 2)
    assert send_due(sessions, clock, smtp_to(mta), limit=1) == SendResult(sent=1)
    assert outbox(sessions, first).status == "sent"
    assert [m["Message-ID"] for m in mta.handler.messages()] == ["<out-1@example.com>"]


# -- temporary and permanent failures ------------------------------------------

def test_451_defers_with_backoff_then_delivers(sessions, clock, mta):
    oid = queue(sessions, clock)
    mta.handler.fail_rcpt[ANN] = "451 4.2.0 Mailbox busy"

    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(retried=1)
    row = outbox(sessions, oid)
    assert (row.status, row.attempts, row.claimed_until) == ("queued", 1, None)
    assert row.next_attempt_at > clock.now()
    assert "451 4.2.0 Mailbox busy" in row.last_error and ANN in row.last_error

    del mta.handler.fail_rcpt[ANN]
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()  # not due yet
    clock.current = row.next_attempt_at
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    assert [d.rcpt_tos for d in mta.handler.envelopes] == [[ANN]]
    assert outbox(sessions, oid).attempts == 2


def test_550_is_dead_with_the_reason(sessions, clock, mta):
    oid = queue(sessions, clock)
    mta.handler.fail_rcpt[ANN] = "550 5.1.1 No such user"

    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(dead=1)
    row = outbox(sessions, oid)
    assert row.status == "dead" and row.sent_at is None
    assert "550 5.1.1 No such user" in row.last_error and ANN in row.last_error
    assert mta.handler.envelopes == []
    clock.advance(days=1)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()


def test_5xx_at_data_is_dead_4xx_at_data_is_retried(sessions, clock, mta):
    dead, retried = queue(sessions, clock, 1), queue(sessions, clock, 2)
    mta.handler.fail_data = "554 5.6.0 Message rejected"
    transport = smtp_to(mta)
    send_due(sessions, clock, transport, limit=1)
    mta.handler.fail_data = "452 4.3.1 Insufficient system storage"
    send_due(sessions, clock, transport)

    assert (outbox(sessions, dead).status, outbox(sessions, dead).last_error) == (
        "dead", "554 5.6.0 Message rejected")
    assert (outbox(sessions, retried).status, outbox(sessions, retried).last_error) == (
        "queued", "452 4.3.1 Insufficient system storage")


def test_partial_refusal_is_sent_and_recorded_on_the_case(sessions, clock, mta):
    case_id = make_case(sessions, clock)
    oid = queue(sessions, clock, to=(ANN, BOB), case_id=case_id)
    mta.handler.fail_rcpt[BOB] = "550 5.1.1 No such user"

    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    assert [d.rcpt_tos for d in mta.handler.envelopes] == [[ANN]]
    row = outbox(sessions, oid)
    assert row.status == "sent" and BOB in row.last_error and ANN not in row.last_error
    with sessions() as db:
        [event] = db.scalars(select(Event).where(Event.case_id == case_id)).all()
    assert event.type == "delivery_failed" and event.at == T0
    assert event.detail["refused"] == {BOB: "550 5.1.1 No such user"}
    assert event.detail["delivered"] == [ANN] and event.detail["outbox_id"] == oid


def test_partial_deferral_splits_off_the_deferred_recipients(sessions, clock, mta):
    oid = queue(sessions, clock, to=(ANN, BOB))
    mta.handler.fail_rcpt[BOB] = "451 4.2.0 Mailbox busy"

    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1, retried=1)
    with sessions() as db:
        rest = db.scalars(select(Outbox).where(Outbox.id != oid)).one()
    assert outbox(sessions, oid).status == "sent"
    assert (rest.status, rest.recipients, rest.message_id, rest.attempts) == (
        "queued", [BOB], "<out-1@example.com>", 1)
    assert rest.raw == outbox(sessions, oid).raw and rest.created_at == T0

    del mta.handler.fail_rcpt[BOB]
    clock.advance(hours=1)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    assert [d.rcpt_tos for d in mta.handler.envelopes] == [[ANN], [BOB]]


def test_gives_up_three_days_after_it_was_queued(sessions, clock, mta):
    case_id = make_case(sessions, clock)
    oid = queue(sessions, clock, case_id=case_id, created_at=T0 - timedelta(days=3))
    mta.handler.fail_rcpt[ANN] = "451 4.2.0 Mailbox busy"

    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(dead=1)
    row = outbox(sessions, oid)
    assert row.last_error == f"failed: {ANN}: gave up after 1 attempt: 451 4.2.0 Mailbox busy"
    assert row.status == "dead"
    with sessions() as db:
        assert db.scalars(select(Event.type)).all() == ["delivery_failed"]


def test_gives_up_after_twenty_attempts(sessions, clock, mta):
    oid = queue(sessions, clock, attempts=19)
    mta.handler.fail_data = "451 4.3.0 Try later"
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(dead=1)
    assert outbox(sessions, oid).last_error == "gave up after 20 attempts: 451 4.3.0 Try later"


def test_a_row_without_recipients_is_dead(sessions, clock, mta):
    oid = queue(sessions, clock, to=())
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(dead=1)
    assert outbox(sessions, oid).last_error == "no recipients"


# -- the server is down -----------------------------------------------------------

def test_server_down_stops_the_batch_then_delivers_exactly_once(sessions, clock, mta_factory):
    server: MTAServer = mta_factory()
    first, second = queue(sessions, clock, 1), queue(sessions, clock, 2)
    server.stop()

    result = send_due(sessions, clock, smtp_to(server))
    assert (result.sent, result.retried, result.dead) == (0, 1, 0)
    assert "Connection refused" in result.error
    row = outbox(sessions, first)
    assert (row.status, row.attempts) == ("queued", 1) and row.next_attempt_at > T0
    assert "Connection refused" in row.last_error
    assert outbox(sessions, second).attempts == 0  # not hammered: the batch stopped

    server.start()  # same port, same handler
    clock.advance(minutes=10)
    assert send_due(sessions, clock, smtp_to(server)) == SendResult(sent=2)
    assert send_due(sessions, clock, smtp_to(server)) == SendResult()
    assert sorted(m["Message-ID"] for m in server.handler.messages()) == [
        "<out-1@example.com>", "<out-2@example.com>"]


def test_a_timeout_is_retried_and_stops_the_batch(sessions, clock, mta):
    first, second = queue(sessions, clock, 1), queue(sessions, clock, 2)
    mta.handler.data_delay = 2
    result = send_due(sessions, clock, smtp_to(mta, timeout="0.3s"))
    assert (result.retried, result.sent) == (1, 0) and "timed out" in result.error
    assert outbox(sessions, first).status == "queued" and outbox(sessions, first).attempts == 1
    assert outbox(sessions, second).attempts == 0


# -- claims: two senders, a sender that died ----------------------------------------

def test_two_concurrent_senders_deliver_each_row_once(sessions, mta):
    clock = FixedClock(T0)
    ids = [queue(sessions, clock, n) for n in range(1, 51)]
    start = threading.Barrier(2)
    results: list[SendResult] = []

    def sender() -> None:
        transport = smtp_to(mta)
        start.wait()
        results.append(send_due(sessions, clock, transport))

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert sum(r.sent for r in results) == 50
    mids = [m["Message-ID"] for m in mta.handler.messages()]
    assert len(mids) == 50 and len(set(mids)) == 50
    with sessions() as db:
        assert set(db.scalars(select(Outbox.status).where(Outbox.id.in_(ids)))) == {"sent"}


def test_a_claim_of_a_dead_sender_runs_out_after_the_lease(sessions, clock, mta):
    oid = queue(sessions, clock)
    with sessions.begin() as db:  # a sender claimed it, then died before sending
        db.execute(update(Outbox).values(claimed_until=T0 + timedelta(minutes=5)))

    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()
    clock.advance(minutes=5, seconds=1)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    assert len(mta.handler.envelopes) == 1 and outbox(sessions, oid).status == "sent"


class _Crash(BaseException):
    """Stands for the process dying (kill -9, power cut) right after the server said 250."""


class _CrashAfterSend:
    def __init__(self, inner: SmtpTransport) -> None:
        self.inner = inner

    def send(self, mail_from: str, recipients: Any, raw: bytes) -> Any:
        self.inner.send(mail_from, recipients, raw)
        raise _Crash

    def close(self) -> None:
        self.inner.close()


def test_a_crash_between_accept_and_record_repeats_only_that_mail_once(sessions, clock, mta):
    first, second = queue(sessions, clock, 1), queue(sessions, clock, 2)
    with pytest.raises(_Crash):
        send_due(sessions, clock, _CrashAfterSend(smtp_to(mta)))

    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)  # the other one
    clock.advance(minutes=6)  # the dead sender's claim runs out: the honest duplicate
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    clock.advance(days=1)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()
    assert [m["Message-ID"] for m in mta.handler.messages()] == [
        "<out-1@example.com>", "<out-2@example.com>", "<out-1@example.com>"]
    assert {outbox(sessions, first).status, outbox(sessions, second).status} == {"sent"}


def test_a_sender_killed_after_its_record_before_the_outbox_learns_it_sends_nothing_again(
        sessions, clock, mta):
    first, second = queue(sessions, clock, 1), queue(sessions, clock, 2)
    sessions.kw["bind"].dispose()  # no database connection may cross the fork
    pid = os.fork()
    if pid == 0:  # the sender, dying (no cleanup, no end of pass) right after one record
        try:
            add = accepted.AcceptedLog.add

            def add_then_die(self: accepted.AcceptedLog, record: Any, now: Any) -> bool:
                add(self, record, now)
                os._exit(0)

            accepted.AcceptedLog.add = add_then_die  # type: ignore[method-assign]
            send_due(sessions, clock, smtp_to(mta))
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0  # it died where we said

    clock.advance(minutes=6)  # the dead sender's claim ran out: only its record holds it
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)  # the other one
    clock.advance(days=1)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()
    assert [m["Message-ID"] for m in mta.handler.messages()] == [
        "<out-1@example.com>", "<out-2@example.com>"]
    assert (outbox(sessions, first).sent_at, outbox(sessions, second).sent_at) == (
        T0, T0 + timedelta(minutes=6))


def test_a_record_applied_twice_changes_nothing_and_says_nothing(
        sessions, clock, mta, monkeypatch, caplog):
    oid = queue(sessions, clock)
    # The database committed the fold, then the process died before the log forgot it.
    monkeypatch.setattr(accepted.AcceptedLog, "fold_end",
                        lambda self, applied: self.fold_abort())
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    monkeypatch.undo()
    before = outbox(sessions, oid)

    clock.advance(days=1)
    caplog.set_level(logging.WARNING)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()
    after = outbox(sessions, oid)
    assert (after.status, after.sent_at, after.attempts) == (
        before.status, before.sent_at, before.attempts) == ("sent", T0, 1)
    assert caplog.records == []
    assert len(mta.handler.messages()) == 1


class _LockAfterSend:
    """After the server's 250, other writers hold write locks for a while: that of the
    database (``url``), that of the senders' log of accepted mail (``log``), or both."""

    def __init__(self, inner: SmtpTransport, hold: float, *, url: str = "",
                 log: Path | None = None) -> None:
        self.inner, self.hold, self.url, self.log = inner, hold, url, log
        self.holders: list[threading.Thread] = []

    def send(self, mail_from: str, recipients: Any, raw: bytes) -> Any:
        answer = self.inner.send(mail_from, recipients, raw)
        if self.log is not None:
            self._hold(self._hold_the_log)
        if self.url:
            self._hold(self._hold_the_database)
        return answer

    def _hold(self, target: Any) -> None:
        taken = threading.Event()
        holder = threading.Thread(target=target, args=(taken,))
        holder.start()
        assert taken.wait(5)
        self.holders.append(holder)

    def _hold_the_log(self, taken: threading.Event) -> None:
        conn = sqlite3.connect(self.log, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(self.hold)
        conn.close()

    def _hold_the_database(self, taken: threading.Event) -> None:
        engine = make_engine(self.url)
        with engine.begin():  # BEGIN IMMEDIATE: the write lock
            taken.set()
            time.sleep(self.hold)
        engine.dispose()

    def released(self) -> None:
        for holder in self.holders:
            holder.join()

    def close(self) -> None:
        self.inner.close()


def _quick_to_give_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[
        str, sessionmaker[Session]]:
    """A database and a log whose locks are given up after 0.3 s."""
    monkeypatch.setattr(accepted, "LOCK_TIMEOUT", timedelta(seconds=0.3))
    url = f"sqlite:///{tmp_path / 'helpdesk.db'}"
    engine = make_engine(url, lock_timeout=timedelta(seconds=0.3))
    upgrade(engine)
    return url, make_sessions(engine)


def test_a_record_never_waits_for_the_database_and_the_mail_goes_once(
        tmp_path, clock, mta, monkeypatch):
    url, sessions = _quick_to_give_up(tmp_path, monkeypatch)
    oid = queue(sessions, clock)
    transport = _LockAfterSend(smtp_to(mta), hold=2.0, url=url)

    # A fetch holds the write lock past the lock timeout right after the 250: the
    # record is in the senders' log all the same, and the outbox learns it later.
    assert send_due(sessions, clock, transport) == SendResult(sent=1)
    transport.released()
    assert outbox(sessions, oid).status == "queued"
    clock.advance(days=1)  # long after the claim ran out: the log still holds it back
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()
    row = outbox(sessions, oid)
    assert (row.status, row.sent_at, row.attempts) == ("sent", T0, 1)
    assert [m["Message-ID"] for m in mta.handler.messages()] == ["<out-1@example.com>"]
    sessions.kw["bind"].dispose()


def test_status_counts_mail_the_server_took_as_sent_before_the_outbox_learns_it(
        desk_factory):
    desk = desk_factory(database={"lock_timeout": "0.3s"})
    ingest_raw(desk.app, make_mail("ana@customer.example", "support@example.com", "Help"),
               source="test")
    transport = _LockAfterSend(smtp_to(desk.mta), hold=2.0, url=desk.app.settings.database_url)
    assert send_due(desk.app.sessions, desk.clock, transport, reads=desk.app.reads,
                    render=outbox_renderer(desk.app)) == SendResult(sent=2)
    transport.released()

    with desk.app.reads() as db:  # the outbox has not learnt it yet ...
        assert db.scalar(select(func.count()).where(Outbox.status == "queued")) == 2
    status = desk.cli("status")  # ... but nothing waits to go out
    assert "outbox: 0 queued, 0 undeliverable" in status.stdout, status.stdout
    assert len(desk.sent()) == 2


def test_a_locked_log_sends_the_record_to_the_database_and_stops_the_claims(
        tmp_path, clock, mta, monkeypatch):
    url, sessions = _quick_to_give_up(tmp_path, monkeypatch)
    first = queue(sessions, clock, 1)
    transport = _LockAfterSend(smtp_to(mta), hold=2.0, log=tmp_path / "helpdesk.db-sent")

    assert send_due(sessions, clock, transport) == SendResult(sent=1)
    assert outbox(sessions, first).status == "sent"  # the database took the record
    # While the log stays locked nobody claims: a claim could not see its records.
    queue(sessions, clock, 2)
    clock.advance(minutes=6)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        send_due(sessions, clock, smtp_to(mta))
    transport.released()
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    clock.advance(days=1)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()
    assert [m["Message-ID"] for m in mta.handler.messages()] == [
        "<out-1@example.com>", "<out-2@example.com>"]
    sessions.kw["bind"].dispose()


def test_a_busy_log_never_makes_the_claim_hold_the_database_from_a_fetch(
        tmp_path, clock, mta, monkeypatch):
    url, sessions = _quick_to_give_up(tmp_path, monkeypatch)
    monkeypatch.setattr(accepted, "LOCK_TIMEOUT", timedelta(seconds=5))
    queue(sessions, clock)
    log = tmp_path / "helpdesk.db-sent"
    send_due(sessions, clock, smtp_to(mta))  # the log exists
    queue(sessions, clock, 2)
    stuck = sqlite3.connect(log, isolation_level=None)
    stuck.execute("BEGIN IMMEDIATE")  # a sender stopped in the middle of a record
    results: list[SendResult] = []
    sender = threading.Thread(target=lambda: results.append(
        send_due(sessions, clock, smtp_to(mta))))
    sender.start()

    # Meanwhile a fetch writes, with a lock timeout of 0.3 s, again and again.
    fetch = make_engine(url, lock_timeout=timedelta(seconds=0.3))
    for _ in range(8):
        with fetch.begin() as conn:
            conn.execute(update(Outbox).where(Outbox.id == -1).values(attempts=0))
        time.sleep(0.1)
    fetch.dispose()
    stuck.rollback()
    stuck.close()
    sender.join(10)
    assert results == [SendResult(sent=1)]
    assert [m["Message-ID"] for m in mta.handler.messages()] == [
        "<out-1@example.com>", "<out-2@example.com>"]
    sessions.kw["bind"].dispose()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make files for another user")
def test_a_log_made_by_root_belongs_to_the_owner_of_the_database(tmp_path, clock, mta):
    database = tmp_path / "helpdesk.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    sessions = make_sessions(engine)
    os.chown(database, 65534, 65534)  # the daemon's user; an admin runs a command as root
    queue(sessions, clock)
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult(sent=1)
    log = tmp_path / "helpdesk.db-sent"
    assert (log.stat().st_uid, log.stat().st_gid, log.stat().st_mode & 0o777) == (
        65534, 65534, 0o600)
    engine.dispose()


def test_a_record_that_cannot_get_in_anywhere_at_first_is_tried_again_and_the_mail_goes_once(
        tmp_path, clock, mta, monkeypatch):
    url, sessions = _quick_to_give_up(tmp_path, monkeypatch)
    oid = queue(sessions, clock)
    transport = _LockAfterSend(smtp_to(mta), hold=2.0, url=url,
                               log=tmp_path / "helpdesk.db-sent")

    assert send_due(sessions, clock, transport) == SendResult(sent=1)
    transport.released()
    clock.advance(days=1)  # long after any claim: nothing is due again
    assert send_due(sessions, clock, smtp_to(mta)) == SendResult()
    assert outbox(sessions, oid).status == "sent"
    assert [m["Message-ID"] for m in mta.handler.messages()] == ["<out-1@example.com>"]
    sessions.kw["bind"].dispose()


def test_a_sender_slower_than_its_lease_does_not_record_twice(sessions, clock, mta, caplog):
    oid = queue(sessions, clock)
    inner: list[SendResult] = []

    class Slow:  # while it sends, its lease runs out and another sender takes the row
        def send(self, mail_from: str, recipients: Any, raw: bytes) -> Any:
            clock.advance(minutes=6)
            inner.append(send_due(sessions, clock, smtp_to(mta)))
            return {}

        def close(self) -> None:
            pass

    assert send_due(sessions, clock, Slow()) == SendResult()
    assert inner == [SendResult(sent=1)]
    row = outbox(sessions, oid)
    assert (row.status, row.attempts, row.sent_at) == ("sent", 1, T0 + timedelta(minutes=6))
    assert "may have gone out twice" in caplog.text


# -- TLS and login ---------------------------------------------------------------

def test_implicit_tls_with_the_ca_and_login(sessions, clock, mta_tls, smtp_ca_file, caplog):
    oid = queue(sessions, clock)
    transport = smtp_to(mta_tls, security="ssl", ca_file=smtp_ca_file,
                        username=TEST_USER, password=TEST_PASSWORD)
    assert send_due(sessions, clock, transport) == SendResult(sent=1)
    assert mta_tls.handler.logins == [TEST_USER]
    assert outbox(sessions, oid).status == "sent"
    assert TEST_PASSWORD not in caplog.text


def test_starttls_with_the_ca_and_login(sessions, clock, mta_starttls, smtp_ca_file):
    queue(sessions, clock)
    transport = smtp_to(mta_starttls, security="starttls", ca_file=smtp_ca_file,
                        username=TEST_USER, password=TEST_PASSWORD)
    assert send_due(sessions, clock, transport) == SendResult(sent=1)
    assert len(mta_starttls.handler.envelopes) == 1


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_without_the_ca_fails_verification(sessions, clock, mta_factory, security):
    server = mta_factory(tls=security)
    oid = queue(sessions, clock)
    transport = smtp_to(server, security=security, username=TEST_USER, password=TEST_PASSWORD)
    result = send_due(sessions, clock, transport)
    assert result.retried == 1 and "CERTIFICATE_VERIFY_FAILED" in result.error
    row = outbox(sessions, oid)
    assert row.status == "queued" and "CERTIFICATE_VERIFY_FAILED" in row.last_error
    assert server.handler.envelopes == [] and server.handler.logins == []


def test_a_wrong_password_retries_and_is_never_logged(sessions, clock, mta, caplog):
    oid = queue(sessions, clock)
    transport = smtp_to(mta, username=TEST_USER, password="not-the-password")
    result = send_due(sessions, clock, transport)
    assert result.retried == 1 and f"login as {TEST_USER} refused: 535" in result.error
    assert outbox(sessions, oid).status == "queued"
    assert "not-the-password" not in caplog.text
    assert "not-the-password" not in (outbox(sessions, oid).last_error or "")


def test_login_over_plain_loopback(sessions, clock, mta):
    queue(sessions, clock)
    transport = smtp_to(mta, username=TEST_USER, password=TEST_PASSWORD)
    assert send_due(sessions, clock, transport) == SendResult(sent=1)
    assert mta.handler.logins == [TEST_USER]


# -- Maildir ----------------------------------------------------------------------

@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_maildir_keeps_the_bytes(sessions, clock, tmp_path, eol):
    oid = queue(sessions, clock)
    raw = render()[1].replace(b"\r\n", eol)
    with sessions.begin() as db:
        db.get_one(Outbox, oid).raw = raw

    assert send_due(sessions, clock, MaildirTransport(tmp_path / "outbox")) == SendResult(sent=1)
    [path] = (tmp_path / "outbox" / "new").iterdir()
    assert path.read_bytes() == raw
    assert outbox(sessions, oid).status == "sent"


def test_make_transport_follows_the_config(tmp_path, mta):
    base: dict[str, Any] = {
        "helpdesk": {"address": "support@example.com", "domain": "example.com"},
        "categories": {"customer_care": {"label": "Customer Care", "prefix": "CC",
                                         "addresses": ["support@example.com"]}},
        "config_dir": tmp_path / "config",
    }
    maildir = make_transport(Settings.model_validate(
        {**base, "outbound": {"maildir": "../var/outbox"}}))
    assert isinstance(maildir, MaildirTransport)
    assert maildir.path == tmp_path / "var" / "outbox"
    smtp = make_transport(Settings.model_validate(
        {**base, "outbound": {"smtp": {"host": mta.hostname, "port": mta.port,
                                       "security": "none"}}}))
    assert isinstance(smtp, SmtpTransport)
    assert smtp.send("support@example.com", [ANN], render()[1]) == {}
    smtp.close()
