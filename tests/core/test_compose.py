"""Issue 10: our outgoing headers come from checked values only, and building them is
linear in their length (helpdesk/mail/compose.py)."""
from __future__ import annotations

import email.policy
import time
from datetime import UTC, datetime
from email.parser import BytesParser

import pytest

from helpdesk.core.addresses import NotAnAddress
from helpdesk.mail.compose import Envelope, build

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def envelope(**changes) -> Envelope:
    values = dict(from_address="support@example.com", from_name="Example Support",
                  to=("ana@customer.example",), subject="Printer on fire",
                  message_id="helpdesk.1@example.com", in_reply_to="m1@customer.example",
                  references=("m1@customer.example",), reply_to="support+cc-1.k@example.com",
                  auto_submitted="auto-replied", loop_value="support@example.com",
                  case_ref="CC-000001")
    return Envelope(**{**values, **changes})


def head(raw: bytes) -> list[tuple[str, str]]:
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    return [(name.lower(), str(value)) for name, value in msg.items()]


@pytest.mark.parametrize("bad", [
    "=?utf-8?q?a=0D=0ABcc:_x=40evil.example?=@evil.example", "a\r\nbcc: x@evil.example",
    "a@b@evil.example", '"a@b"@evil.example', "r\u202eo@evil.example", "root@localhost"])
@pytest.mark.parametrize("field", ["to", "reply_to", "from_address"])
def test_an_address_that_is_not_one_is_never_written(bad, field):
    value = (bad,) if field == "to" else bad
    with pytest.raises(NotAnAddress):
        build(envelope(**{field: value}), "text", "", NOW)


def test_hostile_text_stays_one_harmless_line():
    raw = build(envelope(subject="Hi\r\nBcc: x@evil.example\r\n\r\nbody =?utf-8?q?=0A?=",
                         from_name="Support\r\nBcc: y@evil.example \u202eevil"), "text", "", NOW)
    headers = head(raw)
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)) and "bcc" not in names
    assert dict(headers)["subject"] == "Hi Bcc: x@evil.example body = ?utf-8?q?=0A?="
    assert dict(headers)["from"] == '"Support Bcc: y@evil.example evil" <support@example.com>'


def test_a_utf8_domain_goes_as_idna_and_a_utf8_local_part_makes_utf8_headers():
    seven_bit = build(envelope(to=("ana@bücher.example",)), "text", "", NOW)
    assert seven_bit.isascii() and b"To: ana@xn--bcher-kva.example\r\n" in seven_bit
    utf8 = build(envelope(to=("jürgen@münchen.example", "ana@bücher.example")), "t", "", NOW)
    assert "To: jürgen@münchen.example, ana@bücher.example\r\n".encode() in utf8
    assert b"=?utf-8?" not in utf8.split(b"\r\n\r\n")[0]  # no encoded-word in an address


def test_a_mail_without_a_message_id_is_not_answered_with_a_false_one():
    raw = build(envelope(in_reply_to="sha256:abc", references=("sha256:abc",)), "t", "", NOW)
    names = [name for name, _ in head(raw)]
    assert "in-reply-to" not in names and "references" not in names


def _seconds(subject: str) -> float:
    started = time.perf_counter()
    build(envelope(subject=subject, from_name=subject), "text", "", NOW)
    return time.perf_counter() - started


@pytest.mark.parametrize("unit", ["word ", "ü ", "ü", "x"])
def test_building_a_header_is_linear_in_its_length(unit):
    # The email package folds in quadratic time: 128 KB of "ü " took 2.7 s, 1 MB minutes.
    small = min(_seconds(unit * (100_000 // len(unit))) for _ in range(2))
    large = min(_seconds(unit * (1_000_000 // len(unit))) for _ in range(2))
    assert large < 30 * max(small, 0.01), (small, large)
