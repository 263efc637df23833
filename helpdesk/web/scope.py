"""Who is signed in, from the session cookie, and the CSRF token of their forms."""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core.access import Directory, Viewer, viewer_for
from helpdesk.policy import access_directory
from helpdesk.store import cases, tokens

SESSION_COOKIE = "hd_session"
ANON_COOKIE = "hd_pre"  # a visitor who is not signed in yet: what their form tokens bind to


def directory(app: App) -> Directory:
    return access_directory(app.settings)


def signed_in(session: Session, app: App, cookie: str | None, now: datetime) -> Viewer | None:
    if not cookie:
        return None
    found = tokens.session_of(session, cookie, now)
    if found is None:
        return None
    return viewer_for(found.address, directory(app), only_case=found.case_ref)


def is_known(session: Session, app: App, address: str) -> bool:
    """May this address get a sign-in link: a requester, participant or staff member."""
    return directory(app).is_staff(address) or cases.is_participant(session, address)


class Csrf:
    """A form token is an HMAC of the cookie the browser holds (the session's, or the
    visitor's before sign-in): another site can make the browser send the cookie, but
    cannot read it, so cannot compute the token."""

    def __init__(self, key: bytes) -> None:
        self._key = hmac.new(key, b"helpdesk web csrf", hashlib.sha256).digest()

    def token(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    def valid(self, cookie: str | None, token: str | None) -> bool:
        return bool(cookie and token) and hmac.compare_digest(self.token(cookie), str(token))


def csrf_key(app: App) -> bytes:
    """The key the CSRF tokens use: the reply-address secret (config or database)."""
    secret = app.settings.helpdesk.secret
    with app.sessions.begin() as session:
        return cases.reply_secret(session, secret.get_secret_value() if secret else None)
