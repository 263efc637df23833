"""The outbox sender in a process of its own, beside the process that fetches and decides.

Under one interpreter the fetching threads and the sender share one core (the GIL);
in two processes the sender's rendering, MIME building and SMTP run on a second core
while mail keeps coming in. ``helpdesk run`` sends this way for as long as it runs,
and ``helpdesk fetch`` delivers while it fetches instead of after.

Nothing about exactly once changes: the child is one more sender, and the claim
protocol of ``outbound.sender`` already keeps any number of senders off each other's
rows. The child is forked with no database connection open in the parent (the engine's
pool is emptied first: SQLite forbids carrying a connection across ``fork``), and it
opens its own.

Stopping: ``stop()`` (the daemon's SIGTERM), a SIGTERM or SIGINT of its own (systemd
signals the whole control group; Ctrl-C the whole process group), or the parent's
death make the child finish the mail in hand, record it, give back the rest of its
batch, and exit. ``finish()`` (the end of ``helpdesk fetch``) lets it first send all
that is due.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from types import TracebackType
from typing import Any

from helpdesk.app import App

log = logging.getLogger(__name__)

_FORK = multiprocessing.get_context("fork")
# How long the child waits for more work when there was none, when nobody wakes it
# (``helpdesk fetch`` does not: it looks this often), and the most it waits before
# checking that its parent still lives.
FETCH_POLL = 0.05
DAEMON_POLL = 5.0
_LIVENESS = 1.0
_IDLE_CLOSE = 10.0  # seconds without work after which the SMTP connection is closed
_FAILED_PAUSE = 0.5  # seconds after a failed pass, doubled for each failure in a row
# Passes at most once told to finish (``deliver_all``'s bound, 10,000 mails): mail that
# keeps coming in meanwhile (another daemon's listener) does not keep a fetch running.
_MAX_DRAIN = 100


class SendingProcess:
    """A child process that sends due outbox rows until told to stop or finish."""

    def __init__(self, app: App, *, poll: float) -> None:
        self.app = app
        self.poll = poll
        self._wake = _FORK.Event()
        self._stop = _FORK.Event()
        self._finish = _FORK.Event()
        self._process: Any = None

    def start(self) -> SendingProcess:
        self.app.engine.dispose()  # no connection may cross the fork
        self._process = _FORK.Process(
            target=_serve, name="helpdesk-sender", daemon=True,
            args=(self.app, self.poll, self._wake, self._stop, self._finish, os.getpid()))
        self._process.start()
        log.debug("sending process %s started", self._process.pid)
        return self

    def wake(self) -> None:
        """There is new mail in the outbox: look now, not at the next poll."""
        self._wake.set()

    def finish(self) -> None:
        """Send all that is due (at most ``_MAX_DRAIN`` passes), then end; wait for that."""
        self._finish.set()
        self._wake.set()
        self._join(None)

    def stop(self, timeout: float = 30.0) -> None:
        """End after the mail in hand; wait for that, and kill it after ``timeout``."""
        self._stop.set()
        self._wake.set()
        self._join(timeout)

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    def _join(self, timeout: float | None) -> None:
        process = self._process
        if process is None:
            return
        process.join(timeout)
        if process.is_alive():  # stuck past every SMTP and lock timeout
            log.error("sending process %s did not end in time; killing it", process.pid)
            process.kill()
            process.join()
        elif process.exitcode:
            log.error("sending process %s exited with %s", process.pid, process.exitcode)

    def __enter__(self) -> SendingProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.finish()
        else:
            self.stop()


def _serve(app: App, poll: float, wake: Any, stop: Any, finish: Any, parent: int) -> None:
    """The child: passes of ``send_due`` while there is work, waiting for a wake-up (or
    ``poll`` seconds) when there is none."""
    from helpdesk.outbound.render import outbox_renderer
    from helpdesk.outbound.sender import SendResult, claim_lease, make_transport, send_due

    signalled = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        signalled.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.engine.dispose(close=False)  # empty already (``start``); the child's own from here

    def stopping() -> bool:
        return signalled.is_set() or stop.is_set() or os.getppid() != parent

    render, lease = outbox_renderer(app), claim_lease(app.settings)
    transport = make_transport(app.settings)  # one connection while there is work
    passes, total, busy_at, drained, failures = 0, SendResult(), time.monotonic(), 0, 0
    while not stopping() and drained < _MAX_DRAIN:
        wake.clear()
        finishing = finish.is_set()  # before the pass: what it queued before is due now
        drained += finishing
        try:
            result = send_due(app.sessions, app.clock, transport, lease=lease, render=render,
                              reads=app.reads, stop=stopping, keep_connection=True)
            passes, total, failures = passes + 1, total + result, 0
            if result.more_may_be_due:
                busy_at = time.monotonic()
                continue
        except Exception:
            log.exception("outbox pass failed")
            failures += 1
        if finishing:
            break  # all that was due is sent, or the server or the database is down
        if failures:  # the database is down or locked: no tight loop of failing passes
            if stop.wait(min(_FAILED_PAUSE * 2 ** (failures - 1), DAEMON_POLL)) or stopping():
                break
        if time.monotonic() - busy_at > _IDLE_CLOSE:
            transport.close()  # a server drops idle clients; connect again when needed
        for _ in range(max(1, round(poll / min(poll, _LIVENESS)))):
            if wake.wait(min(poll, _LIVENESS)) or stopping():
                break
    transport.close()
    app.engine.dispose()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    log.info("sending process: %d sent, %d deferred, %d dead in %d passes; CPU %.2f s",
             total.sent, total.retried, total.dead, passes, usage.ru_utime + usage.ru_stime)
