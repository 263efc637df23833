"""The decision step on its own: plain values in, a Decision out, no I/O."""
from __future__ import annotations

import pytest

from helpdesk.core.classify import HygienePolicy
from helpdesk.core.commands import Command
from helpdesk.core.decide import (
    Audience,
    CategoryPolicy,
    Context,
    Outcome,
    Policy,
    apply_commands,
    decide,
    duplicate_key,
    route,
)
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.matching import Candidates, CaseView, StaffDirectory
from helpdesk.core.model import Bounce, BouncedRecipient, InboundMessage, MailKind
from helpdesk.core.trust import SenderTrust

CC = CategoryPolicy("customer_care", "CC", Lifecycle.customer_care, ("support@example.com",))
CN = CategoryPolicy("connections", "CN", Lifecycle.connections, ("connections@example.com",),
                    has_activation=True)
BL = CategoryPolicy("billing", "BL", Lifecycle.customer_care, ("billing@example.com",))
OURS = frozenset({"support@example.com", "connections@example.com", "billing@example.com"})
POLICY = Policy(
    categories=(CC, CN, BL),
    staff=StaffDirectory(frozenset({"agent@example.com", "@staff.example.com"})),
    own_addresses=OURS,
    hygiene=HygienePolicy(own_domain="example.com", loop_header="X-Helpdesk-Loop",
                          loop_value="support@example.com", own_addresses=OURS),
    participants_per_case=5, participants_per_message=3,
)


def mail(sender="ana@customer.example", to=("support@example.com",), cc=(), subject="Printer",
         text="It is on fire.", headers=None, in_reply_to=(), bounce=None) -> InboundMessage:
    return InboundMessage(
        message_id="m1@customer.example", content_hash="0" * 64, sender=sender, sender_name="",
        to=tuple(to), cc=tuple(cc), reply_to=(), subject=subject, date=None,
        in_reply_to=tuple(in_reply_to), references=(), text=text, html="",
        headers={k.lower(): (v,) for k, v in (headers or {}).items()}, bounce=bounce)


def case(status="open", category="customer_care", participants=("ana@customer.example",),
         lifecycle=Lifecycle.customer_care) -> CaseView:
    return CaseView(id=7, ref="CC-000007", category=category, lifecycle=lifecycle, status=status,
                    subject="Printer", requester="ana@customer.example",
                    requester_domain="customer.example", participants=frozenset(participants))


def by_id(view: CaseView) -> Context:
    return Context(candidates=Candidates(by_message_id=view))


def by_tag(view: CaseView) -> Context:
    return Context(candidates=Candidates(by_subject_tag=view))


VERIFIED = SenderTrust(True, "dmarc", "")


def as_staff(view: CaseView) -> Context:
    """A staff member's reply whose DMARC check our MTA reported as passed."""
    return Context(candidates=Candidates(by_message_id=view), sender_trust=VERIFIED)


def kinds(decision) -> list[tuple[MailKind, Audience]]:
    return [(m.kind, m.to) for m in decision.mails]


def test_new_mail_opens_a_case_acknowledged_to_requester_and_cc():
    d = decide(mail(cc=("bo@partner.example", "billing@example.com", "agent@example.com")),
               Context(), POLICY)
    assert d.outcome is Outcome.NEW_CASE and d.new_case.category == "customer_care"
    assert d.new_case.status == "open" and d.store_as is MailKind.NEW
    # our addresses and staff never become participants
    assert [a for a, _ in d.add_participants] == ["ana@customer.example", "bo@partner.example"]
    assert kinds(d) == [(MailKind.ACK, Audience.PARTICIPANTS), (MailKind.STAFF_NOTICE, Audience.STAFF)]
    assert d.addresses == ("support@example.com", "billing@example.com")


def test_routing_takes_the_first_of_our_addresses_and_defaults_to_the_first_category():
    assert route(mail(to=("x@else.example", "billing@example.com")), POLICY) is BL
    assert route(mail(to=("connections+CN-000001.abcdefgh@example.com",)), POLICY) is CN
    assert route(mail(to=("alias@elsewhere.example",)), POLICY) is CC  # Bcc, forwarded


def test_a_reply_joins_and_its_new_cc_become_participants_within_the_limits():
    d = decide(mail(cc=("c1@x.example", "c2@x.example", "c3@x.example", "c4@x.example")),
               by_id(case("waiting")), POLICY)
    assert d.outcome is Outcome.REPLY and d.store_as is MailKind.REPLY
    assert [a for a, _ in d.add_participants] == ["c1@x.example", "c2@x.example", "c3@x.example"]
    assert ("participants_limit", {"skipped": 1}) in d.events
    assert [t.status for t in d.transitions] == ["in_progress"]  # the clock stops


def test_machine_mail_is_stored_on_its_case_but_never_answered_nor_counted():
    d = decide(mail(headers={"Auto-Submitted": "auto-replied"}), by_id(case("waiting")), POLICY)
    assert d.outcome is Outcome.MACHINE and d.store_as is MailKind.MACHINE
    assert d.mails == () and d.transitions == ()
    assert d.reasons and d.reasons[0].startswith("auto-submitted")
    lone = decide(mail(headers={"List-Id": "<l.example>"}), Context(), POLICY)
    assert lone.outcome is Outcome.MACHINE and lone.case is None and lone.new_case is None


def test_a_bounce_is_recorded_on_the_case_whose_mail_bounced():
    report = Bounce((BouncedRecipient("bo@partner.example", "failed", "5.1.1", "no such user"),),
                    "helpdesk.abc@example.com")
    d = decide(mail(sender="mailer-daemon@relay.example", bounce=report),
               Context(bounced_case=case()), POLICY)
    assert d.outcome is Outcome.BOUNCE and d.case.ref == "CC-000007" and d.mails == ()
    assert d.events[0][0] == "bounce"
    assert d.events[0][1]["recipients"][0]["permanent"] is True


@pytest.mark.parametrize(("mode", "outcome"), [("new_case", Outcome.NEW_CASE),
                                              ("join", Outcome.REPLY),
                                              ("reject", Outcome.REJECTED)])
def test_a_stranger_with_only_a_subject_tag_follows_the_unknown_sender_policy(mode, outcome):
    policy = Policy(**{**{f: getattr(POLICY, f) for f in POLICY.__dataclass_fields__},
                       "unknown_sender": mode})
    d = decide(mail(sender="eve@stranger.example", subject="Re: [CC-000007] Printer"),
               by_tag(case()), policy)
    assert d.outcome is outcome
    if mode == "new_case":
        assert d.new_case.linked_to.ref == "CC-000007"
        assert d.new_case.link_reason == "unknown_sender"
    if mode == "reject":
        assert d.mails == ()


def test_a_colleague_of_the_requester_may_join_by_tag():
    d = decide(mail(sender="carl@customer.example", subject="[CC-000007] Printer"),
               by_tag(case()), POLICY)
    assert d.outcome is Outcome.REPLY
    assert ("carl@customer.example", "") in d.add_participants


def test_a_reply_to_a_closed_case_opens_a_new_linked_case():
    d = decide(mail(), by_id(case("closed")), POLICY)
    assert d.outcome is Outcome.NEW_CASE
    assert d.new_case.linked_to.ref == "CC-000007" and d.new_case.link_reason == "reopened"


def test_staff_resolve_relays_the_text_without_the_command_line():
    d = decide(mail(sender="agent@example.com", text="#resolve Fixed it\n\nRestart the printer."),
               as_staff(case("in_progress")), POLICY)
    assert d.outcome is Outcome.STAFF_REPLY and d.store_as is MailKind.STAFF
    assert [t.status for t in d.transitions] == ["resolved"]
    [solution] = [m for m in d.mails if m.kind is MailKind.SOLUTION]
    assert "Restart the printer." in solution.note and "#resolve" not in solution.note


def test_an_illegal_or_unknown_command_is_answered_to_staff_and_changes_nothing():
    for text in ("#status delivered", "#frobnicate now"):
        d = decide(mail(sender="agent@example.com", text=text), as_staff(case("in_progress")), POLICY)
        assert d.transitions == () and d.assign is None
        assert kinds(d) == [(MailKind.COMMAND_ERROR, Audience.SENDER)]


def test_note_is_internal_and_assign_sets_the_assignee():
    d = decide(mail(sender="agent@example.com",
                    text="#note called them\n#assign bob@staff.example.com"),
               as_staff(case("in_progress")), POLICY)
    assert d.assign == "bob@staff.example.com"
    assert not [m for m in d.mails if m.to is Audience.PARTICIPANTS]
    assert any(type_ == "note" for type_, _ in d.events)


def test_connections_cancel_and_duplicates():
    cn = case("in_progress", category="connections", lifecycle=Lifecycle.connections)
    cancel = decide(mail(to=("connections@example.com",), text="#cancel\nNo longer needed"),
                    by_id(cn), POLICY)
    assert [t.status for t in cancel.transitions] == ["not_completed"]
    dup = decide(mail(to=("connections@example.com",), subject="New connection: Hotel X"),
                 Context(open_duplicate=cn), POLICY)
    assert dup.outcome is Outcome.DUPLICATE_REQUEST and dup.case is cn
    assert kinds(dup) == [(MailKind.DUPLICATE, Audience.SENDER)]
    fresh = decide(mail(to=("connections@example.com",)), Context(), POLICY)
    assert fresh.run_activation and fresh.new_case.status == "in_progress"


def test_duplicate_key_is_the_configured_code_or_the_normalised_subject():
    keyed = CategoryPolicy("connections", "CN", Lifecycle.connections, ("c@example.com",),
                           duplicate_key=r"supplier code:\s*(\w+)")
    assert duplicate_key(mail(subject="AW: New  CONNECTION"), CN) == "new connection"
    assert duplicate_key(mail(text="Supplier code: HX42"), keyed) == "hx42"
    assert duplicate_key(mail(), CC) is None  # only connections requests are compared


# -- issue 11: what the customer reads --------------------------------------------------------

@pytest.mark.parametrize("subject", ["Re: [CC-000007] Printer", "AW: RE[2]: [CC-000007]  Printer",
                                     "Printer [CC-000007]", "Fwd: Re: Printer"])
def test_a_case_opened_by_a_reply_to_a_closed_one_drops_the_old_tag_and_prefixes(subject):
    d = decide(mail(subject=subject), by_id(case("closed")), POLICY)
    assert d.new_case.subject == "Printer" and d.new_case.linked_to.ref == "CC-000007"


def test_a_fresh_case_keeps_its_subject_as_written():
    assert decide(mail(subject="Re: lunch"), Context(), POLICY).new_case.subject == "Re: lunch"


def participant_mails(decision) -> list[tuple[MailKind, str]]:
    return [(m.kind, m.note) for m in decision.mails if m.to is Audience.PARTICIPANTS]


@pytest.mark.parametrize(("status", "command"), [("waiting", "in_progress"),
                                                 ("in_progress", "in_progress"),
                                                 ("resolved", "in_progress")])
def test_a_status_change_with_a_note_tells_the_participants_even_when_it_sends_nothing(
        status, command):
    d = apply_commands(case(status), (Command("status", f"{command} We are on it."),), POLICY,
                       actor="cli")
    assert participant_mails(d) == [(MailKind.RELAY, "We are on it.")]
    assert ("relayed", {"by": "cli"}) in d.events
    silent = apply_commands(case(status), (Command("status", command),), POLICY, actor="cli")
    assert participant_mails(silent) == [] and not any(t == "relayed" for t, _ in silent.events)


def test_a_note_rides_in_the_mail_the_status_sends_not_in_a_second_one():
    d = apply_commands(case("open"), (Command("status", "waiting Which model is it?"),), POLICY)
    assert participant_mails(d) == [(MailKind.STATUS, "Which model is it?")]


def test_cases_by_mail_answers_a_known_sender_and_ignores_a_stranger():
    msg = mail(subject="#cases")
    known = decide(msg, Context(sender_known=True), POLICY)
    assert known.outcome is Outcome.CASE_LIST and known.new_case is None
    assert [(m.kind, m.to) for m in known.mails] == [(MailKind.CASE_LIST, Audience.SENDER)]
    stranger = decide(msg, Context(), POLICY)
    assert stranger.outcome is Outcome.IGNORED and stranger.mails == () and not stranger.new_case
    auto = mail(subject="#cases", headers={"Auto-Submitted": "auto-replied"})
    assert decide(auto, Context(sender_known=True), POLICY).outcome is Outcome.MACHINE
