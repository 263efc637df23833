"""What the shell can verify about who sent an inbound mail (SPEC, Round 2: Trust).

Two proofs, in this order:

1. the mail was sent to a staff reply address (``support+CC-000042.s.<token>@…``)
   whose token is keyed with its From address: only the staff member that address
   was made for ever received it, so the From is theirs;
2. our MTA's ``Authentication-Results`` report DMARC (or aligned DKIM) passed for the
   From domain (``helpdesk.core.trust.authenticate`` decides which headers count).

The first needs the secret key, which is why it is checked here and not in the core.
"""
from __future__ import annotations

from collections.abc import Iterable

from helpdesk.core.decide import Policy
from helpdesk.core.model import InboundMessage
from helpdesk.core.refs import parse_staff_reply_address, staff_reply_token
from helpdesk.core.trust import SenderTrust, authenticate


def sender_trust(msg: InboundMessage, policy: Policy, secret: bytes,
                 authserv_ids: Iterable[str]) -> SenderTrust:
    if msg.sender and answers_staff_reply_address(msg, policy, secret):
        return SenderTrust(True, "staff_reply_address", "")
    return authenticate(msg.trace, msg.sender, authserv_ids)


def answers_staff_reply_address(msg: InboundMessage, policy: Policy, secret: bytes) -> bool:
    for address in (*msg.envelope_recipients, *msg.to, *msg.cc):
        parsed = parse_staff_reply_address(address)
        if parsed and parsed[0] in policy.own_addresses and \
                parsed[2] == staff_reply_token(secret, parsed[1], msg.sender):
            return True
    return False
