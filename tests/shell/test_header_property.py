"""Issue 10: hostile values in every header we read, through the real pipeline (ingest into
a desk, deliver to the recording MTA), never break the mail we send (SPEC, Round 2: Trust).

Each example is one stranger, c<n>@d<n>.example, writing to support@example.com with
hostile values in some of the headers we read, and perhaps an attachment with a hostile
name. What they should get is known before the mail goes in:
- a person's mail opens a case: the stranger gets one acknowledgement and the staff one
  notice, both of that case, and nobody gets anything of another case;
- a mail that says a machine wrote it (any one of ``AUTOMATIC``) is answered by nobody.
A hostile value may end the header block early (CR LF CR LF in any spelling), so the
headers that decide which of the two it is come first, and the hostile ones after them.

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
from email.message import EmailMessage
from email.parser import Parser
from email.quoprimime import header_encode
from urllib.parse import quote

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from helpdesk.core.addresses import check_address
from helpdesk.inbound.ingest import ingest_raw
from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Inbound, Participant
from tests.shell.test_addresses_and_headers import OUR_HEADERS

STAFF = {"agent@example.com"}

# Read on every mail (helpdesk/mail/parsing.py, mail/bounce.py, core/trust.py), any value
# at all; the ones that can also say "a machine wrote this" begin with a word that does
# not (``HARMLESS``), then anything.
READ = ["To", "Cc", "Reply-To", "Sender", "Return-Path", "Subject", "Message-ID",
        "In-Reply-To", "References", "Delivered-To", "X-Original-To", "Date", "Received",
        "Authentication-Results", "X-Original-Message-ID", "Auto-Submitted", "Precedence",
        "X-Precedence", "X-Auto-Response-Suppress"]
HARMLESS = {"Return-Path": "<bounces@sender.example> ", "Auto-Submitted": "no; ",
            "Precedence": "first-class ", "X-Precedence": "normal ",
            "X-Auto-Response-Suppress": "DR, RN "}
# Any one of these says a machine wrote the mail (RFC 3834, RFC 2369 and 2919, ezmlm,
# vacation programs, Exim's bounces, Microsoft's suppression), whatever follows the word
# that says so (core/classify.py). Return-Path says it only as the null sender.
AUTOMATIC = {"Auto-Submitted": "auto-replied; ", "Precedence": "bulk; ", "X-Precedence": "junk; ",
             "X-Auto-Response-Suppress": "All, ", "X-Autoreply": "", "X-Autorespond": "",
             "List-Id": "", "List-Unsubscribe": "", "Mailing-List": "", "X-Loop": "",
             "X-Failed-Recipients": "", "Return-Path": "<>"}

BREAKS = ["\r\n", "\n", "\r", "\r\n ", "\n\n", "\r\n\r\n", "\x00", "\u2028", "\u0085",
          "\u202e", "\u2066", "\u200b", "\ufeff"]
INJECTIONS = ["Bcc: x@evil.example", "To: y@evil.example", "\r\n\r\nInjected body",
              "Content-Type: text/html", "X-Evil: 1"]
FRAGMENTS = ["=?utf-8?q?", "?=", "=?", "<", ">", '"', "(", ")", "\\", ",", ";", ":", "@",
             "evil.example", "undisclosed-recipients:;", "Grüße aus München", "ошибка",
             "支付失败", "[CC-000001]", "<x@evil.example>", '"q@evil.example"@evil.example',
             "team: g1@evil.example, g2@evil.example;", "c1@evil.example (c2@evil.example)",
             "a@b@evil.example", "alice@evil.example)<bob@evil.example>", "r\u202eo@evil.example",
             "root@localhost", "lit@[127.0.0.1]", "invoice\u202efdp.exe", "../../etc/passwd"]


@st.composite
def encoded_word(draw: st.DrawFn) -> str:
    payload = draw(st.lists(st.sampled_from(BREAKS + INJECTIONS + FRAGMENTS), min_size=1,
                            max_size=4).map("".join)).encode("utf-8", "surrogatepass")
    charset = draw(st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "x-unknown", "utf-8*en"]))
    if draw(st.booleans()):
        words = header_encode(payload).removeprefix("=?utf-8?q?").removesuffix("?=")
        return f"=?{charset}?q?{words}?="
    return f"=?{charset}?b?{base64.b64encode(payload).decode()}?="


PIECE = st.one_of(encoded_word(), st.sampled_from(BREAKS), st.sampled_from(INJECTIONS),
                  st.sampled_from(FRAGMENTS), st.text(max_size=12))
HUGE = st.sampled_from(["x" * 100_000, "=?utf-8?q?x" * 10_000, "a@b.example, " * 8_000,
                        "(" * 50_000, "=?utf-8?q?=C3=BC?= " * 5_000, "ü" * 60_000])
VALUE = st.one_of(st.lists(PIECE, min_size=1, max_size=8).map("".join),
                  st.tuples(HUGE, PIECE).map("".join))
# The From: the stranger's address after a display name that is an encoded-word of
# anything (the address must be found), first in a list that goes on with anything (it
# must be answered), or after raw hostile text (which may name other addresses first, or
# swallow the stranger's: whoever it names first is answered, if anybody).
FROM = st.tuples(st.sampled_from(["word", "list", "raw"]), VALUE, encoded_word()).map(
    lambda t: (t[0], t[2] if t[0] == "word" else t[1]))
# An attachment whose name is hostile, in each place a mail client writes one.
ATTACHMENT_NAME = st.sampled_from(['Content-Type: application/pdf; name="{}"',
                                   'Content-Disposition: attachment; filename="{}"',
                                   "Content-Disposition: attachment; filename={}",
                                   "Content-Disposition: attachment; filename*=utf-8''{}"])
ATTACHMENT = st.tuples(ATTACHMENT_NAME, VALUE)


# Now and then the mark of a machine, and a hostile value after it.
MARKED = st.one_of(st.none(), st.none(), st.tuples(st.sampled_from(sorted(AUTOMATIC)), VALUE))

counter = itertools.count(1)


def mail(n: int, sender: str, values: dict[str, str], automatic: tuple[str, str] | None,
         from_: tuple[str, str] | None, attachment: tuple[str, str] | None) -> bytes:
    """The headers that decide what the mail is come first: the machine's mark, which no
    value after it can undo, then From (a hostile From may end the header block: the
    stranger is still the one who wrote)."""
    head = []
    if automatic is not None:
        name, value = automatic
        head.append(f"{name}: {AUTOMATIC[name]}{value if name != 'Return-Path' else ''}")
    form, junk = from_ or ("", "")
    head.append({"": f"From: Customer {n} <{sender}>", "word": f"From: {junk} <{sender}>",
                 "list": f"From: {sender}, {junk}", "raw": f"From: {junk} <{sender}>"}[form])
    head += ["To: support@example.com"] * ("To" not in values)
    head += [f"Message-ID: <p{n}@d{n}.example>"] * ("Message-ID" not in values)
    head += ["MIME-Version: 1.0", f'Content-Type: multipart/mixed; boundary="b{n}"']
    head += [f"{name}: {HARMLESS.get(name, '')}{value}" for name, value in values.items()]
    parts = [f"--b{n}", "Content-Type: text/plain; charset=utf-8", "",
             "The printer is on fire.", f"--b{n}"]
    if attachment is not None:
        where, name = attachment
        name = quote(name) if "*=" in where else name
        if where.startswith("Content-Type"):
            parts += [where.format(name), "Content-Disposition: attachment"]
        else:
            parts += ["Content-Type: application/pdf", where.format(name)]
        parts += ["Content-Transfer-Encoding: base64", "", "JVBERi0xLjQK", f"--b{n}"]
    parts[-1] += "--"
    return "\r\n".join([*head, "", *parts, ""]).encode("utf-8", "surrogatepass")


def assert_ours(delivery, participants: set[str]) -> EmailMessage:
    head, blank, _ = delivery.content.partition(b"\r\n\r\n")
    assert blank
    for line in head.split(b"\r\n"):
        assert re.fullmatch(rb"[A-Za-z-]+:( [^\r\n\x00]*)?|[ \t][^\r\n\x00]*", line), line
    msg = Parser(policy=email.policy.default).parsestr(
        delivery.content.decode("utf-8", "surrogateescape"))
    names = [name.lower() for name in msg]
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
    return msg


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(values=st.dictionaries(st.sampled_from(READ), VALUE, max_size=6),
       automatic=MARKED,
       from_=st.none() | FROM, attachment=st.none() | ATTACHMENT,
       envelope=st.lists(st.one_of(st.just("support@example.com"), VALUE.map(lambda v: v[:300])),
                         max_size=2))
def test_hostile_header_values_never_break_the_mail_we_send(desk, values, automatic, from_,
                                                            attachment, envelope):
    n = next(counter)
    sender = f"c{n}@d{n}.example"
    raw = mail(n, sender, values, automatic, from_, attachment)
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
    sent = desk.mta.handler.envelopes[before:]
    mails = [assert_ours(delivery, participants) for delivery in sent]

    # What the stranger and the staff see. A Message-ID of theirs that an earlier
    # example used already is the same mail again (nothing new to answer).
    again = "Message-ID" in values and outcome.status == "duplicate"
    event(f"{'automatic' if automatic else (from_ or ('plain',))[0] + ' From'}: "
          f"{outcome.status}")
    if automatic is not None:
        assert outcome.status in {"machine", "bounce"} or again, outcome
        assert sent == [], "a machine's mail is answered by nobody"
        return
    if again or outcome.status == "ignored" and from_ and from_[0] == "raw":
        assert sent == []  # the same mail again, or no usable From in the junk
        return
    requester = desk.case(outcome.ref)["requester"] if outcome.ref else None
    if from_ and from_[0] == "raw" and requester != sender:
        # An address of the junk's own was named first: answered like anyone (within
        # the limits on what one address is sent), never anybody else.
        assert outcome.status in {"new_case", "held"}, outcome
        assert {r for d in sent for r in d.rcpt_tos} <= {requester, *STAFF} | participants
        return
    assert outcome.status == "new_case" and requester == sender, outcome
    to_sender = [m for m, d in zip(mails, sent) if sender in d.rcpt_tos]
    to_staff = [m for m, d in zip(mails, sent) if STAFF & set(d.rcpt_tos)]
    assert [m["Auto-Submitted"] for m in to_sender] == ["auto-replied"], "one acknowledgement"
    assert len(to_staff) == 1, "one staff notice"
    assert {str(m["X-Helpdesk-Case"]) for m in mails} == {outcome.ref}
