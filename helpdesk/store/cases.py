"""Queries about cases: each looks up just what one mail or one command needs,
through an index, so the cost of a mail never grows with the number of cases."""
from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from helpdesk.core.access import asks_for_case_list
from helpdesk.core.amplification import OpenedCases, mailbox
from helpdesk.core.decide import Context, Policy, duplicate_key, route
from helpdesk.core.matching import Candidates, CaseView
from helpdesk.core.model import InboundMessage
from helpdesk.core.refs import (
    format_ref,
    is_own_message_id,
    parse_reply_address,
    parse_staff_reply_address,
    reply_token,
    staff_reply_token,
    subject_tags,
)
from helpdesk.core.trust import UNVERIFIED, SenderTrust
from helpdesk.store.orm import (
    Case,
    CaseLink,
    KeyValue,
    Message,
    Participant,
    RefCounter,
    Suggestion,
)

OPEN_CONNECTION_STATUSES = ("in_progress", "pending_seller")


def view(session: Session, case: Case, policy: Policy) -> CaseView:
    rows = session.scalars(select(Participant).where(Participant.case_id == case.id)).all()
    return CaseView(
        id=case.id, ref=case.ref, category=case.category,
        lifecycle=policy.category(case.category).lifecycle, status=case.status,
        subject=case.subject, requester=case.requester, requester_domain=case.requester_domain,
        participants=frozenset(p.address for p in rows),
        undeliverable=frozenset(p.address for p in rows if p.undeliverable),
        assignee=case.assignee,
        suggested=tuple(s.slug for s in suggestions(session, case.id)),
        notice_held=case.notice_due_at is not None,
    )


def suggestions(session: Session, case_id: int) -> list[Suggestion]:
    """What the acknowledgement of a case suggested, best first."""
    return list(session.scalars(select(Suggestion).where(Suggestion.case_id == case_id)
                                .order_by(Suggestion.rank)))


def by_ref(session: Session, ref: str) -> Case | None:
    return session.scalar(select(Case).where(Case.ref == ref.upper()))


def case_of_message_ids(session: Session, message_ids: tuple[str, ...]) -> Case | None:
    """The case that sent or received one of these Message-IDs (most specific first)."""
    if not message_ids:
        return None
    rows = session.execute(select(Message.message_id, Message.case_id)
                           .where(Message.message_id.in_(message_ids[:50]))).all()
    found = {mid: case_id for mid, case_id in rows}
    for mid in message_ids:
        if mid in found:
            return session.get(Case, found[mid])
    return None


def cases_of_thread(session: Session, message_ids: tuple[str, ...], domain: str,
                    secret: bytes) -> tuple[Case | None, Case | None]:
    """(the case one of our own Message-IDs names, the case one made by anyone else
    names): each the most specific such id's. Ours are keyed (``is_own_message_id``)."""
    if not message_ids:
        return None, None
    rows = session.execute(select(Message.message_id, Message.case_id)
                           .where(Message.message_id.in_(message_ids[:50]))).all()
    found = {mid: case_id for mid, case_id in rows}
    named = [mid for mid in message_ids if mid in found]
    own = next((mid for mid in named if is_own_message_id(mid, domain, secret)), None)
    theirs = next((mid for mid in named if mid != own), None) if own is None else None
    return (session.get(Case, found[own]) if own else None,
            session.get(Case, found[theirs]) if theirs else None)


def case_of_reply_address(session: Session, msg: InboundMessage, secret: bytes) -> Case | None:
    """The case whose reply address the mail was sent to: the case's own (its token
    keyed with the ref), or a staff member's (keyed with the sender's address too)."""
    for address in (*msg.envelope_recipients, *msg.to, *msg.cc):
        parsed = parse_reply_address(address)
        if parsed and parsed[2] == reply_token(secret, parsed[1]):
            if case := by_ref(session, parsed[1]):
                return case
        staff = parse_staff_reply_address(address)
        if staff and staff[2] == staff_reply_token(secret, staff[1], msg.sender):
            if case := by_ref(session, staff[1]):
                return case
    return None


def opened_cases(session: Session, sender: str, policy: Policy,
                 now: datetime) -> tuple[OpenedCases, ...]:
    """How many cases ``sender``, and its domain, opened in each new-case window; a public
    mail domain's count is not asked for (it is never one sender)."""
    sender = mailbox(sender)  # as ``Case.opened_by`` holds it
    domain = sender.rpartition("@")[2]
    counted = []
    for _, window in policy.new_cases_per_sender:
        since = now - window
        by_sender = session.scalar(select(func.count()).select_from(Case).where(
            Case.opened_by == sender, Case.created_at > since)) or 0
        by_domain = 0 if domain in policy.public_domains else session.scalar(
            select(func.count()).select_from(Case).where(
                Case.opened_by_domain == domain, Case.created_at > since)) or 0
        counted.append(OpenedCases(window, by_sender, by_domain))
    return tuple(counted)


def case_of_subject(session: Session, subject: str) -> Case | None:
    for ref in subject_tags(subject):
        if case := by_ref(session, ref):
            return case
    return None


def load_context(session: Session, msg: InboundMessage, policy: Policy, secret: bytes,
                 now: datetime | None = None, sender_trust: SenderTrust = UNVERIFIED) -> Context:
    """Everything ``decide`` needs about this mail's cases. ``now`` counts the sender's
    recent new cases (None: no mail that can open one, e.g. a web reply to a case);
    ``sender_trust`` is what the caller verified of the sender."""
    def as_view(case: Case | None) -> CaseView | None:
        return view(session, case, policy) if case else None

    own, theirs = cases_of_thread(session, msg.thread_ids, policy.hygiene.own_domain, secret)
    candidates = Candidates(
        by_message_id=as_view(own),
        by_reply_address=as_view(case_of_reply_address(session, msg, secret)),
        by_subject_tag=as_view(case_of_subject(session, msg.subject)),
        by_their_message_id=as_view(theirs),
    )
    bounced = None
    if msg.bounce is not None:
        original = msg.bounce.original_message_id
        bounced = as_view(case_of_message_ids(session, (original,) if original else ()))
        if bounced is None:  # a bounce that quotes only our subject line
            bounced = (candidates.by_message_id or candidates.by_their_message_id
                       or candidates.by_subject_tag)
    category = route(msg, policy)
    key = duplicate_key(msg, category)
    duplicate = None
    if key:
        duplicate = session.scalar(
            select(Case).where(Case.category == category.name,
                               Case.requester_domain == msg.sender.rpartition("@")[2],
                               Case.duplicate_key == key,
                               Case.status.in_(OPEN_CONNECTION_STATUSES)).limit(1))
    return Context(candidates=candidates, bounced_case=bounced, open_duplicate=as_view(duplicate),
                   sender_trust=sender_trust,
                   opened_cases=opened_cases(session, msg.sender, policy, now) if now else (),
                   sender_known=asks_for_case_list(msg.subject, msg.text)
                   and is_participant(session, msg.sender))


def is_participant(session: Session, address: str) -> bool:
    """Whether the address is the requester or a participant of any case."""
    return session.scalar(select(Participant.id).where(Participant.address == address.lower())
                          .limit(1)) is not None


def next_ref(session: Session, prefix: str) -> str:
    """Hand out the next number for a prefix inside the caller's transaction.

    The UPDATE takes the row's write lock, so concurrent writers queue up and never
    get the same number (and ``case.ref`` is unique besides).
    """
    bumped = session.execute(update(RefCounter).where(RefCounter.prefix == prefix)
                             .values(last=RefCounter.last + 1).returning(RefCounter.last)).scalar()
    if bumped is None:
        session.add(RefCounter(prefix=prefix, last=1))
        session.flush()
        bumped = 1
    return format_ref(prefix, bumped)


def linked_refs(session: Session, case_id: int) -> list[str]:
    out_ = select(Case.ref).join(CaseLink, CaseLink.linked_case_id == Case.id).where(
        CaseLink.case_id == case_id)
    in_ = select(Case.ref).join(CaseLink, CaseLink.case_id == Case.id).where(
        CaseLink.linked_case_id == case_id)
    return sorted(set(session.scalars(out_)) | set(session.scalars(in_)))


def reply_secret(session: Session, configured: str | None) -> bytes:
    """The key of the reply-address tokens: from config, else made once and kept."""
    if configured:
        return configured.encode()
    row = session.get(KeyValue, "reply_secret")
    if row is None:
        row = KeyValue(key="reply_secret", value=secrets.token_hex(32))
        session.add(row)
        session.flush()
    return row.value.encode()


def add_participant(session: Session, case: Case, address: str, name: str, role: str,
                    now: datetime) -> bool:
    exists = session.scalar(select(Participant.id).where(Participant.case_id == case.id,
                                                         Participant.address == address))
    if exists:
        return False
    session.add(Participant(case_id=case.id, address=address, name=name, role=role, added_at=now))
    session.flush()
    return True
