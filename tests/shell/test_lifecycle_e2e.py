"""Issue 4 end to end: the case lifecycle, staff #commands by mail, `cases set-status` and the
3/5/7-day scheduler, against a real aiosmtpd MTA and SQLite.

Mail comes in at the desk's FixedClock (START, advanced by the tests); the timers run through
the real console command, `helpdesk sweep --now ISO`, exactly as cron or an admin would run
it. Where a test only needs "nothing more happens later" it runs the same sweep in-process
(``tick``, what the daemon's schedule loop calls) to stay fast. A case put in `waiting` at
START has its reminders due at START + 3d and + 5d and its closure at START + 7d (the
default `timers`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from helpdesk.commands import set_status
from helpdesk.inbound.ingest import Outcome, ingest_raw
from helpdesk.outbound.deliver import deliver_all
from helpdesk.sweep import sweep as run_sweep
from tests.servers.helpdesk import START, Desk, make_mail, stop_process
from tests.servers.smtp import wait_for

ANA = "Ana Garcia <ana@customer.example>"
ANA_ADDR = "ana@customer.example"
BO_ADDR = "bo@partner.example"
AGENT = "Agent Smith <agent@example.com>"
AGENT_ADDR = "agent@example.com"
DAY = timedelta(days=1)

# The console command, held at a gate: it imports everything, says it is ready (argv[2]),
# waits until the gate file (argv[1]) appears, then runs. Two of them started together
# then really sweep at the same moment, however slow Python's start-up is.
GATED_CLI = """
import pathlib, sys, time
from helpdesk.cli import main
import helpdesk.app, helpdesk.outbound.deliver, helpdesk.sweep
gate, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not gate.exists():
    time.sleep(0.002)
sys.argv = ["helpdesk", *sys.argv[3:]]
main()
"""


# -- helpers ---------------------------------------------------------------------------------

def open_case(desk: Desk, subject: str = "Printer on fire", sender: str = ANA,
              cc: list[str] | None = None) -> str:
    outcome = desk.ingest(make_mail(sender, "support@example.com", subject,
                                    "The printer is on fire.\n", cc=cc))
    assert outcome.status == "new_case" and outcome.ref, outcome
    return outcome.ref


def last_mail(desk: Desk, ref: str, to: str) -> EmailMessage:
    """The latest mail of case ``ref`` that ``to`` received: what that person replies to."""
    return [m for m in desk.sent_to(to) if m["X-Helpdesk-Case"] == ref][-1]


def write(desk: Desk, ref: str, sender: str, body: str, **kwargs: Any) -> Outcome:
    """``sender`` answers the latest mail of case ``ref`` they got, as a mail client does:
    to its Reply-To, with In-Reply-To/References and "Re: " on the subject."""
    address = sender.rpartition("<")[2].rstrip(">")
    parent = last_mail(desk, ref, address)
    return desk.ingest(make_mail(sender, parent["Reply-To"], f"Re: {parent['Subject']}", body,
                                 in_reply_to=parent["Message-ID"], **kwargs))


def staff(desk: Desk, ref: str, body: str) -> Outcome:
    """The agent answers the latest mail of the case they got (first: the staff notice)."""
    outcome = write(desk, ref, AGENT, body)
    assert (outcome.status, outcome.ref) == ("staff_reply", ref), outcome
    return outcome


def sweep(desk: Desk, at: datetime) -> str:
    """`helpdesk sweep --now AT` through the real console command."""
    return desk.cli("sweep", "--now", at.isoformat(), check=True).stdout


def tick(desk: Desk, at: datetime) -> int:
    """The same sweep in-process, then the outbox, as of ``at``."""
    desk.clock.current = at
    moved = run_sweep(desk.app, at)
    deliver_all(desk.app)
    return moved


def show(desk: Desk, ref: str) -> dict[str, Any]:
    """`helpdesk cases show REF --json` through the real console command."""
    return json.loads(desk.cli("cases", "show", ref, "--json", check=True).stdout)


def _delivered(desk: Desk, ref: str, to: str) -> list[tuple[str, EmailMessage]]:
    """(kind, mail) of every mail of case ``ref`` the MTA delivered to ``to``, in order."""
    kind_of = {m["message_id"]: m["kind"] for m in desk.case(ref)["messages"]
               if m["direction"] == "out"}
    return [(kind_of[mail["Message-ID"].strip("<>")], mail)
            for mail, envelope in zip(desk.sent(), desk.mta.handler.envelopes)
            if mail["X-Helpdesk-Case"] == ref and to in envelope.rcpt_tos]


def kinds(desk: Desk, ref: str, to: str = ANA_ADDR) -> list[str]:
    return [kind for kind, _ in _delivered(desk, ref, to)]


def mails_of_kind(desk: Desk, ref: str, kind: str, to: str = ANA_ADDR) -> list[EmailMessage]:
    return [mail for k, mail in _delivered(desk, ref, to) if k == kind]


def text_of(mail: EmailMessage) -> str:
    return mail.get_body(("plain",)).get_content()


def html_of(mail: EmailMessage) -> str:
    return mail.get_body(("html",)).get_content()


def words(text: str) -> str:
    """The text with every run of white space (line wrapping, HTML layout) as one space."""
    return " ".join(text.replace("<strong>", "").replace("</strong>", "").split())


def status_changes(case: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["detail"]["from"], e["detail"]["to"]) for e in case["events"]
            if e["type"] == "status_changed"]


def timer_steps(case: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(e["at"], e["detail"]["step"], e["detail"]["number"]) for e in case["events"]
            if e["type"] == "timer"]


def waiting_case(desk: Desk, subject: str = "Printer on fire") -> str:
    """A case that staff put in `waiting` at START, so its clock runs from START."""
    ref = open_case(desk, subject)
    staff(desk, ref, "#waiting\nWhich model is it, please?\n")
    assert desk.case(ref)["status"] == "waiting"
    return ref


# -- the waiting clock ------------------------------------------------------------------------

def test_reminders_at_3_and_5_days_and_closure_at_7_each_exactly_once(desk):
    ref = waiting_case(desk)
    assert kinds(desk, ref) == ["ack", "status"]
    assert desk.case(ref)["due_at"] == (START + 3 * DAY).isoformat()

    assert "0 case(s) moved" in sweep(desk, START + 3 * DAY - timedelta(minutes=1))
    assert kinds(desk, ref) == ["ack", "status"]  # a minute early: nothing
    assert "1 case(s) moved" in sweep(desk, START + 3 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder"]
    assert "0 case(s) moved" in sweep(desk, START + 3 * DAY)  # the same time again
    assert tick(desk, START + 4 * DAY) == 0  # later, before the next step
    assert tick(desk, START + 5 * DAY - timedelta(minutes=1)) == 0
    assert kinds(desk, ref) == ["ack", "status", "reminder"]

    assert "1 case(s) moved" in sweep(desk, START + 5 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder", "reminder"]
    assert tick(desk, START + 5 * DAY + timedelta(hours=1)) == 0
    assert tick(desk, START + 7 * DAY - timedelta(minutes=1)) == 0
    assert desk.case(ref)["status"] == "waiting"

    assert "1 case(s) moved" in sweep(desk, START + 7 * DAY)
    assert tick(desk, START + 7 * DAY) == 0
    assert tick(desk, START + 30 * DAY) == 0
    assert kinds(desk, ref) == ["ack", "status", "reminder", "reminder", "closure"]

    first, second = mails_of_kind(desk, ref, "reminder")
    assert "reminder 1 of 2" in text_of(first) and "reminder 2 of 2" in text_of(second)
    assert "2026-11-09 09:00 UTC" in text_of(first)  # when the case will be closed
    [closure] = mails_of_kind(desk, ref, "closure")
    for mail in (first, second, closure):
        assert mail["Subject"] == f"[{ref}] Printer on fire"
        assert mail["Auto-Submitted"] == "auto-generated"
        assert mail["Reply-To"].startswith(f"support+{ref}.")
    assert "closed" in text_of(closure)

    case = show(desk, ref)
    assert case["status"] == "closed" and case["due_at"] is None
    assert status_changes(case) == [("open", "waiting"), ("waiting", "closed")]
    assert timer_steps(case) == [((START + 3 * DAY).isoformat(), "reminder", 1),
                                 ((START + 5 * DAY).isoformat(), "reminder", 2),
                                 ((START + 7 * DAY).isoformat(), "close", 0)]
    [closed] = [e for e in case["events"] if e["type"] == "status_changed"
                and e["detail"]["to"] == "closed"]
    assert closed["at"] == (START + 7 * DAY).isoformat() and closed["detail"]["by"] == "timer"
    assert [m["kind"] for m in case["messages"] if m["direction"] == "out"].count("reminder") == 2


def test_after_downtime_a_case_gets_only_its_most_advanced_step(desk):
    ref = waiting_case(desk)
    assert "1 case(s) moved" in sweep(desk, START + 8 * DAY)  # first sweep in 8 days
    assert kinds(desk, ref) == ["ack", "status", "closure"]  # no stale reminders
    assert "0 case(s) moved" in sweep(desk, START + 8 * DAY)
    case = desk.case(ref)
    assert case["status"] == "closed"
    assert timer_steps(case) == [((START + 8 * DAY).isoformat(), "close", 0)]


def test_after_downtime_a_skipped_reminder_is_not_sent_late(desk):
    ref = waiting_case(desk)
    sweep(desk, START + 6 * DAY)  # reminder 1 was due at 3d, reminder 2 at 5d: only the 2nd
    [reminder] = mails_of_kind(desk, ref, "reminder")
    assert "reminder 2 of 2" in text_of(reminder)
    assert tick(desk, START + 6 * DAY + timedelta(hours=12)) == 0
    tick(desk, START + 7 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder", "closure"]


def test_a_participant_reply_in_waiting_stops_the_clock(desk):
    ref = waiting_case(desk)
    tick(desk, START + 3 * DAY)
    desk.clock.current = START + 4 * DAY
    outcome = write(desk, ref, ANA, "It is a LaserJet 4.\n")
    assert (outcome.status, outcome.ref) == ("reply", ref)
    case = desk.case(ref)
    assert case["status"] == "in_progress" and case["due_at"] is None
    sweep(desk, START + 12 * DAY)
    assert tick(desk, START + 5 * DAY) == tick(desk, START + 7 * DAY) == 0
    assert kinds(desk, ref) == ["ack", "status", "reminder"]
    case = desk.case(ref)
    assert case["status"] == "in_progress"
    assert status_changes(case) == [("open", "waiting"), ("waiting", "in_progress")]
    [back] = [e for e in case["events"] if e["type"] == "status_changed"
              and e["detail"]["to"] == "in_progress"]
    assert back["detail"]["by"] == ANA_ADDR and back["at"] == (START + 4 * DAY).isoformat()
    assert kinds(desk, ref, to=AGENT_ADDR)[-1] == "staff_notice"  # staff are told


def test_a_reply_while_a_reminder_is_due_but_unsent_gets_no_stale_reminder(desk):
    ref = waiting_case(desk)
    desk.clock.current = START + 4 * DAY  # reminder 1 is due since 3d, but no sweep ran yet
    outcome = write(desk, ref, ANA, "It is a LaserJet 4.\n")
    assert (outcome.status, outcome.ref) == ("reply", ref)
    assert desk.case(ref)["status"] == "in_progress"
    assert kinds(desk, ref) == ["ack", "status"]  # not "please answer" right after the answer
    assert tick(desk, START + 8 * DAY) == 0
    assert kinds(desk, ref) == ["ack", "status"]


def test_an_out_of_office_reply_in_waiting_does_not_stop_the_clock(desk):
    ref = waiting_case(desk)
    desk.clock.current = START + 1 * DAY
    outcome = write(desk, ref, ANA, "I am out of the office until Monday.\n",
                    headers={"Auto-Submitted": "auto-replied"})
    assert (outcome.status, outcome.ref) == ("machine", ref)
    assert desk.case(ref)["status"] == "waiting"
    tick(desk, START + 3 * DAY)
    tick(desk, START + 5 * DAY)
    sweep(desk, START + 7 * DAY)
    # the out-of-office got no answer of its own, and the clock ran on
    assert kinds(desk, ref) == ["ack", "status", "reminder", "reminder", "closure"]
    case = desk.case(ref)
    assert case["status"] == "closed"
    assert [m["kind"] for m in case["messages"] if m["direction"] == "in"] == [
        "new", "staff", "machine"]
    assert any(e["type"] == "machine_mail" for e in case["events"])
    assert status_changes(case) == [("open", "waiting"), ("waiting", "closed")]


def test_a_plain_staff_reply_in_waiting_is_relayed_and_keeps_the_clock(desk):
    ref = waiting_case(desk)
    desk.clock.current = START + 2 * DAY
    staff(desk, ref, "Just checking: did you find the model number?\n")
    assert desk.case(ref)["status"] == "waiting"
    tick(desk, START + 3 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "relay", "reminder"]


def test_a_new_waiting_period_restarts_the_clock(desk):
    ref = waiting_case(desk)
    tick(desk, START + 3 * DAY)
    desk.clock.current = START + 4 * DAY
    write(desk, ref, ANA, "Here is the model: LaserJet 4.\n")
    staff(desk, ref, "#waiting\nAnd the serial number?\n")  # a new wait from START + 4d
    assert tick(desk, START + 5 * DAY) == 0  # the first wait's 2nd reminder means nothing now
    assert tick(desk, START + 7 * DAY - timedelta(minutes=1)) == 0
    tick(desk, START + 7 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder", "status", "reminder"]
    [_, again] = mails_of_kind(desk, ref, "reminder")
    assert "reminder 1 of 2" in text_of(again)
    tick(desk, START + 11 * DAY)
    assert desk.case(ref)["status"] == "closed"


def test_timers_come_from_config(desk_factory):
    desk = desk_factory(timers={"reminders": ["36h"], "close_after": "2d",
                                "resolved_close_after": "1d"})
    ref = waiting_case(desk)
    assert tick(desk, START + timedelta(hours=35, minutes=59)) == 0
    tick(desk, START + timedelta(hours=36))
    [reminder] = mails_of_kind(desk, ref, "reminder")
    assert "reminder 1 of 1, our last one" in words(text_of(reminder))
    sweep(desk, START + 2 * DAY)
    assert desk.case(ref)["status"] == "closed"
    assert kinds(desk, ref) == ["ack", "status", "reminder", "closure"]
    resolved = open_case(desk, "Toner")
    desk.clock.current = START + 2 * DAY
    staff(desk, resolved, "#resolve New toner is on its way.\n")
    [solution] = mails_of_kind(desk, resolved, "solution")
    assert "within 1 day" in words(text_of(solution))
    tick(desk, START + 3 * DAY)
    assert desk.case(resolved)["status"] == "closed"


# -- resolved ---------------------------------------------------------------------------------

def test_staff_resolve_by_mail_sends_the_solution_without_the_command_line(desk):
    ref = open_case(desk, cc=[BO_ADDR])
    staff(desk, ref, "#resolve Fixed it\n\nI replaced the fuser unit.\n\nBest, Agent\n")
    case = desk.case(ref)
    assert case["status"] == "resolved"
    assert case["due_at"] == (START + 7 * DAY).isoformat()
    assert status_changes(case) == [("open", "resolved")]
    for address in (ANA_ADDR, BO_ADDR):
        assert kinds(desk, ref, to=address) == ["ack", "solution"]  # one mail, no extra relay
        [solution] = mails_of_kind(desk, ref, "solution", to=address)
        for body in (text_of(solution), html_of(solution)):
            assert "Fixed it" in body
            assert "I replaced the fuser unit." in body
            assert "#resolve" not in body
            assert "within 7 days" in words(body)
    assert not any("#resolve" in text_of(m) or "#resolve" in html_of(m)
                   for m in desk.sent_to(ANA_ADDR))


def quoting(parent: EmailMessage, style: str) -> str:
    """The parent mail quoted below a reply, as Thunderbird/Gmail or Outlook do it."""
    text = text_of(parent).replace("\r\n", "\n")
    if style == "outlook":
        return ("\n________________________________\nFrom: " + parent["From"] + "\nSent: Monday"
                "\nTo: agent@example.com\nSubject: " + parent["Subject"] + "\n\n" + text)
    return ("\nOn Mon, 2 Nov 2026 at 09:00, Example Support (Customer Care)\n"
            "<support@example.com> wrote:\n" + "".join(f"> {line}\n" for line in text.split("\n")))


def test_the_quoted_staff_notice_below_a_staff_reply_is_not_relayed(desk):
    for style in ("thunderbird", "outlook"):
        ref = open_case(desk, f"Printer on fire ({style})")
        notice = last_mail(desk, ref, AGENT_ADDR)
        assert "needs your attention" in text_of(notice)
        staff(desk, ref, "#resolve Fixed it\n\nI replaced the fuser unit.\n\n-- \nAgent Smith\n"
              + quoting(notice, style))
        [solution] = mails_of_kind(desk, ref, "solution")
        for body in (text_of(solution), html_of(solution)):
            assert "I replaced the fuser unit." in body and "Agent Smith" in body
            assert "needs your attention" not in body and "wrote:" not in body
            assert "________" not in body
        staff(desk, ref, "Also: please keep the lid closed.\n" + quoting(solution, style))
        [relay] = mails_of_kind(desk, ref, "relay")
        assert "keep the lid closed" in text_of(relay)
        assert "Good news" not in text_of(relay) and "> " not in text_of(relay)


def test_a_reply_within_7_days_reopens_a_resolved_case(desk):
    ref = open_case(desk)
    staff(desk, ref, "#resolve Fixed it\n")
    tick(desk, START + 6 * DAY + timedelta(hours=23))
    assert desk.case(ref)["status"] == "resolved"
    outcome = write(desk, ref, ANA, "Still broken, sorry.\n")
    assert (outcome.status, outcome.ref) == ("reply", ref)
    assert kinds(desk, ref) == ["ack", "solution", "reopened"]
    [reopened] = mails_of_kind(desk, ref, "reopened")
    assert "reopened" in text_of(reopened)
    assert kinds(desk, ref, to=AGENT_ADDR)[-1] == "staff_notice"
    sweep(desk, START + 8 * DAY)
    assert tick(desk, START + 15 * DAY) == 0
    case = desk.case(ref)
    assert case["status"] == "in_progress" and case["due_at"] is None
    assert status_changes(case) == [("open", "resolved"), ("resolved", "in_progress")]
    assert kinds(desk, ref) == ["ack", "solution", "reopened"]


def test_an_out_of_office_reply_does_not_reopen_a_resolved_case(desk):
    ref = open_case(desk)
    staff(desk, ref, "#resolve Fixed it\n")
    desk.clock.current = START + 1 * DAY
    outcome = write(desk, ref, ANA, "I am on holiday.\n",
                    headers={"Auto-Submitted": "auto-replied"})
    assert outcome.status == "machine"
    assert desk.case(ref)["status"] == "resolved"
    tick(desk, START + 7 * DAY)
    assert desk.case(ref)["status"] == "closed"


def test_a_resolved_case_without_reply_is_closed_after_7_days(desk):
    ref = open_case(desk)
    staff(desk, ref, "#resolve Fixed it\n")
    assert tick(desk, START + 7 * DAY - timedelta(minutes=1)) == 0
    assert desk.case(ref)["status"] == "resolved"
    assert "1 case(s) moved" in sweep(desk, START + 7 * DAY)
    assert "0 case(s) moved" in sweep(desk, START + 7 * DAY)
    case = desk.case(ref)
    assert case["status"] == "closed" and case["due_at"] is None
    assert status_changes(case) == [("open", "resolved"), ("resolved", "closed")]
    assert timer_steps(case) == [((START + 7 * DAY).isoformat(), "close", 0)]
    assert kinds(desk, ref) == ["ack", "solution"]  # the solution mail said so already


# -- closed: a reply opens a linked new case ---------------------------------------------------

def test_a_reply_to_a_closed_case_opens_a_new_case_linked_both_ways(desk):
    old = waiting_case(desk)
    sweep(desk, START + 7 * DAY)
    assert desk.case(old)["status"] == "closed"
    desk.clock.current = START + 8 * DAY
    outcome = write(desk, old, ANA, "Sorry for the delay: it is a LaserJet 4.\n")
    assert outcome.status == "new_case" and outcome.ref not in (None, old)
    new = outcome.ref
    new_case, old_case = show(desk, new), show(desk, old)
    assert new_case["status"] == "open" and old_case["status"] == "closed"
    assert new_case["linked_refs"] == [old] and old_case["linked_refs"] == [new]
    assert [e["detail"] for e in new_case["events"] if e["type"] == "linked"] == [
        {"ref": old, "reason": "reopened"}]
    assert [e["detail"] for e in old_case["events"] if e["type"] == "linked"] == [
        {"ref": new, "reason": "reopened"}]
    # the acknowledgement names both references
    [ack] = mails_of_kind(desk, new, "ack")
    assert ack["Subject"].startswith(f"[{new}]")
    for body in (text_of(ack), html_of(ack)):
        assert old in body and new in body
    # the old case's history is reachable from `cases show` of the new case
    assert [(c["ref"], c["status"]) for c in new_case["linked"]] == [(old, "closed")]
    history = show(desk, new_case["linked"][0]["ref"])
    assert [m["kind"] for m in history["messages"] if m["direction"] == "in"] == ["new", "staff"]
    assert f"Linked:       {old}" in desk.cli("cases", "show", new, check=True).stdout
    # the old case stays closed and gets no mail of its own for it
    assert kinds(desk, old) == ["ack", "status", "closure"]
    assert new_case["messages"][0]["text"].startswith("Sorry for the delay")


def test_a_late_reply_to_a_resolved_case_opens_a_new_case_even_before_the_sweep(desk):
    ref = open_case(desk)
    staff(desk, ref, "#resolve Fixed it\n")
    desk.clock.current = START + 7 * DAY + timedelta(minutes=1)  # no sweep ran since
    outcome = write(desk, ref, ANA, "It broke again.\n")
    assert outcome.status == "new_case" and outcome.ref != ref
    assert desk.case(ref)["status"] == "closed"
    assert desk.case(outcome.ref)["linked_refs"] == [ref]
    assert kinds(desk, ref) == ["ack", "solution"]


# -- staff commands by mail ------------------------------------------------------------------

def test_an_illegal_transition_by_mail_gets_an_error_reply_and_changes_nothing(desk):
    ref = open_case(desk)
    before = desk.case(ref)
    sent_before = len(desk.sent())
    staff(desk, ref, "#status delivered\nYour line is live.\n")
    [error] = desk.sent()[sent_before:]  # one mail, to the staff member only
    assert error["To"] == AGENT_ADDR
    assert error["Subject"] == f"[{ref}] Printer on fire"
    body = text_of(error)
    assert "could not be applied" in body
    assert "cannot set status 'delivered' on a Customer Care case" in body
    assert "Your line is live." not in "".join(text_of(m) for m in desk.sent_to(ANA_ADDR))
    assert kinds(desk, ref) == ["ack"]
    case = desk.case(ref)
    assert case["status"] == "open" and case["due_at"] is None
    assert case["assignee"] == before["assignee"]
    assert status_changes(case) == []
    [rejected] = [e for e in case["events"] if e["type"] == "command_rejected"]
    assert "delivered" in rejected["detail"]["errors"][0]


def test_an_unknown_command_gets_an_error_reply_and_nothing_is_applied(desk):
    ref = open_case(desk)
    sent_before = len(desk.sent())
    staff(desk, ref, "#waiting\n#frobnicate now\nWhich model is it?\n")
    [error] = desk.sent()[sent_before:]
    assert error["To"] == AGENT_ADDR
    assert "unknown command: #frobnicate now" in text_of(error)
    assert desk.case(ref)["status"] == "open"  # all or nothing: #waiting was not applied either
    assert kinds(desk, ref) == ["ack"]


def test_an_illegal_move_from_a_live_status_is_refused(desk):
    ref = waiting_case(desk)
    sent_before = len(desk.sent())
    staff(desk, ref, "#status open\n")
    [error] = desk.sent()[sent_before:]
    assert error["To"] == AGENT_ADDR and "'open' is not allowed" in text_of(error)
    case = desk.case(ref)
    assert case["status"] == "waiting" and case["due_at"] == (START + 3 * DAY).isoformat()


def test_status_accepts_the_label_and_spellings_of_a_status(desk):
    ref = waiting_case(desk)
    staff(desk, ref, "#status In progress\nLet me look into it.\n")
    assert desk.case(ref)["status"] == "in_progress"
    staff(desk, ref, "#status Partner's feedback required\nWhich colour?\n")
    assert desk.case(ref)["status"] == "waiting"
    [_, question] = mails_of_kind(desk, ref, "status")
    assert "A note from our team: Which colour?" in words(text_of(question))
    assert desk.cli("cases", "set-status", ref, "in-progress", check=True).stdout.endswith(
        "waiting -> in_progress\n")


def test_note_is_internal_and_recorded(desk):
    ref = open_case(desk, cc=[BO_ADDR])
    sent_before = len(desk.sent())
    staff(desk, ref, "#note customer called, it is a LaserJet 4\nDo not tell them yet.\n")
    assert desk.sent()[sent_before:] == []  # nothing to anybody
    case = desk.case(ref)
    assert case["status"] == "open"
    [note] = [e for e in case["events"] if e["type"] == "note"]
    assert note["detail"]["by"] == AGENT_ADDR
    assert "LaserJet 4" in note["detail"]["text"] and "Do not tell" in note["detail"]["text"]
    assert not any("LaserJet" in text_of(m) for m in desk.sent())


def test_assign_sets_the_assignee_who_then_gets_the_staff_notices(desk):
    ref = open_case(desk)
    staff(desk, ref, "#assign Other@Staff.Example.com\n")  # staff: the @staff.example.com domain
    case = desk.case(ref)
    assert case["assignee"] == "other@staff.example.com"
    assert [e["detail"]["to"] for e in case["events"] if e["type"] == "assigned"] == [
        "other@staff.example.com"]
    assert kinds(desk, ref) == ["ack"]
    write(desk, ref, ANA, "Any news?\n")
    assert kinds(desk, ref, to="other@staff.example.com") == ["staff_notice"]


def test_waiting_with_a_question_relays_it(desk):
    ref = open_case(desk, cc=[BO_ADDR])
    staff(desk, ref, "#waiting\nWhich model is it, please?\n")
    assert desk.case(ref)["status"] == "waiting"
    for address in (ANA_ADDR, BO_ADDR):
        assert kinds(desk, ref, to=address) == ["ack", "status"]
        [mail] = mails_of_kind(desk, ref, "status", to=address)
        for body in (text_of(mail), html_of(mail)):
            assert "Which model is it, please?" in body and "#waiting" not in body


def test_a_plain_staff_reply_is_relayed_and_moves_open_to_in_progress(desk):
    ref = open_case(desk)
    staff(desk, ref, "Please unplug it.\n")
    [relay] = mails_of_kind(desk, ref, "relay")
    assert "Please unplug it." in text_of(relay) and relay["Auto-Submitted"] is None
    case = desk.case(ref)
    assert case["status"] == "in_progress"
    assert status_changes(case) == [("open", "in_progress")]
    assert any(e["type"] == "relayed" and e["detail"]["by"] == AGENT_ADDR
               for e in case["events"])


def test_staff_close_sends_the_closed_notice_with_the_staff_text(desk):
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
    assert f"{ref}: open -> waiting" in result.stdout
    [status] = mails_of_kind(desk, ref, "status")
    assert "Which model is it?" in text_of(status)
    case = desk.case(ref)
    assert case["status"] == "waiting"
    assert status_changes(case) == [("open", "waiting")]
    assert [e["detail"]["by"] for e in case["events"] if e["type"] == "status_changed"] == ["cli"]
    # the clock runs from the moment of the command (the wall clock: a real process)
    due = datetime.fromisoformat(case["due_at"])
    assert abs(due - (datetime.now(UTC) + 3 * DAY)) < timedelta(minutes=5)


def test_cli_set_status_refuses_unknown_refs_and_illegal_statuses(desk):
    ref = open_case(desk)
    missing = desk.cli("cases", "set-status", "CC-999999", "waiting")
    assert missing.returncode == 1 and "no case CC-999999" in missing.stderr
    illegal = desk.cli("cases", "set-status", ref, "delivered")
    assert illegal.returncode == 1
    assert "cannot set status 'delivered' on a Customer Care case" in illegal.stderr
    assert "Traceback" not in illegal.stderr
    assert desk.case(ref)["status"] == "open"
    assert kinds(desk, ref) == ["ack"]
    bad_time = desk.cli("sweep", "--now", "next tuesday")
    assert bad_time.returncode == 2 and "not an ISO 8601 time" in bad_time.stderr


def test_cli_set_status_resolved_with_a_note_sends_the_solution(desk):
    ref = open_case(desk)
    desk.cli("cases", "set-status", ref, "resolved", "--note", "Replaced the fuser.", check=True)
    [solution] = mails_of_kind(desk, ref, "solution")
    assert "Replaced the fuser." in text_of(solution)
    assert desk.case(ref)["status"] == "resolved"


def test_sweep_now_ahead_of_the_wall_clock_delivers_what_it_queued(desk):
    future = datetime.now(UTC).replace(microsecond=0) + 30 * DAY
    desk.clock.current = future
    ref = waiting_case(desk)
    sweep(desk, future + 3 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder"]


# -- concurrency and the daemon --------------------------------------------------------------

def test_two_sweepers_at_once_send_each_reminder_once(desk):
    refs = []
    for n in range(30):
        outcome = ingest_raw(desk.app, make_mail(f"user{n}@c{n}.example", "support@example.com",
                                                 f"Question {n}"), source="t")
        set_status(desk.app, outcome.ref, "waiting")
        refs.append(outcome.ref)
    deliver_all(desk.app)
    desk.mta.handler.clear()
    folder = desk.config_path.parent
    gate, ready = folder / "go", [folder / f"ready{i}" for i in range(2)]
    env = {**os.environ, "HELPDESK_CONFIG": str(desk.config_path)}
    procs = [subprocess.Popen([sys.executable, "-c", GATED_CLI, str(gate), str(ready[i]),
                               "sweep", "--now", (START + 3 * DAY).isoformat()],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    wait_for(lambda: all(r.exists() for r in ready), timeout=30)
    gate.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    moved = [int(out.decode().split(": ")[1].split()[0]) for out, _ in outputs]
    assert sum(moved) == 30
    sent = desk.sent()
    assert sorted(m["X-Helpdesk-Case"] for m in sent) == sorted(refs)  # one mail per case
    assert all(m["Subject"].startswith(f"[{m['X-Helpdesk-Case']}]") for m in sent)
    for ref in refs:
        case = desk.case(ref)
        assert [(s, n) for _, s, n in timer_steps(case)] == [("reminder", 1)]
        assert [m["kind"] for m in case["messages"]].count("reminder") == 1


def test_the_daemon_runs_the_sweep_on_its_schedule(desk_factory):
    desk = desk_factory(timers={"sweep_interval": "1s"})
    ref = waiting_case(desk)  # waiting since START: by the wall clock its closure is overdue
    daemon = subprocess.Popen([sys.executable, "-m", "helpdesk", "-c", str(desk.config_path),
                               "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "closure" in kinds(desk, ref), timeout=20, interval=0.1)
    finally:
        stop_process(daemon, timeout=15)
        output = daemon.communicate(timeout=15)[0].decode()
    assert daemon.returncode == 0, output
    assert kinds(desk, ref) == ["ack", "status", "closure"]  # the most advanced step only
    case = desk.case(ref)
    assert case["status"] == "closed"
    assert [s for _, s, _ in timer_steps(case)] == ["close"]


# -- the record -------------------------------------------------------------------------------

def test_cases_show_json_lists_every_transition_as_an_event(desk):
    ref = open_case(desk)
    staff(desk, ref, "#note called the customer\n")
    staff(desk, ref, "#assign agent@example.com\n")
    staff(desk, ref, "#waiting\nWhich model is it?\n")
    staff(desk, ref, "#status frozen\n")
    tick(desk, START + 3 * DAY)
    desk.clock.current = START + 4 * DAY
    write(desk, ref, ANA, "A LaserJet 4.\n")
    staff(desk, ref, "#resolve Replaced the fuser.\n")
    sweep(desk, START + 11 * DAY)
    desk.clock.current = START + 12 * DAY
    new = write(desk, ref, ANA, "It is on fire again.\n").ref

    case = show(desk, ref)
    events = [(e["type"], e["detail"]) for e in case["events"]]
    assert [t for t, _ in events] == [
        "created", "note",
        "status_changed", "assigned",  # a bare #assign is staff's first touch: in_progress
        "status_changed", "relayed",  # #waiting with its question
        "command_rejected",  # #status frozen
        "timer",  # reminder 1
        "status_changed",  # the customer's answer
        "status_changed",  # #resolve
        "status_changed", "timer",  # closed 7 days later
        "linked"]  # the customer wrote again: a new case
    assert [(d["from"], d["to"], d["by"]) for t, d in events if t == "status_changed"] == [
        ("open", "in_progress", AGENT_ADDR), ("in_progress", "waiting", AGENT_ADDR),
        ("waiting", "in_progress", ANA_ADDR), ("in_progress", "resolved", AGENT_ADDR),
        ("resolved", "closed", "timer")]
    [rejected] = [d for t, d in events if t == "command_rejected"]
    assert rejected["by"] == AGENT_ADDR and "'frozen'" in rejected["errors"][0]
    assert [d for t, d in events if t == "timer"] == [{"step": "reminder", "number": 1},
                                                      {"step": "close", "number": 0}]
    assert [d["text"] for t, d in events if t == "note"] == ["called the customer"]
    assert [d for t, d in events if t == "assigned"] == [{"to": AGENT_ADDR, "by": AGENT_ADDR}]
    assert [d["ref"] for t, d in events if t == "linked"] == [new]
    for event in case["events"]:
        assert datetime.fromisoformat(event["at"]).tzinfo is not None
    at = {e["type"]: e["at"] for e in case["events"]}
    assert at["linked"] == (START + 12 * DAY).isoformat()
    assert [m["kind"] for m in case["messages"]] == [
        "new", "ack", "staff_notice", "staff", "staff", "staff", "status", "staff",
        "command_error", "reminder", "reply", "staff_notice", "staff", "solution"]


def test_billing_runs_the_same_lifecycle_with_its_own_references(desk):
    outcome = desk.ingest(make_mail(ANA, "billing@example.com", "Invoice 42 is wrong"))
    ref = outcome.ref
    assert ref == "BL-000001"
    staff(desk, ref, "#waiting\nWhich invoice line?\n")
    tick(desk, START + 3 * DAY)
    tick(desk, START + 7 * DAY)
    assert kinds(desk, ref) == ["ack", "status", "reminder", "closure"]
    assert all(m["From"].endswith("<billing@example.com>") for m in desk.sent_to(ANA_ADDR))
    assert desk.case(ref)["status"] == "closed"
