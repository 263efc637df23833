"""Which envelope recipients the SMTP listener takes (pure).

The listener is not a relay: it takes mail for our own addresses (the helpdesk's
and its categories') and for their ``+`` extensions, which carry our reply
addresses (``support+CC-000042.k7f3qabc@example.com``). Anything else is refused
at RCPT time, before a byte of the mail is read.
"""
from __future__ import annotations

from collections.abc import Set


def is_our_recipient(address: str, own_addresses: Set[str]) -> bool:
    """*address* is one of *own_addresses* (lower case), or one of them with a ``+``
    extension of its local part; compared without regard to case."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at or not local or not domain:
        return False
    base = local.partition("+")[0]
    return f"{base}@{domain}" in own_addresses
