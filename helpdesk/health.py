"""``helpdesk status``: what a monitoring check needs, from the database (and the
senders' log of accepted mail, ``outbound.accepted``) alone."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from helpdesk.app import App
from helpdesk.config import Settings
from helpdesk.inbound.mailbox_lock import holder
from helpdesk.outbound.accepted import pending_ids
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


def trust_warnings(settings: Settings) -> list[str]:
    """What `check-config` and `status` say about how staff mail is verified: settings
    that work, but let anyone pose as staff or leave real staff unheard."""
    trust = settings.trust
    has_staff = bool(settings.staff) or any(c.notify for c in settings.categories.values())
    if not trust.require_staff_auth:
        return ["trust.require_staff_auth is false: a From header alone makes anyone staff "
                "(their #commands run, their text is relayed); for a lab setup only"]
    if has_staff and not trust.authserv_ids:
        if not settings.threading.reply_address:
            return ["trust.authserv_ids is empty and threading.reply_address is false: no "
                    "staff mail can be verified, every one is kept as unverified"]
        return ["trust.authserv_ids is empty: staff mail counts only when it answers a staff "
                "reply address (a reply to a notice); list your MTA's authserv-id to accept "
                "their other mail"]
    return []


def health_report(app: App, now: datetime) -> HealthReport:
    report = HealthReport()
    report.lines.extend(f"warning: {w}" for w in trust_warnings(app.settings))
    with app.reads() as session:
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
        # Mail the server took that the outbox has not taken in yet is not waiting.
        waiting = (Outbox.status == "queued", Outbox.id.not_in(pending_ids(app.engine)))
        queued = session.scalar(select(func.count()).select_from(Outbox).where(*waiting)) or 0
        oldest = session.scalar(select(func.min(Outbox.created_at)).where(*waiting))
        dead = session.scalar(select(func.count()).select_from(Outbox)
                              .where(Outbox.status == "dead")) or 0
        quarantined = session.scalar(select(func.count()).select_from(Inbound)
                                     .where(Inbound.status == "failed")) or 0
        # A queued row that was tried and still has no bytes could not be rendered.
        unrendered = (Outbox.status == "queued", Outbox.raw.is_(None),
                      Outbox.last_error.is_not(None))
        not_rendered = session.scalar(select(func.count()).select_from(Outbox)
                                      .where(*unrendered)) or 0
        render_error = session.scalar(select(Outbox.last_error).where(*unrendered)
                                      .order_by(Outbox.id).limit(1))
    report.lines.append(f"outbox: {queued} queued"
                        + (f" (oldest {oldest.isoformat()})" if oldest else "")
                        + f", {dead} undeliverable")
    if not_rendered:  # waits for a template fix: the mail goes out once it is fixed
        report.problems.append(f"{not_rendered} outgoing mail(s) cannot be rendered; "
                               f"fix the template and they go out: {render_error}")
    report.lines.append(f"quarantine: {quarantined} message(s)")
    return report
