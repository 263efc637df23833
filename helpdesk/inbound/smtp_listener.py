"""The embedded inbound SMTP listener (aiosmtpd).

It says 250 only after the mail's transaction has committed, and 451 when it
could not be stored, so the sending MTA keeps the mail and retries: the edge
never acknowledges what it might lose, and never answers 5xx for trouble that may
pass.

It faces the public, so it is bounded the way Postfix's smtpd is
(``inbound.smtp_listener``):

- ``max_sessions`` sessions at once; the next client gets ``421 4.7.0`` and is
  disconnected at once, so file descriptors and memory stay bounded;
- ``max_recipients`` per message (``452 4.5.3``), and only our own addresses and
  their ``+`` reply addresses (``550 5.1.1`` otherwise): not a relay;
- ``idle_timeout``: a client that sends nothing for that long gets ``421 4.4.2``
  and is dropped (time spent storing its mail does not count);
- ``SIZE`` (``limits.max_message_size``) in the EHLO answer; a larger mail is
  refused with 552 at ``MAIL FROM ... SIZE=`` or at the end of DATA.

Refusals are logged through a ``FloodFilter``: one line per kind and minute, with
a count, however many clients misbehave.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from helpdesk.app import App
from helpdesk.core.envelope import is_our_recipient
from helpdesk.inbound.ingest import StorageUnavailable, ingest_raw
from helpdesk.logflood import FloodFilter

log = logging.getLogger(__name__)

#: Loggers a misbehaving client can make talk: ours, aiosmtpd's, asyncio's (accept).
FLOODED_LOGGERS = (__name__, "mail.log", "asyncio")
_FLUSH_EVERY = 5.0  # seconds between FloodFilter.flush() calls
_TRY_LATER = "451 4.3.0 Temporary storage failure, try again later"


def _peer(session: Any) -> str:
    peer = getattr(session, "peer", None)
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class InboundHandler:
    source = "smtp"  # recorded on the inbound row; the LMTP listener says "lmtp"

    def __init__(self, app: App, max_recipients: int, on_stored: Any = None) -> None:
        self._app = app
        self._max_recipients = max_recipients
        self._on_stored = on_stored or (lambda: None)
        self._ours = app.settings.own_addresses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if not is_our_recipient(address, self._ours):
            log.warning("SMTP: refused RCPT to <%s> from %s: not a helpdesk address",
                        address, _peer(session))
            return f"550 5.1.1 <{address}>: Recipient address rejected: not a helpdesk address"
        if len(envelope.rcpt_tos) >= self._max_recipients:
            log.warning("SMTP: refused a recipient from %s: over %d in one message "
                        "(inbound.smtp_listener.max_recipients)", _peer(session),
                        self._max_recipients)
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or b""
        try:
            # The pipeline is synchronous database work: keep the event loop free.
            outcome = await asyncio.to_thread(
                ingest_raw, self._app, raw, source=self.source,
                envelope_recipients=tuple(a.lower() for a in envelope.rcpt_tos))
        except StorageUnavailable as exc:
            log.warning("SMTP: could not store a mail from %s; asked the sender to retry: %s",
                        _peer(session), exc)
            return _TRY_LATER
        except Exception:  # a bug: still the sender's to keep, not ours to lose
            log.exception("SMTP: storing a mail from %s failed; asked the sender to retry",
                          _peer(session))
            return _TRY_LATER
        self._on_stored()
        log.debug("stored inbound=%s as %s", outcome.inbound_id, outcome.status)
        return "250 2.0.0 Stored"

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP: session error; asked the client to retry", exc_info=error)
        return _TRY_LATER


class _Sessions:
    """The sessions open on one listener. Every session runs on the listener's one
    event loop thread, so a plain counter is enough."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


class BoundedSMTP(SMTP):
    """aiosmtpd's SMTP with a session limit and an idle timeout that says why.

    The idle timer is aiosmtpd 1.4's own (``timeout``), driven through its private
    ``_reset_timeout``/``_timeout_cb`` (pinned in pyproject.toml): as it comes, only a
    complete command resets it, so it fired in the middle of a long DATA (or while
    we stored the mail) and closed the connection without a word.
    """

    def __init__(self, handler: Any, *, sessions: _Sessions, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sessions = sessions
        self._counted = False
        self._in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._sessions.open >= self._sessions.limit:
            peer = transport.get_extra_info("peername")
            log.warning("SMTP: refused a connection from %s: %d sessions open "
                        "(inbound.smtp_listener.max_sessions)",
                        peer[0] if peer else "?", self._sessions.open)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            return
        self._sessions.open += 1
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._counted:
            return  # refused in connection_made: aiosmtpd never saw it
        self._counted = False
        self._sessions.open -= 1
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._reset_timeout()  # idle means sending nothing, not taking long over DATA
        super().data_received(data)

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False
            self._reset_timeout()

    def _timeout_cb(self) -> None:
        if self._in_data:  # we are storing its mail: the wait is ours, not the client's
            self._reset_timeout()
            return
        log.info("SMTP: dropped a session from %s after %.0f s without a word "
                 "(inbound.smtp_listener.idle_timeout)", _peer(self.session),
                 self._timeout_duration)
        if isinstance(self.transport, asyncio.WriteTransport):  # closing flushes it
            self.transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n"
                                 .encode())
        super()._timeout_cb()


class Listener(Controller):
    """The listener thread: aiosmtpd's Controller building ``BoundedSMTP`` sessions,
    with the flood filter on the loggers a client can make talk while it runs."""

    def __init__(self, app: App, on_stored: Any = None) -> None:
        conf = app.settings.inbound.smtp_listener
        assert conf is not None
        super().__init__(InboundHandler(app, conf.max_recipients, on_stored),
                         hostname=conf.host, port=conf.port,
                         server_hostname=app.settings.helpdesk.domain,
                         data_size_limit=app.settings.limits.max_message_size,
                         timeout=conf.idle_timeout.total_seconds())
        self._sessions = _Sessions(conf.max_sessions)
        self._flood = FloodFilter()

    def factory(self) -> BoundedSMTP:
        return BoundedSMTP(self.handler, sessions=self._sessions, **self.SMTP_kwargs)

    def start(self) -> None:
        for name in FLOODED_LOGGERS:
            logging.getLogger(name).addFilter(self._flood)
        try:
            super().start()
        except BaseException:
            self._remove_filters()
            raise
        self.loop.call_soon_threadsafe(self._flush_floods)

    def _flush_floods(self) -> None:
        self._flood.flush()
        self.loop.call_later(_FLUSH_EVERY, self._flush_floods)

    def stop(self, no_assert: bool = False) -> None:
        super().stop(no_assert)
        self._flood.flush(everything=True)  # what was held back, before the log goes quiet
        self._remove_filters()

    def _remove_filters(self) -> None:
        for name in FLOODED_LOGGERS:
            logging.getLogger(name).removeFilter(self._flood)


def start_listener(app: App, on_stored: Any = None) -> Listener:
    """The listener of ``inbound.smtp_listener``, started."""
    listener = Listener(app, on_stored)
    listener.start()
    log.info("SMTP listener on %s:%s", listener.hostname, listener.port)
    return listener
