"""Staff actions from the command line: the same rules as a staff reply by mail."""
from __future__ import annotations

from helpdesk.app import App
from helpdesk.core.commands import Command
from helpdesk.core.decide import Outcome, apply_commands
from helpdesk.store import cases
from helpdesk.store.apply import apply_in_session


class CommandRejected(Exception):
    pass


def set_status(app: App, ref: str, status: str, note: str = "") -> str:
    policy = app.policy
    with app.sessions.begin() as session:
        case = cases.by_ref(session, ref)
        if case is None:
            raise LookupError(f"no case {ref}")
        view = cases.view(session, case, policy)
        command = Command("status", f"{status} {note}".strip())
        decision = apply_commands(view, (command,), policy, actor="cli")
        if decision.outcome is Outcome.REJECTED:
            raise CommandRejected("; ".join(decision.reasons))
        apply_in_session(session, app, decision, None, app.clock.now(), actor="cli")
        return f"{case.ref}: {view.status} -> {case.status}"
