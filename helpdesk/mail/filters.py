"""The filters of the mail templates (both environments; ``nl2br`` is for HTML only).

``datetime`` (``2026-11-21 14:03 UTC``; an optional ``strftime`` format), ``date``
(``2026-11-21``), ``quote`` (prefixes every line with ``> ``), ``wrap`` (re-wraps prose
paragraphs at 72 columns), ``nl2br`` (escapes, then turns line breaks into ``<br>``).
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from markupsafe import Markup, escape

WRAP_WIDTH = 72


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def format_datetime(value: Any, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """``2026-11-21 14:03 UTC``; naive datetimes are taken as UTC; ``None`` → ``""``."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _as_utc(value).strftime(fmt)
    if isinstance(value, date):
        return value.strftime(fmt.replace(" %H:%M", "").replace(" UTC", ""))
    return str(value)


def format_date(value: Any) -> str:
    """``2026-11-21`` (UTC); ``None`` → ``""``."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _as_utc(value).strftime("%Y-%m-%d")
    if isinstance(value, date):
        return value.strftime("%Y-%m-%d")
    return str(value)


def _lines(value: Any) -> list[str]:
    text = "" if value is None else str(value)
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    return [line.rstrip() for line in text.split("\n")] if text else []


def quote(value: Any, prefix: str = "> ") -> str:
    """Prefix every line with ``> `` (blank lines get a bare ``>``), as mail clients quote."""
    bare = prefix.rstrip()
    return "\n".join(prefix + line if line else bare for line in _lines(value))


def wrap(value: Any, width: int = WRAP_WIDTH) -> str:
    """Re-wrap prose at ``width`` columns.

    Paragraphs are separated by blank lines; the lines of a paragraph are joined and
    filled again. A line starting with ``- `` or ``* `` begins a list item (continued
    with a hanging indent). Words are never broken (long addresses stay whole). The
    result ends with a newline, for use as ``{% filter wrap %}...{% endfilter %}``.
    """
    out: list[str] = []
    para: list[str] = []
    bullet = ""

    def flush() -> None:
        nonlocal para, bullet
        if para:
            out.extend(_fill(" ".join(para).split(), width, bullet, " " * len(bullet)))
        para, bullet = [], ""

    lines = _lines(value)
    for line in lines:
        stripped = line.strip()
        if not stripped:
            flush()
            if out and out[-1] != "":
                out.append("")
            continue
        if stripped[:2] in ("- ", "* "):
            flush()
            bullet = stripped[:2]
            para.append(stripped[2:].strip())
        else:
            para.append(stripped)
    flush()
    while out and out[-1] == "":
        out.pop()
    # a block filter: end with a newline so that what follows starts a new line
    return "\n".join(out) + "\n" if out else ""


def _fill(words: list[str], width: int, first: str, rest: str) -> list[str]:
    """Greedy filling of whitespace-free *words*: what ``textwrap.wrap`` makes of them
    joined by spaces, with ``break_long_words`` and ``break_on_hyphens`` off (a word
    longer than a line stands alone on its own), at a fraction of its cost (every mail
    wraps its prose)."""
    if width <= 0:
        raise ValueError(f"invalid width {width!r} (must be > 0)")  # as textwrap says
    if not words:
        return [""]
    lines = []
    line, size = [first, words[0]], len(first) + len(words[0])
    for word in words[1:]:
        if size + 1 + len(word) <= width:
            line += (" ", word)
            size += 1 + len(word)
        else:
            lines.append("".join(line))
            line, size = [rest, word], len(rest) + len(word)
    lines.append("".join(line))
    return lines


def nl2br(value: Any) -> Markup:
    """Escape ``value``, then turn its line breaks into ``<br>`` (HTML only)."""
    lines = "\n".join(_lines(value))
    if not lines:
        return Markup("")
    return Markup(str(escape(lines)).replace("\n", "<br>\n"))
