"""Issue 2: a case per conversation, the acknowledgement, threading, the outbox,
the SMTP listener and the CLI contract, against a real aiosmtpd MTA and SQLite."""
from __future__ import annotations

import json
import mailbox
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpdesk.inbound.ingest import ingest_raw
from helpdesk.outbound.deliver import deliver_all
from tests.servers.helpdesk import (base_config, make_mail, merge, staff_auth, stop_process,
                                    write_config)
from tests.servers.smtp import free_port, wait_for

ANA = "Ana Garcia <ana@customer.example>"


@pytest.fixture(params=["sqlite", "postgresql"])
def desk(request, desk_factory):
    """Every pipeline test runs on both databases: nothing SQLite-only may hide."""
    if request.param == "postgresql":
        return desk_factory(database={"url": request.getfixturevalue("postgres_url")})
    return desk_factory()


def first_ref(desk) -> str:
    return json.loads(desk.cli("cases", "list", "--json", check=True).stdout)[0]["ref"]


def test_new_mail_opens_a_case_and_acknowledges_requester_and_cc(desk):
    outcome = desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire",
                                    "The printer is on fire.\n", cc=["bo@partner.example"],
                                    message_id="<m1@customer.example>"))
    assert outcome.status == "new_case" and outcome.ref == "CC-000001"
    [ack] = desk.sent_to("ana@customer.example")
    [envelope] = [e for e in desk.mta.handler.envelopes if "ana@customer.example" in e.rcpt_tos]
    assert sorted(envelope.rcpt_tos) == ["ana@customer.example", "bo@partner.example"]
    assert ack["Subject"] == "[CC-000001] Printer on fire"
    assert ack["In-Reply-To"] == "<m1@customer.example>"
    assert "<m1@customer.example>" in ack["References"]
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["X-Helpdesk-Loop"] == "support@example.com"
    assert ack["Message-ID"].endswith("@example.com>")
    assert ack["Reply-To"].startswith("support+CC-000001.")
    text = ack.get_body(("plain",)).get_content()
    html = ack.get_body(("html",)).get_content()
    for body in (text, html):
        assert "CC-000001" in body and "Printer on fire" in body
        assert "The printer is on fire." in body


def test_reply_by_in_reply_to_and_by_subject_tag_join_the_case(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire"))
    ack = desk.sent_to("ana@customer.example")[0]
    by_header = desk.ingest(make_mail(ANA, "support@example.com", "Re: whatever they typed",
                                      in_reply_to=ack["Message-ID"]))
    by_tag = desk.ingest(make_mail(ANA, "support@example.com",
                                   "AW: RE[2]: [CC-000001] Printer on fire"))
    assert (by_header.status, by_header.ref) == ("reply", "CC-000001")
    assert (by_tag.status, by_tag.ref) == ("reply", "CC-000001")
    case = desk.case("CC-000001")
    assert [m["kind"] for m in case["messages"] if m["direction"] == "in"] == ["new", "reply", "reply"]
    assert len(desk.cli("cases", "list", "--json", check=True).stdout.split('"ref"')) == 2


def test_reply_to_the_case_reply_address_joins_even_without_headers_or_tag(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire"))
    reply_to = desk.sent_to("ana@customer.example")[0]["Reply-To"]
    outcome = desk.ingest(make_mail(ANA, reply_to, "my phone ate the subject"))
    assert (outcome.status, outcome.ref) == ("reply", "CC-000001")
    forged = reply_to.replace(".", ".x", 1)  # a guessed token does not count
    assert desk.ingest(make_mail(ANA, forged, "guess")).status == "new_case"


def test_new_cc_on_a_reply_becomes_participant_and_gets_the_next_mail(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire"))
    ack = desk.sent_to("ana@customer.example")[0]
    desk.ingest(make_mail(ANA, "support@example.com", "Re: [CC-000001] Printer on fire",
                          cc=["carl@customer.example", "support@example.com",
                              "billing@example.com", "agent@example.com"],
                          in_reply_to=ack["Message-ID"]))
    case = desk.case("CC-000001")
    # our own addresses, the category addresses and staff never become participants
    assert case["participants"] == ["ana@customer.example", "carl@customer.example"]
    desk.mta.handler.clear()
    desk.ingest(make_mail("Agent <agent@example.com>", "support@example.com",
                          "Re: [CC-000001] Printer on fire", "Please unplug it.\n",
                          in_reply_to=ack["Message-ID"], headers=staff_auth("agent@example.com")))
    [relay] = [m for m in desk.sent() if m["Subject"].startswith("[CC-000001]")
               and "carl@customer.example" in m["To"]]
    assert "Please unplug it." in relay.get_body(("plain",)).get_content()
    assert relay["Auto-Submitted"] is None  # a person's answer, relayed


def test_same_message_twice_and_to_two_support_addresses_makes_one_case(desk):
    raw = make_mail(ANA, "support@example.com", "Invoice wrong", cc=["billing@example.com"],
                    message_id="<dup@customer.example>")
    first = desk.ingest(raw, source="imap:support", source_key="1:7")
    again = desk.ingest(raw, source="imap:support", source_key="1:7")
    other_box = desk.ingest(raw, source="imap:billing", source_key="9:3")
    assert first.status == "new_case" and first.ref == "CC-000001"  # first matching address
    assert again.status == "duplicate" and other_box.status == "duplicate"
    assert len(json.loads(desk.cli("cases", "list", "--json", check=True).stdout)) == 1
    assert len([m for m in desk.sent() if "ana@customer.example" in m["To"]]) == 1
    assert desk.case("CC-000001")["addresses"] == ["support@example.com", "billing@example.com"]


def test_mail_without_message_id_is_deduplicated_by_content(desk):
    raw = make_mail(ANA, "support@example.com", "No id").replace(
        b"Message-ID:", b"X-Old-Message-ID:")
    assert desk.ingest(raw, source_key="a").status == "new_case"
    assert desk.ingest(raw, source_key="b").status == "duplicate"


def test_smtp_server_down_keeps_the_ack_queued_and_sends_it_once_when_back(desk):
    server_port = desk.mta.port
    desk.mta.stop()
    outcome = ingest_raw(desk.app, make_mail(ANA, "support@example.com", "Down"), source="t")
    result = deliver_all(desk.app)
    assert outcome.status == "new_case" and result.sent == 0
    assert "queued" in desk.cli("status").stdout
    desk.mta.start()
    assert desk.mta.port == server_port
    desk.clock.advance(hours=1)  # past the retry backoff
    deliver_all(desk.app)
    deliver_all(desk.app)
    assert len([m for m in desk.sent() if "ana@customer.example" in m["To"]]) == 1


def test_cases_list_and_show_json_contract(desk):
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire",
                          cc=["bo@partner.example"]))
    [case] = json.loads(desk.cli("cases", "list", "--json", check=True).stdout)
    for key in ("ref", "category", "status", "subject", "requester", "participants",
                "created_at", "updated_at", "linked_refs"):
        assert key in case, key
    assert case["category"] == "customer_care" and case["status"] == "open"
    assert case["participants"] == ["ana@customer.example", "bo@partner.example"]
    assert case["created_at"].endswith("+00:00")
    shown = json.loads(desk.cli("cases", "show", "CC-000001", "--json", check=True).stdout)
    assert {"messages", "events"} <= shown.keys()
    message = shown["messages"][0]
    for key in ("direction", "from", "to", "cc", "subject", "message_id", "date", "kind"):
        assert key in message, key
    assert [m["kind"] for m in shown["messages"]] == ["new", "ack", "staff_notice"]
    assert {"at", "type", "detail"} <= shown["events"][0].keys()
    missing = desk.cli("cases", "show", "CC-999999")
    assert missing.returncode == 1 and "no case CC-999999" in missing.stderr
    filtered = desk.cli("cases", "list", "--company", "customer.example", "--json", check=True)
    assert len(json.loads(filtered.stdout)) == 1
    assert json.loads(desk.cli("cases", "list", "--status", "closed", "--json").stdout) == []


def test_unknown_config_key_exits_2_naming_it(tmp_path):
    config = merge(base_config(tmp_path, None), {"limits": {"participants_per_cas": 3}})
    path = write_config(tmp_path, config)
    result = subprocess.run([sys.executable, "-m", "helpdesk", "-c", str(path), "check-config"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "limits.participants_per_cas: unknown key" in result.stderr


def test_unset_environment_variable_and_bad_duration_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_PASSWORD", raising=False)
    config = merge(base_config(tmp_path, 2525),
                   {"outbound": {"smtp": {"password": "${NOPE_PASSWORD}"}},
                    "timers": {"close_after": "7 days"}})
    path = write_config(tmp_path, config)
    result = subprocess.run([sys.executable, "-m", "helpdesk", "-c", str(path), "check-config"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "outbound.smtp.password: environment variable NOPE_PASSWORD is not set" in result.stderr


def test_secrets_are_never_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTP_SECRET", "hunter2-very-secret")
    config = merge(base_config(tmp_path, 2525),
                   {"outbound": {"smtp": {"password": "${SMTP_SECRET}", "username": "u"}},
                    "timers": {"close_after": "bogus"}})
    path = write_config(tmp_path, config)
    result = subprocess.run([sys.executable, "-m", "helpdesk", "-c", str(path), "check-config"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "timers.close_after" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_daemon_refuses_an_out_of_date_schema(tmp_path):
    path = write_config(tmp_path, base_config(tmp_path, None))
    result = subprocess.run([sys.executable, "-m", "helpdesk", "-c", str(path), "cases", "list"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "helpdesk db upgrade" in result.stderr


def test_references_are_unique_under_concurrent_writers(desk):
    def write(n: int) -> None:
        for i in range(10):  # ten senders each: one would be held past new_cases_per_sender
            ingest_raw(desk.app, make_mail(f"u{n}@c{n}-{i}.example", "support@example.com",
                                           f"t{n}-{i}"), source="t")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refs = [c["ref"] for c in json.loads(desk.cli("cases", "list", "--json").stdout)]
    assert sorted(refs) == [f"CC-{n:06d}" for n in range(1, 41)]


def test_ingest_from_stdin_in_pipe_mode(desk):
    result = desk.cli("ingest", input=make_mail(ANA, "billing@example.com", "Pipe"))
    assert result.returncode == 0 and "new_case BL-000001" in result.stdout
    assert any(m["Subject"] == "[BL-000001] Pipe" for m in desk.sent())


def test_run_with_smtp_listener_stores_then_acks_into_the_maildir(tmp_path):
    port = free_port()
    config = merge(base_config(tmp_path, None),
                   {"inbound": {"smtp_listener": {"host": "127.0.0.1", "port": port}}})
    path = write_config(tmp_path, config)
    cmd = [sys.executable, "-m", "helpdesk", "-c", str(path)]
    subprocess.run([*cmd, "db", "upgrade"], check=True, capture_output=True)
    daemon = subprocess.Popen([*cmd, "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def send() -> bool:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                    smtp.sendmail("ana@customer.example", ["support@example.com"],
                                  make_mail(ANA, "support@example.com", "Over SMTP"))
                return True
            except OSError:
                return False

        wait_for(send, timeout=20, interval=0.2)
        outbox = mailbox.Maildir(tmp_path / "outbox", create=True)
        wait_for(lambda: len(outbox) >= 2, timeout=20)  # the ack and the staff notice
        subjects = [outbox[key]["Subject"] for key in outbox.keys()]
        assert "[CC-000001] Over SMTP" in subjects
    finally:
        stop_process(daemon, timeout=15)
        output = daemon.communicate(timeout=15)[0].decode()
    assert daemon.returncode == 0, output
    assert "helpdesk stopped" in output
    assert Path(tmp_path / "helpdesk.db").exists()


def test_pipe_mode_keeps_an_unreadable_mail_and_exits_0_so_the_mta_does_not_bounce(desk):
    result = desk.cli("ingest", input=b"\x00\x01 this is not a mail\n")
    assert result.returncode == 0
    assert "quarantined" in result.stdout and "helpdesk failed list" in result.stderr
    listed = desk.cli("failed", "list", "--json", check=True)
    assert len(json.loads(listed.stdout)) == 1
