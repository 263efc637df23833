"""Self-service (SPEC, Round 2: Knowledge base) — pure.

The shell searches the knowledge base (``helpdesk.kb``) and hands the core the
candidate articles; the core decides which to show, and recognises a customer's
``solved`` reply. Decisions the SPEC leaves open, fixed here:

* Only lifecycles that have ``resolved`` get suggestions (Connections has none:
  an activation request is not answered by an article).
* ``solved`` resolves a case in ``open``, ``in_progress`` and ``waiting``: the
  customer says the problem is gone, whoever was working on it; the staff who
  would get its notices are told (the assignee, else the category's notify list).
  In ``resolved`` it changes nothing (it must not reopen the case, as any other
  reply would). In a final status it opens no new case: it is kept on the old one.
* The staff notice of a new case is held (``hold_staff_notice``) only when the
  acknowledgement suggested something: without a suggestion there is nothing the
  customer could solve it with, so holding would only delay staff. A reply that is
  not ``solved`` while it is held notifies staff at once, as any reply does, and
  that notice takes the place of the held one (it shows the request too).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from helpdesk.core.commands import strip_quoted


@dataclass(frozen=True, slots=True)
class Suggestion:
    slug: str
    title: str
    url: str
    score: float
    summary: str = ""


@dataclass(frozen=True, slots=True)
class SelfServicePolicy:
    suggestions: int = 0  # at most this many per acknowledgement; 0: none
    min_score: float = 0.0  # below it nothing is suggested
    hold_staff_notice: timedelta = timedelta(0)


def choose(candidates: tuple[Suggestion, ...], policy: SelfServicePolicy,
           has_resolved: bool) -> tuple[Suggestion, ...]:
    """The suggestions to show: the best ones at or above the threshold, at most
    ``policy.suggestions``, and none for a lifecycle without ``resolved``."""
    if not has_resolved or policy.suggestions <= 0:
        return ()
    good = sorted((s for s in candidates if s.score >= policy.min_score),
                  key=lambda s: -s.score)
    return tuple(good[:policy.suggestions])


_SOLVED = re.compile(r"^#?solved\.?$", re.IGNORECASE)


def says_solved(text: str) -> bool:
    """True when the first line of the reply, quoted text aside, is ``solved`` or
    ``#solved`` (any letter case, a trailing period allowed)."""
    for line in strip_quoted(text).splitlines():
        if line.strip() and not line.lstrip().startswith(">"):
            return bool(_SOLVED.match(line.strip()))
    return False
