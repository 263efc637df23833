"""``cases list``, ``cases show``, ``cases set-status``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from helpdesk.cli import Failure, cli, open_app, print_json

if TYPE_CHECKING:
    from helpdesk.app import App


@cli.group("cases")
def cases_group() -> None:
    """List, show and change cases."""


@cases_group.command("list")
@click.option("--status", "status_", help="Only cases in this status (name or label).")
@click.option("--category", help="Only this category (name or label, e.g. customer_care).")
@click.option("--requester", help="Only cases of this requester address.")
@click.option("--company", help="Only cases whose requester is of this domain.")
@click.option("--sort", type=click.Choice(["created", "updated", "status"]), default="created",
              show_default=True)
@click.option("--asc/--desc", "ascending", default=None,
              help="Sort direction (default: newest first; by status: lifecycle order).")
@click.option("--limit", type=click.IntRange(min=1), help="At most N cases.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the first N cases.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def cases_list(ctx: click.Context, status_: str | None, category: str | None,
               requester: str | None, company: str | None, sort: str, ascending: bool | None,
               limit: int | None, offset: int, as_json: bool) -> None:
    """List cases (a fixed number of queries, however many there are)."""
    from helpdesk.views import list_cases
    app = open_app(ctx)
    category, status_ = _read_filters(app, category, status_)
    descending = sort != "status" if ascending is None else not ascending
    rows = list_cases(app, status=status_, category=category, requester=requester,
                      company=company, sort=sort, descending=descending, limit=limit,
                      offset=offset)
    if as_json:
        print_json(rows)
    elif not rows:
        filtered = any((status_, category, requester, company))
        click.echo("no cases match" if filtered else "no cases yet")
    else:
        click.echo(_table(rows))


def _read_filters(app: App, category: str | None, status: str | None
                  ) -> tuple[str | None, str | None]:
    """The machine names a typed category and status mean; exit 2 naming the valid ones."""
    from helpdesk.core.lifecycle import Lifecycle
    from helpdesk.core.names import UnknownName, find_category, find_status
    categories = app.settings.categories
    try:
        if category is not None:
            category = find_category(category, {n: c.label for n, c in categories.items()})
    except UnknownName as exc:
        raise click.BadParameter(str(exc), param_hint="--category") from None
    chosen = [categories[category]] if category else list(categories.values())
    try:
        if status is not None:
            status = find_status(status, (Lifecycle(c.lifecycle) for c in chosen))
    except UnknownName as exc:
        raise click.BadParameter(str(exc), param_hint="--status") from None
    return category, status


def _table(rows: list[dict[str, Any]]) -> str:
    from helpdesk.views import printable
    header = ("REF", "STATUS", "CREATED", "UPDATED", "REQUESTER", "SUBJECT")
    cells = [header] + [(r["ref"], r["status"], r["created_at"][:16].replace("T", " "),
                         r["updated_at"][:16].replace("T", " "), r["requester"],
                         printable(r["subject"])) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
                     + "  " + row[-1] for row in cells)


@cases_group.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def cases_show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show a case with its messages and events. REF may be short: cc-1, or 1 when only
    one category has a case 1."""
    from helpdesk.views import render_case_text, resolve_ref, show_case
    app = open_app(ctx)
    try:
        case = show_case(app, resolve_ref(app, ref))
    except LookupError as exc:
        raise Failure(str(exc)) from None
    assert case is not None  # resolve_ref found it
    if as_json:
        print_json(case)
    else:
        click.echo(render_case_text(case))


@cases_group.command("set-status")
@click.argument("ref")
@click.argument("status_name", metavar="STATUS")
@click.option("--note", default="", help="Words for the participants (e.g. the solution); "
                                         "sent with the status change, as a staff mail's text is.")
@click.pass_context
def cases_set_status(ctx: click.Context, ref: str, status_name: str, note: str) -> None:
    """Change a case's status as staff would by mail; sends what that status sends."""
    from helpdesk.commands import CommandRejected, set_status
    from helpdesk.outbound.deliver import deliver_all
    from helpdesk.views import resolve_ref
    app = open_app(ctx)
    try:
        result = set_status(app, resolve_ref(app, ref), status_name, note)
    except (LookupError, CommandRejected) as exc:
        raise Failure(str(exc)) from None
    deliver_all(app)
    click.echo(result)
