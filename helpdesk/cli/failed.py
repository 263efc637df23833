"""The quarantine: ``failed list``, ``failed show`` and ``failed retry``."""
from __future__ import annotations

import click

from helpdesk.cli import Failure, cli, deliver_and_activate, open_app, print_json, report


@cli.group("failed")
def failed_group() -> None:
    """The quarantine: messages that could not be processed."""


@failed_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def failed_list(ctx: click.Context, as_json: bool) -> None:
    """List quarantined messages with their reasons."""
    from helpdesk.views import list_failed, printable
    rows = list_failed(open_app(ctx))
    if as_json:
        print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']:>6}  {row['received_at'][:19]}  {row['source']:<12} "
                   f"{printable(row['subject'])[:40]:<40}  {printable(row['error'] or '')}")
    if not rows:
        click.echo("the quarantine is empty")


@failed_group.command("show")
@click.argument("inbound_id", metavar="ID", type=int)
@click.option("--raw", is_flag=True, help="Print the message exactly as received.")
@click.pass_context
def failed_show(ctx: click.Context, inbound_id: int, raw: bool) -> None:
    """One quarantined message: why it failed and its headers (or, with --raw, its bytes)."""
    from helpdesk.views import failed_message, render_failed_text
    found = failed_message(open_app(ctx), inbound_id)
    if found is None:
        raise Failure(f"no quarantined message with id {inbound_id}")
    if raw:
        click.get_binary_stream("stdout").write(found["raw"])
    else:
        click.echo(render_failed_text(found))


@failed_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_context
def failed_retry(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Run quarantined messages (all, or the given IDs) through the pipeline again."""
    from helpdesk.inbound.ingest import retry_failed
    from helpdesk.views import list_failed
    app = open_app(ctx)
    targets = list(ids) or [row["id"] for row in list_failed(app)]
    still = 0
    for inbound_id in targets:
        try:
            outcome = retry_failed(app, inbound_id)
        except LookupError as exc:
            raise Failure(str(exc)) from None
        still += outcome.quarantined
        report(str(inbound_id), outcome)
    deliver_and_activate(app)
    if still:
        raise Failure(f"{still} message(s) still fail")
