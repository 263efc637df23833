"""The outbox row's life in SQL: claim a batch, keep rendered bytes, record a mail the
server took, give back what was not tried.

Core statements on the caller's connection, each one round trip for a whole batch
where it can be (the sender's decisions, and the rarer outcomes, are in
``outbound.sender``). What each statement guarantees is what the sender's exactly-once
argument rests on; it is said at each one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, or_, select, update

from helpdesk.store import tables

OUTBOX = tables.outbox
MESSAGE = tables.message


@dataclass(frozen=True, slots=True)
class Claimed:
    """An outbox row this sender holds until ``claimed_until``."""

    id: int
    case_id: int | None
    kind: str
    mail_from: str
    recipients: tuple[str, ...]
    message_id: str
    raw: bytes | None  # None: not rendered yet, or it could not be (``render_error``)
    spec: dict[str, Any] | None  # ``Outbox.render``: what to render it from
    created_at: datetime
    claimed_until: datetime
    render_error: str | None = None


def _claimable(now: Any) -> Any:
    c = OUTBOX.c
    return (c.status == "queued", c.next_attempt_at <= now,
            or_(c.claimed_until.is_(None), c.claimed_until < now))


def claim(conn: Connection, now: datetime, until: datetime, limit: int) -> list[Claimed]:
    """Claim up to ``limit`` due rows, oldest first, in one statement: each is set to
    ``claimed_until = until`` only if it is still due and unclaimed (or its claim ran
    out) as the statement runs. Under SQLite's write lock, or PostgreSQL's row locks
    (``FOR UPDATE SKIP LOCKED``: two senders take disjoint rows without waiting), no
    two senders hold the same row at once."""
    c = OUTBOX.c
    due = (select(c.id).where(*_claimable(now))
           .order_by(c.next_attempt_at, c.id).limit(limit)
           .with_for_update(skip_locked=True))
    rows = conn.execute(
        update(OUTBOX).where(c.id.in_(due.scalar_subquery()), *_claimable(now))
        .values(claimed_until=until)
        .returning(c.id, c.case_id, c.kind, c.mail_from, c.recipients, c.message_id, c.raw,
                   c.render, c.created_at, c.next_attempt_at)).all()
    rows.sort(key=lambda r: (r.next_attempt_at, r.id))
    return [Claimed(r.id, r.case_id, r.kind, r.mail_from, tuple(r.recipients or ()),
                    r.message_id, r.raw, r.render, r.created_at, until) for r in rows]


@dataclass(frozen=True, slots=True)
class Bytes:
    """A rendered mail to keep: its bytes, and the text and HTML its case keeps."""

    outbox_id: int
    message_id: str
    raw: bytes
    text: str
    html: str


def keep(conn: Connection, rendered: Sequence[Bytes]) -> dict[int, bytes]:
    """Store each rendered mail's bytes in its row, unless the row has bytes already (a
    sender whose claim ran out stored them first: those win, so a mail never goes out
    as two renderings), and its text in the case's copy; returns the bytes each row
    now holds. The rows are locked first (PostgreSQL; SQLite holds its write lock), so
    nobody stores bytes between the look and the write."""
    if not rendered:
        return {}
    c = OUTBOX.c
    ids = [r.outbox_id for r in rendered]
    # Every row is locked, not only those with bytes: a row without them is the one
    # another sender might be keeping at the same moment.
    locked = conn.execute(select(c.id, c.raw).where(c.id.in_(ids)).with_for_update()).all()
    stored = {oid: raw for oid, raw in locked if raw is not None}
    new = [r for r in rendered if r.outbox_id not in stored]
    if new:
        conn.execute(update(OUTBOX).where(c.id == bindparam("oid"), c.raw.is_(None))
                     .values(raw=bindparam("new_raw")),
                     [{"oid": r.outbox_id, "new_raw": r.raw} for r in new])
        conn.execute(update(MESSAGE).where(MESSAGE.c.dedupe_key == bindparam("mid"))
                     .values(text=bindparam("new_text"), html=bindparam("new_html")),
                     [{"mid": r.message_id, "new_text": r.text, "new_html": r.html}
                      for r in new])
    return {**{r.outbox_id: r.raw for r in new}, **stored}


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server accepted the whole mail of row ``outbox_id`` at ``sent_at``, while the
    claim until ``claimed_until`` held; ``forget``: keep neither its bytes nor its
    template values (``render.forget_sign_in_link``)."""

    outbox_id: int
    claimed_until: datetime
    sent_at: datetime
    forget: bool


_MARK_SENT = (update(OUTBOX)  # built once: this runs for every mail
              .where(OUTBOX.c.id == bindparam("oid"), OUTBOX.c.status == "queued",
                     OUTBOX.c.claimed_until == bindparam("until"))
              .values(status="sent", sent_at=bindparam("now"), attempts=OUTBOX.c.attempts + 1,
                      claimed_until=None, last_error=None))
_MARK_SENT_FORGETTING = _MARK_SENT.values(raw=None, render=None)


def mark_sent(conn: Connection, accepted: Sequence[Accepted]) -> int:
    """Record that the server took these mails, each only if its row is still ours
    (queued, and the claim it was sent under unchanged); returns how many were. A row
    that is not is left to the caller (``sender._record_carefully``, ``sender._folding``)."""
    done = 0
    for forget, statement in ((False, _MARK_SENT), (True, _MARK_SENT_FORGETTING)):
        params = [{"oid": a.outbox_id, "until": a.claimed_until, "now": a.sent_at}
                  for a in accepted if a.forget is forget]
        if params:
            done += conn.execute(statement, params).rowcount
    return done


def sent_at(conn: Connection, outbox_ids: Sequence[int]) -> dict[int, datetime | None]:
    """When each of these rows was marked sent (None: it is not, or no longer exists)."""
    c = OUTBOX.c
    rows = conn.execute(select(c.id, c.sent_at).where(c.id.in_(outbox_ids), c.status == "sent"))
    found = {oid: at for oid, at in rows}
    return {oid: found.get(oid) for oid in outbox_ids}


def release(conn: Connection, mails: Sequence[Claimed]) -> None:
    """Give back rows this sender claimed but never tried to send (the pass stopped, or
    its window closed): they are due again at once, for anyone. A row is only given
    back while the claim on it is still ours."""
    if not mails:
        return
    c = OUTBOX.c
    until = mails[0].claimed_until
    conn.execute(update(OUTBOX).where(c.id.in_([m.id for m in mails]), c.status == "queued",
                                      c.claimed_until == until)
                 .values(claimed_until=None))
