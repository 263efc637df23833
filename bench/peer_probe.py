"""Run django-helpdesk's ``get_email`` with one probe (this file runs under the peer's
own interpreter, bench/.peer-venv, with the project's settings on PYTHONPATH).

    python bench/peer_probe.py OUT.json

The probe notes ``time.monotonic()`` when the first IMAP FETCH is sent (the same
clock as the SMTP server's acknowledgements in the bench process) and when the
command ends; it changes nothing else.
"""
from __future__ import annotations

import imaplib
import json
import sys
import time


def main() -> None:
    out = sys.argv[1]
    facts: dict[str, float | None] = {"first_fetch": None}
    original = imaplib.IMAP4.fetch

    def fetch(self: imaplib.IMAP4, *args: object) -> object:
        if facts["first_fetch"] is None:
            facts["first_fetch"] = time.monotonic()
        return original(self, *args)

    imaplib.IMAP4.fetch = fetch  # type: ignore[method-assign]
    facts["started"] = time.monotonic()
    import django
    from django.core.management import call_command
    django.setup()
    call_command("get_email", quiet=True)
    facts["end"] = time.monotonic()
    with open(out, "w") as f:
        json.dump(facts, f)


if __name__ == "__main__":
    main()
