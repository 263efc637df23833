"""Drain the outbox with the configured transport (used after each CLI pass)."""
from __future__ import annotations

from helpdesk.app import App
from helpdesk.outbound.render import outbox_renderer
from helpdesk.outbound.sender import SendResult, claim_lease, make_transport, send_due


def deliver_all(app: App, max_passes: int = 100) -> SendResult:
    """Send everything that is due now, over one connection; stops early when the server
    is unreachable."""
    total = SendResult()
    transport = make_transport(app.settings)
    try:
        for _ in range(max_passes):
            result = send_due(app.sessions, app.clock, transport,
                              lease=claim_lease(app.settings), render=outbox_renderer(app),
                              reads=app.reads, keep_connection=True)
            total += result
            if not result.more_may_be_due:
                break
    finally:
        transport.close()
    return total
