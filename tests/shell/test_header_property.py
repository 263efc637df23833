"""Issue 10: hostile values in every header we read, through the real pipeline (ingest into
a desk, deliver to the recording MTA), never break the mail we send (SPEC, Round 2: Trust).

For every mail that reaches the MTA: each of our headers parses back to exactly one
header of its name and no other name appears; every address in From, To and Reply-To is
a checked address; To names exactly the envelope's recipients, who are all on the case
or staff; the header block ends where it should and the body is ours.

One desk for all examples on purpose, as in test_property.py (hence the health check).
"""
from __future__ import annotations

import base64
import email.errors
import email.policy
import itertools
import re
from email.parser import Parser
from email.quoprimime import header_encode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from helpdesk.core.addresses import check_address
from helpdesk.inbound.ingest import ingest_raw
from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Inbound, Participant
from tests.shell.test_addresses_and_headers import OUR_HEADERS

READ = ["From", "To", "Cc", "Reply-To", "Sender", "Return-Path", "Subject", "Message-ID",
        "In-Reply-To", "References", "Delivered-To", "X-Original-To", "Auto-Submitted",
        "Authentication-Results", "Precedence", "List-Id", "Date", "X-Loop"]
STAFF = {"agent@example.com"}

BREAKS = ["\r\n", "\n", "\r", "\r\n ", "\n\n", "\r\n\r\n", "\x00", "\u2028", "\u0085",
          "\u202e", "\u2066", "\u200b", "\ufeff"]
INJECTIONS = ["Bcc: x@evil.example", "To: y@evil.example", "\r\n\r\nInjected body",
              "Content-Type: text/html", "X-Evil: 1"]
FRAGMENTS = ["=?utf-8?q?", "?=", "=?", "<", ">", '"', "(", ")", "\\", ",", ";", ":", "@",
             "evil.example", "undisclosed-recipients:;", "Grüße aus München", "ошибка",
             "支付失败", "[CC-000001]", "<x@evil.example>", '"q@evil.example"@evil.example',
             "team: g1@evil.example, g2@evil.example;", "c1@evil.example (c2@evil.example)",
             "a@b@evil.example", "alice@evil.example)<bob@evil.example>", "r\u202eo@evil.example",
             "root@localhost", "lit@[127.0.0.1]"]


@st.composite
def encoded_word(draw: st.DrawFn) -> str:
    payload = draw(st.lists(st.sampled_from(BREAKS + INJECTIONS + FRAGMENTS), min_size=1,
                            max_size=4).map("".join)).encode("utf-8", "surrogatepass")
    charset = draw(st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "x-unknown", "utf-8*en"]))
    if draw(st.booleans()):
        return f"=?{charset}?q?{header_encode(payload).removeprefix('=?utf-8?q?').removesuffix('?=')}?="
    return f"=?{charset}?b?{base64.b64encode(payload).decode()}?="


PIECE = st.one_of(encoded_word(), st.sampled_from(BREAKS), st.sampled_from(INJECTIONS),
                  st.sampled_from(FRAGMENTS), st.text(max_size=12))
HUGE = st.sampled_from(["x" * 100_000, "=?utf-8?q?x" * 10_000, "a@b.example, " * 8_000,
                        "(" * 50_000, "=?utf-8?q?=C3=BC?= " * 5_000, "ü" * 60_000])
VALUE = st.one_of(st.lists(PIECE, min_size=1, max_size=8).map("".join),
                  st.tuples(HUGE, PIECE).map("".join))


counter = itertools.count(1)


def mail(values: dict[str, str], n: int) -> bytes:
    sender = f"c{n}@d{n}.example"
    lines = []
    for name in READ:
        value = values.get(name)
        if value is None and name == "From":
            value = f"Customer {n} <{sender}>"
        elif value is not None and name == "From" and n % 2:
            value = f"{value} <{sender}>"  # half the time a usable address after the junk
        elif value is None and name == "To":
            value = "support@example.com"
        elif value is None and name == "Message-ID":
            value = f"<p{n}@d{n}.example>"
        if value is not None:
            lines.append(f"{name}: {value}".encode("utf-8", "surrogatepass"))
    lines += [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8"]
    return b"\r\n".join(lines) + b"\r\n\r\nThe printer is on fire.\r\n"


def assert_ours(delivery, participants: set[str]) -> None:
    head, blank, _ = delivery.content.partition(b"\r\n\r\n")
    assert blank
    for line in head.split(b"\r\n"):
        assert re.fullmatch(rb"[A-Za-z-]+:( [^\r\n\x00]*)?|[ \t][^\r\n\x00]*", line), line
    msg = Parser(policy=email.policy.default).parsestr(
        delivery.content.decode("utf-8", "surrogateescape"))
    names = [name.lower() for name in msg.keys()]
    assert len(names) == len(set(names)) and set(names) <= OUR_HEADERS, names
    assert {"from", "to", "subject", "message-id", "date"} <= set(names)
    for name in ("from", "to", "reply-to"):
        if msg[name] is not None:
            defects = [d for d in msg[name].defects
                       if not isinstance(d, email.errors.NonASCIILocalPartDefect)]
            assert not defects, (name, defects)
            assert not msg[name].groups or all(g.display_name is None for g in msg[name].groups)
            for address in msg[name].addresses:
                check_address(address.addr_spec)
    to = {check_address(a.addr_spec) for a in msg["to"].addresses}
    assert to == {check_address(a) for a in delivery.rcpt_tos}
    assert set(delivery.rcpt_tos) <= participants | STAFF, delivery.rcpt_tos
    assert "\n" not in str(msg["subject"]) and "\r" not in str(msg["subject"])
    ref = str(msg["x-helpdesk-case"])
    assert re.fullmatch(r"[A-Z]{2}-\d{6}", ref) and ref in str(msg["subject"])
    assert msg.get_content_type() == "multipart/alternative"
    assert ref in msg.get_body(("plain",)).get_content()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(values=st.dictionaries(st.sampled_from(READ), VALUE, min_size=1, max_size=6),
       envelope=st.lists(st.one_of(st.just("support@example.com"), VALUE.map(lambda v: v[:300])),
                         max_size=2))
def test_hostile_header_values_never_break_the_mail_we_send(desk, values, envelope):
    n = next(counter)
    raw = mail(values, n)
    before = len(desk.mta.handler.envelopes)
    outcome = ingest_raw(desk.app, raw, source="smtp", source_key=f"prop-{n}",
                         envelope_recipients=tuple(envelope))
    deliver_all(desk.app)
    with desk.app.sessions() as session:  # nothing lost: every input is kept as it came
        row = session.scalar(select(Inbound).where(Inbound.source_key == f"prop-{n}"))
        assert row is not None and row.raw == raw
        participants = set(session.scalars(select(Participant.address)))
    assert outcome.status != "quarantined", outcome.reason
    for address in participants:
        check_address(address)
    for delivery in desk.mta.handler.envelopes[before:]:
        assert_ours(delivery, participants)
