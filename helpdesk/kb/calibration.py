"""Where a score stops being worth a customer's time: ``min_score: auto``.

A wrong suggestion costs trust (the customer reads an article that does not
answer them, then waits for us anyway), so the threshold is set from how often
something is suggested for a question the knowledge base cannot answer.

How ``AUTO_MIN_SCORE`` was chosen (``make bench``, bench/README.md): on the
StackFAQ set, each fifth of the articles in turn is left out of the index, which
makes its questions unanswerable; the threshold is the smallest score that at
most ``FALSE_SUGGESTION_RATE`` of those unanswerable questions reach
(``threshold_for``). Scores are normalised by the index (``index`` module), which
is what lets one number serve an admin's knowledge base of 5 articles or of
5,000; the bench prints the rate the shipped value gives, so a change to the
index that moves the scores shows up there.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

FALSE_SUGGESTION_RATE = 0.10  # at most this share of unanswerable questions get a suggestion
AUTO_MIN_SCORE = 1.65  # threshold_for(FALSE_SUGGESTION_RATE, ...) on the bench set, rounded up


def threshold_for(rate: float, unanswerable_top_scores: Sequence[float]) -> float:
    """The lowest threshold at which at most ``rate`` of the unanswerable questions
    (their best score each) would still get a suggestion."""
    if not 0.0 <= rate < 1.0:
        raise ValueError("rate is a fraction in [0, 1)")
    ranked = sorted(unanswerable_top_scores, reverse=True)
    allowed = math.floor(rate * len(ranked))  # this many may stay at or above it
    if allowed >= len(ranked):
        return 0.0
    return ranked[allowed] + 1e-4  # just above the first one that must be refused


def min_score(setting: float | str) -> float:
    """The configured ``knowledge_base.min_score`` as a number."""
    return AUTO_MIN_SCORE if setting == "auto" else float(setting)
