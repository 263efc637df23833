"""IMAP inbound: the public face of ``imap_session``, ``imap_fetch`` and ``imap_watch``.

- ``connect(mailbox)``: a logged-in ``IMAPClient`` (ssl | starttls | none; password or XOAUTH2).
- ``fetch_once(app, mailbox, client)``: one pass over the folder → ``FetchResult``.
- ``watch(app, mailbox, stop, on_fetched)``: the forever loop of ``helpdesk run``.
- ``start_watchers(app, stop, on_fetched)``: one thread per configured mailbox.
- ``fetch_all(app)``: one pass over every mailbox (``helpdesk fetch``); the number that failed.
"""
from helpdesk.inbound.imap_fetch import DONE_KEYWORD, FetchResult, fetch_once, move
from helpdesk.inbound.imap_session import ImapError, close_quietly, connect, describe, oauth2_token
from helpdesk.inbound.imap_state import record_error
from helpdesk.inbound.imap_watch import backoff_delay, fetch_all, start_watchers, watch

__all__ = [
    "DONE_KEYWORD", "FetchResult", "ImapError", "backoff_delay", "close_quietly", "connect",
    "describe", "fetch_all", "fetch_once", "move", "oauth2_token", "record_error",
    "start_watchers", "watch",
]
