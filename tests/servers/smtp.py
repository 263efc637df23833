"""A real upstream MTA for tests: aiosmtpd with a recording handler and faults on demand.

Fixtures (a pytest plugin, listed in tests/conftest.py):

``mta``            a plain aiosmtpd ``Controller`` on 127.0.0.1 and a free port, started;
                   ``mta.handler`` is the ``RecordingMTA``. AUTH PLAIN/LOGIN is offered
                   (optional, without TLS: loopback only) for ``TEST_USER``/``TEST_PASSWORD``.
``mta_tls``        the same behind implicit TLS (SMTPS), AUTH offered.
``mta_starttls``   plain then ``STARTTLS`` (required before MAIL), ``auth_required``.
``smtp_ca``        the session's ``trustme.CA``; ``smtp_ca_file`` its PEM on disk.
``mta_factory``    ``mta_factory(tls=None|"ssl"|"starttls", port=None, handler=None,
                   **smtp_kwargs) -> MTAServer``, started; ``.stop()`` then ``.start()``
                   brings it back on the same port with the same handler (a server that
                   is down, then back). Everything still running is stopped at teardown.

Faults: ``handler.fail_rcpt = {"ann@example.test": "451 4.2.0 Mailbox busy"}``,
``handler.fail_mail`` / ``handler.fail_data = "554 5.6.0 No thanks"``,
``handler.data_delay = 2.0`` (seconds before answering DATA: client timeouts).
"""
from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

TEST_USER = "relay-user"
TEST_PASSWORD = "relay-secret"
MTA_HOSTNAME = "mta.test"  # the server's EHLO name: avoids a getfqdn() per connection

T = TypeVar("T")


def free_port() -> int:
    """A port nobody listens on right now. aiosmtpd's Controller connects back to its
    own port once started, so ``port=0`` does not work: pick one first."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float = 5, interval: float = 0.02) -> T:
    """Poll until ``predicate()`` is truthy and return that value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(interval)


@dataclass(frozen=True)
class Delivery:
    """One accepted mail transaction; ``content`` is DATA exactly as received."""

    mail_from: str
    rcpt_tos: list[str]  # a list, as on aiosmtpd's Envelope
    content: bytes

    def message(self) -> EmailMessage:
        return _parse(self.content)


def _parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


class RecordingMTA:
    """An aiosmtpd handler that records what it accepts and fails on demand."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.envelopes: list[Delivery] = []
        self.fail_mail: str | None = None
        self.fail_rcpt: dict[str, str] = {}
        self.fail_data: str | None = None
        self.data_delay: float = 0.0
        self.users = {TEST_USER: TEST_PASSWORD} if users is None else users
        self.logins: list[str] = []  # users that authenticated, in order
        self.connections = 0  # TCP connections clients opened (kept by the controller)

    # -- the aiosmtpd hooks ------------------------------------------------------
    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if self.fail_mail:
            return self.fail_mail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if reply := self.fail_rcpt.get(address):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.fail_data:
            return self.fail_data
        self.envelopes.append(Delivery(envelope.mail_from, list(envelope.rcpt_tos),
                                       bytes(envelope.original_content or b"")))
        return "250 2.0.0 OK queued"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            if self.users.get(user) == auth_data.password.decode("utf-8", "replace"):
                self.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    # -- for assertions ----------------------------------------------------------
    def messages(self) -> list[EmailMessage]:
        return [d.message() for d in list(self.envelopes)]

    def clear(self) -> None:
        self.envelopes.clear()
        self.logins.clear()
        self.fail_rcpt.clear()
        self.fail_mail = self.fail_data = None
        self.data_delay = 0.0


class _CountingController(Controller):
    """Counts client connections; ``stop()`` then ``start()`` works (same port, handler)."""

    def factory(self) -> Any:
        self.handler.connections += 1
        return super().factory()

    def start(self) -> None:
        if self.loop.is_closed():  # stop() closes it; a restart needs a fresh one
            self.loop = asyncio.new_event_loop()
        super().start()
        self.handler.connections -= 1  # the controller's own readiness probe


class MTAServer:
    """A restartable MTA: a new Controller on the same port and handler each start."""

    def __init__(self, handler: RecordingMTA, port: int, *,
                 ssl_context: ssl.SSLContext | None = None, **smtp_kwargs: Any) -> None:
        self.handler = handler
        self.hostname = "127.0.0.1"
        self.port = port
        self._ssl_context = ssl_context
        self._smtp_kwargs = smtp_kwargs
        self.controller: Controller | None = None

    @property
    def running(self) -> bool:
        return self.controller is not None

    def start(self) -> MTAServer:
        assert self.controller is None, "already running"
        controller = _CountingController(
            self.handler, hostname=self.hostname, port=self.port,
            ssl_context=self._ssl_context, server_hostname=MTA_HOSTNAME,
            authenticator=self.handler.authenticate, **self._smtp_kwargs)
        controller.start()
        self.controller = controller
        return self

    def stop(self) -> None:
        controller, self.controller = self.controller, None
        if controller is not None and controller._thread is not None:  # a test may stop it too
            controller.stop()


@pytest.fixture(scope="session")
def smtp_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def smtp_ca_file(smtp_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    smtp_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def smtp_server_tls_context(smtp_ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    smtp_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def mta_factory(smtp_server_tls_context: ssl.SSLContext) -> Iterator[Callable[..., MTAServer]]:
    servers: list[MTAServer] = []

    def start(*, tls: Literal["ssl", "starttls"] | None = None, port: int | None = None,
              handler: RecordingMTA | None = None, **smtp_kwargs: Any) -> MTAServer:
        if tls == "ssl":
            smtp_kwargs.setdefault("ssl_context", smtp_server_tls_context)
            # aiosmtpd only counts STARTTLS as TLS for AUTH; the socket is TLS anyway.
            # (auth_required would then warn about plain-text AUTH: leave it off.)
            smtp_kwargs.setdefault("auth_require_tls", False)
        elif tls == "starttls":
            smtp_kwargs.setdefault("tls_context", smtp_server_tls_context)
            smtp_kwargs.setdefault("require_starttls", True)
            smtp_kwargs.setdefault("auth_required", True)
        else:
            smtp_kwargs.setdefault("auth_require_tls", False)  # loopback tests only
        server = MTAServer(handler or RecordingMTA(), port or free_port(), **smtp_kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def mta(mta_factory: Callable[..., MTAServer]) -> Controller:
    server = mta_factory()
    assert server.controller is not None
    return server.controller


@pytest.fixture
def mta_tls(mta_factory: Callable[..., MTAServer]) -> Controller:
    server = mta_factory(tls="ssl")
    assert server.controller is not None
    return server.controller


@pytest.fixture
def mta_starttls(mta_factory: Callable[..., MTAServer]) -> Controller:
    server = mta_factory(tls="starttls")
    assert server.controller is not None
    return server.controller


@dataclass(frozen=True)
class TimedSend:
    """One client's mail to a listener: when it started and ended, and the answer."""

    started: float
    ended: float
    code: int

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def send_timed(port: int, raw: bytes, timeout: float = 300) -> TimedSend:
    """Send *raw* from Ana to support@example.com on 127.0.0.1:*port*, timed; a refusal
    is an answer (its code), not an error."""
    started = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
            smtp.sendmail("ana@customer.example", ["support@example.com"], raw)
        code = 250
    except smtplib.SMTPResponseException as exc:
        code = exc.smtp_code
    return TimedSend(started, time.monotonic(), code)
