"""The case lifecycles: one declarative table of every legal move, and nothing else.

Pure: no I/O, no clock. The caller (intake, the sweep, the CLI) turns what happened into an
``Event``, asks :func:`transition` what follows, and applies the returned ``Transition`` (status,
automatic mails, waiting clock) in its own transaction. Anything the table does not list is
illegal and raises :class:`IllegalTransition` with a message fit to mail back to staff or to print
from the CLI, so the rules live in :data:`TRANSITIONS` instead of in ``if``s spread over the
pipeline.

Decisions the SPEC leaves open, fixed here:

* ``sends`` lists *every* automatic mail a transition causes, staff-facing ones included
  (``MANUAL_REVIEW`` and ``STAFF_NOTICE``, see :data:`TO_STAFF`); everything else goes to the
  case's participants. Mails that follow from the message rather than from the status (the ``ACK``
  of a new case, the ``RELAY`` of a staff reply) are the caller's and never appear here.
* Every participant reply to a live case sends ``STAFF_NOTICE``: the SPEC says staff are told
  "when a reply needs them", and a reply from the customer is exactly that.
* Entering ``waiting`` / ``pending_seller`` by a status command sends ``STATUS`` so that
  ``cases set-status`` (which has no relayed text) still tells the customer what is expected of
  them; the reminders 3 and 5 days later presuppose they were told.
* ``#close`` by staff sends ``CLOSED_NOTICE``; the timed closure of a ``waiting`` case sends
  ``CLOSURE`` (the "we closed it because we heard nothing" notice). A ``resolved`` case that
  expires closes silently: the ``SOLUTION`` mail already told the customer about the 7 days.
* Connections has no ``closed``: when the ``pending_seller`` clock runs out the case ends in
  ``not_completed`` with the ``CLOSURE`` notice (not a second ``NOT_COMPLETED`` mail).
* ``delivered`` by a status command sends ``STATUS``; ``CREDENTIALS`` is kept for the activation
  hook's success, whose stdout that template carries. Activation results are accepted in any live
  connections status (a hook may finish after staff moved the case); a failure never moves it.
* A duplicate connection request is no transition at all: the decision records the mail on the
  request already under way and answers the sender with ``DUPLICATE``; no case is opened.
* Setting the status a case already has is a no-op (nothing sent, clock kept), so a repeated CLI
  call or ``#waiting`` is harmless. ``open`` can never be set: it only means "nobody has touched
  this new case yet".
* Final statuses (``closed``, ``delivered``, ``not_completed``) accept no status change. A
  participant's reply or ``#cancel`` there raises :class:`CaseClosed` (a subclass of
  ``IllegalTransition``, so a caller that only knows the base class still refuses): the caller
  opens a new case linked to this one. A staff reply there is a no-op; the caller still relays it.
* A customer's ``solved`` (``Trigger.self_solved``, see ``selfservice``) resolves an ``open``,
  ``in_progress`` or ``waiting`` case and starts the same 7-day clock as a staff resolution; it
  sends the customer ``SELF_SOLVED`` and the staff ``SOLVED_NOTICE``. In ``resolved`` it is a
  no-op (it must not reopen the case as any other reply would). Only lifecycles with
  ``resolved`` know it.
* The lifecycle never reads the clock, so "a reply to ``resolved`` within 7 days" is the caller's
  ordering: it runs the case's due timer (``timers.due_step``) before it applies the reply. If the
  case was closed by that, the reply meets ``closed`` and raises ``CaseClosed``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from helpdesk.core.model import MailKind


class Lifecycle(StrEnum):
    customer_care = "customer_care"
    connections = "connections"


LIFECYCLE_LABELS: Mapping[Lifecycle, str] = MappingProxyType(
    {Lifecycle.customer_care: "Customer Care", Lifecycle.connections: "Connections"}
)

STATUSES: Mapping[Lifecycle, Mapping[str, str]] = MappingProxyType(
    {
        Lifecycle.customer_care: MappingProxyType(
            {
                "open": "Open",
                "in_progress": "In progress",
                "waiting": "Partner's feedback required",
                "resolved": "Resolved",
                "closed": "Closed",
            }
        ),
        Lifecycle.connections: MappingProxyType(
            {
                "in_progress": "In progress",
                "pending_seller": "Pending seller's feedback",
                "delivered": "Delivered",
                "not_completed": "Not completed",
            }
        ),
    }
)

INITIAL_STATUS: Mapping[Lifecycle, str] = MappingProxyType(
    {Lifecycle.customer_care: "open", Lifecycle.connections: "in_progress"}
)

FINAL_STATUSES: Mapping[Lifecycle, frozenset[str]] = MappingProxyType(
    {
        Lifecycle.customer_care: frozenset({"closed"}),
        Lifecycle.connections: frozenset({"delivered", "not_completed"}),
    }
)


class Trigger(StrEnum):
    participant_reply = "participant_reply"  # a human participant wrote (never machine mail)
    staff_reply = "staff_reply"  # staff wrote, without a status command
    set_status = "set_status"  # #status X, #waiting, #resolve, #close, or `cases set-status`
    reminder_due = "reminder_due"  # the waiting clock reached a reminder
    close_due = "close_due"  # the waiting / resolved clock ran out
    activation_succeeded = "activation_succeeded"  # connections hook exited 0
    activation_failed = "activation_failed"  # connections hook failed or timed out
    cancel = "cancel"  # a participant's #cancel on a connections case
    self_solved = "self_solved"  # a participant replied `solved` (a suggested article helped)


# Events a participant causes: on a final status they mean "open a new linked case".
PARTICIPANT_TRIGGERS: frozenset[Trigger] = frozenset({Trigger.participant_reply, Trigger.cancel})

# Automatic mails that go to staff (the category's notify list), not to the participants.
TO_STAFF: frozenset[MailKind] = frozenset({MailKind.MANUAL_REVIEW, MailKind.STAFF_NOTICE,
                                           MailKind.SOLVED_NOTICE})

_DESCRIBE: Mapping[Trigger, str] = MappingProxyType(
    {
        Trigger.participant_reply: "a participant's reply",
        Trigger.staff_reply: "a staff reply",
        Trigger.set_status: "a status change",
        Trigger.reminder_due: "a reminder",
        Trigger.close_due: "a timed closure",
        Trigger.activation_succeeded: "a successful activation",
        Trigger.activation_failed: "a failed activation",
        Trigger.cancel: "#cancel",
        Trigger.self_solved: "a customer's 'solved'",
    }
)


class ClockAction(StrEnum):
    """What the transition does to the case's waiting clock (``clock_started_at``)."""

    start = "start"  # (re)start now, no reminder sent: entering waiting/pending_seller/resolved
    stop = "stop"  # clear it: the case left a timed status
    keep = "keep"  # leave it as it is


class Countdown(StrEnum):
    """Which schedule a timed status runs (see ``timers``)."""

    waiting = "waiting"  # reminders, then closure at close_after
    resolved = "resolved"  # closure at resolved_close_after, no reminders


COUNTDOWNS: Mapping[tuple[Lifecycle, str], Countdown] = MappingProxyType(
    {
        (Lifecycle.customer_care, "waiting"): Countdown.waiting,
        (Lifecycle.customer_care, "resolved"): Countdown.resolved,
        (Lifecycle.connections, "pending_seller"): Countdown.waiting,
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a case; ``target`` is the wanted status of a ``set_status``."""

    trigger: Trigger
    target: str | None = None

    def __post_init__(self) -> None:
        if (self.trigger is Trigger.set_status) != (self.target is not None):
            raise ValueError("an Event carries a target status exactly when it is set_status")


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome: the new status, the automatic mails to queue, and the clock action."""

    status: str
    sends: tuple[MailKind, ...]
    clock: ClockAction


class IllegalTransition(Exception):
    """The event is not allowed in the case's status; the message says why, for humans."""


class CaseClosed(IllegalTransition):
    """A participant wrote to a case in a final status: open a new case linked to it instead."""


_CC, _CN = Lifecycle.customer_care, Lifecycle.connections
_P, _S, _SET = Trigger.participant_reply, Trigger.staff_reply, Trigger.set_status
_REM, _CLOSE = Trigger.reminder_due, Trigger.close_due
_OK, _FAIL = Trigger.activation_succeeded, Trigger.activation_failed
_CANCEL, _SOLVED = Trigger.cancel, Trigger.self_solved
_START, _STOP, _KEEP = ClockAction.start, ClockAction.stop, ClockAction.keep
_M = MailKind


def _t(status: str, clock: ClockAction, *sends: MailKind) -> Transition:
    return Transition(status, sends, clock)


# (lifecycle, from status, trigger, target for set_status else None) -> outcome.
# One row per legal move; anything absent is illegal.
TRANSITIONS: Mapping[tuple[Lifecycle, str, Trigger, str | None], Transition] = MappingProxyType(
    {
        # ---- customer care (also billing) ----
        (_CC, "open", _P, None): _t("open", _KEEP, _M.STAFF_NOTICE),
        (_CC, "open", _S, None): _t("in_progress", _STOP),  # somebody is working on it
        (_CC, "open", _SET, "open"): _t("open", _KEEP),
        (_CC, "open", _SET, "in_progress"): _t("in_progress", _STOP),
        (_CC, "open", _SET, "waiting"): _t("waiting", _START, _M.STATUS),
        (_CC, "open", _SET, "resolved"): _t("resolved", _START, _M.SOLUTION),
        (_CC, "open", _SET, "closed"): _t("closed", _STOP, _M.CLOSED_NOTICE),
        (_CC, "in_progress", _P, None): _t("in_progress", _KEEP, _M.STAFF_NOTICE),
        (_CC, "in_progress", _S, None): _t("in_progress", _KEEP),
        (_CC, "in_progress", _SET, "in_progress"): _t("in_progress", _KEEP),
        (_CC, "in_progress", _SET, "waiting"): _t("waiting", _START, _M.STATUS),
        (_CC, "in_progress", _SET, "resolved"): _t("resolved", _START, _M.SOLUTION),
        (_CC, "in_progress", _SET, "closed"): _t("closed", _STOP, _M.CLOSED_NOTICE),
        (_CC, "waiting", _P, None): _t("in_progress", _STOP, _M.STAFF_NOTICE),
        (_CC, "waiting", _S, None): _t("waiting", _KEEP),
        (_CC, "waiting", _SET, "in_progress"): _t("in_progress", _STOP),
        (_CC, "waiting", _SET, "waiting"): _t("waiting", _KEEP),
        (_CC, "waiting", _SET, "resolved"): _t("resolved", _START, _M.SOLUTION),
        (_CC, "waiting", _SET, "closed"): _t("closed", _STOP, _M.CLOSED_NOTICE),
        (_CC, "waiting", _REM, None): _t("waiting", _KEEP, _M.REMINDER),
        (_CC, "waiting", _CLOSE, None): _t("closed", _STOP, _M.CLOSURE),
        (_CC, "resolved", _P, None): _t("in_progress", _STOP, _M.REOPENED, _M.STAFF_NOTICE),
        (_CC, "resolved", _S, None): _t("resolved", _KEEP),
        (_CC, "resolved", _SET, "in_progress"): _t("in_progress", _STOP),
        (_CC, "resolved", _SET, "waiting"): _t("waiting", _START, _M.STATUS),
        (_CC, "resolved", _SET, "resolved"): _t("resolved", _KEEP),
        (_CC, "resolved", _SET, "closed"): _t("closed", _STOP, _M.CLOSED_NOTICE),
        (_CC, "resolved", _CLOSE, None): _t("closed", _STOP),
        (_CC, "open", _SOLVED, None): _t("resolved", _START, _M.SELF_SOLVED, _M.SOLVED_NOTICE),
        (_CC, "in_progress", _SOLVED, None): _t("resolved", _START, _M.SELF_SOLVED,
                                                 _M.SOLVED_NOTICE),
        (_CC, "waiting", _SOLVED, None): _t("resolved", _START, _M.SELF_SOLVED, _M.SOLVED_NOTICE),
        (_CC, "resolved", _SOLVED, None): _t("resolved", _KEEP),
        (_CC, "closed", _S, None): _t("closed", _KEEP),
        (_CC, "closed", _SET, "closed"): _t("closed", _KEEP),
        # ---- connections ----
        (_CN, "in_progress", _P, None): _t("in_progress", _KEEP, _M.STAFF_NOTICE),
        (_CN, "in_progress", _S, None): _t("in_progress", _KEEP),
        (_CN, "in_progress", _SET, "in_progress"): _t("in_progress", _KEEP),
        (_CN, "in_progress", _SET, "pending_seller"): _t("pending_seller", _START, _M.STATUS),
        (_CN, "in_progress", _SET, "delivered"): _t("delivered", _STOP, _M.STATUS),
        (_CN, "in_progress", _SET, "not_completed"): _t("not_completed", _STOP, _M.NOT_COMPLETED),
        (_CN, "in_progress", _OK, None): _t("delivered", _STOP, _M.CREDENTIALS),
        (_CN, "in_progress", _FAIL, None): _t("in_progress", _KEEP, _M.MANUAL_REVIEW),
        (_CN, "in_progress", _CANCEL, None): _t("not_completed", _STOP, _M.NOT_COMPLETED),
        (_CN, "pending_seller", _P, None): _t("in_progress", _STOP, _M.STAFF_NOTICE),
        (_CN, "pending_seller", _S, None): _t("pending_seller", _KEEP),
        (_CN, "pending_seller", _SET, "in_progress"): _t("in_progress", _STOP),
        (_CN, "pending_seller", _SET, "pending_seller"): _t("pending_seller", _KEEP),
        (_CN, "pending_seller", _SET, "delivered"): _t("delivered", _STOP, _M.STATUS),
        (_CN, "pending_seller", _SET, "not_completed"): _t(
            "not_completed", _STOP, _M.NOT_COMPLETED
        ),
        (_CN, "pending_seller", _REM, None): _t("pending_seller", _KEEP, _M.REMINDER),
        (_CN, "pending_seller", _CLOSE, None): _t("not_completed", _STOP, _M.CLOSURE),
        (_CN, "pending_seller", _OK, None): _t("delivered", _STOP, _M.CREDENTIALS),
        (_CN, "pending_seller", _FAIL, None): _t("pending_seller", _KEEP, _M.MANUAL_REVIEW),
        (_CN, "pending_seller", _CANCEL, None): _t("not_completed", _STOP, _M.NOT_COMPLETED),
        (_CN, "delivered", _S, None): _t("delivered", _KEEP),
        (_CN, "delivered", _SET, "delivered"): _t("delivered", _KEEP),
        (_CN, "not_completed", _S, None): _t("not_completed", _KEEP),
        (_CN, "not_completed", _SET, "not_completed"): _t("not_completed", _KEEP),
    }
)

_TRIGGERS_USED: Mapping[Lifecycle, frozenset[Trigger]] = MappingProxyType(
    {lc: frozenset(k[2] for k in TRANSITIONS if k[0] is lc) for lc in Lifecycle}
)


def statuses(lifecycle: Lifecycle) -> tuple[str, ...]:
    """The lifecycle's machine names, in display order."""
    return tuple(STATUSES[lifecycle])


def label(lifecycle: Lifecycle, status: str) -> str:
    """The human label of a status, e.g. ``waiting`` -> "Partner's feedback required"."""
    _check_status(lifecycle, status)
    return STATUSES[lifecycle][status]


def is_final(lifecycle: Lifecycle, status: str) -> bool:
    """True when nothing moves the case any more; a participant's reply opens a new case."""
    _check_status(lifecycle, status)
    return status in FINAL_STATUSES[lifecycle]


def countdown(lifecycle: Lifecycle, status: str) -> Countdown | None:
    """The timer schedule a status runs, or None when it has no timers."""
    _check_status(lifecycle, status)
    return COUNTDOWNS.get((lifecycle, status))


def find_status(lifecycle: Lifecycle, text: str) -> str | None:
    """The machine name that ``text`` names (machine name or label, any case), or None.

    For command parsing: ``#status In progress``, ``#status in-progress`` and
    ``#status in_progress`` all mean ``in_progress``.
    """
    wanted = " ".join(text.replace("_", " ").replace("-", " ").split()).casefold()
    for name, name_label in STATUSES[lifecycle].items():
        if wanted in (name.replace("_", " ").casefold(), name_label.casefold()):
            return name
    return None


def transition(lifecycle: Lifecycle, status: str, event: Event) -> Transition:
    """What ``event`` does to a case of ``lifecycle`` in ``status``.

    Raises ``CaseClosed`` for a participant's event on a final status, ``IllegalTransition`` for
    anything else the table does not allow, and ``ValueError`` when ``status`` is not one of the
    lifecycle's statuses (corrupt data, not a user error).
    """
    _check_status(lifecycle, status)
    found = TRANSITIONS.get((lifecycle, status, event.trigger, event.target))
    if found is not None:
        return found
    raise _refusal(lifecycle, status, event)


def _refusal(lifecycle: Lifecycle, status: str, event: Event) -> IllegalTransition:
    """The clearest reason why the table has no row for this event."""
    kind = LIFECYCLE_LABELS[lifecycle]
    what = _DESCRIBE[event.trigger]
    if event.trigger not in _TRIGGERS_USED[lifecycle]:
        return IllegalTransition(f"{what} does not apply to a {kind} case")
    final = status in FINAL_STATUSES[lifecycle]
    if final and event.trigger in PARTICIPANT_TRIGGERS:
        return CaseClosed(f"case is {status}; {what} opens a new linked case")
    if event.trigger is Trigger.set_status:
        target = event.target
        if target not in STATUSES[lifecycle]:
            known = ", ".join(statuses(lifecycle))
            return IllegalTransition(
                f"cannot set status '{target}' on a {kind} case (its statuses: {known})"
            )
        if final:
            return IllegalTransition(
                f"case is {status}; '{target}' is not allowed from '{status}'"
            )
        if target == INITIAL_STATUS[lifecycle]:
            return IllegalTransition(
                f"'{target}' is not allowed from '{status}': it is only the status of a new case"
            )
        return IllegalTransition(f"'{target}' is not allowed from '{status}' on a {kind} case")
    return IllegalTransition(f"{what} is not allowed in '{status}' on a {kind} case")


def _check_status(lifecycle: Lifecycle, status: str) -> None:
    if status not in STATUSES[lifecycle]:
        raise ValueError(f"{status!r} is not a status of the {lifecycle} lifecycle")
