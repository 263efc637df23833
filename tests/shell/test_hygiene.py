"""Issue 5: mail hygiene end to end, against a real aiosmtpd MTA and SQLite.

No loops (machine mail is stored, never answered, never the customer's answer), rate
limits, bounces matched to their case, no spoofed joins by subject tag, participant
limits, no header injection, escaped HTML, safe attachments, and a quarantine that
keeps what it cannot process and lets an admin retry it.
"""
from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import hashlib
import re
import time
from email.message import EmailMessage, Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.commands import set_status
from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Inbound
from helpdesk.views import list_cases, list_failed
from tests.servers.helpdesk import START, make_mail, staff_auth

DATA = Path(__file__).resolve().parent.parent / "data"
ANA = "Ana Garcia <ana@customer.example>"
BO = "bo@partner.example"


# --- helpers -------------------------------------------------------------------------------


def open_case(desk, subject: str = "Printer on fire", body: str = "The printer is on fire.\n",
              **kwargs) -> EmailMessage:
    """Ana opens CC-000001 (Bo in Cc); returns the acknowledgement Ana got."""
    kwargs.setdefault("cc", [BO])
    outcome = desk.ingest(make_mail(ANA, "support@example.com", subject, body, **kwargs))
    assert outcome.status == "new_case", outcome
    return desk.sent_to("ana@customer.example")[-1]


def waiting(desk, ref: str = "CC-000001") -> None:
    """As `helpdesk cases set-status REF waiting` does (in-process: fast)."""
    set_status(desk.app, ref, "waiting")
    deliver_all(desk.app)


def events(desk, ref: str, type_: str) -> list[dict]:
    return [e["detail"] for e in desk.case(ref)["events"] if e["type"] == type_]


def inbound_rows(desk) -> list[Inbound]:
    with desk.app.sessions() as session:
        return list(session.scalars(select(Inbound).order_by(Inbound.id)))


def all_refs(desk) -> list[str]:
    return [c["ref"] for c in list_cases(desk.app)]


def html_of(msg: EmailMessage) -> str:
    return msg.get_body(("html",)).get_content()


def text_of(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()


# --- machine mail -------------------------------------------------------------------------

# One entry per machine-mail rule: (extra headers, From[, Message-ID]) of an automatic
# answer to a case mail; the id is the rule name the reasons must name.
MACHINE_KINDS = {
    "auto-submitted": ({"Auto-Submitted": "auto-replied (vacation)"}, ANA),
    "x-autoreply": ({"X-Autoreply": "yes"}, ANA),
    "x-autorespond": ({"X-Autorespond": "Out of office"}, ANA),
    "precedence": ({"Precedence": "auto_reply"}, ANA),
    "x-precedence-bulk": ({"X-Precedence": "bulk"}, ANA),
    "auto-response-suppress": ({"X-Auto-Response-Suppress": "OOF, AutoReply"}, ANA),
    "x-loop": ({"X-Loop": "ana@customer.example"}, ANA),
    "list-id": ({"List-Id": "Customers <customers.lists.customer.example>"}, ANA),
    "list-unsubscribe": ({"List-Unsubscribe": "<mailto:leave@lists.customer.example>"}, ANA),
    "null-return-path": ({"Return-Path": "<>"}, ANA),
    "noreply-sender": ({}, "No Reply <noreply@customer.example>"),
    "postmaster-sender": ({}, "postmaster@customer.example"),
    "own-loop-header": ({"X-Helpdesk-Loop": "support@example.com"}, ANA),
    "own-address": ({}, "Support <support@example.com>"),
    "own-message-id": ({}, ANA, "<helpdesk.0123456789abcdef@example.com>"),
    "noreply-among-words": ({}, "Google Calendar <calendar-noreply@google.com>"),
    "mailer-daemon-return-path": ({"Return-Path": "<MAILER-DAEMON@mx.customer.example>"}, ANA),
    "listserv-owner": ({"Return-Path": "<owner-customers-l@lists.customer.example>"}, ANA),
    "mailman-request": ({}, "customers-request@lists.customer.example"),
    "list-owner-sender": ({"Sender": "customers-owner@lists.customer.example"}, ANA),
}
RULE_OF = {"x-autorespond": "autoreply-header", "x-autoreply": "autoreply-header",
           "x-precedence-bulk": "precedence", "list-id": "mailing-list",
           "list-unsubscribe": "mailing-list", "noreply-sender": "machine-sender",
           "postmaster-sender": "machine-sender", "noreply-among-words": "machine-sender",
           "mailer-daemon-return-path": "machine-sender", "listserv-owner": "list-sender",
           "mailman-request": "list-sender", "list-owner-sender": "list-sender"}


def read_receipt(in_reply_to: str) -> bytes:
    """An Outlook read receipt (RFC 8098) for one of our mails, as it arrives."""
    return (
        "From: Ana Silva <ana@customer.example>\r\n"
        "To: support@example.com\r\n"
        "Subject: Read: [CC-000001] Printer on fire\r\n"
        "Message-ID: <mdn-1@customer.example>\r\n"
        f"In-Reply-To: {in_reply_to}\r\n"
        f"References: {in_reply_to}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=disposition-notification;\r\n'
        '\tboundary="mdn"\r\n\r\n'
        "--mdn\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "Your message was read on Monday.\r\n\r\n"
        "--mdn\r\nContent-Type: message/disposition-notification\r\n\r\n"
        "Final-Recipient: rfc822;ana@customer.example\r\n"
        f"Original-Message-ID: {in_reply_to}\r\n"
        "Disposition: automatic-action/MDN-sent-automatically; displayed\r\n\r\n"
        "--mdn--\r\n").encode()


def test_a_read_receipt_is_not_the_customers_answer(desk):
    ack = open_case(desk)
    waiting(desk)
    before = desk.case("CC-000001")
    desk.mta.handler.clear()
    outcome = desk.ingest(read_receipt(ack["Message-ID"]))
    assert (outcome.status, outcome.ref) == ("machine", "CC-000001"), outcome
    assert "multipart/report (disposition-notification)" in outcome.reason
    case = desk.case("CC-000001")
    assert case["status"] == "waiting" and case["due_at"] == before["due_at"]
    assert desk.sent() == []  # no acknowledgement, no staff notice


@pytest.mark.parametrize("kind", list(MACHINE_KINDS))
def test_auto_reply_to_a_waiting_case_is_stored_but_not_answered_and_keeps_the_clock(desk, kind):
    headers, sender, *message_id = MACHINE_KINDS[kind]
    ack = open_case(desk)
    waiting(desk)
    before = desk.case("CC-000001")
    assert before["status"] == "waiting" and before["due_at"]
    desk.mta.handler.clear()
    desk.clock.advance(hours=1)
    outcome = desk.ingest(make_mail(sender, "support@example.com",
                                    "Automatic reply: [CC-000001] Printer on fire",
                                    "I am out of the office until Monday.\n",
                                    in_reply_to=ack["Message-ID"], headers=headers,
                                    message_id=message_id[0] if message_id else None))
    assert (outcome.status, outcome.ref) == ("machine", "CC-000001"), outcome
    assert f"{RULE_OF.get(kind, kind)}: " in outcome.reason, outcome.reason
    case = desk.case("CC-000001")
    assert case["status"] == "waiting" and case["due_at"] == before["due_at"]
    assert [m["kind"] for m in case["messages"] if m["direction"] == "in"] == ["new", "machine"]
    [event] = events(desk, "CC-000001", "machine_mail")
    assert event["reasons"]
    assert desk.sent() == []  # no acknowledgement, no staff notice, nothing
    assert all_refs(desk) == ["CC-000001"]
    assert inbound_rows(desk)[-1].outcome == "machine"


def test_waiting_status_set_by_the_cli_survives_an_out_of_office(desk):
    ack = open_case(desk)
    desk.cli("cases", "set-status", "CC-000001", "waiting", check=True)
    desk.mta.handler.clear()
    desk.ingest(make_mail(ANA, "support@example.com", "Out of Office: Printer on fire",
                          in_reply_to=ack["Message-ID"],
                          headers={"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"}))
    assert desk.case("CC-000001")["status"] == "waiting"
    assert desk.sent() == []
    desk.ingest(make_mail(ANA, "support@example.com", "Re: [CC-000001] Printer on fire",
                          "Still on fire.\n", in_reply_to=ack["Message-ID"]))
    assert desk.case("CC-000001")["status"] == "in_progress"  # a human answer does count


def test_auto_reply_to_a_resolved_case_does_not_reopen_it(desk):
    ack = open_case(desk)
    set_status(desk.app, "CC-000001", "resolved", "Unplugged it.")
    deliver_all(desk.app)
    desk.mta.handler.clear()
    outcome = desk.ingest(make_mail(ANA, "support@example.com", "Auto: Printer on fire",
                                    in_reply_to=ack["Message-ID"],
                                    headers={"Auto-Submitted": "auto-replied"}))
    assert outcome.status == "machine"
    assert desk.case("CC-000001")["status"] == "resolved"
    assert desk.sent() == []


def test_list_mail_without_a_case_opens_nothing_and_answers_nobody(desk):
    outcome = desk.ingest(make_mail("Newsletter <news@lists.vendor.example>", "support@example.com",
                                    "Our March offers", headers={
                                        "List-Id": "<offers.vendor.example>",
                                        "List-Unsubscribe": "<https://vendor.example/u>",
                                        "Precedence": "bulk"}))
    assert outcome.status == "machine" and outcome.ref is None
    assert "mailing-list" in outcome.reason
    assert all_refs(desk) == [] and desk.sent() == []
    [row] = inbound_rows(desk)
    assert (row.status, row.outcome, row.case_id) == ("done", "machine", None)


def test_our_own_ack_coming_back_is_not_answered(desk):
    ack = open_case(desk)
    desk.mta.handler.clear()
    # e.g. a customer's server forwards our ack back to the support address
    raw = ack.as_bytes(policy=email.policy.SMTP)
    outcome = desk.ingest(raw)
    assert outcome.status in ("machine", "duplicate")
    assert desk.sent() == [] and all_refs(desk) == ["CC-000001"]


# --- rate limits ---------------------------------------------------------------------------


def test_a_sender_opening_case_after_case_gets_at_most_ten_acks_per_ten_minutes(desk_factory):
    # The acknowledgement limit on its own: with the default new-case limit (5/1h, see
    # test_trust_e2e) mails 6 to 15 would be held before any acknowledgement is counted.
    desk = desk_factory(limits={"new_cases_per_sender": "100/1h"})
    for i in range(15):
        desk.ingest(make_mail("flood@spam.example", "support@example.com", f"Request number {i}",
                              f"Body {i}\n"))
        desk.clock.advance(seconds=30)  # 15 mails in 7.5 minutes
    assert len(all_refs(desk)) == 15  # every mail is kept as a case
    assert len(desk.sent_to("flood@spam.example")) == 10
    limited = [ref for ref in all_refs(desk) if events(desk, ref, "rate_limited")]
    assert limited == [f"CC-{n:06d}" for n in range(11, 16)]
    detail = events(desk, "CC-000015", "rate_limited")[0]
    assert detail["recipients"] == ["flood@spam.example"] and "10 per 10m" in detail["limit"]
    # staff still hear of every case
    assert len(desk.sent_to("agent@example.com")) == 15

    desk.clock.advance(minutes=11)  # the window has passed
    desk.ingest(make_mail("flood@spam.example", "support@example.com", "One more, later"))
    assert len(desk.sent_to("flood@spam.example")) == 11
    assert not events(desk, "CC-000016", "rate_limited")


def test_rate_limit_per_recipient_spans_cases_and_leaves_other_recipients_alone(desk_factory):
    desk = desk_factory(limits={"auto_mail_per_recipient": ["2/10m", "30/1d"]})
    for i in range(3):
        desk.ingest(make_mail(ANA, "support@example.com", f"Topic {i}", cc=[BO] if i == 2 else None))
    assert len(desk.sent_to("ana@customer.example")) == 2
    assert len(desk.sent_to(BO)) == 1  # the third ack still reaches Bo
    [detail] = events(desk, "CC-000003", "rate_limited")
    assert detail["recipients"] == ["ana@customer.example"]


def test_rate_limit_per_case(desk_factory):
    desk = desk_factory(limits={"auto_mail_per_case": ["2/10m"]})
    open_case(desk, cc=None)  # the ack: 1
    waiting(desk)  # the status mail: 2
    set_status(desk.app, "CC-000001", "in_progress")
    waiting(desk)  # a third automatic mail within 10 minutes: held back
    assert len(desk.sent_to("ana@customer.example")) == 2
    [detail] = events(desk, "CC-000001", "rate_limited")
    assert detail["kind"] == "status" and "for this case" in detail["limit"]


def test_automatic_mail_carries_the_headers_that_keep_others_quiet(desk):
    ack = open_case(desk, cc=None)
    waiting(desk)
    status = desk.sent_to("ana@customer.example")[-1]
    assert status["Auto-Submitted"] == "auto-generated"
    assert ack["Auto-Submitted"] == "auto-replied"
    for sent in (ack, status):
        assert sent["X-Auto-Response-Suppress"] == "All"
        assert sent["X-Helpdesk-Loop"] == "support@example.com"
        assert sent["Message-ID"].endswith("@example.com>")
        assert sent["In-Reply-To"] and sent["References"]
    # it answers the last mail the customer saw (not the staff notice they never got)
    assert status["In-Reply-To"] == ack["Message-ID"]
    assert ack["Message-ID"] in status["References"]


# --- bounces --------------------------------------------------------------------------------


def rfc3464_dsn(original: EmailMessage, recipient: str, status: str, diagnostic: str) -> bytes:
    """A real multipart/report as an RFC 3464 MTA writes it, built with the email package,
    returning the full original message."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "Mail Delivery Subsystem <MAILER-DAEMON@mx.partner.example>"
    report["To"] = "support@example.com"
    report["Subject"] = "Delivery Status Notification (Failure)"
    report["Date"] = email.utils.format_datetime(START)
    report["Message-ID"] = "<dsn.4711@mx.partner.example>"
    report["Auto-Submitted"] = "auto-replied"
    report["Return-Path"] = "<>"
    report.attach(MIMEText(f"Delivery to {recipient} failed permanently.\n"))
    status_part = Message()
    status_part["Content-Type"] = "message/delivery-status"
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mx.partner.example"
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = f"smtp; {diagnostic}"
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    report.attach(MIMEMessage(original))
    return report.as_bytes()


def postfix_dsn(original: EmailMessage, recipient: str) -> bytes:
    """tests/data/bounce_postfix.eml about our mail: its Message-ID and recipient put in."""
    raw = (DATA / "bounce_postfix.eml").read_bytes()
    raw = raw.replace(b"<helpdesk.7f3a9c2e1b@example.com>", original["Message-ID"].encode())
    raw = raw.replace(b"nosuchuser@example.net", recipient.encode())
    return raw


def assert_bounce_recorded(desk, outcome, recipient: str, status: str, diagnostic: str) -> None:
    assert (outcome.status, outcome.ref) == ("bounce", "CC-000001"), outcome
    case = desk.case("CC-000001")
    bounce = next(d for d in events(desk, "CC-000001", "bounce"))
    [entry] = [r for r in bounce["recipients"] if r["address"] == recipient]
    assert entry["status"] == status and entry["action"] == "failed"
    assert diagnostic in entry["diagnostic"]
    assert case["undeliverable"] == [recipient]
    assert events(desk, "CC-000001", "participant_undeliverable")[0]["address"] == recipient
    assert all_refs(desk) == ["CC-000001"]  # no new case
    assert desk.sent() == []  # no response to the bounce
    assert case["messages"][-1]["kind"] == "machine"


def the_next_mail_skips(desk, ack: EmailMessage, recipient: str) -> None:
    desk.ingest(make_mail("Agent <agent@example.com>", "support@example.com",
                          "Re: [CC-000001] Printer on fire", "Please unplug it.\n",
                          in_reply_to=ack["Message-ID"], headers=staff_auth("agent@example.com")))
    [relay] = desk.sent()
    assert "Please unplug it." in text_of(relay)
    recipients = desk.mta.handler.envelopes[0].rcpt_tos
    assert recipient not in recipients and "ana@customer.example" in recipients


def test_rfc3464_bounce_of_our_ack_is_recorded_on_its_case(desk):
    ack = open_case(desk)
    desk.mta.handler.clear()
    raw = rfc3464_dsn(ack, BO, "5.1.1", "550 5.1.1 <bo@partner.example>: user unknown")
    assert b"report-type=\"delivery-status\"" in raw or b"report-type=delivery-status" in raw
    outcome = desk.ingest(raw)
    assert_bounce_recorded(desk, outcome, BO, "5.1.1", "user unknown")
    the_next_mail_skips(desk, ack, BO)


def test_postfix_bounce_of_our_ack_is_recorded_on_its_case(desk):
    ack = open_case(desk)
    desk.mta.handler.clear()
    outcome = desk.ingest(postfix_dsn(ack, BO))
    assert_bounce_recorded(desk, outcome, BO, "5.1.1", "User unknown")
    the_next_mail_skips(desk, ack, BO)


def test_delayed_dsn_is_recorded_but_marks_nobody(desk):
    ack = open_case(desk)
    desk.mta.handler.clear()
    outcome = desk.ingest(rfc3464_dsn(ack, BO, "4.2.2", "452 4.2.2 mailbox full").replace(
        b"Action: failed", b"Action: delayed"))
    assert (outcome.status, outcome.ref) == ("bounce", "CC-000001")
    assert desk.case("CC-000001")["undeliverable"] == []
    assert desk.sent() == []


def test_bounce_of_nothing_we_sent_opens_no_case(desk):
    stranger = EmailMessage()
    stranger["From"] = "someone@else.example"
    stranger["To"] = BO
    stranger["Subject"] = "Not ours"
    stranger["Message-ID"] = "<not.ours@else.example>"
    stranger.set_content("x\n")
    outcome = desk.ingest(rfc3464_dsn(stranger, BO, "5.1.1", "550 user unknown"))
    assert outcome.status == "bounce" and outcome.ref is None
    assert all_refs(desk) == [] and desk.sent() == []
    assert inbound_rows(desk)[-1].outcome == "bounce"


# --- unknown senders ------------------------------------------------------------------------

SECRET = "Our VPN password is hunter2, please fix the tunnel.\n"
STRANGER = "Mallory <mallory@evil.example>"


def stranger_mail() -> bytes:
    return make_mail(STRANGER, "support@example.com", "Re: [CC-000001] give me an update",
                     "What is the status of this?\n")


def test_stranger_with_a_typed_tag_gets_a_new_linked_case_and_nothing_of_the_old(desk):
    open_case(desk, subject="VPN tunnel down at HQ", body=SECRET)
    desk.mta.handler.clear()
    outcome = desk.ingest(stranger_mail())
    assert (outcome.status, outcome.ref) == ("new_case", "CC-000002")
    old, new = desk.case("CC-000001"), desk.case("CC-000002")
    assert old["linked_refs"] == ["CC-000002"] and new["linked_refs"] == ["CC-000001"]
    assert {"ref": "CC-000002", "reason": "unknown_sender"} in events(desk, "CC-000001", "linked")
    assert "mallory@evil.example" not in old["participants"]
    assert new["participants"] == ["mallory@evil.example"]
    [ack] = desk.sent_to("mallory@evil.example")
    for part in (ack.as_string(), text_of(ack), html_of(ack)):
        assert "VPN tunnel" not in part and "hunter2" not in part
        assert "ana@customer.example" not in part and BO not in part
    assert desk.sent_to("ana@customer.example") == [] and desk.sent_to(BO) == []
    # staff hear of it, with the link
    [notice] = desk.sent_to("agent@example.com")
    assert "CC-000001" in text_of(notice)


def test_unknown_sender_policy_join(desk_factory):
    desk = desk_factory(threading={"unknown_sender": "join"})
    open_case(desk, subject="VPN tunnel down at HQ", body=SECRET)
    outcome = desk.ingest(stranger_mail())
    assert (outcome.status, outcome.ref) == ("reply", "CC-000001")
    assert "mallory@evil.example" in desk.case("CC-000001")["participants"]
    assert all_refs(desk) == ["CC-000001"]


def test_unknown_sender_policy_reject(desk_factory):
    desk = desk_factory(threading={"unknown_sender": "reject"})
    open_case(desk, subject="VPN tunnel down at HQ", body=SECRET)
    desk.mta.handler.clear()
    outcome = desk.ingest(stranger_mail())
    assert (outcome.status, outcome.ref) == ("rejected", "CC-000001")
    assert desk.sent() == []
    assert events(desk, "CC-000001", "unknown_sender_rejected") == [{"from": "mallory@evil.example"}]
    assert "mallory@evil.example" not in desk.case("CC-000001")["participants"]
    assert all_refs(desk) == ["CC-000001"]
    assert inbound_rows(desk)[-1].outcome == "rejected"


def test_colleague_from_the_requesters_domain_joins_by_tag(desk):
    open_case(desk)
    outcome = desk.ingest(make_mail("Carl <carl@customer.example>", "support@example.com",
                                    "Re: [CC-000001] Printer on fire", "Same here.\n"))
    assert (outcome.status, outcome.ref) == ("reply", "CC-000001")
    assert "carl@customer.example" in desk.case("CC-000001")["participants"]


def test_a_participant_from_another_domain_joins_by_tag(desk):
    open_case(desk)  # Bo, of another domain, is on the case
    outcome = desk.ingest(make_mail(BO, "support@example.com", "Re: [CC-000001] Printer on fire"))
    assert (outcome.status, outcome.ref) == ("reply", "CC-000001")


# --- participant limits ---------------------------------------------------------------------

LIMITED = {"limits": {"participants_per_message": 3, "participants_per_case": 5}}


def test_participants_per_message_and_per_case(desk_factory):
    desk = desk_factory(**LIMITED)
    many = [f"p{i}@partner.example" for i in range(6)]
    ack = open_case(desk, cc=many)
    assert desk.case("CC-000001")["participants"] == [
        "ana@customer.example", "p0@partner.example", "p1@partner.example", "p2@partner.example"]
    more = [f"q{i}@partner.example" for i in range(3)]
    desk.ingest(make_mail(ANA, "support@example.com", "Re: [CC-000001] Printer on fire",
                          cc=more, in_reply_to=ack["Message-ID"]))
    case = desk.case("CC-000001")
    assert len(case["participants"]) == 5 and case["participants"][-1] == "q0@partner.example"
    assert events(desk, "CC-000001", "participants_limit")
    # a participant-to-be writing in themselves cannot pass the limit either
    desk.ingest(make_mail("q2@partner.example", "support@example.com",
                          "Re: [CC-000001] Printer on fire", in_reply_to=ack["Message-ID"]))
    assert len(desk.case("CC-000001")["participants"]) == 5


def test_our_addresses_and_staff_never_become_participants_nor_use_up_the_limit(desk_factory):
    desk = desk_factory(**LIMITED)
    ours = ["support@example.com", "billing@example.com", "connections@example.com",
            "agent@example.com", "Boss <boss@staff.example.com>", "SUPPORT@EXAMPLE.COM"]
    ack = open_case(desk, cc=[*ours, "p0@partner.example"])
    reply_address = ack["Reply-To"]
    desk.ingest(make_mail(ANA, [reply_address, "billing@example.com"],
                          "Re: [CC-000001] Printer on fire",
                          cc=[*ours, "support+CC-000009.abcdefgh@example.com", "p1@partner.example"],
                          in_reply_to=ack["Message-ID"]))
    assert desk.case("CC-000001")["participants"] == [
        "ana@customer.example", "p0@partner.example", "p1@partner.example"]
    sent_to = {a for e in desk.mta.handler.envelopes for a in e.rcpt_tos}
    assert not sent_to & {"support@example.com", "billing@example.com", "connections@example.com"}


# --- header injection and encoding ----------------------------------------------------------


def raw_mail(subject_header: bytes, body: bytes = b"Hello.\r\n",
             from_header: bytes = b"Ana Garcia <ana@customer.example>") -> bytes:
    return (b"From: " + from_header + b"\r\n"
            b"To: support@example.com\r\n"
            b"Subject: " + subject_header + b"\r\n"
            b"Date: Mon, 02 Nov 2026 09:00:00 +0000\r\n"
            b"Message-ID: <" + str(abs(hash(subject_header + from_header))).encode()
            + b"@customer.example>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"\r\n" + body)


@pytest.mark.parametrize("subject", [
    b"=?utf-8?q?Help=0D=0ABcc:_victim@evil.example?=",  # encoded-word decoding to CR LF
    b"=?utf-8?b?" + base64.b64encode(b"Help\r\nBcc: victim@evil.example\r\n\r\nx")
    + b"?=",
    b"Help =?utf-8?q?=0A?=Bcc: victim@evil.example",
    b"Help\r\n Bcc: victim@evil.example",  # folded: a continuation line, not a header
], ids=["qp-word", "b64-word", "bare-lf-word", "folded"])
def test_subject_with_crlf_injects_no_header(desk, subject):
    outcome = desk.ingest(raw_mail(subject))
    assert outcome.status == "new_case", outcome
    [ack] = desk.sent_to("ana@customer.example")
    assert ack["Bcc"] is None and ack.get_all("Bcc") is None
    assert "victim@evil.example" in ack["Subject"]  # harmless text in one line
    assert "\n" not in ack["Subject"] and "\r" not in ack["Subject"]
    for delivery in desk.mta.handler.envelopes:
        assert "victim@evil.example" not in delivery.rcpt_tos
        headers = delivery.content.split(b"\r\n\r\n", 1)[0]
        assert not re.search(rb"(?im)^bcc:", headers)
    assert desk.case("CC-000001")["subject"].startswith("Help")


def test_display_name_with_crlf_injects_no_header_and_smuggles_no_address(desk):
    # Addresses are parsed before encoded-words are decoded (RFC 2047 section 5): a display
    # name that decodes to ", victim@..." or "\r\nBcc: victim@..." stays a name.
    raw = raw_mail(b"Hi", from_header=b"=?utf-8?q?Ana=0D=0ABcc:_victim@evil.example?="
                                      b" <ana@customer.example>")
    raw = raw.replace(b"To: support@example.com\r\n", b"To: support@example.com\r\n"
                      b"Cc: =?utf-8?q?Bo=2C_victim2@evil.example?= <bo@partner.example>\r\n")
    outcome = desk.ingest(raw)
    assert outcome.status == "new_case"
    case = desk.case("CC-000001")
    assert case["requester"] == "ana@customer.example"
    assert case["participants"] == ["ana@customer.example", BO]
    for delivery in desk.mta.handler.envelopes:
        assert not {"victim@evil.example", "victim2@evil.example"} & set(delivery.rcpt_tos)
        assert not re.search(rb"(?im)^bcc:", delivery.content.split(b"\r\n\r\n", 1)[0])


def test_non_ascii_subject_round_trips(desk):
    subject = "Überweisung fehlgeschlagen – ошибка 支付失败 ✓ " + "très long " * 12
    desk.ingest(make_mail(ANA, "support@example.com", subject, "Grüße, Ана\n"))
    [ack] = desk.sent_to("ana@customer.example")
    assert ack["Subject"] == f"[CC-000001] {' '.join(subject.split())}"
    raw = desk.mta.handler.envelopes[0].content
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and b"=?utf-8?" in head.lower()  # RFC 2047 on the wire
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert "Grüße, Ана" in text_of(ack)
    assert desk.case("CC-000001")["subject"] == " ".join(subject.split())


def test_8bit_latin1_subject_and_body_are_read(desk):
    raw = (b"From: =?iso-8859-1?q?Jos=E9?= <jose@customer.example>\r\nTo: support@example.com\r\n"
           b"Subject: =?iso-8859-1?q?Caf=E9_cr=E8me?=\r\nMessage-ID: <l1@customer.example>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\nBonjour, caf\xe9 cr\xe8me.\r\n")
    assert desk.ingest(raw).status == "new_case"
    [ack] = desk.sent_to("jose@customer.example")
    assert ack["Subject"] == "[CC-000001] Café crème"
    assert "Bonjour, café crème." in text_of(ack)


# Found in real mail: the label names less than the client wrote. (text, codec written,
# charset label); Base64 so that no 8-bit transport can change the bytes.
MISLABELLED = {
    "gbk-as-gb2312": ("您好，我的发票金额不对。请尽快处理。", "gbk", "gb2312"),
    "cp949-as-ks_c_5601": ("안녕하세요, 청구서가 틀렸습니다. 똠방각하", "cp949", "ks_c_5601-1987"),
    "cp932-as-shift_jis": ("請求書が間違っています ①②③ ｶﾀｶﾅ", "cp932", "shift_jis"),
    "cp1252-as-latin1": ("The “invoice” says €40 – it should be €30.", "cp1252", "iso-8859-1"),
    "utf8-as-us-ascii": ("Grüße aus Köln, die Rechnung stimmt nicht.", "utf-8", "us-ascii"),
    "cp1252-as-unknown-8bit": ("Ça ne marche pas, déjà essayé.", "cp1252", "unknown-8bit"),
}


@pytest.mark.parametrize("case", list(MISLABELLED))
def test_a_mislabelled_legacy_charset_is_read_not_replaced(desk, case):
    text, codec, label = MISLABELLED[case]
    body = base64.encodebytes(f"{text}\r\n".encode(codec))
    subject = base64.b64encode(text[:12].encode(codec)).decode()
    raw = (f"From: ana@customer.example\r\nTo: support@example.com\r\n"
           f"Subject: =?{label}?b?{subject}?=\r\nMessage-ID: <{case}@customer.example>\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset={label}\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body
    assert desk.ingest(raw).status == "new_case"
    [ack] = desk.sent_to("ana@customer.example")
    assert ack["Subject"] == f"[CC-000001] {text[:12].strip()}"
    assert text in text_of(ack)  # the ack quotes the customer's words, not U+FFFD
    assert text in desk.case("CC-000001")["messages"][0]["text"]


@pytest.mark.parametrize("content_type", [
    'multipart/alternative; boundary="XYZ"',  # none of its lines in the body
    "multipart/mixed",  # no boundary at all
])
def test_a_multipart_that_cannot_be_split_keeps_its_words(desk, content_type):
    raw = (f"From: ana@customer.example\r\nTo: support@example.com\r\nSubject: Help\r\n"
           f"Message-ID: <nb@customer.example>\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: {content_type}\r\n\r\n"
           "My invoice is wrong, please call me.\r\n").encode()
    assert desk.ingest(raw).status == "new_case"
    assert desk.case("CC-000001")["messages"][0]["text"] == "My invoice is wrong, please call me."
    [ack] = desk.sent_to("ana@customer.example")
    assert "My invoice is wrong, please call me." in text_of(ack)


@pytest.mark.parametrize("length", range(55, 70))
def test_a_long_subject_comes_back_without_a_leading_space(desk, length):
    subject = ("Printer on fire again " * 5)[:length].rstrip()
    raw = make_mail(ANA, "support@example.com", subject)
    assert desk.ingest(raw).status == "new_case"
    [ack] = desk.sent_to("ana@customer.example")
    assert ack["Subject"] == f"[CC-000001] {subject}"


def test_a_mail_cut_short_inside_a_forwarded_mail_is_read_not_quarantined(desk):
    # As bounces and forwards of cut mail arrive: the inner multipart has no parts, and
    # the outer one no closing boundary (mail-parser failed on it: quarantined).
    raw = (b"From: Ana Lima <ana@customer.example>\r\nTo: support@example.com\r\n"
           b"Subject: Printer broken\r\nMessage-ID: <cut@customer.example>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"OUTER\"\r\n\r\n"
           b"--OUTER\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           b"Please see the mail below, the printer still smokes.\r\n\r\n"
           b"--OUTER\r\nContent-Type: message/rfc822\r\n\r\n"
           b"From: Bob <bob@vendor.example>\r\nSubject: your order\r\n"
           b"Content-Type: multipart/alternative; boundary=\"INNER\"\r\n\r\n")
    assert desk.ingest(raw).status == "new_case"
    text = desk.case("CC-000001")["messages"][0]["text"]
    assert "the printer still smokes" in text
    [ack] = desk.sent_to("ana@customer.example")
    assert "the printer still smokes" in text_of(ack)


@pytest.mark.parametrize("broken", [
    b"X-Spam Status: No, score=0.1",  # a space in a field name
    b"quite Delivered-To: ana@customer.example",  # a stray word before a field
])
def test_a_broken_line_among_the_headers_loses_neither_sender_nor_subject(desk, broken):
    raw = (b"Received: from mx.customer.example by mx.example.com; Mon, 2 Nov 2026 09:00 +0000"
           b"\r\n" + broken + b"\r\nFrom: Ana Lima <ana@customer.example>\r\n"
           b"To: support@example.com\r\nSubject: My order never arrived\r\n"
           b"Message-ID: <badline@customer.example>\r\n\r\nHello, order 4711 never arrived.\r\n")
    assert desk.ingest(raw).status == "new_case"
    case = desk.case("CC-000001")
    assert (case["requester"], case["subject"]) == ("ana@customer.example",
                                                    "My order never arrived")
    assert case["messages"][0]["text"].strip() == "Hello, order 4711 never arrived."


BROKEN_BUT_READABLE = {
    # found by test_property / test_corpus: each used to end in the quarantine
    "vt-in-message-id": (b"Message-ID: <\x0bid.1@customer.example>\r\n", b"Subject: Hi\r\n"),
    "unknown-charset-in-display-name": (
        b"Message-ID: <cs.1@customer.example>\r\n",
        b"Subject: Hi\r\nCc: =?\x80tf-8?q?J=C3=BCrgen?= <j@customer.example>\r\n"),
    "literal-encoded-word-in-subject": (
        b"Message-ID: <ew.1@customer.example>\r\n",
        b"Subject: Rechnung =?utf-8?b?4oC\x00IMOcYmVycHLDvGZ1bmc=?=\r\n"),
}


@pytest.mark.parametrize("case", list(BROKEN_BUT_READABLE))
def test_odd_but_readable_mail_is_processed_not_quarantined(desk, case):
    message_id, extra = BROKEN_BUT_READABLE[case]
    raw = (b"From: Ana <ana@customer.example>\r\nTo: support@example.com\r\n" + message_id
           + extra + b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n")
    outcome = desk.ingest(raw)
    assert outcome.status == "new_case", outcome
    [ack] = desk.sent_to("ana@customer.example")
    assert ack["Subject"].startswith("[CC-000001]")
    for delivery in desk.mta.handler.envelopes:
        head = delivery.content.split(b"\r\n\r\n", 1)[0]
        assert head.isascii() and b"\x00" not in head and b"\x0b" not in head


def test_crafted_encoded_word_headers_cost_linear_time(desk_factory):
    """"=?" without a closing "?=" made the email package's encoded-word scan quadratic:
    a 56 KB subject took 14 s of CPU, so one mail could stall the daemon for hours.
    (With the header limit at its highest, so that every step sees 100 KB of it.)"""
    desk = desk_factory(limits={"header_chars": 100_000})
    bomb = "=?a?q?x" * 11_000  # 77 KB, three times
    raw = (f"From: =?a?q?{bomb} <ana@customer.example>\r\nTo: support@example.com\r\n"
           f"Subject: {bomb}\r\nMessage-ID: <bomb.1@customer.example>\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
           f"Content-Type: text/plain\r\n\r\nHi.\r\n--XX\r\n"
           f"Content-Type: application/octet-stream\r\n"
           f"Content-Disposition: attachment; filename=\"{bomb}\"\r\n\r\nabc\r\n--XX--\r\n"
           ).encode()
    started = time.monotonic()
    outcome = desk.ingest(raw)
    assert time.monotonic() - started < 15  # was: hours
    assert outcome.status == "new_case"
    assert desk.case("CC-000001")["subject"].startswith("= ?a?q?x")
    [ack] = desk.sent_to("ana@customer.example")
    assert ack["Subject"].startswith("[CC-000001] = ?a?q?x")


def test_address_with_control_characters_is_never_written_to(desk):
    raw = (b"From: Ana <ana@customer.example>\r\nTo: support@example.com\r\n"
           b"Cc: bad\x01guy@evil.example, bo@partner.example\r\nSubject: Hi\r\n"
           b"Message-ID: <ctl.1@customer.example>\r\n\r\nHello.\r\n")
    assert desk.ingest(raw).status == "new_case"
    assert desk.case("CC-000001")["participants"] == ["ana@customer.example", BO]


def test_attachment_with_broken_base64_keeps_the_message(desk):
    raw = (b"From: Ana <ana@customer.example>\r\nTo: support@example.com\r\nSubject: Log\r\n"
           b"Message-ID: <b64.1@customer.example>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
           b"Content-Type: text/plain\r\n\r\nLog attached.\r\n--XX\r\n"
           b"Content-Type: application/octet-stream; name=log.bin\r\n"
           b"Content-Disposition: attachment; filename=log.bin\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nSGVsbG8gd29ybGQhx\r\n--XX--\r\n")
    outcome = desk.ingest(raw)
    assert outcome.status == "new_case", outcome
    case = desk.case("CC-000001")
    assert "Log attached." in case["messages"][0]["text"]
    assert [a["filename"] for a in case["messages"][0]["attachments"]] == ["log.bin"]


# --- HTML -----------------------------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"


def test_customer_text_is_escaped_in_the_ack_html(desk):
    desk.ingest(make_mail(ANA, "support@example.com", f"Broken {SCRIPT}",
                          f"Look: {SCRIPT} and <b onmouseover=\"x()\">bold</b>\n"))
    [ack] = desk.sent_to("ana@customer.example")
    html = html_of(ack)
    assert "<script" not in html.lower() and "onmouseover=\"" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert SCRIPT in text_of(ack)  # the plain-text part shows what was written


def test_customer_html_never_reaches_other_participants_unsanitised(desk):
    evil = ("<html><body><p>Hi <b>team</b></p><script>steal()</script>"
            "<img src=x onerror=\"alert(2)\"><a href=\"javascript:alert(3)\">click</a>"
            "<iframe src=\"https://evil.example\"></iframe></body></html>")
    raw = make_mail(ANA, "support@example.com", "HTML only", "x", cc=[BO])
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    msg.set_content(evil, subtype="html")
    desk.ingest(msg.as_bytes(policy=email.policy.SMTP))
    ack = next(m for m in desk.sent_to(BO))
    ack2 = desk.sent_to("ana@customer.example")[0]
    # a participant reply, then a staff answer relayed to everyone
    desk.ingest(make_mail(BO, "support@example.com", "Re: [CC-000001] HTML only", "x",
                          html=evil, in_reply_to=ack["Message-ID"]))
    desk.ingest(make_mail("Agent <agent@example.com>", "support@example.com",
                          "Re: [CC-000001] HTML only", "ok\n", html=f"<p>ok</p>{evil}",
                          in_reply_to=ack["Message-ID"], headers=staff_auth("agent@example.com")))
    for sent in desk.sent():
        html = html_of(sent).lower()
        for bad in ("<script", "onerror", "javascript:", "<iframe", "steal()"):
            assert bad not in html, (sent["Subject"], bad)
    assert "team" in text_of(ack) and "team" in text_of(ack2)


# --- attachments ----------------------------------------------------------------------------


def with_attachments(*files: tuple[str, bytes]) -> bytes:
    msg = EmailMessage()
    msg["From"] = ANA
    msg["To"] = "support@example.com"
    msg["Subject"] = "Logs attached"
    msg["Message-ID"] = email.utils.make_msgid(domain="customer.example")
    msg.set_content("See attached.\n")
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


def test_attachments_are_content_addressed_sanitised_or_dropped(desk_factory, tmp_path):
    desk = desk_factory(limits={"max_attachment_size": "1KB"})
    small, big = b"#!/bin/sh\nrm -rf /\n", b"x" * 5000
    outcome = desk.ingest(with_attachments(("../../etc/passwd", small), ("huge.bin", big),
                                           ("..\\..\\boot.ini", b"[boot]\n")))
    assert outcome.status == "new_case"
    case = desk.case("CC-000001")
    [dropped] = events(desk, "CC-000001", "attachment_dropped")
    assert dropped["filename"] == "huge.bin" and dropped["size"] == 5000
    kept = case["messages"][0]["attachments"]
    assert [a["filename"] for a in kept] == ["passwd", "boot.ini"]
    store = Path(desk.app.settings.resolve(desk.app.settings.helpdesk.attachments))
    files = sorted(p for p in store.rglob("*") if p.is_file())
    assert sorted(p.name for p in files) == sorted(a["sha256"] for a in kept)
    for path in files:
        assert path.resolve().is_relative_to(store.resolve())
        assert path.stat().st_mode & 0o111 == 0  # never executable
    digest = hashlib.sha256(small).hexdigest()
    assert (store / digest[:2] / digest).read_bytes() == small
    assert not (tmp_path / "etc").exists() and not (tmp_path / "desk" / "etc").exists()


def test_the_same_attachment_twice_is_stored_once(desk):
    data = b"%PDF-1.4 same bytes\n"
    desk.ingest(with_attachments(("a.pdf", data)))
    desk.ingest(with_attachments(("b.pdf", data)))
    store = Path(desk.app.settings.resolve(desk.app.settings.helpdesk.attachments))
    assert len([p for p in store.rglob("*") if p.is_file()]) == 1


def test_attachments_in_the_database_when_configured(desk_factory):
    from helpdesk.store.orm import Attachment
    desk = desk_factory(helpdesk={"attachment_store": "database"})
    desk.ingest(with_attachments(("a.pdf", b"%PDF-1.4\n")))
    store = Path(desk.app.settings.resolve(desk.app.settings.helpdesk.attachments))
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))
    with desk.app.sessions() as session:
        [row] = session.scalars(select(Attachment)).all()
        assert (row.data, row.sha256) == (b"%PDF-1.4\n", hashlib.sha256(b"%PDF-1.4\n").hexdigest())


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_large_mail_is_kept_byte_for_byte(desk_factory, request, database):
    """Over 4 MB the raw bytes go into their row through a blob handle (SQLite; a plain
    UPDATE elsewhere) and the attachments are decoded part by part, each part emptied
    as it goes: nothing lost."""
    import random
    desk = (desk_factory(database={"url": request.getfixturevalue("postgres_url")})
            if database == "postgresql" else desk_factory())
    rng = random.Random(7)
    files = [(f"scan-{k}.pdf", b"%PDF-1.7\n" + rng.randbytes(2_500_000)) for k in range(2)]
    raw = with_attachments(*files)
    assert len(raw) > 6_000_000
    assert desk.ingest(raw, source_key="big").status == "new_case"
    resent = raw.replace(b"\r\nSubject:", b"\r\nX-Resent: yes\r\nSubject:", 1)
    assert desk.ingest(resent, source_key="again").status == "duplicate"
    assert [(r.source_key, r.raw) for r in inbound_rows(desk)] == [("big", raw), ("again", resent)]
    kept = desk.case("CC-000001")["messages"][0]["attachments"]
    assert [a["filename"] for a in kept] == [name for name, _ in files]
    store = Path(desk.app.settings.resolve(desk.app.settings.helpdesk.attachments))
    for a, (_, data) in zip(kept, files, strict=True):
        assert (store / a["sha256"][:2] / a["sha256"]).read_bytes() == data


# --- quarantine -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", b"\x00\xff\xfe garbage \x00" * 20,
                                 b"no headers at all, just text"], ids=["empty", "blank", "binary",
                                                                         "text"])
def test_unreadable_input_is_quarantined_not_raised(desk, raw):
    outcome = desk.ingest(raw)
    assert outcome.status == "quarantined" and outcome.reason
    [row] = inbound_rows(desk)
    assert (row.status, row.outcome, row.raw) == ("failed", "quarantined", raw)
    assert row.error == outcome.reason


def blocked_attachment_store(desk_factory, tmp_path) -> tuple:
    """A desk whose attachment store cannot be written (a file stands where its folder
    should be): a mail with an attachment fails in processing until that is fixed."""
    blocker = tmp_path / "attachments-blocked"
    blocker.write_text("not a folder\n")
    return desk_factory(helpdesk={"attachments": str(blocker)}), blocker


def printer_mail_with_a_photo() -> bytes:
    msg = email.message_from_bytes(make_mail(ANA, "support@example.com", "Printer on fire"),
                                   _class=EmailMessage, policy=email.policy.SMTP)
    msg.add_attachment(b"\x89PNG photo", maintype="image", subtype="png", filename="fire.png")
    return msg.as_bytes()


def test_failed_list_and_retry_after_fixing_the_cause(desk_factory, tmp_path):
    desk, blocker = blocked_attachment_store(desk_factory, tmp_path)
    garbage = desk.ingest(b"")
    outcome = desk.ingest(printer_mail_with_a_photo())
    assert outcome.status == "quarantined" and "attachments-blocked" in outcome.reason
    assert all_refs(desk) == [] and desk.sent() == []  # nothing half-done

    listed = desk.cli("failed", "list")
    assert listed.returncode == 0, listed.stderr
    assert "Printer on fire" in listed.stdout and "attachments-blocked" in listed.stdout
    assert "empty message" in listed.stdout
    assert [r["id"] for r in list_failed(desk.app)] == [garbage.inbound_id, outcome.inbound_id]

    blocker.unlink()  # the admin fixes it
    retried = desk.cli("failed", "retry", str(outcome.inbound_id))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "new_case CC-000001" in retried.stdout
    assert all_refs(desk) == ["CC-000001"]
    assert [m["Subject"] for m in desk.sent_to("ana@customer.example")] == ["[CC-000001] Printer on fire"]
    assert [r["id"] for r in list_failed(desk.app)] == [garbage.inbound_id]
    # retrying what still fails keeps it, says so, and exits 1
    again = desk.cli("failed", "retry")
    assert again.returncode == 1 and "still fail" in again.stderr
    [kept] = list_failed(desk.app)
    assert kept["error"] == "UnparseableMessage: empty message" and kept["attempts"] >= 1


def test_a_retry_the_database_cannot_take_leaves_the_mail_in_the_quarantine(
        desk_factory, tmp_path, monkeypatch):
    from helpdesk.inbound import ingest
    from tests.shell.test_mta_pipe import sqlite_path, write_lock_held
    blocker = tmp_path / "attachments-blocked"
    blocker.write_text("not a folder\n")
    desk = desk_factory(helpdesk={"attachments": str(blocker)},
                        database={"lock_timeout": "1s"})
    raw = printer_mail_with_a_photo()
    outcome = desk.ingest(raw)
    assert outcome.status == "quarantined"
    blocker.unlink()  # the admin fixes it, and retries just as another writer holds the lock

    real_ingest = ingest.ingest_raw

    def ingest_behind_a_locked_database(*args, **kwargs):
        with write_lock_held(sqlite_path(desk)):
            return real_ingest(*args, **kwargs)

    monkeypatch.setattr(ingest, "ingest_raw", ingest_behind_a_locked_database)
    with pytest.raises(ingest.StorageUnavailable):
        ingest.retry_failed(desk.app, outcome.inbound_id)
    [kept] = list_failed(desk.app)  # still in the quarantine, bytes and all
    with desk.app.sessions() as session:
        assert session.get(Inbound, kept["id"]).raw == raw
    assert all_refs(desk) == [] and desk.sent() == []

    monkeypatch.setattr(ingest, "ingest_raw", real_ingest)
    retried = desk.cli("failed", "retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert all_refs(desk) == ["CC-000001"] and list_failed(desk.app) == []
    assert [m["Subject"] for m in desk.sent_to("ana@customer.example")] == [
        "[CC-000001] Printer on fire"]


def test_a_failing_message_does_not_block_the_next(desk_factory, tmp_path):
    desk, _ = blocked_attachment_store(desk_factory, tmp_path)
    bad = desk.ingest(printer_mail_with_a_photo())
    good = desk.ingest(make_mail(ANA, "support@example.com", "Printer"))
    assert bad.status == "quarantined" and "attachments-blocked" in bad.reason
    assert (good.status, good.ref) == ("new_case", "CC-000001")
    assert [r.status for r in inbound_rows(desk)] == ["failed", "done"]
