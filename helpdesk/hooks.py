"""Activation hooks of connections cases: run outside every transaction, recorded so that a
restart never runs one twice.

A new connections case gets a ``HookRun(status="pending", attempt=1)`` row in the transaction that
created it (``store.apply``). This module takes it from there:

1. **Claim.** ``UPDATE hook_run SET status='running', started_at=now WHERE id=? AND
   status='pending'``, committed on its own before anything starts. Only the process whose update
   hit the row runs it, so two daemons (or a daemon and a ``helpdesk ingest`` pipe) never run the
   same hook; and a ``running`` row that nobody finishes says "interrupted" after a crash. The case
   as JSON is read in the same transaction.
2. **Run**, with no transaction open: the category's ``activation.command`` (a relative
   ``command[0]`` such as ``./activate.sh`` resolves against the config file's folder, a bare name
   through ``PATH``), ``cwd`` the config folder, the case as JSON on stdin, ``HELPDESK_REF``,
   ``HELPDESK_REQUESTER``, ``HELPDESK_CATEGORY`` and ``HELPDESK_ATTEMPT`` added to the environment.
   It runs in its own session (process group); at the category's ``timeout`` the whole group gets
   SIGTERM, and SIGKILL :data:`KILL_GRACE` seconds later.
3. **Record**, in one transaction with the case change: exit 0 is ``Trigger.activation_succeeded``
   (``delivered``, the ``credentials`` mail to the participants carrying the hook's stdout);
   anything else (non-zero, killed, not startable, timeout) is ``Trigger.activation_failed`` (the
   status stays, an ``activation_failed`` event with the exit status, the reason and the last lines
   of stderr, and the ``manual_review`` mail to the staff audience with the reason as its note).
   If staff already moved the case to a final status, the run is recorded and the case is left
   alone (an ``activation_not_applied`` event says so).

Interrupted runs. A ``running`` row this process does not own is taken as interrupted once its
*lease* has run out: ``started_at`` + the category's timeout + :data:`ORPHAN_GRACE`. A live owner
always finishes within that (it kills the hook at the timeout and records right after), so the
lease is safe with several processes on one database, where "whatever is running when I start
was interrupted" is not: a ``helpdesk ingest`` pipe starts a process for every mail while the
daemon may be in the middle of a hook. After a crash the retry therefore comes at most
timeout + grace after the interrupted attempt began (at once when the daemon was down longer).
The interrupted attempt is closed as ``failed`` ("interrupted") and, for attempt 1, a new row
``attempt=2`` is claimed and run; an interrupted attempt 2 is not run again but goes to manual
review. A clean stop (SIGTERM: the daemon's ``stop`` event) kills running hooks at once and
records them the same way, with attempt 2 left ``pending`` so the next start runs it without
waiting for the lease. A hook whose case is already final when it is claimed is not run.

Concurrency. In the daemon (``stop`` given) :func:`run_pending_hooks` only starts work: it claims
at most as many rows as a per-app pool of :data:`MAX_WORKERS` threads has free and returns at
once, so a slow or hanging hook never holds up the scheduler's sweep (inbound mail has its own
threads anyway), and unclaimed rows stay free for another process. It returns the number of
mails queued by runs that finished since the previous call, which is when the daemon wakes the
sender. Without ``stop`` (the one-shot CLI commands) it runs everything pending to completion
and returns the number of mails queued.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import lifecycle
from helpdesk.core.decide import Audience, Mail
from helpdesk.core.lifecycle import Event as LifecycleEvent
from helpdesk.core.lifecycle import IllegalTransition, Lifecycle, Trigger
from helpdesk.core.model import Direction, MailKind
from helpdesk.outbound.facts import Facts
from helpdesk.outbound.queue import Extras, queue_mail
from helpdesk.store.apply import change_status
from helpdesk.store.orm import Case, Event, HookRun, Message, Participant

log = logging.getLogger(__name__)

MAX_WORKERS = 4  # hooks running at once per process
MAX_ATTEMPTS = 2  # an interrupted run is retried once, then goes to manual review
ORPHAN_GRACE = timedelta(seconds=10)  # on top of the timeout before a running row is orphaned
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
STDOUT_LIMIT = 64_000  # characters of stdout kept (it goes into a mail)
STDERR_TAIL_LINES = 20
STDERR_TAIL_CHARS = 4_000
DEFAULT_TIMEOUT = timedelta(seconds=120)  # a case whose category lost its activation config
_RECORD_TRIES = 5  # a result is precious: retry recording it if the database is busy


@dataclass(frozen=True, slots=True)
class _Job:
    run_id: int
    case_id: int
    ref: str
    attempt: int
    argv: tuple[str, ...]
    cwd: Path
    timeout: timedelta
    stdin: bytes
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class HookResult:
    """What one run of a hook came to; ``reason`` is None exactly when it succeeded."""

    exit_status: int | None
    stdout: str
    stderr_tail: str
    reason: str | None
    interrupted: bool = False

    @property
    def succeeded(self) -> bool:
        return self.reason is None


def run_pending_hooks(app: App, stop: threading.Event | None = None, *,
                      wait: bool | None = None) -> int:
    """Run the activation hooks that are due; returns how many mails their results queued.

    ``wait`` defaults to ``stop is None``: the CLI runs everything to completion; the daemon,
    which passes its stop event, starts the work on a background pool and gets back at once the
    mails queued by the runs that finished since its previous call.
    """
    if wait is None:
        wait = stop is None
    if not wait:
        return _runner_for(app).poll(stop)
    runner = HookRunner(app)
    try:
        while True:
            try:
                started = runner.start(stop)
            except Exception:
                log.exception("activation hooks: could not claim pending runs")
                break
            runner.wait()
            if not started or (stop is not None and stop.is_set()):
                break
        return runner.take_mail_count()
    finally:
        runner.close()


def shutdown_hooks(app: App, wait: bool = True) -> None:
    """Stop the background pool of ``app`` (tests; the daemon relies on its stop event)."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.pop(id(app), None)
    if runner is not None:
        runner.close(wait)


# ---- the per-process pool ----------------------------------------------------------------

_RUNNERS: dict[int, HookRunner] = {}  # keyed by id(app); a runner holds its app, so no reuse
_RUNNERS_LOCK = threading.Lock()


def _runner_for(app: App) -> HookRunner:
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(id(app))
        if runner is None:
            runner = _RUNNERS[id(app)] = HookRunner(app)
        return runner


class HookRunner:
    """A bounded pool of hook runs of one app; claims only what it can start at once."""

    def __init__(self, app: App, workers: int = MAX_WORKERS) -> None:
        self._app = app
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hook")
        self._lock = threading.Lock()
        self._in_flight: dict[int, Future[None]] = {}
        self._mails = 0

    def poll(self, stop: threading.Event | None) -> int:
        if stop is None or not stop.is_set():
            self.start(stop)
        return self.take_mail_count()

    def start(self, stop: threading.Event | None) -> int:
        """Claim and start as many runs as there are free workers; returns how many started."""
        with self._lock:
            free = self._workers - len(self._in_flight)
            busy = frozenset(self._in_flight)
        if free <= 0:
            return 0
        jobs, mails = _claim(self._app, free, busy)
        self._add_mails(mails)
        for job in jobs:
            with self._lock:
                self._in_flight[job.run_id] = self._pool.submit(self._work, job, stop)
        return len(jobs)

    def wait(self) -> None:
        while True:
            with self._lock:
                futures = list(self._in_flight.values())
            if not futures:
                return
            for future in futures:
                try:
                    future.result()
                except Exception:  # _work logs its own failures
                    pass

    def take_mail_count(self) -> int:
        with self._lock:
            count, self._mails = self._mails, 0
        return count

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)

    def _add_mails(self, count: int) -> None:
        with self._lock:
            self._mails += count

    def _work(self, job: _Job, stop: threading.Event | None) -> None:
        try:
            result = execute(job, stop)
            self._add_mails(_record_with_retries(self._app, job, result, stop))
        except Exception:
            log.exception("activation hook of %s (run %s): could not finish; the run stays "
                          "'running' and is retried when its lease runs out", job.ref, job.run_id)
        finally:
            with self._lock:
                self._in_flight.pop(job.run_id, None)


# ---- claiming ------------------------------------------------------------------------------

def _claim(app: App, limit: int, busy: frozenset[int]) -> tuple[list[_Job], int]:
    """Up to ``limit`` runs to start now: orphaned ones first, then pending ones.

    Returns the jobs and the number of mails queued while doing so (manual reviews of runs that
    cannot run any more)."""
    jobs: list[_Job] = []
    mails = 0
    with app.sessions.begin() as session:
        running = session.execute(select(HookRun.id, HookRun.case_id, HookRun.started_at)
                                  .where(HookRun.status == "running").order_by(HookRun.id)).all()
        now = app.clock.now()
        orphans = [run_id for run_id, case_id, started in running
                   if run_id not in busy and _lease_over(session, app, case_id, started, now)]
    for run_id in orphans:
        if len(jobs) >= limit:
            break
        with app.sessions.begin() as session:
            job, queued = _take_over(session, app, run_id)
        mails += queued
        if job is not None:
            jobs.append(job)
    if len(jobs) < limit:
        with app.sessions.begin() as session:
            pending = list(session.scalars(select(HookRun.id).where(HookRun.status == "pending")
                                           .order_by(HookRun.id).limit(limit - len(jobs))))
        for run_id in pending:
            with app.sessions.begin() as session:
                job = _claim_pending(session, app, run_id)
            if job is not None:
                jobs.append(job)
    return jobs, mails


def _lease_over(session: Session, app: App, case_id: int, started: datetime | None,
                now: datetime) -> bool:
    if started is None:
        return True
    category = session.scalar(select(Case.category).where(Case.id == case_id))
    return started + _timeout(app, category) + ORPHAN_GRACE <= now


def _timeout(app: App, category: str | None) -> timedelta:
    section = app.settings.categories.get(category or "")
    return section.activation.timeout if section and section.activation else DEFAULT_TIMEOUT


def _claim_pending(session: Session, app: App, run_id: int) -> _Job | None:
    now = app.clock.now()
    claimed = session.execute(update(HookRun).where(HookRun.id == run_id,
                                                    HookRun.status == "pending")
                              .values(status="running", started_at=now)).rowcount
    if claimed != 1:
        return None  # another process claimed it first
    run = session.get_one(HookRun, run_id)
    session.refresh(run)
    return _job_or_skip(session, app, run, now)


def _take_over(session: Session, app: App, run_id: int) -> tuple[_Job | None, int]:
    """Close an orphaned (interrupted) run; start its retry, or send it to manual review."""
    run = session.get(HookRun, run_id)
    if run is None:
        return None, 0
    started = run.started_at
    now = app.clock.now()
    # Conditional on what we read: if the owner finished meanwhile, nothing happens.
    taken = session.execute(update(HookRun).where(
        HookRun.id == run_id, HookRun.status == "running",
        HookRun.started_at.is_(None) if started is None else HookRun.started_at == started)
        .values(status="failed", finished_at=now,
                stderr_tail="interrupted: the process running the hook stopped before it "
                            "recorded the result")).rowcount
    if taken != 1:
        return None, 0
    session.refresh(run)
    case = session.get_one(Case, run.case_id)
    log.warning("activation hook of %s: attempt %s was interrupted", case.ref, run.attempt)
    _event(session, case, now, "activation_interrupted", {"attempt": run.attempt})
    if run.attempt >= MAX_ATTEMPTS:
        reason = f"interrupted {run.attempt} times; not run again"
        return None, _apply_result(session, app, case, run.attempt, HookResult(
            None, "", "", reason, interrupted=True), now)
    retry = HookRun(case_id=case.id, attempt=run.attempt + 1, status="running", started_at=now)
    session.add(retry)
    session.flush()
    return _job_or_skip(session, app, retry, now), 0


def _job_or_skip(session: Session, app: App, run: HookRun, now: datetime) -> _Job | None:
    """The job for a run just claimed, or None after closing a run that must not run."""
    case = session.get_one(Case, run.case_id)
    section = app.settings.categories.get(case.category)
    skip = None
    if section is None or section.activation is None:
        skip = f"category {case.category} has no activation hook configured"
    elif lifecycle.is_final(Lifecycle(section.lifecycle), case.status):
        skip = f"case is already {case.status}"
    if skip is not None:
        run.status, run.finished_at, run.stderr_tail = "failed", now, f"not run: {skip}"
        _event(session, case, now, "activation_skipped", {"attempt": run.attempt, "reason": skip})
        log.info("activation hook of %s not run: %s", case.ref, skip)
        return None
    settings = app.settings
    command = list(section.activation.command)
    if os.sep in command[0] and not Path(command[0]).is_absolute():
        command[0] = str(settings.resolve(Path(command[0])))
    env = {**os.environ, "HELPDESK_REF": case.ref, "HELPDESK_REQUESTER": case.requester,
           "HELPDESK_CATEGORY": case.category, "HELPDESK_ATTEMPT": str(run.attempt)}
    log.info("activation hook of %s: attempt %s starting %s", case.ref, run.attempt, command[0])
    return _Job(run_id=run.id, case_id=case.id, ref=case.ref, attempt=run.attempt,
                argv=tuple(command), cwd=settings.config_dir, timeout=section.activation.timeout,
                stdin=json.dumps(case_document(session, case), ensure_ascii=False).encode(),
                env=env)


def case_document(session: Session, case: Case) -> dict[str, Any]:
    """The case as the hook sees it on stdin."""
    participants = session.scalars(select(Participant.address).where(
        Participant.case_id == case.id).order_by(Participant.id)).all()
    description = session.scalar(select(Message.text).where(
        Message.case_id == case.id, Message.direction == str(Direction.IN))
        .order_by(Message.id).limit(1))
    return {
        "ref": case.ref, "category": case.category, "status": case.status,
        "subject": case.subject, "requester": case.requester,
        "requester_name": case.requester_name, "participants": list(participants),
        "created_at": case.created_at.isoformat(), "description": description or "",
    }


# ---- running ------------------------------------------------------------------------------

def execute(job: _Job, stop: threading.Event | None = None) -> HookResult:
    """Run the hook to its end, its timeout, or ``stop``; never raises for the hook's faults."""
    try:
        proc = subprocess.Popen(job.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=job.cwd, env=job.env,
                                start_new_session=True)
    except OSError as exc:
        reason = f"could not start {job.argv[0]}: {exc.strerror or exc}"
        return HookResult(None, "", reason, reason)
    deadline = time.monotonic() + job.timeout.total_seconds()
    feed: bytes | None = job.stdin
    ended_by: str | None = None
    with proc:
        while True:
            try:
                out, err = proc.communicate(feed, timeout=max(0.0, min(
                    0.25, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                feed = None  # communicate keeps writing what it started with
            except BrokenPipeError:  # the hook exited without reading stdin: fine
                feed = None
            if stop is not None and stop.is_set():
                ended_by = "stop"
            elif time.monotonic() >= deadline:
                ended_by = "timeout"
            if ended_by:
                out, err = _kill(proc)
                break
    status = proc.returncode
    stdout = _limit(out.decode("utf-8", "replace"))
    tail = _tail(err.decode("utf-8", "replace"))
    if ended_by == "timeout":
        return HookResult(status, stdout, tail, f"timeout after {_span(job.timeout)}")
    if ended_by == "stop":
        return HookResult(status, stdout, tail, "interrupted: helpdesk stopped while the hook "
                          "ran", interrupted=True)
    if status == 0:
        return HookResult(0, stdout, tail, None)
    if status < 0:
        return HookResult(status, stdout, tail, f"killed by signal {_signal_name(-status)}")
    return HookResult(status, stdout, tail, f"exit status {status}")


def _kill(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """SIGTERM to the hook's whole process group, SIGKILL if it lingers; the output so far."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return proc.communicate(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            continue
    # Something left the group and still holds the pipes: stop reading, keep nothing.
    log.warning("activation hook pid %s: a process outside its group keeps the pipes open",
                proc.pid)
    proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return b"", b""


def _limit(text: str) -> str:
    if len(text) <= STDOUT_LIMIT:
        return text
    return text[:STDOUT_LIMIT] + f"\n[... {len(text) - STDOUT_LIMIT} more characters not shown]\n"


def _tail(text: str) -> str:
    lines = text.rstrip("\n").splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines)[-STDERR_TAIL_CHARS:]


def _signal_name(number: int) -> str:
    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


def _span(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:g}s"


# ---- recording ----------------------------------------------------------------------------

def _record_with_retries(app: App, job: _Job, result: HookResult,
                         stop: threading.Event | None) -> int:
    delay = 0.5
    for attempt in range(1, _RECORD_TRIES + 1):
        try:
            return record(app, job.run_id, job.attempt, result)
        except Exception:
            if attempt == _RECORD_TRIES:
                raise
            log.warning("activation hook of %s: recording the result failed; retrying",
                        job.ref, exc_info=True)
            time.sleep(delay)
            delay *= 2
    return 0


def record(app: App, run_id: int, attempt: int, result: HookResult) -> int:
    """Record a finished run and apply it to its case, in one transaction; returns mails queued."""
    with app.sessions.begin() as session:
        now = app.clock.now()
        run = session.get(HookRun, run_id)
        if run is None or run.status != "running" or run.attempt != attempt:
            log.warning("activation hook run %s: result discarded, the run was taken over as "
                        "interrupted meanwhile", run_id)
            return 0
        run.status = "succeeded" if result.succeeded else "failed"
        run.finished_at, run.exit_status = now, result.exit_status
        run.stdout, run.stderr_tail = result.stdout, result.stderr_tail or result.reason
        case = session.get_one(Case, run.case_id)
        if result.interrupted and attempt < MAX_ATTEMPTS:
            session.add(HookRun(case_id=case.id, attempt=attempt + 1, status="pending"))
            _event(session, case, now, "activation_interrupted", {
                "attempt": attempt, "reason": result.reason})
            log.warning("activation hook of %s: attempt %s interrupted; attempt %s will run",
                        case.ref, attempt, attempt + 1)
            return 0
        return _apply_result(session, app, case, attempt, result, now)


def _apply_result(session: Session, app: App, case: Case, attempt: int, result: HookResult,
                  now: datetime) -> int:
    section = app.settings.categories.get(case.category)
    trigger = Trigger.activation_succeeded if result.succeeded else Trigger.activation_failed
    detail: dict[str, Any] = {"attempt": attempt, "exit_status": result.exit_status}
    if not result.succeeded:
        detail.update(reason=result.reason, stderr_tail=result.stderr_tail)
    try:
        if section is None:
            raise IllegalTransition(f"category {case.category} is not configured any more")
        step = lifecycle.transition(Lifecycle(section.lifecycle), case.status,
                                    LifecycleEvent(trigger))
    except IllegalTransition as exc:
        _event(session, case, now, "activation_not_applied", {
            **detail, "result": "succeeded" if result.succeeded else "failed",
            "why": str(exc)})
        log.info("activation hook of %s finished (%s) after the case became %s: not applied",
                 case.ref, result.reason or "success", case.status)
        return 0
    _event(session, case, now, str(trigger), detail)
    change_status(Facts(session), app, case, step, now, by="activation hook")
    note = ""
    if not result.succeeded:
        note = str(result.reason)
        if result.stderr_tail and result.stderr_tail != result.reason:
            note += "\n\nLast lines of its error output:\n" + result.stderr_tail
    mails = 0
    for kind in step.sends:
        audience = Audience.STAFF if kind in lifecycle.TO_STAFF else Audience.PARTICIPANTS
        mails += queue_mail(session, app, case, Mail(MailKind(kind), audience, note=note), now,
                            Extras(output=result.stdout))
    case.updated_at = now
    log.info("activation hook of %s: %s -> %s", case.ref, result.reason or "succeeded",
             case.status)
    return mails


def _event(session: Session, case: Case, now: datetime, type_: str,
           detail: dict[str, Any]) -> None:
    session.add(Event(case_id=case.id, at=now, type=type_, detail=detail))
