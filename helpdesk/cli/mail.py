"""Mail in and out: ``ingest``, ``fetch``, ``sweep`` and the daemon, ``run``."""
from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from helpdesk.cli import Failure, cli, deliver_and_activate, open_app, report


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.pass_context
def ingest(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Process raw RFC 5322 messages from FILES, or stdin when none (MTA pipe mode),
    then deliver the outbox."""
    from helpdesk.inbound.ingest import StorageUnavailable, ingest_raw
    app = open_app(ctx)
    sources = list(files) or ["-"]
    failed = 0
    for name in sources:
        raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        try:
            outcome = ingest_raw(app, raw, source="ingest")
        except StorageUnavailable as exc:
            # EX_TEMPFAIL tells an MTA pipe to keep the mail and try again later.
            click.echo(f"{name}: database unavailable: {exc}", err=True)
            sys.exit(75)
        failed += outcome.quarantined
        report(name, outcome)
    deliver_and_activate(app)
    if failed:
        # Exit 0 all the same: the mail is kept in the quarantine, and a non-zero exit
        # would make an MTA pipe bounce it to its sender (backscatter) or retry forever.
        click.echo(f"{failed} message(s) quarantined; see `helpdesk failed list`", err=True)


@cli.command()
@click.pass_context
def fetch(ctx: click.Context) -> None:
    """One pass over the IMAP mailboxes, then deliver the outbox (cron mode)."""
    from helpdesk.inbound.imap import fetch_all
    app = open_app(ctx)
    if not app.settings.inbound.imap:
        raise click.UsageError("no inbound.imap mailbox is configured")
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
    """The daemon: inbound (IMAP and/or SMTP listener), outbox sender, scheduler.
    Stops cleanly on SIGTERM/SIGINT; a second signal exits at once."""
    from helpdesk.daemon import run_daemon
    app = open_app(ctx)
    sys.exit(run_daemon(app))
