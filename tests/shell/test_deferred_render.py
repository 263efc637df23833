"""Every mail is queued without its body and rendered by the sender, outside the
transaction that queued it.

The sender renders a row the first time it claims it and keeps the bytes: every
retry sends exactly those bytes. A mail that cannot be rendered (a broken template)
is not lost and does not undo what caused it: it waits in the outbox with the
reason, `helpdesk status` says so (exit 1), and it goes out once the template is fixed.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Case, Message, Outbox
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


def test_a_template_broken_after_the_sweep_keeps_the_mail_waiting_until_it_is_fixed(
        desk_factory, tmp_path):
    desk, templates = overridden_desk(desk_factory, tmp_path)
    ref = waiting_case(desk)
    sweep_at(desk, 3)
    (templates / "reminder.txt.j2").write_text("Reminder {{ case.ref }\n")  # a syntax error

    result = deliver_all(desk.app)
    assert (result.sent, result.retried, result.dead) == (0, 1, 0)
    row = reminder_row(desk)
    assert row.status == "queued" and row.raw is None
    assert "could not render" in row.last_error and "reminder.txt.j2" in row.last_error
    assert kinds(desk, ref) == ["ack", "status"]  # nothing half-made went out
    status = desk.cli("status")
    assert status.returncode == 1
    assert "1 outgoing mail(s) cannot be rendered" in status.stdout
    assert "reminder.txt.j2" in status.stdout

    (templates / "reminder.txt.j2").unlink()  # fixed: the mail goes out at its next attempt
    desk.clock.advance(hours=1)
    assert deliver_all(desk.app).sent == 1
    assert reminder_row(desk).status == "sent"
    assert kinds(desk, ref) == ["ack", "status", "reminder"]
    assert "cannot be rendered" not in desk.cli("status").stdout


def test_a_broken_template_stores_the_inbound_mail_and_its_answer_waits_for_the_fix(
        desk_factory, tmp_path):
    desk, templates = overridden_desk(desk_factory, tmp_path)
    (templates / "ack.txt.j2").write_text("{{ no_such_variable }}\n")
    outcome = desk.ingest(make_mail("ana@customer.example", "support@example.com", "Hi"))
    assert outcome.status == "new_case"  # the case is there for staff to see
    assert [m["Subject"] for m in desk.sent()] == ["[CC-000001] Hi"]  # the staff notice
    assert desk.sent_to("ana@customer.example") == []
    with desk.app.sessions() as session:
        ack = session.scalars(select(Outbox).where(Outbox.kind == "ack")).one()
    assert ack.status == "queued" and "no_such_variable" in ack.last_error
    assert "cannot be rendered" in desk.cli("status").stdout

    (templates / "ack.txt.j2").unlink()
    desk.clock.advance(hours=1)
    deliver_all(desk.app)
    [mail] = desk.sent_to("ana@customer.example")
    assert mail["Subject"] == "[CC-000001] Hi"
