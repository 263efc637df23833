"""Where the time goes: a pyinstrument session folded into a few named buckets.

Two views of the same samples, each a partition of the total:

- ``stage``: the outermost pipeline step a sample is in (fetch from IMAP, parse,
  find the case and decide, apply the decision, queue the acknowledgement,
  commit, deliver over SMTP, ...);
- ``kind``: the innermost kind of work (SQL statements, the fsync of a commit,
  template rendering, MIME building, mail-parser, IMAP or SMTP socket I/O,
  logging, ...).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rule = tuple[str, Callable[[str, str], bool]]


def _fn(name: str, path_part: str) -> Callable[[str, str], bool]:
    return lambda function, path: function == name and path_part in path


def _path(path_part: str) -> Callable[[str, str], bool]:
    return lambda function, path: path_part in path


# Innermost wins: the last of these met on the way down names the sample; the
# ones in OUTER_ONLY only count where no other stage was met yet, and nothing
# below a TERMINAL one changes it.
STAGES: list[Rule] = [
    ("IMAP: FETCH bodies", _fn("fetch", "imapclient/imapclient")),
    ("IMAP: login, SEARCH, MOVE", _path("imapclient/")),
    ("mailbox state (watermark)", _path("imap_state")),
    ("ingest: duplicate check", _fn("_duplicate_of", "inbound/ingest")),
    ("ingest: parse (mail-parser)", _fn("parse_message", "mail/parsing")),
    ("ingest: find case (load_context)", _fn("load_context", "store/cases")),
    ("ingest: decide (pure core)", _fn("decide", "core/decide")),
    ("ingest: queue mail (render, compose)", _fn("queue_mail", "outbound/queue")),
    ("ingest: store message + attachments", _fn("store_message", "store/apply")),
    ("ingest: apply decision (rest)", _fn("apply_decision", "store/apply")),
    ("ingest: commit", _fn("__exit__", "orm/session")),
    ("ingest: commit", _fn("do_commit", "sqlalchemy/engine/default")),
    ("ingest: rest", _fn("_ingest_pass", "inbound/ingest")),
    ("waiting for the sending process to finish", _fn("_join", "outbound/sending")),
    ("deliver: claim + record (DB)", _path("outbound/sender")),
    ("deliver: SMTP send", _path("outbound/transport")),
    ("logging", _path("logging/")),
]
OUTER_ONLY = {"IMAP: login, SEARCH, MOVE", "deliver: claim + record (DB)"}
# Nothing below these changes the stage.
TERMINAL = {"IMAP: FETCH bodies", "IMAP: login, SEARCH, MOVE", "ingest: commit",
            "deliver: SMTP send", "logging", "waiting for the sending process to finish"}

# Innermost wins: the last of these met on the way down names the sample.
KINDS: list[Rule] = [
    ("Python: helpdesk code", _path("helpdesk/")),
    ("SQLAlchemy (ORM, SQL compile)", _path("sqlalchemy/")),
    ("SQLite: execute", _fn("do_execute", "sqlalchemy/engine/default")),
    ("SQLite: commit (fsync)", _fn("do_commit", "sqlalchemy/engine/default")),
    ("IMAP socket + response parsing", _path("imapclient/")),
    ("IMAP socket + response parsing", _path("imaplib")),
    ("mail-parser + email (parse)", _path("mailparser/")),
    ("mail-parser + email (parse)", _path("/email/")),
    ("mail-parser + email (parse)", _fn("parse_message", "mail/parsing")),
    ("templates (Jinja2)", _path("jinja2/")),
    ("templates (Jinja2)", _path("mail/templates")),
    ("MIME build (email generator)", _path("mail/compose")),
    ("SMTP (smtplib)", _path("smtplib")),
    ("logging", _path("logging/")),
    ("attachment files", _fn("_write_blob", "store/apply")),
    ("waiting for the sending process to finish", _fn("_join", "outbound/sending")),
]


def _walk(frame: Any, stage: str | None, kind: str | None, stages: dict[str, float],
          kinds: dict[str, float]) -> None:
    function, path = frame.function or "", frame.file_path or ""
    for name, match in STAGES:
        if stage in TERMINAL or (stage is not None and name in OUTER_ONLY):
            continue
        if match(function, path):
            stage = name
    for name, match in KINDS:
        if match(function, path):
            kind = name
    own = frame.time - sum(child.time for child in frame.children)
    if own:
        stages[stage or "startup, other"] = stages.get(stage or "startup, other", 0.0) + own
        kinds[kind or "other (stdlib, startup)"] = kinds.get(kind or "other (stdlib, startup)", 0.0) + own
    for child in frame.children:
        _walk(child, stage, kind, stages, kinds)


def summarise(session: Any) -> dict[str, Any]:
    root = session.root_frame()
    stages: dict[str, float] = {}
    kinds: dict[str, float] = {}
    if root is not None:
        _walk(root, None, None, stages, kinds)
    total = sum(stages.values()) or 1.0
    return {
        "total": total,
        "stage": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
        "kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
    }


def render(summary: dict[str, Any], top: int = 12) -> str:
    total = summary["total"]
    lines = []
    for view in ("stage", "kind"):
        lines.append(f"  by {view}:")
        for name, seconds in list(summary[view].items())[:top]:
            lines.append(f"    {seconds / total:6.1%}  {seconds:7.2f}s  {name}")
    return "\n".join(lines)


def tree(session: Any, min_seconds: float = 0.2, only: str = "helpdesk/") -> str:
    """The call tree of *only* frames (others folded into their caller) above a threshold."""
    lines: list[str] = []

    def walk(frame: Any, depth: int) -> None:
        for child in sorted(frame.children, key=lambda f: -f.time):
            if child.time < min_seconds:
                continue
            mine = only in (child.file_path or "")
            if mine:
                lines.append(f"{'  ' * depth}{child.time:7.2f}s  {child.function}  "
                             f"{child.file_path_short}:{child.line_no}")
            walk(child, depth + 1 if mine else depth)

    root = session.root_frame()
    if root is not None:
        walk(root, 0)
    return "\n".join(lines)
