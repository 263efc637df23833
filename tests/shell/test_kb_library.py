"""The knowledge-base room on real files: articles, the index, the live library, the checks."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpdesk.kb.articles import load_articles, parse_article
from helpdesk.kb.check import check
from helpdesk.kb.index import Index
from helpdesk.kb.library import QUERY_WORDS, RESCAN_EVERY, KnowledgeBase, query_text


def write(folder: Path, slug: str, text: str) -> Path:
    path = folder / f"{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


PRINTER = """---
title: The printer smokes
tags: [printer, smoke, fire]
categories: [customer_care]
---

# Ignored heading

Unplug the printer first, then open the rear cover and let it cool down.
"""


def test_front_matter_or_the_heading_and_first_paragraph_make_title_and_summary():
    a = parse_article("hardware/printer", PRINTER)
    assert (a.slug, a.title, a.tags, a.categories) == (
        "hardware/printer", "The printer smokes", ("printer", "smoke", "fire"), ("customer_care",))
    assert a.summary == "Unplug the printer first, then open the rear cover and let it cool down."
    assert a.url is None and a.body.startswith("# Ignored heading")
    bare = parse_article("reset", "# Reset your *password*\n\nUse the [reset page](x.md).\n")
    assert (bare.title, bare.summary, bare.categories) == (
        "Reset your *password*", "Use the reset page.", ())
    assert parse_article("plain", "no heading at all").title == "plain"


def test_a_broken_file_is_reported_and_the_others_still_load(tmp_path):
    write(tmp_path, "good", PRINTER)
    write(tmp_path, "sub/bad-yaml", "---\ntitle: [unclosed\n---\nbody")
    write(tmp_path, "unknown-key", "---\ntitel: typo\n---\nbody")
    (tmp_path / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    write(tmp_path, ".hidden/ignored", "# not an article")
    articles, problems = load_articles(tmp_path)
    assert [a.slug for a in articles] == ["good"]
    assert sorted(p.slug for p in problems) == ["latin1", "sub/bad-yaml", "unknown-key"]
    assert "titel" in str(next(p for p in problems if p.slug == "unknown-key"))


def test_the_index_ranks_by_meaning_words_and_filters_by_category():
    articles = [parse_article("printer", PRINTER),
                parse_article("password", "---\ntitle: Reset your password\n---\nUse the form."),
                parse_article("invoice", "---\ntitle: A copy of an invoice\ncategories: [billing]\n"
                                         "---\nAsk billing.")]
    index = Index(articles)
    hits = index.search("Our printer is smoking since this morning!")
    assert [h.article.slug for h in hits][:1] == ["printer"]  # stemming: smoking ~ smoke
    assert index.search("the of and to") == []  # stop words alone match nothing
    assert [h.article.slug for h in index.search("invoice copy", "billing")] == ["invoice"]
    assert index.search("invoice copy", "customer_care") == []


def test_normalised_scores_do_not_grow_with_the_size_of_the_knowledge_base():
    """The same perfect match scores about the same among 3 articles or among 300:
    what lets one min_score serve every knowledge base (raw BM25 grows with log N)."""
    target = parse_article("printer", PRINTER)

    def filler(n: int) -> list:
        return [parse_article(f"f{i}", f"---\ntitle: Topic {i} alpha{i}\n---\nbeta{i} gamma{i}")
                for i in range(n)]
    small = Index([target, *filler(2)]).search("printer smoke")[0].score
    large = Index([target, *filler(299)]).search("printer smoke")[0].score
    assert 0.8 < large / small < 1.25


def test_the_library_notices_additions_edits_and_removals_without_a_restart(tmp_path):
    clock = [0.0]
    kb = KnowledgeBase(tmp_path, "https://docs.example.com/kb/", monotonic=lambda: clock[0])
    assert kb.search("printer smoke") == []
    path = write(tmp_path, "printer", PRINTER)
    assert kb.search("printer smoke") == []  # looked at the folder a moment ago
    clock[0] += RESCAN_EVERY
    [hit] = kb.search("printer smoke")
    assert (hit.slug, hit.title, hit.url) == (
        "printer", "The printer smokes", "https://docs.example.com/kb/printer")
    path.write_text(PRINTER.replace("title: The printer smokes", "title: Smoke from the printer\n"
                                    "url: https://elsewhere.example/p"))
    clock[0] += RESCAN_EVERY
    [hit] = kb.search("printer smoke")
    assert (hit.title, hit.url) == ("Smoke from the printer", "https://elsewhere.example/p")
    assert kb.get("printer").title == "Smoke from the printer"
    path.unlink()
    clock[0] += RESCAN_EVERY
    assert kb.search("printer smoke") == [] and kb.get("printer") is None


def test_the_query_is_the_subject_and_the_first_part_of_the_description_without_quotes():
    text = query_text("Printer", "It smokes.\n\nOn Mon, X wrote:\n> an old quoted mail\n")
    assert text == "Printer\nIt smokes."
    long = " ".join(f"w{i}" for i in range(500))
    assert query_text("S", long).split()[-1] == f"w{QUERY_WORDS - 1}"


def test_check_finds_dead_links_unknown_categories_and_duplicates(tmp_path):
    write(tmp_path, "a", "---\ntitle: Same\ncategories: [sales]\nurl: ftp://x/y\n---\n"
                         "See [b](b.md), [gone](gone.md), [web](https://x.example/) "
                         "and [c](sub/c.md).")
    write(tmp_path, "b", "# same\n\nbody")
    write(tmp_path, "B", "# Other\n\nbody")
    write(tmp_path, "sub/c", "# C\n\nBack to [a](../a.md).")
    articles, problems = load_articles(tmp_path)
    found = check(articles, problems, None, ["customer_care"])
    assert "a: url 'ftp://x/y' is not an absolute http(s) link" in found
    assert "a: unknown category 'sales' (known: customer_care)" in found
    assert "a: link to 'gone.md': no such article" in found
    assert "b: no url, and knowledge_base.base_url is not set" in found
    assert "duplicate title: a, b" in found
    assert "duplicate slug: B, b" in found
    assert not any("sub/c" in p and "link" in p for p in found)  # ../a.md resolves
    assert check([], [], None, []) == []


@pytest.mark.parametrize("folder", [None, Path("/nonexistent/kb")])
def test_no_folder_means_no_suggestions(folder):
    kb = KnowledgeBase(folder, None)
    assert kb.suggest_for("Printer", "smoke", "customer_care") == () and kb.articles() == []
