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
