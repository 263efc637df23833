"""Rank articles for a text: BM25F over title, tags, summary and body, with stemming.

Why this and not the database's full-text search: it must work the same for
SQLite and PostgreSQL deployments, and PostgreSQL's ``ts_rank`` ranks well below
BM25 (README, Knowledge base). Why not SQLite's FTS5 in memory: its ``bm25()``
weights whole columns after the fact, while BM25F weights each field's term
frequency before saturation (a word in the title counts as three in the body,
not as three separate matches), and the score normalisation below needs the
index's IDF statistics, which FTS5 does not expose. A knowledge base is small (a
few thousand articles at most), so a plain inverted index in Python, rebuilt
when the folder changes, answers a mail in a few milliseconds at 1,000 articles
(``make bench``).

Scores are normalised so that one threshold means the same for every knowledge
base (see ``calibration``): the raw BM25F sum is divided by the IDF of a word
that only one article has, ``log(1 + (N - 0.5) / 1.5)``. A score of 1.0 is then
"as good as one match of a word only this article has", whatever the number of
articles N; raw BM25 grows with log N and could not share a threshold.
"""
from __future__ import annotations

import heapq
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import Stemmer

from helpdesk.kb.articles import Article, plain

K1 = 1.2  # term-frequency saturation: the textbook value, not tuned on the benchmark set
B = 0.75  # length normalisation: the textbook value
# A word in the title or the tags says more about what an article answers than one
# deep in its body. 3x is the usual BM25F title boost; the bench shows what it buys.
FIELD_WEIGHTS: Mapping[str, float] = {"title": 3.0, "tags": 3.0, "summary": 1.0, "body": 1.0}
# A word in more than this share of the articles finds nothing by itself (see ``search``).
COMMON_SHARE = 0.2
COMMON_FLOOR = 50  # ...and never in a small knowledge base, where every word may count

# English function words: they match everything and mean nothing here. (Short on
# purpose: "not", "no" and the like stay, since "cannot log in" needs its "not".)
STOP_WORDS = frozenset("""
a about above after again all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into
is it its itself just me more most my myself of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself
yourselves hello hi thanks thank please regards dear best
""".split())

_WORD = re.compile(r"\w+")
_stem = Stemmer.Stemmer("english").stemWord


@lru_cache(maxsize=65536)
def _term(word: str) -> str:
    return _stem(word)


def terms(text: str) -> list[str]:
    """The index terms of a text: lower-cased words, no stop words, stemmed."""
    return [_term(w) for w in _WORD.findall(text.lower())
            if len(w) > 1 and w not in STOP_WORDS]


def article_fields(article: Article) -> dict[str, str]:
    return {"title": article.title, "tags": " ".join(article.tags),
            "summary": article.summary, "body": plain(article.body)}


@dataclass(frozen=True, slots=True)
class Hit:
    article: Article
    score: float  # normalised (see the module docstring); higher is better


class Index:
    """An immutable inverted index over some articles. Build a new one when they change."""

    def __init__(self, articles: Iterable[Article],
                 fields: Callable[[Article], Mapping[str, str]] = article_fields,
                 weights: Mapping[str, float] = FIELD_WEIGHTS) -> None:
        self.articles = list(articles)
        counted = [{f: Counter(terms(text)) for f, text in fields(a).items()}
                   for a in self.articles]
        count = len(self.articles)
        average = {f: max(1.0, sum(sum(c[f].values()) for c in counted) / max(1, count))
                   for f in weights}
        frequency: Counter[str] = Counter(t for c in counted for t in set().union(*c.values()))
        self._unit = math.log(1 + (count - 0.5) / 1.5)  # the IDF of a word one article has
        # Per term, each article's share of the score, precomputed: a search only adds.
        self._postings: dict[str, dict[int, float]] = defaultdict(dict)
        self._common = max(COMMON_FLOOR, int(count * COMMON_SHARE))
        for number, per_field in enumerate(counted):
            length = {f: sum(per_field[f].values()) for f in weights}
            for term in set().union(*per_field.values()):
                weight = sum(
                    w * per_field[f][term] / (1 - B + B * length[f] / average[f])
                    for f, w in weights.items() if per_field[f][term])
                idf = math.log(1 + (count - frequency[term] + 0.5) / (frequency[term] + 0.5))
                self._postings[term][number] = idf * weight / (K1 + weight) / self._unit

    def __len__(self) -> int:
        return len(self.articles)

    def search(self, text: str, category: str | None = None, limit: int = 10) -> list[Hit]:
        """The best ``limit`` articles of ``category`` (None: all) for ``text``, best first.

        Speed: the articles are found by the query's rarer words; a word that a large
        share of the articles have (``COMMON_SHARE``) only adds to the score of
        articles found that way, which costs a look-up per candidate instead of a
        pass over most of the index. An article that shares nothing but such words
        with the text is left out: it could not reach a useful score anyway.
        """
        found = [p for term in set(terms(text)) if (p := self._postings.get(term))]
        rare = [p for p in found if len(p) <= self._common] or found
        common = [p for p in found if len(p) > self._common] if rare is not found else []
        scores: dict[int, float] = defaultdict(float)
        for postings in rare:
            for number, share in postings.items():
                scores[number] += share
        for postings in common:
            if len(postings) < len(scores):
                for number, share in postings.items():
                    if number in scores:
                        scores[number] += share
            else:
                for number in scores:
                    scores[number] += postings.get(number, 0.0)
        best = heapq.nsmallest(limit, ((-s, n) for n, s in scores.items()
                                       if self.articles[n].in_category(category)))
        return [Hit(self.articles[n], round(-s, 4)) for s, n in best]
