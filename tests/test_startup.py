"""Start-up stays cheap: every MTA pipe (`ingest`) and every cron `fetch` pays it.

Milliseconds are too noisy on a shared machine to assert on, so these tests count
what the real command imports (``python -X importtime``): no heavy package a command
does not need, and no sudden jump in the number of modules. bench/README.md
("Start-up") has the times.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.servers.helpdesk import make_mail

_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", re.MULTILINE)
# Packages of which even one module is a cost no command should pay without need.
HEAVY = ("sqlalchemy", "pydantic", "yaml", "jinja2", "mailparser", "aiosmtpd", "imapclient",
         "alembic", "mako", "pygments", "schedule", "psycopg")


def imported_by(*args: str, config: Path | None = None, stdin: bytes | None = None) -> set[str]:
    """The modules ``helpdesk ARGS`` imports, as the real console command runs it."""
    env = {k: v for k, v in os.environ.items() if k != "HELPDESK_CONFIG"}
    command = [sys.executable, "-X", "importtime", "-m", "helpdesk",
               *(["-c", str(config)] if config else []), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return set(_IMPORTED.findall(result.stderr.decode()))


def packages(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


def test_help_imports_click_and_nothing_heavy():
    modules = imported_by("--help")
    assert not packages(modules) & set(HEAVY)
    assert len(modules) < 200  # 129 with click 8.5 on Python 3.11


def test_ingest_of_one_mail_imports_only_what_storing_and_answering_it_needs(desk):
    raw = make_mail("ana@customer.example", "support@example.com", "Start-up")
    modules = imported_by("ingest", config=desk.config_path, stdin=raw)
    # The schema check reads one row; Alembic (and Mako, Pygments) load for `db upgrade`
    # only. No listener, no IMAP, no scheduler in a one-shot command.
    assert not packages(modules) & {"alembic", "mako", "pygments", "aiosmtpd", "imapclient",
                                    "schedule"}
    assert len(modules) < 650  # 526 when written: a new heavy dependency shows here
