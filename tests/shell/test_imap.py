"""IMAP inbound against a real Dovecot: fetch, acknowledge after commit, TLS, IDLE, reconnect."""
from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from helpdesk.app import App
from helpdesk.config import ImapMailbox, Settings
from helpdesk.inbound import imap, ingest
from helpdesk.store import db
from helpdesk.store.orm import Inbound, MailboxState, Outbox

pytestmark = pytest.mark.imap


# -- helpers -------------------------------------------------------------------
def mail(n: int = 1, *, sender: str = "ann@customer.test", body: str = "My printer is on fire.",
         subject: str | None = None) -> bytes:
    return (f"From: Ann <{sender}>\r\nTo: support@example.com\r\n"
            f"Subject: {subject or f'Help needed #{n}'}\r\n"
            f"Message-ID: {make_msgid('t', 'customer.test')}\r\n"
            f"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"\r\n{body}\r\n").encode()


def wait_for(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {predicate}")
        time.sleep(interval)
    return value


def state(app: App, name: str = "default") -> MailboxState | None:
    with app.sessions() as session:
        return session.get(MailboxState, name)


def inbound_rows(app: App) -> list[Inbound]:
    with app.sessions() as session:
        return list(session.scalars(select(Inbound).order_by(Inbound.id)))


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(*mailboxes: dict[str, Any], **limits: Any) -> App:
        settings = Settings.model_validate({
            "helpdesk": {"name": "Example Support", "address": "support@example.com",
                         "domain": "example.com"},
            "database": {"url": f"sqlite:///{tmp_path}/helpdesk.db"},
            "inbound": {"imap": list(mailboxes)},
            "outbound": {"maildir": str(tmp_path / "outbox")},
            "staff": ["agent@example.com"],
            "categories": {"customer_care": {"label": "Customer Care", "prefix": "CC",
                                             "addresses": ["support@example.com"]}},
            "limits": limits,
            "config_dir": tmp_path,
        })
        app = App.from_settings(settings)
        db.upgrade(app.engine)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def fetch(app: App, index: int = 0, **kwargs: Any) -> imap.FetchResult:
    mailbox = app.settings.inbound.imap[index]
    client = imap.connect(mailbox)
    try:
        return imap.fetch_once(app, mailbox, client, **kwargs)
    finally:
        imap.close_quietly(client)


# -- fetch_once ----------------------------------------------------------------
def test_fetch_ingests_moves_to_processed_and_advances_watermark(dovecot, make_app):
    app = make_app(dovecot.mailbox_config(batch_size=2))
    dovecot.append_many([mail(1), mail(2), mail(3)])
    dovecot.append(mail(4), flags=(b"\\Seen",))  # read by someone else: still new to us

    result = fetch(app)

    assert (result.found, result.ingested, result.quarantined) == (4, 4, 0)
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 4
    assert [(r.source, r.source_key, r.status) for r in inbound_rows(app)] == [
        ("imap:default", f"{result.uidvalidity}:{uid}", "done") for uid in (1, 2, 3, 4)]
    mark = state(app)
    assert (mark.uidvalidity, mark.last_uid) == (result.uidvalidity, 4)
    assert mark.last_fetch_at is not None and mark.last_error is None
    assert fetch(app).found == 0


def test_flags_instead_of_moving_when_no_processed_folder(dovecot, make_app):
    app = make_app(dovecot.mailbox_config(processed_folder=None))
    dovecot.append_many([mail(1), mail(2)])

    assert fetch(app).ingested == 2

    assert dovecot.count("INBOX") == 2 and "Processed" not in dovecot.folders()
    assert all({b"\\Seen", imap.DONE_KEYWORD} <= set(f) for f in dovecot.flags().values())
    with app.sessions.begin() as session:  # even a lost watermark does not re-ingest
        session.delete(session.get(MailboxState, "default"))
    dovecot.append(mail(3))
    result = fetch(app)
    assert (result.found, result.ingested) == (1, 1)
    assert len(inbound_rows(app)) == 3


def test_unparseable_message_is_quarantined_and_moved_to_failed(dovecot, make_app):
    app = make_app(dovecot.mailbox_config())
    dovecot.append_many([mail(1), b"this is not a mail at all\r\n", mail(3)])

    result = fetch(app)

    assert (result.ingested, result.quarantined) == (2, 1)
    assert dovecot.count("INBOX") == 0
    assert dovecot.count("Processed") == 2 and dovecot.count("Failed") == 1
    assert [r.status for r in inbound_rows(app)] == ["done", "failed", "done"]
    assert state(app).last_uid == 3


def test_oversize_message_goes_to_failed_without_download(dovecot, make_app):
    app = make_app(dovecot.mailbox_config(), max_message_size="5KB")
    dovecot.append_many([mail(1, body="x" * 20_000), mail(2)])

    result = fetch(app)

    assert (result.too_large, result.ingested) == (1, 1)
    assert dovecot.count("Failed") == 1 and dovecot.count("Processed") == 1
    # the big one was never downloaded: only its headers are kept, as a record
    assert sorted(r.outcome for r in inbound_rows(app)) == ["new_case", "too_large"]
    assert min(len(r.raw) for r in inbound_rows(app)) < 2000
    assert b"x" * 100 in dovecot.messages("Failed")[0]  # kept intact on the server
    with app.sessions() as session:
        kinds = list(session.scalars(select(Outbox.kind)))
    assert "too_large" in kinds  # the sender hears why


def test_uidvalidity_change_resets_the_watermark(dovecot, make_app, caplog):
    app = make_app(dovecot.mailbox_config(folder="Support"))
    dovecot.append_many([mail(1), mail(2)], folder="Support")
    first = fetch(app)
    assert state(app).last_uid == 2

    dovecot.delete_folder("Support")  # recreated: UIDs start again at 1
    dovecot.append(mail(3), folder="Support")
    second = fetch(app)

    assert second.uidvalidity != first.uidvalidity
    assert (second.found, second.ingested) == (1, 1)
    assert (state(app).uidvalidity, state(app).last_uid) == (second.uidvalidity, 1)
    assert dovecot.count("Support") == 0 and dovecot.count("Processed") == 3
    assert "UIDVALIDITY changed" in caplog.text


def test_storage_failure_leaves_the_message_and_stops_the_pass(dovecot, make_app, monkeypatch):
    app = make_app(dovecot.mailbox_config(batch_size=1))  # a group commit per message
    dovecot.append_many([mail(1), mail(2), mail(3)])
    real = ingest.ingest_many

    def flaky(app_: App, mails: list[ingest.Received]) -> list[ingest.Outcome]:
        if any(m.source_key.endswith(":2") for m in mails):
            raise ingest.StorageUnavailable("database is locked")
        return real(app_, mails)

    monkeypatch.setattr(ingest, "ingest_many", flaky)
    with pytest.raises(ingest.StorageUnavailable):
        fetch(app)
    assert dovecot.count("Processed") == 1 and dovecot.count("INBOX") == 2
    assert state(app).last_uid == 1

    monkeypatch.setattr(ingest, "ingest_many", real)
    assert fetch(app).ingested == 2
    assert dovecot.count("INBOX") == 0 and len(inbound_rows(app)) == 3


def test_stop_finishes_the_group_in_hand_and_leaves_the_rest(dovecot, make_app, monkeypatch):
    app = make_app(dovecot.mailbox_config(batch_size=1))  # a group commit per message
    dovecot.append_many([mail(1), mail(2), mail(3)])
    stop, real = threading.Event(), ingest.ingest_many

    def then_stop(app_: App, mails: list[ingest.Received]) -> list[ingest.Outcome]:
        stop.set()  # SIGTERM arrives while the first message is in hand
        return real(app_, mails)

    monkeypatch.setattr(ingest, "ingest_many", then_stop)
    result = fetch(app, stop=stop)

    assert result.interrupted and result.ingested == 1
    assert dovecot.count("Processed") == 1 and dovecot.count("INBOX") == 2
    assert state(app).last_uid == 1


def test_reingest_after_a_crash_before_the_move_is_harmless(dovecot, make_app):
    app = make_app(dovecot.mailbox_config())
    dovecot.append(mail(1))
    uidvalidity = dovecot.uidvalidity()
    ingest.ingest_raw(app, dovecot.messages()[0], source="imap:default",
                      source_key=f"{uidvalidity}:1")  # committed, then "crashed"

    result = fetch(app)

    assert result.ingested == 1 and dovecot.count("Processed") == 1
    assert len(inbound_rows(app)) == 1


def test_a_quarantined_mail_fetched_again_after_a_crash_goes_to_the_failed_folder(
        dovecot, make_app):
    app = make_app(dovecot.mailbox_config())
    dovecot.append(b"not a mail\r\n")
    uidvalidity = dovecot.uidvalidity()
    kept = ingest.ingest_raw(app, dovecot.messages()[0], source="imap:default",
                             source_key=f"{uidvalidity}:1")  # quarantined, then "crashed"
    assert kept.quarantined

    result = fetch(app)

    assert (dovecot.count("Processed"), dovecot.count("Failed")) == (0, 1)
    assert result.quarantined == 1 and len(inbound_rows(app)) == 1


@pytest.mark.parametrize("capability", ["IMAP4rev1 LITERAL+ UIDPLUS", "IMAP4rev1 LITERAL+"])
def test_without_move_copies_deletes_and_expunges(dovecot_factory, make_app, capability):
    account = dovecot_factory(imap_capability=capability).new_account()
    app = make_app(account.mailbox_config())
    account.append_many([mail(1), b"not a mail\r\n", mail(3)])

    result = fetch(app)

    assert (result.ingested, result.quarantined) == (2, 1)
    assert account.count("INBOX") == 0
    assert (account.count("Processed"), account.count("Failed")) == (2, 1)


# -- connect: TLS, XOAUTH2, errors -------------------------------------------------
def test_ssl_with_the_private_ca_works(dovecot_tls, make_app):
    app = make_app(dovecot_tls.mailbox_config())
    dovecot_tls.append(mail(1))
    assert fetch(app).ingested == 1


def test_ssl_without_the_ca_is_a_clear_certificate_error(dovecot_tls):
    mailbox = ImapMailbox(**dovecot_tls.mailbox_config(ca_file=None))
    with pytest.raises(imap.ImapError, match=(
            rf"^certificate verify failed for 127\.0\.0\.1:{dovecot_tls.port}: "
            r"unable to get local issuer certificate \(set ca_file for a private CA\)$")):
        imap.connect(mailbox)


def test_starttls_with_the_private_ca_works(dovecot, make_app):
    app = make_app(dovecot.mailbox_config(security="starttls", ca_file=str(dovecot.server.ca_file)))
    dovecot.append(mail(1))
    assert fetch(app).ingested == 1


def test_starttls_without_the_ca_fails_clearly(dovecot):
    mailbox = ImapMailbox(**dovecot.mailbox_config(security="starttls"))
    with pytest.raises(imap.ImapError, match="certificate verify failed for 127.0.0.1"):
        imap.connect(mailbox)


def test_xoauth2_token_comes_from_the_command(dovecot, make_app, tmp_path):
    # This Dovecot checks an XOAUTH2 token like a password: the token is the password.
    script = tmp_path / "token.sh"
    script.write_text(f"#!/bin/sh\necho {dovecot.password}\n")
    script.chmod(0o755)
    app = make_app(dovecot.mailbox_config(password=None, oauth2_token_command=["./token.sh"]))
    dovecot.append(mail(1))
    mailbox = app.settings.inbound.imap[0]
    client = imap.connect(mailbox, cwd=tmp_path)
    try:
        assert imap.fetch_once(app, mailbox, client).ingested == 1
    finally:
        imap.close_quietly(client)


def test_a_failing_token_command_is_a_clear_error(dovecot):
    mailbox = ImapMailbox(**dovecot.mailbox_config(password=None, oauth2_token_command=[
        sys.executable, "-c", "import sys; sys.exit('invalid_grant: refresh token revoked')"]))
    with pytest.raises(imap.ImapError, match=r"oauth2_token_command of mailbox 'default' "
                                             r"failed \(exit 1\): invalid_grant"):
        imap.connect(mailbox)


def test_bad_password_names_the_user_and_never_the_password(dovecot):
    mailbox = ImapMailbox(**dovecot.mailbox_config(password="wrong-secret"))
    with pytest.raises(imap.ImapError, match=f"login failed for {dovecot.user} at") as info:
        imap.connect(mailbox)
    assert "wrong-secret" not in str(info.value)


def test_fetch_all_isolates_a_failing_mailbox(dovecot, dovecot_server, make_app, caplog):
    other = dovecot_server.new_account()
    app = make_app(dovecot.mailbox_config(name="broken", password="nope"),
                   other.mailbox_config(name="good"))
    other.append(mail(1))

    assert imap.fetch_all(app) == 1

    assert other.count("Processed") == 1
    assert "login failed" in state(app, "broken").last_error
    assert state(app, "good").last_fetch_at is not None
    assert "mailbox broken: fetch failed: login failed" in caplog.text
    assert dovecot.password not in caplog.text and "nope" not in caplog.text


# -- watch: IDLE, polling, reconnect -----------------------------------------------
class Watcher:
    def __init__(self, app: App, **options: Any) -> None:
        self.app, self.stop, self.fetched = app, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=imap.watch, args=(
            app, app.settings.inbound.imap[0], self.stop, self.fetched.set), kwargs=options)

    def __enter__(self) -> Watcher:
        self.thread.start()
        wait_for(lambda: (s := state(self.app)) and s.last_fetch_at)  # first pass done
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("server", ["dovecot", "dovecot_tls"])
def test_idle_picks_up_new_mail_within_two_seconds(server, request, make_app):
    dovecot = request.getfixturevalue(server)
    app = make_app(dovecot.mailbox_config())
    with Watcher(app) as watcher:
        time.sleep(0.3)  # let it enter IDLE
        started = time.monotonic()
        dovecot.append(mail(1))
        assert watcher.fetched.wait(5)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"IDLE took {elapsed:.2f}s"
    assert dovecot.count("Processed") == 1


def test_idle_loses_no_wakeup_under_a_stream_of_mail(dovecot, make_app):
    # one sender, 30 new cases: past the new-case limit, which would hold 25 of them
    app = make_app(dovecot.mailbox_config(), new_cases_per_sender="100/1h")
    with Watcher(app):
        with dovecot.client() as client:
            for n in range(30):  # land at every point of the pass/IDLE cycle
                client.append("INBOX", mail(n))
                time.sleep(random.uniform(0, 0.05))
        wait_for(lambda: dovecot.count("Processed") == 30, timeout=10)
    assert dovecot.count("INBOX") == 0


def test_polling_picks_up_new_mail_within_one_interval(dovecot, make_app):
    app = make_app(dovecot.mailbox_config(idle=False, poll_interval="1s"))
    with Watcher(app) as watcher:
        started = time.monotonic()
        dovecot.append(mail(1))
        assert watcher.fetched.wait(5)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 1.0, f"polling took {elapsed:.2f}s"  # one interval + the pass itself
    assert dovecot.count("Processed") == 1


def test_polls_when_the_server_has_no_idle(dovecot_factory, make_app):
    account = dovecot_factory(imap_capability="IMAP4rev1 LITERAL+ UIDPLUS").new_account()
    app = make_app(account.mailbox_config(idle=True, poll_interval="1s"))
    with Watcher(app) as watcher:
        started = time.monotonic()
        account.append(mail(1))
        assert watcher.fetched.wait(5)
        assert time.monotonic() - started < 2.0
    assert account.count("Processed") == 1


@pytest.mark.parametrize("config", [{}, {"idle": False, "poll_interval": "30s"}])
def test_stop_ends_the_watcher_within_a_second_or_two(dovecot, make_app, config):
    app = make_app(dovecot.mailbox_config(**config))
    watcher = Watcher(app).__enter__()
    started = time.monotonic()
    watcher.__exit__()
    assert time.monotonic() - started < 2.5


def test_reconnects_after_dovecot_restarts(dovecot, make_app, caplog):
    caplog.set_level(logging.INFO, logger="helpdesk.inbound")
    app = make_app(dovecot.mailbox_config())
    with Watcher(app, backoff_base=0.05, backoff_cap=0.3) as watcher:
        time.sleep(0.3)
        dovecot.stop()
        wait_for(lambda: (s := state(app)) and s.last_error_at)
        time.sleep(1.5)  # several failed attempts while it is down
        dovecot.start()
        dovecot.append(mail(1))
        assert watcher.fetched.wait(10)
    assert dovecot.count("Processed") == 1
    errors = [r for r in caplog.records if "will retry" in r.getMessage()]
    assert 1 <= len(errors) <= 3, [r.getMessage() for r in errors]  # once per state, not per retry
    assert sum("working again" in r.getMessage() for r in caplog.records) == 1


def test_reconnects_after_dovecot_is_killed_without_a_bye(dovecot, make_app):
    app = make_app(dovecot.mailbox_config())
    with Watcher(app, backoff_base=0.05, backoff_cap=0.3) as watcher:
        time.sleep(0.3)  # in IDLE
        dovecot.kill()
        wait_for(lambda: (s := state(app)) and s.last_error_at)
        dovecot.start()
        dovecot.append(mail(1))
        assert watcher.fetched.wait(10)
    assert dovecot.count("Processed") == 1


def test_one_broken_mailbox_never_stops_the_others(dovecot, dovecot_server, make_app):
    other = dovecot_server.new_account()
    app = make_app(dovecot.mailbox_config(name="broken", password="nope"),
                   other.mailbox_config(name="good"))
    stop, fetched = threading.Event(), threading.Event()
    threads = imap.start_watchers(app, stop, fetched.set, backoff_base=0.05, backoff_cap=0.2)
    try:
        wait_for(lambda: (s := state(app, "broken")) and s.last_error)
        other.append(mail(1))
        assert fetched.wait(5)
        assert other.count("Processed") == 1
        assert all(t.is_alive() for t in threads)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    assert not any(t.is_alive() for t in threads)


def test_a_message_that_arrived_while_down_is_fetched_on_start(dovecot, make_app):
    app = make_app(dovecot.mailbox_config())
    dovecot.append(mail(1))
    with Watcher(app) as watcher:
        assert watcher.fetched.wait(5)
    assert dovecot.count("Processed") == 1


def test_backoff_grows_with_jitter_and_is_capped():
    assert 0.5 <= imap.backoff_delay(1, base=1) <= 1
    assert 4 <= imap.backoff_delay(4, base=1) <= 8
    assert 150 <= imap.backoff_delay(30, base=1, cap=300) <= 300
