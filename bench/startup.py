"""Start-up: what each command pays before it does anything, per package.

Every MTA pipe (``ingest``) and every cron ``fetch`` is a new process, so its
imports are paid per mail or per minute. For each command the real console
command runs with ``python -X importtime`` (bytecode compiled once beforehand, as
an installed package has it), five times; reported are the smallest total import
time (the sum of the modules' own times), the number of modules, the wall time of
the whole command, and the import time per top-level package.

``run`` is started with the SMTP and LMTP listeners configured and stopped with
SIGTERM once it logs that it runs: its imports are those of a daemon at work.
"""
from __future__ import annotations

import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.ingest import ROOT, make_desk, python_env
from tests.servers.helpdesk import make_mail, stop_process
from tests.servers.smtp import free_port

_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \| *(\S+)$", re.MULTILINE)
# Packages reported on their own; the rest of the stdlib and small ones are "other".
GROUPS = {
    "sqlalchemy": "sqlalchemy", "pydantic": "pydantic", "pydantic_core": "pydantic",
    "annotated_types": "pydantic", "typing_inspection": "pydantic", "yaml": "yaml",
    "_yaml": "yaml", "jinja2": "jinja2", "markupsafe": "jinja2", "mailparser": "mail-parser",
    "aiosmtpd": "aiosmtpd", "imapclient": "imapclient", "alembic": "alembic", "mako": "alembic",
    "click": "click", "helpdesk": "helpdesk", "asyncio": "asyncio", "email": "email",
    "psycopg": "psycopg", "schedule": "schedule", "nh3": "nh3",
}
RUNS = 5


@dataclass
class CommandStartup:
    command: str
    import_ms: float  # the smallest of RUNS
    modules: int
    wall_ms: float  # median of RUNS
    by_package: dict[str, float] = field(default_factory=dict)  # ms, of the smallest run

    def top(self, count: int = 6) -> str:
        ranked = sorted(self.by_package.items(), key=lambda kv: -kv[1])[:count]
        return ", ".join(f"{name} {ms:.0f}" for name, ms in ranked if ms >= 1)


def _parse(stderr: str) -> tuple[float, int, dict[str, float]]:
    total, packages, count = 0.0, Counter[str](), 0
    for micros, module in _LINE.findall(stderr):
        count += 1
        ms = int(micros) / 1000
        total += ms
        packages[GROUPS.get(module.partition(".")[0], "other")] += ms
    return total, count, dict(packages)


def _once(args: list[str], stdin: bytes | None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "helpdesk", *args],
                          input=stdin, capture_output=True, env=python_env(), cwd=ROOT,
                          timeout=120)
    return (time.perf_counter() - started) * 1000, done.stderr.decode(errors="replace")


def _run_daemon(config: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "helpdesk", "-c",
                             str(config), "run"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=python_env(), cwd=ROOT)
    assert proc.stderr is not None
    lines = []
    wall = 0.0
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        lines.append(line)
        if "helpdesk running" in line:
            wall = (time.perf_counter() - started) * 1000
            break
    # SIGTERM once it runs (unless it ended at start), then the lines written as it stopped
    if stop_process(proc, timeout=60) == -signal.SIGKILL:
        raise RuntimeError("helpdesk run did not stop within 60 s of SIGTERM")
    lines += proc.stderr.read().decode(errors="replace").splitlines(keepends=True)
    proc.stderr.close()
    return wall, "".join(lines)


def measure(folder: Path) -> list[CommandStartup]:
    folder = folder.resolve()
    config = make_desk(folder, None, None)  # SQLite, a Maildir outbox
    listening = make_desk(folder / "daemon", None, None, inbound={
        "smtp_listener": {"host": "127.0.0.1", "port": free_port()},
        "lmtp": {"host": "127.0.0.1", "port": free_port()}})
    imap = make_desk(folder / "fetch", None, None, inbound={"imap": {
        "host": "127.0.0.1", "port": free_port(), "security": "none", "username": "nobody",
        "password": "x", "timeout": "2s"}})  # nobody listens: fetch fails after its imports
    counter = iter(range(10**6))

    def mail() -> bytes:
        return make_mail("ana@customer.example", "support@example.com",
                         f"Start-up {next(counter)}")

    commands: list[tuple[str, list[str], object]] = [
        ("helpdesk --help", ["--help"], None),
        ("helpdesk ingest (one small mail, stdin)", ["-c", str(config), "ingest"], mail),
        ("helpdesk fetch (no mail)", ["-c", str(imap), "fetch"], None),
        ("helpdesk status", ["-c", str(config), "status"], None),
        ("helpdesk cases list", ["-c", str(config), "cases", "list"], None),
    ]
    results = []
    for label, args, stdin in commands:
        _once(args, mail() if stdin else None)  # compile the bytecode once
        samples = [_once(args, mail() if stdin else None) for _ in range(RUNS)]
        results.append(_summarise(label, samples))
    _run_daemon(listening)
    results.append(_summarise("helpdesk run (SMTP + LMTP listeners), until running",
                              [_run_daemon(listening) for _ in range(3)]))
    return results


def _summarise(label: str, samples: list[tuple[float, str]]) -> CommandStartup:
    parsed = [(_parse(stderr), wall) for wall, stderr in samples]
    (total, count, packages), _ = min(parsed, key=lambda p: p[0][0])
    return CommandStartup(label, total, count, statistics.median(w for _, w in parsed), packages)
