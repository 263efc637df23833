"""``helpdesk status``: what a monitoring check needs, from the database alone."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from helpdesk.app import App
from helpdesk.inbound.mailbox_lock import holder
from helpdesk.store.orm import Inbound, MailboxState, Outbox


@dataclass
class HealthReport:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def text(self) -> str:
        verdict = "healthy" if self.healthy else "UNHEALTHY: " + "; ".join(self.problems)
        return "\n".join([*self.lines, verdict])


def health_report(app: App, now: datetime) -> HealthReport:
    report = HealthReport()
    with app.sessions() as session:
        states = {s.name: s for s in session.scalars(select(MailboxState))}
        for mailbox in app.settings.inbound.imap:
            state = states.get(mailbox.name)
            last = state.last_fetch_at if state else None
            error = state.last_error if state else None
            report.lines.append(
                f"mailbox {mailbox.name}: last fetch {last.isoformat() if last else 'never'}"
                + (f", last error {state.last_error_at.isoformat()}: {error}"
                   if state and error and state.last_error_at else ""))
            fetcher = holder(app, mailbox.name)  # with several daemons: which one fetches it
            report.lines.append(f"mailbox {mailbox.name}: "
                                + (f"fetched by {fetcher.describe()}" if fetcher
                                   else "no process is fetching it right now"))
            failing = state is not None and state.last_error_at is not None and (
                last is None or state.last_error_at > last)
            if failing:  # e.g. a token that can no longer be refreshed: say so at once
                report.problems.append(f"mailbox {mailbox.name} is failing: {error}")
            elif last is None or now - last > mailbox.stale_after:
                report.problems.append(f"mailbox {mailbox.name} has not fetched for longer than "
                                       f"{mailbox.stale_after}" + (f" ({error})" if error else ""))
        queued = session.scalar(select(func.count()).select_from(Outbox)
                                .where(Outbox.status == "queued")) or 0
        oldest = session.scalar(select(func.min(Outbox.created_at)).where(Outbox.status == "queued"))
        dead = session.scalar(select(func.count()).select_from(Outbox)
                              .where(Outbox.status == "dead")) or 0
        quarantined = session.scalar(select(func.count()).select_from(Inbound)
                                     .where(Inbound.status == "failed")) or 0
    report.lines.append(f"outbox: {queued} queued"
                        + (f" (oldest {oldest.isoformat()})" if oldest else "")
                        + f", {dead} undeliverable")
    report.lines.append(f"quarantine: {quarantined} message(s)")
    return report
