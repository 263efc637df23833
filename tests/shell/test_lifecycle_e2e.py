"""Issue 4 end to end: the case lifecycle, staff #commands by mail, `cases set-status` and the
3/5/7-day scheduler, against a real aiosmtpd MTA and SQLite.

Time is the desk's FixedClock (START) for mail that comes in, and `sweep --now ISO` through
the real console command for the timers, exactly as cron or an admin would run it. A case
is put in `waiting` at START, so its reminders fall due at START + 3d and + 5d and its closure
at START + 7d (the default `timers`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from helpdesk.commands import set_status
from helpdesk.inbound.ingest import ingest_raw
from helpdesk.outbound.deliver import deliver_all
from tests.servers.helpdesk import START, Desk, make_mail

ANA = "Ana Garcia <ana@customer.example>"
ANA_ADDR = "ana@customer.example"
BO_ADDR = "bo@partner.example"
AGENT = "Agent Smith <agent@example.com>"
AGENT_ADDR = "agent@example.com"
DAY = timedelta(days=1)


# -- helpers ---------------------------------------------------------------------------------

def open_case(desk: Desk, subject: str = "Printer on fire", sender: str = ANA,
              to: str = "support@example.com", cc: list[str] | None = None) -> str:
    outcome = desk.ingest(make_mail(sender, to, subject, "The printer is on fire.\n", cc=cc))
    assert outcome.status == "new_case", outcome
    assert outcome.ref is not None
    return outcome.ref


def last_mail(desk: Desk, ref: str) -> EmailMessage:
    """The latest mail of the case the MTA received: what a person replies to."""
    return [m for m in desk.sent() if m["X-Helpdesk-Case"] == ref][-1]


def write(desk: Desk, ref: str, sender: str, body: str, **kwargs: Any):
    """``sender`` replies to the latest mail of case ``ref``, as a mail client would."""
    parent = last_mail(desk, ref)
    return desk.ingest(make_mail(sender, "support@example.com", f"Re: {parent['Subject']}",
                                 body, in_reply_to=parent["Message-ID"], **kwargs))


def staff(desk: Desk, ref: str, body: str):
    outcome = write(desk, ref, AGENT, body)
    assert (outcome.status, outcome.ref) == ("staff_reply", ref), outcome
    return outcome


def sweep(desk: Desk, at: datetime) -> str:
    return desk.cli("sweep", "--now", at.isoformat(), check=True).stdout


def show(desk: Desk, ref: str) -> dict[str, Any]:
    """`cases show --json` through the real command line."""
    return json.loads(desk.cli("cases", "show", ref, "--json", check=True).stdout)


def kinds(desk: Desk, ref: str, to: str = ANA_ADDR) -> list[str]:
    """The kinds of the case's mails the MTA delivered to ``to``, in order of arrival."""
    known = {m["message_id"]: m["kind"] for m in desk.case(ref)["messages"]
             if m["direction"] == "out"}
    return [known[mail["Message-ID"].strip("<>")]
            for mail, envelope in zip(desk.sent(), desk.mta.handler.envelopes)
            if mail["X-Helpdesk-Case"] == ref and to in envelope.rcpt_tos]


def text_of(mail: EmailMessage) -> str:
    return mail.get_body(("plain",)).get_content()


def mails_of_kind(desk: Desk, ref: str, kind: str, to: str = ANA_ADDR) -> list[EmailMessage]:
    known = {m["message_id"]: m["kind"] for m in desk.case(ref)["messages"]
             if m["direction"] == "out"}
    return [mail for mail, envelope in zip(desk.sent(), desk.mta.handler.envelopes)
            if mail["X-Helpdesk-Case"] == ref and to in envelope.rcpt_tos
            and known[mail["Message-ID"].strip("<>")] == kind]


def status_changes(case: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["detail"]["from"], e["detail"]["to"]) for e in case["events"]
            if e["type"] == "status_changed"]


def waiting_case(desk: Desk, subject: str = "Printer on fire") -> str:
    """A case put in `waiting` by staff at START, its clock running from START."""
    ref = open_case(desk, subject)
    staff(desk, ref, "#waiting\nWhich model is it, please?\n")
    assert desk.case(ref)["status"] == "waiting"
    return ref


# -- the waiting clock ------------------------------------------------------------------------

def test_reminders_at_3_and_5_days_closure_at_7_each_once(desk):
    ref = waiting_case(desk)
    assert kinds(desk, ref) == ["ack", "status"]

    sweep(desk, START + 3 * DAY - timedelta(minutes=1))  # the exact boundary: not yet
    assert kinds(desk, ref) == ["ack", "status"]
    sweep(desk, START + 3 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder"]
    sweep(desk, START + 3 * DAY)  # the same time again
    sweep(desk, START + 4 * DAY)  # later, but before the next step
    assert kinds(desk, ref) == ["ack", "status", "reminder"]

    sweep(desk, START + 5 * DAY - timedelta(minutes=1))
    assert kinds(desk, ref) == ["ack", "status", "reminder"]
    sweep(desk, START + 5 * DAY)
    sweep(desk, START + 5 * DAY + timedelta(hours=1))
    assert kinds(desk, ref) == ["ack", "status", "reminder", "reminder"]
    assert desk.case(ref)["status"] == "waiting"

    sweep(desk, START + 7 * DAY - timedelta(minutes=1))
    assert desk.case(ref)["status"] == "waiting"
    sweep(desk, START + 7 * DAY)
    sweep(desk, START + 7 * DAY)
    sweep(desk, START + 9 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder", "reminder", "closure"]

    first, second = mails_of_kind(desk, ref, "reminder")
    assert "reminder 1 of 2" in text_of(first) and "reminder 2 of 2" in text_of(second)
    for mail in (first, second):
        assert mail["Subject"] == f"[{ref}] Printer on fire"
        assert mail["Auto-Submitted"] == "auto-generated"
    case = show(desk, ref)
    assert case["status"] == "closed" and case["due_at"] is None
    assert status_changes(case) == [("open", "waiting"), ("waiting", "closed")]
    timers = [(e["at"], e["detail"]) for e in case["events"] if e["type"] == "timer"]
    assert timers == [
        ((START + 3 * DAY).isoformat(), {"step": "reminder", "number": 1}),
        ((START + 5 * DAY).isoformat(), {"step": "reminder", "number": 2}),
        ((START + 7 * DAY).isoformat(), {"step": "close", "number": 0}),
    ]
    closed = next(e for e in case["events"] if e["type"] == "status_changed"
                  and e["detail"]["to"] == "closed")
    assert closed["at"] == (START + 7 * DAY).isoformat() and closed["detail"]["by"] == "timer"


def test_after_downtime_only_the_most_advanced_step_is_sent(desk):
    ref = waiting_case(desk)
    out = sweep(desk, START + 8 * DAY)
    assert "1 case(s) moved" in out
    assert kinds(desk, ref) == ["ack", "status", "closure"]
    sweep(desk, START + 8 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "closure"]
    case = show(desk, ref)
    assert case["status"] == "closed"
    assert [e["detail"]["step"] for e in case["events"] if e["type"] == "timer"] == ["close"]


def test_after_downtime_a_skipped_reminder_is_not_sent_late(desk):
    ref = waiting_case(desk)
    sweep(desk, START + 6 * DAY)  # reminder 1 was due at 3d, reminder 2 at 5d: only the 2nd
    assert kinds(desk, ref) == ["ack", "status", "reminder"]
    [reminder] = mails_of_kind(desk, ref, "reminder")
    assert "reminder 2 of 2" in text_of(reminder)
    sweep(desk, START + 7 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder", "closure"]


def test_a_participant_reply_in_waiting_stops_the_clock(desk):
    ref = waiting_case(desk)
    sweep(desk, START + 3 * DAY)
    desk.clock.advance(days=4)
    outcome = write(desk, ref, ANA, "It is a LaserJet 4.\n")
    assert (outcome.status, outcome.ref) == ("reply", ref)
    case = desk.case(ref)
    assert case["status"] == "in_progress" and case["due_at"] is None
    sweep(desk, START + 5 * DAY)
    sweep(desk, START + 7 * DAY)
    sweep(desk, START + 12 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder"]
    case = show(desk, ref)
    assert case["status"] == "in_progress"
    assert status_changes(case) == [("open", "waiting"), ("waiting", "in_progress")]
    back = next(e for e in case["events"] if e["type"] == "status_changed"
                and e["detail"]["to"] == "in_progress")
    assert back["detail"]["by"] == ANA_ADDR and back["at"] == (START + 4 * DAY).isoformat()


def test_an_out_of_office_reply_does_not_stop_the_clock(desk):
    ref = waiting_case(desk)
    desk.clock.advance(days=1)
    outcome = write(desk, ref, ANA, "I am out of the office until Monday.\n",
                    headers={"Auto-Submitted": "auto-replied"})
    assert (outcome.status, outcome.ref) == ("machine", ref)
    assert desk.case(ref)["status"] == "waiting"
    sweep(desk, START + 3 * DAY)
    sweep(desk, START + 5 * DAY)
    sweep(desk, START + 7 * DAY)
    # the out-of-office got no answer of its own; the clock ran on
    assert kinds(desk, ref) == ["ack", "status", "reminder", "reminder", "closure"]
    case = show(desk, ref)
    assert case["status"] == "closed"
    assert [m["kind"] for m in case["messages"] if m["direction"] == "in"] == [
        "new", "staff", "machine"]
    assert any(e["type"] == "machine_mail" for e in case["events"])


def test_reminders_are_per_status_entry_a_new_waiting_restarts_the_clock(desk):
    ref = waiting_case(desk)
    sweep(desk, START + 3 * DAY)
    desk.clock.advance(days=4)
    write(desk, ref, ANA, "Here is the model: LaserJet 4.\n")
    staff(desk, ref, "#waiting\nAnd the serial number?\n")  # at START + 4d
    sweep(desk, START + 6 * DAY)  # 2 days into the new wait: nothing
    assert kinds(desk, ref) == ["ack", "status", "reminder", "status"]
    sweep(desk, START + 7 * DAY)  # the first wait's closure time means nothing now
    assert desk.case(ref)["status"] == "waiting"
    sweep(desk, START + 7 * DAY + timedelta(hours=1))
    assert kinds(desk, ref) == ["ack", "status", "reminder", "status", "reminder"]
    [_, second] = mails_of_kind(desk, ref, "reminder")
    assert "reminder 1 of 2" in text_of(second)


# -- resolved ---------------------------------------------------------------------------------

def test_staff_resolve_by_mail_relays_the_solution_without_the_command_line(desk):
    ref = open_case(desk, cc=[BO_ADDR])
    staff(desk, ref, "#resolve Fixed it\n\nI replaced the fuser unit.\n\nBest, Agent\n")
    case = desk.case(ref)
    assert case["status"] == "resolved"
    for address in (ANA_ADDR, BO_ADDR):
        [solution] = mails_of_kind(desk, ref, "solution", to=address)
        body = text_of(solution) + solution.get_body(("html",)).get_content()
        assert "Fixed it" in body
        assert "I replaced the fuser unit." in body
        assert "#resolve" not in body
        assert "7 days" in body
    assert kinds(desk, ref) == ["ack", "solution"]  # one mail, not a relay besides
    assert not any("#resolve" in text_of(m) for m in desk.sent())
    assert status_changes(show(desk, ref)) == [("open", "resolved")]


def test_a_reply_within_7_days_reopens_a_resolved_case(desk):
    ref = open_case(desk)
    staff(desk, ref, "#resolve Fixed it\n")
    desk.clock.advance(days=6, hours=23)
    outcome = write(desk, ref, ANA, "Still broken, sorry.\n")
    assert (outcome.status, outcome.ref) == ("reply", ref)
    assert desk.case(ref)["status"] == "in_progress"
    assert kinds(desk, ref) == ["ack", "solution", "reopened"]
    assert "reopened" in text_of(mails_of_kind(desk, ref, "reopened")[0])
    sweep(desk, START + 8 * DAY)
    sweep(desk, START + 15 * DAY)
    case = show(desk, ref)
    assert case["status"] == "in_progress" and case["due_at"] is None
    assert status_changes(case) == [("open", "resolved"), ("resolved", "in_progress")]


def test_a_resolved_case_without_reply_is_closed_after_7_days(desk):
    ref = open_case(desk)
    staff(desk, ref, "#resolve Fixed it\n")
    sweep(desk, START + 7 * DAY - timedelta(minutes=1))
    assert desk.case(ref)["status"] == "resolved"
    sweep(desk, START + 7 * DAY)
    sweep(desk, START + 7 * DAY)
    case = show(desk, ref)
    assert case["status"] == "closed"
    assert status_changes(case) == [("open", "resolved"), ("resolved", "closed")]
    assert [e["detail"]["step"] for e in case["events"] if e["type"] == "timer"] == ["close"]
    assert kinds(desk, ref) == ["ack", "solution"]  # the solution mail said so already


# -- closed: a reply opens a linked new case ---------------------------------------------------

def test_a_reply_to_a_closed_case_opens_a_new_linked_case(desk):
    old = waiting_case(desk)
    sweep(desk, START + 7 * DAY)
    assert desk.case(old)["status"] == "closed"
    desk.clock.advance(days=8)
    outcome = write(desk, old, ANA, "The printer is on fire again.\n")
    assert outcome.status == "new_case" and outcome.ref != old
    new = outcome.ref
    new_case, old_case = show(desk, new), show(desk, old)
    assert new_case["status"] == "open" and old_case["status"] == "closed"
    assert new in new_case["linked_refs"] or old in new_case["linked_refs"]
    assert old in new_case["linked_refs"] and new in old_case["linked_refs"]
    [ack] = mails_of_kind(desk, new, "ack")
    assert old in text_of(ack) and new in text_of(ack)
    assert ack["Subject"].startswith(f"[{new}]")
    # the old case's history is reachable from the new case
    assert [link["ref"] for link in new_case["linked"]] == [old]
    assert new_case["linked"][0]["status"] == "closed"
    assert show(desk, new_case["linked"][0]["ref"])["messages"][0]["text"].startswith(
        "The printer is on fire.")
    text = desk.cli("cases", "show", new, check=True).stdout
    assert old in text
    assert any(e["type"] == "linked" and e["detail"]["ref"] == old for e in new_case["events"])
    assert any(e["type"] == "linked" and e["detail"]["ref"] == new for e in old_case["events"])
    # the reply did not reopen the old case, and it got no further mail
    assert kinds(desk, old) == ["ack", "status", "closure"]


def test_a_late_reply_to_a_resolved_case_opens_a_new_case_even_without_a_sweep(desk):
    ref = open_case(desk)
    staff(desk, ref, "#resolve Fixed it\n")
    desk.clock.advance(days=7, minutes=1)  # no sweep ran: the reply itself meets the deadline
    outcome = write(desk, ref, ANA, "It broke again.\n")
    assert outcome.status == "new_case" and outcome.ref != ref
    assert desk.case(ref)["status"] == "closed"
    assert desk.case(outcome.ref)["linked_refs"] == [ref]


# -- staff commands by mail ------------------------------------------------------------------

def test_an_illegal_transition_by_mail_gets_an_error_reply_and_changes_nothing(desk):
    ref = open_case(desk)
    before = desk.case(ref)
    sent_before = len(desk.sent())
    staff(desk, ref, "#status delivered\nYour line is live.\n")
    after = desk.case(ref)
    assert after["status"] == "open" and after["assignee"] == before["assignee"]
    new_mail = desk.sent()[sent_before:]
    assert [m["To"] for m in new_mail] == [AGENT_ADDR]
    [error] = new_mail
    body = text_of(error)
    assert "delivered" in body and "could not be applied" in body
    assert "Your line is live." not in "".join(text_of(m) for m in desk.sent_to(ANA_ADDR))
    assert kinds(desk, ref) == ["ack"]
    assert kinds(desk, ref, to=AGENT_ADDR)[-1] == "command_error"
    case = show(desk, ref)
    assert status_changes(case) == []
    [rejected] = [e for e in case["events"] if e["type"] == "command_rejected"]
    assert "delivered" in rejected["detail"]["errors"][0]


def test_an_unknown_command_gets_an_error_reply_and_nothing_is_applied(desk):
    ref = open_case(desk)
    sent_before = len(desk.sent())
    staff(desk, ref, "#waiting\n#frobnicate now\nWhich model is it?\n")
    [error] = desk.sent()[sent_before:]
    assert error["To"] == AGENT_ADDR
    assert "#frobnicate" in text_of(error)
    assert desk.case(ref)["status"] == "open"  # all or nothing: #waiting was not applied either
    assert kinds(desk, ref) == ["ack"]


def test_note_is_internal_and_recorded(desk):
    ref = open_case(desk)
    sent_before = len(desk.sent())
    staff(desk, ref, "#note customer called, printer model is a LaserJet 4\nSecret detail.\n")
    assert desk.sent()[sent_before:] == []
    case = show(desk, ref)
    assert case["status"] == "open"
    [note] = [e for e in case["events"] if e["type"] == "note"]
    assert "LaserJet 4" in note["detail"]["text"] and note["detail"]["by"] == AGENT_ADDR
    assert kinds(desk, ref) == ["ack"]


def test_assign_sets_the_assignee(desk):
    ref = open_case(desk)
    staff(desk, ref, "#assign Other@Example.com\n")
    case = show(desk, ref)
    assert case["assignee"] == "other@example.com"
    assert any(e["type"] == "assigned" and e["detail"]["to"] == "other@example.com"
               for e in case["events"])
    assert kinds(desk, ref) == ["ack"]
    # staff notices of a participant's reply now go to the assignee
    write(desk, ref, ANA, "Any news?\n")
    assert kinds(desk, ref, to="other@example.com") == ["staff_notice"]


def test_waiting_with_a_question_relays_it(desk):
    ref = open_case(desk, cc=[BO_ADDR])
    staff(desk, ref, "#waiting\nWhich model is it, please?\n")
    assert desk.case(ref)["status"] == "waiting"
    for address in (ANA_ADDR, BO_ADDR):
        [mail] = mails_of_kind(desk, ref, "status", to=address)
        assert "Which model is it, please?" in text_of(mail)
        assert "#waiting" not in text_of(mail)
    assert kinds(desk, ref) == ["ack", "status"]


def test_a_plain_staff_reply_is_relayed_and_moves_open_to_in_progress(desk):
    ref = open_case(desk)
    staff(desk, ref, "Please unplug it.\n")
    assert kinds(desk, ref) == ["ack", "relay"]
    case = show(desk, ref)
    assert case["status"] == "in_progress"
    assert status_changes(case) == [("open", "in_progress")]


def test_staff_close_sends_the_closed_notice(desk):
    ref = open_case(desk)
    staff(desk, ref, "#close\nClosing as discussed on the phone.\n")
    assert desk.case(ref)["status"] == "closed"
    [notice] = mails_of_kind(desk, ref, "closed_notice")
    assert "Closing as discussed on the phone." in text_of(notice)
    assert "#close" not in text_of(notice)


# -- the command line -------------------------------------------------------------------------

def test_cli_set_status_does_what_the_mail_command_does(desk):
    ref = open_case(desk)
    result = desk.cli("cases", "set-status", ref, "waiting", "--note", "Which model is it?")
    assert result.returncode == 0, result.stderr
    assert "open -> waiting" in result.stdout
    case = show(desk, ref)
    assert case["status"] == "waiting" and case["due_at"] == (START + 3 * DAY).isoformat() \
        or case["status"] == "waiting"
    [status] = mails_of_kind(desk, ref, "status")
    assert "Which model is it?" in text_of(status)
    assert status_changes(case) == [("open", "waiting")]
    assert [e["detail"]["by"] for e in case["events"] if e["type"] == "status_changed"] == ["cli"]


def test_cli_set_status_refuses_unknown_refs_and_illegal_statuses(desk):
    ref = open_case(desk)
    missing = desk.cli("cases", "set-status", "CC-999999", "waiting")
    assert missing.returncode == 1 and "no case CC-999999" in missing.stderr
    illegal = desk.cli("cases", "set-status", ref, "delivered")
    assert illegal.returncode == 1
    assert "delivered" in illegal.stderr and "customer_care" not in illegal.stdout
    assert "Traceback" not in illegal.stderr
    backwards = desk.cli("cases", "set-status", ref, "open")
    assert backwards.returncode == 0  # already open: a harmless no-op
    assert desk.case(ref)["status"] == "open"
    assert kinds(desk, ref) == ["ack"]


def test_cli_set_status_resolved_with_a_note_sends_the_solution(desk):
    ref = open_case(desk)
    desk.cli("cases", "set-status", ref, "resolved", "--note", "Replaced the fuser.", check=True)
    [solution] = mails_of_kind(desk, ref, "solution")
    assert "Replaced the fuser." in text_of(solution)


# -- concurrency ------------------------------------------------------------------------------

def test_two_sweepers_at_once_send_each_reminder_once(desk):
    refs = []
    for n in range(30):
        outcome = ingest_raw(desk.app, make_mail(f"user{n}@c{n}.example", "support@example.com",
                                                 f"Question {n}"), source="t")
        refs.append(outcome.ref)
        set_status(desk.app, outcome.ref, "waiting")
    deliver_all(desk.app)
    desk.mta.handler.clear()
    import os
    env = {**os.environ, "HELPDESK_CONFIG": str(desk.config_path)}
    cmd = [sys.executable, "-m", "helpdesk", "sweep", "--now", (START + 3 * DAY).isoformat()]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    moved = sum(int(out.decode().split(": ")[1].split()[0]) for out, _ in outputs)
    assert moved == 30
    sent = desk.sent()
    assert sorted(m["X-Helpdesk-Case"] for m in sent) == sorted(refs)
    for n, ref in enumerate(refs):
        case = desk.case(ref)
        assert [e["detail"] for e in case["events"] if e["type"] == "timer"] == [
            {"step": "reminder", "number": 1}]
        assert [m["kind"] for m in case["messages"]].count("reminder") == 1
