"""Build outgoing mail as bytes, with the headers that keep other systems quiet.

Headers are built by the email package's header classes (``Address``) from checked
values only: every address passes ``check_address`` again here, so a bug upstream
fails the mail instead of sending it. Text from a customer becomes one harmless line
(``one_line``, ``display_name``), so a subject like ``"Hi\\r\\nBcc: victim@x"``
stays one line, and it is cut (``MAX_TEXT_CHARS``, ``MAX_NAME_CHARS``): the email
package folds a header in time quadratic in its length (a 1 MB subject took minutes).

A mail goes out in 7-bit headers, domains in IDNA (A-label) form, unless one of its
addresses has a UTF-8 local part: then it is an RFC 6532 mail with UTF-8 headers,
which needs a server that offers SMTPUTF8 (see ``outbound.transport``).

Cheap to repeat (every mail the sender delivers is built here, and this was a fifth of
its time): a header line is folded by the header classes once per distinct value
(``_header``, a bounded cache of a pure function: our From, the loop header, a staff
recipient, the subject a case's acknowledgement shares with its staff notice repeat),
each address is checked once per process (``_address``), and the MIME frame around the
rendered text is written here rather than by an ``EmailMessage`` and its generator:
the parts are quoted-printable (``binascii``), the same frame every time.
"""
from __future__ import annotations

import binascii
import email.policy
import email.utils
import functools
import random
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address

from helpdesk.core.refs import message_id_mac
from helpdesk.core.addresses import ascii_address, check_address
from helpdesk.core.text import display_name

LOOP_HEADER = "X-Helpdesk-Loop"


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who a mail is from and to, and where it sits in its thread."""

    from_address: str
    from_name: str
    to: tuple[str, ...]
    subject: str
    message_id: str  # bare, no angle brackets
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_to: str | None = None
    auto_submitted: str | None = None  # "auto-replied" | "auto-generated" | None for relays
    loop_value: str = ""
    case_ref: str | None = None


def new_message_id(domain: str, secret: bytes) -> str:
    """``helpdesk.<unique>.<mac>@<domain>``: the keyed hash lets us tell a reply naming
    one of our mails from one naming a Message-ID somebody else made up
    (``refs.is_own_message_id``)."""
    unique = secrets.token_hex(8)
    return f"helpdesk.{unique}.{message_id_mac(secret, unique)}@{domain}"


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
# The email package folds a header in time quadratic in its length, and a display name
# of non-ASCII words costs about a millisecond a character: text is cut first. More
# than any subject can be (``limits.subject_chars`` is at most 2,000, plus the tag),
# more than any display name needs.
MAX_TEXT_CHARS = 2_100
MAX_NAME_CHARS = 100


def one_line(text: str) -> str:
    """Customer text made a harmless header value: one line, no control characters, and
    no "=?": the policy would decode what follows as an RFC 2047 encoded-word (text we
    could not decode would be decoded a second time, and can break folding)."""
    return " ".join(_CONTROL.sub("", text[:MAX_TEXT_CHARS]).split()).replace("=?", "= ?")


@functools.lru_cache(maxsize=4096)  # pure: each address is checked once per process
def _address(addr: str, name: str = "", *, utf8: bool) -> tuple[str, str, str]:
    """One element of an address header, from a checked address only: (display name,
    local part, domain), what ``Address`` is made of."""
    check_address(addr)  # raises NotAnAddress: never write what is not one
    local, _, domain = (addr if utf8 else ascii_address(addr) or addr).rpartition("@")
    return one_line(display_name(name[:MAX_TEXT_CHARS])[:MAX_NAME_CHARS]), local, domain


_POLICY = {False: email.policy.SMTP, True: email.policy.SMTPUTF8}


# What repeats does so within a batch of mails (a case's acknowledgement and notice), or
# always (our own values): a small cache, as customer text can be long.
@functools.lru_cache(maxsize=512)
def _header(name: str, value: str, utf8: bool) -> bytes:
    """``Name: value`` and CRLF, as the email package's header class for *name* parses
    and folds it (what ``EmailMessage`` does with a header it is given, and it refuses a
    line break as ``EmailMessage`` does)."""
    if len(value.splitlines()) > 1:
        raise ValueError(f"{name}: a header value may not contain a line break")
    policy = _POLICY[utf8]
    folded = policy.header_factory(name, value).fold(policy=policy)
    alone = f"{name}:\r\n "
    if folded.startswith(alone):
        # A value that fits a line of its own but not after "Subject: " goes on the next
        # line, and readers then show it with a leading space: keep it beside its name
        # (a line of at most 78 + len(name) characters, far below RFC 5322's 998).
        folded = f"{name}: {folded[len(alone):]}"
    return folded.encode("utf-8" if utf8 else "ascii")


@functools.lru_cache(maxsize=512)
def _address_header(name: str, addresses: tuple[tuple[str, str, str], ...], utf8: bool) -> bytes:
    """An address header from ``_address`` elements, through ``Address`` objects."""
    policy = _POLICY[utf8]
    value = [Address(display_name=n, username=local, domain=domain)
             for n, local, domain in addresses]
    return policy.header_factory(name, value).fold(policy=policy).encode(
        "utf-8" if utf8 else "ascii")


# A Message-ID as RFC 5322 section 3.6.4 has it, id-left "@" id-right. A mail that came
# without one is known by its content hash ("sha256:..."), which is no Message-ID.
_MSG_ID = re.compile(r"[^<>@\s\x00-\x1f\x7f]+@[^<>@\s\x00-\x1f\x7f]+")


def _needs_utf8(addresses: tuple[str, ...]) -> bool:
    """Whether a mail to and from *addresses* must have UTF-8 headers: only a UTF-8
    local part has no ASCII form (a UTF-8 domain has its A-label)."""
    return any(not address.rpartition("@")[0].isascii() for address in addresses)


def build(envelope: Envelope, text: str, html: str, date: datetime) -> bytes:
    utf8 = _needs_utf8((envelope.from_address, *envelope.to, *filter(None, [envelope.reply_to])))
    head = [
        _address_header("From", (_address(envelope.from_address, envelope.from_name,
                                          utf8=utf8),), utf8),
        _address_header("To", tuple(_address(a, utf8=utf8) for a in envelope.to), utf8),
        _header("Subject", one_line(envelope.subject), utf8),
        _header("Date", email.utils.format_datetime(date), utf8),
        _header("Message-ID", f"<{envelope.message_id}>", utf8),
    ]
    if envelope.in_reply_to and _MSG_ID.fullmatch(envelope.in_reply_to):
        head.append(_header("In-Reply-To", f"<{envelope.in_reply_to}>", utf8))
    if references := [mid for mid in envelope.references if _MSG_ID.fullmatch(mid)]:
        head.append(_header("References", " ".join(f"<{mid}>" for mid in references), utf8))
    if envelope.reply_to:
        head.append(_address_header("Reply-To", (_address(envelope.reply_to, utf8=utf8),), utf8))
    if envelope.auto_submitted:
        head.append(_header("Auto-Submitted", envelope.auto_submitted, utf8))
        head.append(_header("Precedence", "auto_reply", utf8))
    # Asks Exchange and friends not to answer with out-of-office or read receipts.
    head.append(_header("X-Auto-Response-Suppress", "All", utf8))
    head.append(_header(LOOP_HEADER, envelope.loop_value, utf8))
    if envelope.case_ref:
        head.append(_header("X-Helpdesk-Case", envelope.case_ref, utf8))
    head.append(_header("MIME-Version", "1.0", utf8))
    if not html:
        return b"".join(head) + _part_head("plain", utf8) + b"\r\n" + _quoted_printable(text)
    boundary = _BOUNDARY.encode()
    return b"".join([
        *head, _header("Content-Type", f'multipart/alternative; boundary="{_BOUNDARY}"', utf8),
        b"\r\n--", boundary, b"\r\n", _part_head("plain", utf8), b"\r\n",
        _quoted_printable(text),
        b"\r\n--", boundary, b"\r\n", _part_head("html", utf8), b"\r\n",
        _quoted_printable(html),
        b"\r\n--", boundary, b"--\r\n"])


# The multipart boundary, as the email package makes one, once per process: nothing in a
# quoted-printable part can look like it, since such a part writes every "=" as "=3D".
_BOUNDARY = f"==============={random.randrange(10**18, 10**19)}=="


def _part_head(subtype: str, utf8: bool) -> bytes:
    return (_header("Content-Type", f'text/{subtype}; charset="utf-8"', utf8)
            + _header("Content-Transfer-Encoding", "quoted-printable", utf8))


def _quoted_printable(text: str) -> bytes:
    """*text* as a quoted-printable body with CRLF line ends (any line end counts as one,
    as for the email package). Encoded lines have at most 77 characters (the email
    package allows 78)."""
    lines = text.encode("utf-8").splitlines()
    return binascii.b2a_qp(b"\r\n".join(lines) + b"\r\n", istext=True)


def references_for(first: str | None, parent: str | None, previous: tuple[str, ...] = ()) -> tuple[str, ...]:
    """RFC 5322 References: the thread's root, what the parent referenced, the parent."""
    chain = [m for m in (first, *previous, parent) if m]
    return tuple(dict.fromkeys(chain))[-20:]
