"""The overview behind the portal and the CLI: `#cases` by mail, the listing's
filters, sorting and paging, a fixed number of SQL statements, and the daemon
serving the portal."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from helpdesk.store.listing import CaseQuery, list_cases
from tests.servers.helpdesk import make_mail, staff_auth, stop_process, write_config
from tests.servers.smtp import free_port, wait_for
from tests.web.conftest import body_text, open_case, sign_in, web_config

ANA = "ana@customer.example"
BO = "bo@customer.example"


@contextmanager
def counted(engine):
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


# ----------------------------------------------------------------------------- #cases


def case_lists(desk, address):
    return [m for m in desk.sent_to(address) if m["X-Helpdesk-Case"] is None
            and "open cases" in body_text(m)]


def test_cases_by_mail_lists_mine_and_my_companys_open_cases(portal):
    mine = open_case(portal, ANA, "Printer on fire")
    colleague = open_case(portal, BO, "Invoice missing")
    closed = open_case(portal, ANA, "Old trouble")
    portal.ingest(make_mail("agent@example.com", "support@example.com", f"Re: [{closed}] x",
                            "#close\n", headers=staff_auth("agent@example.com")))
    other = open_case(portal, "eve@other.example", "Eve's case")
    portal.mta.handler.clear()
    outcome = portal.ingest(make_mail(ANA, "support@example.com", "#cases", "\n"))
    assert outcome.status == "case_list" and outcome.ref is None
    [answer] = case_lists(portal, ANA)
    text = body_text(answer)
    assert mine in text and "Printer on fire" in text and "Open" in text
    assert f"http://testserver/cases/{mine}" in text
    assert "customer.example" in text and colleague in text and "Invoice missing" in text
    assert closed not in text and other not in text
    assert answer["Auto-Submitted"] == "auto-replied"
    assert answer["In-Reply-To"] is not None
    assert [str(a) for a in answer["To"].addresses] == [ANA]
    assert len(portal.sent()) == 1  # no acknowledgement: no case was opened


def test_cases_as_the_first_line_works_too_and_public_domains_have_no_colleagues(desk_factory):
    desk = desk_factory(name="plain")  # without web: refs, subjects and statuses, no links
    mine = open_case(desk, "ann@gmail.com", "My order")
    theirs = open_case(desk, "zed@gmail.com", "Their order")
    desk.mta.handler.clear()
    outcome = desk.ingest(make_mail("ann@gmail.com", "support@example.com", "Hello",
                                    "#cases\n\nthanks\n"))
    assert outcome.status == "case_list"
    text = body_text(case_lists(desk, "ann@gmail.com")[0])
    assert mine in text and theirs not in text and "/cases/" not in text


def test_cases_from_a_stranger_gets_nothing_and_opens_nothing(portal):
    open_case(portal, ANA, "Printer on fire")
    portal.mta.handler.clear()
    outcome = portal.ingest(make_mail("mallory@evil.example", "support@example.com", "#cases"))
    assert outcome.status == "ignored" and "case-list" in outcome.reason
    assert portal.sent() == []
    assert len(json.loads(portal.cli("cases", "list", "--json").stdout)) == 1


def test_cases_from_a_machine_or_over_the_rate_limit_gets_nothing(portal):
    open_case(portal, ANA, "Printer on fire")
    portal.mta.handler.clear()
    auto = portal.ingest(make_mail(ANA, "support@example.com", "#cases",
                                   headers={"Auto-Submitted": "auto-replied"}))
    assert auto.status == "machine" and portal.sent() == []
    for _ in range(12):
        portal.ingest(make_mail(ANA, "support@example.com", "#cases"))
    # the acknowledgement counted too: 10 automatic mails per 10 minutes
    assert len(case_lists(portal, ANA)) == 9


# ----------------------------------------------------------------------------- listing


def fill(desk, n):
    refs = []
    for i in range(n):
        desk.clock.advance(minutes=1)
        refs.append(open_case(desk, f"user{i}@customer{i % 3}.example", f"Request {i}"))
    return refs


def test_cases_list_limit_and_offset_page_through_in_a_fixed_number_of_queries(desk):
    refs = fill(desk, 7)
    page = json.loads(desk.cli("cases", "list", "--asc", "--limit", "3", "--offset", "2",
                               "--json", check=True).stdout)
    assert [c["ref"] for c in page] == refs[2:5]
    assert page[0]["participants"] and page[0]["addresses"] == ["support@example.com"]
    assert desk.cli("cases", "list", "--limit", "0").returncode == 2
    counts = []
    for limit in (2, 7):
        with counted(desk.app.engine) as statements:
            from helpdesk.views import list_cases as view_list
            assert len(view_list(desk.app, limit=limit)) == limit
        counts.append(len(statements))
    with counted(desk.app.engine) as statements:
        view_list(desk.app)
    assert counts[0] == counts[1] == len(statements) <= 6


def test_listing_filters_sorts_and_searches(desk):
    refs = fill(desk, 6)
    desk.clock.advance(minutes=1)
    desk.ingest(make_mail("agent@example.com", "support@example.com", f"Re: [{refs[0]}] x",
                          "#close\n", headers=staff_auth("agent@example.com")))
    desk.clock.advance(minutes=1)
    desk.ingest(make_mail("agent@example.com", "support@example.com", f"Re: [{refs[1]}] x",
                          "#waiting\n", headers=staff_auth("agent@example.com")))
    with desk.app.sessions() as s:
        def refs_of(**kw):
            return [r.ref for r in list_cases(s, CaseQuery(**kw)).rows]
        assert refs[0] not in refs_of(open_only=True)
        assert refs_of(status="waiting") == [refs[1]]
        assert refs_of(q=refs[3].lower()) == [refs[3]]
        assert refs_of(q=refs[4][3:]) == [refs[4]]  # the number alone: 000005
        assert refs_of(q="request 5") == [refs[5]]
        assert refs_of(q="customer2.example") == [refs[2], refs[5]][::-1]
        assert refs_of(q="100%") == []  # LIKE wildcards are searched as text
        assert refs_of(sort="created", order="asc") == refs
        assert refs_of(sort="updated")[0] == refs[1]  # the last one touched
        ranked = refs_of(sort="status", order="asc")
        assert ranked.index(refs[1]) > ranked.index(refs[2]) and ranked[-1] == refs[0]
        page = list_cases(s, CaseQuery(limit=4, offset=4, sort="created", order="asc"), count=True)
        assert [r.ref for r in page.rows] == refs[4:] and page.total == 6


def test_the_list_page_filters_sorts_and_pages(portal, client_factory):
    portal.app.settings.web.__dict__["page_size"] = 5  # a small page for the test
    refs = fill(portal, 12)
    staff = client_factory()
    sign_in(staff, portal, "agent@example.com")
    page = staff.get("/cases?sort=created&order=asc").text
    shown = re.findall(r'<td data-label="Case" class="ref"><a href="/cases/([A-Z]+-\d+)"', page)
    assert shown == refs[:5] and "12 cases" in page and "page 1 of 3" in page
    second = re.search(r'href="([^"]*page=2[^"]*)" rel="next"', page)[1].replace("&amp;", "&")
    shown = re.findall(r'class="ref"><a href="/cases/([A-Z]+-\d+)"', staff.get(second).text)
    assert shown == refs[5:10]
    found = staff.get(f"/cases?q={refs[7]}").text
    assert re.findall(r'class="ref"><a href="/cases/([A-Z]+-\d+)"', found) == [refs[7]]
    assert "1 case" in found
    empty = staff.get("/cases?category=billing").text
    assert "No cases match." in empty
    assert staff.get("/cases?sort=evil&order=sideways&page=x").status_code == 200


def test_the_case_page_costs_the_same_statements_for_a_long_history(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    staff = client_factory()
    sign_in(staff, portal, "agent@example.com")
    with counted(portal.app.engine) as short:
        assert staff.get(f"/cases/{ref}").status_code == 200
    for i in range(6):
        portal.ingest(make_mail(ANA, "support@example.com", f"Re: [{ref}] x", f"More {i}.\n"))
    fill(portal, 5)
    with counted(portal.app.engine) as long:
        assert staff.get(f"/cases/{ref}").status_code == 200
    assert len(short) == len(long) <= 9, long  # staff: events and suggested articles too
    with counted(portal.app.engine) as listing:
        assert staff.get("/cases").status_code == 200
    assert len(listing) <= 4


# ----------------------------------------------------------------------------- serving


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "web"])
def test_the_daemon_serves_the_portal_and_stops_on_sigterm(tmp_path, command):
    from tests.servers.helpdesk import base_config, merge
    port = free_port()
    config = merge(base_config(tmp_path, None),
                   {**web_config(f"http://127.0.0.1:{port}", port),
                    "inbound": {"smtp_listener": {"host": "127.0.0.1", "port": free_port()}}})
    path = write_config(tmp_path, config)
    env = {**os.environ, "HELPDESK_CONFIG": str(path)}
    subprocess.run([sys.executable, "-m", "helpdesk", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "helpdesk", command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def up():
            try:
                return get(f"http://127.0.0.1:{port}/login")
            except OSError:
                return None
        status, html = wait_for(up, timeout=20, interval=0.2)
        assert status == 200 and 'name="email"' in html
    finally:
        stop_process(proc)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"helpdesk web portal: http://127.0.0.1:{port}" in out
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{port}/login")
