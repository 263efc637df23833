"""Run the real ``helpdesk`` command line with a few probes, in its own process.

    python -m bench.probe OUT.json [--profile PREFIX] -- -c CONFIG fetch

The command runs exactly as ``helpdesk -c CONFIG fetch`` would (``helpdesk.cli.main``);
the probes only note:

- ``first_fetch``: ``time.monotonic()`` when the first IMAP FETCH command is sent
  (the same clock as the MTA's acknowledgements in the parent process);
- ``first_ingest``: ``time.monotonic()`` when ``helpdesk ingest`` starts reading its
  first mail;
- ``idle_rss``: the resident set just before the first FETCH (or, without IMAP, before
  ``helpdesk ingest`` reads its first mail or the first ``ingest_raw``), i.e. the
  started, connected, idle process;
- ``hwm``: the peak resident set of the whole run (also across the reset below);
- ``fetch_hwm``: the peak resident set up to the end of ``fetch_all`` (the IMAP pass);
- ``deliver_start_rss`` and ``deliver_hwm``: the resident set when ``deliver_all`` starts
  and its peak from then on (``VmHWM`` is reset there through ``/proc/self/clear_refs``);
- ``trace``: (messages ingested so far, ``VmRSS``, ``VmHWM``) at every FETCH;
- ``end``: ``time.monotonic()`` when the command finished.

With ``--profile``, pyinstrument samples the whole command and writes
``PREFIX.txt``, ``PREFIX.html`` and ``PREFIX.json`` (the frame tree, for
``bench.profile``).
"""
from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path
from typing import Any


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    args = sys.argv[1:]
    out = Path(args.pop(0))
    profile = None
    if args and args[0] == "--profile":
        args.pop(0)
        profile = args.pop(0)
    if args and args[0] == "--":
        args.pop(0)

    facts: dict[str, Any] = {"first_fetch": None, "idle_rss_kb": None, "fetches": 0,
                             "ingested": 0, "trace": []}

    def mark_idle() -> None:
        if facts["idle_rss_kb"] is None:
            facts["idle_rss_kb"] = _status_kb("VmRSS")
            facts["idle_hwm_kb"] = _status_kb("VmHWM")

    from imapclient import IMAPClient

    original_fetch = IMAPClient.fetch

    def fetch(self: IMAPClient, *a: Any, **kw: Any) -> Any:
        if facts["first_fetch"] is None:
            mark_idle()
            facts["first_fetch"] = time.monotonic()
        facts["fetches"] += 1
        facts["trace"].append((facts["ingested"], _status_kb("VmRSS"), _status_kb("VmHWM")))
        return original_fetch(self, *a, **kw)

    IMAPClient.fetch = fetch  # type: ignore[method-assign]

    from helpdesk.inbound import ingest

    original_ingest = ingest.ingest_raw

    def ingest_raw(*a: Any, **kw: Any) -> Any:
        mark_idle()
        try:
            return original_ingest(*a, **kw)
        finally:
            facts["ingested"] += 1

    ingest.ingest_raw = ingest_raw  # type: ignore[assignment]

    from helpdesk.inbound import bounded

    original_read_mail = bounded.read_mail

    def read_mail(*a: Any, **kw: Any) -> Any:  # `helpdesk ingest`: before it reads a mail
        mark_idle()
        facts.setdefault("first_ingest", time.monotonic())
        return original_read_mail(*a, **kw)

    bounded.read_mail = read_mail  # type: ignore[assignment]

    from helpdesk.inbound import imap as imap_module
    from helpdesk.outbound import deliver as deliver_module

    original_fetch_all = imap_module.fetch_all
    original_deliver_all = deliver_module.deliver_all

    def fetch_all(*a: Any, **kw: Any) -> Any:
        try:
            return original_fetch_all(*a, **kw)
        finally:
            facts["fetch_hwm_kb"] = _status_kb("VmHWM")
            facts["fetch_end_rss_kb"] = _status_kb("VmRSS")

    def deliver_all(*a: Any, **kw: Any) -> Any:
        if "deliver_start_rss_kb" not in facts:
            facts["deliver_start_rss_kb"] = _status_kb("VmRSS")
            facts["before_deliver_hwm_kb"] = _status_kb("VmHWM")  # the reset forgets it
            _reset_hwm()
        return original_deliver_all(*a, **kw)

    imap_module.fetch_all = fetch_all  # type: ignore[assignment]
    deliver_module.deliver_all = deliver_all  # type: ignore[assignment]

    profiler = None
    if profile:
        from pyinstrument import Profiler
        profiler = Profiler(interval=0.001)
        profiler.start()

    started = time.monotonic()

    def finish() -> None:
        facts["end"] = time.monotonic()
        if "deliver_start_rss_kb" in facts:
            facts["deliver_hwm_kb"] = _status_kb("VmHWM")
        facts["started"] = started
        facts["hwm_kb"] = max(_status_kb("VmHWM"), facts.get("fetch_hwm_kb") or 0,
                              facts.get("before_deliver_hwm_kb") or 0)
        if profiler is not None:
            profiler.stop()
            Path(f"{profile}.txt").write_text(profiler.output_text(unicode=True, color=False,
                                                                  show_all=False))
            Path(f"{profile}.html").write_text(profiler.output_html())
            profiler.last_session.save(f"{profile}.pyisession")
            from bench.profile import summarise
            Path(f"{profile}.json").write_text(json.dumps(summarise(profiler.last_session)))
        out.write_text(json.dumps(facts))

    atexit.register(finish)
    sys.argv = ["helpdesk", *args]
    from helpdesk.cli import main as helpdesk_main
    helpdesk_main()


if __name__ == "__main__":
    main()
