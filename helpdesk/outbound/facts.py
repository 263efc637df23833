"""What queuing a mail reads from the database, and where its rows go.

``Facts`` asks the database each time and adds rows to the session: right for one
mail at a time (an inbound mail, a hook). ``ChunkFacts`` loads the same facts for a
whole chunk of cases with a few grouped queries, keeps them current as mails are
queued (a rate limit must count the mail queued a moment ago in the same chunk),
and writes the rows with one bulk insert per table: what lets one sweep queue a
thousand reminders in well under a second.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, not_, or_, select
from sqlalchemy.orm import Session

from helpdesk.core.model import Direction, MailKind
from helpdesk.store.orm import AutoMail, Base, Message, Participant

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
