#!/bin/sh
# The exactly-once and crash tests, run ROUNDS times while a 10,000-message
# `bench.fetch_side` (bare loop, then `helpdesk fetch` and its sending process) loads
# both cores beside them: the window between an SMTP server's 250 and our record must
# not depend on a quiet machine. Usage: bench/crash_under_load.sh [ROUNDS]
# (bench/README.md, "Crash tests under load"). Exits non-zero if any round fails.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
ROUNDS=${1:-3}
CRASH_TESTS="
tests/shell/test_imap_daemon.py::test_sigkill_at_random_points_loses_nothing_and_doubles_nothing
tests/shell/test_imap.py::test_reingest_after_a_crash_before_the_move_is_harmless
tests/shell/test_imap.py::test_reconnects_after_dovecot_is_killed_without_a_bye
tests/shell/test_sender.py
tests/shell/test_sending_process.py
tests/shell/test_several_daemons.py
tests/shell/test_group_commit.py
tests/shell/test_mta_pipe.py
tests/shell/test_lmtp.py
tests/shell/test_foundation.py
tests/shell/test_property.py
tests/shell/test_lifecycle_e2e.py::test_reminders_at_3_and_5_days_and_closure_at_7_each_exactly_once
tests/shell/test_lifecycle_e2e.py::test_two_sweepers_at_once_send_each_reminder_once
tests/shell/test_connections.py::test_a_daemon_killed_while_the_hook_runs_retries_it_once_after_restart
tests/shell/test_connections.py::test_an_interrupted_run_is_retried_once_when_its_lease_runs_out
"
mkdir -p bench/out
# The load, again and again until the last round ends: a process group of its own,
# so that the whole of it (the bench, Dovecot, helpdesk fetch) is stopped at the end.
setsid sh -c "while :; do $PY -m bench.fetch_side 10000; done" > bench/out/crash-load.log 2>&1 &
load=$!
trap 'kill -- -$load 2>/dev/null; wait $load 2>/dev/null' EXIT
sleep 20  # the corpus is generated and the load has started
failed=0
for round in $(seq "$ROUNDS"); do
    printf 'round %s, load average %s: ' "$round" "$(cut -d' ' -f1 /proc/loadavg)"
    # shellcheck disable=SC2086
    if $PY -m pytest -q -p no:cacheprovider $CRASH_TESTS > "bench/out/crash-round-$round.log" 2>&1
    then tail -1 "bench/out/crash-round-$round.log"
    else failed=1; echo "FAILED (bench/out/crash-round-$round.log)"; tail -5 "bench/out/crash-round-$round.log"
    fi
done
grep -c "helpdesk fetch:" bench/out/crash-load.log | xargs printf '%s fetch runs of 10,000 messages beside the rounds\n'
exit $failed
