"""The SMTP listener takes mail for our addresses and their reply addresses only."""
from __future__ import annotations

import pytest

from helpdesk.core.envelope import is_our_recipient

OURS = frozenset({"support@example.com", "billing@example.com", "connections@example.com"})


@pytest.mark.parametrize("address", [
    "support@example.com", "Billing@Example.COM", "support+CC-000042.k7f3qabc@example.com",
    "support+CC-000042.s.k7f3qabcde@example.com", "connections+anything@example.com",
])
def test_our_addresses_and_their_plus_extensions_are_taken(address):
    assert is_our_recipient(address, OURS)


@pytest.mark.parametrize("address", [
    "victim@gmail.com", "support@example.com.evil.example", "support@evil.example",
    "supportx@example.com", "x+support@example.com", "support", "@example.com",
    "support@", "", "support+cc@evil.example", "postmaster@example.com",
])
def test_anything_else_is_not(address):
    assert not is_our_recipient(address, OURS)
