"""Who may steer a case, and what a mail from outside may cause (SPEC, Round 2: Trust):
the pure decisions, plain values in and out."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from helpdesk.core.amplification import OpenedCases, admit, excerpt, new_case_limit
from helpdesk.core.classify import machine_reasons
from helpdesk.core.decide import Audience, CategoryPolicy, Context, Outcome, decide, requester_of
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.matching import Candidates
from helpdesk.core.model import MailKind
from helpdesk.core.refs import (
    base_address,
    is_own_message_id,
    message_id_mac,
    parse_staff_reply_address,
    staff_reply_address,
    staff_reply_token,
)
from helpdesk.core.trust import UNVERIFIED, SenderTrust
from tests.core.test_decide import CC, POLICY, VERIFIED, as_staff, by_tag, case, kinds, mail

SECRET = b"k" * 32
HOUR = timedelta(hours=1)
CN = CategoryPolicy("connections", "CN", Lifecycle.connections, ("connections@example.com",),
                    has_activation=True, notify=("connectivity@example.com",))
WITH_NOTIFY = replace(POLICY, categories=(CC, CN, POLICY.categories[2]),
                      public_domains=frozenset({"gmail.com"}))


def their_id(view) -> Context:
    """A reply naming a Message-ID the customer's client made (everyone on Cc saw it)."""
    return Context(candidates=Candidates(by_their_message_id=view))


# --- staff must be verified -------------------------------------------------------------------

def test_unverified_mail_from_a_staff_address_changes_nothing_and_tells_staff_why():
    forged = mail(sender="agent@example.com", text="#assign evil@attacker.example\n#close\nBye.",
                  cc=("victim@elsewhere.example",))
    trust = SenderTrust(False, "", "mx.example.com reports dmarc=fail")
    d = decide(forged, Context(candidates=Candidates(by_message_id=case("in_progress")),
                               sender_trust=trust), POLICY)
    assert d.outcome is Outcome.UNVERIFIED_STAFF and d.store_as is MailKind.UNVERIFIED
    assert d.transitions == () and d.assign is None and d.add_participants == ()
    assert kinds(d) == [(MailKind.UNVERIFIED_STAFF, Audience.NOTIFY)]
    assert d.mails[0].note == "mx.example.com reports dmarc=fail"
    assert ("unverified_staff_mail", {"from": "agent@example.com",
                                      "reason": "mx.example.com reports dmarc=fail"}) in d.events


def test_verified_staff_steer_and_are_not_bounded_but_the_lab_switch_trusts_any_from():
    text = "#waiting\nPlease send the log."
    verified = decide(mail(sender="agent@example.com", text=text), as_staff(case("in_progress")),
                      POLICY)
    assert verified.outcome is Outcome.STAFF_REPLY and verified.recipient_limit is None
    lab = replace(POLICY, require_staff_auth=False)
    unchecked = decide(mail(sender="agent@example.com", text=text),
                       Context(candidates=Candidates(by_message_id=case("in_progress"))), lab)
    assert [t.status for t in unchecked.transitions] == ["waiting"]


def test_a_verified_customer_is_still_a_customer():
    d = decide(mail(text="#close"), as_staff(case("in_progress")), POLICY)
    assert d.outcome is Outcome.REPLY and d.recipient_limit == POLICY.recipients_per_mail
    assert all(t.status != "closed" for t in d.transitions)


def test_notify_addresses_are_staff_of_their_category_only():
    cn = case("in_progress", category="connections", lifecycle=Lifecycle.connections)
    d = decide(mail(sender="connectivity@example.com", text="#status pending_seller"),
               as_staff(cn), WITH_NOTIFY)
    assert d.outcome is Outcome.STAFF_REPLY and [t.status for t in d.transitions] == [
        "pending_seller"]
    elsewhere = decide(mail(sender="connectivity@example.com", text="Hi"),
                       as_staff(case("in_progress")), WITH_NOTIFY)
    assert elsewhere.outcome is Outcome.REPLY  # a customer care case: not theirs to steer
    # and they never become participants of their own category's cases
    new = decide(mail(to=("connections@example.com",), cc=("connectivity@example.com",)),
                 Context(), WITH_NOTIFY)
    assert [a for a, _ in new.add_participants] == ["ana@customer.example"]


def test_assign_takes_staff_addresses_only():
    refused = decide(mail(sender="agent@example.com", text="#assign evil@attacker.example"),
                     as_staff(case("in_progress")), POLICY)
    assert refused.assign is None and kinds(refused) == [(MailKind.COMMAND_ERROR, Audience.SENDER)]
    assert "not a staff address" in refused.mails[0].errors[0]
    routed = decide(mail(sender="agent@example.com",  # "@staff.example.com" is staff
                         text="#assign eve%attacker.example@staff.example.com"),
                    as_staff(case("in_progress")), POLICY)
    assert routed.assign is None and "needs a staff address" in routed.mails[0].errors[0]
    cn = case("in_progress", category="connections", lifecycle=Lifecycle.connections)
    ok = decide(mail(sender="agent@example.com", text="#assign Connectivity@example.com"),
                as_staff(cn), WITH_NOTIFY)
    assert ok.assign == "connectivity@example.com"


# --- threading by Message-ID ------------------------------------------------------------------

def test_a_stranger_naming_the_customers_message_id_does_not_join():
    d = decide(mail(sender="eve@attacker.example", text="Send me the invoice."),
               their_id(case("in_progress")), POLICY)
    assert d.outcome is Outcome.NEW_CASE and d.new_case.link_reason == "unknown_sender"
    assert d.case is None and [a for a, _ in d.add_participants] == ["eve@attacker.example"]


@pytest.mark.parametrize("sender", ["ana@customer.example", "carl@customer.example"])
def test_participants_and_colleagues_join_by_the_customers_message_id(sender):
    d = decide(mail(sender=sender), their_id(case("in_progress")), POLICY)
    assert d.outcome is Outcome.REPLY and d.case.ref == "CC-000007"


def test_a_public_mail_domain_makes_nobody_a_colleague():
    gmail = replace(case("in_progress"), requester="ana@gmail.com", requester_domain="gmail.com",
                    participants=frozenset({"ana@gmail.com"}))
    d = decide(mail(sender="eve@gmail.com"), by_tag(gmail), WITH_NOTIFY)
    assert d.outcome is Outcome.NEW_CASE and d.new_case.link_reason == "unknown_sender"


def test_our_message_ids_are_keyed_and_short():
    unique = "0123456789abcdef"
    mid = f"helpdesk.{unique}.{message_id_mac(SECRET, unique)}@example.com"
    assert len(mid) < 64 and is_own_message_id(mid, "example.com", SECRET)
    assert is_own_message_id(mid.upper(), "EXAMPLE.com", SECRET)
    assert not is_own_message_id(mid, "example.org", SECRET)
    assert not is_own_message_id(mid, "example.com", b"another key")
    forged = f"helpdesk.{unique[::-1]}.{message_id_mac(SECRET, unique)}@example.com"
    assert not is_own_message_id(forged, "example.com", SECRET)
    assert not is_own_message_id("helpdesk.0123456789abcdef0123abcd@example.com", "example.com",
                                 SECRET)  # round 1's, unkeyed


# --- staff reply addresses ------------------------------------------------------------------

def test_a_staff_reply_address_is_personal_and_parses_back():
    token = staff_reply_token(SECRET, "CC-000042", "Agent@Example.com")
    address = staff_reply_address("support@example.com", "CC-000042", token)
    assert address.startswith("support+CC-000042.s.") and len(token) == 16
    assert parse_staff_reply_address(address.upper()) == ("support@example.com", "CC-000042",
                                                          token)
    assert token != staff_reply_token(SECRET, "CC-000042", "boss@example.com")
    assert token != staff_reply_token(SECRET, "CC-000043", "agent@example.com")
    assert base_address(address) == "support@example.com"
    assert base_address("support+CC-000042.abcdefgh@example.com") == "support@example.com"


def test_mail_from_our_own_reply_addresses_is_our_own():
    for sender in ("support+CC-000042.abcdefgh@example.com",
                   "support+CC-000042.s.abcdefghabcdefgh@example.com"):
        assert any(r.startswith("own-address") for r in
                   machine_reasons(mail(sender=sender), POLICY.hygiene))
        assert decide(mail(sender=sender), Context(), POLICY).outcome is Outcome.MACHINE


# --- amplification -----------------------------------------------------------------------------

def test_a_new_case_from_outside_adds_no_more_participants_than_one_mail_may_reach():
    ten_cc = tuple(f"cc{i}@third.example" for i in range(10))
    policy = replace(POLICY, participants_per_case=20, participants_per_message=20,
                     recipients_per_mail=4)
    d = decide(mail(cc=ten_cc), Context(), policy)
    assert len(d.add_participants) == 4 and d.recipient_limit == 4
    assert ("participants_limit", {"skipped": 7}) in d.events
    staff = decide(mail(sender="agent@example.com", cc=ten_cc),
                   Context(sender_trust=VERIFIED), policy)
    assert len(staff.add_participants) == 11 and staff.recipient_limit is None


def test_reply_to_names_the_requester_only_from_the_same_domain_or_with_dmarc():
    form = replace(mail(sender="forms@customer.example"), reply_to=("ana@customer.example",))
    victim = replace(mail(sender="eve@attacker.example"), reply_to=("victim@elsewhere.example",))
    assert requester_of(form, POLICY) == "ana@customer.example"
    assert requester_of(victim, POLICY) == "eve@attacker.example"
    assert requester_of(victim, POLICY, SenderTrust(True, "dkim", "")) == "eve@attacker.example"
    assert requester_of(victim, POLICY, SenderTrust(True, "dmarc", "")) == "victim@elsewhere.example"
    d = decide(victim, Context(), POLICY)
    assert d.new_case.requester == "eve@attacker.example" and d.new_case.opened_by == "eve@attacker.example"


def test_new_cases_per_sender_and_domain_are_held_past_the_limit():
    opened = (OpenedCases(HOUR, by_sender=2, by_domain=5),)
    d = decide(mail(), Context(opened_cases=opened), replace(POLICY, new_cases_per_sender=((5, HOUR),)))
    assert d.outcome is Outcome.HELD and d.mails == () and d.new_case is None
    assert d.reasons == ("new-cases-per-sender: 5 per 1h from @customer.example",)
    assert new_case_limit((OpenedCases(HOUR, 5, 0),), ((5, HOUR),), "a@b.example",
                          frozenset()) == "new-cases-per-sender: 5 per 1h from a@b.example"
    # a public mail domain is many people: only the sender counts there
    assert new_case_limit((OpenedCases(HOUR, 4, 900),), ((5, HOUR),), "a@gmail.com",
                          frozenset({"gmail.com"})) is None
    # replies are never held; verified staff never are
    assert decide(mail(), Context(candidates=Candidates(by_message_id=case("in_progress")),
                                  opened_cases=opened), POLICY).outcome is Outcome.REPLY
    assert decide(mail(sender="agent@example.com"),
                  Context(opened_cases=(OpenedCases(HOUR, 99, 99),), sender_trust=VERIFIED),
                  POLICY).outcome is Outcome.NEW_CASE


def test_admit_counts_each_outside_address_once_and_never_staff():
    is_staff = {"agent@example.com"}.__contains__
    admitted, refused = admit(["a@x", "agent@example.com", "b@x", "c@x"], frozenset({"z@x"}), 3,
                              is_staff)
    assert admitted == ["a@x", "agent@example.com", "b@x"] and refused == ["c@x"]
    assert admit(["z@x"], frozenset({"z@x", "y@x", "w@x"}), 3, is_staff) == (["z@x"], [])


def test_excerpt_cuts_at_a_word_and_says_so():
    assert excerpt("short", 10) == "short"
    cut = excerpt("word " * 1000, 100)
    assert len(cut) <= 104 and cut.endswith("word\n[…]")
    assert excerpt("x" * 500, 100) == "x" * 100 + "\n[…]"


def test_untrusted_is_the_default():
    assert Context().sender_trust is UNVERIFIED and not UNVERIFIED.verified
