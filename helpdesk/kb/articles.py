"""Read a folder of Markdown articles into ``Article`` values.

An article is ``<slug>.md`` anywhere under the folder (the slug is its path
without ``.md``, so ``billing/invoices.md`` is ``billing/invoices``), with an
optional YAML front matter between ``---`` lines: ``title`` (else the first
``# `` heading, else the slug), ``url``, ``categories`` (machine names; none means
every category), ``tags``, ``summary`` (else the first paragraph of the body).

A file that cannot be read or whose front matter is wrong is left out and
reported as a ``Problem``, never raised: one bad article must not take the
others (or the acknowledgement) down with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

FRONT_MATTER_KEYS = ("title", "url", "categories", "tags", "summary")
SUMMARY_CHARS = 300  # a summary made from the first paragraph is cut here

_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_HEADING = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKUP = re.compile(r"[*_`>#]+")


@dataclass(frozen=True, slots=True)
class Article:
    slug: str
    title: str
    url: str | None  # the article's own link; else the knowledge base's base_url/slug
    categories: tuple[str, ...]  # empty: every category
    tags: tuple[str, ...]
    summary: str
    body: str  # the Markdown without the front matter

    def in_category(self, category: str | None) -> bool:
        return category is None or not self.categories or category in self.categories


@dataclass(frozen=True, slots=True)
class Problem:
    slug: str
    message: str

    def __str__(self) -> str:
        return f"{self.slug}: {self.message}"


def article_files(folder: Path) -> list[Path]:
    """Every ``.md`` file under ``folder``, in a stable order; hidden files and folders
    are skipped."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*.md")
                  if p.is_file() and not any(part.startswith(".")
                                             for part in p.relative_to(folder).parts))


def is_web_link(url: str) -> bool:
    """An absolute http(s) link: the only kind an article's ``url`` may be (a
    ``javascript:`` or ``data:`` one would go into customers' mail)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def slug_of(folder: Path, path: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def load_articles(folder: Path) -> tuple[list[Article], list[Problem]]:
    """The articles of ``folder`` and what is wrong with the files that are not."""
    articles, problems = [], []
    for path in article_files(folder):
        slug = slug_of(folder, path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(slug, f"cannot read: {exc}"))
            continue
        try:
            articles.append(parse_article(slug, text))
        except ValueError as exc:
            problems.append(Problem(slug, str(exc)))
    return articles, problems


def parse_article(slug: str, text: str) -> Article:
    """One article from its Markdown; ``ValueError`` says what is wrong with the front matter."""
    meta, body = _split_front_matter(text)
    unknown = sorted(set(meta) - set(FRONT_MATTER_KEYS))
    if unknown:
        raise ValueError(f"unknown front matter key(s): {', '.join(unknown)} "
                         f"(known: {', '.join(FRONT_MATTER_KEYS)})")
    title = _text(meta, "title") or _first_heading(body) or slug
    summary = _text(meta, "summary") or _first_paragraph(body)
    return Article(slug=slug, title=title, url=_text(meta, "url") or None,
                   categories=_words(meta, "categories"), tags=_words(meta, "tags"),
                   summary=summary, body=body)


def _split_front_matter(text: str) -> tuple[dict[str, object], str]:
    text = text.removeprefix("\ufeff")
    found = _FRONT.match(text)
    if not found:
        return {}, text.strip()
    try:
        meta = yaml.safe_load(found[1]) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError("front matter must be a mapping (key: value lines)")
    return {str(k): v for k, v in meta.items()}, text[found.end():].strip()


def _text(meta: dict[str, object], key: str) -> str:
    value = meta.get(key)
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise ValueError(f"{key}: must be text")
    return " ".join(str(value).split())


def _words(meta: dict[str, object], key: str) -> tuple[str, ...]:
    value = meta.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise ValueError(f"{key}: must be a list of names")
    return tuple(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))


def _first_heading(body: str) -> str:
    found = _HEADING.search(body)
    return found[1].strip() if found else ""


def plain(markdown: str) -> str:
    """Markdown as plain words: link texts kept, markup characters dropped."""
    return " ".join(_MARKUP.sub(" ", _LINK.sub(r"\1", markdown)).split())


def _first_paragraph(body: str) -> str:
    for block in re.split(r"\n[ \t]*\n", body):
        lines = [line for line in block.strip().splitlines() if not _HEADING.match(line)]
        text = plain(" ".join(lines))
        if text:
            if len(text) <= SUMMARY_CHARS:
                return text
            cut = text[:SUMMARY_CHARS].rsplit(" ", 1)[0]
            return f"{cut}…"
    return ""
