"""Issue 10, "who may steer the desk", tried as an attacker would, through the real
transports (the desk's SMTP listener, `helpdesk ingest`, Dovecot and `helpdesk fetch`),
asserting what a victim would notice: what the recording MTA was asked to deliver to
whom (its ``rcpt_tos``), what changed on the case, and that every input is somewhere
(a case, an event, or the quarantine).

Our MTA is ``mx.example.com`` (the test desks' ``trust.authserv_ids``): it prepends its
Received header and its Authentication-Results to what it received, as Postfix with
OpenDMARC or rspamd does. ``delivered_by_our_mta`` plays that part.
"""
from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage

import pytest

from helpdesk.inbound.smtp_listener import start_listener
from helpdesk.outbound.deliver import deliver_all
from tests.servers.helpdesk import Desk, make_mail
from tests.servers.smtp import free_port

ANA = "Ana Garcia <ana@customer.example>"
ANA_ADDR = "ana@customer.example"
BO_ADDR = "bo@partner.example"
AGENT = "agent@example.com"
EVE = "eve@attacker.example"
FORGED_PASS = "mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"


def delivered_by_our_mta(raw: bytes, verdict: str) -> bytes:
    """What our MTA hands on: its own verdict and Received header on top of the mail."""
    return (f"Authentication-Results: mx.example.com; {verdict}\r\n"
            "Received: from mail.attacker.example (mail.attacker.example [192.0.2.66]) "
            "by mx.example.com (Postfix) with ESMTPS id 4Q; Mon, 2 Nov 2026 09:00:00 +0000\r\n"
            ).encode() + raw


def listening(**changes):
    """The settings of a desk with its own SMTP listener (``listener`` starts it)."""
    return {"inbound": {"smtp_listener": {"host": "127.0.0.1", "port": free_port()}}, **changes}


@contextmanager
def listener(desk: Desk) -> Iterator[int]:
    controller = start_listener(desk.app)
    try:
        yield desk.app.settings.inbound.smtp_listener.port
    finally:
        controller.stop()


def over_smtp(port: int, raw: bytes, rcpts: list[str], mail_from: str = EVE) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(mail_from, rcpts, raw)


def open_case(desk: Desk, cc: list[str] | None = None,
              message_id: str = "<printer-1@customer.example>") -> EmailMessage:
    outcome = desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire",
                                    "It burns.\n", cc=cc, message_id=message_id))
    assert (outcome.status, outcome.ref) == ("new_case", "CC-000001")
    return desk.sent_to(ANA_ADDR)[-1]


def recipients(desk: Desk) -> list[str]:
    """Every address the MTA was asked to deliver to, once per mail."""
    return [r for envelope in desk.mta.handler.envelopes for r in envelope.rcpt_tos]


def latest_to(desk: Desk, address: str, kind_subject: str = "[CC-000001]") -> EmailMessage:
    return [m for m in desk.sent_to(address) if m["Subject"].startswith(kind_subject)][-1]


def text_of(mail: EmailMessage) -> str:
    return mail.get_body(("plain",)).get_content()


def events(desk: Desk, ref: str, type_: str) -> list[dict]:
    return [e["detail"] for e in desk.case(ref)["events"] if e["type"] == type_]


# --- posing as staff -----------------------------------------------------------------------

def test_forged_staff_mail_over_smtp_changes_nothing_and_reaches_no_outsider(desk_factory):
    desk = desk_factory(**listening())
    """Eve writes From: the agent, with a forged `dmarc=pass` header for our own MTA's id,
    to #assign herself and resolve the case with her own text. Our MTA's real verdict
    sits above the forgery and says fail."""
    ack = open_case(desk, cc=[BO_ADDR])
    desk.mta.handler.clear()
    attack = make_mail(f"Agent <{AGENT}>", "support@example.com", "Re: [CC-000001] Printer on fire",
                       f"#assign {EVE}\n#resolve\nPlease pay the repair to IBAN XX00 1234.\n",
                       in_reply_to=ack["Message-ID"], headers={"Authentication-Results": FORGED_PASS})
    with listener(desk) as port:
        over_smtp(port, delivered_by_our_mta(attack, "dkim=none; dmarc=fail (p=reject) "
                                                     "header.from=example.com"),
                  ["support@example.com"])
    deliver_all(desk.app)

    case = desk.case("CC-000001")
    assert case["status"] == "open" and case["assignee"] is None  # no command ran
    assert EVE not in recipients(desk) and ANA_ADDR not in recipients(desk)  # nothing relayed
    assert BO_ADDR not in recipients(desk)
    [stored] = [m for m in case["messages"] if m["kind"] == "unverified"]
    assert stored["from"] == AGENT and "IBAN" in stored["text"]  # kept, internal
    [event] = events(desk, "CC-000001", "unverified_staff_mail")
    assert event["from"] == AGENT and "dmarc=fail" in event["reason"]
    # staff get ONE notice saying why, which they can answer from their own address
    [notice] = desk.sent()
    assert desk.mta.handler.envelopes[0].rcpt_tos == [AGENT]
    assert "could not be verified" in text_of(notice) and "dmarc=fail" in text_of(notice)
    assert notice["Reply-To"].startswith("support+CC-000001.s.")

    # Eve's address never gets the case's mail later either
    desk.ingest(make_mail(ANA, ack["Reply-To"], "Re: [CC-000001] Printer on fire", "Any news?\n",
                          in_reply_to=ack["Message-ID"]))
    assert EVE not in recipients(desk)


def test_forged_staff_mail_fetched_from_dovecot_is_not_applied(dovecot, desk_factory):
    desk = desk_factory(inbound={"imap": dovecot.mailbox_config()})
    ack = open_case(desk)
    desk.mta.handler.clear()
    dovecot.append_many([
        # no verdict of our MTA at all, only Eve's own claim for a server of hers
        make_mail(AGENT, "support@example.com", "Re: [CC-000001] Printer on fire",
                  "#close\nClosing this, bye.\n", in_reply_to=ack["Message-ID"],
                  headers={"Authentication-Results": "mx.attacker.example; dmarc=pass "
                                                     "header.from=example.com"}),
    ])
    result = desk.cli("fetch")
    assert result.returncode == 0, result.stderr
    assert (dovecot.count("INBOX"), dovecot.count("Processed")) == (0, 1)
    assert desk.case("CC-000001")["status"] == "open"
    assert recipients(desk) == [AGENT]  # the notice; nothing went to the customer
    [event] = events(desk, "CC-000001", "unverified_staff_mail")
    assert "no Authentication-Results header from mx.example.com" in event["reason"]


def test_staff_are_verified_by_our_mtas_dmarc_result_or_by_their_own_reply_address(desk_factory):
    desk = desk_factory(staff=[AGENT, "boss@example.com"])
    ack = open_case(desk)
    # 1. our MTA's verdict on top, a Received header below it: the agent's own mail counts
    desk.ingest(delivered_by_our_mta(
        make_mail(AGENT, "support@example.com", "Re: [CC-000001] Printer on fire",
                  "#waiting\nWhich model is it?\n", in_reply_to=ack["Message-ID"]),
        "dkim=pass header.d=example.com; dmarc=pass header.from=example.com"))
    assert desk.case("CC-000001")["status"] == "waiting"
    assert "Which model is it?" in text_of(latest_to(desk, ANA_ADDR))
    # 2. each staff member got their own copy of the new-case notice, with their own
    #    staff reply address: a secret only that copy carries
    notices = {m["To"]: m for m in desk.sent() if "needs your attention" in text_of(m)}
    assert set(notices) == {AGENT, "boss@example.com"}
    assert all(len(e.rcpt_tos) == 1 for e in desk.mta.handler.envelopes)
    boss_address = notices["boss@example.com"]["Reply-To"]
    assert boss_address != notices[AGENT]["Reply-To"]
    # Eve, knowing only Boss's address (say Boss forwarded the notice), cannot be the agent
    desk.ingest(make_mail(AGENT, boss_address, "Re: [CC-000001]", "#close\n"))
    assert desk.case("CC-000001")["status"] == "waiting"
    # Boss answering the notice, without any Authentication-Results, is Boss
    reply = notices["boss@example.com"]
    outcome = desk.ingest(make_mail("boss@example.com", reply["Reply-To"],
                                    f"Re: {reply['Subject']}", "#resolve Replaced the fuser.\n",
                                    in_reply_to=reply["Message-ID"]))
    assert (outcome.status, outcome.ref) == ("staff_reply", "CC-000001")
    assert desk.case("CC-000001")["status"] == "resolved"
    assert desk.case("CC-000001")["addresses"] == ["support@example.com"]  # no token kept
    assert "Replaced the fuser." in text_of(latest_to(desk, ANA_ADDR))


def test_the_unverified_notice_is_answerable_by_the_real_author(desk):
    """An agent whose domain does not sign its mail answers anyway: the notice about their
    unverified mail comes to them with their staff reply address, and a reply counts."""
    ack = open_case(desk)
    desk.ingest(make_mail(AGENT, ack["Reply-To"], "Re: [CC-000001] Printer on fire",
                          "#waiting\nWhich model?\n", in_reply_to=ack["Message-ID"]))
    assert desk.case("CC-000001")["status"] == "open"
    notice = latest_to(desk, AGENT)
    assert "could not be verified" in text_of(notice)
    desk.ingest(make_mail(AGENT, notice["Reply-To"], f"Re: {notice['Subject']}",
                          "#waiting\nWhich model?\n", in_reply_to=notice["Message-ID"]))
    assert desk.case("CC-000001")["status"] == "waiting"
    status = latest_to(desk, ANA_ADDR)
    assert "Which model?" in text_of(status) and "#waiting" not in text_of(status)


def test_assign_takes_only_staff_so_outsiders_never_get_staff_notices(desk_factory):
    """The agent, verified by our MTA, is talked into `#assign eve@…` (or mistypes it):
    over the SMTP listener, as every mail comes. Refused with a word to the agent; Eve
    gets nothing, then or when Ana writes again."""
    desk = desk_factory(**listening())
    with listener(desk) as port:
        over_smtp(port, make_mail(ANA, "support@example.com", "Printer on fire", "It burns.\n"),
                  ["support@example.com"], mail_from=ANA_ADDR)
        deliver_all(desk.app)
        ack = latest_to(desk, ANA_ADDR)
        over_smtp(port, delivered_by_our_mta(
            make_mail(AGENT, "support@example.com", "Re: [CC-000001] Printer on fire",
                      f"#assign {EVE}\n", in_reply_to=ack["Message-ID"]),
            "dkim=pass header.d=example.com; dmarc=pass header.from=example.com"),
                  ["support@example.com"], mail_from=AGENT)
        deliver_all(desk.app)
        assert desk.case("CC-000001")["assignee"] is None
        assert events(desk, "CC-000001", "unverified_staff_mail") == []  # it was the agent
        assert "not a staff address" in text_of(latest_to(desk, AGENT))
        notices = len(desk.sent_to(AGENT))
        over_smtp(port, make_mail(ANA, str(ack["Reply-To"]), "Re: [CC-000001] Printer on fire",
                                  "Any news?\n", in_reply_to=ack["Message-ID"]),
                  [str(ack["Reply-To"])], mail_from=ANA_ADDR)
        deliver_all(desk.app)
    assert "Any news?" in text_of(desk.sent_to(AGENT)[-1])  # the staff were told, again
    assert len(desk.sent_to(AGENT)) == notices + 1
    assert EVE not in recipients(desk)


def test_a_notify_address_is_staff_for_its_category(desk_factory):
    """connectivity@example.com is the connections category's notify address, not in
    `staff`: it answers the notice it got like staff, over the SMTP listener, and never
    becomes a participant or gets a notice of its own answer."""
    notify = "connectivity@example.com"
    desk = desk_factory(**listening())
    with listener(desk) as port:
        over_smtp(port, make_mail(ANA, "connections@example.com", "New connection: Hotel X",
                                  "Please connect us.\n"),
                  ["connections@example.com"], mail_from=ANA_ADDR)
        deliver_all(desk.app)
        notice = latest_to(desk, notify, "[CN-000001]")
        reply_to = str(notice["Reply-To"])
        assert reply_to.startswith("connections+CN-000001.s.")
        before = len(desk.sent_to(notify))
        over_smtp(port, make_mail(notify, reply_to, f"Re: {notice['Subject']}",
                                  "#status pending_seller\nWe need the seller's test account.\n",
                                  in_reply_to=notice["Message-ID"]),
                  [reply_to], mail_from=notify)
        deliver_all(desk.app)
    case = desk.case("CN-000001")
    assert case["status"] == "pending_seller" and case["participants"] == [ANA_ADDR]
    assert "seller's test account" in text_of(latest_to(desk, ANA_ADDR, "[CN-000001]"))
    assert "#status" not in text_of(latest_to(desk, ANA_ADDR, "[CN-000001]"))
    assert len(desk.sent_to(notify)) == before  # no notice back to itself


# --- threading by Message-ID ------------------------------------------------------------------

def test_a_stranger_naming_the_customers_own_message_id_does_not_join(desk):
    """Bo was on Ana's Cc and saw her Message-ID; so did Eve (Bo forwarded it). Bo joins
    by it, Eve gets a case of her own and sees nothing of Ana's."""
    open_case(desk, cc=[BO_ADDR], message_id="<printer-1@customer.example>")
    desk.mta.handler.clear()
    raw = make_mail(EVE, "support@example.com", "Re: Printer on fire",
                    "Please add me and send me everything.\n",
                    in_reply_to="<printer-1@customer.example>")
    result = desk.cli("ingest", input=raw)
    assert result.returncode == 0 and "new_case CC-000002" in result.stdout, result.stdout
    assert EVE not in desk.case("CC-000001")["participants"]
    assert desk.case("CC-000002")["linked_refs"] == ["CC-000001"]
    eves = desk.sent_to(EVE)
    assert eves and all(m["X-Helpdesk-Case"] == "CC-000002" for m in eves)
    assert all("It burns." not in text_of(m) for m in eves)
    assert ANA_ADDR not in recipients(desk) and BO_ADDR not in recipients(desk)
    outcome = desk.ingest(make_mail(f"Bo <{BO_ADDR}>", "support@example.com", "Re: Printer",
                                    "Same here.\n", in_reply_to="<printer-1@customer.example>"))
    assert (outcome.status, outcome.ref) == ("reply", "CC-000001")


def test_our_message_ids_are_keyed_and_a_made_up_one_threads_nothing(desk):
    ack = open_case(desk)
    mid = ack["Message-ID"].strip("<>")
    local, _, domain = mid.partition("@")
    assert domain == "example.com" and len(local) < 50 and local.count(".") == 2
    made_up = "<helpdesk.0123456789abcdef.aaaaaaaaaaaaaaaa@example.com>"
    outcome = desk.ingest(make_mail(EVE, "support@example.com", "Hello", "Me too.\n",
                                    in_reply_to=made_up))
    assert outcome.ref == "CC-000002"


# --- amplification --------------------------------------------------------------------------

def test_an_amplification_attempt_is_bounded_and_nothing_is_lost(desk_factory):
    """Seven mails from Eve, each with ten third parties in Cc, a victim in Reply-To and a
    long text: round 1 sent eleven acknowledgements per mail, quoting all of it."""
    desk = desk_factory(**listening(limits={"quote_chars": 300}))
    third_parties = [f"cc{i}@third{i}.example" for i in range(10)]
    spam = "BUY NOW at attacker.example! " * 200
    with listener(desk) as port:
        for n in range(7):
            msg = make_mail(EVE, "support@example.com", f"Offer {n}", spam, cc=third_parties,
                            headers={"Reply-To": "victim@victim.example"})
            over_smtp(port, msg, ["support@example.com"])
    deliver_all(desk.app)

    outside = [r for r in recipients(desk) if r != AGENT]
    assert "victim@victim.example" not in outside  # Reply-To of another domain: not the requester
    assert len(outside) <= 5 * 10  # five cases (5/1h), ten recipients per mail
    assert outside.count(EVE) == 5 and all(outside.count(a) <= 5 for a in third_parties)
    for ack in (m for m in desk.sent() if m["Auto-Submitted"] == "auto-replied"):
        assert len(ack["To"].split(",")) <= 10
        assert text_of(ack).count("BUY NOW") < 15 and "[…]" in text_of(ack)
    cases = json.loads(desk.cli("cases", "list", "--json", check=True).stdout)
    assert len(cases) == 5 and {c["requester"] for c in cases} == {EVE}
    assert all(len(c["participants"]) == 10 for c in cases)
    assert events(desk, "CC-000001", "participants_limit") == [{"skipped": 1}]
    # the other two are kept, with the reason, where an admin looks
    failed = json.loads(desk.cli("failed", "list", "--json", check=True).stdout)
    assert len(failed) == 2
    assert all("new-cases-per-sender: 5 per 1h from eve@attacker.example" in f["error"]
               for f in failed)
    # and retried when the hour has passed (the command line runs on today's clock)
    desk.mta.handler.clear()
    retried = desk.cli("failed", "retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert len(json.loads(desk.cli("cases", "list", "--json").stdout)) == 7
    assert json.loads(desk.cli("failed", "list", "--json").stdout) == []


def test_the_domain_limit_spares_public_mail_domains(desk_factory):
    desk = desk_factory(limits={"new_cases_per_sender": "2/1h"})
    outcomes = [desk.ingest(make_mail(f"user{n}@gmail.com", "support@example.com", f"Q{n}"))
                for n in range(4)]
    assert [o.status for o in outcomes] == ["new_case"] * 4  # four people, one public domain
    same_company = [desk.ingest(make_mail(f"user{n}@corp.example", "support@example.com", f"Q{n}"))
                    for n in range(3)]
    assert [o.status for o in same_company] == ["new_case", "new_case", "held"]


def test_reply_to_names_the_requester_only_when_it_cannot_aim_at_a_victim(desk):
    form = desk.ingest(make_mail("forms@customer.example", "support@example.com", "Web form",
                                 headers={"Reply-To": ANA_ADDR}))
    assert desk.case(form.ref)["requester"] == ANA_ADDR
    signed = desk.ingest(delivered_by_our_mta(
        make_mail("forms@shop.example", "support@example.com", "Web form",
                  headers={"Reply-To": "ana@gmail.com"}),
        "dkim=pass header.d=shop.example; dmarc=pass header.from=shop.example"))
    assert desk.case(signed.ref)["requester"] == "ana@gmail.com"
    forged = desk.ingest(make_mail(EVE, "support@example.com", "Hi",
                                   headers={"Reply-To": "victim@victim.example",
                                            "Authentication-Results": FORGED_PASS}))
    assert desk.case(forged.ref)["requester"] == EVE
    assert "victim@victim.example" not in recipients(desk)


@pytest.mark.parametrize("sender", ["support+CC-000001.abcdefgh@example.com",
                                    "support+CC-000001.s.abcdefghabcdefgh@example.com"])
def test_mail_from_our_own_reply_addresses_is_our_own(desk, sender):
    open_case(desk)
    desk.mta.handler.clear()
    outcome = desk.ingest(make_mail(sender, "support@example.com", "Re: [CC-000001] x", "x"))
    assert outcome.status == "machine" and recipients(desk) == []


# --- the switch and the warnings ------------------------------------------------------------

def test_check_config_and_status_warn_about_how_staff_are_verified(desk_factory):
    lab = desk_factory("lab", trust={"require_staff_auth": False})
    checked = lab.cli("check-config")
    assert checked.returncode == 0 and "require_staff_auth is false" in checked.stderr
    assert "require_staff_auth is false" in lab.cli("status").stdout
    ack = open_case(lab)
    lab.ingest(make_mail(AGENT, "support@example.com", "Re: [CC-000001]", "#waiting\n",
                         in_reply_to=ack["Message-ID"]))
    assert lab.case("CC-000001")["status"] == "waiting"  # what the switch is for

    no_ids = desk_factory("no-ids", trust={"authserv_ids": []})
    checked = no_ids.cli("check-config")
    assert checked.returncode == 0 and "trust.authserv_ids is empty" in checked.stderr
    assert "answers a staff reply address" in no_ids.cli("status").stdout
    good = desk_factory("good")
    assert "warning" not in good.cli("check-config").stderr


def test_an_address_that_hides_a_route_is_no_address(desk):
    # user%domain@host and host!user@host are routes an MTA may follow (Postfix's
    # allow_percent_hack and swap_bangpath): an address hiding another one.
    outcome = desk.ingest(make_mail("eve%other.example@customer.example", "support@example.com",
                                    "Hi", "Hello.\n", cc=["other.example!bob@customer.example",
                                                          "ann@customer.example"]))
    assert outcome.status == "ignored"  # no usable From: nobody to answer
    outcome = desk.ingest(make_mail("ann@customer.example", "support@example.com", "Hi again",
                                    "Hello.\n", cc=["bob%other.example@customer.example"]))
    case = desk.case(outcome.ref)
    assert case["participants"] == ["ann@customer.example"]
    rejected = [e["detail"] for e in case["events"] if e["type"] == "address_rejected"]
    assert rejected and "route" in rejected[0]["reason"]
    assert all("%" not in r and "!" not in r for e in desk.mta.handler.envelopes
               for r in e.rcpt_tos)


def test_a_stranger_of_a_public_domain_is_no_duplicate_of_anothers_connection(desk_factory):
    # "A second request for the same connection" is one from the requester's company;
    # gmail.com is nobody's company. Zed, who only guessed Ann's subject, got her
    # case's reference, subject, status and reply address, and by that joined it.
    desk = desk_factory(**listening())
    ann = desk.ingest(make_mail("ann@gmail.com", "connections@example.com",
                                "New fibre line for Elm Street 4", "Please connect us.\n"))
    desk.mta.handler.clear()
    with listener(desk) as port:
        over_smtp(port, make_mail("zed@gmail.com", "connections@example.com",
                                  "New fibre line for Elm Street 4", "Me too.\n"),
                  ["connections@example.com"], mail_from="zed@gmail.com")
        deliver_all(desk.app)
        told = [text_of(m) for m in desk.sent_to("zed@gmail.com")]
        assert told and all(ann.ref not in t for t in told)
        reply_to = desk.sent_to("zed@gmail.com")[-1]["Reply-To"]
        over_smtp(port, make_mail("zed@gmail.com", str(reply_to), "Re: Elm Street",
                                  "Add me.\n"), [str(reply_to)], mail_from="zed@gmail.com")
    case = desk.case(ann.ref)
    assert case["participants"] == ["ann@gmail.com"]
    assert [m["from"] for m in case["messages"] if m["direction"] == "in"] == ["ann@gmail.com"]
    assert "ann@gmail.com" not in recipients(desk)


def test_plus_and_dot_variants_of_one_inbox_share_its_limits(desk_factory):
    """Gmail delivers victim+anything@ and v.i.c.t.i.m@ to one inbox. Each variant had
    limits of its own, so Eve, writing in the victim's name (a From is a claim) with
    nine more variants in Cc, made an acknowledgement of her text land in that inbox
    ten times a mail, for as many mails as she liked."""
    desk = desk_factory(**listening())
    variants = ["victim+{n}@gmail.com", "v.ictim+{n}x@gmail.com", "VICTIM+{n}y@gmail.com"]
    with listener(desk) as port:
        for n in range(12):
            cc = [f"victim+{n}.{i}@gmail.com" for i in range(9)]
            sender = variants[n % 3].format(n=n)
            over_smtp(port, make_mail(sender, "support@example.com", f"Offer {n}",
                                      "BUY NOW at attacker.example!\n", cc=cc),
                      ["support@example.com"], mail_from=sender)
    deliver_all(desk.app)
    into_victims_inbox = [r for r in recipients(desk) if r.endswith("@gmail.com")]
    assert len(into_victims_inbox) <= 5  # limits.new_cases_per_sender: 5/1h, one ack each
    cases = json.loads(desk.cli("cases", "list", "--json", check=True).stdout)
    assert len(cases) == 5 and all(len(c["participants"]) == 1 for c in cases)
    assert len(json.loads(desk.cli("failed", "list", "--json", check=True).stdout)) == 7


def test_acknowledgements_to_one_inbox_are_counted_together(desk_factory):
    # Strangers of their own (each within their new-case limit) copying the victim's
    # variants: limits.auto_mail_per_recipient (10 per 10 minutes) counts the inbox.
    desk = desk_factory(**listening())
    with listener(desk) as port:
        for n in range(15):
            sender = f"sender{n}@attacker{n}.example"
            over_smtp(port, make_mail(sender, "support@example.com", f"Offer {n}",
                                      "BUY NOW at attacker.example!\n",
                                      cc=[f"victim+{n}@gmail.com"]),
                      ["support@example.com"], mail_from=sender)
    deliver_all(desk.app)
    assert len([r for r in recipients(desk) if r.endswith("@gmail.com")]) == 10
