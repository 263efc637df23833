"""A desk with the web portal configured, and a browser-like HTTP client for it."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from helpdesk.outbound.deliver import deliver_all
from helpdesk.web.app import make_app
from tests.servers.helpdesk import Desk, make_mail, staff_auth
from tests.servers.smtp import free_port

BASE = "http://testserver"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
NONCE = re.compile(r'name="nonce" value="([^"]+)"')
LOGIN_LINK = re.compile(r"(https?://[^/\s]+/login/[A-Za-z0-9_-]+)")
CASE_LINK = re.compile(r"(https?://[^/\s]+/cases/[A-Z]+-\d+\?t=[A-Za-z0-9_-]+)")


def web_config(base_url: str = BASE, port: int | None = None) -> dict[str, Any]:
    # A portal's tests open a dozen cases from one customer within minutes: more than
    # a stranger may (limits.new_cases_per_sender), so this desk allows it.
    return {"web": {"host": "127.0.0.1", "port": port or free_port(), "base_url": base_url},
            "limits": {"new_cases_per_sender": "50/1h"}}


@pytest.fixture
def portal(desk_factory: Callable[..., Desk]) -> Desk:
    return desk_factory(**web_config())


@pytest.fixture
def client_factory(portal: Desk) -> Iterator[Callable[[], TestClient]]:
    clients: list[TestClient] = []

    def make() -> TestClient:
        client = TestClient(make_app(portal.app), base_url=BASE, follow_redirects=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found[1]


def body_text(message: Any) -> str:
    part = message.get_body(("plain",))
    return part.get_content() if part is not None else ""


def mails_to(desk: Desk, address: str, kind_subject: str = "") -> list[Any]:
    return [m for m in desk.sent_to(address) if kind_subject in str(m["Subject"])]


def last_login_link(desk: Desk, address: str) -> str:
    deliver_all(desk.app)
    links = [LOGIN_LINK.search(body_text(m)) for m in mails_to(desk, address, "sign-in link")]
    found = [m[1] for m in links if m]
    assert found, f"no sign-in link was mailed to {address}"
    return found[-1]


def path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def request_link(client: TestClient, address: str) -> Any:
    page = client.get("/login")
    return client.post("/login", data={"email": address, "csrf": csrf_of(page.text)})


def sign_in(client: TestClient, desk: Desk, address: str) -> None:
    assert request_link(client, address).status_code == 200
    link = path_of(last_login_link(desk, address))
    page = client.get(link)
    done = client.post(link, data={"csrf": csrf_of(page.text)})
    assert done.status_code == 303 and done.headers["location"] == "/cases", done.text


def open_case(desk: Desk, sender: str, subject: str, cc: list[str] | None = None,
              to: str = "support@example.com") -> str:
    outcome = desk.ingest(make_mail(sender, to, subject, f"About {subject}.\n", cc=cc))
    assert outcome.ref, outcome
    return outcome.ref


def staff_mail(desk: Desk, ref: str, body: str, sender: str = "agent@example.com") -> Any:
    return desk.ingest(make_mail(sender, "support@example.com", f"Re: [{ref}] x", body,
                                 headers=staff_auth(sender)))


def post_form(client: TestClient, path: str, page_path: str, **data: str) -> Any:
    page = client.get(page_path)
    values = {"csrf": csrf_of(page.text), **data}
    if "nonce" not in data and (n := NONCE.search(page.text)):
        values["nonce"] = n[1]
    return client.post(path, data=values)
