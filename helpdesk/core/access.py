"""Who may see which case, in the portal and in `#cases` answers (pure).

A person is an address proven by a mailed link. Staff (the `staff` addresses and
domains, and every category's `notify` addresses) see every case. Anyone else sees
the cases they take part in (requester or participant) and, with `company_domains`,
the cases whose requester has their mail domain, unless that domain is a public mail
provider (gmail.com is no company). A sign-in through a case's own link is limited
to that case: it grants what replying to that mail grants, no more.

A case outside a person's scope is answered exactly like one that does not exist.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from helpdesk.core.matching import StaffDirectory


class Scope(StrEnum):
    MINE = "mine"  # cases I take part in
    COMPANY = "company"  # mine and my company's (same requester domain)
    ALL = "all"  # every case: staff only


@dataclass(frozen=True, slots=True)
class Directory:
    """Who counts as staff, and which domains are one company."""

    staff: StaffDirectory
    notify: frozenset[str] = frozenset()  # category notify addresses: staff too
    company_domains: bool = True
    public_domains: frozenset[str] = frozenset()

    def is_staff(self, address: str) -> bool:
        return self.staff.is_staff(address) or address.lower() in self.notify

    def company_of(self, address: str) -> str | None:
        """The address's domain when it stands for a company, else None."""
        if not self.company_domains:
            return None
        domain = address.rpartition("@")[2].lower()
        return None if not domain or domain in self.public_domains else domain


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in person."""

    address: str
    staff: bool = False
    company: str | None = None  # their company domain, or None
    only_case: str | None = None  # a sign-in through one case's link: that ref only


def viewer_for(address: str, directory: Directory, only_case: str | None = None) -> Viewer:
    address = address.lower()
    staff = directory.is_staff(address) and only_case is None
    return Viewer(address, staff=staff, company=None if staff else directory.company_of(address),
                  only_case=only_case)


def effective_scope(requested: str | None, viewer: Viewer) -> Scope:
    """The scope a list shows: `all` only for staff, `company` only with a company."""
    if viewer.staff:
        if requested in (Scope.MINE, Scope.COMPANY):
            return Scope(requested) if requested == Scope.MINE or viewer.company else Scope.MINE
        return Scope.ALL
    if requested == Scope.COMPANY and viewer.company:
        return Scope.COMPANY
    return Scope.MINE


def may_see(viewer: Viewer, ref: str, participants: frozenset[str] | set[str],
            requester_domain: str) -> bool:
    if viewer.only_case is not None:
        return ref.upper() == viewer.only_case.upper() and viewer.address in participants
    if viewer.staff:
        return True
    if viewer.address in participants:
        return True
    return viewer.company is not None and requester_domain.lower() == viewer.company


# Message kinds a participant received or wrote; everything else is for staff only
# (staff notices, command errors, machine mail, a staff member's own inbound mail,
# unverified mail and whatever kind is added later: shown only when listed here).
CUSTOMER_IN_KINDS = frozenset({"new", "reply"})
CUSTOMER_OUT_KINDS = frozenset({"ack", "relay", "reminder", "closure", "solution", "reopened",
                                "closed_notice", "status", "credentials", "duplicate",
                                "not_completed", "too_large"})


def customer_sees_message(direction: str, kind: str) -> bool:
    return kind in (CUSTOMER_IN_KINDS if direction == "in" else CUSTOMER_OUT_KINDS)


_CASES_LINE = re.compile(r"^\s*#cases\s*\.?\s*$", re.IGNORECASE)


def asks_for_case_list(subject: str, text: str) -> bool:
    """`#cases` as the subject, or as the first line of the text (SPEC: `#cases` by mail)."""
    if _CASES_LINE.match(subject or ""):
        return True
    for line in (text or "").replace("\r\n", "\n").split("\n"):
        if line.strip():
            return bool(_CASES_LINE.match(line))
    return False


_REF = re.compile(r"^\s*\[?([A-Za-z]{1,6})-?(\d{1,9})\]?\s*$")


def ref_query(text: str, width: int = 6) -> str | None:
    """`CC-000042`, `cc-42`, `[CC-000042]` -> `CC-000042`; anything else -> None."""
    found = _REF.match(text or "")
    if not found:
        return None
    return f"{found[1].upper()}-{int(found[2]):0{width}d}"
