"""Mail in and out: ``ingest``, ``fetch``, ``sweep`` and the daemon, ``run``."""
from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, BinaryIO

import click

from helpdesk.cli import (
    EX_TEMPFAIL,
    Failure,
    cli,
    deliver_and_activate,
    log,
    open_app,
    report,
)

if TYPE_CHECKING:
    from helpdesk.app import App


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.pass_context
def ingest(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Process raw RFC 5322 messages from FILES, or stdin when none (MTA pipe mode),
    then deliver the outbox.

    Exit 0 once every mail is stored (or kept in the quarantine, or answered as too
    large); 75 (EX_TEMPFAIL) when one could not be stored for a reason that may pass
    (the database down, locked, full), so that an MTA keeps it and tries again."""
    from helpdesk.inbound.bounded import read_mail
    from helpdesk.inbound.ingest import StorageUnavailable, ingest_raw, notify_too_large
    app = open_app(ctx, unavailable_exit=EX_TEMPFAIL)
    limit = app.settings.limits.max_message_size
    failed = 0
    for name in list(files) or ["-"]:
        with _binary_input(name) as stream:
            mail = read_mail(stream, limit)
        try:
            if mail.too_large:  # answered politely and recorded, as the IMAP fetcher does
                outcome = notify_too_large(app, mail.raw, mail.size, source="ingest")
            else:
                outcome = ingest_raw(app, mail.raw, source="ingest")
        except StorageUnavailable as exc:
            click.echo(f"{name}: database unavailable: {exc}", err=True)
            sys.exit(EX_TEMPFAIL)
        del mail
        failed += outcome.quarantined
        report(name, outcome)
    _deliver_stored(app)
    if failed:
        # Exit 0 all the same: the mail is kept in the quarantine, and a non-zero exit
        # would make an MTA pipe bounce it to its sender (backscatter) or retry forever.
        click.echo(f"{failed} message(s) quarantined; see `helpdesk failed list`", err=True)


def _binary_input(name: str) -> contextlib.AbstractContextManager[BinaryIO]:
    return contextlib.nullcontext(sys.stdin.buffer) if name == "-" else open(name, "rb")


def _deliver_stored(app: App) -> None:
    """Deliver what the stored mail queued, if the database lets us now: the mail is
    safe, so nothing here may change the exit code (the daemon or the next run sends
    what is left)."""
    from helpdesk.store.db import is_storage_trouble
    try:
        deliver_and_activate(app)
    except Exception as exc:
        if is_storage_trouble(exc):
            log.warning("mail stored; delivery left for later: %s",
                        getattr(exc, "orig", None) or exc)
        else:
            log.exception("mail stored; delivery failed, left for later")


@cli.command()
@click.pass_context
def fetch(ctx: click.Context) -> None:
    """One pass over the IMAP mailboxes, then deliver the outbox (cron mode).

    A second process delivers while this one fetches; what is left (the activation
    hooks' mail) is delivered at the end."""
    from helpdesk.inbound.imap import fetch_all
    from helpdesk.outbound.sending import FETCH_POLL, SendingProcess
    app = open_app(ctx)
    if not app.settings.inbound.imap:
        raise click.UsageError("no inbound.imap mailbox is configured")
    with SendingProcess(app, poll=FETCH_POLL):
        errors = fetch_all(app)
    deliver_and_activate(app)
    if errors:
        raise Failure(f"{errors} mailbox(es) failed; see the log or `helpdesk status`")


@cli.command()
@click.option("--now", "now", help="Run the timers as of this ISO 8601 time (default: now).")
@click.pass_context
def sweep(ctx: click.Context, now: str | None) -> None:
    """Run the lifecycle timers (reminders, closures) once, then deliver the outbox."""
    from helpdesk.clock import FixedClock
    from helpdesk.outbound.deliver import deliver_all
    from helpdesk.sweep import sweep as run_sweep
    app = open_app(ctx)
    when = _parse_now(now) if now else app.clock.now()
    moved = run_sweep(app, when)
    if when > app.clock.now():  # what it queued as of a future --now is due as of then too
        app.clock = FixedClock(when)
    deliver_all(app)
    click.echo(f"sweep as of {when.isoformat()}: {moved} case(s) moved")


def _parse_now(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {text}", param_hint="--now") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """The daemon: inbound (IMAP, SMTP and LMTP listeners), the sending process, the
    scheduler, the web portal.
    Stops cleanly on SIGTERM/SIGINT; a second signal exits at once."""
    from helpdesk.daemon import run_daemon
    app = open_app(ctx, strict_secrets=True)
    sys.exit(run_daemon(app))
