"""What one stranger's mail may make us send (SPEC, Round 2: Trust, "No amplification") — pure.

The support address answers anyone, so without bounds it is an amplifier: a mail with
ten third parties in Cc and a victim in Reply-To made eleven acknowledgements to
people who never wrote to us, each quoting the sender's text. The bounds:

- ``admit``: one inbound mail causes mail to at most ``limits.recipients_per_mail``
  addresses. Staff are not counted (they are ours, and hear of every case), and mail
  steered by verified staff, the command line or the timers is not bounded at all:
  the bound is on what a mail from outside can cause;
- ``new_case_limit``: a sender, and the sender's domain, open at most
  ``limits.new_cases_per_sender`` cases per window; a public mail domain (gmail.com)
  is never counted as one sender; a sender, like every recipient, is counted by
  ``mailbox`` (``victim+1@`` and ``v.ictim@gmail.com`` are one);
- ``excerpt``: an acknowledgement quotes at most ``limits.quote_chars`` of the text;
- ``reply_to_may_replace_from``: Reply-To names the requester only when it cannot
  point our answer at a victim.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from helpdesk.core.trust import SenderTrust


def admit(recipients: Iterable[str], counted: frozenset[str], limit: int,
          is_staff: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """(who may get a mail, who may not) when ``counted`` addresses already got one
    because of the same inbound mail. An address counts once however many mails it gets."""
    admitted, refused = [], []
    seen = set(counted)
    for address in recipients:
        if is_staff(address) or address in seen or len(seen) < limit:
            admitted.append(address)
            if not is_staff(address):
                seen.add(address)
        else:
            refused.append(address)
    return admitted, refused


@dataclass(frozen=True, slots=True)
class OpenedCases:
    """How many cases a sender, and the sender's domain, opened in the last ``window``."""

    window: timedelta
    by_sender: int
    by_domain: int


def new_case_limit(opened: Iterable[OpenedCases], rates: Iterable[tuple[int, timedelta]],
                   sender: str, public_domains: frozenset[str]) -> str | None:
    """Why ``sender`` may not open another case now, or None. ``opened`` has one entry
    per window of ``rates`` (the shell counts, this decides)."""
    counts = {o.window: o for o in opened}
    domain = sender.rpartition("@")[2].lower()
    for limit, window in rates:
        found = counts.get(window)
        if found is None:
            continue
        if found.by_sender >= limit:
            return f"new-cases-per-sender: {limit} per {span(window)} from {sender}"
        if domain not in public_domains and found.by_domain >= limit:
            return f"new-cases-per-sender: {limit} per {span(window)} from @{domain}"
    return None


# Providers that ignore dots in the local part: ``v.ictim@gmail.com`` is ``victim@``'s inbox.
_DOTLESS_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def mailbox(address: str) -> str:
    """The inbox an address reaches, as the limits count it: without its ``+tag``
    (RFC 5233 subaddressing: ``victim+1@`` and ``victim+2@`` are ``victim@``), and
    at Gmail without dots. Otherwise each variant had limits of its own, and one
    person's inbox could be sent as much as a stranger liked."""
    local, at, domain = address.lower().rpartition("@")
    local = local.partition("+")[0] or local
    if domain in _DOTLESS_DOMAINS:
        local = local.replace(".", "") or local
    return f"{local}{at}{domain}"


def excerpt(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text``, cut at a line or word end when one is
    near, and marked as cut: what an acknowledgement quotes of the customer's words."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    for boundary in ("\n", " "):
        at = cut.rfind(boundary)
        if at >= limit * 3 // 4:
            cut = cut[:at]
            break
    return cut.rstrip() + "\n[…]"


def reply_to_may_replace_from(reply_to: str, sender: str, trust: SenderTrust) -> bool:
    """Reply-To names the requester instead of From only when it cannot be a stranger's
    way of aiming our acknowledgement at a victim: it is in the From domain (a web form
    sending for a colleague), or the From domain vouched for the mail (DMARC passed)."""
    same_domain = reply_to.rpartition("@")[2].lower() == sender.rpartition("@")[2].lower()
    return bool(sender) and (same_domain or (trust.verified and trust.via == "dmarc"))


def span(window: timedelta) -> str:
    """``1h``, ``10m``, ``1d``: a window as the config spells it."""
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
