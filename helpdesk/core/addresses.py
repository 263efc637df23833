"""Is this one plain address? (SPEC, Round 2: Trust: Addresses) — pure.

Every address taken from a mail may be written by someone hostile, and every one we
accept may end up in an outgoing header or an SMTP envelope. So an address is
accepted only as ONE plain addr-spec: a dot-atom local part (RFC 5322 section 3.4.1,
or UTF-8 per RFC 6531) and a domain name. Anything else is not an address:

- ``split_mailboxes`` cuts an address header into its elements, strictly and in one
  linear pass, and says of each element that is not one plain mailbox why not (a
  group, a second ``<address>``, a comment holding an address, unbalanced quotes...).
  The email package's two parsers cannot do this job here: ``getaddresses`` (3.11.7)
  recurses on nested comments (1,000 "(" raise RecursionError) and quietly splits
  ``alice@a.example)<bob@b.example>`` into two addresses (CVE-2023-27043); the
  header registry's parser is quadratic (a 500 KB To took 19 s).
- ``check_address`` decides whether the text of one element is an address, with
  ``email-validator`` (syntax only, never DNS): no quoted local part, no route
  (``%``, ``!``) in it, no domain literal, no control, format or bidi characters,
  the length limits, a valid IDNA domain that is not a special-use name (localhost,
  .local, .invalid, .onion, .arpa).
  It refuses encoded-words itself: they are text, never part of an address.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import idna
from email_validator import EmailNotValidError, validate_email


class NotAnAddress(ValueError):
    """The text is not one plain address; the message says why."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One element of an address header, as it was written."""

    written: str  # the element as it stood in the header
    name: str  # the display name, unquoted (encoded-words are left as they are)
    address: str  # the text that stood for the address
    problem: str = ""  # why this element is not one plain mailbox; "" when it may be


# An escaped pair, one special character, or a run of anything else. Every token
# is matched once, so the scan is linear in the header's length.
_TOKEN = re.compile(r'\\.|[\\"()<>,:;]|[^\\"()<>,:;]+', re.DOTALL)


class _Element:
    """What one element of an address list held, while it is being read."""

    def __init__(self, in_group: bool) -> None:
        self.before: list[str] = []  # the text before "<" (a bare address: all of it)
        self.bare_before: list[str] = []  # the unquoted part of it: "@" here is suspect
        self.inside: list[str] = []  # between "<" and ">"
        self.after: list[str] = []  # after ">": only comments and spaces belong here
        self.comments: list[str] = []
        self.angle = 0  # 0: no "<" yet, 1: inside <...>, 2: after ">"
        self.in_group = in_group
        self.problem = ""

    def fail(self, problem: str) -> None:
        self.problem = self.problem or problem

    def text(self, token: str, quoted: bool) -> None:
        if self.angle == 1:
            self.inside.append(token)
        elif self.angle == 2:
            self.after.append(token)
        else:
            self.before.append(token)
            if not quoted:
                self.bare_before.append(token)

    def mailbox(self, written: str) -> Mailbox | None:
        before = "".join(self.before).strip()
        comment = " ".join(" ".join(self.comments).split())
        if self.angle == 0:
            if not before and not self.problem:
                return None  # an empty element: "a@x.example,,b@x.example", a lone comment
            address, name = before, comment
        else:
            address, name = "".join(self.inside).strip(), _unquote(before) or comment
            if "".join(self.after).strip():
                self.fail("text after the <address>")
            if "@" in "".join(self.bare_before):
                self.fail("a second @ outside the <address>")
        if "@" in comment:
            self.fail("a comment holding an address")
        if self.in_group:
            self.fail("in a group")
        return Mailbox(written.strip(), name, address, self.problem)


def split_mailboxes(value: str) -> list[Mailbox]:
    """The elements of an address header (To, Cc, From...), each with its problem.

    Empty elements and empty groups (``undisclosed-recipients:;``) yield nothing; the
    members of a group are returned with the problem "in a group": a group is not an
    address we answer. Nested comments are counted, never recursed into.
    """
    found: list[Mailbox] = []
    in_group = quoted = False
    depth = 0
    element = _Element(in_group)
    start = 0  # where the element being read began

    def finish(end: int) -> None:
        nonlocal element, start
        mailbox = element.mailbox(value[start:end])
        if mailbox is not None:
            found.append(mailbox)
        element, start = _Element(in_group), end + 1

    for match in _TOKEN.finditer(value):
        token = match.group()
        if quoted:
            element.text(token, quoted=True)
            quoted = token != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(token, 0)
            if depth:
                element.comments.append(token)
        elif token == '"':
            quoted = True
            element.text(token, quoted=True)
        elif token == "(":
            depth = 1
            element.comments.append(" ")
        elif element.angle == 1 and token != ">":
            element.text(token, quoted=False)  # inside <...>: the check refuses what is odd
        elif token == "<":
            if element.angle:
                element.fail("more than one <address>")
            else:
                element.angle = 1
        elif token == ">":
            if element.angle == 1:
                element.angle = 2
            else:
                element.fail("a stray >")
        elif token == ",":
            finish(match.start())
        elif token == ":":
            if in_group or element.angle:
                element.fail("a stray :")
            else:  # "name: member, member;" -- what came before the colon is the group's name
                in_group = True
                element, start = _Element(in_group), match.end()
        elif token == ";":
            if in_group:
                finish(match.start())
                in_group = False
                element = _Element(in_group)
            else:
                element.fail("a stray ;")
        elif token == ")":
            element.fail("a stray )")
        else:
            element.text(token, quoted=False)
    if quoted or depth or element.angle == 1:
        element.fail("an unclosed quote, comment or <address>")
    finish(len(value))
    return found


def _unquote(phrase: str) -> str:
    """A display name without its quotes and backslash escapes."""
    return re.sub(r'\\(.)|"', lambda m: m.group(1) or "", phrase, flags=re.DOTALL).strip()


# RFC 5321 section 4.5.3.1: a path (the address in an SMTP command) is at most 256
# octets with its angle brackets. Longer text is refused before anything else.
MAX_ADDRESS_CHARS = 254
# ``user%domain@host`` and ``domain!user@host`` are valid dot-atoms, and routes: an MTA
# that delivers for ``host`` may send them on to ``user@domain`` (Postfix's
# ``allow_percent_hack`` and ``swap_bangpath``, both on by default; sendmail alike).
# Mail to "any mailbox of @staff.example.com" must not reach a stranger's.
_ROUTE = re.compile(r"[%!]")


def check_address(text: str) -> str:
    """*text* as one checked address, lower-cased (how the whole helpdesk compares
    addresses); raises ``NotAnAddress`` saying why not."""
    if len(text) > MAX_ADDRESS_CHARS:
        raise NotAnAddress(f"longer than {MAX_ADDRESS_CHARS} characters")
    if "=?" in text:
        raise NotAnAddress("an encoded-word: text, never part of an address")
    if _ROUTE.search(text.rpartition("@")[0]):
        raise NotAnAddress("a route in the local part (% or !): another address hidden in it")
    try:
        checked = validate_email(
            text, check_deliverability=False, allow_smtputf8=True, allow_quoted_local=False,
            allow_domain_literal=False, allow_display_name=False, allow_empty_local=False,
            globally_deliverable=True,
            # Lets the .test names of RFC 6761 through: they never resolve, so they are
            # harmless, and labs and our own tests use them.
            test_environment=True)
    except EmailNotValidError as exc:
        raise NotAnAddress(str(exc)) from None
    return checked.normalized.lower()


def ascii_address(address: str) -> str | None:
    """A checked address as it can travel without SMTPUTF8: its domain in IDNA
    (A-label) form; None when the local part itself is not ASCII."""
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        return None
    return f"{local}@{domain if domain.isascii() else idna.encode(domain, uts46=True).decode()}"
