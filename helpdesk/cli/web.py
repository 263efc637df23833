"""``helpdesk web``: the portal alone (and the outbox sender, so its mail leaves)."""
from __future__ import annotations

import sys

import click

from helpdesk.cli import cli, config_error, open_app


@cli.command()
@click.pass_context
def web(ctx: click.Context) -> None:
    """Serve the web portal (config `web:`) and deliver the mail it queues.
    `run` serves it too when `web` is configured; this runs it alone, e.g. on
    another host. Stops cleanly on SIGTERM/SIGINT."""
    from helpdesk.daemon import run_web_only
    app = open_app(ctx, strict_secrets=True)  # a long-running server, as `run`
    if app.settings.web is None:
        config_error("web: not configured (add a `web:` section to serve the portal)")
    sys.exit(run_web_only(app))
