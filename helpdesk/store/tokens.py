"""Sign-in links and sessions of the web portal: only hashes are stored.

A token is 32 random bytes (URL-safe base64) that appear only in the mail, or in the
cookie; the tables keep their SHA-256, so a copy of the database signs nobody in.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from helpdesk.store.orm import Case, WebSession, WebToken

LOGIN_TTL = timedelta(minutes=15)
LOGINS_PER_HOUR = 5


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_row(kind: str, address: str, case_id: int | None, now: datetime,
              ttl: timedelta) -> tuple[str, dict[str, object]]:
    """A fresh token and the ``web_token`` row that stands for it (for ``Facts.add``)."""
    token = new_token()
    return token, {"token_hash": digest(token), "kind": kind, "address": address.lower(),
                   "case_id": case_id, "created_at": now, "expires_at": now + ttl,
                   "used_at": None}


def logins_since(session: Session, address: str, since: datetime) -> int:
    """The sign-in links mailed to ``address``'s inbox since ``since``: its ``+tag``
    variants count too (with a ``@domain`` staff entry every one of them is staff)."""
    local, _, domain = address.lower().rpartition("@")
    local = local.partition("+")[0] or local
    tagged = f"{_literal(local)}+%@{_literal(domain)}"
    return session.scalar(select(func.count()).select_from(WebToken).where(
        or_(WebToken.address == f"{local}@{domain}", WebToken.address.like(tagged, escape="/")),
        WebToken.kind == "login", WebToken.created_at > since)) or 0


def _literal(text: str) -> str:
    """*text* as a LIKE pattern (``ESCAPE '/'``) that matches only itself."""
    return re.sub(r"([/%_])", r"/\1", text)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid link signs in: an address, and for a case link that one case."""

    address: str
    case_id: int | None
    ref: str | None
    expires_at: datetime


def peek(session: Session, token: str, kind: str, now: datetime,
         ref: str | None = None) -> Grant | None:
    """The grant of a link that still works, without using it (for the GET page)."""
    row = session.execute(
        select(WebToken.address, WebToken.case_id, WebToken.expires_at, WebToken.used_at,
               Case.ref).outerjoin(Case, Case.id == WebToken.case_id)
        .where(WebToken.token_hash == digest(token), WebToken.kind == kind)).first()
    if row is None or row.expires_at <= now or (kind == "login" and row.used_at is not None):
        return None
    if ref is not None and (row.ref or "").upper() != ref.upper():
        return None
    return Grant(row.address, row.case_id, row.ref, row.expires_at)


def redeem(session: Session, token: str, kind: str, now: datetime,
           ref: str | None = None) -> Grant | None:
    """Use a link: a login link only once (the UPDATE is the race's referee), a case
    link as often as it likes until it expires. None when it does not work."""
    grant = peek(session, token, kind, now, ref)
    if grant is None:
        return None
    if kind == "login":
        used = session.execute(update(WebToken).where(
            WebToken.token_hash == digest(token), WebToken.used_at.is_(None),
            WebToken.expires_at > now).values(used_at=now)).rowcount
        if used != 1:
            return None
    else:
        session.execute(update(WebToken).where(WebToken.token_hash == digest(token))
                        .values(used_at=now))
    return grant


def open_session(session: Session, address: str, case_id: int | None, now: datetime,
                 ttl: timedelta) -> str:
    """A new signed-in session; returns the cookie value. Expired sessions and links
    are swept here (a sign-in is rare; every mail to a participant makes a link)."""
    session.execute(WebSession.__table__.delete().where(WebSession.expires_at <= now))
    # An hour's grace: the 5-per-hour limit counts the login links of the last hour.
    session.execute(WebToken.__table__.delete().where(WebToken.expires_at <= now - timedelta(hours=1)))
    cookie = new_token()
    session.add(WebSession(id_hash=digest(cookie), address=address.lower(), case_id=case_id,
                           created_at=now, expires_at=now + ttl))
    return cookie


@dataclass(frozen=True, slots=True)
class SignedIn:
    address: str
    case_id: int | None
    case_ref: str | None


def session_of(session: Session, cookie: str, now: datetime) -> SignedIn | None:
    row = session.execute(
        select(WebSession.address, WebSession.case_id, WebSession.expires_at, Case.ref)
        .outerjoin(Case, Case.id == WebSession.case_id)
        .where(WebSession.id_hash == digest(cookie))).first()
    if row is None or row.expires_at <= now:
        return None
    return SignedIn(row.address, row.case_id, row.ref)


def close_session(session: Session, cookie: str) -> None:
    session.execute(WebSession.__table__.delete().where(WebSession.id_hash == digest(cookie)))
