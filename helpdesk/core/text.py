"""Text from a mail made safe to show and to write into a header — pure.

A display name or a file name is shown to people who decide by what they see, so
nothing in it may change how the rest is shown or hide itself: no controls, no bidi
embeddings, overrides or isolates, no zero-width or tag characters, no line breaks.
"""
from __future__ import annotations

import unicodedata

# Controls, format characters (the bidi embeddings, overrides and isolates
# U+202A-U+202E and U+2066-U+2069, marks, zero-width spaces, tag characters),
# surrogates (bytes no charset could read), and line and paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Format characters that spell words: Persian, Indic scripts and emoji need them.
_JOINERS = frozenset({"\u200c", "\u200d"})


def visible(text: str) -> str:
    """*text* without the characters of ``_INVISIBLE`` (the joiners aside)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c for c in text
                   if c in _JOINERS or unicodedata.category(c) not in _INVISIBLE)


def one_line(text: str) -> str:
    """Every run of whitespace (line breaks included) made one space."""
    return " ".join(text.split())


def display_name(text: str) -> str:
    """A display name made one harmless line."""
    return " ".join(filter(None, (visible(word) for word in text.split())))


def shown(value: str, limit: int = 120) -> str:
    """*value* safe to show in an event, a log line or a terminal: one line, every
    control, format (bidi) or separator character written as an escape, and cut."""
    out = []
    for char in value[:limit]:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out) + ("…" if len(value) > limit else "")
