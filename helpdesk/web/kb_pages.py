"""The knowledge base's own pages: ``/kb`` lists the articles, ``/kb/<slug>`` shows one.

They are what the links in every acknowledgement point to when ``knowledge_base.base_url``
is the portal's ``/kb`` (the embedded default), so they need no sign-in: an article is
documentation, not anybody's case. They read the same live folder the suggestions come
from, so an edit shows at once. Articles are the admin's Markdown, but rendered as if a
stranger wrote them: no raw HTML (markdown-it's ``html: False``), link schemes limited
(markdown-it refuses ``javascript:`` and friends), and nh3 cleans the result again.
"""
from __future__ import annotations

import re

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

from helpdesk.kb.articles import Article

_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
_LEADING_HEADING = re.compile(r"\A\s*#[ \t]+(.+?)[ \t#]*(?:\n|\Z)")


def article_html(article: Article) -> Markup:
    """The article's body as safe HTML, without the heading that repeats its title."""
    body = article.body
    heading = _LEADING_HEADING.match(body)
    if heading and heading[1].strip() == article.title:
        body = body[heading.end():]
    return Markup(nh3.clean(_MARKDOWN.render(body), link_rel="noopener noreferrer"))


def by_title(articles: list[Article]) -> list[Article]:
    return sorted(articles, key=lambda a: (a.title.casefold(), a.slug))
