"""``kb check``, ``kb search``, ``kb stats``: the knowledge base from the command line."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from helpdesk.cli import cli, config_error, open_app, print_json

if TYPE_CHECKING:
    from helpdesk.config import Settings
    from helpdesk.core.decide import Policy
    from helpdesk.kb.library import KnowledgeBase


@cli.group("kb")
def kb_group() -> None:
    """Check, search and measure the knowledge base (knowledge_base.path)."""


@dataclass(frozen=True)
class _Articles:
    """What ``kb check`` and ``kb search`` read: the config and the articles. No App, so
    no database is opened (or created, on a machine where the daemon never ran)."""

    settings: Settings
    knowledge_base: KnowledgeBase
    policy: Policy


def _articles(ctx: click.Context) -> _Articles:
    from helpdesk.config import ConfigError, load_settings
    from helpdesk.kb.library import KnowledgeBase
    from helpdesk.policy import core_policy
    try:
        settings = load_settings(ctx.obj["config"])
    except ConfigError as exc:
        config_error(str(exc))
    kb = settings.knowledge_base
    if kb.path is None:
        config_error("knowledge_base.path: not set (the folder of Markdown articles)")
    return _Articles(settings, KnowledgeBase(settings.resolve(kb.path), kb.base_url),
                     core_policy(settings))


@kb_group.command("check")
@click.pass_context
def kb_check(ctx: click.Context) -> None:
    """Check that every article parses, its links lead somewhere, and nothing is
    duplicated; exit 2 listing the problems."""
    from helpdesk.kb.check import check
    app = _articles(ctx)
    kb = app.knowledge_base
    assert kb.folder is not None
    if not kb.folder.is_dir():
        config_error(f"knowledge_base.path: {kb.folder} is not a folder")
    articles = kb.articles()
    problems = check(articles, kb.problems(), kb.base_url, app.settings.categories)
    for problem in problems:
        click.echo(f"kb: {problem}", err=True)
    if problems:
        sys.exit(2)
    click.echo(f"knowledge base OK: {len(articles)} article(s) in {kb.folder}")


@kb_group.command("search")
@click.argument("text")
@click.option("--category", help="As a new case of this category would (machine name).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def kb_search(ctx: click.Context, text: str, category: str | None, as_json: bool) -> None:
    """What a new case whose subject and description are TEXT would be suggested, best first."""
    from helpdesk.core.selfservice import choose
    app = _articles(ctx)
    if category is not None and category not in app.settings.categories:
        config_error(f"--category: no category {category!r} "
                     f"(known: {', '.join(app.settings.categories)})")
    has_resolved = category is None or "resolved" in _statuses(app.settings, category)
    found = choose(tuple(app.knowledge_base.search(text, category)), app.policy.self_service,
                   has_resolved)
    if as_json:
        print_json([{"slug": s.slug, "title": s.title, "url": s.url, "score": s.score}
                    for s in found])
        return
    for s in found:
        click.echo(f"{s.score:6.2f}  {s.slug:<30} {s.title}  <{s.url}>")
    if not found:
        click.echo(f"nothing scores {app.policy.self_service.min_score} or more "
                   "(knowledge_base.min_score): nothing would be suggested", err=True)


def _statuses(settings: Settings, category: str) -> tuple[str, ...]:
    from helpdesk.core import lifecycle
    from helpdesk.core.lifecycle import Lifecycle
    return lifecycle.statuses(Lifecycle(settings.categories[category].lifecycle))


@kb_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def kb_stats(ctx: click.Context, as_json: bool) -> None:
    """How often each article was suggested, and how often customers then solved the case."""
    from helpdesk.store.kb_stats import suggestion_stats
    app = open_app(ctx)
    slugs = [a.slug for a in app.knowledge_base.articles()]
    with app.sessions() as session:
        stats = suggestion_stats(session, slugs)
    if as_json:
        print_json(stats)
        return
    click.echo(f"cases with suggestions: {stats['cases_with_suggestions']}, "
               f"self-solved: {stats['self_solved']} ({stats['self_solved_rate']:.0%})")
    for row in stats["articles"]:
        click.echo(f"{row['suggested']:6d} suggested {row['self_solved']:6d} solved  {row['slug']}")
