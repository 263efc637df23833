"""The embedded inbound SMTP listener (aiosmtpd).

It says 250 only after the mail's transaction has committed, and 451 when it
could not be stored, so the sending MTA keeps the mail and retries: the edge
never acknowledges what it might lose.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.controller import Controller

from helpdesk.app import App
from helpdesk.inbound.ingest import StorageUnavailable, ingest_raw

log = logging.getLogger(__name__)


class InboundHandler:
    source = "smtp"  # recorded on the inbound row; the LMTP listener says "lmtp"

    def __init__(self, app: App, on_stored: Any = None) -> None:
        self._app = app
        self._on_stored = on_stored or (lambda: None)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or b""
        if len(raw) > self._app.settings.limits.max_message_size:
            return "552 5.3.4 Message too big for this helpdesk"
        try:
            # The pipeline is synchronous database work: keep the event loop free.
            outcome = await asyncio.to_thread(
                ingest_raw, self._app, raw, source=self.source,
                envelope_recipients=tuple(a.lower() for a in envelope.rcpt_tos))
        except StorageUnavailable:
            log.exception("could not store inbound mail; asked the sender to retry")
            return "451 4.3.0 Temporary storage failure, try again later"
        self._on_stored()
        log.debug("stored inbound=%s as %s", outcome.inbound_id, outcome.status)
        return "250 2.0.0 Stored"


def start_listener(app: App, host: str, port: int, on_stored: Any = None) -> Controller:
    controller = Controller(InboundHandler(app, on_stored), hostname=host, port=port,
                            data_size_limit=app.settings.limits.max_message_size + 65536)
    controller.start()
    log.info("SMTP listener on %s:%s", host, port)
    return controller
