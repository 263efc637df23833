"""``helpdesk run``: a process with a few threads, a sending process, one stop switch.

Threads: an IMAP watcher per mailbox, the SMTP listener (aiosmtpd runs its own),
and the scheduler (timer sweep, activation hooks). The outbox is sent by a child
process (``outbound.sending``), forked before any thread starts, so that sending has
a core of its own; whatever queues mail wakes it. The first SIGTERM/SIGINT sets
``stop``: every loop finishes the message in hand and returns, the sending process
the mail in hand. A second signal exits at once. If the sending process ends on its
own (killed), the daemon stops too and exits 1: the service manager restarts it
whole (``Restart=on-failure``), rather than it running on without sending.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

import schedule

from helpdesk.app import App
from helpdesk.outbound.sending import DAEMON_POLL, SendingProcess

log = logging.getLogger(__name__)


def guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    """``schedule`` re-raises a job's exception and never reschedules it: catch here."""
    def run() -> None:
        try:
            job()
        except Exception:
            log.exception("%s failed; will retry next interval", name)
    return run


def run_scheduler(app: App, stop: threading.Event, wake_sender: Callable[[], None]) -> None:
    from helpdesk.hooks import run_pending_hooks
    from helpdesk.sweep import sweep

    def do_sweep() -> None:
        if sweep(app, app.clock.now()):
            wake_sender()

    def do_hooks() -> None:
        if run_pending_hooks(app, stop):
            wake_sender()

    scheduler = schedule.Scheduler()
    seconds = max(1, int(app.settings.timers.sweep_interval.total_seconds()))
    scheduler.every(seconds).seconds.do(guarded("sweep", do_sweep))
    scheduler.every(2).seconds.do(guarded("activation hooks", do_hooks))
    guarded("sweep", do_sweep)()
    while not stop.is_set():
        scheduler.run_pending()
        stop.wait(min(1.0, max(0.2, scheduler.idle_seconds or 1.0)))


def _stop_on_signals(stop: threading.Event) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("signal %s: stopping after the message in hand", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _start_web(app: App, wake_sender: Callable[[], None]) -> object | None:
    if app.settings.web is None:
        return None
    from helpdesk.web.server import WebServer
    server = WebServer(app, wake_sender).start()
    print(f"helpdesk web portal: {server.url}", flush=True)
    return server


def _wait(stop: threading.Event, sending: SendingProcess) -> int:
    """Until ``stop``; 1 when the sending process ended on its own first."""
    while not stop.is_set():
        stop.wait(1.0)
        if not sending.alive():
            log.error("the sending process ended on its own (exit %s); stopping, so that the "
                      "daemon is restarted whole", sending.exitcode)
            stop.set()
            return 1
    return 0


def run_web_only(app: App) -> int:
    """``helpdesk web``: the portal and the outbox sender (its sign-in mails must leave)."""
    stop = threading.Event()
    sending = SendingProcess(app, poll=DAEMON_POLL).start()  # before any thread: a fork
    _stop_on_signals(stop)
    server = _start_web(app, sending.wake)
    try:
        status = _wait(stop, sending)
    finally:
        sending.stop()
        server.stop()  # type: ignore[union-attr]
    log.info("helpdesk web stopped")
    return status


def run_daemon(app: App) -> int:
    stop = threading.Event()
    sending = SendingProcess(app, poll=DAEMON_POLL).start()  # before any thread: a fork
    wake_sender = sending.wake
    _stop_on_signals(stop)

    threads = [threading.Thread(target=run_scheduler, args=(app, stop, wake_sender),
                                name="scheduler")]
    if app.settings.inbound.imap:
        from helpdesk.inbound.imap import watch
        for mailbox in app.settings.inbound.imap:
            threads.append(threading.Thread(
                target=watch, args=(app, mailbox, stop, wake_sender),
                name=f"imap:{mailbox.name}"))
    listener = None
    if app.settings.inbound.smtp_listener:
        from helpdesk.inbound.smtp_listener import start_listener
        listener = start_listener(app, on_stored=wake_sender)
    lmtp_listeners = []
    if app.settings.inbound.lmtp:
        from helpdesk.inbound.lmtp_listener import start_lmtp
        lmtp_listeners = start_lmtp(app, app.settings.inbound.lmtp, on_stored=wake_sender)
    web = _start_web(app, wake_sender)
    for thread in threads:
        thread.daemon = True
        thread.start()
    log.info("helpdesk running (%d mailbox(es), SMTP listener %s, LMTP listener %s, "
             "web portal %s)", len(app.settings.inbound.imap), "on" if listener else "off",
             "on" if lmtp_listeners else "off", "on" if web else "off")
    try:
        status = _wait(stop, sending)
    finally:
        sending.stop()  # the mail in hand, while the threads finish theirs
        if web is not None:
            web.stop()  # type: ignore[attr-defined]
        if listener is not None:
            listener.stop()
        for lmtp in lmtp_listeners:
            lmtp.stop()
        for thread in threads:
            thread.join(timeout=10)
    log.info("helpdesk stopped")
    return status
