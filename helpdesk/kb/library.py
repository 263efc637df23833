"""The knowledge base as the helpdesk uses it: always current, searched per category.

``KnowledgeBase`` keeps the articles and their index in memory and notices edits,
additions and removals without a restart: at most once per ``RESCAN_EVERY`` it
compares the folder's file names, sizes and modification times with what it
indexed (a few ``stat`` calls, no reading), and rebuilds only when they differ.
One instance is shared by the daemon's threads; a rebuild swaps in a new
immutable index under a lock, so a search never sees half an index.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpdesk.core.commands import strip_quoted
from helpdesk.core.selfservice import Suggestion
from helpdesk.kb.articles import Article, Problem, is_web_link, load_articles
from helpdesk.kb.index import Index

RESCAN_EVERY = 1.0  # seconds between two looks at the folder
QUERY_WORDS = 80  # "the first part of the description": this many words of it
CANDIDATES = 10  # what a search hands on; the core keeps the best few above the threshold


@dataclass(frozen=True, slots=True)
class _Snapshot:
    signature: tuple[tuple[str, int, int], ...]
    index: Index
    problems: tuple[Problem, ...]
    by_slug: dict[str, Article] = field(default_factory=dict)


class KnowledgeBase:
    def __init__(self, folder: Path | None, base_url: str | None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.base_url = (base_url or "").rstrip("/")
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._snapshot = _Snapshot((), Index(()), ())
        self._looked_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    # ------------------------------------------------------------------ reading

    def articles(self) -> list[Article]:
        return list(self._current().index.articles)

    def problems(self) -> list[Problem]:
        """The files that could not be read as articles (``helpdesk kb check``)."""
        return list(self._current().problems)

    def get(self, slug: str) -> Article | None:
        """The article ``slug`` (e.g. for the web portal's ``/kb/<slug>``), or None."""
        return self._current().by_slug.get(slug)

    def url_of(self, article: Article) -> str:
        """The article's own ``url`` when it is a web link (``kb check`` names one that
        is not), else ``base_url/<slug>``."""
        if article.url and is_web_link(article.url):
            return article.url
        return f"{self.base_url}/{article.slug}"

    # ------------------------------------------------------------------ searching

    def search(self, text: str, category: str | None = None,
               limit: int = CANDIDATES) -> list[Suggestion]:
        """The articles of ``category`` that best match ``text``, best first."""
        return [Suggestion(h.article.slug, h.article.title, self.url_of(h.article), h.score,
                           h.article.summary)
                for h in self._current().index.search(text, category, limit)]

    def suggest_for(self, subject: str, description: str, category: str) -> tuple[Suggestion, ...]:
        """The candidates for a new case: its subject and the first part of its description."""
        if not self.enabled:
            return ()
        return tuple(self.search(query_text(subject, description), category))

    # ------------------------------------------------------------------ keeping current

    def _current(self) -> _Snapshot:
        with self._lock:
            now = self._monotonic()
            if self._looked_at is None or now - self._looked_at >= RESCAN_EVERY:
                signature = self._signature()
                if self._looked_at is None or signature != self._snapshot.signature:
                    self._snapshot = self._load(signature)
                self._looked_at = now
            return self._snapshot

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        """Name, modification time and size of every article file (what ``article_files``
        lists), by ``os.scandir``: a look at 1,000 articles costs a few milliseconds."""
        if self.folder is None:
            return ()
        found: list[tuple[str, int, int]] = []
        pending = [self.folder]
        while pending:
            try:
                entries = list(os.scandir(pending.pop()))
            except OSError:  # removed or unreadable: the next look tells
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        pending.append(Path(entry.path))
                    elif entry.name.endswith(".md") and entry.is_file():
                        stat = entry.stat()
                        found.append((entry.path, stat.st_mtime_ns, stat.st_size))
                except OSError:
                    continue
        return tuple(sorted(found))

    def _load(self, signature: tuple[tuple[str, int, int], ...]) -> _Snapshot:
        if self.folder is None:
            return _Snapshot(signature, Index(()), ())
        articles, problems = load_articles(self.folder)
        return _Snapshot(signature, Index(articles), tuple(problems),
                         {a.slug: a for a in articles})


_SPACE = re.compile(r"\s+")


def query_text(subject: str, description: str) -> str:
    """What a new case is matched by: the subject, then the first ``QUERY_WORDS``
    words of the description without the thread it may quote."""
    words = _SPACE.split(strip_quoted(description).strip())
    return f"{subject}\n{' '.join(words[:QUERY_WORDS])}"
