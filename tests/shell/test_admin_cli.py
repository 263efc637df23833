"""Issue 11, the admin's side: the config checks, `cases list/show`, `failed show`, through
the real console command against a real SQLite file (and the recording MTA where mail
goes out)."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from email import message_from_bytes
from email.policy import SMTP

from tests.servers.helpdesk import START, base_config, make_mail, merge, write_config

ANA = "Ana Garcia <ana@customer.example>"
BO = "bo@partner.example"


def check_config(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "helpdesk", "-c", str(path), "check-config"],
                          capture_output=True, text=True)


# -- config -----------------------------------------------------------------------------------

def test_one_address_in_two_categories_is_a_config_error_naming_both(tmp_path):
    config = merge(base_config(tmp_path, None),
                   {"categories": {"billing": {"addresses": ["Support@example.com"]}}})
    result = check_config(write_config(tmp_path, config))
    assert result.returncode == 2
    assert ("categories: Support@example.com is an address of both customer_care and billing"
            in result.stderr)
    assert "Value error" not in result.stderr and "Traceback" not in result.stderr


def test_a_config_check_failure_reads_as_a_sentence(tmp_path):
    config = merge(base_config(tmp_path, None), {"outbound": {"smtp": {"host": "x"}}})
    result = check_config(write_config(tmp_path, config))
    assert result.returncode == 2
    assert "outbound: set exactly one of smtp or maildir" in result.stderr


# -- cases list ---------------------------------------------------------------------------------

def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def refs(desk, *args: str) -> list[str]:
    return [c["ref"] for c in json.loads(desk.cli("cases", "list", "--json", *args,
                                                  check=True).stdout)]


def test_cases_list_refuses_an_unknown_status_or_category_and_names_the_valid_ones(desk):
    status = desk.cli("cases", "list", "--status", "nonsense")
    assert status.returncode == 2 and status.stdout == ""
    assert "unknown status 'nonsense'" in status.stderr
    for valid in ("open (Open)", "waiting (Partner's feedback required)",
                  "pending_seller (Pending seller's feedback)"):
        assert valid in status.stderr
    category = desk.cli("cases", "list", "--category", "Bilingual", "--json")
    assert category.returncode == 2 and category.stdout == ""
    assert ("unknown category 'Bilingual'; one of: customer_care (Customer Care), "
            "connections (Connections), billing (Billing)") in category.stderr
    # a status of another lifecycle than the chosen category's is no status of it
    other = desk.cli("cases", "list", "--category", "billing", "--status", "pending_seller")
    assert other.returncode == 2 and "pending_seller" not in other.stderr.split("one of:")[1]


def test_cases_list_takes_labels_as_well_as_names_in_any_case(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire"))
    desk.ingest(make_mail(ANA, "billing@example.com", "Invoice twice"))
    desk.cli("cases", "set-status", "BL-000001", "waiting", check=True)
    assert refs(desk, "--status", "Open") == ["CC-000001"]
    assert refs(desk, "--status", "partner's FEEDBACK required") == ["BL-000001"]
    assert refs(desk, "--status", "waiting") == ["BL-000001"]
    assert refs(desk, "--category", "Billing") == ["BL-000001"]
    assert refs(desk, "--category", "CUSTOMER CARE", "--status", "open") == ["CC-000001"]


def test_an_empty_list_says_so(desk):
    assert lines(desk.cli("cases", "list")) == ["no cases yet"]
    assert desk.cli("cases", "list", "--json", check=True).stdout.strip() == "[]"
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire"))
    assert lines(desk.cli("cases", "list", "--status", "closed")) == ["no cases match"]


def test_the_text_list_has_a_header_and_its_columns_line_up(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire"))
    header, row = lines(desk.cli("cases", "list"))
    assert header.split() == ["REF", "STATUS", "CREATED", "UPDATED", "REQUESTER", "SUBJECT"]
    assert row.startswith("CC-000001") and row.endswith("Printer on fire")
    for column in ("STATUS", "REQUESTER", "SUBJECT"):
        value = {"STATUS": "open", "REQUESTER": "ana@customer.example",
                 "SUBJECT": "Printer on fire"}[column]
        assert row.index(value) == header.index(column)


def test_sort_updated_lists_the_most_recent_first_and_asc_desc_flip_it(desk):
    for n, subject in enumerate(("First", "Second", "Third")):
        desk.clock.current = START + timedelta(hours=n)
        desk.ingest(make_mail(ANA, "support@example.com", subject))
    desk.clock.current = START + timedelta(hours=5)
    desk.ingest(make_mail(ANA, "support@example.com", "Re: [CC-000001] First", "More.\n"))
    assert refs(desk, "--sort", "updated") == ["CC-000001", "CC-000003", "CC-000002"]
    assert refs(desk, "--sort", "updated", "--asc") == ["CC-000002", "CC-000003", "CC-000001"]
    assert refs(desk, "--sort", "created") == ["CC-000003", "CC-000002", "CC-000001"]
    assert refs(desk, "--sort", "created", "--asc") == ["CC-000001", "CC-000002", "CC-000003"]
    assert refs(desk) == refs(desk, "--sort", "created", "--desc")
    text = lines(desk.cli("cases", "list", "--sort", "updated"))
    assert [line.split()[0] for line in text[1:]] == ["CC-000001", "CC-000003", "CC-000002"]


# -- cases show ---------------------------------------------------------------------------------

def test_cases_show_prints_the_bodies_and_whom_outgoing_mail_went_to(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire",
                          "It smokes since this morning.\n", cc=[BO]))
    shown = desk.cli("cases", "show", "CC-000001", check=True).stdout
    assert "<- new  from ana@customer.example, cc bo@partner.example" in shown
    assert "    It smokes since this morning." in shown
    assert "-> ack  to ana@customer.example, bo@partner.example" in shown
    assert "    Thank you for contacting Example Support." in shown
    assert "-> staff_notice  to agent@example.com" in shown


def test_terminal_escapes_in_a_mail_never_reach_the_admins_terminal(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer \x1b[2J on fire",
                          "Look \x1b]0;pwned\x07 here.\n"))
    shown = desk.cli("cases", "show", "CC-000001", check=True).stdout
    listed = desk.cli("cases", "list", check=True).stdout
    assert "\x1b" not in shown + listed and "\x07" not in shown


def test_cases_show_finds_a_case_by_its_number_while_it_is_unique(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire"))
    for typed in ("1", "cc-1", "CC-000001", "cc-000001"):
        assert json.loads(desk.cli("cases", "show", typed, "--json", check=True).stdout)[
            "ref"] == "CC-000001", typed
    desk.cli("cases", "set-status", "1", "in_progress", check=True)
    assert desk.case("CC-000001")["status"] == "in_progress"
    desk.ingest(make_mail(ANA, "billing@example.com", "Invoice twice"))
    ambiguous = desk.cli("cases", "show", "1")
    assert ambiguous.returncode == 1
    assert "1 is ambiguous: BL-000001 or CC-000001" in ambiguous.stderr
    missing = desk.cli("cases", "show", "7")
    assert missing.returncode == 1 and "no case 7" in missing.stderr
    assert desk.cli("cases", "set-status", "1", "waiting").returncode == 1
    assert desk.case("CC-000001")["status"] == "in_progress"


# -- failed show --------------------------------------------------------------------------------

def test_failed_show_gives_the_reason_and_headers_and_raw_gives_the_bytes(desk_factory, tmp_path):
    blocker = tmp_path / "attachments-blocked"  # a file where the store's folder should be
    blocker.write_text("not a folder\n")
    desk = desk_factory(helpdesk={"attachments": str(blocker)})
    msg = message_from_bytes(make_mail(ANA, "support@example.com", "Printer on fire",
                                       headers={"X-Trap": "a\x1b[2Jb"}), policy=SMTP)
    msg.add_attachment(b"%PDF-1.4 log", maintype="application", subtype="pdf",
                       filename="log.pdf")
    raw = msg.as_bytes(policy=SMTP)
    failed = desk.ingest(raw)
    assert failed.status == "quarantined"
    shown = desk.cli("failed", "show", str(failed.inbound_id), check=True).stdout
    assert f"Quarantined message {failed.inbound_id}" in shown
    assert "Reason:" in shown and "attachments-blocked" in shown
    assert "  Subject: Printer on fire" in shown and "  From: Ana Garcia <ana@customer.example>" in shown
    assert "X-Trap: a?[2Jb" in shown and "\x1b" not in shown
    assert "Hello." not in shown  # the headers, not the body
    as_received = desk.cli("failed", "show", str(failed.inbound_id), "--raw")
    assert as_received.returncode == 0 and as_received.stdout.encode() == raw
    missing = desk.cli("failed", "show", "999")
    assert missing.returncode == 1 and "no quarantined message with id 999" in missing.stderr
