"""Lay out a new site from the installed package alone: what ``helpdesk init`` writes.

A site is a folder with ``config/helpdesk.yaml`` (the embedded default: SQLite, the
SMTP listener, a Maildir outbox, every path relative to the config), ``templates/``
for the admin's overrides (a README, no copies of the built-in set: a copy would
hide every later fix to the original), ``kb/`` (the sample knowledge base, when the
package has one) and ``var/`` for the data. The source tree is such a site too.
"""
from __future__ import annotations

import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SITE = PACKAGE / "site"  # config/helpdesk.yaml is the source tree's config/helpdesk.yaml
KB_SAMPLES = PACKAGE / "samples" / "kb"
CONFIG = Path("config") / "helpdesk.yaml"


class SiteExists(Exception):
    """The folder already has a config; it is the admin's, never overwritten."""


def write_site(target: Path, kb_samples: Path = KB_SAMPLES) -> list[tuple[Path, str]]:
    """Write a site into ``target``; returns what was created, each with what it is for.

    Parts that exist already (an overrides folder, a knowledge base) are kept as they
    are. The config is written last, so a site whose making failed half-way can be
    made again.
    """
    config = target / CONFIG
    if config.exists():
        raise SiteExists(f"{config} exists; not overwritten (remove it to start afresh)")
    created: list[tuple[Path, str]] = []
    text = (SITE / CONFIG).read_text(encoding="utf-8")
    readme = target / "templates" / "README.md"
    if not readme.parent.exists():
        readme.parent.mkdir(parents=True)
        shutil.copyfile(SITE / "templates" / "README.md", readme)
        created.append((readme.parent, "your template overrides: see its README.md"))
    kb = target / "kb"
    if kb_samples.is_dir() and not kb.exists():
        shutil.copytree(kb_samples, kb)
        created.append((kb, "a sample knowledge base: Markdown articles to edit"))
    if kb.exists():  # the embedded default points at the package's samples: use the copy
        text = text.replace("path: ../helpdesk/samples/kb", "path: ../kb")
        if "knowledge_base:" not in text:
            text += "knowledge_base: {path: ../kb}\n"
    (target / "var").mkdir(mode=0o700, exist_ok=True)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")
    created.insert(0, (config, "the config, the embedded default: edit it to suit"))
    return created
