"""How a rendered mail leaves: an SMTP relay, or a Maildir on disk.

A transport only moves bytes and reports what happened, in three kinds:

- ``send()`` returns: the server took the message; the returned dict names the
  recipients it refused, ``{address: (code, reply)}`` (4xx and 5xx alike; an
  empty dict when every recipient was accepted). A recipient that this server cannot
  carry at all (a UTF-8 local part, and no SMTPUTF8) is reported there too, as a 553.
- ``DeliveryError(permanent=True)``: the server refused *this message* for good
  (5xx at MAIL FROM or DATA, a sender address it cannot carry). Nothing was delivered.
- ``DeliveryError(permanent=False)``: try this message again later (4xx, an
  ambiguous disconnect). ``ConnectionFailure`` is the kind that concerns the
  whole server (refused, timeout, TLS or login failure): the caller should stop
  its batch rather than hammer a server that is down.

Deciding what to do with those outcomes (retry, dead, events) is the sender's
job (``helpdesk.outbound.sender``), not the transport's.
"""
from __future__ import annotations

import logging
import mailbox
import smtplib
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from helpdesk.config import Settings, SmtpSection
from helpdesk.core.addresses import ascii_address

log = logging.getLogger(__name__)

Refused = dict[str, tuple[int, str]]
FRESH = 1.0  # seconds after its last answer during which a connection is reused unchecked


class DeliveryError(Exception):
    """The message was not accepted; ``permanent`` says whether to retry."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class ConnectionFailure(DeliveryError):
    """The server could not be reached or used at all; stop the batch."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, permanent=False)


class Transport(Protocol):
    def send(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> Refused: ...

    def close(self) -> None: ...


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}".strip()


class SmtpTransport:
    """smtplib against the configured relay; one connection reused until ``close()``.

    ``security``: ``ssl`` is implicit TLS (port 465), ``starttls`` upgrades a plain
    connection and refuses to go on without it, ``none`` is plain text. Server
    certificates are always verified: against ``ca_file`` when it is set, else the
    system's trust store. Credentials are never logged.
    """

    def __init__(self, settings: SmtpSection, *, local_hostname: str | None = None) -> None:
        self._settings = settings
        self._local_hostname = local_hostname
        self._smtp: smtplib.SMTP | None = None
        self._answered_at = 0.0  # time.monotonic() of the server's last answer

    @property
    def address(self) -> str:
        return f"{self._settings.host}:{self._settings.effective_port}"

    def _tls_context(self) -> ssl.SSLContext:
        ca_file = self._settings.ca_file
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def _connect(self) -> smtplib.SMTP:
        cfg = self._settings
        timeout = cfg.timeout.total_seconds()
        smtp: smtplib.SMTP | None = None
        try:
            if cfg.security == "ssl":
                smtp = smtplib.SMTP_SSL(cfg.host, cfg.effective_port, self._local_hostname,
                                        timeout=timeout, context=self._tls_context())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.effective_port, self._local_hostname,
                                    timeout=timeout)
            smtp.ehlo()
            if cfg.security == "starttls":
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if cfg.username:
                password = cfg.password.get_secret_value() if cfg.password else ""
                smtp.login(cfg.username, password)
            return smtp
        except smtplib.SMTPAuthenticationError as exc:
            _close_quietly(smtp)
            raise ConnectionFailure(
                f"{self.address}: login as {cfg.username} refused: "
                f"{_reply(exc.smtp_code, exc.smtp_error)}") from None
        except smtplib.SMTPNotSupportedError as exc:
            _close_quietly(smtp)
            raise ConnectionFailure(f"{self.address}: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            _close_quietly(smtp)
            raise ConnectionFailure(
                f"{self.address}: {_reply(exc.smtp_code, exc.smtp_error)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            _close_quietly(smtp)
            raise ConnectionFailure(f"{self.address}: {_describe(exc)}") from None

    def _connection(self) -> smtplib.SMTP:
        """The open connection if it still answers, else a new one.

        A NOOP before reusing a connection that was idle costs one round trip, but it
        tells a connection the server dropped while idle apart from a failure during a
        send: only the latter may have delivered anything. A connection that answered
        less than ``FRESH`` seconds ago (the previous mail of a batch) is used as it is:
        a server that drops it even so fails the next MAIL FROM, which delivered
        nothing, and that mail is tried again later.
        """
        if self._smtp is not None:
            if time.monotonic() - self._answered_at < FRESH:
                return self._smtp
            try:
                if self._smtp.noop()[0] == 250:
                    return self._smtp
            except (smtplib.SMTPException, OSError):
                pass
            self.close()
        self._smtp = self._connect()
        log.debug("connected to %s (%s)", self.address, self._settings.security)
        return self._smtp

    def send(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> Refused:
        smtp = self._connection()
        utf8 = smtp.has_extn("smtputf8")
        if not utf8 and not mail_from.isascii():
            raise DeliveryError(f"{self.address} does not offer SMTPUTF8, needed for the "
                                f"non-ASCII sender address {mail_from}", permanent=True)
        sent_as, refused = self._envelope(recipients, utf8)
        if not sent_as:
            return refused
        options = []
        if utf8 and not (mail_from.isascii() and raw.isascii() and all(map(str.isascii, sent_as))):
            options.append("SMTPUTF8")
        if not raw.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        try:
            server_refused = smtp.sendmail(mail_from, list(sent_as), raw, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            # Every recipient refused: nothing was sent; report them like a partial refusal.
            server_refused = exc.recipients
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            reply = _reply(exc.smtp_code, exc.smtp_error)
            if exc.smtp_code == 421:  # the server is closing the connection
                self.close()
                raise ConnectionFailure(f"{self.address}: {reply}") from None
            raise DeliveryError(reply, permanent=500 <= exc.smtp_code < 600) from None
        except (smtplib.SMTPException, OSError) as exc:
            # Disconnect, timeout, reset: the mail may or may not have gone through.
            self.close()
            raise ConnectionFailure(f"{self.address}: {_describe(exc)}") from None
        except UnicodeError as exc:
            self.close()  # may have failed half-way through a transaction
            raise DeliveryError(f"cannot encode for SMTP: {exc}", permanent=True) from None
        self._answered_at = time.monotonic()
        refused.update({sent_as[addr]: (code, _reply(code, msg))
                        for addr, (code, msg) in server_refused.items()})
        return refused

    def _envelope(self, recipients: Sequence[str], utf8: bool) -> tuple[dict[str, str], Refused]:
        """({address as sent in RCPT: address as given}, recipients refused here).

        With SMTPUTF8 every address goes as it is. Without it a UTF-8 domain goes in
        its IDNA (A-label) form, and a UTF-8 local part, which has no ASCII form, is
        refused for good (553 5.6.7, RFC 6531 section 3.7.4.1), like a refusal by the
        server: the sender records it and marks the address undeliverable.
        """
        sent_as: dict[str, str] = {}
        refused: Refused = {}
        for address in recipients:
            wire = address if utf8 or address.isascii() else ascii_address(address)
            if wire is None:
                refused[address] = (553, f"553 5.6.7 {self.address} does not offer SMTPUTF8, "
                                         "which an address with non-ASCII before the @ needs")
            else:
                sent_as[wire] = address
        return sent_as, refused

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            smtp.close()


def _close_quietly(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        try:
            smtp.close()
        except OSError:
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class MaildirTransport:
    """Each mail becomes one file in ``path/new``, byte for byte as rendered, readable
    by its owner only (the folders 0700, as ``mailbox`` makes them; the files 0600).

    There is no envelope in a Maildir: the sender and recipients live only in the
    mail's headers. Useful as the embedded default and for tests.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._maildir: mailbox.Maildir | None = None  # created on the first mail

    def send(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> Refused:
        try:
            if self._maildir is None:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._maildir = mailbox.Maildir(self.path, factory=None, create=True)
            key = self._maildir.add(raw)  # bytes are written as they are (no From-mangling)
            # mailbox makes the file 0666 less the umask: narrow it (in a Maildir we
            # created, nobody else could enter tmp/ or new/ meanwhile)
            (self.path / "new" / key).chmod(0o600)
        except OSError as exc:
            raise ConnectionFailure(f"maildir {self.path}: {_describe(exc)}") from None
        return {}

    def close(self) -> None:
        pass


def make_transport(settings: Settings) -> SmtpTransport | MaildirTransport:
    outbound = settings.outbound
    if outbound.smtp is not None:
        return SmtpTransport(outbound.smtp)
    assert outbound.maildir is not None  # the config allows exactly one of the two
    return MaildirTransport(settings.resolve(outbound.maildir))
