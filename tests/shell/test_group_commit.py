"""Group commit (``ingest_many``): the mails of one IMAP batch share their commits,
and every mail is still stored, answered and quarantined exactly as alone."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from helpdesk.inbound import ingest
from helpdesk.inbound.ingest import Received, StorageUnavailable, ingest_many
from helpdesk.store.orm import Case, Inbound, Message, Outbox
from tests.servers.helpdesk import Desk, make_mail


@pytest.fixture(params=["sqlite", "postgresql"])
def desk(request: pytest.FixtureRequest, desk_factory: Callable[..., Desk]) -> Desk:
    if request.param == "postgresql":
        return desk_factory(database={"url": request.getfixturevalue("postgres_url")})
    return desk_factory()


@pytest.fixture(autouse=True)
def unhurried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group's time bound set far: a cold first mail, or a loaded machine, must not
    split a group here (the test of the bound sets its own)."""
    monkeypatch.setattr(ingest, "GROUP_SECONDS", 60.0)


@pytest.fixture
def commits(desk: Desk) -> Iterator[list[int]]:
    """How many transactions committed, counted as they do."""
    counted: list[int] = []
    listener = lambda _connection: counted.append(1)  # noqa: E731
    event.listen(desk.app.engine, "commit", listener)
    yield counted
    event.remove(desk.app.engine, "commit", listener)


def batch(*raws: bytes) -> list[Received]:
    return [Received(raw, "imap:test", f"1:{n}") for n, raw in enumerate(raws, start=1)]


def count(desk: Desk, what: Any, *where: Any) -> int:
    with desk.app.sessions() as session:
        return session.scalar(select(func.count()).select_from(what).where(*where)) or 0


def test_a_batch_is_stored_in_one_commit_and_each_mail_decided_as_alone(desk, commits):
    first = make_mail("ann@customer.example", "support@example.com", "Printer on fire",
                      message_id="<first@customer.example>")
    reply = make_mail("ann@customer.example", "support@example.com", "Re: Printer on fire",
                      "It is still burning.", in_reply_to="<first@customer.example>")
    again = first  # the same mail a second time, under another key (To and Cc)
    other = make_mail("bo@shop.example", "support@example.com", "Invoice is wrong")

    outcomes = ingest_many(desk.app, batch(first, reply, again, other))

    assert [o.status for o in outcomes] == ["new_case", "reply", "duplicate", "new_case"]
    assert [o.ref for o in outcomes] == ["CC-000001", "CC-000001", None, "CC-000002"]
    assert len(commits) == 1
    assert count(desk, Case) == 2 and count(desk, Inbound) == 4
    assert count(desk, Message, Message.direction == "in") == 3
    # The reply threads on the case opened a moment before, in the same transaction.
    assert count(desk, Outbox, Outbox.kind == "ack") == 2


def test_a_failing_mail_costs_only_itself(desk, commits, monkeypatch):
    real = ingest.apply_decision

    def broken_for_bo(db: Any, app: Any, decision: Any, msg: Any, *args: Any) -> Any:
        if msg is not None and msg.sender == "bo@shop.example":
            real(db, app, decision, msg, *args)  # writes, then fails: all of it rolls back
            raise RuntimeError("a bug")
        return real(db, app, decision, msg, *args)

    monkeypatch.setattr(ingest, "apply_decision", broken_for_bo)
    raws = [make_mail(sender, "support@example.com", f"Help {n}")
            for n, sender in enumerate(["ann@customer.example", "bo@shop.example",
                                        "cy@firm.example"])]

    outcomes = ingest_many(desk.app, batch(*raws))

    assert [o.status for o in outcomes] == ["new_case", "quarantined", "new_case"]
    assert "RuntimeError: a bug" in outcomes[1].reason
    assert len(commits) == 1  # the quarantine is in the batch's transaction too
    assert count(desk, Case) == 2 and count(desk, Outbox) == 4  # ack + notice, twice
    with desk.app.sessions() as session:
        kept = session.get(Inbound, outcomes[1].inbound_id)
        assert (kept.status, kept.raw) == ("failed", raws[1])
    assert [o.ref for o in outcomes] == ["CC-000001", None, "CC-000002"]


def test_storage_trouble_rolls_the_open_group_back_and_a_retry_stores_each_mail_once(
        desk, monkeypatch):
    real = ingest.apply_decision
    calls: list[int] = []

    def locked_at_the_third(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(*args)

    monkeypatch.setattr(ingest, "apply_decision", locked_at_the_third)
    mails = batch(*(make_mail(f"c{n}@customer.example", "support@example.com", f"Help {n}")
                    for n in range(4)))

    with pytest.raises(StorageUnavailable):
        ingest_many(desk.app, mails)
    assert count(desk, Inbound) == 0 and count(desk, Outbox) == 0  # nothing half-done

    monkeypatch.setattr(ingest, "apply_decision", real)
    assert [o.status for o in ingest_many(desk.app, mails)] == ["new_case"] * 4
    assert [o.status for o in ingest_many(desk.app, mails)] == ["duplicate"] * 4
    assert count(desk, Case) == 4 and count(desk, Outbox) == 8


def test_a_group_commit_is_bounded_in_mails(desk, commits, monkeypatch):
    monkeypatch.setattr(ingest, "GROUP_MAILS", 2)
    mails = batch(*(make_mail(f"c{n}@customer.example", "support@example.com", f"Help {n}")
                    for n in range(5)))

    assert [o.status for o in ingest_many(desk.app, mails)] == ["new_case"] * 5
    assert len(commits) == 3


def test_a_group_commit_opens_no_mail_after_its_time(desk, commits, monkeypatch):
    monkeypatch.setattr(ingest, "GROUP_SECONDS", 0.0)  # every mail finds the time up
    mails = batch(*(make_mail(f"c{n}@customer.example", "support@example.com", f"Help {n}")
                    for n in range(3)))

    assert [o.status for o in ingest_many(desk.app, mails)] == ["new_case"] * 3
    assert len(commits) == 3  # one mail each: the first of a transaction always goes in
