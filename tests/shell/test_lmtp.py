"""The LMTP listener, through a real LMTP client (``smtplib.LMTP``), over TCP and a
Unix socket, on SQLite and on a PostgreSQL server that stops taking connections."""
from __future__ import annotations

import json
import os
import smtplib
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from helpdesk.inbound.lmtp_listener import start_lmtp
from helpdesk.config import LmtpSection
from helpdesk.outbound.deliver import deliver_all
from helpdesk.store.orm import Inbound
from tests.servers.helpdesk import make_mail, stop_process
from tests.servers.smtp import free_port, wait_for

CUSTOMER = "ana@customer.example"


def lmtp_send(client: smtplib.LMTP, recipients: list[str], raw: bytes
              ) -> dict[str, tuple[int, str]]:
    """One LMTP transaction; the server's reply for each recipient (RCPT's if it refused
    one, else its own reply after DATA). smtplib reads only the first reply after DATA:
    the others are read here, one per accepted recipient, in order (RFC 2033 4.2)."""
    client.ehlo()  # smtplib.LMTP sends LHLO
    client.mail(CUSTOMER)
    replies, accepted = {}, []
    for address in recipients:
        code, message = client.rcpt(address)
        replies[address] = (code, message.decode())
        if code == 250:
            accepted.append(address)
    if accepted:
        code, message = client.data(raw)
        replies[accepted[0]] = (code, message.decode())
        for address in accepted[1:]:
            code, message = client.getreply()
            replies[address] = (code, message.decode())
    return replies


@pytest.fixture
def lmtp_desk(desk_factory, tmp_path) -> Iterator:
    """A desk with its LMTP listener on a TCP port and a Unix socket."""
    desk = desk_factory()
    conf = LmtpSection(port=free_port(), path=tmp_path / "lmtp.sock")
    controllers = start_lmtp(desk.app, conf)
    desk.lmtp = conf
    yield desk
    for controller in controllers:
        controller.stop()


def inbound_count(desk) -> int:
    with desk.app.sessions() as session:
        return session.scalar(select(func.count()).select_from(Inbound))


def test_per_recipient_replies_unknown_refused_at_rcpt_mail_stored_once(lmtp_desk):
    desk = lmtp_desk
    raw = make_mail(CUSTOMER, ["support@example.com", "billing@example.com"], "Printer")
    with smtplib.LMTP(desk.lmtp.host, desk.lmtp.port) as client:
        replies = lmtp_send(client, ["support@example.com", "stranger@elsewhere.example",
                                     "billing@example.com"], raw)
    assert replies["stranger@elsewhere.example"][0] == 550
    assert replies["stranger@elsewhere.example"][1].startswith("5.1.1")
    assert replies["support@example.com"][0] == 250
    assert replies["billing@example.com"][0] == 250
    deliver_all(desk.app)
    assert inbound_count(desk) == 1
    cases = json.loads(desk.cli("cases", "list", "--json").stdout)
    assert [c["ref"] for c in cases] == ["CC-000001"]
    assert sorted(cases[0]["addresses"]) == ["billing@example.com", "support@example.com"]
    assert [m["Subject"] for m in desk.sent_to(CUSTOMER)] == ["[CC-000001] Printer"]


def test_a_case_reply_address_is_ours_and_the_unix_socket_serves_too(lmtp_desk):
    desk = lmtp_desk
    path = str(desk.lmtp.path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    with smtplib.LMTP(path) as client:
        replies = lmtp_send(client, ["support@example.com"],
                            make_mail(CUSTOMER, "support@example.com", "Printer"))
    assert replies == {"support@example.com": (250, "2.0.0 Stored")}
    deliver_all(desk.app)
    reply_to = desk.sent_to(CUSTOMER)[0]["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("support+CC-000001.")
    with smtplib.LMTP(path) as client:
        replies = lmtp_send(client, [reply_to],
                            make_mail(CUSTOMER, reply_to, "Still broken", "More.\n"))
    assert replies[reply_to][0] == 250
    messages = desk.case("CC-000001")["messages"]
    assert [m["kind"] for m in messages if m["direction"] == "in"] == ["new", "reply"]


def test_database_down_each_recipient_451_nothing_lost_accepted_on_retry(
        desk_factory, postgres_url):
    desk = desk_factory(database={"url": postgres_url})
    conf = LmtpSection(port=free_port())
    controllers = start_lmtp(desk.app, conf)
    url = make_url(postgres_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    raw = make_mail(CUSTOMER, ["support@example.com", "billing@example.com"], "Invoice")
    recipients = ["support@example.com", "billing@example.com"]
    try:
        with admin.connect() as connection:  # the database stops taking connections
            connection.execute(text(f"ALTER DATABASE {url.database} ALLOW_CONNECTIONS false"))
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = :name"), {"name": url.database})
        with smtplib.LMTP(conf.host, conf.port) as client:
            down = lmtp_send(client, recipients, raw)
        assert [code for code, _ in down.values()] == [451, 451]
        with admin.connect() as connection:
            connection.execute(text(f"ALTER DATABASE {url.database} ALLOW_CONNECTIONS true"))
        assert inbound_count(desk) == 0  # nothing half-stored
        with smtplib.LMTP(conf.host, conf.port) as client:  # the MTA tries again
            again = lmtp_send(client, recipients, raw)
        assert [code for code, _ in again.values()] == [250, 250]
    finally:
        for controller in controllers:
            controller.stop()
        admin.dispose()
    deliver_all(desk.app)
    assert inbound_count(desk) == 1
    assert [m["Subject"] for m in desk.sent_to(CUSTOMER)] == ["[CC-000001] Invoice"]


def test_the_daemon_serves_lmtp_and_answers_without_a_process_per_mail(desk_factory, tmp_path):
    desk = desk_factory(inbound={"lmtp": {"path": "lmtp.sock"}})  # relative: the config's folder
    path = desk.config_path.parent / "lmtp.sock"
    env = {**os.environ, "HELPDESK_CONFIG": str(desk.config_path)}
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "helpdesk", "run"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(path.is_socket, timeout=30, interval=0.1)
        for n in range(3):
            with smtplib.LMTP(str(path)) as client:
                replies = lmtp_send(client, ["support@example.com"],
                                    make_mail(f"c{n}@customer.example", "support@example.com",
                                              f"Request {n}"))
            assert replies["support@example.com"][0] == 250
        wait_for(lambda: len(desk.sent_to("c2@customer.example")) == 1, timeout=15)
    finally:
        assert stop_process(proc) == 0
        log.close()
    assert sorted(m["Subject"] for n in range(3) for m in desk.sent_to(f"c{n}@customer.example")) \
        == ["[CC-000001] Request 0", "[CC-000002] Request 1", "[CC-000003] Request 2"]
