"""A helpdesk wired to the real test servers: its own SQLite file, config and
templates, sending through the recording MTA. ``desk.cli(...)`` runs the real
console command in a subprocess, exactly as an admin would; ``stop_process(proc)``
stops one a test started itself (``helpdesk run``, say) as systemd would."""
from __future__ import annotations

import copy
import email.utils
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpdesk.app import App
from helpdesk.clock import FixedClock
from helpdesk.inbound.ingest import Outcome, ingest_raw
from helpdesk.outbound.deliver import deliver_all
from helpdesk.store import db
from helpdesk.views import show_case

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
AUTHSERV_ID = "mx.example.com"  # the test config's trusted MTA (trust.authserv_ids)


def base_config(tmp: Path, smtp_port: int | None) -> dict[str, Any]:
    outbound: dict[str, Any] = (
        {"smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "timeout": "5s"}}
        if smtp_port else {"maildir": str(tmp / "outbox")})
    return {
        "helpdesk": {"name": "Example Support", "address": "support@example.com",
                     "domain": "example.com", "attachments": str(tmp / "attachments")},
        "database": {"url": f"sqlite:///{tmp / 'helpdesk.db'}"},
        "outbound": outbound,
        "staff": ["agent@example.com", "@staff.example.com"],
        "trust": {"authserv_ids": [AUTHSERV_ID]},
        "categories": {
            "customer_care": {"label": "Customer Care", "prefix": "CC",
                              "addresses": ["support@example.com"], "lifecycle": "customer_care"},
            "connections": {"label": "Connections", "prefix": "CN",
                            "addresses": ["connections@example.com"], "lifecycle": "connections",
                            "notify": ["connectivity@example.com"]},
            "billing": {"label": "Billing", "prefix": "BL", "addresses": ["billing@example.com"],
                        "lifecycle": "customer_care"},
        },
    }


def staff_auth(address: str, authserv_id: str = AUTHSERV_ID) -> dict[str, str]:
    """The header our MTA adds to a mail whose DMARC check passed: what makes a staff
    member's mail count as theirs (SPEC, Trust). ``headers=staff_auth(sender)``."""
    domain = address.rpartition("@")[2].rstrip(">")
    return {"Authentication-Results":
            f"{authserv_id}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}"}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        elif value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def make_mail(sender: str, to: str | list[str], subject: str, body: str = "Hello.\n", *,
              cc: list[str] | None = None, message_id: str | None = None,
              in_reply_to: str | None = None, references: list[str] | None = None,
              headers: dict[str, str] | None = None, html: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join([to] if isinstance(to, str) else to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(START)
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="customer.example")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = " ".join(references or [in_reply_to])
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes(policy=SMTP)


@dataclass
class Desk:
    config_path: Path
    app: App
    clock: FixedClock
    mta: Any  # the recording MTA (tests.servers.smtp.MTAServer; None with a Maildir outbox)

    def ingest(self, raw: bytes, **kwargs: Any) -> Outcome:
        outcome = ingest_raw(self.app, raw, source=kwargs.pop("source", "test"), **kwargs)
        deliver_all(self.app)
        return outcome

    def sent(self) -> list[EmailMessage]:
        return self.mta.handler.messages()

    def sent_to(self, address: str) -> list[EmailMessage]:
        return [m for m, d in zip(self.sent(), self.mta.handler.envelopes)
                if address in d.rcpt_tos]

    def case(self, ref: str) -> dict[str, Any]:
        found = show_case(self.app, ref)
        assert found is not None, f"no case {ref}"
        return found

    def cli(self, *args: str, input: bytes | None = None, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELPDESK_CONFIG": str(self.config_path)}
        result = subprocess.run([sys.executable, "-m", "helpdesk", *args], input=input,
                                capture_output=True, env=env, timeout=120)
        out = subprocess.CompletedProcess(result.args, result.returncode,
                                          result.stdout.decode(), result.stderr.decode())
        if check and out.returncode != 0:
            raise AssertionError(f"helpdesk {' '.join(args)} exited {out.returncode}:\n"
                                 f"{out.stdout}\n{out.stderr}")
        return out


def write_config(tmp: Path, config: dict[str, Any]) -> Path:
    """The config file, readable by its owner only, as an admin keeps one that holds a
    password (`run` refuses one that others can read)."""
    path = tmp / "helpdesk.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def stop_processes(*procs: subprocess.Popen[Any], timeout: float = 20.0) -> list[int]:
    """Stop processes a test started, as systemd stops the daemon: one SIGTERM to each
    that still runs (all at once, so several daemons stop together), up to *timeout*
    seconds for all of them to exit, then SIGKILL for any left, so that none outlives
    the test. Their exit codes, in order: a hang is not hidden, a killed process
    returns -9 (-SIGKILL), and a test that asserts a clean stop (0) still fails on it.

    Never a second SIGTERM: to ``helpdesk run`` that means exit at once, with 1. Pipes
    are not read meanwhile (the few lines of a stop fit in one); read what is left
    after, e.g. with ``proc.communicate()``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """``stop_processes`` for one process: its exit code, -9 if it had to be killed."""
    return stop_processes(proc, timeout=timeout)[0]


@pytest.fixture
def desk_factory(tmp_path: Path, mta_factory: Callable[..., Any]) -> Iterator[Callable[..., Desk]]:
    apps: list[App] = []
    mta = mta_factory()  # restartable: tests stop and start it on the same port

    def make(name: str = "desk", smtp: bool = True, **changes: Any) -> Desk:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        config = merge(base_config(folder, mta.port if smtp else None), changes)
        path = write_config(folder, config)
        clock = FixedClock(START)
        app = App.from_config(path, clock=clock)
        db.upgrade(app.engine)
        apps.append(app)
        return Desk(path, app, clock, mta if smtp else None)

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def desk(desk_factory: Callable[..., Desk]) -> Desk:
    return desk_factory()


def attachment_mail(sender: str, size: int) -> bytes:
    """A request of about *size* bytes from *sender*: a line of text and one base64 PDF
    (for what a large mail costs, and what the listener does meanwhile)."""
    boundary = b"==scan=="
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    head = make_mail(sender, "support@example.com", "The scan").split(b"\r\n\r\n", 1)[0]
    head = b"".join(h + b"\r\n" for h in head.split(b"\r\n")
                    if h and not h.lower().startswith((b"content-", b"mime-")))
    parts = (head + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" +
             boundary + b"\"\r\n\r\n--" + boundary +
             b"\r\nContent-Type: text/plain\r\n\r\nThe scan.\r\n--" + boundary +
             b"\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=scan.pdf\r\n\r\n")
    lines = (size - len(parts) - 2000) // len(line)
    return parts + line * lines + b"--" + boundary + b"--\r\n"
