"""The portal's pages with many cases stored: server time and SQL statements per page.

A database is filled with N past cases and their history (``dbfill.fill_history``:
70% closed, 30% in progress, requesters spread over 10 company domains), three people
are signed in (a staff member, a customer with one case, and that customer in their
company's scope: a tenth of all cases), and the real ASGI app (``helpdesk.web.app``,
in process, through Starlette's test client) answers each page ``requests`` times.
The time is the server's own (``Server-Timing: app;dur=``: routing, the read
session, the queries and the template; not the client). The statements are counted
with a SQLAlchemy ``before_cursor_execute`` event: the same at 1k and at 100k cases
means no page does a query per case.
"""
from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import event

from bench.dbfill import fill_history
from bench.ingest import make_desk, settle
from helpdesk.app import App
from helpdesk.store import tokens

PAGES = {  # name: (who, path)
    "list: staff, all open cases": ("staff", "/cases"),
    "list: staff, sorted by status, page 3": ("staff", "/cases?sort=status&order=asc&page=3"),
    "list: staff, words of subject/requester": ("staff", "/cases?q=request+99&status=all"),
    "list: customer, own cases": ("customer", "/cases"),
    "list: customer, company (N/10 cases)": ("customer", "/cases?scope=company"),
    "case page: staff": ("staff", "/cases/{ref}"),
    "case page: customer": ("customer", "/cases/{ref}"),
}


@dataclass
class WebRun:
    cases: int
    fill_s: float
    p95_ms: dict[str, float] = field(default_factory=dict)
    median_ms: dict[str, float] = field(default_factory=dict)
    statements: dict[str, int] = field(default_factory=dict)


def measure(folder: Path, cases: int, requests: int) -> WebRun:
    from starlette.testclient import TestClient

    from helpdesk.web.app import make_app

    folder = folder.resolve()
    config = make_desk(folder, None, None, web={"host": "127.0.0.1", "port": 8080,
                                                "base_url": "http://testserver"})
    now = datetime.now(UTC)
    started = time.perf_counter()
    fill_history(folder / "helpdesk.db", cases, now)
    run = WebRun(cases, time.perf_counter() - started)
    settle()
    app = App.from_config(config)
    number = cases // 2 + 5  # an in-progress case in the middle of the table
    customer = f"past{number}@domain{number % 10}.example"
    ref = f"CC-{number:06d}"
    with app.sessions.begin() as session:
        cookies = {who: tokens.open_session(session, address, None, now, timedelta(days=1))
                   for who, address in (("staff", "agent@example.com"), ("customer", customer))}
    statements: list[str] = []

    def count(*_args: object) -> None:
        statements.append("")

    event.listen(app.engine, "before_cursor_execute", count)
    try:
        with TestClient(make_app(app), base_url="http://testserver") as client:
            for name, (who, path) in PAGES.items():
                client.cookies.set("hd_session", cookies[who])
                url = path.format(ref=ref)
                timings = []
                for attempt in range(requests + 2):
                    statements.clear()
                    response = client.get(url)
                    if response.status_code != 200 or ref[:3] not in response.text:
                        raise RuntimeError(f"{name}: {url} answered {response.status_code}")
                    if attempt >= 2:  # two warm-ups: compiled statements and templates
                        timings.append(_server_ms(response.headers["server-timing"]))
                run.statements[name] = len(statements)
                timings.sort()
                run.p95_ms[name] = timings[int(0.95 * (len(timings) - 1))]
                run.median_ms[name] = statistics.median(timings)
    finally:
        event.remove(app.engine, "before_cursor_execute", count)
        app.close()
    return run


def _server_ms(header: str) -> float:
    found = re.search(r"app;dur=([\d.]+)", header)
    if not found:
        raise RuntimeError(f"no server time in {header!r}")
    return float(found[1])
