"""Issue 7: connections cases end to end, against a real aiosmtpd MTA and SQLite: the activation
hook (success, failure, timeout, crash and restart), Delivered and Not completed, duplicate
requests, and the pending_seller reminder ladder. Hook scripts are real ``#!/bin/sh`` files."""
from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from helpdesk.app import App
from helpdesk.commands import set_status
from helpdesk.hooks import ORPHAN_GRACE, run_pending_hooks, shutdown_hooks
from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import HookRun
from tests.servers.helpdesk import START, make_mail, staff_auth, stop_process
from tests.servers.smtp import free_port, wait_for

ANA = "Ana Garcia <ana@customer.example>"
BO = "bo@customer.example"
STAFF_NOTIFY = "connectivity@example.com"
CONNECTIONS = "connections@example.com"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> dict:
    """Config changes that put a desk on each database: claims and leases are SQL."""
    if request.param == "postgresql":
        return {"database": {"url": request.getfixturevalue("postgres_url")}}
    return {}


def write_hook(folder: Path, body: str, name: str = "activate.sh") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def activation(command: str | Path, timeout: str = "2s") -> dict:
    return {"categories": {"connections": {"activation": {"command": [str(command)],
                                                          "timeout": timeout}}}}


def request(sender: str = ANA, subject: str = "New connection: Hotelbeds", **kwargs) -> bytes:
    return make_mail(sender, CONNECTIONS, subject,
                     kwargs.pop("body", "Please connect us to Hotelbeds, supplier code HB-77.\n"),
                     **kwargs)


def finish_hooks(desk) -> int:
    """What `helpdesk ingest` does after ingesting: hooks to completion, then the outbox."""
    queued = run_pending_hooks(desk.app)
    deliver_all(desk.app)
    return queued


def runs(desk) -> list[HookRun]:
    with desk.app.sessions() as session:
        return list(session.scalars(select(HookRun).order_by(HookRun.id)))


def events(desk, ref: str, type_: str) -> list[dict]:
    return [e["detail"] for e in desk.case(ref)["events"] if e["type"] == type_]


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# ---- a new request -----------------------------------------------------------------------

def test_new_request_opens_an_in_progress_case_and_the_ack_promises_auto_activation(
        desk_factory, tmp_path):
    counter = tmp_path / "runs"
    hook = write_hook(tmp_path / "hooks", f'echo run >> "{counter}"\necho ok\n')
    desk = desk_factory(**activation(hook))
    outcome = desk.ingest(request(cc=[BO]))
    assert (outcome.status, outcome.ref) == ("new_case", "CN-000001")
    assert desk.case("CN-000001")["status"] == "in_progress"
    [ack] = desk.sent_to("ana@customer.example")
    assert ack["Subject"] == "[CN-000001] New connection: Hotelbeds"
    assert "auto-activation" in " ".join(text_of(ack).split())
    assert desk.sent_to(BO) and desk.sent_to(STAFF_NOTIFY)  # the Cc and the staff notice
    # The hook runs outside the ingest: the case is committed and acknowledged first.
    assert not counter.exists()
    assert [(r.status, r.attempt) for r in runs(desk)] == [("pending", 1)]


# ---- the activation hook -----------------------------------------------------------------

def test_a_succeeding_hook_delivers_and_mails_its_output_as_credentials(desk_factory, tmp_path,
                                                                          database):
    folder = tmp_path / "desk"  # the config's folder: "./activate.sh" resolves against it
    write_hook(folder, 'cat > seen.json\n'
                       'echo "$HELPDESK_REF $HELPDESK_REQUESTER" > seen.env\n'
                       'pwd > seen.cwd\n'
                       'echo "Endpoint: https://api.example.com/v1"\n'
                       'echo "User: example_travel / Password: s3cret-77"\n')
    desk = desk_factory(**activation("./activate.sh"), **database)
    desk.ingest(request(cc=[BO]))
    assert finish_hooks(desk) >= 1

    case = desk.case("CN-000001")
    assert case["status"] == "delivered"
    seen = json.loads((folder / "seen.json").read_text())
    assert seen["ref"] == "CN-000001" and seen["category"] == "connections"
    assert seen["status"] == "in_progress" and seen["subject"] == "New connection: Hotelbeds"
    assert seen["requester"] == "ana@customer.example"
    assert seen["participants"] == ["ana@customer.example", BO]
    assert seen["created_at"] == START.isoformat()
    assert "supplier code HB-77" in seen["description"]
    assert (folder / "seen.env").read_text().split() == ["CN-000001", "ana@customer.example"]
    assert Path((folder / "seen.cwd").read_text().strip()) == folder.resolve()

    for address in ("ana@customer.example", BO):
        [credentials] = [m for m in desk.sent_to(address) if "s3cret-77" in text_of(m)]
        assert credentials["Subject"] == "[CN-000001] New connection: Hotelbeds"
        assert "Endpoint: https://api.example.com/v1" in text_of(credentials)
        assert credentials["Auto-Submitted"] == "auto-generated"
    assert events(desk, "CN-000001", "activation_succeeded") == [
        {"attempt": 1, "exit_status": 0}]
    assert any(e["type"] == "status_changed" and e["detail"]["to"] == "delivered"
               for e in case["events"])
    [run] = runs(desk)
    assert (run.status, run.attempt, run.exit_status) == ("succeeded", 1, 0)
    assert "s3cret-77" in run.stdout and run.started_at and run.finished_at
    # Nothing is left to run: a second pass changes nothing.
    assert finish_hooks(desk) == 0 and len(runs(desk)) == 1


def test_a_failing_hook_keeps_the_case_in_progress_and_asks_staff_for_manual_review(
        desk_factory, tmp_path, database):
    hook = write_hook(tmp_path / "hooks", 'echo "partial output"\n'
                                          'echo "warming up" >&2\n'
                                          'echo "supplier API said: 403 forbidden" >&2\n'
                                          'exit 3\n')
    desk = desk_factory(**activation(hook), **database)
    desk.ingest(request())
    staff_before = len(desk.sent_to(STAFF_NOTIFY))
    finish_hooks(desk)

    assert desk.case("CN-000001")["status"] == "in_progress"
    [failed] = events(desk, "CN-000001", "activation_failed")
    assert failed["exit_status"] == 3 and failed["reason"] == "exit status 3"
    assert "supplier API said: 403 forbidden" in failed["stderr_tail"]
    [review] = desk.sent_to(STAFF_NOTIFY)[staff_before:]
    assert "[CN-000001]" in review["Subject"]
    body = " ".join(text_of(review).split())
    assert "manual review" in body and "exit status 3" in body
    assert "supplier API said: 403 forbidden" in body
    # The requester hears nothing more than the acknowledgement.
    assert len(desk.sent_to("ana@customer.example")) == 1
    [run] = runs(desk)
    assert (run.status, run.exit_status) == ("failed", 3)
    assert "403 forbidden" in run.stderr_tail and run.stdout == "partial output\n"


def test_a_hook_that_cannot_start_goes_to_manual_review(desk_factory, tmp_path):
    desk = desk_factory(**activation(tmp_path / "no-such-hook.sh"))
    desk.ingest(request())
    finish_hooks(desk)
    assert desk.case("CN-000001")["status"] == "in_progress"
    [failed] = events(desk, "CN-000001", "activation_failed")
    assert failed["exit_status"] is None and failed["reason"].startswith("could not start")
    assert any("could not start" in text_of(m) for m in desk.sent_to(STAFF_NOTIFY))


def test_a_hook_past_its_timeout_is_killed_and_other_mail_flows_meanwhile(
        desk_factory, tmp_path):
    marker, sleeper = tmp_path / "started", tmp_path / "sleeper.pid"
    hook = write_hook(tmp_path / "hooks", f'echo started > "{marker}"\n'
                                          'echo "waiting for the supplier" >&2\n'
                                          f'sleep 30 & echo $! > "{sleeper}"\n'
                                          'wait\n')
    desk = desk_factory(**activation(hook, timeout="2s"))
    desk.ingest(request())
    stop = threading.Event()
    try:
        began = time.monotonic()
        assert run_pending_hooks(desk.app, stop) == 0  # the daemon's call only starts the work
        assert time.monotonic() - began < 1.0
        wait_for(marker.exists, timeout=5)

        # Another mail, while the hook hangs: processed and acknowledged at once.
        other = desk.ingest(make_mail("carl@other.example", "support@example.com", "Invoice?"))
        assert (other.status, other.ref) == ("new_case", "CC-000001")
        assert desk.sent_to("carl@other.example")
        assert [r.status for r in runs(desk)] == ["running"]

        wait_for(lambda: run_pending_hooks(desk.app, stop), timeout=10, interval=0.1)
        took = time.monotonic() - began
        deliver_all(desk.app)
    finally:
        stop.set()
        shutdown_hooks(desk.app)
    assert 2.0 <= took < 8.0  # killed at the timeout, not after the 30 s sleep
    wait_for(lambda: not alive(int(sleeper.read_text())), timeout=5)  # the whole group died
    assert desk.case("CN-000001")["status"] == "in_progress"
    [failed] = events(desk, "CN-000001", "activation_failed")
    assert failed["reason"] == "timeout after 2s"
    assert "waiting for the supplier" in failed["stderr_tail"]
    assert any("timeout after 2s" in text_of(m) and "[CN-000001]" in m["Subject"]
               for m in desk.sent_to(STAFF_NOTIFY))
    [run] = runs(desk)
    assert run.status == "failed" and run.exit_status is not None and run.exit_status < 0


def test_the_daemon_runs_several_slow_hooks_at_once(desk_factory, tmp_path):
    hook = write_hook(tmp_path / "hooks", 'sleep 1\necho "creds for $HELPDESK_REF"\n')
    desk = desk_factory(**activation(hook, timeout="10s"))
    for n in range(3):
        desk.ingest(request(sender=f"p{n}@partner{n}.example", subject=f"Connection {n}"))
    stop = threading.Event()
    try:
        began = time.monotonic()
        run_pending_hooks(desk.app, stop)
        wait_for(lambda: all(r.status == "succeeded" for r in runs(desk)), timeout=10)
        took = time.monotonic() - began
        run_pending_hooks(desk.app, stop)
    finally:
        stop.set()
        shutdown_hooks(desk.app)
    assert took < 2.8  # three 1-second hooks side by side, not one after another
    assert [c["status"] for c in map(desk.case, ("CN-000001", "CN-000002", "CN-000003"))] == [
        "delivered"] * 3


def test_two_processes_never_run_the_same_hook(desk_factory, tmp_path, database):
    counter = tmp_path / "runs"
    hook = write_hook(tmp_path / "hooks", f'echo "$HELPDESK_REF" >> "{counter}"\nsleep 0.3\n')
    desk = desk_factory(**activation(hook), **database)
    desk.ingest(request())
    other = App.from_config(desk.config_path, clock=desk.clock)
    try:
        threads = [threading.Thread(target=run_pending_hooks, args=(app,))
                   for app in (desk.app, other, desk.app, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert lines(counter) == ["CN-000001"]
    assert desk.case("CN-000001")["status"] == "delivered"


def test_a_hook_finishing_after_staff_closed_the_case_is_recorded_and_changes_nothing(
        desk_factory, tmp_path):
    release = tmp_path / "release"
    hook = write_hook(tmp_path / "hooks", f'while [ ! -e "{release}" ]; do sleep 0.05; done\n'
                                          'echo "late credentials"\n')
    desk = desk_factory(**activation(hook, timeout="10s"))
    desk.ingest(request())
    stop = threading.Event()
    try:
        run_pending_hooks(desk.app, stop)
        wait_for(lambda: runs(desk)[0].status == "running")
        set_status(desk.app, "CN-000001", "not_completed", "the partner found another way")
        release.touch()
        wait_for(lambda: runs(desk)[0].status != "running", timeout=5)
        run_pending_hooks(desk.app, stop)
        deliver_all(desk.app)
    finally:
        stop.set()
        shutdown_hooks(desk.app)
    assert desk.case("CN-000001")["status"] == "not_completed"
    [run] = runs(desk)
    assert run.status == "succeeded" and "late credentials" in run.stdout
    [ignored] = events(desk, "CN-000001", "activation_not_applied")
    assert ignored["result"] == "succeeded"
    assert not any("late credentials" in text_of(m) for m in desk.sent())


def test_a_pending_hook_of_a_case_staff_already_finished_is_not_run(desk_factory, tmp_path):
    counter = tmp_path / "runs"
    hook = write_hook(tmp_path / "hooks", f'echo run >> "{counter}"\n')
    desk = desk_factory(**activation(hook))
    desk.ingest(request())
    desk.cli("cases", "set-status", "CN-000001", "delivered", check=True)
    finish_hooks(desk)
    assert not counter.exists()
    assert desk.case("CN-000001")["status"] == "delivered"
    [run] = runs(desk)
    assert run.status == "failed" and "already delivered" in run.stderr_tail
    assert events(desk, "CN-000001", "activation_skipped")


def test_helpdesk_ingest_in_pipe_mode_runs_the_hook_before_it_exits(desk_factory, tmp_path):
    hook = write_hook(tmp_path / "hooks", 'echo "Pipe credentials: p1pe"\n')
    desk = desk_factory(**activation(hook))
    result = desk.cli("ingest", input=request(), check=True)
    assert "new_case CN-000001" in result.stdout
    assert desk.case("CN-000001")["status"] == "delivered"
    mails = desk.sent_to("ana@customer.example")
    assert "auto-activation" in " ".join(text_of(mails[0]).split())  # the ack goes out first
    assert any("p1pe" in text_of(m) for m in mails[1:])


# ---- interrupted runs --------------------------------------------------------------------

def _as_if_crashed(desk, attempt: int = 1) -> None:
    """Leave the hook run as a process killed while running it would: 'running'."""
    with desk.app.sessions.begin() as session:
        session.execute(update(HookRun).values(status="running", started_at=desk.clock.now(),
                                               attempt=attempt))


def test_an_interrupted_run_is_retried_once_when_its_lease_runs_out(desk_factory, tmp_path,
                                                                      database):
    counter = tmp_path / "runs"
    hook = write_hook(tmp_path / "hooks", f'echo "$HELPDESK_ATTEMPT" >> "{counter}"\n'
                                          'echo "creds"\n')
    desk = desk_factory(**activation(hook, timeout="2s"), **database)
    desk.ingest(request())
    _as_if_crashed(desk)
    # Maybe its owner is alive (another daemon, an ingest pipe): not before the lease runs out.
    desk.clock.advance(seconds=2 + ORPHAN_GRACE.total_seconds() - 1)
    finish_hooks(desk)
    assert not counter.exists()
    desk.clock.advance(seconds=1)
    finish_hooks(desk)
    assert lines(counter) == ["2"]
    assert desk.case("CN-000001")["status"] == "delivered"
    assert [(r.attempt, r.status) for r in runs(desk)] == [(1, "failed"), (2, "succeeded")]
    assert "interrupted" in runs(desk)[0].stderr_tail
    assert events(desk, "CN-000001", "activation_interrupted") == [{"attempt": 1}]
    desk.clock.advance(days=1)
    finish_hooks(desk)
    assert lines(counter) == ["2"]  # never again after a completed run


def test_a_run_interrupted_twice_goes_to_manual_review_instead_of_running_again(
        desk_factory, tmp_path):
    counter = tmp_path / "runs"
    hook = write_hook(tmp_path / "hooks", f'echo run >> "{counter}"\n')
    desk = desk_factory(**activation(hook))
    desk.ingest(request())
    staff_before = len(desk.sent_to(STAFF_NOTIFY))
    _as_if_crashed(desk, attempt=2)
    desk.clock.advance(minutes=5)
    finish_hooks(desk)
    assert not counter.exists()
    assert desk.case("CN-000001")["status"] == "in_progress"
    [failed] = events(desk, "CN-000001", "activation_failed")
    assert failed["attempt"] == 2 and "interrupted 2 times" in failed["reason"]
    [review] = desk.sent_to(STAFF_NOTIFY)[staff_before:]
    assert "interrupted 2 times" in text_of(review)
    assert [r.status for r in runs(desk)] == ["failed"]


def test_a_clean_stop_kills_the_hook_and_the_next_start_runs_attempt_2(desk_factory, tmp_path):
    counter = tmp_path / "runs"
    hook = write_hook(tmp_path / "hooks", f'echo "$HELPDESK_ATTEMPT" >> "{counter}"\n'
                                          '[ "$HELPDESK_ATTEMPT" = 1 ] && sleep 30\n'
                                          'echo "creds"\n')
    desk = desk_factory(**activation(hook, timeout="60s"))
    desk.ingest(request())
    stop = threading.Event()
    run_pending_hooks(desk.app, stop)
    wait_for(lambda: lines(counter) == ["1"])
    began = time.monotonic()
    stop.set()
    shutdown_hooks(desk.app)  # returns once the hook is killed and the stop recorded
    assert time.monotonic() - began < 5
    assert [(r.attempt, r.status) for r in runs(desk)] == [(1, "failed"), (2, "pending")]
    finish_hooks(desk)
    assert lines(counter) == ["1", "2"]
    assert desk.case("CN-000001")["status"] == "delivered"


@pytest.mark.slow
def test_a_daemon_killed_while_the_hook_runs_retries_it_once_after_restart(
        desk_factory, tmp_path):
    counter, first_pid = tmp_path / "runs", tmp_path / "first.pid"
    hook = write_hook(tmp_path / "hooks",
                      f'echo "$HELPDESK_ATTEMPT" >> "{counter}"\n'
                      f'if [ "$HELPDESK_ATTEMPT" = 1 ]; then echo $$ > "{first_pid}"; '
                      'exec sleep 60; fi\n'
                      'echo "Credentials after the crash: cr4sh"\n')
    port = free_port()
    desk = desk_factory(**activation(hook, timeout="1s"),
                        inbound={"smtp_listener": {"host": "127.0.0.1", "port": port}})
    cmd = [sys.executable, "-m", "helpdesk", "-c", str(desk.config_path), "run"]
    logs = tmp_path / "daemon.log"

    def start() -> subprocess.Popen[bytes]:
        with logs.open("ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def send() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                smtp.sendmail("ana@customer.example", [CONNECTIONS], request())
            return True
        except OSError:
            return False

    daemon = start()
    try:
        wait_for(send, timeout=20, interval=0.2)
        wait_for(lambda: lines(counter) == ["1"], timeout=20)
        daemon.kill()  # SIGKILL while the hook runs: no chance to record anything
        daemon.wait(timeout=10)
        assert [r.status for r in runs(desk)] == ["running"]

        daemon = start()
        wait_for(lambda: desk.case("CN-000001")["status"] == "delivered",
                 timeout=ORPHAN_GRACE.total_seconds() + 20, interval=0.2)
        assert lines(counter) == ["1", "2"]
        wait_for(lambda: any("cr4sh" in text_of(m) for m in desk.sent_to("ana@customer.example")),
                 timeout=20)
        assert stop_process(daemon) == 0, logs.read_text()

        daemon = start()  # and once more: a completed run never runs again
        time.sleep(5)
        assert stop_process(daemon) == 0, logs.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if first_pid.exists():  # the first hook, orphaned by the SIGKILL
            try:
                os.kill(int(first_pid.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert lines(counter) == ["1", "2"]
    assert [(r.attempt, r.status) for r in runs(desk)] == [(1, "failed"), (2, "succeeded")]
    assert sum("cr4sh" in text_of(m) for m in desk.sent_to("ana@customer.example")) == 1


# ---- Not completed -----------------------------------------------------------------------

def test_cancel_from_the_partner_makes_the_request_not_completed(desk):
    desk.ingest(request(cc=[BO]))
    ack = desk.sent_to("ana@customer.example")[0]
    outcome = desk.ingest(make_mail(BO, CONNECTIONS, "Re: [CN-000001] New connection: Hotelbeds",
                                    "#cancel\nWe found another way, thanks.\n",
                                    in_reply_to=ack["Message-ID"]))
    assert (outcome.status, outcome.ref) == ("reply", "CN-000001")
    assert desk.case("CN-000001")["status"] == "not_completed"
    [notice] = [m for m in desk.sent_to("ana@customer.example")
                if "cancelled by partner" in text_of(m)]
    assert notice["Subject"] == "[CN-000001] New connection: Hotelbeds"
    assert "Not completed" in text_of(notice)


def test_staff_set_not_completed_with_a_reason(desk):
    desk.ingest(request())
    ack = desk.sent_to("ana@customer.example")[0]
    desk.ingest(make_mail("agent@example.com", CONNECTIONS,
                          "Re: [CN-000001] New connection: Hotelbeds",
                          "#status not_completed the supplier does not support XML\n",
                          in_reply_to=ack["Message-ID"], headers=staff_auth("agent@example.com")))
    assert desk.case("CN-000001")["status"] == "not_completed"
    assert any("the supplier does not support XML" in text_of(m)
               for m in desk.sent_to("ana@customer.example")[1:])


# ---- duplicate requests ------------------------------------------------------------------

def test_a_duplicate_request_opens_no_case_and_names_the_one_under_way(desk):
    desk.ingest(request())
    outcome = desk.ingest(request(sender=BO, subject="FW:  new connection:   HOTELBEDS"))
    assert (outcome.status, outcome.ref) == ("duplicate_request", "CN-000001")
    assert [c["ref"] for c in json.loads(desk.cli("cases", "list", "--json").stdout)] == [
        "CN-000001"]
    [told] = desk.sent_to(BO)
    assert "CN-000001" in told["Subject"] and "CN-000001" in text_of(told)
    case = desk.case("CN-000001")
    assert case["status"] == "in_progress"  # the request under way is not touched
    assert [m["from"] for m in case["messages"] if m["direction"] == "in"] == [
        "ana@customer.example", BO]
    assert events(desk, "CN-000001", "duplicate_request")


def test_the_duplicate_notice_says_the_mail_joined_the_request_under_way(desk):
    desk.ingest(request())
    desk.ingest(request(sender=BO))
    text = " ".join(text_of(desk.sent_to(BO)[0]).split())
    assert "won't process" not in text and "added to CN-000001" in text


def test_a_delivered_or_foreign_request_is_no_duplicate(desk):
    desk.ingest(request())
    other_company = desk.ingest(request(sender="zoe@elsewhere.example"))
    assert (other_company.status, other_company.ref) == ("new_case", "CN-000002")
    desk.cli("cases", "set-status", "CN-000001", "delivered", check=True)
    again = desk.ingest(request(sender=BO))
    assert (again.status, again.ref) == ("new_case", "CN-000003")


def test_a_configured_duplicate_key_matches_across_subjects(desk_factory):
    desk = desk_factory(categories={"connections": {
        "duplicate_key": r"supplier code:?\s*([A-Z]+-\d+)"}})
    desk.ingest(request())
    outcome = desk.ingest(request(sender=BO, subject="Please activate",
                                  body="Hi, we need the supplier code HB-77 activated.\n"))
    assert (outcome.status, outcome.ref) == ("duplicate_request", "CN-000001")
    assert "CN-000001" in text_of(desk.sent_to(BO)[0])


# ---- pending_seller ----------------------------------------------------------------------

def test_pending_seller_reminds_at_3_and_5_days_and_closes_at_7(desk):
    desk.ingest(request())
    desk.cli("cases", "set-status", "CN-000001", "pending_seller", check=True)
    case = desk.case("CN-000001")
    assert case["status"] == "pending_seller"
    [entered] = [e for e in case["events"]
                 if e["type"] == "status_changed" and e["detail"]["to"] == "pending_seller"]
    since = datetime.fromisoformat(entered["at"])  # the CLI's own clock: the real time
    requester = "ana@customer.example"
    before = len(desk.sent_to(requester))  # the ack and the status mail

    def sweep_at(delta: timedelta) -> list:
        desk.cli("sweep", "--now", (since + delta).isoformat(), check=True)
        return desk.sent_to(requester)[before:]

    assert sweep_at(timedelta(days=3) - timedelta(minutes=1)) == []
    [first] = sweep_at(timedelta(days=3))
    assert "reminder 1 of 2" in text_of(first)
    assert len(sweep_at(timedelta(days=3))) == 1  # the same sweep again sends nothing
    [_, second] = sweep_at(timedelta(days=5))
    assert "reminder 2 of 2, our last one" in " ".join(text_of(second).split())
    assert desk.case("CN-000001")["status"] == "pending_seller"
    [_, _, closure] = sweep_at(timedelta(days=7))
    assert "seller's feedback" in text_of(closure)
    assert desk.case("CN-000001")["status"] == "not_completed"
    assert len(sweep_at(timedelta(days=7))) == 3  # nothing twice
    assert len(sweep_at(timedelta(days=30))) == 3
