"""``#commands`` at the top of a mail (pure).

Staff steer a case by starting their reply with lines such as ``#resolve Fixed
in 2.3`` or ``#status waiting``; a partner cancels a connection request with
``#cancel``. Commands are read only from the first non-blank lines, so a ``#``
further down (a quoted mail, a hashtag) is never taken for one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_COMMAND_LINE = re.compile(r"^#([a-z_]+)\b\s*(.*)$", re.IGNORECASE)

KNOWN = {"status", "waiting", "resolve", "close", "note", "assign", "cancel", "in_progress"}


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    argument: str


@dataclass(frozen=True, slots=True)
class ParsedBody:
    commands: tuple[Command, ...]
    text: str  # what is left for the participants: the body without the command lines
    unknown: tuple[str, ...]  # "#foo" lines that looked like commands but are not


def parse_commands(body: str) -> ParsedBody:
    lines = body.replace("\r\n", "\n").split("\n")
    commands: list[Command] = []
    unknown: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        m = _COMMAND_LINE.match(line)
        if not m:
            break
        name = m[1].lower()
        if name in KNOWN:
            commands.append(Command(name, m[2].strip()))
        else:
            unknown.append(line)
        index += 1
    if not commands and not unknown:
        return ParsedBody((), body.strip(), ())
    return ParsedBody(tuple(commands), "\n".join(lines[index:]).strip(), tuple(unknown))


# Where a mail client starts the quoted thread below a reply: Outlook's separators, and the
# attribution line before "> " quotes ("On Mon, 2 Nov 2026, X wrote:", "Am ... schrieb X:").
_SEPARATOR = re.compile(r"^(-{2,}\s*(original message|ursprüngliche nachricht|message d'origine)"
                        r"\s*-{2,}|_{10,})$", re.IGNORECASE)
_ATTRIBUTION = re.compile(r"^(on|am|le|el|op|il|den|på)\b.*:$", re.IGNORECASE | re.DOTALL)


def strip_quoted(body: str) -> str:
    """The reply without the thread it quotes at its end, for relaying a staff answer: the
    quoted mail is usually our own staff notice, which is not for the customer's eyes.

    Cuts at an Outlook separator line, or at a trailing block of "> " lines (blank lines
    allowed) together with the attribution line above it, which clients may wrap over two
    lines. Quotes with answers below them (inline replies) are kept: they are the answer.
    """
    lines = body.replace("\r\n", "\n").split("\n")
    for index, line in enumerate(lines):
        if _SEPARATOR.match(line.strip()):
            return "\n".join(lines[:index]).strip()
    start = len(lines)
    while start > 0 and (not lines[start - 1].strip() or lines[start - 1].lstrip().startswith(">")):
        start -= 1
    if not any(line.lstrip().startswith(">") for line in lines[start:]):
        return body.strip()
    for size in (1, 2):  # the attribution, on one line or wrapped over two
        attribution = " ".join(line.strip() for line in lines[max(0, start - size):start])
        if start >= size and _ATTRIBUTION.match(attribution):
            start -= size
            break
    return "\n".join(lines[:start]).strip()
