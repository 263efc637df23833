"""``python -m bench [--quick] [--only NAMES] [--no-peer] [--no-readme]``: run the benchmarks,
print one table.

The full run (``make bench``) also rewrites the figures block of bench/README.md;
``--quick`` (``make bench-quick``, a CI smoke run) uses small sizes and leaves the
README alone. ``--no-peer`` leaves django-helpdesk out of the ingest comparison (it
is installed from PyPI into bench/.peer-venv the first time: half a minute and a
network); the smoke test (tests/test_bench_smoke.py) runs with it. Work files
(databases, logs, profiles) go to bench/out/.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # `tests.servers` is imported from the checkout
    sys.path.insert(0, str(ROOT))

OUT = HERE / "out"
README = HERE / "README.md"
BEGIN, END = "<!-- bench:results -->", "<!-- /bench:results -->"
SEED = 20261102
FLAT = 1.25  # "flat": the largest size costs at most 25% more per item than the smallest
NAMES = ("startup", "ingest", "daemons", "profile", "send", "memory", "latency", "scaling",
         "sweep", "web", "bounded", "kb")


@dataclass(frozen=True)
class Sizes:
    ingest: tuple[int, ...]
    daemons: int
    profile: int
    large: int
    latency: int
    scaling: tuple[int, ...]
    scaling_messages: int
    sweep: tuple[int, int]
    sweep_small: tuple[int, int]
    web: tuple[int, ...]  # cases stored
    web_requests: int  # per page
    bounded_subjects: tuple[int, ...]  # Subject lengths in bytes
    bounded_max: int  # limits.max_message_size of the bounded-work runs
    kb_queries: int  # suggestion latency samples (among 1,000 articles)


FULL = Sizes(ingest=(2000, 10_000), daemons=2000, profile=500, large=24_900_000, latency=100,
             scaling=(1000, 10_000, 100_000), scaling_messages=500,
             sweep=(1_000_000, 1000), sweep_small=(10_000, 1000),
             web=(1000, 100_000), web_requests=100,
             bounded_subjects=(250_000, 500_000, 1_000_000), bounded_max=25_000_000,
             kb_queries=1000)
QUICK = Sizes(ingest=(50, 100), daemons=40, profile=30, large=5_000_000, latency=8,
              scaling=(500, 2000), scaling_messages=40,
              sweep=(20_000, 40), sweep_small=(1000, 40),
              web=(200, 2000), web_requests=10,
              bounded_subjects=(100_000, 200_000, 400_000), bounded_max=4_000_000, kb_queries=100)

_T0 = time.monotonic()


def note(text: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.0f}s] {text}", file=sys.stderr, flush=True)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, result: str, target: str = "", status: str = "") -> None:
        self.rows.append((what, result, target, status))

    def section(self, title: str) -> None:
        self.rows.append((f"[{title}]", "", "", ""))

    def text(self) -> str:
        head = ("benchmark", "result", "target", "")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(), line]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in self.rows]
        return "\n".join(out)

    def markdown(self) -> str:
        out = ["| benchmark | result | target | |", "| --- | --- | --- | --- |"]
        for what, result, target, status in self.rows:
            if what.startswith("["):
                out.append(f"| **{what[1:-1]}** | | | |")
            else:
                out.append(f"| {what} | {result} | {target} | {status} |")
        return "\n".join(out)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def fmt_n(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 1 min)")
    parser.add_argument("--only", default=",".join(NAMES),
                        help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--no-peer", action="store_true",
                        help="leave django-helpdesk out of the ingest comparison")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not rewrite the figures in bench/README.md")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if unknown := only - set(NAMES):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    sizes = QUICK if args.quick else FULL

    from bench import corpus, machine, peer, servers
    from bench import daemons as daemons_bench
    from bench import ingest as ingest_bench
    from bench import startup as startup_bench
    from bench import latency as latency_bench
    from bench import memory as memory_bench
    from bench import scaling as scaling_bench
    from bench import sweep as sweep_bench
    from bench import web as web_bench
    from bench.profile import render

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    started_at = datetime.now(UTC)
    host = machine.describe()
    commit_ms = machine.durable_commit_ms(OUT)
    table = Table()
    results: dict[str, Any] = {"machine": host, "quick": args.quick, "seed": args.seed,
                               "durable_commit_ms": commit_ms}
    table.section("machine")
    table.add("durable SQLite commit (WAL, fsync)", f"{commit_ms:.1f} ms")
    table.add("load average at the start (1, 5, 15 min)",
              ", ".join(f"{x:.1f}" for x in os.getloadavg()))

    if "startup" in only:
        note("start-up: import time per command")
        table.section("start-up: import time (python -X importtime, best of 5), wall time")
        for run in startup_bench.measure(OUT / "startup"):
            results.setdefault("startup", []).append(run.__dict__)
            table.add(run.command, f"{run.import_ms:.0f} ms import, {run.modules} modules, "
                      f"{run.wall_ms:.0f} ms wall; ms by package: {run.top()}")

    with_peer = not args.no_peer and "ingest" in only
    if with_peer:
        results["peer_version"] = peer.ensure_installed(note)
    need_corpus = only & {"ingest", "daemons", "profile", "latency", "scaling"}
    largest = max([*(sizes.ingest if "ingest" in only else ()),
                   sizes.daemons if "daemons" in only else 0,
                   sizes.profile if "profile" in only else 0,
                   sizes.scaling_messages if "scaling" in only else 0, 200])
    raws: list[bytes] = []
    metas: list[dict[str, Any]] = []
    if need_corpus or "memory" in only:
        note(f"generating the corpus ({largest} messages, seed {args.seed})")
        raws, metas = corpus.corpus(args.seed, largest)
        stats = corpus.stats(raws, metas)
        results["corpus"] = stats.summary()
        table.section("corpus (bench/corpus.py)")
        table.add("messages", f"{stats.count}, {stats.total_bytes / 1e6:.0f} MB, largest "
                  f"{stats.largest / 1e6:.1f} MB")
        table.add("of which", f"{stats.replies} replies, {stats.with_cc} with Cc, "
                  f"{stats.with_attachments} with attachments, {stats.html} with HTML")
        table.add("charsets", ", ".join(f"{k} {v}" for k, v in
                                        sorted(stats.charsets.items(), key=lambda kv: -kv[1])))

    ingest_runs: list[Any] = []
    if only & {"ingest", "daemons", "profile", "memory", "latency"}:
        note("starting Dovecot and the SMTP server")
        with servers.dovecot() as dovecot, servers.mta() as mta:
            handler = mta.handler
            if "ingest" in only:
                table.section("ingest side by side: first FETCH to last mail accepted by SMTP")
                for n in sizes.ingest:
                    note(f"ingest {n}: bare loop, helpdesk fetch"
                         + (", django-helpdesk" if with_peer else ""))
                    run = ingest_bench.measure(dovecot, handler, mta.port, raws[:n], OUT,
                                               with_peer=with_peer)
                    ingest_runs.append(run)
                    results[f"ingest_{n}"] = run.__dict__ | {"ratio": run.ratio}
                    _ingest_rows(table, run, with_peer)
                if len(ingest_runs) > 1:
                    a, b = ingest_runs[0], ingest_runs[-1]
                    growth = (b.helpdesk_s / b.n) / (a.helpdesk_s / a.n)
                    table.add(f"helpdesk per message {fmt_n(a.n)} -> {fmt_n(b.n)}",
                              f"{a.helpdesk_s / a.n * 1000:.1f} -> {b.helpdesk_s / b.n * 1000:.1f} ms"
                              f" (x{growth:.2f})", f"flat (<= x{FLAT})", verdict(growth <= FLAT))
            if "daemons" in only:
                n = sizes.daemons
                table.section(f"several daemons on one PostgreSQL, one mailbox, {n} msgs: "
                              "daemons' start to last mail accepted")
                with servers.postgres() as postgres:
                    single = None
                    for count in (1, 2):
                        note(f"daemons: {count} x helpdesk run on PostgreSQL, {n} messages")
                        run = daemons_bench.measure(dovecot, handler, mta.port, postgres, raws[:n],
                                                    OUT / f"daemons-{count}", count)
                        results[f"daemons_{count}"] = run.__dict__
                        single = single or run
                        table.add(f"{count} daemon{'s' if count > 1 else ''}",
                                  f"{run.rate:.1f} msg/s ({run.seconds:.1f} s, CPU "
                                  f"{run.cpu_s * 1000 / n:.1f} ms/msg, {run.mails_out} mails out)"
                                  + (f"; x{run.rate / single.rate:.2f} of 1 daemon"
                                     if count > 1 else ""))
            if "profile" in only:
                n = sizes.profile
                note(f"profile: helpdesk fetch of {n} messages under pyinstrument")
                run = ingest_bench.measure(dovecot, handler, mta.port, raws[:n], OUT,
                                           profile=True, with_limit=False, label=f"profile-{n}")
                results["profile"] = run.profile
                table.section(f"where the time goes (pyinstrument, fetch of {n} msgs)")
                total = run.profile["total"]
                for view, top in (("stage", 8), ("kind", 8)):
                    for name, seconds in list(run.profile[view].items())[:top]:
                        table.add(f"{view}: {name}", f"{seconds / total:.1%}")
                print(render(run.profile), file=sys.stderr)
            if "memory" in only:
                table.section("memory: peak RSS of `helpdesk fetch` above its idle size")
                note("memory: warm-up (20 small messages)")
                small = [r for r, m in zip(raws, metas) if not m["attachments"]][:20]
                warm = memory_bench.measure_fetch(dovecot, handler, mta.port, small,
                                                  OUT / "memory-warmup")
                results["memory_warmup"] = warm.__dict__
                table.add("20 small messages (warm-up, fixed)",
                          f"{warm.above_idle_mb:.0f} MB (idle {warm.idle_rss_kb / 1024:.0f} MB)")
                note(f"memory: one {sizes.large / 1e6:.1f} MB message")
                large = memory_bench.measure_fetch(dovecot, handler, mta.port,
                                                   [corpus.large_message(sizes.large)],
                                                   OUT / "memory-large")
                results["memory_large"] = large.__dict__ | {"ratio": large.ratio}
                table.add(f"one {large.size / 1e6:.1f} MB message",
                          f"{large.above_idle_mb:.0f} MB ({large.ratio:.1f}x the message)", "< 3x",
                          verdict(large.ratio < 3))
                for run in ingest_runs:
                    largest_msg = max(len(r) for r in raws[:run.n])
                    ratio = run.peak_above_idle_mb * 2**20 / largest_msg
                    table.add(f"{fmt_n(run.n)} messages (largest {largest_msg / 1e6:.1f} MB)",
                              f"{run.peak_above_idle_mb:.0f} MB ({ratio:.1f}x the largest; "
                              f"{max(0.0, run.peak_above_idle_mb - warm.above_idle_mb):.0f} MB "
                              f"over the warm-up)", "< 3x", verdict(ratio < 3))
                if len(ingest_runs) > 1:
                    a, b = ingest_runs[0], ingest_runs[-1]
                    growth = b.peak_above_idle_mb / max(1.0, a.peak_above_idle_mb)
                    table.add(f"{fmt_n(a.n)} -> {fmt_n(b.n)} messages", f"x{growth:.2f}",
                              f"flat (<= x{FLAT})", verdict(growth <= FLAT))
            if "latency" in only:
                count = sizes.latency
                note(f"latency: {count} messages through `helpdesk run` with IDLE")
                fresh = [(raw, str(meta["message_id"]).strip("<>"), _sender(raw))
                         for raw, meta in corpus.generate(args.seed + 1, count * 2)
                         if not meta["reply"]][:count]
                # With no knowledge base (round 1's desk) and with the sample articles at
                # min_score 0 (an article sharing any word is suggested), in the same run.
                lat = latency_bench.measure(dovecot, handler, mta.port, fresh, OUT / "latency")
                kb_lat = latency_bench.measure(dovecot, handler, mta.port, fresh,
                                               OUT / "latency-kb", knowledge_base=True)
                results["latency"] = {"samples": lat.samples, "median_ms": lat.median_ms,
                                      "p95_ms": lat.p95_ms, "idle_notify": lat.idle_notify,
                                      "kb_samples": kb_lat.samples,
                                      "kb_median_ms": kb_lat.median_ms,
                                      "kb_p95_ms": kb_lat.p95_ms}
                table.section(f"latency: APPEND -> SMTP ack, `helpdesk run` with IDLE, {count} msgs")
                table.add("median, no knowledge base", f"{lat.median_ms:.0f} ms")
                table.add("95th percentile, no knowledge base",
                          f"{lat.p95_ms:.0f} ms (max {lat.max_ms:.0f} ms)")
                table.add("median, sample articles, min_score 0 (any shared word)",
                          f"{kb_lat.median_ms:.0f} ms (x{kb_lat.median_ms / lat.median_ms:.2f})",
                          "unchanged", verdict(kb_lat.median_ms <= 1.1 * lat.median_ms))
                table.add("95th percentile, sample articles, min_score 0",
                          f"{kb_lat.p95_ms:.0f} ms (x{kb_lat.p95_ms / lat.p95_ms:.2f})")
                table.add("floor: Dovecot's IDLE notification (bare)",
                          f"{lat.idle_notify_ms:.0f} ms (median of {len(lat.idle_notify)})")

    if "send" in only:
        _sender_alone(table, results, sizes.profile)

    if "scaling" in only:
        table.section(f"scaling: ingest_raw of {sizes.scaling_messages} msgs with N cases stored")
        runs = []
        for existing in sizes.scaling:
            note(f"scaling: {existing} cases stored, {sizes.scaling_messages} messages")
            run = scaling_bench.measure(OUT / f"scaling-{existing}", existing,
                                        raws[:sizes.scaling_messages])
            runs.append(run)
            results[f"scaling_{existing}"] = run.__dict__
            table.add(f"N = {fmt_n(existing)}",
                      f"{run.per_message_ms:.1f} ms/msg (median {run.median_ms:.1f}, p95 "
                      f"{run.p95_ms:.1f}; fill {run.fill_s:.0f} s)")
        growth = runs[-1].per_message_ms / runs[0].per_message_ms
        table.add(f"N = {fmt_n(runs[0].existing)} -> {fmt_n(runs[-1].existing)}", f"x{growth:.2f}",
                  f"flat (<= x{FLAT})", verdict(growth <= FLAT))

    if "sweep" in only:
        total, due = sizes.sweep
        table.section(f"sweep: {fmt_n(total)} cases, {fmt_n(due)} due")
        note(f"sweep: filling {total} cases ({due} due)")
        big = sweep_bench.measure(OUT / "sweep-big", total, due)
        small_total, small_due = sizes.sweep_small
        note(f"sweep: {small_total} cases ({small_due} due), for comparison")
        small = sweep_bench.measure(OUT / "sweep-small", small_total, small_due)
        note(f"sweep: {small_total} cases ({small_due} due) under pyinstrument")
        profiled = sweep_bench.measure(OUT / "sweep-profile", small_total, small_due,
                                       profile=True)
        results["sweep"] = big.__dict__
        results["sweep_small"] = small.__dict__
        results["sweep_profile"] = profiled.profile
        table.add("one sweep (all due steps)",
                  f"{big.sweep_s:.2f} s ({big.per_due_ms:.1f} ms per due case)", "well under 1 s",
                  verdict(big.sweep_s < 0.5))
        table.add("finding the due cases (first query)", f"{big.query_ms:.1f} ms", "", "")
        table.add("query plan", "; ".join(big.plan), "index on due_at",
                  verdict(any("ix_case_due_at" in p for p in big.plan)
                          and not any(p.startswith("SCAN") for p in big.plan)))
        table.add("cases changed", f"{big.changed_cases} of {total:,} ({big.reminders} reminders,"
                  f" {big.statements} SQL statements in all)",
                  "only the due ones", verdict(big.changed_cases == due))
        table.add("then the sender: render + build the queued mails",
                  f"{big.render_s:.2f} s ({big.render_s * 1000 / max(1, big.rendered):.1f} ms"
                  f" per mail, {big.rendered} mails)", "", "")
        growth = big.per_due_ms / small.per_due_ms
        table.add(f"per due case, {fmt_n(small_total)} -> {fmt_n(total)} cases",
                  f"{small.per_due_ms:.1f} -> {big.per_due_ms:.1f} ms (x{growth:.2f})",
                  f"flat (<= x{FLAT})", verdict(growth <= FLAT))
        table.add("bulk fill (INSERT ... SELECT, recursive CTE)", f"{big.fill_s:.1f} s")
        if profiled.profile:
            total_s = profiled.profile["total"]
            for name, seconds in list(profiled.profile["kind"].items())[:6]:
                table.add(f"sweep time: {name}", f"{seconds / total_s:.1%}")

    if "web" in only:
        small_n, big_n = sizes.web[0], sizes.web[-1]
        table.section(f"web portal: server time per page, {sizes.web_requests} requests each")
        note(f"web: {small_n} cases")
        small_web = web_bench.measure(OUT / f"web-{small_n}", small_n, sizes.web_requests)
        note(f"web: {big_n} cases")
        big_web = web_bench.measure(OUT / f"web-{big_n}", big_n, sizes.web_requests)
        results["web"] = {str(small_n): small_web.__dict__, str(big_n): big_web.__dict__}
        for name in web_bench.PAGES:
            p95 = big_web.p95_ms[name]
            table.add(f"{name}, {fmt_n(big_n)} cases: p95",
                      f"{p95:.1f} ms (median {big_web.median_ms[name]:.1f})", "< 100 ms",
                      verdict(p95 < 100))
        for name in web_bench.PAGES:
            a, b = small_web.statements[name], big_web.statements[name]
            table.add(f"SQL statements: {name}", f"{a} at {fmt_n(small_n)}, {b} at "
                      f"{fmt_n(big_n)} cases", "constant", verdict(a == b))
        table.add(f"bulk fill of {fmt_n(big_n)} cases", f"{big_web.fill_s:.1f} s")
    if "bounded" in only:
        results["bounded"] = _bounded(table, sizes)
    if "kb" in only:
        _knowledge_base(table, results, sizes, args.seed)

    elapsed = time.monotonic() - _T0
    results["elapsed_s"] = elapsed
    results["date"] = started_at.isoformat(timespec="seconds")
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    header = (f"helpdesk benchmarks{' (--quick)' if args.quick else ''}, "
              f"{started_at:%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s; "
              f"{host['nproc']} x {host['cpu']}, {host['ram']} RAM")
    print(header)
    if args.quick:
        print("--quick is a smoke run: sizes are too small for the verdicts to mean much.")
    print(table.text())
    if not args.quick and not args.no_readme and only == set(NAMES):
        _write_readme(table, host, started_at, elapsed, results)
        note(f"figures written to {README.relative_to(ROOT)}")
    return 0


def _bounded(table: Table, sizes: Sizes) -> dict[str, Any]:
    """Rows of ``bench.bounded``: one huge mail's cost as a multiple of a normal one's,
    how it grows with the size, and the SMTP listener's latency for everyone else."""
    from bench import bounded

    work, limit = OUT / "bounded", sizes.bounded_max
    table.section("bounded work per mail: `helpdesk ingest` of one mail (bench/bounded.py)")
    note("bounded: ingest of a normal mail, long Subjects, attachments up to the size limit")
    normal = bounded.ingest_cost(work, "normal", bounded.normal_mail(), limit)
    table.add(f"a normal mail ({normal.size / 1e3:.0f} KB)",
              f"{normal.seconds:.2f} s, peak +{normal.peak_kb / 1024:.1f} MB")
    runs = {
        "Subject": [bounded.ingest_cost(work, f"subject-{n}", bounded.subject_mail(n), limit)
                    for n in sizes.bounded_subjects],
        "attachment": [bounded.ingest_cost(work, f"attachment-{share}",
                                           bounded.attachment_mail(int(limit * share)), limit)
                       for share in (0.25, 0.5, 1.0)],
    }
    for kind, costs in runs.items():
        for cost in costs:
            table.add(f"{kind}: a mail of {cost.size / 1e6:.2f} MB",
                      f"{cost.seconds:.2f} s (x{cost.seconds / normal.seconds:.1f}), "
                      f"peak +{cost.peak_kb / 1024:.1f} MB "
                      f"(x{cost.peak_kb / max(1, normal.peak_kb):.1f})")
        growth = max(b.seconds / a.seconds for a, b in zip(costs, costs[1:]))
        table.add(f"{kind}: time when the mail doubles (worst step)", f"x{growth:.2f}",
                  "<= x2.5 (linear)", verdict(growth <= 2.5))
    note("bounded: the SMTP listener's latency for other clients while huge mails arrive")
    big = [bounded.subject_mail(sizes.bounded_subjects[-1]), bounded.attachment_mail(limit)]
    run = bounded.listener_latency(work, big, limit)
    table.add("SMTP listener: other clients' DATA -> 250, p95, quiet",
              f"{bounded.p95(run.quiet) * 1000:.0f} ms ({len(run.quiet)} mails)")
    table.add(f"... while a {len(big[0]) / 1e6:.1f} MB-Subject and a {len(big[1]) / 1e6:.0f} MB "
              f"mail arrive", f"{bounded.p95(run.during) * 1000:.0f} ms ({len(run.during)} mails;"
              f" the two stored in {sum(s.seconds for s in run.big):.1f} s)",
              "not behind the big mail", verdict(not run.refused and bool(run.during)))
    return {"normal": normal.__dict__,
            **{kind: [c.__dict__ for c in costs] for kind, costs in runs.items()},
            "listener": {"quiet_p95_s": bounded.p95(run.quiet),
                         "during_p95_s": bounded.p95(run.during),
                         "big_s": [s.seconds for s in run.big], "refused": run.refused}}


def _knowledge_base(table: Table, results: dict[str, Any], sizes: Sizes, seed: int) -> None:
    from bench import kb
    from helpdesk.kb.calibration import AUTO_MIN_SCORE, FALSE_SUGGESTION_RATE

    articles, questions = kb.load()
    table.section(f"knowledge base: StackFAQ, {len(articles)} articles, {len(questions)} "
                  f"questions (bench/data)")
    note("knowledge base: recall and the threshold, plain BM25 and ours")
    quality = {method: kb.measure_quality(method, articles, questions, seed)
               for method in kb.METHODS}
    results["kb_quality"] = {m: q.__dict__ for m, q in quality.items()}
    plain, ours = quality["plain BM25"], quality["helpdesk (BM25F)"]
    for q in (plain, ours):
        table.add(f"{q.method}: recall@1 / recall@3", f"{q.recall_at_1:.3f} / {q.recall_at_3:.3f}",
                  "recall@3 >= plain BM25" if q is ours else "",
                  verdict(ours.recall_at_3 >= plain.recall_at_3) if q is ours else "")
    rate = f"{FALSE_SUGGESTION_RATE:.0%}"
    for q in (plain, ours):
        table.add(f"{q.method}: threshold for {rate} false suggestions (held-out folds)",
                  f"{q.threshold:.2f}: right article shown for {q.answered_at_threshold:.1%} "
                  f"of answerable questions")
    table.add(f"min_score: auto = {AUTO_MIN_SCORE}: unanswerable questions given a suggestion",
              f"{ours.false_at_auto:.1%}", f"<= {rate}",
              verdict(ours.false_at_auto <= FALSE_SUGGESTION_RATE))
    table.add(f"min_score: auto = {AUTO_MIN_SCORE}: answerable, right article shown",
              f"{ours.answered_at_auto:.1%}")
    by_size = kb.threshold_by_size(articles, questions, seed, (25, 60, len(articles)))
    results["kb_threshold_by_size"] = by_size
    table.add(f"{rate} threshold by knowledge-base size (normalised; raw BM25F)",
              ", ".join(f"{n}: {t:.2f} ({raw:.1f})" for n, t, raw in by_size))
    note(f"knowledge base: suggestion latency, 1,000 articles, {sizes.kb_queries} mails")
    lat = kb.measure_latency(OUT / "kb-latency", articles, questions, 1000, sizes.kb_queries,
                             seed)
    results["kb_latency"] = lat.__dict__
    table.add(f"suggestion latency, {lat.articles} articles ({lat.queries} mails)",
              f"median {lat.p50_ms:.1f} ms, p95 {lat.p95_ms:.1f} ms (max {lat.max_ms:.0f} ms)",
              "p95 < 20 ms", verdict(lat.p95_ms < 20))
    table.add("loading and indexing the 1,000 articles (on start and after an edit)",
              f"{lat.load_s:.2f} s")
    table.add("a look at the folder that finds no change (at most once a second)",
              f"{lat.rescan_ms:.1f} ms")


def _ingest_rows(table: Table, run: Any, with_peer: bool) -> None:
    n = run.n

    def row(label: str, c: Any, extra: str = "") -> None:
        table.add(f"{fmt_n(n)} msgs: {label}",
                  f"{c.rate(n):.1f} msg/s ({c.seconds:.1f} s), CPU {c.cpu_s * 1000 / n:.1f} ms/msg, "
                  f"{c.mails_out / n:.2f} mails out/msg{extra}")

    row("bare loop (FETCH+parse+INSERT+ack)", run.bare)
    row(f"helpdesk fetch ({run.mb:.0f} MB)", run.helpdesk,
        f" (ack + staff notice){f'; {run.runs} runs' if run.runs > 1 else ''}")
    if with_peer and run.peer is not None:
        row("django-helpdesk 2.6.1 get_email", run.peer,
            f" (ack or update + staff notice + Cc); took {run.peer_counts['messages']} of {n}, "
            f"{run.peer_counts['tickets']} tickets")
        table.add(f"{fmt_n(n)} msgs: helpdesk / django-helpdesk",
                  f"x{run.helpdesk.rate(n) / run.peer.rate(n):.2f} the msg/s, "
                  f"x{run.helpdesk.cpu_s / run.peer.cpu_s:.2f} the CPU per message")
    else:
        table.add(f"{fmt_n(n)} msgs: django-helpdesk", "skipped (--no-peer)")
    table.add(f"{fmt_n(n)} msgs: helpdesk / bare loop", f"{run.ratio:.1%} the msg/s, "
              f"x{run.helpdesk.cpu_s / run.bare.cpu_s:.1f} the CPU per message", ">= 50%",
              verdict(run.ratio >= 0.5))


def _sender_alone(table: Table, results: dict[str, Any], n: int) -> None:
    from bench import send as send_bench

    table.section(f"the sender alone: the outbox of {n} msgs, from queued row to `sent` "
                  "(bench/send.py)")
    for key, label, discard in (("smtp", "over SMTP (aiosmtpd, loopback)", False),
                                ("discard", "with a transport that discards the mail", True)):
        note(f"send: the outbox of {n} messages, {label}, 3 runs")
        runs = send_bench.measure(n, 3, discard=discard)
        results[f"send_{key}"] = runs
        best = min(runs, key=lambda r: r["cpu"])
        mails = max(1, best["sent"])
        table.add(f"CPU per mail, {label}",
                  f"{best['cpu'] * 1000 / mails:.2f} ms (best of 3; wall "
                  f"{best['wall'] * 1000 / mails:.2f} ms), {best['sent']} mails")


def _sender(raw: bytes) -> str:
    from helpdesk.mail.parsing import parse_message
    return parse_message(raw).sender


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "__dict__"):
        return value.__dict__
    return str(value)


def _write_readme(table: Table, host: dict[str, str], started_at: datetime, elapsed: float,
                  results: dict[str, Any]) -> None:
    machine = ", ".join(f"{k} {v}" for k, v in host.items())
    block = [
        BEGIN,
        (f"Measured {started_at:%Y-%m-%d %H:%M} UTC with `make bench` (`python -m bench`), "
         f"{elapsed / 60:.1f} minutes, seed {results['seed']}."),
        "",
        f"Machine: {machine}.",
        "",
        table.markdown(),
        END,
    ]
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + "\n".join(block) + tail
    else:
        text += "\n" + "\n".join(block) + "\n"
    README.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
