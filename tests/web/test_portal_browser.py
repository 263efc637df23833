"""The portal in a real headless Chromium, as a person uses it: the real uvicorn
server and outbox sender in this process (and once the whole daemon, `helpdesk run`),
mail through the recording MTA (the sign-in link is read from what the MTA received),
pages checked by what is visible on them. Saves the README's screenshots to tests/screenshots/."""
from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpdesk.outbound.deliver import deliver_all
from helpdesk.web.server import WebServer
from tests.servers.helpdesk import Desk, make_mail, stop_process
from tests.servers.smtp import free_port, wait_for
from tests.web.conftest import (
    CASE_LINK,
    LOGIN_LINK,
    body_text,
    mails_to,
    open_case,
    staff_mail,
    web_config,
)

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
ANA, BO, EVE = "ana@customer.example", "bo@customer.example", "eve@other.example"

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI") == "true":
            pytest.fail("the browser tests need Debian's chromium and chromium-driver "
                        "(make system-deps installs them)")
        pytest.skip("chromium / chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()  # ends chromedriver and its chromium


@pytest.fixture
def served(desk_factory: Callable[..., Desk]) -> Iterator[tuple[Desk, str]]:
    """A desk whose portal is served by uvicorn and whose outbox is delivered to the
    recording MTA whenever the portal queues mail, as `helpdesk run` does (there by
    its sending process; here by a thread, which sees this test's clock)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = web_config(base, port)
    config["web"]["page_size"] = 5
    desk = desk_factory(**config)
    stop, wake = threading.Event(), threading.Event()

    def send() -> None:
        while not stop.is_set():
            wake.wait(5.0)
            wake.clear()
            deliver_all(desk.app)

    server = WebServer(desk.app, wake.set).start()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield desk, base
    finally:
        server.stop()
        stop.set()
        wake.set()
        sender.join(timeout=10)


def visible(driver: Any) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, "body").text


def click(driver: Any, text: str) -> None:
    """Click the button or link a person would, by its visible text."""
    from selenium.webdriver.common.by import By
    for element in driver.find_elements(By.CSS_SELECTOR, "button, a"):
        if element.is_displayed() and element.text.strip() == text:
            navigate(driver, element.click)
            return
    raise AssertionError(f"nothing visible to click labelled {text!r} on {driver.current_url}")


def navigate(driver: Any, action: Callable[[], object]) -> None:
    """Do what loads a new page, and wait until the new page is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
    old = driver.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(driver, 10).until(expected_conditions.staleness_of(old))
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def fill(driver: Any, label: str, value: str) -> None:
    """Type into the field a visible label names (labels are real <label for>)."""
    from selenium.webdriver.common.by import By
    for element in driver.find_elements(By.TAG_NAME, "label"):
        if element.is_displayed() and element.text.strip() == label:
            field = driver.find_element(By.ID, element.get_attribute("for"))
            if field.tag_name == "select":
                from selenium.webdriver.support.ui import Select
                Select(field).select_by_visible_text(value)
            else:
                field.clear()
                field.send_keys(value)
            return
    raise AssertionError(f"no visible field labelled {label!r}")


def refs_shown(driver: Any) -> list[str]:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    for _ in range(20):  # a page still being replaced by the one just asked for
        try:
            return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "td.ref a")
                    if e.is_displayed()]
        except WebDriverException:
            wait_for(lambda: driver.execute_script("return document.readyState") == "complete")
    raise AssertionError("the page never settled")


def mailed_link(desk: Desk, address: str, count: int) -> str:
    wait_for(lambda: len(mails_to(desk, address, "sign-in link")) >= count, timeout=10)
    return LOGIN_LINK.search(body_text(mails_to(desk, address, "sign-in link")[-1]))[1]


def sign_in(driver: Any, desk: Desk, base: str, address: str) -> str:
    before = len(mails_to(desk, address, "sign-in link"))
    driver.get(f"{base}/login")
    fill(driver, "Your mail address", address)
    click(driver, "Mail me a sign-in link")
    assert "we have just mailed it a sign-in link" in visible(driver)
    link = mailed_link(desk, address, before + 1)
    driver.get(link)
    click(driver, "Sign in")
    assert driver.current_url == f"{base}/cases", visible(driver)
    return link


def test_a_customer_signs_in_lists_sorts_filters_pages_views_replies_and_closes(browser, served):
    desk, base = served
    refs = []
    for i in range(6):
        desk.clock.advance(minutes=5)
        refs.append(open_case(desk, ANA, f"Booking error {i}"))
    colleague = open_case(desk, BO, "Invoice for October is missing")
    other = open_case(desk, EVE, "Eve's private trouble")
    desk.clock.advance(minutes=5)
    staff_mail(desk, refs[2], "#waiting\nCould you send us the request you made?\n")

    browser.get(f"{base}/cases")
    assert browser.current_url.startswith(f"{base}/login")  # not signed in: the login page
    fill(browser, "Your mail address", ANA)
    click(browser, "Mail me a sign-in link")
    assert "we have just mailed it a sign-in link" in visible(browser)
    link = mailed_link(desk, ANA, 1)
    assert link.startswith(f"{base}/login/")

    browser.get(link)  # what a mail scanner does: a GET shows a button, nothing more
    assert "Sign in as ana@customer.example" in visible(browser)
    browser.get(f"{base}/cases")
    assert "Mail me a sign-in link" in visible(browser)  # the GET did not sign anybody in
    browser.get(link)
    click(browser, "Sign in")
    assert browser.current_url == f"{base}/cases"
    page = visible(browser)
    assert "Your cases" in page and "6 cases" in page and "page 1 of 2" in page
    # last updated first: the case staff just answered, then the newest
    assert refs_shown(browser) == [refs[2], refs[5], refs[4], refs[3], refs[1]]
    assert "Partner's feedback required" in page and "Open" in page
    assert colleague not in page and other not in page
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "customer-cases.png"))

    click(browser, "Next")
    assert refs_shown(browser) == [refs[0]]
    click(browser, "Previous")
    fill(browser, "Sort by", "Creation date")
    fill(browser, "Order", "Oldest first")
    click(browser, "Show")
    assert refs_shown(browser) == refs[:5]
    fill(browser, "Case ID, subject or requester", "booking error 4")
    click(browser, "Show")
    assert refs_shown(browser) == [refs[4]] and "1 case" in visible(browser)
    click(browser, "My company (customer.example)")
    assert "Your company's cases" in visible(browser)
    fill(browser, "Case ID, subject or requester", "invoice")
    click(browser, "Show")
    assert refs_shown(browser) == [colleague] and other not in visible(browser)

    browser.get(f"{base}/cases")
    from selenium.webdriver.common.by import By
    row = browser.find_element(By.XPATH, f"//tr[td/a[text()='{refs[2]}']]")
    navigate(browser, row.find_element(By.LINK_TEXT, "View").click)  # the row's View button
    page = visible(browser)
    assert f"{refs[2]} Booking error 2" in page
    assert "Could you send us the request you made?" in page  # the staff answer, as mailed
    assert "needs your attention" not in page  # staff notices are staff's
    fill(browser, "Your reply", "Here it is: <Availability hotel=\"1\"/>")
    click(browser, "Send")
    page = visible(browser)
    assert "Your message was added to the case." in page
    assert 'Here it is: <Availability hotel="1"/>' in page  # shown as text, not markup
    assert "In progress" in page  # the reply stopped the waiting clock, as a mail would

    click(browser, "Close case")
    page = visible(browser)
    assert "The case is closed." in page and "Closed" in page
    assert "Close case" not in page
    assert desk.case(refs[2])["status"] == "closed"

    browser.get(f"{base}/cases/{other}")  # someone else's case: as if it did not exist
    outside = visible(browser)
    browser.get(f"{base}/cases/CC-999999")
    assert visible(browser) == outside and "Not found" in outside and "Eve" not in outside

    browser.get(f"{base}/cases/{refs[3]}")  # a forged post without the form's token
    navigate(browser, lambda: browser.execute_script(
        "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove());"
        "document.forms[1].submit();"))
    assert "Form expired" in visible(browser)
    assert desk.case(refs[3])["status"] == "open"

    browser.set_window_size(390, 844)  # a phone: no sideways scrolling, rows become cards
    browser.get(f"{base}/cases")
    assert browser.execute_script("return window.innerWidth") < 600
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
    from selenium.webdriver.common.by import By
    assert not browser.find_element(By.CSS_SELECTOR, "table.cases thead").is_displayed()
    assert refs_shown(browser) and "Booking error" in visible(browser)
    browser.save_screenshot(str(SCREENSHOTS / "customer-cases-phone.png"))

    click(browser, "Sign out")
    browser.get(link)  # the used link, opened again
    assert "This link no longer works" in visible(browser)


def test_an_expired_link_fails_and_a_public_domain_sees_only_its_own(browser, served):
    desk, base = served
    mine = open_case(desk, "ann@gmail.com", "My order never came")
    theirs = open_case(desk, "zed@gmail.com", "Where is my parcel")
    browser.get(f"{base}/login")
    fill(browser, "Your mail address", "ann@gmail.com")
    click(browser, "Mail me a sign-in link")
    link = mailed_link(desk, "ann@gmail.com", 1)
    browser.get(link)
    desk.clock.advance(minutes=16)
    click(browser, "Sign in")
    assert "This link no longer works" in visible(browser)
    desk.clock.advance(hours=1)
    sign_in(browser, desk, base, "ann@gmail.com")
    assert refs_shown(browser) == [mine]
    assert "My company" not in visible(browser)
    browser.get(f"{base}/cases?scope=company")
    assert refs_shown(browser) == [mine] and theirs not in visible(browser)
    browser.get(f"{base}/cases/{theirs}")
    assert "Not found" in visible(browser)


def test_staff_see_the_whole_case_and_their_reply_reaches_the_participants(browser, served):
    desk, base = served
    ref = open_case(desk, ANA, "The availability call answers error 500", cc=[BO])
    staff_mail(desk, ref, "#note Second report this week from this partner.\n")
    open_case(desk, EVE, "Another partner's case")
    sign_in(browser, desk, base, "agent@example.com")
    page = visible(browser)
    assert "All cases" in page and ref in page and "2 cases" in page
    browser.get(f"{base}/cases/{ref}")
    fill(browser, "Answer (sent to the participants; #commands work)",
         "Thanks, we are on it: the cache is being rebuilt.")
    click(browser, "Send")
    page = visible(browser)
    assert "Your message was added to the case." in page
    assert "Second report this week from this partner." in page  # the internal note
    assert "internal: staff notice" in page and "Events" in page
    for person in (ANA, BO):
        wait_for(lambda p=person: any("cache is being rebuilt" in body_text(m)
                                      for m in desk.sent_to(p)), timeout=10)
    assert desk.case(ref)["status"] == "in_progress"
    browser.set_window_size(1280, 1500)
    browser.execute_script("window.scrollTo(0, 0)")
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "staff-case.png"))


def test_the_running_daemon_mails_a_case_link_that_opens_the_case_and_takes_a_reply(
        browser, desk_factory, tmp_path):
    """`helpdesk run` as deployed: mail in over its SMTP listener, the portal on its port,
    mail out to the recording MTA by its own sending process, stopped by SIGTERM."""
    from selenium.webdriver.common.by import By
    port, listener = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    desk = desk_factory(**web_config(base, port),
                        inbound={"smtp_listener": {"host": "127.0.0.1", "port": listener}})
    log = tmp_path / "daemon.log"
    with log.open("ab") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "helpdesk", "-c", str(desk.config_path),
                                   "run"], stdout=out, stderr=subprocess.STDOUT)

    def mail_the_desk() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", listener, timeout=5) as smtp:
                smtp.sendmail(ANA, ["support@example.com"], make_mail(
                    f"Ana <{ANA}>", "support@example.com", "The booking engine times out",
                    "Every search since 8:00 times out.\n"))
            return True
        except OSError:  # the daemon is still starting
            return False

    try:
        wait_for(mail_the_desk, timeout=20, interval=0.2)
        ack = wait_for(lambda: next((m for m in desk.sent_to(ANA)
                                     if "Thank you" in body_text(m)), None), timeout=10)
        ref, text = ack["X-Helpdesk-Case"], body_text(ack)
        status = re.search(r"(?m)^Status: +(.+)$", text)[1].strip()
        link = CASE_LINK.search(text)[1]
        assert link.startswith(f"{base}/cases/{ref}?t=")

        browser.get(link)  # a GET only shows the button
        assert f"Sign in as {ANA} to see case {ref}." in visible(browser)
        assert "Every search since 8:00" not in visible(browser)
        click(browser, f"Sign in and open {ref}")
        assert browser.current_url == f"{base}/cases/{ref}", visible(browser)
        page = visible(browser)
        assert f"{ref} The booking engine times out" in page
        assert "Every search since 8:00 times out." in page
        assert browser.find_element(By.CSS_SELECTOR, ".facts .status").text == status == "Open"

        fill(browser, "Your reply", "It also fails for the hotel search.")
        click(browser, "Send")
        page = visible(browser)
        assert "Your message was added to the case." in page
        assert "It also fails for the hotel search." in page
        wait_for(lambda: any("It also fails for the hotel search." in body_text(m)
                             for m in desk.sent_to("agent@example.com")), timeout=10)
    finally:
        code = stop_process(daemon)  # -9 if it did not stop and had to be killed
    assert code == 0, log.read_text()
