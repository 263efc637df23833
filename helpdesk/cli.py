"""The ``helpdesk`` command line (the contract in SPEC.md: names, flags, exit codes).

Exit codes: 0 success, 1 runtime failure (an unknown case, an unhealthy mailbox),
2 usage or config error.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from helpdesk.app import App
from helpdesk.config import ConfigError, default_config_path, load_settings
from helpdesk.store import db

log = logging.getLogger("helpdesk")


class Failure(click.ClickException):
    exit_code = 1


def _config_error(message: str) -> NoReturn:
    click.echo(f"config error: {message}", err=True)
    sys.exit(2)


def _app(ctx: click.Context, *, check_schema: bool = True) -> App:
    path = ctx.obj["config"]
    try:
        app = App.from_config(path)
    except ConfigError as exc:
        _config_error(str(exc))
    if check_schema:
        try:
            db.check_schema(app.engine)
        except db.SchemaOutOfDate as exc:
            raise Failure(str(exc)) from None
    ctx.call_on_close(app.close)
    return app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", type=click.Path(path_type=Path),
              help="Config file (default: $HELPDESK_CONFIG, then config/helpdesk.yaml).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, verbose: bool) -> None:
    """helpdesk: an email-driven helpdesk daemon."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("alembic", "mail.log"):  # aiosmtpd logs every connection at INFO
        logging.getLogger(chatty).setLevel(logging.INFO if verbose else logging.WARNING)
    ctx.ensure_object(dict)
    ctx.obj["config"] = config or default_config_path()


@cli.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the config file and every template; exit 2 naming what is wrong."""
    from helpdesk.mail.templates import TemplateRenderer
    try:
        settings = load_settings(ctx.obj["config"])
    except ConfigError as exc:
        _config_error(str(exc))
    app = App.from_settings(settings)
    renderer: TemplateRenderer = app.renderer
    errors = renderer.check_all(settings.categories)
    app.close()
    if errors:
        for error in errors:
            click.echo(f"template error: {error}", err=True)
        sys.exit(2)
    click.echo(f"config OK: {ctx.obj['config']}")


@cli.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the schema migrations (safe to run again)."""
    app = _app(ctx, check_schema=False)
    db.upgrade(app.engine)
    click.echo(f"database at revision {db.current_revision(app.engine)}")


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.pass_context
def ingest(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Process raw RFC 5322 messages from FILES, or stdin when none (MTA pipe mode),
    then deliver the outbox."""
    from helpdesk.inbound.ingest import StorageUnavailable, ingest_raw
    app = _app(ctx)
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
        _report(name, outcome)
    _deliver_and_activate(app)
    if failed:
        # Exit 0 all the same: the mail is kept in the quarantine, and a non-zero exit
        # would make an MTA pipe bounce it to its sender (backscatter) or retry forever.
        click.echo(f"{failed} message(s) quarantined; see `helpdesk failed list`", err=True)


@cli.command()
@click.pass_context
def fetch(ctx: click.Context) -> None:
    """One pass over the IMAP mailboxes, then deliver the outbox (cron mode)."""
    from helpdesk.inbound.imap import fetch_all
    app = _app(ctx)
    if not app.settings.inbound.imap:
        raise click.UsageError("no inbound.imap mailbox is configured")
    errors = fetch_all(app)
    _deliver_and_activate(app)
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
    app = _app(ctx)
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
    app = _app(ctx)
    sys.exit(run_daemon(app))


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Health per mailbox, outbox backlog, quarantine size; exit 1 when unhealthy."""
    from helpdesk.health import health_report
    app = _app(ctx)
    report = health_report(app, app.clock.now())
    click.echo(report.text())
    if not report.healthy:
        sys.exit(1)


@cli.group("cases")
def cases_group() -> None:
    """List, show and change cases."""


@cases_group.command("list")
@click.option("--status", "status_", help="Only cases in this status.")
@click.option("--category", help="Only this category (machine name, e.g. customer_care).")
@click.option("--requester", help="Only cases of this requester address.")
@click.option("--company", help="Only cases whose requester is of this domain.")
@click.option("--sort", type=click.Choice(["created", "updated", "status"]), default="created",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def cases_list(ctx: click.Context, status_: str | None, category: str | None,
               requester: str | None, company: str | None, sort: str, as_json: bool) -> None:
    """List cases."""
    from helpdesk.views import list_cases
    app = _app(ctx)
    rows = list_cases(app, status=status_, category=category, requester=requester,
                      company=company, sort=sort)
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['ref']:<11} {row['status']:<15} {row['updated_at'][:16]:<17} "
                   f"{row['requester']:<30} {row['subject']}")


@cases_group.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def cases_show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show a case with its messages and events."""
    from helpdesk.views import render_case_text, show_case
    app = _app(ctx)
    case = show_case(app, ref)
    if case is None:
        raise Failure(f"no case {ref}")
    if as_json:
        _print_json(case)
    else:
        click.echo(render_case_text(case))


@cases_group.command("set-status")
@click.argument("ref")
@click.argument("status_name", metavar="STATUS")
@click.option("--note", default="", help="A note for the customer (e.g. the solution).")
@click.pass_context
def cases_set_status(ctx: click.Context, ref: str, status_name: str, note: str) -> None:
    """Change a case's status as staff would by mail; sends what that status sends."""
    from helpdesk.commands import CommandRejected, set_status
    from helpdesk.outbound.deliver import deliver_all
    app = _app(ctx)
    try:
        result = set_status(app, ref, status_name, note)
    except LookupError as exc:
        raise Failure(str(exc)) from None
    except CommandRejected as exc:
        raise Failure(str(exc)) from None
    deliver_all(app)
    click.echo(result)


@cli.group("failed")
def failed_group() -> None:
    """The quarantine: messages that could not be processed."""


@failed_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def failed_list(ctx: click.Context, as_json: bool) -> None:
    """List quarantined messages with their reasons."""
    from helpdesk.views import list_failed
    rows = list_failed(_app(ctx))
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']:>6}  {row['received_at'][:19]}  {row['source']:<12} "
                   f"{row['subject'][:40]:<40}  {row['error']}")
    if not rows:
        click.echo("the quarantine is empty")


@failed_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_context
def failed_retry(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Run quarantined messages (all, or the given IDs) through the pipeline again."""
    from helpdesk.inbound.ingest import retry_failed
    from helpdesk.views import list_failed
    app = _app(ctx)
    targets = list(ids) or [row["id"] for row in list_failed(app)]
    still = 0
    for inbound_id in targets:
        try:
            outcome = retry_failed(app, inbound_id)
        except LookupError as exc:
            raise Failure(str(exc)) from None
        still += outcome.quarantined
        _report(str(inbound_id), outcome)
    _deliver_and_activate(app)
    if still:
        raise Failure(f"{still} message(s) still fail")


def _report(label: str, outcome: Any) -> None:
    """One line per message: what became of it, its case, and why when it says why."""
    click.echo(f"{label}: {outcome.status}" + (f" {outcome.ref}" if outcome.ref else "")
               + (f" ({outcome.reason})" if outcome.reason else ""))


def _deliver_and_activate(app: App) -> None:
    """Deliver the outbox, then run the activation hooks of new connections cases to
    completion and deliver what they queued: acknowledgements never wait for a hook."""
    from helpdesk.hooks import run_pending_hooks
    from helpdesk.outbound.deliver import deliver_all
    deliver_all(app)
    if run_pending_hooks(app):
        deliver_all(app)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
