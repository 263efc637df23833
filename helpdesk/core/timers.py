"""The waiting clock and outbox backoff, computed from stored values, never slept on.

Pure: ``now`` is always a parameter. A case stores ``clock_started_at`` (set when a transition
says ``ClockAction.start``: entering ``waiting`` / ``pending_seller`` / ``resolved``) and
``reminders_sent``. From those two values and the status this module answers:

* :func:`next_due_at` - when the case next needs the sweep. The shell stores it as an indexed
  ``due_at`` column so the sweep is ``WHERE due_at <= now`` instead of a scan.
* :func:`due_step` - what the sweep must do now. After downtime only the most advanced due step
  is returned (a closure beats stale reminders; reminder 2 wins over an unsent reminder 1), so a
  customer never receives a burst of reminders that are already out of date.

SPEC: "each reminder is due at that moment plus its duration", due exactly at that instant.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from helpdesk.core.lifecycle import (
    ClockAction,
    Countdown,
    Event,
    Lifecycle,
    Trigger,
    countdown,
)


@dataclass(frozen=True, slots=True)
class TimerPolicy:
    """Durations from config ``timers``: reminders after entering waiting, then the closure.

    Reminders must increase and come before ``close_after``: a reminder at or after the closure
    could never be sent, which is a config mistake worth refusing at load time.
    """

    reminders: tuple[timedelta, ...]
    close_after: timedelta
    resolved_close_after: timedelta

    def __post_init__(self) -> None:
        zero = timedelta(0)
        if self.close_after <= zero or self.resolved_close_after <= zero:
            raise ValueError("close_after and resolved_close_after must be positive")
        previous = zero
        for number, after in enumerate(self.reminders, start=1):
            if after <= previous:
                raise ValueError(f"reminder {number} ({after}) must be positive and after the last")
            previous = after
        if previous >= self.close_after:
            raise ValueError(f"every reminder must come before close_after ({self.close_after})")


DEFAULT_POLICY = TimerPolicy(
    reminders=(timedelta(days=3), timedelta(days=5)),
    close_after=timedelta(days=7),
    resolved_close_after=timedelta(days=7),
)


@dataclass(frozen=True, slots=True)
class Step:
    """One due timer step: ``reminder`` number N (1-based) or the ``close`` (number 0)."""

    kind: Literal["reminder", "close"]
    number: int = 0

    def __post_init__(self) -> None:
        if (self.kind == "reminder") != (self.number >= 1) or self.number < 0:
            raise ValueError("a reminder step is numbered from 1; a close step is number 0")


def next_due_at(
    lifecycle: Lifecycle,
    status: str,
    clock_started_at: datetime | None,
    reminders_sent: int,
    policy: TimerPolicy,
) -> datetime | None:
    """When the next timer step of the case falls due, or None when it has no timers running."""
    schedule = countdown(lifecycle, status)
    if schedule is None or clock_started_at is None:
        return None
    if schedule is Countdown.resolved:
        return clock_started_at + policy.resolved_close_after
    if reminders_sent < len(policy.reminders):
        return clock_started_at + policy.reminders[max(reminders_sent, 0)]
    return clock_started_at + policy.close_after


def due_step(
    lifecycle: Lifecycle,
    status: str,
    clock_started_at: datetime | None,
    reminders_sent: int,
    policy: TimerPolicy,
    now: datetime,
) -> Step | None:
    """The most advanced step due at ``now``, or None.

    After the step the caller applies ``transition(..., event_for(step))`` and, for a reminder,
    stores ``reminders_sent = step.number`` (skipped reminders count as sent: they are stale).
    """
    schedule = countdown(lifecycle, status)
    if schedule is None or clock_started_at is None:
        return None
    elapsed = now - clock_started_at
    if schedule is Countdown.resolved:
        return Step("close") if elapsed >= policy.resolved_close_after else None
    if elapsed >= policy.close_after:
        return Step("close")
    due = sum(1 for after in policy.reminders if elapsed >= after)  # reminders are increasing
    return Step("reminder", due) if due > reminders_sent else None


def event_for(step: Step) -> Event:
    """The lifecycle event a timer step feeds to ``transition``."""
    return Event(Trigger.reminder_due if step.kind == "reminder" else Trigger.close_due)


def clock_after(
    action: ClockAction, now: datetime, clock_started_at: datetime | None, reminders_sent: int
) -> tuple[datetime | None, int]:
    """The case's new ``(clock_started_at, reminders_sent)`` after a transition's clock action."""
    if action is ClockAction.start:
        return now, 0
    if action is ClockAction.stop:
        return None, 0
    return clock_started_at, reminders_sent


def retry_at(
    attempts: int,
    now: datetime,
    base: timedelta = timedelta(minutes=1),
    cap: timedelta = timedelta(hours=6),
    jitter: float = 0.0,
) -> datetime:
    """When to try an outbox mail again after ``attempts`` failed tries: exponential, capped.

    ``base`` after the first failure, doubling each time, never more than ``cap``; 0 failures
    means due now. ``jitter`` in [0, 1) shortens the delay by that fraction. The caller draws it
    (e.g. ``random.random() * 0.2``) so that this function stays deterministic and a batch of
    mails failing together does not retry in lockstep.
    """
    if attempts < 0:
        raise ValueError("attempts cannot be negative")
    if base <= timedelta(0) or cap < base:
        raise ValueError("need 0 < base <= cap")
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter is a fraction in [0, 1)")
    if attempts == 0:
        return now
    # In float seconds with a bounded exponent: timedelta * 2**100 would overflow.
    seconds = min(cap.total_seconds(), base.total_seconds() * 2.0 ** min(attempts - 1, 64))
    return now + timedelta(seconds=seconds * (1.0 - jitter))
