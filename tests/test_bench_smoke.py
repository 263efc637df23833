"""`python -m bench --quick` still runs end to end (the benchmarks must not rot).

This checks only that every benchmark runs and reports; it asserts nothing about
speed: figures come from `make bench`, never from a test. It runs without the peer
(`--no-peer`): django-helpdesk is installed from PyPI the first time, which needs a
network and half a minute; `make bench-quick` runs it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmarks_run_and_print_every_section():
    if not (shutil.which("dovecot") or Path("/usr/sbin/dovecot").exists()):
        if os.environ.get("CI") == "true":
            pytest.fail("the benchmarks need Dovecot, which CI must install")
        pytest.skip("Dovecot is not installed")
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--no-readme", "--no-peer"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for section in ("[start-up", "helpdesk ingest (one small mail", "helpdesk / bare loop",
                    "skipped (--no-peer)", "[several daemons", "2 daemons",
                    "one sweep", "[the sender alone", "[memory", "95th percentile",
                    "[web portal", "SQL statements: case page: staff", "[bounded work",
                    "while a", "recall@3", "suggestion latency"):
        assert section in result.stdout, section
