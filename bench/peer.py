"""The peer: django-helpdesk 2.6.1 on the same corpus, Dovecot and SMTP server.

It is installed from PyPI into a virtualenv of its own, ``bench/.peer-venv`` (about
half a minute the first time, reused after; ``make clean`` removes it), never into
the project's. Each run gets a fresh Django project (``settings.py`` below: SQLite,
Django's SMTP backend pointed at the bench's aiosmtpd server), ``migrate`` (which
loads django-helpdesk's e-mail templates), and one queue configured as its
documentation says for IMAP: the Dovecot account, ``INBOX``, no SSL (it still
upgrades with STARTTLS, as imaplib does without checking the certificate, which
costs it ~1 ms per MB here), ``new_ticket_cc`` and ``updated_ticket_cc`` a staff
address with notifications on e-mail events, so that like the helpdesk it answers
each new request and tells staff of every mail.

Then ``manage.py get_email`` runs once, in a process of its own
(``bench/peer_probe.py`` under the peer's interpreter: the same command, with a
probe noting the moment of its first IMAP FETCH). It fetches every message of the
INBOX one by one, makes a ticket or a follow-up of each, sends its mails, flags the
message ``\\Deleted`` and expunges at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peer-venv"
PACKAGE = "django-helpdesk==2.6.1"
STAFF = "agent@example.com"

SETTINGS = '''\
import os
SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
SITE_ID = 1
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "django.contrib.sites", "django.contrib.humanize",
                  "django.contrib.messages", "django.contrib.admin", "rest_framework", "helpdesk"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {db!r}}}}}
HELPDESK_TEAMS_MODE_ENABLED = False  # no pinax-teams
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = {smtp_port}
DEFAULT_FROM_EMAIL = "support@example.com"
MEDIA_ROOT = {media!r}
ROOT_URLCONF = "urls"
TEMPLATES = [{{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
              "OPTIONS": {{"context_processors": [
                  "django.contrib.auth.context_processors.auth",
                  "django.contrib.messages.context_processors.messages",
                  "django.template.context_processors.request"]}}}}]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware",
              "django.contrib.messages.middleware.MessageMiddleware"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {{"version": 1, "disable_existing_loggers": False,
           "handlers": {{"console": {{"class": "logging.StreamHandler"}}}},
           "root": {{"handlers": ["console"], "level": "WARNING"}}}}
'''
URLS = '''\
from django.urls import include, path
urlpatterns = [path("", include("helpdesk.urls", namespace="helpdesk"))]
'''
QUEUE = '''\
from helpdesk.models import Queue
Queue.objects.create(
    title="Example Support", slug="support", email_address="support@example.com",
    allow_email_submission=True,
    email_box_type="imap", email_box_host="127.0.0.1", email_box_port={port},
    email_box_ssl=False, email_box_user={user!r}, email_box_pass={password!r},
    email_box_imap_folder="INBOX", email_box_interval=0, logging_type="none",
    new_ticket_cc={staff!r}, updated_ticket_cc={staff!r},
    enable_notifications_on_email_events=True)
'''


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_installed(note: Any) -> str:
    """The peer's virtualenv, made and filled once; returns the installed version."""
    if not python().exists():
        note(f"installing {PACKAGE} from PyPI into {VENV.relative_to(HERE.parent)} (once)")
        venv.create(VENV, with_pip=True)
    check = subprocess.run([str(python()), "-c",
                            "import importlib.metadata as m; print(m.version('django-helpdesk'))"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        subprocess.run([str(python()), "-m", "pip", "install", "--quiet", PACKAGE], check=True,
                       timeout=900)
        check = subprocess.run([str(python()), "-c", "import importlib.metadata as m; "
                                "print(m.version('django-helpdesk'))"],
                               capture_output=True, text=True, check=True)
    return check.stdout.strip()


def make_project(folder: Path, smtp_port: int, account: Any) -> Path:
    """A Django project with django-helpdesk, migrated, and one IMAP queue."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.py").write_text(SETTINGS.format(
        db=str(folder / "db.sqlite3"), smtp_port=smtp_port, media=str(folder / "media")))
    (folder / "urls.py").write_text(URLS)
    manage(folder, "migrate", "-v", "0")
    manage(folder, "shell", "-c", QUEUE.format(port=account.server.port, user=account.user,
                                               password=account.password, staff=STAFF))
    return folder


def manage(folder: Path, *args: str, timeout: float = 600) -> None:
    subprocess.run([str(python()), "-c", "import sys; from django.core.management import "
                    "execute_from_command_line; execute_from_command_line(sys.argv)",
                    *args], cwd=folder, env=_env(folder), check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL)


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(folder)
    env["DJANGO_SETTINGS_MODULE"] = "settings"
    return env


@dataclass
class PeerCounts:
    tickets: int
    followups: int


def run_get_email(folder: Path, out: Path, timeout: float = 7200) -> dict[str, Any]:
    """``manage.py get_email`` under the probe; returns its facts (first_fetch, end)."""
    log = out.with_suffix(".log")
    with open(log, "wb") as err:
        done = subprocess.run([str(python()), str(HERE / "peer_probe.py"), str(out)], cwd=folder,
                              env=_env(folder), stdout=subprocess.DEVNULL, stderr=err,
                              timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"django-helpdesk get_email exited {done.returncode}:\n"
                           + log.read_text(errors="replace")[-3000:])
    return json.loads(out.read_text())


def counts(folder: Path) -> PeerCounts:
    import sqlite3
    with sqlite3.connect(folder / "db.sqlite3") as db:
        tickets = db.execute("SELECT count(*) FROM helpdesk_ticket").fetchone()[0]
        followups = db.execute("SELECT count(*) FROM helpdesk_followup").fetchone()[0]
    return PeerCounts(tickets, followups)


if __name__ == "__main__":  # `python -m bench.peer`: just install it
    print(ensure_installed(lambda text: print(text, file=sys.stderr)))
