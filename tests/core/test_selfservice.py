"""Self-service in the core: which suggestions a new case shows, and what `solved` does."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from helpdesk.core.decide import Audience, Context, Outcome, decide
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.model import MailKind
from helpdesk.core.selfservice import SelfServicePolicy, Suggestion, choose, says_solved
from tests.core.test_decide import POLICY, by_id, by_tag, case, kinds, mail

SELF = SelfServicePolicy(suggestions=2, min_score=1.0)
KB_POLICY = replace(POLICY, self_service=SELF)
HOLDING = replace(POLICY, self_service=replace(SELF, hold_staff_notice=timedelta(minutes=30)))


def article(slug: str, score: float) -> Suggestion:
    return Suggestion(slug, slug.title(), f"https://docs.example.com/kb/{slug}", score)


FOUND = (article("printer", 2.5), article("smoke", 1.2), article("paper", 1.1),
         article("toner", 0.9))


# -- choosing ---------------------------------------------------------------------------------

def test_the_best_ones_at_or_above_the_threshold_at_most_the_configured_number():
    assert [s.slug for s in choose(FOUND, SELF, has_resolved=True)] == ["printer", "smoke"]
    assert choose(FOUND, replace(SELF, min_score=3.0), has_resolved=True) == ()
    assert [s.slug for s in choose(FOUND, replace(SELF, min_score=1.1, suggestions=5),
                                   has_resolved=True)] == ["printer", "smoke", "paper"]


def test_nothing_when_turned_off_or_when_the_lifecycle_has_no_resolved():
    assert choose(FOUND, replace(SELF, suggestions=0), has_resolved=True) == ()
    assert choose(FOUND, SELF, has_resolved=False) == ()


@pytest.mark.parametrize(("text", "solved"), [
    ("solved", True),
    ("Solved.", True),
    ("SOLVED\n\nThanks, the article helped!", True),
    ("#solved", True),
    ("  #Solved.  \n", True),
    ("\n\nsolved\n", True),
    ("solved\n\nOn Mon, 2 Nov 2026, Example Support wrote:\n> Case CC-000007\n", True),
    ("> Reply solved if one of them helped\nsolved", True),
    ("Not solved", False),
    ("solved?", False),
    ("solved!!", False),
    ("It is solved now", False),
    ("Thanks\nsolved", False),  # only the first line counts
    ("unsolved", False),
    ("", False),
    ("> solved", False),  # quoted text is not the customer's answer
])
def test_solved_is_the_first_line_outside_the_quoted_text(text: str, solved: bool):
    assert says_solved(text) is solved


# -- a new case -------------------------------------------------------------------------------

def test_a_new_case_shows_the_chosen_suggestions_and_notifies_staff_at_once():
    d = decide(mail(), Context(suggestions=FOUND), KB_POLICY)
    assert [s.slug for s in d.new_case.suggestions] == ["printer", "smoke"]
    assert not d.new_case.hold_notice
    assert kinds(d) == [(MailKind.ACK, Audience.PARTICIPANTS),
                        (MailKind.STAFF_NOTICE, Audience.STAFF)]


def test_with_a_hold_the_staff_notice_waits_but_only_when_something_was_suggested():
    held = decide(mail(), Context(suggestions=FOUND), HOLDING)
    assert held.new_case.hold_notice
    assert kinds(held) == [(MailKind.ACK, Audience.PARTICIPANTS)]
    weak = decide(mail(), Context(suggestions=(article("toner", 0.9),)), HOLDING)
    assert weak.new_case.suggestions == () and not weak.new_case.hold_notice
    assert (MailKind.STAFF_NOTICE, Audience.STAFF) in kinds(weak)


def test_a_connections_request_gets_no_suggestions():
    d = decide(mail(to=("connections@example.com",)), Context(suggestions=FOUND), HOLDING)
    assert d.new_case.category == "connections"
    assert d.new_case.suggestions == () and not d.new_case.hold_notice


def test_a_reply_to_a_closed_case_opens_a_new_case_with_its_own_suggestions():
    d = decide(mail(in_reply_to=("x@example.com",), text="It smokes again."),
               replace(by_id(case("closed")), suggestions=FOUND), KB_POLICY)
    assert d.outcome is Outcome.NEW_CASE and d.new_case.link_reason == "reopened"
    assert [s.slug for s in d.new_case.suggestions] == ["printer", "smoke"]


# -- solved -----------------------------------------------------------------------------------

def suggested(status: str, **changes) -> object:
    return replace(case(status), suggested=("printer", "smoke"), **changes)


@pytest.mark.parametrize("status", ["open", "in_progress", "waiting"])
def test_solved_from_the_requester_resolves_and_tells_customer_and_staff(status: str):
    d = decide(mail(text="Solved.\n"), by_id(suggested(status)), KB_POLICY)
    assert d.outcome is Outcome.REPLY and d.store_as is MailKind.REPLY
    assert [t.status for t in d.transitions] == ["resolved"]
    assert ("self_solved", {"by": "ana@customer.example", "articles": ["printer", "smoke"]}) \
        in d.events
    assert kinds(d) == [(MailKind.SELF_SOLVED, Audience.PARTICIPANTS),
                        (MailKind.SOLVED_NOTICE, Audience.STAFF)]
    assert d.drop_held_notice == ""


def test_solved_drops_a_staff_notice_that_is_still_held():
    d = decide(mail(text="solved"), by_id(suggested("open", notice_held=True)), HOLDING)
    assert d.drop_held_notice == "self_solved" and [t.status for t in d.transitions] == ["resolved"]


def test_another_reply_notifies_staff_now_in_place_of_the_held_notice():
    d = decide(mail(text="It smokes even more now."), by_id(suggested("open", notice_held=True)),
               HOLDING)
    assert d.drop_held_notice == "reply"
    assert kinds(d) == [(MailKind.STAFF_NOTICE, Audience.STAFF)]


def test_solved_on_a_resolved_case_changes_nothing_and_does_not_reopen_it():
    d = decide(mail(text="#solved"), by_id(suggested("resolved")), KB_POLICY)
    assert [t.status for t in d.transitions] == ["resolved"]
    assert d.mails == () and not any(e for e, _ in d.events if e == "self_solved")


def test_solved_on_a_closed_case_is_kept_there_and_opens_no_new_case():
    d = decide(mail(text="solved"), by_id(suggested("closed")), KB_POLICY)
    assert d.outcome is Outcome.REPLY and d.case.status == "closed"
    assert d.transitions == () and d.mails == ()
    assert [e for e, _ in d.events] == ["reply_not_applied"]


def test_solved_on_a_connections_case_is_an_ordinary_reply():
    view = replace(case("in_progress", category="connections",
                        lifecycle=Lifecycle.connections), ref="CN-000007")
    d = decide(mail(text="solved", to=("connections@example.com",)), by_id(view), KB_POLICY)
    assert [t.status for t in d.transitions] == ["in_progress"]
    assert kinds(d) == [(MailKind.STAFF_NOTICE, Audience.STAFF)]


def test_solved_from_a_stranger_by_subject_tag_opens_a_new_case():
    d = decide(mail(sender="eve@elsewhere.example", subject="Re: [CC-000007] Printer",
                    text="solved"), by_tag(suggested("open")), KB_POLICY)
    assert d.outcome is Outcome.NEW_CASE and d.new_case.link_reason == "unknown_sender"
    assert d.case is None


def test_an_auto_reply_saying_solved_is_machine_mail():
    d = decide(mail(text="solved", headers={"Auto-Submitted": "auto-replied"}),
               by_id(suggested("open")), KB_POLICY)
    assert d.outcome is Outcome.MACHINE and d.transitions == () and d.mails == ()
