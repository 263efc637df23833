"""What ``helpdesk kb check`` finds wrong with a knowledge base.

Besides the files that do not parse: links that lead nowhere (an article's
``url`` that is not an absolute http(s) link, no ``base_url`` for articles
without one, a relative link in a body to an article that does not exist),
categories the config does not have, and duplicates: two titles a customer
could not tell apart, two slugs that differ only in letter case (one of them
is unreachable on a case-insensitive web server or file system).
"""
from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable
from urllib.parse import urlsplit

from helpdesk.kb.articles import Article, Problem, is_web_link

_MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def check(articles: list[Article], problems: Iterable[Problem], base_url: str | None,
          categories: Iterable[str]) -> list[str]:
    """Every problem, one line each; empty when the knowledge base is fine."""
    found = [str(p) for p in problems]
    known_categories = set(categories)
    slugs = {a.slug for a in articles}
    for article in articles:
        if article.url is not None and not is_web_link(article.url):
            found.append(f"{article.slug}: url {article.url!r} is not an absolute http(s) link")
        if article.url is None and not base_url:
            found.append(f"{article.slug}: no url, and knowledge_base.base_url is not set")
        for name in article.categories:
            if name not in known_categories:
                found.append(f"{article.slug}: unknown category {name!r} "
                             f"(known: {', '.join(sorted(known_categories))})")
        for target in _MD_LINK.findall(article.body):
            slug = _linked_slug(article.slug, target)
            if slug is not None and slug not in slugs:
                found.append(f"{article.slug}: link to {target!r}: no such article")
    found += _duplicates("title", {a.slug: a.title.casefold() for a in articles})
    found += _duplicates("slug", {a.slug: a.slug.casefold() for a in articles})
    return found


def _linked_slug(source: str, target: str) -> str | None:
    """The article a relative Markdown link points to, or None for anything else
    (web links, mail links, anchors, images and other files)."""
    if urlsplit(target).scheme or target.startswith(("#", "//", "/")):
        return None
    path = target.split("#", 1)[0]
    if not path.endswith(".md"):
        return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(source), path[:-3]))


def _duplicates(what: str, keys: dict[str, str]) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for slug, key in keys.items():
        groups[key].append(slug)
    return [f"duplicate {what}: {', '.join(sorted(slugs))}"
            for slugs in groups.values() if len(slugs) > 1]
