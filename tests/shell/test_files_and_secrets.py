"""Files and secrets (SPEC, Round 2, Trust): what the helpdesk writes is readable by
its owner only; a config file others can read may not hold a secret written out;
no error message shows a value that came from ${VAR}. Everything through the real
command line, in subprocesses."""
from __future__ import annotations

import email.policy
import os
import stat
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.servers.helpdesk import base_config, make_mail, merge, write_config

ANA = "Ana Garcia <ana@customer.example>"
SECRET = "hunter2-Very-Secret-Value"


def helpdesk(config: Path, *args: str, input: bytes | None = None, umask: int | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)
    result = subprocess.run([sys.executable, "-m", "helpdesk", "-c", str(config), *args],
                            input=input, capture_output=True, timeout=60,
                            env={**os.environ, **(env or {})}, preexec_fn=set_umask)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                       result.stderr.decode())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def mail_with_attachment() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ANA, "support@example.com", "The contract"
    msg.set_content("Attached.\n")
    msg.add_attachment(b"%PDF-1.7 signed contract", maintype="application", subtype="pdf",
                       filename="contract.pdf")
    return msg.as_bytes(policy=email.policy.SMTP)


def test_the_database_the_attachments_and_the_outbox_are_readable_by_their_owner_only(
        tmp_path):
    etc, var = tmp_path / "etc", tmp_path / "var"
    etc.mkdir()
    config = write_config(etc, merge(base_config(tmp_path, None), {
        "database": {"url": "sqlite:///../var/helpdesk.db"},  # relative: the config's folder
        "helpdesk": {"attachments": "../var/attachments"},
        "outbound": {"maildir": "../var/outbox"}}))
    # umask 0: the modes must come from the helpdesk itself, not from a careful umask
    assert helpdesk(config, "db", "upgrade", umask=0).returncode == 0
    stored = helpdesk(config, "ingest", input=mail_with_attachment(), umask=0)
    assert stored.returncode == 0 and "new_case CC-000001" in stored.stdout, stored.stderr

    # the database, and the senders' record of accepted mail (outbound.accepted)
    files = [var / f"{name}{suffix}" for name in ("helpdesk.db", "helpdesk.db-sent")
             for suffix in ("", "-wal", "-shm") if (var / f"{name}{suffix}").exists()]
    assert {var / "helpdesk.db", var / "helpdesk.db-sent"} <= set(files)
    assert {mode(f) for f in files} == {0o600}, {f.name: oct(mode(f)) for f in files}
    assert mode(var) == 0o700
    for store in (var / "attachments", var / "outbox"):
        made = [store, *store.rglob("*")]
        assert any(p.is_file() for p in made), f"nothing written under {store}"
        assert {oct(mode(p)) for p in made if p.is_dir()} == {oct(0o700)}, store
        assert {oct(mode(p)) for p in made if p.is_file()} == {oct(0o600)}, store


def secret_config(tmp_path: Path, changes: dict[str, Any], file_mode: int) -> Path:
    config = write_config(tmp_path, merge(base_config(tmp_path, None), changes))
    config.chmod(file_mode)
    return config


@pytest.mark.parametrize("changes, key", [
    ({"outbound": {"smtp": {"host": "127.0.0.1", "password": SECRET, "username": "u"},
                   "maildir": None}}, "outbound.smtp.password"),
    ({"helpdesk": {"secret": SECRET}}, "helpdesk.secret"),
    ({"database": {"url": f"postgresql+psycopg://helpdesk:{SECRET}@db.example/helpdesk"}},
     "database.url"),
])
def test_a_config_others_can_read_with_a_secret_written_out_is_refused(tmp_path, changes, key):
    config = secret_config(tmp_path, changes, 0o644)
    for command in ("check-config", "run"):
        refused = helpdesk(config, command)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert str(config) in refused.stderr and key in refused.stderr
        assert f"chmod 600 {config}" in refused.stderr and "${VAR}" in refused.stderr
        assert SECRET not in refused.stdout + refused.stderr
    config.chmod(0o600)  # the fix the message names
    checked = helpdesk(config, "check-config")
    assert "can be read by other users" not in checked.stderr
    assert checked.returncode == 0, checked.stderr


def test_a_secret_taken_from_the_environment_may_sit_in_a_readable_config(tmp_path):
    config = secret_config(tmp_path, {"helpdesk": {"secret": "${HELPDESK_SECRET}"}}, 0o644)
    checked = helpdesk(config, "check-config", env={"HELPDESK_SECRET": SECRET})
    assert checked.returncode == 0, checked.stderr


def test_mail_piped_in_is_still_taken_whatever_the_config_file_mode(tmp_path):
    """Refusing belongs to `run` and `check-config`: an MTA pipe must never bounce mail
    because of a file mode."""
    config = secret_config(tmp_path, {"helpdesk": {"secret": SECRET}}, 0o644)
    assert helpdesk(config, "db", "upgrade").returncode == 0
    stored = helpdesk(config, "ingest", input=make_mail(ANA, "support@example.com", "Hi"))
    assert stored.returncode == 0 and "new_case" in stored.stdout


@pytest.mark.parametrize("changes, key", [
    ({"timers": {"close_after": "${HELPDESK_TEST_SECRET}"}}, "timers.close_after"),
    ({"limits": {"max_message_size": "x${HELPDESK_TEST_SECRET}"}}, "limits.max_message_size"),
    ({"limits": {"auto_mail_per_recipient": ["${HELPDESK_TEST_SECRET}"]}},
     "limits.auto_mail_per_recipient.0"),
    ({"inbound": {"smtp_listener": {"port": "${HELPDESK_TEST_SECRET}"}}},
     "inbound.smtp_listener.port"),
    ({"outbound": {"smtp": {"host": "h", "security": "${HELPDESK_TEST_SECRET}"},
                   "maildir": None}}, "outbound.smtp.security"),
    ({"database": {"url": "${HELPDESK_TEST_SECRET}"}}, "database.url"),
    ({"database": {"url": "postgresql+psycopg://u:${HELPDESK_TEST_SECRET}@h:port/db"}},
     "database.url"),
    ({"helpdesk": {"secret": ["${HELPDESK_TEST_SECRET}"]}}, "helpdesk.secret"),
])
def test_no_error_message_prints_a_value_that_came_from_the_environment(tmp_path, changes,
                                                                       key):
    config = secret_config(tmp_path, changes, 0o600)
    for command in (("check-config",), ("status",), ("ingest",)):
        result = helpdesk(config, *command, input=b"",
                          env={"HELPDESK_TEST_SECRET": SECRET})
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert key in result.stderr
        assert SECRET not in result.stdout + result.stderr
        assert "hunter2" not in result.stdout + result.stderr
