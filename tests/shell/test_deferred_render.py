"""Timer mail is queued by the sweep without its body and rendered by the sender.

The sender renders a row the first time it claims it and stores the bytes in that
claim: every retry sends exactly those bytes. A mail that can no longer be rendered
(a template broken after the sweep queued it) is not lost and not retried forever:
it is marked dead with the reason, and its case records it.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Case, Event, Message, Outbox
from helpdesk.sweep import sweep
from tests.servers.helpdesk import START, Desk, make_mail
from tests.shell.test_lifecycle_e2e import DAY, kinds, waiting_case


def reminder_row(desk: Desk) -> Outbox:
    with desk.app.sessions() as session:
        return session.scalars(select(Outbox).where(Outbox.kind == "reminder")).one()


def delivered(desk: Desk, message_id: str) -> bytes:
    """DATA exactly as the MTA received it, of the one mail with this Message-ID."""
    [content] = [d.content for d in desk.mta.handler.envelopes
                 if d.message()["Message-ID"] == f"<{message_id}>"]
    return content


def sweep_at(desk: Desk, days: int) -> None:
    desk.clock.current = START + days * DAY
    assert sweep(desk.app, desk.clock.now()) == 1


def overridden_desk(desk_factory, tmp_path: Path) -> tuple[Desk, Path]:
    overrides = tmp_path / "overrides"
    (overrides / "default").mkdir(parents=True)
    return desk_factory(helpdesk={"templates": str(overrides)}), overrides / "default"


def test_the_sweep_queues_the_mail_unrendered_and_the_sender_renders_it(desk):
    ref = waiting_case(desk)
    sweep_at(desk, 3)
    row = reminder_row(desk)
    assert row.raw is None and row.render is not None  # the sweep did not render it
    assert row.recipients == ["ana@customer.example"] and row.message_id

    deliver_all(desk.app)
    assert kinds(desk, ref) == ["ack", "status", "reminder"]
    row = reminder_row(desk)
    assert row.status == "sent" and row.raw is not None
    assert delivered(desk, row.message_id) == row.raw  # what was stored is what went out
    mail = desk.mta.handler.envelopes[-1].message()
    assert mail["Subject"] == f"[{ref}] Printer on fire"
    assert mail["Message-ID"] == f"<{row.message_id}>" and mail["In-Reply-To"]
    with desk.app.sessions() as session:  # the case's copy got its text when it was rendered
        text = session.scalar(select(Message.text).where(Message.message_id == row.message_id))
    assert text and ref in text


def test_the_bytes_are_rendered_once_and_a_retry_sends_the_same_bytes(desk, tmp_path):
    ref = waiting_case(desk)
    sweep_at(desk, 3)
    desk.mta.stop()
    assert deliver_all(desk.app).retried == 1
    first = reminder_row(desk)
    assert first.status == "queued" and first.attempts == 1 and first.raw is not None

    with desk.app.sessions.begin() as session:
        case = session.scalars(select(Case).where(Case.ref == ref)).one()
        case.subject = "Changed after the first attempt"  # would change a fresh rendering
    desk.mta.start()
    desk.clock.advance(hours=1)  # past the retry backoff
    assert deliver_all(desk.app).sent == 1
    sent = reminder_row(desk)
    assert (sent.status, sent.raw) == ("sent", first.raw)
    assert delivered(desk, first.message_id) == first.raw
    assert kinds(desk, ref) == ["ack", "status", "reminder"]


def test_a_template_broken_after_the_sweep_makes_the_mail_dead_with_the_reason(
        desk_factory, tmp_path):
    desk, templates = overridden_desk(desk_factory, tmp_path)
    ref = waiting_case(desk)
    sweep_at(desk, 3)
    (templates / "reminder.txt.j2").write_text("Reminder {{ case.ref }\n")  # a syntax error

    result = deliver_all(desk.app)
    assert (result.sent, result.dead) == (0, 1)
    row = reminder_row(desk)
    assert row.status == "dead" and row.raw is None
    assert "could not render" in row.last_error and "reminder.txt.j2" in row.last_error
    assert kinds(desk, ref) == ["ack", "status"]  # nothing half-made went out
    with desk.app.sessions() as session:
        [event] = session.scalars(select(Event).where(Event.type == "delivery_failed")).all()
    assert event.detail["outbox_id"] == row.id and event.detail["kind"] == "reminder"
    assert "could not render" in event.detail["refused"]["ana@customer.example"]
    assert "1 undeliverable" in desk.cli("status").stdout

    (templates / "reminder.txt.j2").unlink()  # fixed: the dead row stays dead, not resent
    desk.clock.advance(hours=1)
    assert deliver_all(desk.app).sent == 0
    assert reminder_row(desk).status == "dead"
    # and the case goes on: the next step is queued and sent as usual
    sweep_at(desk, 5)
    deliver_all(desk.app)
    assert kinds(desk, ref) == ["ack", "status", "reminder"]


def test_a_broken_template_still_quarantines_the_inbound_mail_it_would_answer(
        desk_factory, tmp_path):
    desk, templates = overridden_desk(desk_factory, tmp_path)
    (templates / "ack.txt.j2").write_text("{{ no_such_variable }}\n")
    outcome = desk.ingest(make_mail("ana@customer.example", "support@example.com", "Hi"))
    assert outcome.status == "quarantined" and "no_such_variable" in outcome.reason
    with desk.app.sessions() as session:
        assert session.scalars(select(Outbox)).all() == []
