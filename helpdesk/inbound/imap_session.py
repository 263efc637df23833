"""Opening an IMAP session: TCP, TLS (verified by default), then login.

Every failure comes out as an ``ImapError`` whose message says what went wrong
and where, and never contains a password or a token, so it can be logged and
stored in ``mailbox_state.last_error`` as it is.
"""
from __future__ import annotations

import imaplib
import logging
import socket
import ssl
import subprocess
from pathlib import Path

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from helpdesk.config import ImapMailbox

log = logging.getLogger(__name__)


class ImapError(Exception):
    """The mailbox cannot be used right now; the message is safe to log and store."""


def describe(exc: BaseException, mailbox: ImapMailbox | None = None) -> str:
    """A one-line reason for ``last_error`` and the log."""
    if isinstance(exc, ImapError):
        return str(exc)
    where = f" {_where(mailbox)}" if mailbox else ""
    text = _text(exc)
    if isinstance(exc, (OSError, EOFError, imaplib.IMAP4.abort)):
        return f"connection to{where} lost: {text}"
    if isinstance(exc, (imaplib.IMAP4.error, IMAPClientError)):
        return f"IMAP server{where} said: {text}"
    return f"{type(exc).__name__}: {text}"


def _text(exc: BaseException) -> str:
    """imapclient puts the server's bytes' repr in its messages: b'[...] text'."""
    text = str(exc).strip() or type(exc).__name__
    if len(text) > 2 and text[:2] in ("b'", 'b"') and text[-1] == text[1]:
        text = text[2:-1]
    return text


def connect(mailbox: ImapMailbox, *, cwd: Path | None = None) -> IMAPClient:
    """A logged-in client for *mailbox*; the caller must ``logout()`` it.

    *cwd* is where a relative ``oauth2_token_command`` runs (the config folder).
    """
    token = oauth2_token(mailbox, cwd=cwd) if mailbox.oauth2_token_command else None
    client = _open(mailbox)
    _no_literal_tracing(client)
    try:
        if mailbox.security == "starttls":
            _starttls(client, mailbox)
        _login(client, mailbox, token)
    except BaseException:
        close_quietly(client)
        raise
    return client


def _no_literal_tracing(client: IMAPClient) -> None:
    """imapclient sets imaplib's own tracing to level 5 and sends it to a DEBUG logger;
    at level 5 imaplib formats a repr of every response *with its literals*, i.e. of
    every fetched body, whether or not anything logs it: fetching a 25 MB mail took
    15x the time and +57 MB at its peak. Level 4 still traces every protocol line."""
    imap = getattr(client, "_imap", None)
    if imap is not None and getattr(imap, "debug", 0) > 4:
        imap.debug = 4


def close_quietly(client: IMAPClient) -> None:
    """Log out, or at least close the socket; never raises."""
    try:
        client.logout()
    except Exception:
        try:
            client.shutdown()
        except Exception:
            log.debug("could not close the IMAP connection cleanly", exc_info=True)


def oauth2_token(mailbox: ImapMailbox, *, cwd: Path | None = None) -> str:
    """Run ``oauth2_token_command`` and return the access token it prints.

    The command is run at every connect, because tokens expire; it refreshes and
    stores the token itself. A command that fails is an ``ImapError`` at once.
    """
    command = mailbox.oauth2_token_command or []
    where = f"oauth2_token_command of mailbox {mailbox.name!r}"
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, check=False,
                              timeout=mailbox.timeout.total_seconds(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ImapError(f"{where} timed out after {mailbox.timeout.total_seconds():g}s") from None
    except OSError as exc:
        raise ImapError(f"{where} could not run {command[0]!r}: {exc.strerror}") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        tail = detail[-1][:300] if detail else "no message on stderr"
        raise ImapError(f"{where} failed (exit {done.returncode}): {tail}")
    token = done.stdout.decode(errors="replace").strip()
    if not token or len(token.split()) != 1:
        raise ImapError(f"{where} printed no usable token (expected one line)")
    return token


def _where(mailbox: ImapMailbox) -> str:
    return f"{mailbox.host}:{mailbox.effective_port}"


def _ssl_context(mailbox: ImapMailbox) -> ssl.SSLContext:
    cafile = str(mailbox.ca_file) if mailbox.ca_file else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ImapError(
            f"cannot load ca_file {cafile} for mailbox {mailbox.name!r}: {exc}") from None


def _tls_error(mailbox: ImapMailbox, exc: BaseException) -> ImapError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        hint = "" if mailbox.ca_file else " (set ca_file for a private CA)"
        return ImapError(f"certificate verify failed for {_where(mailbox)}: {reason}{hint}")
    return ImapError(f"TLS handshake with {_where(mailbox)} failed: {exc}")


def _open(mailbox: ImapMailbox) -> IMAPClient:
    use_ssl = mailbox.security == "ssl"
    try:
        return IMAPClient(mailbox.host, mailbox.effective_port, ssl=use_ssl,
                          ssl_context=_ssl_context(mailbox) if use_ssl else None,
                          timeout=mailbox.timeout.total_seconds())
    except ssl.SSLError as exc:
        raise _tls_error(mailbox, exc) from None
    except socket.timeout:
        raise ImapError(f"cannot connect to {_where(mailbox)}: timed out") from None
    except OSError as exc:
        raise ImapError(f"cannot connect to {_where(mailbox)}: {exc.strerror or exc}") from None
    except (imaplib.IMAP4.error, IMAPClientError) as exc:
        raise ImapError(f"{_where(mailbox)} is not a usable IMAP server: {_text(exc)}") from None


def _starttls(client: IMAPClient, mailbox: ImapMailbox) -> None:
    if not client.has_capability("STARTTLS"):
        raise ImapError(f"{_where(mailbox)} does not offer STARTTLS (security: starttls)")
    try:
        client.starttls(_ssl_context(mailbox))
    except ssl.SSLError as exc:
        raise _tls_error(mailbox, exc) from None


def _login(client: IMAPClient, mailbox: ImapMailbox, token: str | None) -> None:
    try:
        if token is not None:
            client.oauth2_login(mailbox.username, token)
        else:
            assert mailbox.password is not None  # the config guarantees one credential
            client.login(mailbox.username, mailbox.password.get_secret_value())
    except LoginError as exc:
        how = "XOAUTH2 login" if token is not None else "login"
        raise ImapError(f"{how} failed for {mailbox.username} at {_where(mailbox)}: "
                        f"{_scrub(_text(exc), mailbox, token)}") from None


def _scrub(text: str, mailbox: ImapMailbox, token: str | None) -> str:
    """Servers rarely echo credentials, but never let one into a log line."""
    for secret in (token, mailbox.password.get_secret_value() if mailbox.password else None):
        if secret:
            text = text.replace(secret, "***")
    return text
