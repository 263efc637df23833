"""Issue 10, addresses and headers: what a stranger writes into a header never becomes a
header, a recipient or a participant of ours (SPEC, Round 2: Trust).

Every attack comes in through a real transport (the SMTP listener, ``helpdesk ingest``
as an MTA pipe calls it, Dovecot and ``helpdesk fetch``), and every test looks at what
a victim would see: the envelopes and the parsed headers of every mail that reached
the recording MTA, the case's participants, its events.
"""
from __future__ import annotations

import base64
import email.errors
import email.policy
import json
import re
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import Parser

import pytest
from sqlalchemy import select

from helpdesk.core.addresses import check_address
from helpdesk.inbound.ingest import ingest_raw
from helpdesk.inbound.smtp_listener import start_listener
from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Inbound, Participant
from tests.servers.smtp import free_port

ANA = "ana@customer.example"
BO = "bo@partner.example"

# What our mail carries (compose.build); anything else in a header block was injected.
OUR_HEADERS = {"from", "to", "subject", "date", "message-id", "in-reply-to", "references",
               "reply-to", "auto-submitted", "precedence", "x-auto-response-suppress",
               "x-helpdesk-loop", "x-helpdesk-case", "content-type",
               "content-transfer-encoding", "mime-version"}

# An address written by a stranger: each is refused, and none may reach anyone.
ATTACKS = {
    "qp-word-crlf-bcc": b"=?utf-8?q?a=0D=0ABcc:_x=40evil.example=0D=0A?=@evil.example",
    "b64-word-body": b"=?utf-8?b?" + base64.b64encode(
        b"a\r\nBcc: y@evil.example\r\n\r\nInjected body") + b"?=@evil.example",
    "word-with-comma": b"=?utf-8?q?z=40evil.example=2C_w?=@evil.example",
    "word-in-domain": b"victim@=?utf-8?q?evil.example=0D=0AX-Evil:_1?=",
    "cve-2023-27043": b"alice@customer.example)<hidden@evil.example>",
    "group": b"team: g1@evil.example, g2@evil.example;",
    "second-at": b"a@b@evil.example",
    "comment-hides-address": b"c1@evil.example (c2@evil.example)",
    "quoted-local-with-at": b'"q@evil.example"@evil.example',
    "bidi-override": "r\u202eo@evil.example".encode(),
    "nul": b"n\x00ul@evil.example",
    "control": b"c\x01trl@evil.example",
    "domain-literal": b"lit@[127.0.0.1]",
    "localhost": b"root@localhost",
    "two-angles": b"Eve <e1@evil.example> <e2@evil.example>",
}


def raw_mail(*headers: tuple[str, bytes], subject: bytes = b"Printer on fire",
             body: bytes = b"The printer is on fire.\r\n", message_id: str = "<m1@customer.example>",
             content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    lines = [b"From: Ana Garcia <" + ANA.encode() + b">", b"To: support@example.com",
             b"Cc: " + BO.encode()]
    lines += [name.encode() + b": " + value for name, value in headers]
    lines += [b"Subject: " + subject, b"Date: Mon, 02 Nov 2026 09:00:00 +0000",
              b"Message-ID: " + message_id.encode(), b"MIME-Version: 1.0",
              b"Content-Type: " + content_type]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def assert_nothing_injected(deliveries, allowed: set[str]) -> None:
    """What every victim would check: who got mail, and whether each header block is ours."""
    assert deliveries, "nothing was delivered"
    for delivery in deliveries:
        assert set(delivery.rcpt_tos) <= allowed, delivery.rcpt_tos
        head, blank, body = delivery.content.partition(b"\r\n\r\n")
        assert blank and body
        for line in head.split(b"\r\n"):  # a header or its folded continuation, nothing else
            assert re.match(rb"[A-Za-z-]+: |[ \t]\S", line), line
        assert b"evil.example" not in delivery.content and b"127.0.0.1" not in delivery.content
        msg = parsed(delivery)
        names = [name.lower() for name in msg.keys()]
        assert len(names) == len(set(names)) and set(names) <= OUR_HEADERS, names
        for name in ("from", "to", "reply-to"):
            if msg[name] is not None:
                # (a UTF-8 local part is a "defect" only to a reader without RFC 6532)
                defects = [d for d in msg[name].defects
                           if not isinstance(d, email.errors.NonASCIILocalPartDefect)]
                assert not defects, (name, defects)
                for address in msg[name].addresses:
                    check_address(address.addr_spec)
        to = {check_address(a.addr_spec) for a in msg["to"].addresses}
        assert to == {check_address(a) for a in delivery.rcpt_tos}
        assert msg.get_content_type() in ("text/plain", "multipart/alternative")
        assert "CC-000001" in msg.get_body(("plain",)).get_content()


def parsed(delivery) -> EmailMessage:
    """A delivered mail as its recipient reads it: headers in UTF-8 (RFC 6532)."""
    return Parser(policy=email.policy.default).parsestr(
        delivery.content.decode("utf-8", "surrogateescape"))


def acks(desk) -> list:
    return [d for d in desk.mta.handler.envelopes if ANA in d.rcpt_tos]


def events(case: dict, type_: str) -> list[dict]:
    return [e["detail"] for e in case["events"] if e["type"] == type_]


@pytest.fixture
def desk(desk_factory):
    """A desk whose config names its own SMTP listener (``listener`` starts it)."""
    return desk_factory(inbound={"smtp_listener": {"host": "127.0.0.1", "port": free_port()}})


@pytest.fixture
def listener(desk) -> Iterator[int]:
    """The desk's own SMTP listener (aiosmtpd), started."""
    controller = start_listener(desk.app)
    yield desk.app.settings.inbound.smtp_listener.port
    controller.stop()


def send_smtp(port: int, raw: bytes, recipients: list[str] | None = None,
              options: tuple[str, ...] = ()) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(ANA, recipients or ["support@example.com"], raw, mail_options=list(options))


@pytest.mark.parametrize("header", ["To", "Cc", "Reply-To", "Sender", "Delivered-To",
                                    "X-Original-To"])
def test_hostile_addresses_over_the_smtp_listener_reach_nobody_and_inject_nothing(
        desk, listener, header):
    raw = raw_mail(*[(header, value) for value in ATTACKS.values()])
    send_smtp(listener, raw)
    deliver_all(desk.app)
    assert_nothing_injected(desk.mta.handler.envelopes,
                            allowed={ANA, BO, "agent@example.com"})  # the ack, the staff notice
    case = desk.case("CC-000001")
    assert case["requester"] == ANA and case["participants"] == [ANA, BO]
    rejected = events(case, "address_rejected")
    assert {e["header"] for e in rejected} == {header.lower()}
    # one event per address up to ten, then a count (the group has two members)
    assert len(rejected) == 10 and events(case, "events_omitted") == [
        {"address_rejected": len(ATTACKS) + 1 - 10}]
    first = rejected[0]
    assert first["value"] == "=?utf-8?q?a=0D=0ABcc:_x=40evil.example=0D=0A?=@evil.example"
    assert "encoded-word" in first["reason"]
    for event in rejected:  # safe to show: no control, no bidi character left
        assert event["value"].isprintable() and event["reason"]


def test_hostile_addresses_through_the_mta_pipe_reach_nobody(desk):
    raw = raw_mail(("Cc", ATTACKS["qp-word-crlf-bcc"]), ("Reply-To", ATTACKS["b64-word-body"]),
                   ("To", ATTACKS["cve-2023-27043"]), ("Cc", ATTACKS["bidi-override"]),
                   ("Return-Path", b"<" + ATTACKS["qp-word-crlf-bcc"] + b">"))
    result = desk.cli("ingest", input=raw)
    assert result.returncode == 0 and "new_case CC-000001" in result.stdout, result.stderr
    assert_nothing_injected(desk.mta.handler.envelopes, allowed={ANA, BO, "agent@example.com"})
    case = json.loads(desk.cli("cases", "show", "CC-000001", "--json", check=True).stdout)
    assert case["participants"] == [ANA, BO]
    assert sorted(e["header"] for e in events(case, "address_rejected")) == [
        "cc", "cc", "reply-to", "return-path", "to"]
    # the requester is From: the Reply-To that was not an address changed nothing
    assert case["requester"] == ANA


@pytest.mark.imap
def test_hostile_addresses_fetched_from_dovecot_reach_nobody(dovecot, desk_factory):
    desk = desk_factory(inbound={"imap": dovecot.mailbox_config()})
    dovecot.append(raw_mail(("Cc", ATTACKS["qp-word-crlf-bcc"]), ("To", ATTACKS["group"]),
                            ("Cc", ATTACKS["comment-hides-address"])))
    desk.cli("fetch", check=True)
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 1
    assert_nothing_injected(desk.mta.handler.envelopes, allowed={ANA, BO, "agent@example.com"})
    case = desk.case("CC-000001")
    assert case["participants"] == [ANA, BO]
    assert len(events(case, "address_rejected")) == 4  # two group members, two others


def test_a_from_that_is_no_address_opens_nothing_and_is_kept_with_the_reason(desk):
    raw = raw_mail().replace(b"From: Ana Garcia <ana@customer.example>",
                             b"From: " + ATTACKS["qp-word-crlf-bcc"])
    result = desk.cli("ingest", input=raw)
    assert result.returncode == 0 and "ignored" in result.stdout
    assert desk.mta.handler.envelopes == []  # nobody answered, nobody told
    with desk.app.sessions() as session:
        [row] = session.scalars(select(Inbound)).all()
        assert row.raw == raw and row.outcome == "ignored"
        assert "address_rejected" in row.error and "'header': 'from'" in row.error
        assert "encoded-word" in row.error


# --- Unicode headers (RFC 6532) and SMTPUTF8 -----------------------------------------------

SUBJECT = "Grüße aus München – ошибка 支付失败 ✓"


def test_raw_utf8_headers_round_trip_as_the_customer_wrote_them(desk, listener):
    raw = raw_mail(subject=SUBJECT.encode()).replace(
        b"From: Ana Garcia", "From: Ana García Müller".encode())
    send_smtp(listener, raw, options=("SMTPUTF8",))  # 8-bit headers, as an RFC 6531 MTA sends
    deliver_all(desk.app)
    case = json.loads(desk.cli("cases", "show", "CC-000001", "--json", check=True).stdout)
    assert case["subject"] == SUBJECT
    assert case["messages"][0]["subject"] == SUBJECT
    [ack] = [parsed(d) for d in acks(desk)]
    assert ack["Subject"] == f"[CC-000001] {SUBJECT}"
    assert "\ufffd" not in json.dumps(case, ensure_ascii=False)
    with desk.app.sessions() as session:
        names = {p.address: p.name for p in session.scalars(select(Participant))}
    assert names[ANA] == "Ana García Müller"


def desk_sending_to(desk_factory, mta):
    desk = desk_factory(outbound={"smtp": {"host": "127.0.0.1", "port": mta.port,
                                           "security": "none", "timeout": "5s"}})
    desk.mta = mta
    return desk


def test_utf8_addresses_are_kept_and_sent_with_smtputf8_when_offered(desk_factory, mta_factory):
    desk = desk_sending_to(desk_factory, mta_factory(enable_SMTPUTF8=True))
    raw = raw_mail(("Cc", "Jürgen <jürgen@münchen.example>, ana@bücher.example".encode()))
    assert desk.ingest(raw).status == "new_case"
    case = desk.case("CC-000001")
    assert case["participants"] == [ANA, BO, "jürgen@münchen.example", "ana@bücher.example"]
    [ack] = acks(desk)
    assert set(ack.rcpt_tos) == set(case["participants"])
    assert ack.content.isascii() is False  # an RFC 6532 mail: UTF-8 in its headers
    msg = parsed(ack)
    assert {a.addr_spec for a in msg["To"].addresses} == set(case["participants"])
    assert_nothing_injected([ack], allowed=set(case["participants"]))


def test_without_smtputf8_a_utf8_domain_goes_as_idna_and_a_utf8_local_part_is_refused(
        desk_factory, mta_factory):
    desk = desk_sending_to(desk_factory, mta_factory(enable_SMTPUTF8=False))
    raw = raw_mail(("Cc", "Jürgen <jürgen@münchen.example>, ana@bücher.example".encode()))
    assert desk.ingest(raw).status == "new_case"
    [ack] = acks(desk)
    assert sorted(ack.rcpt_tos) == sorted([ANA, BO, "ana@xn--bcher-kva.example"])
    case = desk.case("CC-000001")
    [failed] = [e for e in events(case, "delivery_failed") if e["kind"] == "ack"]
    assert list(failed["refused"]) == ["jürgen@münchen.example"]
    assert "SMTPUTF8" in failed["refused"]["jürgen@münchen.example"]
    assert failed["refused"]["jürgen@münchen.example"].startswith("553 5.6.7")
    assert {"address": "jürgen@münchen.example", "source": "smtp refusal"} in events(
        case, "participant_undeliverable")


# --- attachment names, header limits --------------------------------------------------------


def test_attachment_names_lose_bidi_overrides_and_invisible_characters(desk):
    name = "invoice\u202efdp.exe"
    body = (b"--XX\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--XX\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; "
            b"filename*=utf-8''" + "".join(f"%{b:02X}" for b in name.encode()).encode()
            + b"\r\n\r\nMZ\r\n--XX\r\nContent-Type: application/pdf\r\n"
            b"Content-Disposition: attachment; filename=\"" + "a\u2066b\u200bc\u2069.pdf".encode()
            + b"\"\r\n\r\n%PDF\r\n--XX--\r\n")
    raw = raw_mail(body=body, content_type=b"multipart/mixed; boundary=XX")
    result = desk.cli("ingest", input=raw)
    assert result.returncode == 0, result.stderr
    case = json.loads(desk.cli("cases", "show", "CC-000001", "--json", check=True).stdout)
    assert [a["filename"] for a in case["messages"][0]["attachments"]] == [
        "invoicefdp.exe", "abc.pdf"]


def test_long_headers_and_subjects_are_cut_and_the_cut_recorded(desk):
    subject = "Ü" + "x" * 4_999
    many = ", ".join(f"p{i}@partner.example" for i in range(1_000))  # 21 KB
    raw = raw_mail(("X-Long", b"y" * 20_000), subject=subject.encode()).replace(
        b"Cc: bo@partner.example", b"Cc: " + many.encode())
    assert desk.ingest(raw).status == "new_case"
    case = desk.case("CC-000001")
    assert case["subject"] == subject[:1_000]
    [ack] = [parsed(d) for d in acks(desk)]
    assert ack["Subject"] == f"[CC-000001] {subject[:1_000]}"
    cuts = {e["header"]: e for e in events(case, "header_cut")}
    assert cuts["subject"] == {"header": "subject", "chars": 5_000, "limit": 1_000}
    assert cuts["x-long"] == {"header": "x-long", "chars": 20_000, "limit": 16_000}
    assert cuts["cc"]["chars"] > 16_000
    # the Cc was cut between two addresses, never inside one; the recipients limit held
    # (a stranger's mail reaches at most limits.recipients_per_mail = 10: Ana and 9 more)
    assert case["participants"] == [ANA] + [f"p{i}@partner.example" for i in range(9)]
    assert not events(case, "address_rejected")


# --- linear time ----------------------------------------------------------------------------


def _subject(n: int) -> bytes:
    return raw_mail(subject=("Grüße aus München " * (n // 19)).encode())


def _to(n: int) -> bytes:
    many = ", ".join(f"user{i}@d{i}.example" for i in range(n // 20))
    return raw_mail(("To", many.encode()))


def _headers(n: int) -> bytes:
    return raw_mail(*[(f"X-H{i}", f"value {i}".encode()) for i in range(n // 20)])


def _encoded_words(n: int) -> bytes:
    return raw_mail(subject=b" ".join([b"=?utf-8?q?Gr=C3=BC=C3=9Fe?="] * (n // 28)))


def _unclosed_words(n: int) -> bytes:
    return raw_mail(("Cc", b"=?utf-8?q?x" * (n // 11)), subject=b"=?a?q?" * (n // 6))


@pytest.mark.parametrize("header_chars", [16_000, 100_000], ids=["default", "highest"])
@pytest.mark.parametrize("shape", [_subject, _to, _headers, _encoded_words, _unclosed_words],
                         ids=["1MB-subject", "1MB-to-50000-addresses", "50000-headers",
                              "35000-encoded-words", "unclosed-words"])
def test_a_mail_costs_time_linear_in_its_size(desk_factory, shape, header_chars):
    desk = desk_factory(limits={"header_chars": header_chars, "subject_chars": 2_000})
    runs = iter(range(1_000))

    def seconds(size: int) -> float:
        raw = shape(size).replace(b"<m1@", f"<m{next(runs)}@".encode())
        started = time.perf_counter()
        outcome = ingest_raw(desk.app, raw, source="smtp")
        elapsed = time.perf_counter() - started
        assert outcome.status in ("new_case", "ignored"), outcome
        return elapsed

    assert len(shape(1_000_000)) > 900_000
    small = min(seconds(100_000) for _ in range(2))
    large = min(seconds(1_000_000) for _ in range(2))
    # Ten times the mail: about ten times the time at most. Quadratic would be a hundred.
    assert large < 30 * max(small, 0.01), (small, large)
