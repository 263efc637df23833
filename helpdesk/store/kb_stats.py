"""How the knowledge base does: what was suggested, and what customers solved with it."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.store.orm import Event, Suggestion


def suggestion_stats(session: Session, current_slugs: Iterable[str]) -> dict[str, Any]:
    """``helpdesk kb stats``: per article how often it was suggested and in how many of
    those cases the customer then replied ``solved``. Articles of the knowledge base
    never suggested are listed with zeros; removed ones that were, are kept."""
    solved = set(session.scalars(select(Event.case_id).where(Event.type == "self_solved")))
    suggested: Counter[str] = Counter()
    solved_with: Counter[str] = Counter()
    with_suggestions: set[int] = set()
    for case_id, slug in session.execute(select(Suggestion.case_id, Suggestion.slug)):
        with_suggestions.add(case_id)
        suggested[slug] += 1
        solved_with[slug] += case_id in solved
    slugs = sorted(set(current_slugs) | set(suggested), key=lambda s: (-suggested[s], s))
    self_solved = len(solved & with_suggestions)
    return {
        "cases_with_suggestions": len(with_suggestions),
        "self_solved": self_solved,
        "self_solved_rate": round(self_solved / len(with_suggestions), 4) if with_suggestions
        else 0.0,
        "articles": [{"slug": s, "suggested": suggested[s], "self_solved": solved_with[s]}
                     for s in slugs],
    }
