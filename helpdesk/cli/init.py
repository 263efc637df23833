"""``helpdesk init DIR``: a working site, from the installed package alone."""
from __future__ import annotations

from pathlib import Path

import click

from helpdesk.cli import Failure, cli


@cli.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a working site in DIRECTORY: config/helpdesk.yaml (the embedded default),
    templates/ for your overrides, the sample knowledge base, and the database.
    An existing config is never overwritten."""
    from helpdesk.app import App
    from helpdesk.mail.templates import BUILTIN_TEMPLATES
    from helpdesk.scaffold import SiteExists, write_site
    from helpdesk.store import db

    try:
        created = write_site(directory)
    except SiteExists as exc:
        raise Failure(str(exc)) from None
    config = created[0][0]
    for path, what in created:
        click.echo(f"created {path}: {what}")
    click.echo(f"the built-in templates, to copy from: {BUILTIN_TEMPLATES}")
    app = App.from_config(config)
    try:
        db.upgrade(app.engine)
        settings = app.settings
        click.echo(f"database {app.engine.url.render_as_string(hide_password=True)} at revision "
                   f"{db.current_revision(app.engine)}")
    finally:
        app.close()
    if listener := settings.inbound.smtp_listener:
        click.echo(f"mail in: the SMTP listener on {listener.host}:{listener.port} "
                   f"(or `helpdesk -c {config} ingest FILE`)")
    if settings.outbound.maildir:
        click.echo(f"mail out: into the Maildir {settings.resolve(settings.outbound.maildir)}")
    click.echo(f"\nnext: helpdesk -c {config} run")
