"""Issue 11, the admin's side: the config checks, `cases list/show`, `failed show`, through
the real console command against a real SQLite file (and the recording MTA where mail
goes out)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.servers.helpdesk import base_config, merge, write_config


def check_config(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "helpdesk", "-c", str(path), "check-config"],
                          capture_output=True, text=True)


# -- config -----------------------------------------------------------------------------------

def test_one_address_in_two_categories_is_a_config_error_naming_both(tmp_path):
    config = merge(base_config(tmp_path, None),
                   {"categories": {"billing": {"addresses": ["Support@example.com"]}}})
    result = check_config(write_config(tmp_path, config))
    assert result.returncode == 2
    assert ("categories: Support@example.com is an address of both customer_care and billing"
            in result.stderr)
    assert "Value error" not in result.stderr and "Traceback" not in result.stderr


def test_a_config_check_failure_reads_as_a_sentence(tmp_path):
    config = merge(base_config(tmp_path, None), {"outbound": {"smtp": {"host": "x"}}})
    result = check_config(write_config(tmp_path, config))
    assert result.returncode == 2
    assert "outbound: set exactly one of smtp or maildir" in result.stderr
