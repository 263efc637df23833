"""Every (status, trigger) pair of every lifecycle, against a table written out by hand here.

The expected tables below are deliberately independent of ``lifecycle.TRANSITIONS``: a change to
the rules has to be made twice, once in the module and once here, on purpose.
"""
from __future__ import annotations

from itertools import product

import pytest

from helpdesk.core.lifecycle import (
    COUNTDOWNS,
    FINAL_STATUSES,
    INITIAL_STATUS,
    STATUSES,
    TO_STAFF,
    TRANSITIONS,
    CaseClosed,
    ClockAction,
    Countdown,
    Event,
    IllegalTransition,
    Lifecycle,
    Transition,
    Trigger,
    countdown,
    find_status,
    is_final,
    label,
    statuses,
    transition,
)
from helpdesk.core.model import MailKind as M

CC, CN = Lifecycle.customer_care, Lifecycle.connections
START, STOP, KEEP = ClockAction.start, ClockAction.stop, ClockAction.keep
P, S = Trigger.participant_reply, Trigger.staff_reply
REM, CLOSE = Trigger.reminder_due, Trigger.close_due
OK, FAIL = Trigger.activation_succeeded, Trigger.activation_failed
CANCEL, SOLVED = Trigger.cancel, Trigger.self_solved

ILLEGAL = IllegalTransition
NEW_CASE = CaseClosed  # a participant wrote to a final case: the caller opens a linked case
Outcome = tuple[str, ClockAction, tuple[M, ...]] | type[IllegalTransition]

# Every trigger except set_status, for every status of every lifecycle.
EXPECTED: dict[tuple[Lifecycle, str, Trigger], Outcome] = {
    # ---- customer care ----
    (CC, "open", P): ("open", KEEP, (M.STAFF_NOTICE,)),
    (CC, "open", S): ("in_progress", STOP, ()),
    (CC, "open", REM): ILLEGAL,
    (CC, "open", CLOSE): ILLEGAL,
    (CC, "open", OK): ILLEGAL,
    (CC, "open", FAIL): ILLEGAL,
    (CC, "open", CANCEL): ILLEGAL,
    (CC, "in_progress", P): ("in_progress", KEEP, (M.STAFF_NOTICE,)),
    (CC, "in_progress", S): ("in_progress", KEEP, ()),
    (CC, "in_progress", REM): ILLEGAL,
    (CC, "in_progress", CLOSE): ILLEGAL,
    (CC, "in_progress", OK): ILLEGAL,
    (CC, "in_progress", FAIL): ILLEGAL,
    (CC, "in_progress", CANCEL): ILLEGAL,
    (CC, "waiting", P): ("in_progress", STOP, (M.STAFF_NOTICE,)),
    (CC, "waiting", S): ("waiting", KEEP, ()),
    (CC, "waiting", REM): ("waiting", KEEP, (M.REMINDER,)),
    (CC, "waiting", CLOSE): ("closed", STOP, (M.CLOSURE,)),
    (CC, "waiting", OK): ILLEGAL,
    (CC, "waiting", FAIL): ILLEGAL,
    (CC, "waiting", CANCEL): ILLEGAL,
    (CC, "resolved", P): ("in_progress", STOP, (M.REOPENED, M.STAFF_NOTICE)),
    (CC, "resolved", S): ("resolved", KEEP, ()),
    (CC, "resolved", REM): ILLEGAL,  # resolved has no reminders, only the closure
    (CC, "resolved", CLOSE): ("closed", STOP, ()),  # silent: the solution mail announced it
    (CC, "resolved", OK): ILLEGAL,
    (CC, "resolved", FAIL): ILLEGAL,
    (CC, "resolved", CANCEL): ILLEGAL,
    (CC, "closed", P): NEW_CASE,
    (CC, "closed", S): ("closed", KEEP, ()),  # relayed by the caller, status untouched
    (CC, "closed", REM): ILLEGAL,
    (CC, "closed", CLOSE): ILLEGAL,
    (CC, "closed", OK): ILLEGAL,
    (CC, "closed", FAIL): ILLEGAL,
    (CC, "closed", CANCEL): ILLEGAL,  # #cancel is not a customer care command at all
    # a customer's `solved`: resolves a live case, never reopens a resolved one, and is only
    # known where there is a `resolved` (the caller keeps it on a closed case: no new case)
    (CC, "open", SOLVED): ("resolved", START, (M.SELF_SOLVED, M.SOLVED_NOTICE)),
    (CC, "in_progress", SOLVED): ("resolved", START, (M.SELF_SOLVED, M.SOLVED_NOTICE)),
    (CC, "waiting", SOLVED): ("resolved", START, (M.SELF_SOLVED, M.SOLVED_NOTICE)),
    (CC, "resolved", SOLVED): ("resolved", KEEP, ()),
    (CC, "closed", SOLVED): ILLEGAL,
    (CN, "in_progress", SOLVED): ILLEGAL,
    (CN, "pending_seller", SOLVED): ILLEGAL,
    (CN, "delivered", SOLVED): ILLEGAL,
    (CN, "not_completed", SOLVED): ILLEGAL,
    # ---- connections ----
    (CN, "in_progress", P): ("in_progress", KEEP, (M.STAFF_NOTICE,)),
    (CN, "in_progress", S): ("in_progress", KEEP, ()),
    (CN, "in_progress", REM): ILLEGAL,
    (CN, "in_progress", CLOSE): ILLEGAL,
    (CN, "in_progress", OK): ("delivered", STOP, (M.CREDENTIALS,)),
    (CN, "in_progress", FAIL): ("in_progress", KEEP, (M.MANUAL_REVIEW,)),
    (CN, "in_progress", CANCEL): ("not_completed", STOP, (M.NOT_COMPLETED,)),
    (CN, "pending_seller", P): ("in_progress", STOP, (M.STAFF_NOTICE,)),
    (CN, "pending_seller", S): ("pending_seller", KEEP, ()),
    (CN, "pending_seller", REM): ("pending_seller", KEEP, (M.REMINDER,)),
    (CN, "pending_seller", CLOSE): ("not_completed", STOP, (M.CLOSURE,)),
    (CN, "pending_seller", OK): ("delivered", STOP, (M.CREDENTIALS,)),
    (CN, "pending_seller", FAIL): ("pending_seller", KEEP, (M.MANUAL_REVIEW,)),
    (CN, "pending_seller", CANCEL): ("not_completed", STOP, (M.NOT_COMPLETED,)),
    (CN, "delivered", P): NEW_CASE,
    (CN, "delivered", S): ("delivered", KEEP, ()),
    (CN, "delivered", REM): ILLEGAL,
    (CN, "delivered", CLOSE): ILLEGAL,
    (CN, "delivered", OK): ILLEGAL,
    (CN, "delivered", FAIL): ILLEGAL,
    (CN, "delivered", CANCEL): NEW_CASE,
    (CN, "not_completed", P): NEW_CASE,
    (CN, "not_completed", S): ("not_completed", KEEP, ()),
    (CN, "not_completed", REM): ILLEGAL,
    (CN, "not_completed", CLOSE): ILLEGAL,
    (CN, "not_completed", OK): ILLEGAL,
    (CN, "not_completed", FAIL): ILLEGAL,
    (CN, "not_completed", CANCEL): NEW_CASE,
}

# set_status: (lifecycle, from) -> {target: outcome}. Targets include every status of both
# lifecycles and a nonsense name, so foreign and unknown targets are covered too.
OTHER_TARGETS = ("delivered", "pending_seller", "bogus")
SET_EXPECTED: dict[tuple[Lifecycle, str], dict[str, Outcome]] = {
    (CC, "open"): {
        "open": ("open", KEEP, ()),
        "in_progress": ("in_progress", STOP, ()),
        "waiting": ("waiting", START, (M.STATUS,)),
        "resolved": ("resolved", START, (M.SOLUTION,)),
        "closed": ("closed", STOP, (M.CLOSED_NOTICE,)),
    },
    (CC, "in_progress"): {
        "open": ILLEGAL,
        "in_progress": ("in_progress", KEEP, ()),
        "waiting": ("waiting", START, (M.STATUS,)),
        "resolved": ("resolved", START, (M.SOLUTION,)),
        "closed": ("closed", STOP, (M.CLOSED_NOTICE,)),
    },
    (CC, "waiting"): {
        "open": ILLEGAL,
        "in_progress": ("in_progress", STOP, ()),
        "waiting": ("waiting", KEEP, ()),
        "resolved": ("resolved", START, (M.SOLUTION,)),
        "closed": ("closed", STOP, (M.CLOSED_NOTICE,)),
    },
    (CC, "resolved"): {
        "open": ILLEGAL,
        "in_progress": ("in_progress", STOP, ()),
        "waiting": ("waiting", START, (M.STATUS,)),
        "resolved": ("resolved", KEEP, ()),
        "closed": ("closed", STOP, (M.CLOSED_NOTICE,)),
    },
    (CC, "closed"): {
        "open": ILLEGAL,
        "in_progress": ILLEGAL,
        "waiting": ILLEGAL,
        "resolved": ILLEGAL,
        "closed": ("closed", KEEP, ()),
    },
    (CN, "in_progress"): {
        "in_progress": ("in_progress", KEEP, ()),
        "pending_seller": ("pending_seller", START, (M.STATUS,)),
        "delivered": ("delivered", STOP, (M.STATUS,)),
        "not_completed": ("not_completed", STOP, (M.NOT_COMPLETED,)),
    },
    (CN, "pending_seller"): {
        "in_progress": ("in_progress", STOP, ()),
        "pending_seller": ("pending_seller", KEEP, ()),
        "delivered": ("delivered", STOP, (M.STATUS,)),
        "not_completed": ("not_completed", STOP, (M.NOT_COMPLETED,)),
    },
    (CN, "delivered"): {
        "in_progress": ILLEGAL,
        "pending_seller": ILLEGAL,
        "delivered": ("delivered", KEEP, ()),
        "not_completed": ILLEGAL,
    },
    (CN, "not_completed"): {
        "in_progress": ILLEGAL,
        "pending_seller": ILLEGAL,
        "delivered": ILLEGAL,
        "not_completed": ("not_completed", KEEP, ()),
    },
}
ALL_TARGETS = sorted({s for lc in Lifecycle for s in STATUSES[lc]} | set(OTHER_TARGETS))


def _set_expected(lifecycle: Lifecycle, status: str, target: str) -> Outcome:
    return SET_EXPECTED[lifecycle, status].get(target, ILLEGAL)  # foreign or unknown: illegal


def _check(lifecycle: Lifecycle, status: str, event: Event, expected: Outcome) -> None:
    if isinstance(expected, tuple):
        new_status, clock, sends = expected
        assert transition(lifecycle, status, event) == Transition(new_status, sends, clock)
        return
    with pytest.raises(IllegalTransition) as caught:
        transition(lifecycle, status, event)
    assert type(caught.value) is expected  # CaseClosed exactly where expected, nowhere else
    assert str(caught.value)


NON_SET_TRIGGERS = [t for t in Trigger if t is not Trigger.set_status]
ALL_PAIRS = [(lc, s, t) for lc in Lifecycle for s, t in product(STATUSES[lc], NON_SET_TRIGGERS)]
ALL_SETS = [(lc, s, x) for lc in Lifecycle for s, x in product(STATUSES[lc], ALL_TARGETS)]


def test_expected_tables_cover_the_whole_product() -> None:
    assert set(EXPECTED) == set(ALL_PAIRS)
    assert set(SET_EXPECTED) == {(lc, s) for lc in Lifecycle for s in STATUSES[lc]}
    for (lc, _), targets in SET_EXPECTED.items():
        assert set(targets) == set(STATUSES[lc])


def test_the_module_table_has_no_row_the_tests_do_not_expect() -> None:
    legal = [k for k, v in EXPECTED.items() if isinstance(v, tuple)]
    legal_sets = [
        (lc, s, x) for (lc, s), row in SET_EXPECTED.items() for x, v in row.items()
        if isinstance(v, tuple)
    ]
    assert len(TRANSITIONS) == len(legal) + len(legal_sets)


@pytest.mark.parametrize(("lifecycle", "status", "trigger"), ALL_PAIRS)
def test_every_status_and_trigger(lifecycle: Lifecycle, status: str, trigger: Trigger) -> None:
    _check(lifecycle, status, Event(trigger), EXPECTED[lifecycle, status, trigger])


@pytest.mark.parametrize(("lifecycle", "status", "target"), ALL_SETS)
def test_every_set_status_target(lifecycle: Lifecycle, status: str, target: str) -> None:
    expected = _set_expected(lifecycle, status, target)
    _check(lifecycle, status, Event(Trigger.set_status, target), expected)


# ---- messages a human reads (mailed back to staff as a command error, printed by the CLI) ----


@pytest.mark.parametrize(
    ("lifecycle", "status", "event", "message"),
    [
        (CC, "open", Event(Trigger.set_status, "delivered"),
         "cannot set status 'delivered' on a Customer Care case"),
        (CC, "in_progress", Event(Trigger.set_status, "bogus"),
         "cannot set status 'bogus' on a Customer Care case"),
        (CN, "in_progress", Event(Trigger.set_status, "closed"),
         "cannot set status 'closed' on a Connections case"),
        (CC, "closed", Event(Trigger.set_status, "waiting"),
         "case is closed; 'waiting' is not allowed from 'closed'"),
        (CN, "delivered", Event(Trigger.set_status, "in_progress"),
         "case is delivered; 'in_progress' is not allowed from 'delivered'"),
        (CC, "waiting", Event(Trigger.set_status, "open"),
         "'open' is not allowed from 'waiting'"),
        (CC, "closed", Event(P), "case is closed"),
        (CC, "open", Event(CANCEL), "#cancel does not apply to a Customer Care case"),
        (CC, "open", Event(REM), "a reminder is not allowed in 'open'"),
    ],
)
def test_refusals_say_why(lifecycle: Lifecycle, status: str, event: Event, message: str) -> None:
    with pytest.raises(IllegalTransition, match=message.replace("(", r"\(")):
        transition(lifecycle, status, event)


def test_the_set_status_message_lists_the_statuses() -> None:
    with pytest.raises(IllegalTransition) as caught:
        transition(CC, "open", Event(Trigger.set_status, "done"))
    assert "open, in_progress, waiting, resolved, closed" in str(caught.value)


def test_case_closed_is_an_illegal_transition() -> None:
    assert issubclass(CaseClosed, IllegalTransition)


def test_an_unknown_current_status_is_a_value_error_not_a_refusal() -> None:
    with pytest.raises(ValueError, match="not a status of the customer_care lifecycle"):
        transition(CC, "pending_seller", Event(P))
    with pytest.raises(ValueError):
        label(CN, "open")
    with pytest.raises(ValueError):
        is_final(CN, "closed")


@pytest.mark.parametrize(
    "event_args",
    [(Trigger.set_status, None), (Trigger.staff_reply, "waiting"), (Trigger.close_due, "closed")],
)
def test_an_event_has_a_target_exactly_for_set_status(
    event_args: tuple[Trigger, str | None],
) -> None:
    with pytest.raises(ValueError):
        Event(*event_args)


def test_events_compare_by_value() -> None:
    assert Event(Trigger.set_status, "waiting") == Event(Trigger.set_status, "waiting")
    assert Event(P) != Event(S)


# ---- statuses, labels, final ----


def test_statuses_and_labels_match_the_spec() -> None:
    assert statuses(CC) == ("open", "in_progress", "waiting", "resolved", "closed")
    assert statuses(CN) == ("in_progress", "pending_seller", "delivered", "not_completed")
    assert label(CC, "waiting") == "Partner's feedback required"
    assert label(CC, "in_progress") == "In progress"
    assert label(CN, "pending_seller") == "Pending seller's feedback"
    assert label(CN, "not_completed") == "Not completed"
    assert [label(CC, s) for s in statuses(CC)] == [
        "Open", "In progress", "Partner's feedback required", "Resolved", "Closed"
    ]
    assert [label(CN, s) for s in statuses(CN)] == [
        "In progress", "Pending seller's feedback", "Delivered", "Not completed"
    ]


def test_initial_and_final_statuses() -> None:
    assert INITIAL_STATUS == {CC: "open", CN: "in_progress"}
    assert [s for s in statuses(CC) if is_final(CC, s)] == ["closed"]
    assert [s for s in statuses(CN) if is_final(CN, s)] == ["delivered", "not_completed"]


def test_lifecycles_are_strings_for_config_and_storage() -> None:
    assert Lifecycle("customer_care") is CC
    assert transition(Lifecycle("connections"), "in_progress", Event(Trigger("cancel"))).status == (
        "not_completed"
    )


@pytest.mark.parametrize(
    ("lifecycle", "text", "found"),
    [
        (CC, "waiting", "waiting"),
        (CC, "In progress", "in_progress"),
        (CC, "in-progress", "in_progress"),
        (CC, " IN_PROGRESS ", "in_progress"),
        (CC, "partner's feedback required", "waiting"),
        (CN, "Pending seller's feedback", "pending_seller"),
        (CN, "not completed", "not_completed"),
        (CC, "delivered", None),
        (CC, "", None),
    ],
)
def test_find_status_accepts_names_and_labels(
    lifecycle: Lifecycle, text: str, found: str | None
) -> None:
    assert find_status(lifecycle, text) == found


# ---- invariants over the module's own table ----


def test_the_clock_rule_holds_for_every_row() -> None:
    """Self-loops keep the clock; entering a timed status starts it; any other move stops it."""
    for (lc, before, _, _), outcome in TRANSITIONS.items():
        if outcome.status == before:
            assert outcome.clock is KEEP
        elif (lc, outcome.status) in COUNTDOWNS:
            assert outcome.clock is START
        else:
            assert outcome.clock is STOP


def test_rows_name_real_statuses() -> None:
    for (lc, before, trigger, target), outcome in TRANSITIONS.items():
        assert before in STATUSES[lc] and outcome.status in STATUSES[lc]
        if trigger is Trigger.set_status:
            assert target == outcome.status
        else:
            assert target is None


def test_nothing_leaves_a_final_status() -> None:
    for (lc, before, _, _), outcome in TRANSITIONS.items():
        if before in FINAL_STATUSES[lc]:
            assert outcome == Transition(before, (), KEEP)


def test_timers_exist_exactly_where_the_table_accepts_them() -> None:
    for lc in Lifecycle:
        for status in statuses(lc):
            accepts_close = (lc, status, CLOSE, None) in TRANSITIONS
            accepts_reminder = (lc, status, REM, None) in TRANSITIONS
            assert (countdown(lc, status) is not None) == accepts_close
            assert (countdown(lc, status) is Countdown.waiting) == accepts_reminder


def test_staff_mails_are_the_staff_facing_kinds() -> None:
    assert TO_STAFF == {M.MANUAL_REVIEW, M.STAFF_NOTICE, M.SOLVED_NOTICE}
    for outcome in TRANSITIONS.values():
        assert all(isinstance(kind, M) for kind in outcome.sends)
        assert len(set(outcome.sends)) == len(outcome.sends)


@pytest.mark.parametrize("lifecycle", list(Lifecycle))
def test_every_status_is_reachable_and_every_live_one_can_end(lifecycle: Lifecycle) -> None:
    edges: dict[str, set[str]] = {s: set() for s in statuses(lifecycle)}
    for (lc, before, _, _), outcome in TRANSITIONS.items():
        if lc is lifecycle:
            edges[before].add(outcome.status)
    seen, todo = set(), [INITIAL_STATUS[lifecycle]]
    while todo:
        status = todo.pop()
        if status not in seen:
            seen.add(status)
            todo.extend(edges[status])
    assert seen == set(statuses(lifecycle))
    for status in statuses(lifecycle):
        if not is_final(lifecycle, status):
            assert edges[status] & FINAL_STATUSES[lifecycle]


# ---- whole stories, as the pipeline will drive them ----


def _run(lifecycle: Lifecycle, *events: Event) -> list[str]:
    status, path = INITIAL_STATUS[lifecycle], []
    for event in events:
        status = transition(lifecycle, status, event).status
        path.append(status)
    return path


def test_customer_care_story_waiting_then_timed_closure() -> None:
    assert _run(
        CC,
        Event(S),
        Event(Trigger.set_status, "waiting"),
        Event(REM),
        Event(REM),
        Event(CLOSE),
    ) == ["in_progress", "waiting", "waiting", "waiting", "closed"]


def test_customer_care_story_resolved_reopened_then_resolved_again() -> None:
    assert _run(
        CC,
        Event(Trigger.set_status, "resolved"),
        Event(P),
        Event(Trigger.set_status, "resolved"),
        Event(CLOSE),
    ) == ["resolved", "in_progress", "resolved", "closed"]


def test_connections_story_pending_seller_runs_out() -> None:
    assert _run(
        CN,
        Event(FAIL),
        Event(Trigger.set_status, "pending_seller"),
        Event(REM),
        Event(P),
        Event(Trigger.set_status, "pending_seller"),
        Event(CLOSE),
    ) == ["in_progress", "pending_seller", "pending_seller", "in_progress", "pending_seller",
          "not_completed"]
