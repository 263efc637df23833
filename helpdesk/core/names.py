"""What an admin types for a status or a category, read as its machine name (pure).

``cases list --status "Partner's feedback required"`` and ``--category billing`` both
work: a machine name or a label, in any case. Anything else is refused with the
names that would have worked, so a typo never quietly lists nothing.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from helpdesk.core import lifecycle
from helpdesk.core.lifecycle import Lifecycle


class UnknownName(ValueError):
    """The text names nothing; the message lists what it could have named."""


def find_category(text: str, labels: Mapping[str, str]) -> str:
    """The category (machine name -> label, as configured) that ``text`` names."""
    wanted = text.strip().casefold()
    for name, label in labels.items():
        if wanted in (name.casefold(), label.casefold()):
            return name
    known = ", ".join(f"{name} ({label})" for name, label in labels.items())
    raise UnknownName(f"unknown category {text!r}; one of: {known}")


def find_status(text: str, lifecycles: Iterable[Lifecycle]) -> str:
    """The status of one of ``lifecycles`` that ``text`` names (name or label)."""
    cycles = tuple(dict.fromkeys(lifecycles))
    for lc in cycles:
        if found := lifecycle.find_status(lc, text):
            return found
    known = {name: label for lc in cycles for name, label in lifecycle.STATUSES[lc].items()}
    listed = ", ".join(f"{name} ({label})" for name, label in known.items())
    raise UnknownName(f"unknown status {text!r}; one of: {listed}")
