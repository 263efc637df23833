"""Who wrote a mail, as far as we can tell (SPEC, Round 2: Trust) — pure.

A From header is a claim anyone can type. ``SenderTrust`` is what the shell could
establish about the sender of one inbound message (a trusted DMARC/DKIM result, a
staff-only reply address, a signed-in web session, the admin's command line), and
the core decides with it: only a verified staff sender steers a case.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SenderTrust:
    verified: bool = False
    via: str = ""  # dmarc | dkim | staff_reply_address | web | cli | "" when not verified
    reason: str = "no trusted authentication"  # why not, for the unverified-staff notice


UNVERIFIED = SenderTrust()
