"""Issue 5: two helpdesks, each the other's customer, must not mail each other forever.

A (support@a.example) and B (support@b.example) share one recording MTA. A pump hands
whatever one sends to the other's support address over to the other's ``ingest``, until
nothing new is sent. One mail from A's support address to B starts it.
"""
from __future__ import annotations

import email
import email.policy
import logging
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from helpdesk.mail.parsing import parse_message
from helpdesk.store.orm import Event, Inbound
from tests.servers.helpdesk import make_mail

MAX_ROUNDS = 20  # far more than a healthy exchange needs; a loop would hit it


def instance(desk_factory, name: str):
    domain = f"{name}.example"
    return desk_factory(
        name,
        helpdesk={"name": f"{name.upper()} Support", "address": f"support@{domain}",
                  "domain": domain},
        staff=[f"agent@{domain}"],
        categories={
            "customer_care": {"addresses": [f"support@{domain}"]},
            "connections": {"addresses": [f"connections@{domain}"],
                            "notify": [f"connectivity@{domain}"]},
            "billing": {"addresses": [f"billing@{domain}"]},
        },
    )


def pump(desks: dict[str, object], seed_to: str, seed: bytes,
         strip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Deliver the seed, then every mail an instance sends to the other's support address,
    until quiet. Returns the path of each delivered mail as (from, to)."""
    mta = next(iter(desks.values())).mta
    queue = [(seed_to, seed)]
    path: list[tuple[str, str]] = []
    seen = len(mta.handler.envelopes)
    for _ in range(MAX_ROUNDS):
        if not queue:
            return path
        to, raw = queue.pop(0)
        desks[to].ingest(raw, source="pump")
        path.append((raw_sender(raw), to))
        new, seen = mta.handler.envelopes[seen:], len(mta.handler.envelopes)
        for delivery in new:
            for address in delivery.rcpt_tos:
                mailbox = base_address(address)  # support+CC-1.token@b -> support@b
                if mailbox in desks:
                    queue.append((mailbox, stripped(delivery.content, strip)))
    raise AssertionError(f"the exchange did not stop: {path}")


def base_address(address: str) -> str:
    local, _, domain = address.lower().partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def raw_sender(raw: bytes) -> str:
    return parse_message(raw).sender


def stripped(raw: bytes, names: tuple[str, ...]) -> bytes:
    """The mail as a header-dropping relay would pass it on (e.g. some phone gateways)."""
    if not names:
        return raw
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    for name in names:
        del msg[name]
    return msg.as_bytes()


def sent_by(desk) -> list[EmailMessage]:
    """What this instance sent (the MTA is shared: tell them apart by From)."""
    ours = desk.app.settings.helpdesk.domain
    return [m for m in desk.sent() if m["From"].addresses[0].domain == ours]


def inbound(desk) -> list[Inbound]:
    with desk.app.sessions() as session:
        return list(session.scalars(select(Inbound).where(Inbound.source == "pump")
                                    .order_by(Inbound.id)))


def events(desk) -> list[tuple[str, dict]]:
    with desk.app.sessions() as session:
        return [(e.type, e.detail) for e in session.scalars(select(Event).order_by(Event.id))]


@pytest.fixture
def pair(desk_factory):
    a, b = instance(desk_factory, "a"), instance(desk_factory, "b")
    return a, b, {"support@a.example": a, "support@b.example": b}


def seed() -> bytes:
    return make_mail("A Support <support@a.example>", "support@b.example",
                     "Question from your partner", "Hello B, can you help?\n")


def test_two_helpdesks_answering_each_other_stop_by_themselves(pair, caplog):
    a, b, desks = pair
    caplog.set_level(logging.INFO, logger="helpdesk.inbound.ingest")
    path = pump(desks, "support@b.example", seed())

    a_to_b = [p for p in path if p == ("support@a.example", "support@b.example")]
    b_to_a = [p for p in path if p == ("support@b.example", "support@a.example")]
    assert 1 <= len(a_to_b) <= 2 and len(b_to_a) <= 2, path

    # B: the seed looked human, so it opened a case and acknowledged it -- marked as an
    # automatic answer (RFC 3834), which is why A will not answer in turn
    [seeded] = inbound(b)
    assert (seeded.status, seeded.outcome) == ("done", "new_case")
    [ack] = b.sent_to("support@a.example")
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Helpdesk-Loop"] == "support@b.example"
    case = b.case("CC-000001")
    assert [m["kind"] for m in case["messages"]] == ["new", "ack", "staff_notice"]
    assert [e["type"] for e in case["events"]] == ["created"]

    # A: B's acknowledgement is machine mail: recorded, opened nothing, answered nobody
    [answer] = inbound(a)
    assert (answer.status, answer.outcome, answer.case_id) == ("done", "machine", None)
    why = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith(f"MACHINE inbound={answer.id} ")]
    assert why and "auto-submitted: auto-replied" in why[-1], caplog.text
    assert sent_by(a) == []


def test_loop_stops_even_when_a_relay_strips_the_auto_headers(pair):
    """Defence in depth: with Auto-Submitted, Precedence and X-Auto-Response-Suppress
    dropped on the way, B's ack looks human to A, which opens a case and acknowledges it;
    that ack threads into B's case as a reply, and a reply is never auto-answered. Still
    at most two mails each way, and the side that got the last mail records it."""
    a, b, desks = pair
    path = pump(desks, "support@b.example", seed(),
                strip=("Auto-Submitted", "Precedence", "X-Auto-Response-Suppress"))
    a_to_b = [p for p in path if p == ("support@a.example", "support@b.example")]
    b_to_a = [p for p in path if p == ("support@b.example", "support@a.example")]
    assert len(a_to_b) <= 2 and len(b_to_a) <= 2, path
    for desk in (a, b):
        assert inbound(desk) and all(r.status == "done" for r in inbound(desk))
    last_to = desks[path[-1][1]]
    last = inbound(last_to)[-1]
    assert last.outcome in ("machine", "reply", "duplicate", "rejected"), last.outcome
    # it threaded into the case its own ack started, and went to staff only
    assert last.case_id is not None
    kinds = [m["kind"] for m in last_to.case("CC-000001")["messages"]]
    assert kinds[-1] in ("staff_notice", "reply", "machine"), kinds
    print("\n" + " -> ".join(f"{f}=>{t}" for f, t in path))
    for desk in (a, b):
        print(desk.app.settings.helpdesk.address, [r.outcome for r in inbound(desk)])


def test_their_ack_with_our_own_loop_header_is_never_answered(pair):
    """A mail that carries A's own loop header (e.g. A's mail quoted back by a forwarder
    that keeps headers) is machine mail for A whatever else it says."""
    a, _, _ = pair
    raw = make_mail("someone@c.example", "support@a.example", "Fwd: your mail",
                    headers={"X-Helpdesk-Loop": "support@a.example"})
    assert a.ingest(raw).status == "machine"
    assert sent_by(a) == []


def test_the_other_helpdesk_on_cc_gets_our_ack_and_stays_quiet(pair):
    """A customer copies B's support address on a mail to A: A's ack reaches B, which
    must treat it as machine mail (no case, no answer)."""
    a, b, _ = pair
    a.ingest(make_mail("Cust <cust@customer.example>", "support@a.example", "Need help",
                       cc=["support@b.example"]))
    [to_b] = [d for d in a.mta.handler.envelopes if "support@b.example" in d.rcpt_tos]
    outcome = b.ingest(to_b.content, source="pump")
    assert (outcome.status, outcome.ref) == ("machine", None)
    assert "auto-submitted" in outcome.reason
    assert sent_by(b) == []
