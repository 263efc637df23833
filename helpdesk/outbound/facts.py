"""What queuing a mail reads from the database, and where its rows go.

``Facts`` asks the database each time and adds rows to the session: right for the
rare ORM callers (a hook, a due closure). ``CaseFacts`` is the hot path's: the
facts of the one case an inbound mail's decision touches, each kind read with one
query on first use (none at all for a case made in the same transaction), kept
current as rows are added, and the rows written with one INSERT per table.
``ChunkFacts`` loads the same facts for a whole chunk of cases with a few grouped
queries, keeps them current as mails are queued (a rate limit must count the mail
queued a moment ago in the same chunk), and writes the rows with one bulk insert
per table: what lets one sweep queue a thousand reminders in well under a second.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    Table,
    and_,
    bindparam,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from helpdesk.core.model import Direction, MailKind
from helpdesk.store import tables
from helpdesk.store.orm import AutoMail, Base, Message, Participant

if TYPE_CHECKING:
    from sqlalchemy import Connection

# A case's mail threads on what its participants have: what they sent us, and what we
# sent them. Never on a staff member's own mail or a mail only staff got (In-Reply-To
# would name a mail the customer never saw, and their client could not thread it), nor
# on machine mail. Inbound kinds are listed by what they are, outbound ones by what they
# are not, so a new kind of outgoing mail threads by default and a new kind of internal
# inbound mail never does.
PARTICIPANTS_SENT = (str(MailKind.NEW), str(MailKind.REPLY))
STAFF_ONLY = (str(MailKind.STAFF_NOTICE), str(MailKind.MANUAL_REVIEW),
              str(MailKind.COMMAND_ERROR), str(MailKind.UNVERIFIED_STAFF),
              str(MailKind.SOLVED_NOTICE))
_PSEUDO_ID = "sha256:"  # the key of a mail that had no Message-ID: nothing to refer to


def _participants_have(direction: str, kind: str, message_id: str) -> bool:
    """Whether the participants received or sent this mail (``_PARTICIPANTS_HAVE`` in SQL)."""
    if message_id.startswith(_PSEUDO_ID):
        return False
    if direction == str(Direction.IN):
        return kind in PARTICIPANTS_SENT
    return kind not in STAFF_ONLY


_PARTICIPANTS_HAVE: ColumnElement[bool] = and_(
    not_(Message.message_id.startswith(_PSEUDO_ID)),
    or_(and_(Message.direction == str(Direction.IN), Message.kind.in_(PARTICIPANTS_SENT)),
        and_(Message.direction == str(Direction.OUT), Message.kind.not_in(STAFF_ONLY))))


class Facts:
    """One query per question, rows through the session (autoflush makes them count)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def participants(self, case_id: int) -> list[str]:
        return list(self.session.scalars(
            select(Participant.address).where(Participant.case_id == case_id,
                                              Participant.undeliverable.is_(False))
            .order_by(Participant.id)))

    def sent_for_case(self, case_id: int, since: datetime) -> int:
        return self.session.scalar(select(func.count()).select_from(AutoMail).where(
            AutoMail.case_id == case_id, AutoMail.at > since)) or 0

    def sent_to(self, address: str, since: datetime) -> int:
        return self.session.scalar(select(func.count()).select_from(AutoMail).where(
            AutoMail.address == address, AutoMail.at > since)) or 0

    def thread(self, case_id: int) -> tuple[str | None, str | None]:
        """The first and the latest Message-ID of a case that its participants have:
        the root and the parent of the next mail to them."""
        seen = select(Message.message_id).where(Message.case_id == case_id, _PARTICIPANTS_HAVE)
        first = self.session.scalar(seen.order_by(Message.id).limit(1))
        last = self.session.scalar(seen.order_by(Message.id.desc()).limit(1))
        return first, last

    def add(self, model: type[Base], **values: Any) -> None:
        self.session.add(model(**values))


class ChunkFacts(Facts):
    """The facts of a chunk of cases, loaded up front; rows held until ``write``.

    Only the rate-limit windows in ``windows`` are preloaded; an address outside the
    chunk's participants (a staff address) is counted by a query the first time.
    Rows are written in the order the tables were first given, so foreign keys hold.
    """

    def __init__(self, session: Session, case_ids: Iterable[int],
                 windows: Iterable[datetime]) -> None:
        super().__init__(session)
        ids = list(case_ids)
        self._rows: dict[type[Base], list[dict[str, Any]]] = {}
        self._participants: dict[int, list[str]] = defaultdict(list)
        for case_id, address in session.execute(
                select(Participant.case_id, Participant.address)
                .where(Participant.case_id.in_(ids), Participant.undeliverable.is_(False))
                .order_by(Participant.id)):
            self._participants[case_id].append(address)
        addresses = {a for group in self._participants.values() for a in group}
        self._by_case: dict[datetime, dict[int, int]] = {}
        self._by_address: dict[datetime, dict[str, int]] = {}
        for since in set(windows):
            self._by_case[since] = defaultdict(int, session.execute(
                select(AutoMail.case_id, func.count()).where(
                    AutoMail.case_id.in_(ids), AutoMail.at > since)
                .group_by(AutoMail.case_id)).all())
            self._by_address[since] = dict.fromkeys(addresses, 0) | dict(session.execute(
                select(AutoMail.address, func.count()).where(
                    AutoMail.address.in_(addresses), AutoMail.at > since)
                .group_by(AutoMail.address)).all())
        self._first, self._last = ({
            case_id: message_id for case_id, message_id in session.execute(
                select(Message.case_id, Message.message_id).where(Message.id.in_(
                    select(end(Message.id)).where(Message.case_id.in_(ids), _PARTICIPANTS_HAVE)
                    .group_by(Message.case_id))))} for end in (func.min, func.max))

    def participants(self, case_id: int) -> list[str]:
        return list(self._participants[case_id])

    def sent_for_case(self, case_id: int, since: datetime) -> int:
        if since not in self._by_case:
            return super().sent_for_case(case_id, since)
        return self._by_case[since][case_id]

    def sent_to(self, address: str, since: datetime) -> int:
        counts = self._by_address.get(since)
        if counts is None:
            return super().sent_to(address, since)
        if address not in counts:
            counts[address] = super().sent_to(address, since)
        return counts[address]

    def thread(self, case_id: int) -> tuple[str | None, str | None]:
        return self._first.get(case_id), self._last.get(case_id)

    def add(self, model: type[Base], **values: Any) -> None:
        self._rows.setdefault(model, []).append(values)
        if model is AutoMail:  # queued now, so inside every window
            for counts in self._by_case.values():
                counts[values["case_id"]] += 1
            for by_address in self._by_address.values():
                if values["address"] in by_address:
                    by_address[values["address"]] += 1
        elif model is Message and _participants_have(values["direction"], values["kind"],
                                                    values["message_id"]):
            self._first.setdefault(values["case_id"], values["message_id"])
            self._last[values["case_id"]] = values["message_id"]

    def write(self) -> None:
        """Insert the held rows, one statement per table."""
        self.session.flush()  # the chunk's ORM changes first: the rows may refer to them
        for model, rows in self._rows.items():
            self.session.execute(insert(model), rows)
        self._rows.clear()


_AUTO = tables.auto_mail.c
_M = tables.message.c
_OF_CASE = (_M.case_id == bindparam("case_id"), _PARTICIPANTS_HAVE)
_THREAD_ENDS = select(_M.id, _M.message_id).where(or_(
    _M.id == select(func.min(_M.id)).where(*_OF_CASE).scalar_subquery(),
    _M.id == select(func.max(_M.id)).where(*_OF_CASE).scalar_subquery()))
_P = tables.participant.c
_PEOPLE = select(_P.address, _P.undeliverable).where(_P.case_id == bindparam("case_id")) \
    .order_by(_P.id)
_UNDELIVERABLE = update(tables.participant).where(
    _P.case_id == bindparam("of_case"), _P.address == bindparam("person")) \
    .values(undeliverable=True)
_A = tables.case_address.c
_ADDRESSES = select(_A.address).where(_A.case_id == bindparam("case_id"))


@functools.cache
def _sent_counts(windows: int, who: str) -> Select[Any]:
    """The automatic mails to an address (``who="address"``) or of a case (``"case_id"``)
    in each of ``windows`` windows (``since_0`` the oldest), one statement."""
    since = [bindparam(f"since_{i}") for i in range(windows)]
    return select(*(func.count().filter(_AUTO.at > s) for s in since)).where(
        _AUTO[who] == bindparam("who"), _AUTO.at > since[0])


_SENT_SINCE = {who: select(func.count()).where(_AUTO[who] == bindparam("who"),
                                               _AUTO.at > bindparam("since"))
               for who in ("address", "case_id")}


class CaseFacts:
    """The facts of the one case a decision touches, on a Core connection.

    Each kind of fact is read with one query the first time it is asked for, or not at
    all for a case made in this transaction (``new``: it has no history yet); rows are
    held and counted as they are added, and ``write`` inserts them with one statement
    per table, in the order the tables were first given (their parents, the case and
    the inbound message, are in already). ``windows`` are the rate-limit windows
    (``queue.limit_windows``): an address's counts for all of them come in one query.
    """

    def __init__(self, db: Connection | Session, case_id: int, windows: Iterable[datetime],
                 *, new: bool = False) -> None:
        self.db = db
        self.case_id = case_id
        self._windows = sorted(set(windows))
        self._rows: dict[Table, list[dict[str, Any]]] = {}
        # address -> undeliverable, in the order they joined
        self._people: dict[str, bool] | None = {} if new else None
        self._addresses: set[str] | None = set() if new else None
        self._stored_thread: tuple[str | None, str | None] | None = (None, None) if new else None
        self._first: str | None = None  # of the messages added here
        self._last: str | None = None
        self._by_case: dict[datetime, int] | None = dict.fromkeys(self._windows, 0) if new else None
        self._by_address: dict[str, dict[datetime, int]] = {}

    # -- reading ---------------------------------------------------------------------
    def participants(self, case_id: int) -> list[str]:
        return [a for a, undeliverable in self._participants().items() if not undeliverable]

    def sent_for_case(self, case_id: int, since: datetime) -> int:
        if self._by_case is None:
            self._by_case = self._counts("case_id", self.case_id)
        if since not in self._by_case:
            return self._count_since("case_id", self.case_id, since)
        return self._by_case[since]

    def sent_to(self, address: str, since: datetime) -> int:
        counts = self._by_address.get(address)
        if counts is None:
            counts = self._by_address[address] = self._counts("address", address)
        if since not in counts:
            return self._count_since("address", address, since)
        return counts[since]

    def thread(self, case_id: int) -> tuple[str | None, str | None]:
        if self._stored_thread is None:
            ids = dict(self.db.execute(_THREAD_ENDS, {"case_id": self.case_id}).all())
            self._stored_thread = (ids[min(ids)], ids[max(ids)]) if ids else (None, None)
        first, last = self._stored_thread
        return first or self._first, self._last or last

    def _participants(self) -> dict[str, bool]:
        if self._people is None:
            self._people = dict(self.db.execute(_PEOPLE, {"case_id": self.case_id}).all())
        return self._people

    def _counts(self, who: str, value: int | str) -> dict[datetime, int]:
        """The automatic mails sent in each window: stored ones (one query) and the ones
        held here (queued now, so inside every window)."""
        if not self._windows:
            return {}
        row = self.db.execute(_sent_counts(len(self._windows), who), {
            "who": value, **{f"since_{i}": since for i, since in enumerate(self._windows)}}).one()
        queued = sum(1 for held in self._rows.get(tables.auto_mail, ()) if held[who] == value)
        return {since: (count or 0) + queued for since, count in zip(self._windows, row)}

    def _count_since(self, who: str, value: int | str, since: datetime) -> int:
        queued = sum(1 for held in self._rows.get(tables.auto_mail, ()) if held[who] == value)
        return (self.db.scalar(_SENT_SINCE[who], {"who": value, "since": since}) or 0) + queued

    # -- changing --------------------------------------------------------------------
    def add_participant(self, address: str, name: str, role: str, now: datetime) -> bool:
        """Add a participant unless they are one; False when they were."""
        people = self._participants()
        if address in people:
            return False
        people[address] = False
        self.add(Participant, case_id=self.case_id, address=address, name=name, role=role,
                 added_at=now, undeliverable=False)
        return True

    def mark_undeliverable(self, address: str) -> bool:
        """Mark a participant's address undeliverable; False when it was not one, or was."""
        people = self._participants()
        if people.get(address, True):
            return False
        self.db.execute(_UNDELIVERABLE, {"of_case": self.case_id, "person": address})
        people[address] = True
        return True

    def add_address(self, address: str) -> None:
        """Record a support address the case's mail came to, once."""
        if self._addresses is None:
            self._addresses = set(self.db.scalars(_ADDRESSES, {"case_id": self.case_id}))
        if address not in self._addresses:
            self._addresses.add(address)
            self.add_row(tables.case_address, case_id=self.case_id, address=address)

    def saw_message(self, direction: str, kind: str, message_id: str) -> None:
        """A message of the case was written (or will be): the thread's newest."""
        if _participants_have(direction, kind, message_id):
            self._first = self._first or message_id
            self._last = message_id

    def add(self, model: type[Base], **values: Any) -> None:
        table = model.__table__
        assert isinstance(table, Table)
        self.add_row(table, **values)

    def add_row(self, table: Table, **values: Any) -> None:
        self._rows.setdefault(table, []).append(values)
        if table is tables.auto_mail:  # queued now, so inside every window
            for counts in (self._by_case if values["case_id"] == self.case_id else None,
                           self._by_address.get(values["address"])):
                for since in counts or ():
                    counts[since] += 1
        elif table is tables.message:
            self.saw_message(values["direction"], values["kind"], values["message_id"])

    def write(self) -> None:
        """Insert the held rows, one statement per table."""
        for table, rows in self._rows.items():
            self.db.execute(_insert(table), rows)
        self._rows.clear()


@functools.cache
def _insert(table: Table) -> Insert:
    return insert(table)
