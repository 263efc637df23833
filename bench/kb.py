"""Knowledge-base retrieval: quality on a public labelled set, the threshold, and latency.

Quality (``measure_quality``) on bench/data/stackfaq.json (bench/data/README.md): every
question is searched among the 125 articles; recall@k is the share whose article is
among the first k. Unanswerable questions are made by holding articles out: the
articles are split into 5 folds, each fold in turn is left out of the index, and its
questions are searched among the others. The share of those that would still get a
suggestion at the shipped ``min_score: auto`` is the false-suggestion rate; the
threshold that keeps it at ``FALSE_SUGGESTION_RATE`` is computed afresh
(``threshold_for``), so a change to the index that moves the scores shows up next to
the shipped constant. The same is done with plain BM25 (one field, title and body
together, the same tokens) for comparison, and on random subsets of the articles to
show whether the normalised threshold holds for smaller knowledge bases.

Latency (``measure_latency``): ``KnowledgeBase.suggest_for`` -- what the pipeline
calls per mail -- on a folder of 1,000 Markdown articles (made from the set's answers,
seeded), with queries shaped like a mail: a subject and a description of ~60 words.
"""
from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from helpdesk.kb.articles import Article
from helpdesk.kb.calibration import AUTO_MIN_SCORE, FALSE_SUGGESTION_RATE, threshold_for
from helpdesk.kb.index import Index
from helpdesk.kb.library import KnowledgeBase

DATA = Path(__file__).resolve().parent / "data" / "stackfaq.json"
FOLDS = 5
SHOWN = 3  # knowledge_base.suggestions, the default


def load() -> tuple[list[Article], list[tuple[str, str]]]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    articles = [Article(a["slug"], a["title"], None, (), (), "", a["body"])
                for a in data["articles"]]
    return articles, [(q["text"], q["slug"]) for q in data["questions"]]


def plain_bm25(articles: Sequence[Article]) -> Index:
    """The baseline: Okapi BM25 over one field (title and body), same tokens and stemming."""
    return Index(articles, fields=lambda a: {"text": f"{a.title}\n{a.body}"},
                 weights={"text": 1.0})


METHODS: dict[str, Callable[[Sequence[Article]], Index]] = {
    "plain BM25": plain_bm25,
    "helpdesk (BM25F)": Index,
}


@dataclass
class Quality:
    method: str
    recall_at_1: float
    recall_at_3: float
    threshold: float  # where FALSE_SUGGESTION_RATE of unanswerable questions still get one
    answered_at_threshold: float  # answerable questions with the right article shown there
    false_at_auto: float  # unanswerable questions that get a suggestion at AUTO_MIN_SCORE
    answered_at_auto: float  # answerable questions with the right article shown at AUTO_MIN_SCORE


def measure_quality(method: str, articles: list[Article], questions: list[tuple[str, str]],
                    seed: int) -> Quality:
    build = METHODS[method]
    index = build(articles)
    found = [[h.article.slug for h in index.search(text, limit=3)] for text, _ in questions]
    r1 = statistics.mean(f[:1] == [slug] for f, (_, slug) in zip(found, questions))
    r3 = statistics.mean(slug in f for f, (_, slug) in zip(found, questions))
    unanswerable, answerable = held_out_scores(build, articles, questions, seed)
    threshold = threshold_for(FALSE_SUGGESTION_RATE, unanswerable)

    def answered(at: float) -> float:
        return statistics.mean(top >= at and right for top, right in answerable)
    return Quality(method, r1, r3, threshold, answered(threshold),
                   statistics.mean(top >= AUTO_MIN_SCORE for top in unanswerable),
                   answered(AUTO_MIN_SCORE))


def held_out_scores(build: Callable[[Sequence[Article]], Index], articles: list[Article],
                    questions: list[tuple[str, str]], seed: int
                    ) -> tuple[list[float], list[tuple[float, bool]]]:
    """(best score of each unanswerable question, (best score, right article among the
    first SHOWN) of each answerable one), over FOLDS held-out folds."""
    slugs = [a.slug for a in articles]
    random.Random(seed).shuffle(slugs)
    unanswerable: list[float] = []
    answerable: list[tuple[float, bool]] = []
    for fold in range(FOLDS):
        held = set(slugs[fold::FOLDS])
        index = build([a for a in articles if a.slug not in held])
        for text, slug in questions:
            hits = index.search(text, limit=SHOWN)
            top = hits[0].score if hits else 0.0
            if slug in held:
                unanswerable.append(top)
            else:
                answerable.append((top, slug in [h.article.slug for h in hits]))
    return unanswerable, answerable


def threshold_by_size(articles: list[Article], questions: list[tuple[str, str]], seed: int,
                      sizes: Sequence[int]) -> list[tuple[int, float, float]]:
    """(size, normalised threshold, the same in raw BM25F units) on random subsets of the
    articles: the FALSE_SUGGESTION_RATE threshold of a smaller knowledge base."""
    out = []
    for size in sizes:
        subset = random.Random(seed + size).sample(articles, size)
        keep = {a.slug for a in subset}
        unanswerable, _ = held_out_scores(Index, subset,
                                          [q for q in questions if q[1] in keep], seed)
        threshold = threshold_for(FALSE_SUGGESTION_RATE, unanswerable)
        held_out_size = size - size // FOLDS  # the index of each fold
        out.append((size, threshold, threshold * math.log(1 + (held_out_size - 0.5) / 1.5)))
    return out


@dataclass
class Latency:
    articles: int
    queries: int
    load_s: float  # first search: read and index every article
    rescan_ms: float  # a later look at the folder that finds nothing changed
    p50_ms: float
    p95_ms: float
    max_ms: float


def measure_latency(folder: Path, articles: list[Article], questions: list[tuple[str, str]],
                    count: int, queries: int, seed: int) -> Latency:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        base = articles[n % len(articles)]
        body = "\n\n".join(rng.choice(articles).body for _ in range(2))
        (folder / f"a{n:04d}.md").write_text(f"---\ntitle: {json.dumps(base.title)}\n---\n"
                                             f"{base.body}\n\n{body}\n", encoding="utf-8")
    clock = [0.0]
    kb = KnowledgeBase(folder, "https://docs.example.com/kb", monotonic=lambda: clock[0])
    started = time.perf_counter()
    kb.articles()
    load_s = time.perf_counter() - started
    by_slug: dict[str, list[str]] = {}
    for text, slug in questions:
        by_slug.setdefault(slug, []).append(text)
    samples = []
    for text, slug in rng.sample(questions, queries):
        description = " ".join([rng.choice(by_slug[slug]),
                                *rng.choice(articles).body.split()[:50]])
        started = time.perf_counter()
        kb.suggest_for(text, description, "customer_care")
        samples.append((time.perf_counter() - started) * 1000)
    clock[0] += 60  # the next search looks at the folder again (nothing changed)
    started = time.perf_counter()
    kb.articles()
    rescan_ms = (time.perf_counter() - started) * 1000
    samples.sort()
    return Latency(count, queries, load_s, rescan_ms, statistics.median(samples),
                   samples[int(0.95 * (len(samples) - 1))], samples[-1])
