"""The sender alone: CPU per delivered mail, from a queued outbox row to ``sent``.

    python -m bench.send [--n 500] [--runs 3] [--discard] [--profile]

The first N messages of the corpus are ingested once (``ingest_raw``, nothing
delivered) into a desk's SQLite database, kept in ``bench/out/send-N/``: about
1.8 queued, unrendered outbox rows per message (acknowledgements, staff notices),
as ``helpdesk fetch`` leaves them. Each run copies that database and runs
``deliver_all`` in a process of its own (``bench.send --child``) against the
aiosmtpd MTA of this process (or, with ``--discard``, a transport that drops the
mail). The child reports its own user+sys CPU and wall time of the delivery alone
(its start-up and imports left out), so the MTA's work is not counted.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = HERE / "out"
SEED = 20261102


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(n: int) -> Path:
    """A folder holding a config and a database with the outbox of N ingested messages."""
    from bench.corpus import corpus
    from bench.ingest import make_desk
    from helpdesk.app import App
    from helpdesk.inbound.ingest import ingest_raw

    folder = OUT / f"send-{n}"
    ready = folder / "prepared.db"
    if ready.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    config = make_desk(folder, 2525, None)
    app = App.from_config(config)
    raws, _ = corpus(SEED, n)
    for raw in raws:
        ingest_raw(app, raw, source="bench")
    app.close()
    shutil.copy(folder / "helpdesk.db", ready)
    return folder


def child(config: Path, discard: bool, profile: Path | None) -> None:
    from helpdesk.app import App
    from helpdesk.outbound import deliver, sender

    app = App.from_config(config)
    if discard:
        class Discard:
            def send(self, mail_from: str, recipients: Any, raw: bytes) -> dict[str, Any]:
                return {}

            def close(self) -> None:
                pass
        deliver.make_transport = lambda settings: Discard()  # type: ignore[assignment]
        sender.make_transport = deliver.make_transport  # type: ignore[assignment]
    app.renderer  # noqa: B018 - built, as in a process that has ingested mail
    profiler = None
    if profile:
        from pyinstrument import Profiler
        profiler = Profiler(interval=0.0005)
        profiler.start()
    cpu, wall = _cpu(), time.perf_counter()
    result = deliver.deliver_all(app)
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    if profiler is not None:
        profiler.stop()
        profile.with_suffix(".txt").write_text(profiler.output_text(unicode=True, color=False))
        profile.with_suffix(".html").write_text(profiler.output_html())
    print(json.dumps({"cpu": cpu, "wall": wall, "sent": result.sent, "dead": result.dead,
                      "retried": result.retried}))


def run_once(folder: Path, port: int | None, discard: bool, profile: bool) -> dict[str, Any]:
    import yaml

    config = yaml.safe_load((folder / "helpdesk.yaml").read_text())
    config["outbound"] = {"smtp": {"host": "127.0.0.1", "port": port or 2525,
                                   "security": "none", "timeout": "60s"}}
    run_dir = folder / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    config["database"]["url"] = f"sqlite:///{run_dir / 'helpdesk.db'}"
    (run_dir / "helpdesk.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(folder / "prepared.db", run_dir / "helpdesk.db")
    args = [sys.executable, "-m", "bench.send", "--child", str(run_dir / "helpdesk.yaml")]
    if discard:
        args.append("--discard")
    if profile:
        args += ["--profile-to", str(run_dir / "profile")]
    from bench.ingest import python_env
    done = subprocess.run(args, check=True, capture_output=True, env=python_env(), cwd=ROOT,
                          timeout=1800)
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def measure(n: int, runs: int = 3, *, discard: bool = False,
            profile: bool = False) -> list[dict[str, Any]]:
    """``runs`` deliveries of the outbox of the first N messages, each from the same
    prepared database: per run the mails sent, and the CPU and wall seconds."""
    from bench.servers import mta

    folder = prepare(n)
    out = []
    with mta() as server:
        for _ in range(runs):
            server.handler.reset()
            facts = run_once(folder, None if discard else server.port, discard, profile)
            if not discard and len(server.handler.acks) != facts["sent"]:
                raise RuntimeError(f"{facts['sent']} sent, {len(server.handler.acks)} accepted")
            out.append(facts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--discard", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--profile-to")
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.discard, Path(args.profile_to) if args.profile_to else None)
        return
    for facts in measure(args.n, args.runs, discard=args.discard, profile=args.profile):
        mails = max(1, facts["sent"])
        print(f"{facts['sent']} mails: CPU {facts['cpu'] * 1000 / mails:.2f} ms/mail, "
              f"wall {facts['wall'] * 1000 / mails:.2f} ms/mail "
              f"({facts['cpu']:.2f} s CPU, {facts['wall']:.2f} s wall)", flush=True)


if __name__ == "__main__":
    main()
