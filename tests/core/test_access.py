"""Who may see which case, and what asks for the case list (helpdesk.core.access),
and the `#cases` decision (pure)."""
from __future__ import annotations

import pytest

from helpdesk.core.access import (
    Directory,
    Scope,
    asks_for_case_list,
    customer_sees_message,
    effective_scope,
    may_see,
    ref_query,
    viewer_for,
)
from helpdesk.core.matching import StaffDirectory

DIRECTORY = Directory(staff=StaffDirectory(frozenset({"agent@example.com", "@staff.example"})),
                      notify=frozenset({"connectivity@example.com"}),
                      public_domains=frozenset({"gmail.com"}))


@pytest.mark.parametrize("address,staff,company", [
    ("agent@example.com", True, None), ("bob@staff.example", True, None),
    ("connectivity@example.com", True, None), ("ana@customer.example", False, "customer.example"),
    ("ann@gmail.com", False, None), ("Ana@Customer.Example", False, "customer.example"),
])
def test_viewer_staff_and_company(address, staff, company):
    viewer = viewer_for(address, DIRECTORY)
    assert (viewer.staff, viewer.company) == (staff, company)


def test_no_company_without_company_domains():
    off = Directory(staff=StaffDirectory(frozenset()), company_domains=False)
    assert viewer_for("ana@customer.example", off).company is None


@pytest.mark.parametrize("address,requested,scope", [
    ("agent@example.com", None, Scope.ALL), ("agent@example.com", "mine", Scope.MINE),
    ("agent@example.com", "bogus", Scope.ALL),
    ("ana@customer.example", None, Scope.MINE), ("ana@customer.example", "all", Scope.MINE),
    ("ana@customer.example", "company", Scope.COMPANY), ("ann@gmail.com", "company", Scope.MINE),
])
def test_effective_scope(address, requested, scope):
    assert effective_scope(requested, viewer_for(address, DIRECTORY)) is scope


def test_may_see():
    ana = viewer_for("ana@customer.example", DIRECTORY)
    assert may_see(ana, "CC-000001", {"ana@customer.example"}, "elsewhere.example")
    assert may_see(ana, "CC-000002", {"bo@customer.example"}, "customer.example")
    assert not may_see(ana, "CC-000003", {"eve@other.example"}, "other.example")
    ann = viewer_for("ann@gmail.com", DIRECTORY)
    assert not may_see(ann, "CC-000004", {"zed@gmail.com"}, "gmail.com")
    assert may_see(viewer_for("agent@example.com", DIRECTORY), "CC-000003", set(), "x")
    linked = viewer_for("ana@customer.example", DIRECTORY, only_case="CC-000001")
    assert may_see(linked, "cc-000001", {"ana@customer.example"}, "customer.example")
    assert not may_see(linked, "CC-000002", {"ana@customer.example"}, "customer.example")
    staff_by_link = viewer_for("agent@example.com", DIRECTORY, only_case="CC-000001")
    assert not staff_by_link.staff  # a case link never grants staff powers


@pytest.mark.parametrize("subject,text,asks", [
    ("#cases", "", True), ("#CASES", "hello", True), ("Re: hello", "\n\n#cases\nthanks", True),
    ("", "#cases.", True), ("my #cases", "", False), ("hello", "please #cases", False),
    ("hello", "first line\n#cases", False), ("#casesfoo", "", False),
])
def test_asks_for_case_list(subject, text, asks):
    assert asks_for_case_list(subject, text) is asks


@pytest.mark.parametrize("text,ref", [
    ("CC-000042", "CC-000042"), ("cc-42", "CC-000042"), ("[BL-000007]", "BL-000007"),
    ("CC42", "CC-000042"), ("printer", None), ("42", None), ("CC-", None),
])
def test_ref_query(text, ref):
    assert ref_query(text) == ref


def test_customers_see_only_what_they_received_or_wrote():
    assert customer_sees_message("in", "new") and customer_sees_message("in", "reply")
    assert customer_sees_message("out", "ack") and customer_sees_message("out", "relay")
    for direction, kind in (("in", "staff"), ("in", "machine"), ("out", "staff_notice"),
                            ("out", "command_error"), ("out", "manual_review"),
                            ("in", "something_new")):
        assert not customer_sees_message(direction, kind)
