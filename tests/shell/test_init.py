"""Issue 11: a new site from the package alone — `helpdesk init DIR`, and a wheel installed
into a fresh virtualenv that runs, away from the source tree, the README's quick start."""
from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import pytest
import yaml

from helpdesk.scaffold import SiteExists, write_site
from tests.servers.helpdesk import make_mail, stop_process
from tests.servers.smtp import free_port, wait_for

SOURCE = Path(__file__).resolve().parents[2]
ANA = "Ana Garcia <ana@customer.example>"


def mails_to(site: Path, address: str) -> list[EmailMessage]:
    """The mails in the site's Maildir outbox addressed to ``address``."""
    outbox = site / "var" / "outbox" / "new"
    found = [BytesParser(policy=default).parsebytes(p.read_bytes())
             for p in sorted(outbox.iterdir())] if outbox.is_dir() else []
    return [m for m in found if address in m["To"]]


def test_init_lays_out_a_site_and_never_overwrites_a_config(tmp_path):
    site = tmp_path / "site"
    no_samples = tmp_path / "no-samples"  # the package's own samples are the next test's
    created = [path.relative_to(site).as_posix() for path, _ in write_site(site, no_samples)]
    assert created == ["config/helpdesk.yaml", "templates"]
    config = yaml.safe_load((site / "config" / "helpdesk.yaml").read_text())
    assert config["helpdesk"]["templates"] == "../templates"
    assert config["database"]["url"] == "sqlite:///../var/helpdesk.db"
    assert config["outbound"] == {"maildir": "../var/outbox"}
    assert "smtp_listener" in config["inbound"]
    readme = (site / "templates" / "README.md").read_text()
    assert "builtin:default/ack.txt.j2" in readme and "check-config" in readme
    assert [p.name for p in (site / "templates").iterdir()] == ["README.md"]  # no copies
    # the source tree's config is what the package carries
    assert (site / "config" / "helpdesk.yaml").read_bytes() == \
        (SOURCE / "config" / "helpdesk.yaml").read_bytes()
    (site / "templates" / "default").mkdir()
    with pytest.raises(SiteExists, match="helpdesk.yaml exists; not overwritten"):
        write_site(site)


def test_init_copies_the_sample_knowledge_base_and_points_the_config_at_it(tmp_path):
    samples = tmp_path / "samples"
    (samples / "billing").mkdir(parents=True)
    (samples / "billing" / "invoices.md").write_text("# Invoices\n\nWhere to find them.\n")
    site = tmp_path / "site"
    created = [path.relative_to(site).as_posix() for path, _ in write_site(site, samples)]
    assert created == ["config/helpdesk.yaml", "templates", "kb"]
    assert (site / "kb" / "billing" / "invoices.md").read_text().startswith("# Invoices")
    config = yaml.safe_load((site / "config" / "helpdesk.yaml").read_text())
    assert config["knowledge_base"]["path"] == "../kb"


def test_init_then_ingest_from_any_folder_acknowledges_into_the_maildir(tmp_path):
    helpdesk = [sys.executable, "-m", "helpdesk"]
    made = subprocess.run([*helpdesk, "init", "site"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert "next: helpdesk -c site/config/helpdesk.yaml run" in made.stdout
    again = subprocess.run([*helpdesk, "init", "site"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 1 and "not overwritten" in again.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mail.eml").write_bytes(make_mail(ANA, "support@example.com", "Printer on fire"))
    config = str(tmp_path / "site" / "config" / "helpdesk.yaml")
    ingested = subprocess.run([*helpdesk, "-c", config, "ingest", "mail.eml"], cwd=elsewhere,
                              capture_output=True, text=True, timeout=120)
    assert ingested.returncode == 0, ingested.stderr
    [ack] = mails_to(tmp_path / "site", "ana@customer.example")
    assert ack["Subject"] == "[CC-000001] Printer on fire"


def _run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_a_wheel_in_a_fresh_virtualenv_runs_the_quick_start_away_from_the_source(tmp_path):
    """README, Quick start, from a wheel: build it, install it into a new virtualenv, then
    `helpdesk init site` and `helpdesk -c site/config/helpdesk.yaml run`, in a folder that
    is not the source tree, with nothing of the source tree on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HELPDESK_CONFIG", "PYTHONPATH", "VIRTUAL_ENV")}
    # pip builds in the tree it is given: a copy keeps build/ out of the working tree
    source = tmp_path / "source"
    shutil.copytree(SOURCE, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*cache",
        ".hypothesis", "bench"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist",
          source], tmp_path, env, timeout=300)
    [wheel] = (tmp_path / "dist").glob("helpdesk-*.whl")
    _run([sys.executable, "-m", "venv", tmp_path / "v"], tmp_path, env)
    _run([tmp_path / "v/bin/pip", "install", "-q", "--disable-pip-version-check", wheel],
         tmp_path, env, timeout=600)
    shutil.rmtree(source)  # nothing may come from it any more

    work = tmp_path / "work"
    work.mkdir()
    helpdesk = tmp_path / "v/bin/helpdesk"
    _run([helpdesk, "init", "site"], work, env)
    where = _run([tmp_path / "v/bin/python", "-c", "import helpdesk; print(helpdesk.__file__)"],
                 work, env).stdout
    assert where.startswith(str(tmp_path / "v")), where
    config = "site/config/helpdesk.yaml"
    assert "config OK" in _run([helpdesk, "-c", config, "check-config"], work, env).stdout
    (work / "mail.eml").write_bytes(make_mail(ANA, "support@example.com", "Printer on fire"))
    _run([helpdesk, "-c", config, "ingest", "mail.eml"], work, env)
    [ack] = mails_to(work / "site", "ana@customer.example")
    assert ack["Subject"] == "[CC-000001] Printer on fire"

    # `run`, on a free port rather than the default 2525 (other tests may hold that one)
    port = free_port()
    path = work / config
    path.write_text(path.read_text().replace("port: 2525", f"port: {port}"))
    daemon = subprocess.Popen([helpdesk, "-c", config, "run"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def send() -> bool:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                    smtp.sendmail("bo@partner.example", ["support@example.com"],
                                  make_mail("bo@partner.example", "support@example.com",
                                            "Over SMTP"))
                return True
            except OSError:
                return False

        wait_for(send, timeout=30, interval=0.2)
        wait_for(lambda: mails_to(work / "site", "bo@partner.example"), timeout=30)
    finally:
        stop_process(daemon, timeout=30)
        output = daemon.communicate(timeout=30)[0].decode()
    assert daemon.returncode == 0, output
    [second] = mails_to(work / "site", "bo@partner.example")
    assert second["Subject"] == "[CC-000002] Over SMTP"
