"""``mailbox_state``: the UID watermark and the health ``helpdesk status`` reports.

Each function is its own short transaction, separate from any message's.
A mailbox is failing right now when ``last_error_at`` is newer than
``last_fetch_at`` (the last error is kept after recovery, for the record).
"""
from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.store.orm import MailboxState

log = logging.getLogger(__name__)


def _state(session: Session, name: str) -> MailboxState:
    state = session.get(MailboxState, name)
    if state is None:
        state = MailboxState(name=name, last_uid=0)
        session.add(state)
    return state


def load_watermark(app: App, name: str, uidvalidity: int) -> int:
    """The last UID handled; 0 (rescan) when the folder's UIDVALIDITY changed."""
    with app.sessions.begin() as session:
        state = _state(session, name)
        if state.uidvalidity != uidvalidity:
            if state.uidvalidity is not None:
                log.warning("mailbox %s: UIDVALIDITY changed from %s to %s (folder recreated); "
                            "rescanning it from the start", name, state.uidvalidity, uidvalidity)
            state.uidvalidity, state.last_uid = uidvalidity, 0
        return state.last_uid


def save_watermark(app: App, name: str, uidvalidity: int, last_uid: int) -> None:
    with app.sessions.begin() as session:
        state = _state(session, name)
        if state.uidvalidity == uidvalidity and last_uid > state.last_uid:
            state.last_uid = last_uid


def record_success(app: App, name: str) -> None:
    with app.sessions.begin() as session:
        _state(session, name).last_fetch_at = app.clock.now()


def record_error(app: App, name: str, reason: str) -> None:
    """Store the reason; never raises (the database may be what is failing)."""
    try:
        with app.sessions.begin() as session:
            state = _state(session, name)
            state.last_error, state.last_error_at = reason[:2000], app.clock.now()
    except SQLAlchemyError as exc:
        log.warning("mailbox %s: could not record the error in the database: %s",
                    name, type(exc).__name__)
