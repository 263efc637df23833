"""``cases list``, ``cases show``, ``cases set-status``."""
from __future__ import annotations

import click

from helpdesk.cli import Failure, cli, open_app, print_json


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
@click.option("--limit", type=click.IntRange(min=1), help="At most N cases.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the first N cases.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def cases_list(ctx: click.Context, status_: str | None, category: str | None,
               requester: str | None, company: str | None, sort: str, limit: int | None,
               offset: int, as_json: bool) -> None:
    """List cases (a fixed number of queries, however many there are)."""
    from helpdesk.views import list_cases
    app = open_app(ctx)
    rows = list_cases(app, status=status_, category=category, requester=requester,
                      company=company, sort=sort, limit=limit, offset=offset)
    if as_json:
        print_json(rows)
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
    app = open_app(ctx)
    case = show_case(app, ref)
    if case is None:
        raise Failure(f"no case {ref}")
    if as_json:
        print_json(case)
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
    app = open_app(ctx)
    try:
        result = set_status(app, ref, status_name, note)
    except LookupError as exc:
        raise Failure(str(exc)) from None
    except CommandRejected as exc:
        raise Failure(str(exc)) from None
    deliver_all(app)
    click.echo(result)
