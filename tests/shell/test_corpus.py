"""Issue 5: CPython's own email test corpus goes through ``ingest`` without an exception
escaping; every message ends up accounted for in the ``inbound`` table.

Run with ``-s`` to see the counts.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.inbound.ingest import ingest_raw
from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Case, Inbound

# What a message may become: a case, a reply to one, ignored machine mail (a bounce is
# machine mail too), a duplicate, or kept in the quarantine. "ignored" is a mail with no
# usable sender: stored nowhere but in `inbound`, answered by nobody.
ACCOUNTED = {"new_case", "reply", "staff_reply", "machine", "bounce", "duplicate",
             "duplicate_request", "rejected", "ignored", "quarantined"}


def corpus() -> list[Path]:
    try:
        import test.test_email
    except ImportError:
        message = ("CPython's test package (test.test_email) is not installed; "
                   "install python3-test / the full CPython build to run the corpus test")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    data = Path(test.test_email.__file__).parent / "data"
    files = sorted(data.glob("msg_*.txt"))
    if not files:
        pytest.fail(f"no msg_*.txt in {data}")
    return files


def test_cpython_email_corpus(desk_factory):
    # Most of the corpus is one sender's (barry@python.org): the new-case limit would
    # hold all but five of it. Here every message should be taken in.
    desk = desk_factory(limits={"new_cases_per_sender": "1000/1h"})
    files = corpus()
    counts: Counter[str] = Counter()
    outcomes = {}
    for path in files:
        outcome = ingest_raw(desk.app, path.read_bytes(), source="corpus", source_key=path.name)
        assert outcome.status in ACCOUNTED, (path.name, outcome)
        counts[outcome.status] += 1
        outcomes[path.name] = outcome
    deliver_all(desk.app)

    print(f"\nCPython email corpus: {len(files)} messages -> "
          + ", ".join(f"{status} {n}" for status, n in sorted(counts.items())))
    for name, outcome in outcomes.items():
        if outcome.quarantined:
            print(f"  quarantined {name}: {outcome.reason}")

    with desk.app.sessions() as session:
        rows = {r.source_key: r for r in session.scalars(
            select(Inbound).where(Inbound.source == "corpus"))}
        case_count = len(session.scalars(select(Case)).all())
    assert set(rows) == {p.name for p in files}  # every input is in the inbound table
    for name, row in rows.items():
        outcome = outcomes[name]
        assert row.id == outcome.inbound_id
        assert row.raw == (desk_file := next(p for p in files if p.name == name)).read_bytes()
        if outcome.quarantined:
            assert (row.status, row.outcome) == ("failed", "quarantined") and row.error
        else:
            assert (row.status, row.outcome) == ("done", outcome.status), desk_file
        if outcome.status in ("new_case", "reply"):
            assert row.case_id is not None
    assert case_count == counts["new_case"]
    # only what cannot be read at all is quarantined (msg_19.txt is a bare digest body
    # without headers); anything readable -- broken base64, odd charsets -- is processed
    unreadable = {n: o.reason for n, o in outcomes.items() if o.quarantined}
    assert all(r.startswith("UnparseableMessage") for r in unreadable.values()), unreadable
    assert len(unreadable) <= 2, unreadable
    assert counts["new_case"] > len(files) // 2  # most of it is ordinary mail
    # a second pass changes nothing: every message is recognised as already received
    for path in files:
        again = ingest_raw(desk.app, path.read_bytes(), source="corpus", source_key=path.name)
        assert again.status == "duplicate", path.name
