"""Fill a migrated helpdesk SQLite database with many cases, fast.

Everything is ``INSERT ... SELECT`` over a recursive CTE (no Python loop per row),
with the table's secondary indexes dropped during the load and recreated from
their own ``CREATE INDEX`` text afterwards (the very indexes the migration made),
on a raw sqlite3 connection with ``synchronous=OFF`` for the load only.

Timestamps are written the way SQLAlchemy stores ``UTCDateTime`` on SQLite
(``YYYY-MM-DD HH:MM:SS.ffffff``, UTC), so the ORM reads them back unchanged.
"""
from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

DOMAINS = 10


def ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _sql_ts(expr: str) -> str:
    """A SQL expression turning a datetime() text into the stored format."""
    return f"(datetime({expr}) || '.000000')"


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA temp_store=MEMORY")
    con.execute("PRAGMA cache_size=-200000")
    return con


def _without_indexes(con: sqlite3.Connection, tables: list[str]) -> list[str]:
    marks = ",".join("?" for _ in tables)
    rows = con.execute(f"SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
                       f"AND tbl_name IN ({marks})", tables).fetchall()
    for name, _sql in rows:
        con.execute(f'DROP INDEX "{name}"')
    return [sql for _name, sql in rows]


def fill_for_sweep(path: Path, total: int, due: int, now: datetime) -> None:
    """*total* customer-care cases, of which *due* wait for their first reminder now.

    The rest: 60% closed, 15% open, 10% in progress (no timer), 10% waiting with the
    first reminder still days ahead, 5% resolved and not yet closing. Due cases get
    their requester as participant and their first inbound message.
    """
    every = max(1, total // max(1, due))
    con = _connect(path)
    try:
        con.execute("BEGIN")
        indexes = _without_indexes(con, ["case", "participant", "message"])
        n = f"'{ts(now)}'"
        con.execute(f"""
            INSERT INTO "case" (id, ref, category, status, subject, requester, requester_name,
                requester_domain, reply_token, duplicate_key, assignee, created_at, updated_at,
                status_since, clock_started_at, reminders_sent, due_at)
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {total}),
            shaped AS (
                SELECT i,
                    CASE WHEN i % {every} = 0 AND i / {every} <= {due} THEN 'due'
                         WHEN i % 20 < 12 THEN 'closed' WHEN i % 20 < 15 THEN 'open'
                         WHEN i % 20 < 17 THEN 'in_progress' WHEN i % 20 < 19 THEN 'waiting'
                         ELSE 'resolved' END AS kind,
                    (i % 600) AS minutes
                FROM seq)
            SELECT i, printf('CC-%06d', i), 'customer_care',
                CASE kind WHEN 'due' THEN 'waiting' ELSE kind END,
                'Request number ' || i, 'customer' || i || '@domain' || (i % {DOMAINS}) || '.example',
                'Customer ' || i, 'domain' || (i % {DOMAINS}) || '.example', 'abcdefgh', NULL, NULL,
                {_sql_ts(f"{n}, '-30 days'")}, {_sql_ts(f"{n}, '-4 days'")},
                {_sql_ts(f"{n}, '-4 days'")},
                CASE kind
                    WHEN 'due' THEN {_sql_ts(f"{n}, '-3 days', printf('-%d minutes', minutes + 1)")}
                    WHEN 'waiting' THEN {_sql_ts(f"{n}, printf('-%d minutes', minutes + 60)")}
                    WHEN 'resolved' THEN {_sql_ts(f"{n}, '-2 days', printf('-%d minutes', minutes)")}
                    ELSE NULL END,
                0,
                CASE kind
                    WHEN 'due' THEN {_sql_ts(f"{n}, printf('-%d minutes', minutes + 1)")}
                    WHEN 'waiting' THEN {_sql_ts(f"{n}, '+3 days', printf('-%d minutes', minutes + 60)")}
                    WHEN 'resolved' THEN {_sql_ts(f"{n}, '+5 days', printf('-%d minutes', minutes)")}
                    ELSE NULL END
            FROM shaped""")
        con.execute(f"""
            INSERT INTO participant (case_id, address, name, role, added_at, undeliverable)
            SELECT id, requester, requester_name, 'requester', created_at, 0
            FROM "case" WHERE due_at <= {n}""")
        con.execute(f"""
            INSERT INTO message (case_id, direction, kind, message_id, dedupe_key, from_addr,
                to_addrs, cc_addrs, subject, date, headers, text, html, inbound_id)
            SELECT id, 'in', 'request', 'req' || id || '@customer.example',
                'req' || id || '@customer.example', requester, '["support@example.com"]', '[]',
                subject, created_at, '{{}}', 'Hello, please help with request ' || id || '.', '',
                NULL
            FROM "case" WHERE due_at <= {n}""")
        _finish(con, total, indexes)
    finally:
        con.close()


def fill_history(path: Path, total: int, now: datetime) -> None:
    """*total* past cases with the rows a real history has: the request and its
    acknowledgement (messages), the requester (participant), the address it came
    to, the raw inbound mail, the sent outbox row, the rate-limit row and an event."""
    con = _connect(path)
    try:
        con.execute("BEGIN")
        tables = ["case", "participant", "message", "case_address", "inbound", "outbox",
                  "auto_mail", "event"]
        indexes = _without_indexes(con, tables)
        n = f"'{ts(now)}'"
        con.execute(f"""
            INSERT INTO "case" (id, ref, category, status, subject, requester, requester_name,
                requester_domain, reply_token, duplicate_key, assignee, created_at, updated_at,
                status_since, clock_started_at, reminders_sent, due_at)
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {total})
            SELECT i, printf('CC-%06d', i), 'customer_care',
                CASE WHEN i % 10 < 7 THEN 'closed' ELSE 'in_progress' END,
                'Old request ' || i, 'past' || i || '@domain' || (i % {DOMAINS}) || '.example',
                'Past customer ' || i, 'domain' || (i % {DOMAINS}) || '.example', 'abcdefgh',
                NULL, NULL, {_sql_ts(f"{n}, printf('-%d minutes', {total} - i + 1)")},
                {_sql_ts(f"{n}, printf('-%d minutes', {total} - i + 1)")},
                {_sql_ts(f"{n}, printf('-%d minutes', {total} - i + 1)")}, NULL, 0, NULL
            FROM seq""")
        con.execute("""
            INSERT INTO inbound (id, source, source_key, received_at, raw, envelope_recipients,
                status, outcome, case_id, error, attempts)
            SELECT id, 'imap:history', 'h' || id, created_at,
                CAST('From: ' || requester || char(13, 10) || 'Subject: ' || subject
                     || char(13, 10, 13, 10) || 'Hello.' AS BLOB), '[]', 'done', 'new_case',
                id, NULL, 1
            FROM "case" """)
        con.execute("""
            INSERT INTO message (case_id, direction, kind, message_id, dedupe_key, from_addr,
                to_addrs, cc_addrs, subject, date, headers, text, html, inbound_id)
            SELECT id, 'in', 'request', 'past' || id || '@customer.example',
                'past' || id || '@customer.example', requester, '["support@example.com"]', '[]',
                subject, created_at, '{}', 'Hello, an old request.', '', id
            FROM "case" """)
        con.execute("""
            INSERT INTO message (case_id, direction, kind, message_id, dedupe_key, from_addr,
                to_addrs, cc_addrs, subject, date, headers, text, html, inbound_id)
            SELECT id, 'out', 'ack', 'helpdesk.past' || id || '@example.com',
                'helpdesk.past' || id || '@example.com', 'support@example.com',
                json_array(requester), '[]', '[' || ref || '] ' || subject, created_at, '{}',
                'We received your request.', '', NULL
            FROM "case" """)
        con.execute("""
            INSERT INTO participant (case_id, address, name, role, added_at, undeliverable)
            SELECT id, requester, requester_name, 'requester', created_at, 0 FROM "case" """)
        con.execute("""
            INSERT INTO case_address (case_id, address)
            SELECT id, 'support@example.com' FROM "case" """)
        con.execute("""
            INSERT INTO outbox (case_id, kind, mail_from, recipients, message_id, raw, status,
                attempts, next_attempt_at, claimed_until, last_error, created_at, sent_at)
            SELECT id, 'ack', 'support@example.com', json_array(requester),
                'helpdesk.past' || id || '@example.com', CAST('Subject: ack' AS BLOB), 'sent', 1,
                created_at, NULL, NULL, created_at, created_at
            FROM "case" """)
        con.execute("""
            INSERT INTO auto_mail (address, case_id, at)
            SELECT requester, id, created_at FROM "case" """)
        con.execute("""
            INSERT INTO event (case_id, at, type, detail)
            SELECT id, created_at, 'created', '{"category": "customer_care"}' FROM "case" """)
        _finish(con, total, indexes)
    finally:
        con.close()


def _finish(con: Any, total: int, indexes: list[str]) -> None:
    """Hand out references after the filled ones, rebuild the indexes, commit."""
    con.execute("INSERT OR REPLACE INTO ref_counter (prefix, last) VALUES ('CC', ?)", (total,))
    for sql in indexes:
        con.execute(sql)
    con.execute("COMMIT")  # no ANALYZE: a real database has none either
