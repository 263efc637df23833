"""The embedded LMTP listener (RFC 2033): the MTA hands each mail to the running daemon.

No process per mail (as with an ``ingest`` pipe) and no second queue: the mail goes
through the same path as the SMTP listener's (``InboundHandler.handle_DATA``: the
size check, the whole pipeline in one transaction off the event loop, 451 when the
database cannot take it). What LMTP adds is the answer per recipient, the model
being Mailman 3's LMTP runner (``src/mailman/runners/lmtp.py``):

- ``RCPT TO`` an address that is not ours (a support address, or a case's reply
  address) gets ``550 5.1.1`` at once, so the MTA bounces with a clear reason (the
  SMTP listener's check, and its bound of recipients per message);
- after ``DATA``, one reply per accepted recipient, in their order. The mail is
  ingested once whatever their number (one transaction, both addresses recorded on
  the case), so the replies are all the same: ``250`` once it committed (or was
  quarantined, i.e. kept), ``451`` for each when the database could not take it, and
  the MTA then keeps the mail and tries again later: nothing is lost.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP

from helpdesk.app import App
from helpdesk.config import LmtpSection
from helpdesk.inbound.smtp_listener import InboundHandler

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100  # per message, as the SMTP listener's default
TRY_LATER = "451 4.3.0 Temporary failure, try again later"
SOCKET_MODE = 0o660  # the MTA's user must share the daemon's group (README, LMTP)


class LmtpHandler(InboundHandler):
    source = "lmtp"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        try:
            reply = await super().handle_DATA(server, session, envelope)
        except Exception:  # a 5xx would bounce the mail, and one line would desync LMTP
            log.exception("LMTP delivery failed; asked the MTA to retry")
            reply = TRY_LATER
        return "\r\n".join(reply for _ in envelope.rcpt_tos)


class _Lmtp:
    """aiosmtpd's controllers serve SMTP; these serve LMTP to the same handler."""

    handler: Any
    SMTP_kwargs: dict[str, Any]

    def factory(self) -> LMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


class LmtpController(_Lmtp, Controller):
    pass


class LmtpSocketController(_Lmtp, UnixSocketController):
    pass


def start_lmtp(app: App, conf: LmtpSection,
               on_stored: Callable[[], None] | None = None) -> list[Controller]:
    """Listen on every endpoint *conf* names; the caller stops the controllers."""
    handler = LmtpHandler(app, MAX_RECIPIENTS, on_stored)
    options = {"data_size_limit": app.settings.limits.max_message_size + 65536}
    controllers: list[Any] = []
    try:
        if conf.port is not None:
            tcp = LmtpController(handler, hostname=conf.host, port=conf.port, **options)
            tcp.start()
            controllers.append(tcp)
            log.info("LMTP listener on %s:%s", conf.host, conf.port)
        if conf.path is not None:
            path = app.settings.resolve(conf.path)
            _refuse_if_in_use(path)
            unix = LmtpSocketController(handler, unix_socket=path, **options)
            unix.start()
            controllers.append(unix)
            os.chmod(path, SOCKET_MODE)
            log.info("LMTP listener on %s", path)
    except BaseException:
        for controller in controllers:
            controller.stop()
        raise
    return controllers


def _refuse_if_in_use(path: Path) -> None:
    """asyncio replaces any socket file at *path*: right for one left by a daemon that
    was killed, wrong for one a live daemon still listens on (its mail would stop)."""
    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return  # stale
    raise OSError(errno.EADDRINUSE, f"another process listens on {path}")
