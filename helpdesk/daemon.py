"""``helpdesk run``: one process, a few threads, one stop switch.

Threads: an IMAP watcher per mailbox, the SMTP listener (aiosmtpd runs its own),
the outbox sender, and the scheduler (timer sweep, activation hooks). The first
SIGTERM/SIGINT sets ``stop``: every loop finishes the message in hand and
returns. A second signal exits at once.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

import schedule

from helpdesk.app import App
from helpdesk.outbound.render import outbox_renderer
from helpdesk.outbound.sender import claim_lease, make_transport, send_due

log = logging.getLogger(__name__)


def guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    """``schedule`` re-raises a job's exception and never reschedules it: catch here."""
    def run() -> None:
        try:
            job()
        except Exception:
            log.exception("%s failed; will retry next interval", name)
    return run


def run_sender(app: App, stop: threading.Event, wake: threading.Event) -> None:
    while not stop.is_set():
        wake.clear()
        try:
            result = send_due(app.sessions, app.clock, make_transport(app.settings),
                              lease=claim_lease(app.settings), render=outbox_renderer(app),
                              reads=app.reads)
            busy = (result.sent or result.retried) and not result.error
        except Exception:
            log.exception("outbox pass failed")
            busy = False
        if not busy:
            wake.wait(5.0)


def run_scheduler(app: App, stop: threading.Event, wake_sender: threading.Event) -> None:
    from helpdesk.hooks import run_pending_hooks
    from helpdesk.sweep import sweep

    def do_sweep() -> None:
        if sweep(app, app.clock.now()):
            wake_sender.set()

    def do_hooks() -> None:
        if run_pending_hooks(app, stop):
            wake_sender.set()

    scheduler = schedule.Scheduler()
    seconds = max(1, int(app.settings.timers.sweep_interval.total_seconds()))
    scheduler.every(seconds).seconds.do(guarded("sweep", do_sweep))
    scheduler.every(2).seconds.do(guarded("activation hooks", do_hooks))
    guarded("sweep", do_sweep)()
    while not stop.is_set():
        scheduler.run_pending()
        stop.wait(min(1.0, max(0.2, scheduler.idle_seconds or 1.0)))


def _stop_on_signals(stop: threading.Event, wake_sender: threading.Event) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("signal %s: stopping after the message in hand", signum)
        stop.set()
        wake_sender.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _start_web(app: App, wake_sender: threading.Event) -> object | None:
    if app.settings.web is None:
        return None
    from helpdesk.web.server import WebServer
    server = WebServer(app, wake_sender.set).start()
    print(f"helpdesk web portal: {server.url}", flush=True)
    return server


def run_web_only(app: App) -> int:
    """``helpdesk web``: the portal and the outbox sender (its sign-in mails must leave)."""
    stop, wake_sender = threading.Event(), threading.Event()
    _stop_on_signals(stop, wake_sender)
    server = _start_web(app, wake_sender)
    sender = threading.Thread(target=run_sender, args=(app, stop, wake_sender), name="sender",
                              daemon=True)
    sender.start()
    try:
        while not stop.is_set():
            stop.wait(1.0)
    finally:
        server.stop()  # type: ignore[union-attr]
        sender.join(timeout=10)
    log.info("helpdesk web stopped")
    return 0


def run_daemon(app: App) -> int:
    stop, wake_sender = threading.Event(), threading.Event()
    _stop_on_signals(stop, wake_sender)

    threads = [threading.Thread(target=run_sender, args=(app, stop, wake_sender), name="sender"),
               threading.Thread(target=run_scheduler, args=(app, stop, wake_sender),
                                name="scheduler")]
    if app.settings.inbound.imap:
        from helpdesk.inbound.imap import watch
        for mailbox in app.settings.inbound.imap:
            threads.append(threading.Thread(
                target=watch, args=(app, mailbox, stop, wake_sender.set),
                name=f"imap:{mailbox.name}"))
    listener = None
    if app.settings.inbound.smtp_listener:
        from helpdesk.inbound.smtp_listener import start_listener
        listener = start_listener(app, on_stored=wake_sender.set)
    lmtp_listeners = []
    if app.settings.inbound.lmtp:
        from helpdesk.inbound.lmtp_listener import start_lmtp
        lmtp_listeners = start_lmtp(app, app.settings.inbound.lmtp, on_stored=wake_sender.set)
    web = _start_web(app, wake_sender)
    for thread in threads:
        thread.daemon = True
        thread.start()
    log.info("helpdesk running (%d mailbox(es), SMTP listener %s, LMTP listener %s, "
             "web portal %s)", len(app.settings.inbound.imap), "on" if listener else "off",
             "on" if lmtp_listeners else "off", "on" if web else "off")
    try:
        while not stop.is_set():
            stop.wait(1.0)
    finally:
        if web is not None:
            web.stop()  # type: ignore[attr-defined]
        if listener is not None:
            listener.stop()
        for lmtp in lmtp_listeners:
            lmtp.stop()
        for thread in threads:
            thread.join(timeout=10)
    log.info("helpdesk stopped")
    return 0
