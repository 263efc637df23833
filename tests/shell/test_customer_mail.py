"""Issue 11, the customer's side: the mails as the customer reads them — who they come from,
what they thread on, how they are signed and what they ask — through the real pipeline,
the real console command and the recording MTA."""
from __future__ import annotations

import json

from helpdesk.inbound.ingest import Outcome
from tests.servers.helpdesk import Desk, make_mail, staff_auth
from tests.shell.test_lifecycle_e2e import (
    AGENT,
    AGENT_ADDR,
    ANA,
    ANA_ADDR,
    BO_ADDR,
    DAY,
    START,
    kinds,
    mails_of_kind,
    open_case,
    sweep,
    text_of,
    html_of,
    words,
    write,
)


def agent(desk: Desk, ref: str, body: str, sender: str = AGENT) -> Outcome:
    """The agent answers the latest mail of the case they got, authenticated by our MTA."""
    outcome = write(desk, ref, sender, body, headers=staff_auth(AGENT_ADDR))
    assert (outcome.status, outcome.ref) == ("staff_reply", ref), outcome
    return outcome


def events(desk: Desk, ref: str, type_: str) -> list[dict]:
    return [e["detail"] for e in desk.case(ref)["events"] if e["type"] == type_]


# -- a status change with a note tells the participants ---------------------------------------

def test_set_status_in_progress_with_a_note_relays_it_to_every_participant(desk):
    ref = open_case(desk, cc=[BO_ADDR])
    agent(desk, ref, "#waiting\nWhich model is it, please?\n")
    result = desk.cli("cases", "set-status", ref, "in_progress", "--note",
                      "We have found the cause and are working on it.")
    assert result.returncode == 0, result.stderr
    assert f"{ref}: waiting -> in_progress" in result.stdout
    for address in (ANA_ADDR, BO_ADDR):
        assert kinds(desk, ref, to=address) == ["ack", "status", "relay"]
        [relay] = mails_of_kind(desk, ref, "relay", to=address)
        for body in (text_of(relay), html_of(relay)):
            assert "We have found the cause and are working on it." in body
    assert events(desk, ref, "relayed")[-1] == {"by": "cli"}


def test_set_status_without_a_note_sends_what_the_status_sends_and_no_more(desk):
    ref = open_case(desk)
    desk.cli("cases", "set-status", ref, "in_progress", check=True)
    assert kinds(desk, ref) == ["ack"]
    assert events(desk, ref, "relayed") == []


def test_a_staff_mail_status_in_progress_with_a_note_relays_the_note(desk):
    ref = open_case(desk)
    agent(desk, ref, "#waiting\nWhich model is it, please?\n")
    agent(desk, ref, "#status in_progress Thanks, we have what we need.\n")
    assert kinds(desk, ref) == ["ack", "status", "relay"]
    [relay] = mails_of_kind(desk, ref, "relay")
    assert "Thanks, we have what we need." in text_of(relay)
    assert "#status" not in text_of(relay)


# -- a case opened by a reply to a closed one --------------------------------------------------

def test_a_case_opened_by_a_reply_to_a_closed_case_loses_the_old_tag_but_keeps_the_link(desk):
    old = open_case(desk, "Printer on fire")
    agent(desk, old, "#close\nClosing as discussed.\n")
    desk.clock.current = START + DAY
    outcome = write(desk, old, ANA, "It is burning again.\n")
    new = outcome.ref
    assert outcome.status == "new_case" and new != old
    [row] = [c for c in json.loads(desk.cli("cases", "list", "--json", check=True).stdout)
             if c["ref"] == new]
    assert row["subject"] == "Printer on fire" and row["linked_refs"] == [old]
    listed = desk.cli("cases", "list", check=True).stdout
    assert f"[{old}]" not in listed
    [ack] = mails_of_kind(desk, new, "ack")
    assert ack["Subject"] == f"[{new}] Printer on fire"
    assert old in text_of(ack)  # the acknowledgement names both references
    agent(desk, new, "Please unplug it first.\n")
    [relay] = mails_of_kind(desk, new, "relay")
    assert relay["Subject"] == f"[{new}] Printer on fire"
    for body in (text_of(ack), text_of(relay)):
        assert f"[{old}] Printer" not in body and "Re: " not in body


# -- threading on what the customer has --------------------------------------------------------

def assert_threads_on_what_they_have(desk: Desk, ref: str, address: str) -> int:
    """Every mail ``address`` got names, in In-Reply-To and References, only mails that
    ``address`` sent or had received before it; returns how many mails were checked."""
    have: set[str] = set()
    checked = 0
    for m in desk.case(ref)["messages"]:
        mine = m["from"] == address if m["direction"] == "in" else address in m["to"]
        if m["direction"] == "out" and mine:
            [mail] = [x for x in desk.sent_to(address)
                      if x["Message-ID"].strip("<>") == m["message_id"]]
            named = {mail["In-Reply-To"].strip("<>"),
                     *(r.strip("<>") for r in mail["References"].split())}
            assert named <= have, (m["kind"], named - have)
            checked += 1
        if mine:
            have.add(m["message_id"])
    return checked


def test_relays_status_mails_and_reminders_thread_on_mails_the_customer_has(desk):
    ref = open_case(desk)
    agent(desk, ref, "Hello Ana, please unplug it.\n\nRegards,\nAgent Smith\n")
    [ack] = mails_of_kind(desk, ref, "ack")
    [relay] = mails_of_kind(desk, ref, "relay")
    assert relay["In-Reply-To"] == ack["Message-ID"]  # not the agent's own mail
    write(desk, ref, ANA, "Done, it still smokes.\n")
    reply_id = [m["message_id"] for m in desk.case(ref)["messages"]
                if m["direction"] == "in" and m["from"] == ANA_ADDR][-1]
    agent(desk, ref, "#waiting\nWhich model is it?\n")
    [status] = mails_of_kind(desk, ref, "status")
    assert status["In-Reply-To"] == f"<{reply_id}>"
    agent(desk, ref, "#note she sounded worried\n")  # internal: nothing for Ana to thread on
    sweep(desk, START + 3 * DAY)
    [reminder] = mails_of_kind(desk, ref, "reminder")
    assert reminder["In-Reply-To"] == status["Message-ID"]
    assert assert_threads_on_what_they_have(desk, ref, ANA_ADDR) == 4


def test_a_mail_without_message_id_is_never_named_in_in_reply_to(desk):
    raw = make_mail(ANA, "support@example.com", "Printer on fire")
    raw = b"\r\n".join(line for line in raw.split(b"\r\n")
                       if not line.lower().startswith(b"message-id:"))
    ref = desk.ingest(raw).ref
    [ack] = mails_of_kind(desk, ref, "ack")
    assert ack["In-Reply-To"] is None and ack["References"] is None
    agent(desk, ref, "Please unplug it.\n")
    [relay] = mails_of_kind(desk, ref, "relay")
    assert relay["In-Reply-To"] == ack["Message-ID"]


# -- one signature, the agent's name, not their address ----------------------------------------

def test_a_relay_is_signed_once_and_names_the_agent_without_their_address(desk):
    ref = open_case(desk)
    agent(desk, ref, "Hello Ana,\n\nplease unplug it.\n\nRegards,\nAgent Smith\n")
    [relay] = mails_of_kind(desk, ref, "relay")
    text, html = text_of(relay), html_of(relay)
    assert text.count("Regards,") == 1 and "Kind regards" not in text
    assert "Kind regards" not in html
    assert "Agent Smith (Example Support) answered" in words(text)
    assert "Agent Smith (Example Support) answered" in words(html)
    assert AGENT_ADDR.encode() not in relay.as_bytes()


def test_a_status_mail_carrying_the_agents_words_is_signed_once(desk):
    ref = open_case(desk)
    agent(desk, ref, "#waiting\nWhich model is it?\n\nRegards,\nAgent Smith\n")
    [status] = mails_of_kind(desk, ref, "status")
    for body in (text_of(status), html_of(status)):
        assert "Which model is it?" in body
        assert body.count("Regards,") == 1 and "Kind regards" not in body
    assert AGENT_ADDR.encode() not in status.as_bytes()


def test_the_agents_address_shows_only_when_configured(desk_factory):
    desk = desk_factory(helpdesk={"show_agent_address": True})
    ref = open_case(desk)
    agent(desk, ref, "Please unplug it.\n\nAgent Smith\n")
    [relay] = mails_of_kind(desk, ref, "relay")
    assert f"Agent Smith <{AGENT_ADDR}> (Example Support) answered" in words(text_of(relay))


def test_a_note_from_the_command_line_is_signed_by_the_helpdesk(desk):
    ref = open_case(desk)
    desk.cli("cases", "set-status", ref, "in_progress", "--note", "We are on it.", check=True)
    [relay] = mails_of_kind(desk, ref, "relay")
    text = text_of(relay)
    assert text.startswith("Hello,") and "We are on it." in text
    assert "Kind regards, Example Support" in words(text)
    assert "cli" not in words(text).split()


# -- resolved -> closed: what the customer was told is what happens -----------------------------

def test_a_resolved_case_closes_silently_after_the_days_its_solution_mail_announced(desk):
    from helpdesk.mail.templates import BUILTIN_TEMPLATES

    ref = open_case(desk)
    agent(desk, ref, "#resolve Replaced the fuser.\n")
    [solution] = mails_of_kind(desk, ref, "solution")
    for body in (words(text_of(solution)), words(html_of(solution))):
        assert "within 7 days" in body and "closed without a further message" in body
    sweep(desk, START + 7 * DAY)
    assert desk.case(ref)["status"] == "closed"
    assert kinds(desk, ref) == ["ack", "solution"]
    # and the admin's documentation says the same
    readme = (BUILTIN_TEMPLATES / "README.md").read_text(encoding="utf-8")
    [row] = [line for line in readme.splitlines() if line.startswith("| `closed_notice` |")]
    assert "reopen" not in row and "#close" in row
    # a later reply opens a new case with the old one's history, as the mail promised
    desk.clock.current = START + 8 * DAY
    later = write(desk, ref, ANA, "It jams again.\n")
    assert later.status == "new_case" and desk.case(later.ref)["linked_refs"] == [ref]


# -- wording: what we need from the customer ---------------------------------------------------

def test_a_waiting_case_tells_the_customer_what_is_needed_from_them(desk):
    ref = open_case(desk)
    agent(desk, ref, "#waiting\nWhich model is it?\n")
    sweep(desk, START + 3 * DAY)
    [status] = mails_of_kind(desk, ref, "status")
    [reminder] = mails_of_kind(desk, ref, "reminder")
    for mail in (status, reminder):
        for body in (words(text_of(mail)), words(html_of(mail))):
            assert "We need more information from you" in body
            assert "buyer" not in body and "seller" not in body


# -- README, Staff: who hears of what -----------------------------------------------------------

def test_staff_hear_of_every_new_case_and_every_reply_and_assign_changes_who(desk):
    def notices() -> list[tuple[str, list[str]]]:
        """(case, recipients) of every staff notice the MTA delivered, in order."""
        kind = {m["message_id"]: m["kind"] for ref in refs for m in desk.case(ref)["messages"]}
        return [(m["X-Helpdesk-Case"], sorted(e.rcpt_tos))
                for m, e in zip(desk.sent(), desk.mta.handler.envelopes)
                if kind.get(m["Message-ID"].strip("<>")) == "staff_notice"]

    care = open_case(desk)
    connection = desk.ingest(make_mail(ANA, "connections@example.com", "New connection: X")).ref
    refs = (care, connection)
    write(desk, care, ANA, "More details.\n")
    # `staff` lists agent@example.com and @staff.example.com: a domain gets nothing;
    # connections has its own `notify`
    assert notices() == [(care, [AGENT_ADDR]), (connection, ["connectivity@example.com"]),
                         (care, [AGENT_ADDR])]
    agent(desk, care, "#assign sam@staff.example.com\n")
    write(desk, care, ANA, "Even more details.\n")
    assert notices()[-1] == (care, ["sam@staff.example.com"])
