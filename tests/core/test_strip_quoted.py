"""``strip_quoted``: a staff answer is relayed without the thread its mail client quoted."""
from __future__ import annotations

import pytest

from helpdesk.core.commands import strip_quoted

NOTICE = "> Hello,\n>\n> Case CC-000001 needs your attention.\n> \n"


@pytest.mark.parametrize("body, expected", [
    ("Fixed.\n\nOn Mon, 2 Nov 2026, Support wrote:\n" + NOTICE, "Fixed."),
    ("Fixed.\n\nOn Mon, Nov 2, 2026 at 9:00 AM Example Support <\nsupport@example.com> wrote:\n"
     + NOTICE, "Fixed."),
    ("Fixed.\nAm 02.11.2026 um 09:00 schrieb Support:\n" + NOTICE, "Fixed."),
    ("Fixed.\n\n-- \nAgent\n\n" + NOTICE, "Fixed.\n\n-- \nAgent"),
    ("Fixed.\n\n-----Original Message-----\nFrom: Support\nSent: Monday\n\nHello,",
     "Fixed."),
    ("Fixed.\n\n________________________________\nFrom: Support\n\n> x", "Fixed."),
    # inline answers below quotes are the answer: kept
    ("> Which model?\nA LaserJet 4.\n> Since when?\nMonday.\n",
     "> Which model?\nA LaserJet 4.\n> Since when?\nMonday."),
    ("No quote at all.\nOn Monday we ship:\n- toner\n",
     "No quote at all.\nOn Monday we ship:\n- toner"),
    ("", ""),
])
def test_strip_quoted(body: str, expected: str) -> None:
    assert strip_quoted(body) == expected
