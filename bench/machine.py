"""What the figures were measured on, and what a durable commit costs on its disk."""
from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _dovecot() -> str:
    from tests.servers.dovecot import dovecot_binary
    binary = dovecot_binary()
    if not binary:
        return "not installed"
    try:
        return subprocess.run([binary, "--version"], check=False, capture_output=True, text=True,
                              timeout=10).stdout.strip().split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def describe() -> dict[str, str]:
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": str(nproc),
        "cpu": _cpu_model(),
        "ram": f"{_ram_gb():.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "dovecot": _dovecot(),
    }


def durable_commit_ms(folder: Path, count: int = 200) -> float:
    """A small write transaction committed the way helpdesk's SQLite engine commits
    (WAL, synchronous=FULL: one fsync per commit), on the disk of *folder*, in ms."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        con = sqlite3.connect(Path(tmp) / "fsync.db", isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t (x BLOB)")
        started = time.perf_counter()
        for _ in range(count):
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t VALUES (?)", (b"x" * 2000,))
            con.execute("COMMIT")
        elapsed = time.perf_counter() - started
        con.close()
    return elapsed * 1000 / count
