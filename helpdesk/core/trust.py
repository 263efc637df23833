"""Who wrote a mail, as far as we can tell (SPEC, Round 2: Trust) — pure.

A From header is a claim anyone can type. ``SenderTrust`` is what the shell could
establish about the sender of one inbound message (a trusted DMARC/DKIM result, a
staff-only reply address, a signed-in web session, the admin's command line), and
the core decides with it: only a verified staff sender steers a case.

This module reads the DMARC/DKIM part: ``Authentication-Results`` (RFC 8601)
headers, and which of them to believe. The parser is our own, small and linear,
rather than the ``authres`` package: the core stays free of untyped third-party
code (mypy --strict), ``authres`` has had no release since 2019 and refuses
headers real servers write (Exchange Online's have no authserv-id), and all we
need of a header is its authserv-id and its dkim/dmarc results.

Which headers count. Anyone can write ``Authentication-Results: mx.example.com;
dmarc=pass`` into the mail they send; only our own MTA's verdict may count. An
MTA adds its results on top of what it received (prepends, like its ``Received``
header), so ours sit above everything the sender wrote; RFC 8601 section 5 also
asks it to delete incoming headers that claim its authserv-id. So:

1. only headers whose authserv-id is in ``trust.authserv_ids`` (others ignored);
2. only the topmost run of them, down to the first ``Received`` header below it:
   that header is the hop that received the mail, and what lies under it was in
   the mail before (a forged header among it never counts);
3. in that run the first ``dmarc`` result decides: ``pass`` (for the From domain)
   verifies, anything but ``none`` refuses, whatever a ``dkim`` result below says;
   without a DMARC verdict (or ``dmarc=none``: no policy published) a ``dkim=pass``
   whose ``header.d``/``header.i`` domain is aligned with the From domain verifies.

A forged header can therefore only win when our MTA added no result of its own to
the mail: the README says what the admin's MTA must do.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SenderTrust:
    verified: bool = False
    via: str = ""  # dmarc | dkim | staff_reply_address | web | cli | "" when not verified
    reason: str = "no trusted authentication"  # why not, for the unverified-staff notice


UNVERIFIED = SenderTrust()


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One ``method=result`` of a header, e.g. ``dkim=pass header.d=example.com``."""

    method: str  # lower-cased, without a version: "dkim", "dmarc", "spf", ...
    result: str  # lower-cased: "pass", "fail", "none", ...
    properties: tuple[tuple[str, str], ...] = ()  # ("header.d", "example.com"), lower-cased names

    def get(self, name: str) -> str:
        return next((value for key, value in self.properties if key == name), "")


@dataclass(frozen=True, slots=True)
class AuthenticationResults:
    authserv_id: str  # lower-cased; "" when the header has none (Exchange Online)
    results: tuple[MethodResult, ...]


# --- parsing -------------------------------------------------------------------------------

_SPECIALS = ";=/"


def _tokens(value: str) -> list[str]:
    """The header's words, quoted strings unquoted, comments dropped, and ``;`` ``=`` ``/``
    as tokens of their own. One linear pass; an unclosed comment or quote ends the value."""
    tokens: list[str] = []
    word: list[str] = []
    i, n = 0, len(value)

    def flush() -> None:
        if word:
            tokens.append("".join(word))
            word.clear()

    while i < n:
        c = value[i]
        if c == "(":  # a comment, nested ones included; may hold ";" or "=" (never tokens)
            flush()
            depth = 0
            while i < n:
                if value[i] == "\\":
                    i += 1
                elif value[i] == "(":
                    depth += 1
                elif value[i] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
        elif c == '"':
            i += 1
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                word.append(value[i])
                i += 1
        elif c in _SPECIALS:
            flush()
            tokens.append(c)
        elif c.isspace():
            flush()
        else:
            word.append(c)
        i += 1
    flush()
    return tokens


def _split(tokens: list[str]) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    for token in tokens:
        if token == ";":
            groups.append([])
        else:
            groups[-1].append(token)
    return groups


def _resinfo(group: list[str]) -> MethodResult | None:
    """``method[/version] = result`` then ``name = value`` pairs (reason=, header.d=, ...)."""
    if len(group) < 3 or group[1] not in ("=", "/"):
        return None
    method = group[0].lower()
    rest = group[1:]
    if rest[0] == "/":  # a method version: dkim/1=pass
        rest = rest[2:]
    if len(rest) < 2 or rest[0] != "=" or rest[1] in _SPECIALS:
        return None
    result = rest[1].lower()
    properties = []
    pairs = rest[2:]
    for i in range(len(pairs) - 2):
        if pairs[i + 1] == "=" and pairs[i] not in _SPECIALS and pairs[i + 2] not in _SPECIALS:
            properties.append((pairs[i].lower(), pairs[i + 2]))
    return MethodResult(method, result, tuple(properties))


def parse_authentication_results(value: str) -> AuthenticationResults:
    """One ``Authentication-Results`` header value (RFC 8601 section 2.2), leniently:
    what cannot be read is left out rather than refused."""
    groups = _split(_tokens(value))
    head = groups[0]
    if "=" in head:  # no authserv-id at all: the first group is already a result
        authserv_id, infos = "", groups
    else:
        authserv_id, infos = (head[0].lower() if head else ""), groups[1:]
    results = tuple(r for group in infos if (r := _resinfo(group)) is not None)
    return AuthenticationResults(authserv_id, results)


# --- which headers count, and what they say --------------------------------------------------

def trusted_results(trace: Sequence[tuple[str, str]],
                    authserv_ids: Iterable[str]) -> tuple[AuthenticationResults, ...]:
    """The headers of our own MTA in ``trace`` (the mail's ``Received`` and
    ``Authentication-Results`` headers, top down): see the module docstring."""
    trusted = {a.lower() for a in authserv_ids}
    found: list[AuthenticationResults] = []
    for name, value in trace:
        if name == "received":
            if found:
                break  # the hop that received the mail: below it is what the sender wrote
            continue
        parsed = parse_authentication_results(value)
        if parsed.authserv_id in trusted:
            found.append(parsed)
    return tuple(found)


def aligned(signer: str, from_domain: str) -> bool:
    """Is a DKIM signing domain aligned with the From domain? The same domain, or a
    parent of it (relaxed alignment, RFC 7489 3.1.1) that is not a bare top-level name."""
    signer, from_domain = signer.lower().strip(".").lstrip("@"), from_domain.lower()
    return bool(signer) and (signer == from_domain
                             or ("." in signer and from_domain.endswith("." + signer)))


def _dkim_domain(result: MethodResult) -> str:
    return result.get("header.d") or result.get("header.i").rpartition("@")[2]


def authenticate(trace: Sequence[tuple[str, str]], sender: str,
                 authserv_ids: Iterable[str]) -> SenderTrust:
    """What our MTA's ``Authentication-Results`` say about the From address ``sender``."""
    ids = tuple(authserv_ids)
    if not ids:
        return SenderTrust(reason="no authserv-id is trusted (trust.authserv_ids is empty)")
    headers = trusted_results(trace, ids)
    if not headers:
        return SenderTrust(reason="no Authentication-Results header from "
                                  + " or ".join(ids) + " (trust.authserv_ids)")
    domain = sender.rpartition("@")[2].lower()
    results = [r for header in headers for r in header.results]
    dmarc = next((r for r in results if r.method == "dmarc"), None)
    if dmarc is not None and dmarc.result != "none":
        checked = dmarc.get("header.from").lower() or domain
        if dmarc.result == "pass" and checked == domain:
            return SenderTrust(True, "dmarc", "")
        return SenderTrust(reason=f"{headers[0].authserv_id} reports dmarc={dmarc.result}"
                                  + ("" if checked == domain else f" for {checked}"))
    if any(r.method == "dkim" and r.result == "pass" and aligned(_dkim_domain(r), domain)
           for r in results):
        return SenderTrust(True, "dkim", "")
    return SenderTrust(reason=f"{headers[0].authserv_id} reports neither dmarc=pass nor "
                              f"a dkim=pass signed by {domain}")
