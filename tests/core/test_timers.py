"""The waiting clock and retry backoff: boundaries to the second, the most-advanced-step rule."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpdesk.core.lifecycle import (
    STATUSES,
    ClockAction,
    Event,
    Lifecycle,
    Trigger,
    transition,
)
from helpdesk.core.timers import (
    DEFAULT_POLICY,
    Step,
    TimerPolicy,
    clock_after,
    due_step,
    event_for,
    next_due_at,
    retry_at,
)

CC, CN = Lifecycle.customer_care, Lifecycle.connections
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
DAY, SECOND = timedelta(days=1), timedelta(seconds=1)
POLICY = DEFAULT_POLICY  # reminders 3d, 5d; close 7d; resolved close 7d
WAITING = [(CC, "waiting"), (CN, "pending_seller")]


def step_at(lc: Lifecycle, status: str, sent: int, at: timedelta) -> Step | None:
    return due_step(lc, status, T0, sent, POLICY, T0 + at)


def test_default_policy_is_the_spec_ladder() -> None:
    assert POLICY == TimerPolicy((3 * DAY, 5 * DAY), 7 * DAY, 7 * DAY)


# ---- boundaries ----


@pytest.mark.parametrize(("lc", "status"), WAITING)
def test_first_reminder_due_at_exactly_3_days_not_a_second_before(
    lc: Lifecycle, status: str
) -> None:
    assert step_at(lc, status, 0, 3 * DAY - SECOND) is None
    assert step_at(lc, status, 0, 3 * DAY - timedelta(microseconds=1)) is None
    assert step_at(lc, status, 0, 3 * DAY) == Step("reminder", 1)


@pytest.mark.parametrize(("lc", "status"), WAITING)
def test_second_reminder_due_at_exactly_5_days(lc: Lifecycle, status: str) -> None:
    assert step_at(lc, status, 1, 5 * DAY - SECOND) is None
    assert step_at(lc, status, 1, 5 * DAY) == Step("reminder", 2)


@pytest.mark.parametrize(("lc", "status"), WAITING)
def test_close_due_at_exactly_7_days(lc: Lifecycle, status: str) -> None:
    assert step_at(lc, status, 2, 7 * DAY - SECOND) is None
    assert step_at(lc, status, 2, 7 * DAY) == Step("close")


def test_resolved_closes_at_exactly_7_days_with_no_reminders() -> None:
    for at in (DAY, 3 * DAY, 5 * DAY, 7 * DAY - SECOND):
        assert step_at(CC, "resolved", 0, at) is None
    assert step_at(CC, "resolved", 0, 7 * DAY) == Step("close")
    assert next_due_at(CC, "resolved", T0, 0, POLICY) == T0 + 7 * DAY


def test_resolved_uses_its_own_duration() -> None:
    policy = TimerPolicy((3 * DAY,), 7 * DAY, 2 * DAY)
    assert due_step(CC, "resolved", T0, 0, policy, T0 + 2 * DAY) == Step("close")
    assert due_step(CC, "waiting", T0, 0, policy, T0 + 2 * DAY) is None


# ---- the most advanced step after downtime ----


@pytest.mark.parametrize(("lc", "status"), WAITING)
@pytest.mark.parametrize(
    ("sent", "at", "expected"),
    [
        (0, 5 * DAY, Step("reminder", 2)),  # reminder 1 never went out: skip it
        (0, 6 * DAY, Step("reminder", 2)),
        (0, 7 * DAY, Step("close")),  # closure beats both stale reminders
        (0, 30 * DAY, Step("close")),
        (1, 7 * DAY, Step("close")),
        (1, 4 * DAY, None),  # reminder 1 sent, reminder 2 not yet due
        (2, 6 * DAY, None),  # both sent, closure not yet due
        (2, 5 * DAY, None),  # a sent reminder is never sent again
    ],
)
def test_only_the_most_advanced_step(
    lc: Lifecycle, status: str, sent: int, at: timedelta, expected: Step | None
) -> None:
    assert step_at(lc, status, sent, at) == expected


# ---- statuses without timers ----


UNTIMED = [
    (lc, s) for lc in Lifecycle for s in STATUSES[lc] if (lc, s) not in {*WAITING, (CC, "resolved")}
]


def test_the_untimed_statuses() -> None:
    assert UNTIMED == [
        (CC, "open"), (CC, "in_progress"), (CC, "closed"),
        (CN, "in_progress"), (CN, "delivered"), (CN, "not_completed"),
    ]


@pytest.mark.parametrize(("lc", "status"), UNTIMED)
def test_no_timers_outside_waiting_and_resolved(lc: Lifecycle, status: str) -> None:
    assert next_due_at(lc, status, T0, 0, POLICY) is None
    assert due_step(lc, status, T0, 0, POLICY, T0 + 365 * DAY) is None


@pytest.mark.parametrize(("lc", "status"), [*WAITING, (CC, "resolved")])
def test_no_timers_without_a_started_clock(lc: Lifecycle, status: str) -> None:
    assert next_due_at(lc, status, None, 0, POLICY) is None
    assert due_step(lc, status, None, 0, POLICY, T0 + 365 * DAY) is None


# ---- next_due_at: what the sweep's indexed due_at column holds ----


@pytest.mark.parametrize(("lc", "status"), WAITING)
def test_next_due_at_progresses_after_each_reminder(lc: Lifecycle, status: str) -> None:
    assert next_due_at(lc, status, T0, 0, POLICY) == T0 + 3 * DAY
    assert next_due_at(lc, status, T0, 1, POLICY) == T0 + 5 * DAY
    assert next_due_at(lc, status, T0, 2, POLICY) == T0 + 7 * DAY
    assert next_due_at(lc, status, T0, 5, POLICY) == T0 + 7 * DAY  # config shrank: close next


def test_without_reminders_the_close_is_next() -> None:
    policy = TimerPolicy((), timedelta(hours=36), 7 * DAY)
    assert next_due_at(CC, "waiting", T0, 0, policy) == T0 + timedelta(hours=36)
    assert due_step(CC, "waiting", T0, 0, policy, T0 + timedelta(hours=36)) == Step("close")


def test_a_whole_waiting_case_driven_by_the_sweep() -> None:
    """What the sweep does: due_at -> due_step -> transition -> clock; mails in order."""
    lc = CN
    t = transition(lc, "in_progress", Event(Trigger.set_status, "pending_seller"))
    status = t.status
    started, sent = clock_after(t.clock, T0, None, 0)
    due = next_due_at(lc, status, started, sent, POLICY)
    mails = []
    while due is not None:
        step = due_step(lc, status, started, sent, POLICY, due)
        assert step is not None
        assert due_step(lc, status, started, sent, POLICY, due - SECOND) is None
        t = transition(lc, status, event_for(step))
        mails.append((due - T0, *t.sends))
        status = t.status
        started, sent = clock_after(t.clock, due, started, step.number or sent)
        due = next_due_at(lc, status, started, sent, POLICY)
    assert status == "not_completed" and started is None
    assert mails == [(3 * DAY, "reminder"), (5 * DAY, "reminder"), (7 * DAY, "closure")]


@settings(database=None, max_examples=300)
@given(
    reminders=st.lists(st.integers(1, 20 * 24), min_size=0, max_size=4, unique=True),
    extra=st.integers(1, 10 * 24),
    resolved_hours=st.integers(1, 20 * 24),
    sent=st.integers(0, 5),
    status=st.sampled_from([*WAITING, (CC, "resolved")]),
    offset_seconds=st.integers(-5, 30 * 24 * 3600),
)
def test_due_step_is_due_exactly_from_next_due_at(
    reminders: list[int],
    extra: int,
    resolved_hours: int,
    sent: int,
    status: tuple[Lifecycle, str],
    offset_seconds: int,
) -> None:
    """The column and the step agree: a step is due iff now >= next_due_at, at every instant."""
    hours = sorted(reminders)
    policy = TimerPolicy(
        tuple(timedelta(hours=h) for h in hours),
        timedelta(hours=(hours[-1] if hours else 0) + extra),
        timedelta(hours=resolved_hours),
    )
    lc, name = status
    due = next_due_at(lc, name, T0, sent, policy)
    assert due is not None
    now = due + timedelta(seconds=offset_seconds)
    step = due_step(lc, name, T0, sent, policy, now)
    assert (step is not None) == (now >= due)
    if step is not None and step.kind == "reminder":
        assert step.number > sent
        assert now - T0 >= policy.reminders[step.number - 1]
        if step.number < len(policy.reminders):
            assert now - T0 < policy.reminders[step.number]  # nothing later is due: most advanced


# ---- steps, events, clock actions ----


def test_event_for_maps_steps_to_lifecycle_triggers() -> None:
    assert event_for(Step("reminder", 2)) == Event(Trigger.reminder_due)
    assert event_for(Step("close")) == Event(Trigger.close_due)


@pytest.mark.parametrize(("kind", "number"), [("reminder", 0), ("close", 1), ("close", -1)])
def test_step_numbers_are_checked(kind: str, number: int) -> None:
    with pytest.raises(ValueError):
        Step(kind, number)  # type: ignore[arg-type]


def test_clock_after_each_action() -> None:
    later = T0 + DAY
    assert clock_after(ClockAction.start, later, T0, 2) == (later, 0)
    assert clock_after(ClockAction.stop, later, T0, 2) == (None, 0)
    assert clock_after(ClockAction.keep, later, T0, 2) == (T0, 2)


def test_reentering_waiting_restarts_the_ladder() -> None:
    """Customer replies (clock stops), staff asks again: reminders count from the new start."""
    t = transition(CC, "waiting", Event(Trigger.participant_reply))
    started, sent = clock_after(t.clock, T0 + 4 * DAY, T0, 1)
    t = transition(CC, t.status, Event(Trigger.set_status, "waiting"))
    restart = T0 + 6 * DAY
    started, sent = clock_after(t.clock, restart, started, sent)
    assert (started, sent) == (restart, 0)
    assert next_due_at(CC, "waiting", started, sent, POLICY) == restart + 3 * DAY


# ---- policy validation ----


@pytest.mark.parametrize(
    ("reminders", "close_after", "resolved"),
    [
        ((5 * DAY, 3 * DAY), 7 * DAY, 7 * DAY),  # not increasing
        ((3 * DAY, 3 * DAY), 7 * DAY, 7 * DAY),  # repeated
        ((3 * DAY, 7 * DAY), 7 * DAY, 7 * DAY),  # a reminder at the closure could never go out
        ((timedelta(0),), 7 * DAY, 7 * DAY),
        ((3 * DAY,), timedelta(0), 7 * DAY),
        ((3 * DAY,), 7 * DAY, -DAY),
    ],
)
def test_policy_refuses_impossible_ladders(
    reminders: tuple[timedelta, ...], close_after: timedelta, resolved: timedelta
) -> None:
    with pytest.raises(ValueError):
        TimerPolicy(reminders, close_after, resolved)


# ---- outbox retry backoff ----


def test_retry_at_doubles_from_one_minute() -> None:
    delays = [retry_at(n, T0) - T0 for n in range(1, 6)]
    assert delays == [timedelta(minutes=m) for m in (1, 2, 4, 8, 16)]


def test_retry_at_is_capped_at_six_hours() -> None:
    assert retry_at(9, T0) - T0 == timedelta(minutes=256)
    assert retry_at(10, T0) - T0 == timedelta(hours=6)  # 512 minutes would exceed the cap
    assert retry_at(1000, T0) - T0 == timedelta(hours=6)  # no overflow for absurd counts


def test_retry_at_never_shrinks_as_attempts_grow() -> None:
    delays = [retry_at(n, T0) - T0 for n in range(0, 40)]
    assert delays == sorted(delays)
    assert delays[0] == timedelta(0)  # nothing failed yet: due now


def test_retry_at_custom_base_and_cap() -> None:
    base, cap = timedelta(seconds=10), timedelta(minutes=1)
    assert [(retry_at(n, T0, base, cap) - T0).total_seconds() for n in range(1, 6)] == [
        10, 20, 40, 60, 60
    ]


def test_retry_at_jitter_only_shortens_and_is_deterministic() -> None:
    assert retry_at(3, T0, jitter=0.25) - T0 == timedelta(minutes=3)
    assert retry_at(3, T0, jitter=0.25) == retry_at(3, T0, jitter=0.25)
    assert retry_at(50, T0, jitter=0.5) - T0 == timedelta(hours=3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": -1},
        {"attempts": 1, "jitter": 1.0},
        {"attempts": 1, "jitter": -0.1},
        {"attempts": 1, "base": timedelta(0)},
        {"attempts": 1, "base": timedelta(hours=2), "cap": timedelta(hours=1)},
    ],
)
def test_retry_at_refuses_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        retry_at(now=T0, **kwargs)  # type: ignore[arg-type]
