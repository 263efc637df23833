"""The ``helpdesk`` command line (README, Command line: names, flags, exit codes).

Exit codes: 0 success, 1 runtime failure (an unknown case, an unhealthy mailbox),
2 usage or config error, 75 (EX_TEMPFAIL) when ``ingest`` could not store a mail yet.

One module per group of commands (``mail``, ``cases``, ``failed``, ``admin``, ``init``,
``kb``, ``web``). This module imports only click: each command imports what it needs
when it runs, so ``helpdesk --help`` and a short command start fast.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from helpdesk.app import App

log = logging.getLogger("helpdesk")


#: sysexits.h: "temporary failure, try again later"; an MTA keeps the mail and retries.
EX_TEMPFAIL = 75


class Failure(click.ClickException):
    exit_code = 1


def config_error(message: str) -> NoReturn:
    click.echo(f"config error: {message}", err=True)
    sys.exit(2)


def load_app(ctx: click.Context, *, strict_secrets: bool = False) -> App:
    """The App of the config the command line names (exit 2 on a config error; see
    ``load_settings`` for ``strict_secrets``); the caller closes it."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from helpdesk.app import App
    from helpdesk.config import ConfigError, load_settings

    try:
        return App.from_settings(load_settings(ctx.obj["config"], strict_secrets=strict_secrets))
    except ConfigError as exc:
        config_error(str(exc))
    except (ArgumentError, NoSuchModuleError):  # their messages quote the URL
        config_error("database.url: not a database URL we can use "
                     "(e.g. sqlite:///../var/helpdesk.db, postgresql+psycopg://...)")


def open_app(ctx: click.Context, *, check_schema: bool = True, strict_secrets: bool = False,
             unavailable_exit: int = 1) -> App:
    """The App of the config the command line names; closed when the command ends.

    When the database cannot be used yet (unreachable, locked, full, or its schema not
    upgraded) the command exits ``unavailable_exit``: 1 like any runtime failure, 75
    for ``ingest``, so that an MTA keeps the mail and tries again.
    """
    from helpdesk.store import db

    def unavailable(reason: str) -> NoReturn:
        click.echo(f"Error: {reason}", err=True)
        sys.exit(unavailable_exit)

    try:
        app = load_app(ctx, strict_secrets=strict_secrets)
    except OSError as exc:  # making the SQLite file or its folder
        if not db.is_storage_trouble(exc):
            raise
        unavailable(f"database unavailable: {exc}")
    ctx.call_on_close(app.close)
    if check_schema:
        try:
            db.check_schema(app.engine)
        except db.SchemaOutOfDate as exc:
            unavailable(str(exc))
        except Exception as exc:
            if not db.is_storage_trouble(exc):
                raise
            unavailable(f"database unavailable: {getattr(exc, 'orig', None) or exc}")
    return app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", type=click.Path(path_type=Path),
              help="Config file (default: $HELPDESK_CONFIG, then config/helpdesk.yaml).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, verbose: bool) -> None:
    """helpdesk: an email-driven helpdesk daemon."""
    import os

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("alembic", "mail.log"):  # aiosmtpd logs every connection at INFO
        logging.getLogger(chatty).setLevel(logging.INFO if verbose else logging.WARNING)
    ctx.ensure_object(dict)
    ctx.obj["config"] = config or Path(os.environ.get("HELPDESK_CONFIG") or "config/helpdesk.yaml")


def report(label: str, outcome: Any) -> None:
    """One line per message: what became of it, its case, and why when it says why."""
    click.echo(f"{label}: {outcome.status}" + (f" {outcome.ref}" if outcome.ref else "")
               + (f" ({outcome.reason})" if outcome.reason else ""))


def deliver_and_activate(app: App) -> None:
    """Deliver the outbox, then run the activation hooks of new connections cases to
    completion and deliver what they queued: acknowledgements never wait for a hook."""
    from helpdesk.hooks import run_pending_hooks
    from helpdesk.outbound.deliver import deliver_all
    deliver_all(app)
    if run_pending_hooks(app):
        deliver_all(app)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def main() -> None:
    cli(obj={})


# The command groups register themselves on ``cli`` when imported.
from helpdesk.cli import admin, cases, failed, init, kb, mail, web  # noqa: E402,F401
