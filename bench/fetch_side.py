"""``helpdesk fetch`` of N messages beside the bare loop, in one run: a quick look at the
ingest benchmark while working on it (``python -m bench.fetch_side [N] [--runs R]``).

The same measure as ``bench.ingest`` (``python -m bench --only ingest``), on one size
and without django-helpdesk; prints msg/s, CPU per message and mails out per message
of each, and the helpdesk / bare loop ratio. Nothing is written to bench/README.md.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

SEED = 20261102


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=1000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    from bench import corpus, servers
    from bench import ingest as ingest_bench

    raws, _ = corpus.corpus(SEED, args.n)
    out = HERE / "out" / "fetch-side"
    with servers.dovecot() as dovecot, servers.mta() as mta:
        for _ in range(args.runs):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            run = ingest_bench.measure(dovecot, mta.handler, mta.port, raws, out)
            for name, c in (("bare loop", run.bare), ("helpdesk fetch", run.helpdesk)):
                print(f"{args.n} msgs: {name}: {c.rate(args.n):.1f} msg/s ({c.seconds:.1f} s), "
                      f"CPU {c.cpu_s * 1000 / args.n:.2f} ms/msg, "
                      f"{c.mails_out / args.n:.2f} mails out/msg", flush=True)
            print(f"  helpdesk / bare loop: {run.ratio:.1%} the msg/s; "
                  f"{run.runs} fetch run(s)", flush=True)


if __name__ == "__main__":
    main()
