"""Which case a mail belongs to, in the order SPEC.md fixes (pure).

1. In-Reply-To / References name a Message-ID the case sent or received;
2. it was sent to the case's reply address (whose token must be right);
3. its subject carries the case's tag.

Only a Message-ID we generated (keyed, ``refs.is_own_message_id``) is as good as a
reply address. One the customer's client made was seen by everyone on their Cc,
so a match on it counts no more than a typed subject tag: after the reply address,
and from a stranger it never joins silently (``decide``).

The shell looks up the candidates (one query each, for just this mail's ids,
address and tags); this module only chooses among them.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MatchedBy(StrEnum):
    MESSAGE_ID = "message_id"  # one of our own Message-IDs
    REPLY_ADDRESS = "reply_address"
    THEIR_MESSAGE_ID = "their_message_id"  # a Message-ID someone else made (the customer's)
    SUBJECT_TAG = "subject_tag"


# Matches anyone could make: a stranger using them does not join silently.
WEAK_MATCHES = frozenset({MatchedBy.THEIR_MESSAGE_ID, MatchedBy.SUBJECT_TAG})


@dataclass(frozen=True, slots=True)
class CaseView:
    """What the core needs to know of an existing case."""

    id: int
    ref: str
    category: str
    lifecycle: str
    status: str
    subject: str
    requester: str
    requester_domain: str
    participants: frozenset[str]
    undeliverable: frozenset[str] = frozenset()
    assignee: str | None = None
    suggested: tuple[str, ...] = ()  # slugs of the articles its acknowledgement suggested
    notice_held: bool = False  # its new-case staff notice has not gone yet (hold_staff_notice)


@dataclass(frozen=True, slots=True)
class Candidates:
    by_message_id: CaseView | None = None  # named one of our own Message-IDs
    by_reply_address: CaseView | None = None
    by_subject_tag: CaseView | None = None
    by_their_message_id: CaseView | None = None  # named a Message-ID we did not make

    @property
    def views(self) -> tuple[CaseView, ...]:
        return tuple(v for v in (self.by_message_id, self.by_reply_address,
                                 self.by_their_message_id, self.by_subject_tag) if v)


@dataclass(frozen=True, slots=True)
class Match:
    case: CaseView
    by: MatchedBy


def match_case(candidates: Candidates) -> Match | None:
    if candidates.by_message_id:
        return Match(candidates.by_message_id, MatchedBy.MESSAGE_ID)
    if candidates.by_reply_address:
        return Match(candidates.by_reply_address, MatchedBy.REPLY_ADDRESS)
    if candidates.by_their_message_id:
        return Match(candidates.by_their_message_id, MatchedBy.THEIR_MESSAGE_ID)
    if candidates.by_subject_tag:
        return Match(candidates.by_subject_tag, MatchedBy.SUBJECT_TAG)
    return None


def is_known_sender(case: CaseView, sender: str,
                    public_domains: frozenset[str] = frozenset()) -> bool:
    """May this sender join ``case`` on the strength of a match anyone could make (a typed
    subject tag, a Message-ID the customer made)? A participant, or a colleague of the
    requester: same domain, unless that is a public mail domain (everyone has gmail.com).
    Staff are the caller's question (``Policy.is_staff_for``)."""
    domain = sender.rpartition("@")[2]
    return sender in case.participants or (
        domain == case.requester_domain and domain not in public_domains)


@dataclass(frozen=True, slots=True)
class StaffDirectory:
    """Staff are listed by address (``agent@x``) or by domain (``@x``)."""

    entries: frozenset[str]

    def is_staff(self, address: str) -> bool:
        address = address.lower()
        return address in self.entries or f"@{address.rpartition('@')[2]}" in self.entries

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(sorted(e for e in self.entries if not e.startswith("@")))
