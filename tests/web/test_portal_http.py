"""The portal over HTTP, where a browser adds nothing: sign-in links, CSRF, scope,
the actions going through the decision code, and what goes out by mail (the real
recording MTA)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape

from sqlalchemy import func, select
from starlette.testclient import TestClient

from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Message, WebSession, WebToken
from helpdesk.web.app import make_app
from tests.servers.helpdesk import Desk, make_mail
from tests.shell.test_knowledge_base import KB_URL, kb_folder
from tests.web.conftest import (
    BASE,
    CASE_LINK,
    NONCE,
    body_text,
    csrf_of,
    last_login_link,
    mails_to,
    open_case,
    path_of,
    post_form,
    request_link,
    sign_in,
    staff_mail,
    web_config,
)

ANA = "ana@customer.example"
BO = "bo@customer.example"  # Ana's colleague
EVE = "eve@other.example"


# ----------------------------------------------------------------------------- sign-in


def test_login_form_has_one_email_field_and_works_the_same_for_unknown_addresses(
        portal, client_factory):
    open_case(portal, ANA, "Printer on fire")
    client = client_factory()
    form = client.get("/login")
    assert form.status_code == 200
    assert re.findall(r'<input[^>]+name="(\w+)"', form.text) == ["csrf", "email"]
    assert '<label for="email">' in form.text
    known = request_link(client, ANA)
    unknown = request_link(client, "nobody@nowhere.example")
    strip = lambda html, a: re.sub(r'value="[^"]*"', "", html).replace(a, "ADDR")  # noqa: E731
    assert known.status_code == unknown.status_code == 200
    assert strip(known.text, ANA) == strip(unknown.text, "nobody@nowhere.example")
    deliver_all(portal.app)
    assert len(mails_to(portal, ANA, "sign-in link")) == 1
    assert portal.sent_to("nobody@nowhere.example") == []
    mail = mails_to(portal, ANA, "sign-in link")[0]
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "works once" in body_text(mail)


def test_a_get_of_the_link_only_shows_a_button_and_the_post_signs_in_once(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    client = client_factory()
    request_link(client, ANA)
    link = path_of(last_login_link(portal, ANA))
    for _ in range(3):  # a mail scanner fetching the link, several times
        page = client.get(link)
        assert page.status_code == 200 and "<button" in page.text and ref not in page.text
    assert client.get("/cases").status_code == 303  # still not signed in
    signed = client.post(link, data={"csrf": csrf_of(page.text)})
    assert signed.status_code == 303 and signed.headers["location"] == "/cases"
    cookie = signed.headers["set-cookie"]
    assert "hd_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # http base_url
    listing = client.get("/cases")
    assert listing.status_code == 200 and ref in listing.text
    other = client_factory()  # someone else holding the same link afterwards
    again = other.get(link)
    assert again.status_code == 410 and "no longer works" in again.text
    reused = other.post(link, data={"csrf": csrf_of(other.get("/login").text)})
    assert reused.status_code == 410 and "hd_session" not in reused.headers.get("set-cookie", "")
    with portal.app.sessions() as session:
        stored = session.scalars(select(WebToken.token_hash)).all()
    assert link.rsplit("/", 1)[1] not in stored  # only the hash is kept


def test_a_login_link_expires_after_15_minutes(portal, client_factory):
    open_case(portal, ANA, "Printer on fire")
    client = client_factory()
    request_link(client, ANA)
    link = path_of(last_login_link(portal, ANA))
    page = client.get(link)
    portal.clock.advance(minutes=15, seconds=1)
    late = client.post(link, data={"csrf": csrf_of(page.text)})
    assert late.status_code == 410 and "no longer works" in late.text
    assert client.get("/cases").status_code == 303


def test_at_most_five_sign_in_mails_per_address_per_hour(portal, client_factory):
    open_case(portal, ANA, "Printer on fire")
    client = client_factory()
    for _ in range(7):
        assert request_link(client, ANA).status_code == 200
    deliver_all(portal.app)
    assert len(mails_to(portal, ANA, "sign-in link")) == 5
    portal.clock.advance(hours=1, seconds=1)
    request_link(client, ANA)
    deliver_all(portal.app)
    assert len(mails_to(portal, ANA, "sign-in link")) == 6


def test_every_post_needs_the_csrf_token(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    before = len(portal.case(ref)["messages"])
    client = client_factory()
    assert client.post("/login", data={"email": ANA}).status_code == 403
    deliver_all(portal.app)
    assert mails_to(portal, ANA, "sign-in link") == []
    sign_in(client, portal, ANA)
    page = client.get(f"/cases/{ref}")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)[1]
    for path, data in ((f"/cases/{ref}/close", {}),
                       (f"/cases/{ref}/reply", {"text": "hi", "nonce": nonce}),
                       ("/logout", {})):
        refused = client.post(path, data=data)
        assert refused.status_code == 403 and "Form expired" in refused.text
        wrong = client.post(path, data={**data, "csrf": "0" * 64})
        assert wrong.status_code == 403
    assert portal.case(ref)["status"] == "open"
    assert len(portal.case(ref)["messages"]) == before  # nothing added
    assert client.get("/cases").status_code == 200  # still signed in


def test_staff_forms_and_link_sign_ins_without_the_right_token_change_nothing(
        portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    staff = client_factory()
    sign_in(staff, portal, "agent@example.com")
    nonce = NONCE.search(staff.get(f"/cases/{ref}").text)[1]
    someone_elses = csrf_of(client_factory().get("/login").text)  # valid, for another visitor
    for path, data in ((f"/cases/{ref}/status", {"status": "resolved", "note": "Fixed."}),
                       (f"/cases/{ref}/note", {"text": "Call them Monday.", "nonce": nonce + "n"}),
                       (f"/cases/{ref}/assign", {"assignee": "agent@example.com",
                                                 "nonce": nonce + "a"})):
        for token in ({}, {"csrf": "0" * 64}, {"csrf": someone_elses}):
            refused = staff.post(path, data={**data, **token})
            assert refused.status_code == 403 and "Form expired" in refused.text, (path, token)
    case = portal.case(ref)
    assert case["status"] == "open" and case["assignee"] is None
    assert [e for e in case["events"] if e["type"] == "note"] == []
    assert "Call them Monday." not in staff.get(f"/cases/{ref}").text

    customer = client_factory()  # the case link of the acknowledgement, and a sign-in link
    link = path_of(CASE_LINK.search(body_text(portal.sent_to(ANA)[0]))[1])
    token = link.split("?t=")[1]
    customer.get(link)
    request_link(customer, ANA)
    login = path_of(last_login_link(portal, ANA))
    for path, data in ((f"/cases/{ref}", {"t": token}), (login, {})):
        for wrong in ({}, {"csrf": "0" * 64}, {"csrf": someone_elses}):
            refused = customer.post(path, data={**data, **wrong})
            assert refused.status_code == 403 and "Form expired" in refused.text, (path, wrong)
            assert "hd_session" not in refused.headers.get("set-cookie", "")
    assert customer.get("/cases").status_code == 303  # signed in by none of them
    page = customer.get(login)
    assert "<button" in page.text  # the refused posts did not use the link up
    signed = customer.post(login, data={"csrf": csrf_of(page.text)})
    assert signed.status_code == 303 and ref in customer.get("/cases").text


def test_logout_ends_the_session(portal, client_factory):
    open_case(portal, ANA, "Printer on fire")
    client = client_factory()
    sign_in(client, portal, ANA)
    out = post_form(client, "/logout", "/cases")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/cases").status_code == 303
    with portal.app.sessions() as session:
        assert session.scalar(select(func.count()).select_from(WebSession)) == 0


# ----------------------------------------------------------------------------- scope


def test_customers_see_their_own_and_their_companys_cases_and_nothing_else(portal, client_factory):
    mine = open_case(portal, ANA, "Ana's printer")
    colleague = open_case(portal, BO, "Bo's invoice")
    other = open_case(portal, EVE, "Eve's secret")
    client = client_factory()
    sign_in(client, portal, ANA)
    own = client.get("/cases").text
    assert mine in own and colleague not in own and other not in own
    company = client.get("/cases?scope=company").text
    assert mine in company and colleague in company and other not in company
    asked_all = client.get("/cases?scope=all").text  # a customer asking for all: their own
    assert mine in asked_all and other not in asked_all
    assert client.get(f"/cases/{colleague}").status_code == 200
    outside = client.get(f"/cases/{other}")
    missing = client.get("/cases/CC-999999")
    assert outside.status_code == missing.status_code == 404
    assert outside.text == missing.text
    assert "Eve" not in outside.text
    assert client.post(f"/cases/{other}/close",
                       data={"csrf": csrf_of(own)}).status_code == 404
    assert portal.case(other)["status"] == "open"


def test_a_public_mail_domain_is_no_company(portal, client_factory):
    mine = open_case(portal, "ann@gmail.com", "My order")
    theirs = open_case(portal, "zed@gmail.com", "Their order")
    client = client_factory()
    sign_in(client, portal, "ann@gmail.com")
    for scope in ("mine", "company", "all"):
        page = client.get(f"/cases?scope={scope}").text
        assert mine in page and theirs not in page
    assert "My company" not in page
    assert client.get(f"/cases/{theirs}").status_code == 404


def test_staff_see_every_case_with_internal_notes_events_and_machine_mail(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    staff_mail(portal, ref, "#note the customer is a VIP\n")
    portal.ingest(make_mail(ANA, "support@example.com", f"Re: [{ref}] x", "I am away.\n",
                            headers={"Auto-Submitted": "auto-replied"}))
    staff = client_factory()
    sign_in(staff, portal, "agent@example.com")
    assert ref in staff.get("/cases").text  # staff default scope: all
    page = staff.get(f"/cases/{ref}").text
    assert "the customer is a VIP" in page and "I am away." in page
    assert "staff notice" in page and "Events" in page and "Change status" in page
    customer = client_factory()
    sign_in(customer, portal, ANA)
    seen = customer.get(f"/cases/{ref}").text
    assert "About Printer on fire." in seen  # their request
    assert "Thank you for contacting" in seen  # the acknowledgement they got
    for hidden in ("the customer is a VIP", "I am away.", "needs your attention", "Events",
                   "Change status"):
        assert hidden not in seen, hidden


@contextmanager
def client_of(desk: Desk) -> Iterator[TestClient]:
    """A browser-like client for a desk of the test's own (``client_factory`` is the
    ``portal``'s)."""
    with TestClient(make_app(desk.app), base_url=BASE, follow_redirects=False) as client:
        yield client


def test_staff_see_the_suggested_articles_and_unverified_staff_mail_and_customers_neither(
        desk_factory, tmp_path):
    desk = desk_factory(name="kb", **web_config(),
                        knowledge_base={"path": str(kb_folder(tmp_path)), "base_url": KB_URL})
    ref = desk.ingest(make_mail(ANA, "support@example.com", "The printer is on fire",
                                "Since this morning the printer smokes.\n")).ref
    assert "What to do when the printer smokes" in body_text(desk.sent_to(ANA)[0])  # the ack
    forged = desk.ingest(make_mail("agent@example.com", "support@example.com",
                                   f"Re: [{ref}] x", "#close\nPlease pay the repair to IBAN "
                                   "XX00 1234.\n"))  # in a staff name, no authentication
    assert forged.ref == ref and desk.case(ref)["status"] == "open"
    with client_of(desk) as staff:
        sign_in(staff, desk, "agent@example.com")
        page = staff.get(f"/cases/{ref}").text
    assert "Suggested articles" in page
    assert (f'<a href="{KB_URL}/hardware/printer" rel="noreferrer">'
            "What to do when the printer smokes</a>") in page
    assert "Please pay the repair to IBAN XX00 1234." in page
    assert "internal: unverified" in page
    with client_of(desk) as customer:
        sign_in(customer, desk, ANA)
        seen = customer.get(f"/cases/{ref}").text
    assert "Since this morning the printer smokes." in seen  # their own request
    for hidden in ("Suggested articles", "IBAN", "unverified"):
        assert hidden not in seen, hidden


def text_of_page(html: str) -> str:
    """What a browser shows of a page, roughly: its text without tags, on one line."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_dates_on_the_list_and_the_case_page_read_as_the_mails_show_them(
        portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")  # at 09:00 UTC
    opened = re.search(r"(?m)^Opened: +(.+)$", body_text(portal.sent_to(ANA)[0]))[1].strip()
    assert opened == "2026-11-02 09:00 UTC"
    portal.clock.advance(hours=5, minutes=17)
    staff_mail(portal, ref, "#waiting\nWhich model is it?\n")
    updated = "2026-11-02 14:17 UTC"
    client = client_factory()
    sign_in(client, portal, ANA)
    listing = text_of_page(client.get("/cases").text)
    assert f"{ref} Printer on fire Customer Care Partner's feedback required {ANA} " \
           f"{opened} {updated} View" in listing
    page = text_of_page(client.get(f"/cases/{ref}").text)
    assert f"Created {opened} Updated {updated}" in page
    assert f"{ANA} {opened}" in page  # the customer's mail, dated as it was sent
    for html in (listing, page):
        assert not re.search(r"\d{4}-\d\d-\d\dT\d|[+-]00:00|\d:\d\d:\d\d", html)


# ----------------------------------------------------------------------------- actions


def test_a_customer_reply_goes_through_the_pipeline_like_a_mail(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    staff_mail(portal, ref, "#waiting\nWhich model is it?\n")
    assert portal.case(ref)["status"] == "waiting"
    portal.mta.handler.clear()
    client = client_factory()
    sign_in(client, portal, ANA)
    sent = post_form(client, f"/cases/{ref}/reply", f"/cases/{ref}", text="An HP 4000.")
    assert sent.status_code == 303 and sent.headers["location"] == f"/cases/{ref}?done=replied"
    case = portal.case(ref)
    assert case["status"] == "in_progress"  # a participant's answer stops the waiting clock
    reply = [m for m in case["messages"] if m["kind"] == "reply"][-1]
    assert reply["from"] == ANA and reply["text"] == "An HP 4000."
    deliver_all(portal.app)
    notices = portal.sent_to("agent@example.com")
    assert notices and "An HP 4000." in body_text(notices[-1])  # staff told, as for a mail
    page = client.get(sent.headers["location"]).text
    assert "Your message was added" in page and "An HP 4000." in page


def test_the_same_reply_form_sent_twice_adds_one_message(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    client = client_factory()
    sign_in(client, portal, ANA)
    page = client.get(f"/cases/{ref}").text
    data = {"csrf": csrf_of(page), "text": "Once.",
            "nonce": re.search(r'name="nonce" value="([^"]+)"', page)[1]}
    assert client.post(f"/cases/{ref}/reply", data=data).status_code == 303
    assert client.post(f"/cases/{ref}/reply", data=data).status_code == 303
    assert [m["text"] for m in portal.case(ref)["messages"]].count("Once.") == 1


def test_a_staff_reply_is_relayed_and_its_commands_work(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire", cc=[BO])
    portal.mta.handler.clear()
    staff = client_factory()
    sign_in(staff, portal, "agent@example.com")
    sent = post_form(staff, f"/cases/{ref}/reply", f"/cases/{ref}",
                     text="#waiting\nPlease send the model number.")
    assert sent.status_code == 303
    deliver_all(portal.app)
    assert portal.case(ref)["status"] == "waiting"
    for person in (ANA, BO):
        [mail] = [m for m in portal.sent_to(person) if ref in str(m["Subject"])]
        text = body_text(mail)
        assert "Please send the model number." in text and "#waiting" not in text
    note = post_form(staff, f"/cases/{ref}/note", f"/cases/{ref}", text="Call them Monday.")
    assert note.status_code == 303
    events = [e for e in portal.case(ref)["events"] if e["type"] == "note"]
    assert events and "Call them Monday." in events[-1]["detail"]["text"]
    assigned = post_form(staff, f"/cases/{ref}/assign", f"/cases/{ref}",
                         assignee="agent@example.com")
    assert assigned.status_code == 303 and portal.case(ref)["assignee"] == "agent@example.com"


def test_close_is_the_status_change_set_status_makes(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire", cc=[BO])
    portal.mta.handler.clear()
    client = client_factory()
    sign_in(client, portal, BO)
    listing = client.get("/cases").text
    assert f'action="/cases/{ref}/close"' in listing
    closed = post_form(client, f"/cases/{ref}/close", "/cases")
    assert closed.status_code == 303
    case = portal.case(ref)
    assert case["status"] == "closed"
    change = [e for e in case["events"] if e["type"] == "status_changed"][-1]
    assert change["detail"] == {"from": "open", "to": "closed", "by": BO}
    deliver_all(portal.app)
    assert any(ref in str(m["Subject"]) for m in portal.sent_to(ANA))  # the closed notice
    assert f'action="/cases/{ref}/close"' not in client.get("/cases?status=all").text
    assert ref not in client.get("/cases").text  # closed: no longer among the open cases


def test_staff_change_any_status_and_illegal_ones_are_refused(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    staff = client_factory()
    sign_in(staff, portal, "agent@example.com")
    ok = post_form(staff, f"/cases/{ref}/status", f"/cases/{ref}", status="resolved",
                   note="Replaced the fuser.")
    assert ok.status_code == 303 and portal.case(ref)["status"] == "resolved"
    refused = post_form(staff, f"/cases/{ref}/status", f"/cases/{ref}", status="open")
    assert refused.status_code == 409 and "only the status of a new case" in refused.text
    customer = client_factory()
    sign_in(customer, portal, ANA)
    assert post_form(customer, f"/cases/{ref}/status", f"/cases/{ref}",
                     status="in_progress").status_code == 404
    assert portal.case(ref)["status"] == "resolved"


# ----------------------------------------------------------------------------- mail links


def test_each_participant_gets_a_copy_with_their_own_case_link(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire", cc=[BO])
    acks = {p: [m for m in portal.sent_to(p) if "Thank you" in body_text(m)] for p in (ANA, BO)}
    assert all(len(v) == 1 for v in acks.values())
    links = {p: CASE_LINK.search(body_text(acks[p][0]))[1] for p in (ANA, BO)}
    assert links[ANA] != links[BO]
    assert acks[ANA][0]["Message-ID"] == acks[BO][0]["Message-ID"]  # one mail, personalised
    assert [str(a) for a in acks[ANA][0]["To"].addresses] == [ANA]
    stored = [m["text"] for m in portal.case(ref)["messages"] if m["kind"] == "ack"][0]
    assert f"/cases/{ref}\n" in stored and "?t=" not in stored  # the case keeps no one's link
    client = client_factory()
    link = path_of(links[BO])
    page = client.get(link)
    assert page.status_code == 200 and "<button" in page.text and "About Printer" not in page.text
    signed = client.post(f"/cases/{ref}", data={"csrf": csrf_of(page.text),
                                               "t": link.split("?t=")[1]})
    assert signed.status_code == 303 and signed.headers["location"] == f"/cases/{ref}"
    assert "About Printer on fire." in client.get(f"/cases/{ref}").text
    other = open_case(portal, BO, "Bo's other case")
    listing = client.get("/cases?scope=company").text
    assert ref in listing and other not in listing  # a case link opens that case only
    assert client.get(f"/cases/{other}").status_code == 404
    again = client_factory()  # the same mail opened later on another device: still works
    page = again.get(link)
    assert again.post(f"/cases/{ref}", data={"csrf": csrf_of(page.text), "t": link.split("?t=")[1]}
                      ).status_code == 303
    elsewhere = client_factory()  # the link names its case: it opens no other
    page = elsewhere.get("/login")
    assert elsewhere.post("/cases/CC-999999", data={"csrf": csrf_of(page.text),
                                                    "t": link.split("?t=")[1]}).status_code == 410


def test_case_links_last_for_the_configured_time(portal, client_factory):
    open_case(portal, ANA, "Printer on fire")
    link = path_of(CASE_LINK.search(body_text(portal.sent_to(ANA)[0]))[1])
    client = client_factory()
    portal.clock.advance(days=29)
    assert client.get(link).status_code == 200
    portal.clock.advance(days=1, seconds=1)
    assert client.get(link).status_code == 410


def test_without_web_mail_has_no_portal_links(desk_factory):
    desk = desk_factory(name="plain")
    open_case(desk, ANA, "Printer on fire", cc=[BO])
    [ack] = [m for m in desk.sent() if "Thank you" in body_text(m)]
    assert sorted(str(a) for a in ack["To"].addresses) == [ANA, BO]
    assert "/cases/" not in body_text(ack)


def test_attachments_download_as_files_never_rendered(portal, client_factory):
    from email.message import EmailMessage
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ANA, "support@example.com", "Screenshot"
    msg["Message-ID"] = "<shot@customer.example>"
    msg.set_content("See attached.")
    msg.add_attachment(b"<html><script>alert(1)</script></html>", maintype="text",
                       subtype="html", filename="page.html")
    ref = portal.ingest(msg.as_bytes()).ref
    client = client_factory()
    sign_in(client, portal, ANA)
    page = client.get(f"/cases/{ref}").text
    href = re.search(rf'href="(/cases/{ref}/attachments/\d+)"', page)[1]
    got = client.get(href)
    assert got.status_code == 200 and got.content == b"<html><script>alert(1)</script></html>"
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"
    stranger = client_factory()
    open_case(portal, EVE, "Eve's case")
    sign_in(stranger, portal, EVE)
    assert stranger.get(href).status_code == 404


def test_pages_carry_security_headers_and_a_phone_viewport(portal, client_factory):
    page = client_factory().get("/login")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert re.match(r"app;dur=[\d.]+$", page.headers["server-timing"])


def test_a_mail_replaying_a_web_replys_message_id_is_a_duplicate(portal, client_factory):
    ref = open_case(portal, ANA, "Printer on fire")
    client = client_factory()
    sign_in(client, portal, ANA)
    post_form(client, f"/cases/{ref}/reply", f"/cases/{ref}", text="From the web.")
    with portal.app.sessions() as session:
        mid = session.scalar(select(Message.message_id).where(Message.text == "From the web."))
    assert mid.startswith("web.") and mid.endswith("@example.com")
    again = portal.ingest(make_mail(ANA, "support@example.com", f"Re: [{ref}] x", "Twice?\n",
                                    message_id=f"<{mid}>"))
    assert again.status == "duplicate"
    assert [m["text"] for m in portal.case(ref)["messages"]].count("Twice?\n") == 0


def test_reminders_of_the_sweep_carry_each_participants_own_link(portal, client_factory):
    from helpdesk.sweep import sweep
    ref = open_case(portal, ANA, "Printer on fire", cc=[BO])
    staff_mail(portal, ref, "#waiting\nWhich model?\n")
    portal.mta.handler.clear()
    portal.clock.advance(days=3, minutes=1)
    assert sweep(portal.app, portal.clock.now()) == 1
    deliver_all(portal.app)
    reminders = {p: [m for m in portal.sent_to(p) if "reminder" in body_text(m)] for p in (ANA, BO)}
    assert all(len(v) == 1 for v in reminders.values())
    links = {p: CASE_LINK.search(body_text(v[0]))[1] for p, v in reminders.items()}
    assert links[ANA] != links[BO]
    stored = [m["text"] for m in portal.case(ref)["messages"] if m["kind"] == "reminder"]
    assert len(stored) == 1 and "?t=" not in stored[0] and f"/cases/{ref}" in stored[0]
    client = client_factory()
    link = path_of(links[ANA])
    page = client.get(link)
    assert client.post(f"/cases/{ref}", data={"csrf": csrf_of(page.text),
                                             "t": link.split("?t=")[1]}).status_code == 303
    assert "Which model?" in client.get(f"/cases/{ref}").text


def test_signing_in_sweeps_expired_links_but_not_the_hours_rate_count(portal, client_factory):
    open_case(portal, ANA, "Printer on fire")
    client = client_factory()
    for _ in range(4):
        request_link(client, ANA)
    portal.clock.advance(minutes=40)  # the four have expired, but are of this hour
    sign_in(client, portal, ANA)  # the fifth
    request_link(client, ANA)  # a sixth within the hour: refused
    deliver_all(portal.app)
    assert len(mails_to(portal, ANA, "sign-in link")) == 5
    portal.clock.advance(days=31)
    sign_in(client_factory(), portal, ANA)
    with portal.app.sessions() as session:
        left = session.scalars(select(WebToken.kind)).all()
    assert left == ["login"]  # the old links and the case link of the ack are gone
