"""What to do with one inbound mail: a ``Decision``, computed without any I/O.

The shell gathers a ``Context`` (the candidate cases for this mail, found by
index lookups), calls ``decide`` and applies the result in one transaction. The
order of concerns reads top to bottom in ``decide``: machine mail and bounces,
then threading, then who is writing (staff, participant, stranger), then the
lifecycle.

Who may steer a case (SPEC, Round 2: Trust): ``#commands`` run, and text is
relayed, only for a staff member of the case's category (``staff``, or the
category's ``notify`` list) whose mail was verified (``Context.sender_trust``: our
MTA's DMARC/DKIM result, a staff reply address, a web session, the command line).
Anyone else's mail, a staff address's included, never changes more than a
customer's reply would; an unverified one in a staff member's name is kept on the
case, internal, and staff are told. A mail from outside is also bounded in what it
may cause (``core.amplification``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum

from helpdesk.core import lifecycle
from helpdesk.core.access import asks_for_case_list
from helpdesk.core.addresses import NotAnAddress, check_address
from helpdesk.core.amplification import (
    OpenedCases,
    mailbox,
    new_case_limit,
    reply_to_may_replace_from,
)
from helpdesk.core.classify import HygienePolicy, machine_reasons
from helpdesk.core.commands import Command, parse_commands, strip_quoted
from helpdesk.core.lifecycle import Event, IllegalTransition, Lifecycle, Transition, Trigger
from helpdesk.core.matching import (
    WEAK_MATCHES,
    Candidates,
    CaseView,
    Match,
    StaffDirectory,
    is_known_sender,
    match_case,
)
from helpdesk.core.model import Bounce, InboundMessage, MailKind
from helpdesk.core.refs import base_address, normalise_subject, untagged_subject
from helpdesk.core.selfservice import SelfServicePolicy, Suggestion, choose, says_solved
from helpdesk.core.trust import UNVERIFIED, SenderTrust


class Outcome(StrEnum):
    NEW_CASE = "new_case"
    REPLY = "reply"
    STAFF_REPLY = "staff_reply"
    MACHINE = "machine"
    BOUNCE = "bounce"
    DUPLICATE_REQUEST = "duplicate_request"
    REJECTED = "rejected"
    IGNORED = "ignored"
    CASE_LIST = "case_list"  # `#cases`: answered with the sender's open cases, no case opened
    UNVERIFIED_STAFF = "unverified_staff"  # From a staff address, not shown to be theirs
    HELD = "held"  # over a limit: kept in the quarantine, nothing sent (failed retry later)


class Audience(StrEnum):
    PARTICIPANTS = "participants"  # everyone on the case who can still receive mail
    STAFF = "staff"  # the assignee, else the category's notify list, else all staff
    NOTIFY = "notify"  # the category's notify list, else all staff (never just the assignee)
    SENDER = "sender"  # only the author of the mail being decided


@dataclass(frozen=True, slots=True)
class CategoryPolicy:
    name: str
    prefix: str
    lifecycle: Lifecycle
    addresses: tuple[str, ...]
    has_activation: bool = False
    duplicate_key: str | None = None  # regex; group 1 identifies a connection
    notify: tuple[str, ...] = ()  # staff for this category's cases, told of what needs them


@dataclass(frozen=True, slots=True)
class Policy:
    categories: tuple[CategoryPolicy, ...]
    staff: StaffDirectory
    own_addresses: frozenset[str]
    hygiene: HygienePolicy
    unknown_sender: str = "new_case"  # new_case | join | reject
    participants_per_case: int = 20
    participants_per_message: int = 10
    require_staff_auth: bool = True  # false: a From header alone makes staff (lab setups)
    recipients_per_mail: int = 10  # outside addresses one mail from outside may cause mail to
    new_cases_per_sender: tuple[tuple[int, timedelta], ...] = ((5, timedelta(hours=1)),)
    public_domains: frozenset[str] = frozenset()  # never one sender, never one company
    self_service: SelfServicePolicy = SelfServicePolicy()

    def category(self, name: str) -> CategoryPolicy:
        return next(c for c in self.categories if c.name == name)

    def is_ours(self, address: str) -> bool:
        """One of our support addresses, or a case's or a staff member's reply address."""
        return base_address(address) in self.own_addresses

    def is_staff_for(self, category: str, address: str) -> bool:
        """Staff for the cases of ``category``: listed staff, and its ``notify`` addresses
        (they are sent its notices, so they may answer them)."""
        return self.staff.is_staff(address) or address.lower() in self.category(category).notify


@dataclass(frozen=True, slots=True)
class Context:
    candidates: Candidates = Candidates()
    bounced_case: CaseView | None = None  # the case whose outgoing mail this bounce is about
    open_duplicate: CaseView | None = None  # an open connection request with the same key
    sender_trust: SenderTrust = UNVERIFIED  # what the shell could verify of the sender
    sender_known: bool = False  # the sender takes part in some case (looked up for `#cases`)
    opened_cases: tuple[OpenedCases, ...] = ()  # per new_cases_per_sender window
    suggestions: tuple[Suggestion, ...] = ()  # knowledge-base candidates, best first


@dataclass(frozen=True, slots=True)
class Mail:
    kind: MailKind
    to: Audience
    note: str = ""
    relay_text: str = ""
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewCase:
    category: str
    status: str
    subject: str
    requester: str
    requester_name: str
    duplicate_key: str | None
    linked_to: CaseView | None = None
    link_reason: str | None = None  # reopened | unknown_sender
    opened_by: str = ""  # the From address's inbox (``mailbox``), what the limits count
    suggestions: tuple[Suggestion, ...] = ()  # shown in the acknowledgement
    hold_notice: bool = False  # the staff notice waits (hold_staff_notice) for self-service


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    case: CaseView | None = None
    new_case: NewCase | None = None
    store_as: MailKind | None = None
    add_participants: tuple[tuple[str, str], ...] = ()  # (address, display name)
    transitions: tuple[Transition, ...] = ()
    assign: str | None = None
    mails: tuple[Mail, ...] = ()
    events: tuple[tuple[str, dict[str, object]], ...] = ()
    reasons: tuple[str, ...] = ()
    bounce: Bounce | None = None
    run_activation: bool = False
    addresses: tuple[str, ...] = field(default=())  # support addresses the mail came to
    # Outside addresses its mails may reach in all (staff not counted); None: unbounded,
    # for what verified staff, the command line and the timers decide.
    recipient_limit: int | None = None
    drop_held_notice: str = ""  # why the held staff notice is not needed any more, if it is not


def route(msg: InboundMessage, policy: Policy) -> CategoryPolicy:
    """The category of the first of our addresses the mail names; else the first category."""
    for address in (*msg.to, *msg.cc, *msg.envelope_recipients):
        base = base_address(address)
        for category in policy.categories:
            if base in category.addresses:
                return category
    return policy.categories[0]


def support_addresses(msg: InboundMessage, policy: Policy) -> tuple[str, ...]:
    """The support addresses the mail came to. A reply address counts as the address it
    stands for: its token (a staff member's a secret) is never recorded."""
    return tuple(dict.fromkeys(base_address(a) for a in (*msg.to, *msg.cc,
                                                         *msg.envelope_recipients)
                               if policy.is_ours(a)))


def duplicate_key(msg: InboundMessage, category: CategoryPolicy) -> str | None:
    """What identifies a connection request: a configured key found in the mail, else
    the normalised subject. Only connections cases are checked for duplicates."""
    if category.lifecycle is not Lifecycle.connections:
        return None
    if category.duplicate_key:
        found = re.search(category.duplicate_key, f"{msg.subject}\n{msg.text}", re.IGNORECASE)
        if found:
            return found.group(1 if found.groups() else 0).strip().casefold()
    return normalise_subject(msg.subject) or None


def requester_of(msg: InboundMessage, policy: Policy, trust: SenderTrust = UNVERIFIED) -> str:
    """Reply-To wins over From (web forms send From themselves), unless it is us or could
    aim our answer at someone who never wrote (``reply_to_may_replace_from``)."""
    for address in msg.reply_to:
        if not policy.is_ours(address) and reply_to_may_replace_from(address, msg.sender, trust):
            return address
    return msg.sender


def decide(msg: InboundMessage, context: Context, policy: Policy) -> Decision:
    """What to do with ``msg``. Who wrote it is weighed first: verified staff of the
    category steer, and what they cause is not bounded; what anyone else's mail causes
    reaches at most ``policy.recipients_per_mail`` outside addresses."""
    match = match_case(context.candidates)
    category = match.case.category if match else route(msg, policy).name
    staff = policy.is_staff_for(category, msg.sender)
    verified_staff = staff and (context.sender_trust.verified or not policy.require_staff_auth)
    decision = _decide(msg, context, policy, match, staff, verified_staff)
    if verified_staff:
        return decision
    return replace(decision, recipient_limit=policy.recipients_per_mail)


def _decide(msg: InboundMessage, context: Context, policy: Policy, match: Match | None,
            staff: bool, verified_staff: bool) -> Decision:
    addresses = support_addresses(msg, policy)
    if msg.bounce is not None and msg.bounce.recipients:
        # A report naming no recipient says nothing about delivery: plain machine mail.
        return _bounce(msg, context)
    if reasons := machine_reasons(msg, policy.hygiene):
        if match:
            return Decision(Outcome.MACHINE, case=match.case, store_as=MailKind.MACHINE,
                            reasons=reasons, events=(("machine_mail", {
                                "from": msg.sender, "reasons": list(reasons)}),))
        return Decision(Outcome.MACHINE, reasons=reasons)
    if not requester_of(msg, policy, context.sender_trust):
        return Decision(Outcome.IGNORED, reasons=("no-sender: no usable From address",))
    if asks_for_case_list(msg.subject, msg.text) and not staff:
        return _case_list(context)
    if match is None:
        return _new_case(msg, context, policy, addresses, verified_staff)
    case = match.case
    if staff:
        if verified_staff:
            return staff_reply(case, msg, policy)
        return _unverified_staff(msg, case, context.sender_trust, addresses)
    if match.by in WEAK_MATCHES and not is_known_sender(case, msg.sender, policy.public_domains):
        return _stranger(msg, case, context, policy, addresses)
    return _participant_reply(msg, case, context, policy, addresses)


def _case_list(context: Context) -> Decision:
    """`#cases`: a known requester or participant gets the list and no case is opened.
    A stranger gets nothing at all: an answer to a forged From would be backscatter,
    and a case made of one word would only be noise for staff."""
    if not context.sender_known:
        return Decision(Outcome.IGNORED, reasons=("case-list: not a requester or participant",))
    return Decision(Outcome.CASE_LIST, mails=(Mail(MailKind.CASE_LIST, Audience.SENDER),))


def _bounce(msg: InboundMessage, context: Context) -> Decision:
    bounce = msg.bounce
    assert bounce is not None
    detail = {"recipients": [
        {"address": r.address, "action": r.action, "status": r.status,
         "diagnostic": r.diagnostic, "permanent": r.permanent} for r in bounce.recipients]}
    if context.bounced_case is None:
        return Decision(Outcome.BOUNCE, bounce=bounce, reasons=("bounce: no case of ours",))
    return Decision(Outcome.BOUNCE, case=context.bounced_case, store_as=MailKind.MACHINE,
                    bounce=bounce, events=(("bounce", detail),))


def _new_case(msg: InboundMessage, context: Context, policy: Policy,
              addresses: tuple[str, ...], verified_staff: bool = False,
              linked_to: CaseView | None = None, link_reason: str | None = None) -> Decision:
    category = route(msg, policy)
    existing = context.open_duplicate
    # The same connection asked for again by the requester's company: a duplicate. The
    # answer names that case and carries its reply address, so never for a stranger
    # (whoever shares a public mail domain with the requester is one).
    if existing is not None and linked_to is None and is_known_sender(
            existing, msg.sender, policy.public_domains):
        return Decision(Outcome.DUPLICATE_REQUEST, case=existing, store_as=MailKind.REPLY,
                        events=(("duplicate_request", {"from": msg.sender,
                                                       "subject": msg.subject}),),
                        mails=(Mail(MailKind.DUPLICATE, Audience.SENDER),), addresses=addresses)
    room = policy.participants_per_case - 1
    if not verified_staff:
        held = new_case_limit(context.opened_cases, policy.new_cases_per_sender, msg.sender,
                              policy.public_domains)
        if held:
            return Decision(Outcome.HELD, reasons=(held,), addresses=addresses)
        # Everyone it adds gets the acknowledgement: no more than one mail may reach.
        room = min(room, policy.recipients_per_mail - 1)
    requester = requester_of(msg, policy, context.sender_trust)
    # A case opened by a reply to another keeps the link, not the other's tag in its subject.
    subject = msg.subject if linked_to is None else untagged_subject(msg.subject)
    others, skipped = _new_participants(msg, policy, category.name, exclude={requester}, room=room)
    shown = choose(context.suggestions, policy.self_service, _has_resolved(category.lifecycle))
    hold = bool(shown) and bool(policy.self_service.hold_staff_notice)
    new = NewCase(category=category.name, status=lifecycle.INITIAL_STATUS[category.lifecycle],
                  subject=subject, requester=requester, requester_name=msg.sender_name,
                  duplicate_key=duplicate_key(msg, category), linked_to=linked_to,
                  link_reason=link_reason, opened_by=mailbox(msg.sender), suggestions=shown,
                  hold_notice=hold)
    notice = () if hold else (Mail(MailKind.STAFF_NOTICE, Audience.STAFF),)
    return Decision(
        Outcome.NEW_CASE, new_case=new, store_as=MailKind.NEW,
        add_participants=((requester, msg.sender_name), *others),
        mails=(Mail(MailKind.ACK, Audience.PARTICIPANTS), *notice),
        run_activation=category.has_activation, addresses=addresses,
        events=(("participants_limit", {"skipped": skipped}),) if skipped else (),
    )


def _has_resolved(lc: Lifecycle) -> bool:
    return "resolved" in lifecycle.statuses(lc)


def _new_participants(msg: InboundMessage, policy: Policy, category: str,
                      exclude: set[str] | frozenset[str],
                      room: int) -> tuple[tuple[tuple[str, str], ...], int]:
    """The people on To/Cc who join the case: never us, never staff, one address per
    inbox (``mailbox``: ``victim+1@`` ... ``victim+9@`` are one person), within the
    limits; and how many were left out by the limits."""
    found = []
    inboxes = {mailbox(a) for a in exclude}
    for address in dict.fromkeys((*msg.to, *msg.cc)):
        if mailbox(address) in inboxes or policy.is_ours(address) \
                or policy.is_staff_for(category, address):
            continue
        inboxes.add(mailbox(address))
        found.append((address, ""))
    chosen = tuple(found[:max(0, min(room, policy.participants_per_message))])
    return chosen, len(found) - len(chosen)


def _participant_reply(msg: InboundMessage, case: CaseView, context: Context, policy: Policy,
                       addresses: tuple[str, ...]) -> Decision:
    category = policy.category(case.category)
    solved = _has_resolved(category.lifecycle) and says_solved(msg.text)
    if lifecycle.is_final(category.lifecycle, case.status) and not solved:
        return _new_case(msg, context, policy, addresses, linked_to=case, link_reason="reopened")
    room = policy.participants_per_case - len(case.participants)
    joining = () if msg.sender in case.participants else ((msg.sender, msg.sender_name),)
    others, left_out = _new_participants(msg, policy, case.category,
                                         exclude=case.participants | {msg.sender},
                                         room=room - len(joining))
    add = (*joining, *others)[:max(0, room)]
    body = parse_commands(msg.text)
    cancel = any(c.name == "cancel" for c in body.commands)
    if solved:
        trigger = Trigger.self_solved
    elif cancel and category.lifecycle is Lifecycle.connections:
        trigger = Trigger.cancel
    else:
        trigger = Trigger.participant_reply
    try:
        step = lifecycle.transition(category.lifecycle, case.status, Event(trigger))
    except IllegalTransition as exc:
        step, events = None, (("reply_not_applied", {"reason": str(exc)}),)
    else:
        events = ()
    resolves = solved and step is not None and step.status != case.status
    if resolves:
        events += (("self_solved", {"by": msg.sender, "articles": list(case.suggested)}),)
    mails = _mails_of(step, note="cancelled by partner" if cancel else "") if step else ()
    skipped = left_out + len((*joining, *others)) - len(add)
    if skipped:
        events += (("participants_limit", {"skipped": skipped}),)
    return Decision(Outcome.REPLY, case=case, store_as=MailKind.REPLY, add_participants=add,
                    transitions=(step,) if step else (), events=events,
                    mails=mails, addresses=addresses,
                    drop_held_notice=_held_notice_dropped(case, resolves, mails))


def _held_notice_dropped(case: CaseView, resolves: bool, mails: tuple[Mail, ...]) -> str:
    """Solved first: no agent needs to look. A reply that notifies staff now: its notice
    takes the place of the held one."""
    if not case.notice_held:
        return ""
    if resolves:
        return "self_solved"
    return "reply" if any(m.kind is MailKind.STAFF_NOTICE for m in mails) else ""


def _stranger(msg: InboundMessage, case: CaseView, context: Context, policy: Policy,
              addresses: tuple[str, ...]) -> Decision:
    """A typed tag from someone unknown: anyone can type a number, so never join silently."""
    if policy.unknown_sender == "join":
        return _participant_reply(msg, case, context, policy, addresses)
    if policy.unknown_sender == "reject":
        return Decision(Outcome.REJECTED, case=case, reasons=(f"unknown-sender: {msg.sender}",),
                        events=(("unknown_sender_rejected", {"from": msg.sender}),))
    return _new_case(msg, context, policy, addresses, linked_to=case, link_reason="unknown_sender")


def _unverified_staff(msg: InboundMessage, case: CaseView, trust: SenderTrust,
                      addresses: tuple[str, ...]) -> Decision:
    """A mail in a staff member's name that could not be shown to be theirs: kept on the
    case as an internal message, and nothing else (no relay, no command, no status
    change, nobody joins); the category's staff are told once, with the reason."""
    return Decision(Outcome.UNVERIFIED_STAFF, case=case, store_as=MailKind.UNVERIFIED,
                    reasons=(f"unverified-staff: {trust.reason}",), addresses=addresses,
                    events=(("unverified_staff_mail", {"from": msg.sender,
                                                       "reason": trust.reason}),),
                    mails=(Mail(MailKind.UNVERIFIED_STAFF, Audience.NOTIFY, note=trust.reason),))


_STATUS_COMMANDS = {"waiting": "waiting", "resolve": "resolved", "close": "closed",
                    "in_progress": "in_progress"}


def staff_reply(case: CaseView, msg: InboundMessage, policy: Policy) -> Decision:
    body = parse_commands(strip_quoted(msg.text))  # never relay the quoted staff notice
    decision = apply_commands(case, body.commands, policy, body.unknown, actor=msg.sender)
    if decision.outcome is Outcome.REJECTED:  # an error: tell the staff member, change nothing
        return Decision(Outcome.STAFF_REPLY, case=case, store_as=MailKind.STAFF,
                        mails=decision.mails, events=decision.events)
    internal = any(c.name == "note" for c in body.commands)
    transitions = decision.transitions
    if not transitions and not internal:
        try:  # e.g. the first staff answer moves an `open` case to `in_progress`
            transitions = (lifecycle.transition(case.lifecycle, case.status,
                                                Event(Trigger.staff_reply)),)
        except IllegalTransition:
            transitions = ()
    mails, events = decision.mails, decision.events
    if internal:
        notes = [c.argument for c in body.commands if c.name == "note"]
        events += (("note", {"by": msg.sender, "text": "\n".join(filter(None, [*notes, body.text]))}),)
    elif body.text:
        mails = _tell_participants(mails, body.text)
        if not any(type_ == "relayed" for type_, _ in events):
            events += (("relayed", {"by": msg.sender}),)
    return Decision(Outcome.STAFF_REPLY, case=case, store_as=MailKind.STAFF,
                    transitions=transitions, assign=decision.assign,
                    mails=mails, events=events)


def _tell_participants(mails: tuple[Mail, ...], text: str) -> tuple[Mail, ...]:
    """Staff's words reach the participants in the first mail the change sends them (its
    templates print ``note``: the command's own text, then these words), or, when the
    change sends them none (``in_progress``, no change at all), as a plain relay."""
    for index, mail in enumerate(mails):
        if mail.to is Audience.PARTICIPANTS:
            said = replace(mail, note="\n\n".join(filter(None, (mail.note, text))),
                           relay_text="\n\n".join(filter(None, (mail.relay_text, text))))
            return (*mails[:index], said, *mails[index + 1:])
    return (*mails, Mail(MailKind.RELAY, Audience.PARTICIPANTS, note=text, relay_text=text))


def apply_commands(case: CaseView, commands: tuple[Command, ...], policy: Policy,
                   unknown: tuple[str, ...] = (), actor: str = "staff") -> Decision:
    """Staff commands (by mail or `cases set-status`) -> transitions, or an error decision.

    All or nothing: one unknown command or illegal transition rejects the lot,
    so a typo never half-applies.
    """
    category = policy.category(case.category)
    errors = [f"unknown command: {line}" for line in unknown]
    status, transitions, assign = case.status, [], None
    events: list[tuple[str, dict[str, object]]] = []
    for command in commands:
        target, note = _target(command, category.lifecycle)
        if command.name == "assign":
            # Only staff: the assignee gets the case's staff notices and may answer them.
            address = _plain_address(command.argument.strip())
            if not address:
                errors.append("#assign needs a staff address, e.g. #assign agent@example.com")
            elif not policy.is_staff_for(category.name, address):
                errors.append(f"#assign {address}: not a staff address; only staff can be assigned")
            else:
                assign = address
                events.append(("assigned", {"to": assign, "by": actor}))
            continue
        if target is None:
            continue
        if target == "":
            errors.append(f"#{command.name} needs a status name: one of "
                          + ", ".join(lifecycle.statuses(category.lifecycle)))
            continue
        try:
            step = lifecycle.transition(category.lifecycle, status, Event(Trigger.set_status, target))
        except IllegalTransition as exc:
            errors.append(str(exc))
            continue
        transitions.append(step)
        status = step.status
    if errors:
        return Decision(Outcome.REJECTED, case=case, reasons=tuple(errors),
                        mails=(Mail(MailKind.COMMAND_ERROR, Audience.SENDER, errors=tuple(errors)),),
                        events=(("command_rejected", {"errors": errors, "by": actor}),))
    note = "\n".join(n for c in commands for t, n in [_target(c, category.lifecycle)] if t and n)
    mails = tuple(m for step in transitions for m in _mails_of(step, note))
    if note and not any(m.to is Audience.PARTICIPANTS for m in mails):
        # A status change that carries a note tells the participants, even when the
        # status itself sends nothing (#status in_progress We are on it).
        mails = _tell_participants(mails, note)
        events.append(("relayed", {"by": actor}))
    return Decision(Outcome.STAFF_REPLY, case=case, transitions=tuple(transitions),
                    assign=assign, mails=mails, events=tuple(events))


def _plain_address(text: str) -> str:
    """*text* as one plain address (``core.addresses``), else "": never a route
    (``eve%evil.example@…``) that a mail to a staff domain would follow elsewhere."""
    try:
        return check_address(text)
    except NotAnAddress:
        return ""


def _mails_of(step: Transition, note: str = "") -> tuple[Mail, ...]:
    return tuple(Mail(kind, Audience.STAFF if kind in lifecycle.TO_STAFF else Audience.PARTICIPANTS,
                      note=note) for kind in step.sends)


def _target(command: Command, lc: Lifecycle) -> tuple[str | None, str]:
    """(the status a command asks for or None if it asks for none, its free-text note)."""
    if command.name == "status":
        # NAME is a machine name or a label, of one word or a few (`#status In progress`,
        # `#status Partner's feedback required`): the longest one recognised wins.
        words = command.argument.split(None, 5)
        for n in range(min(len(words), 5), 0, -1):
            if found := lifecycle.find_status(lc, " ".join(words[:n])):
                rest = command.argument.split(None, n)
                return found, rest[n].strip() if len(rest) > n else ""
        name, _, note = command.argument.partition(" ")
        return name.strip().lower(), note.strip()
    if command.name == "cancel":
        return "not_completed", command.argument or "cancelled"
    if command.name in _STATUS_COMMANDS:
        return _STATUS_COMMANDS[command.name], command.argument
    return None, ""
