"""Admin commands: ``check-config``, ``db upgrade``, ``status``."""
from __future__ import annotations

import sys

import click

from helpdesk.cli import cli, load_app, open_app


@cli.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the config file and every template; exit 2 naming what is wrong."""
    from helpdesk.mail.templates import TemplateRenderer
    app = load_app(ctx, strict_secrets=True)
    renderer: TemplateRenderer = app.renderer
    errors = renderer.check_all(app.settings.categories)
    app.close()
    if errors:
        for error in errors:
            click.echo(f"template error: {error}", err=True)
        sys.exit(2)
    from helpdesk.health import trust_warnings
    for warning in trust_warnings(app.settings):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"config OK: {ctx.obj['config']}")


@cli.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the schema migrations (safe to run again)."""
    from helpdesk.store import db
    app = open_app(ctx, check_schema=False)
    db.upgrade(app.engine)
    click.echo(f"database at revision {db.current_revision(app.engine)}")


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Health per mailbox, outbox backlog, quarantine size; exit 1 when unhealthy."""
    from helpdesk.health import health_report
    app = open_app(ctx)
    report = health_report(app, app.clock.now())
    click.echo(report.text())
    if not report.healthy:
        sys.exit(1)
