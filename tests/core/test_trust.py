"""Authentication-Results: what a header says, which headers count, and whose mail it makes
a From address (helpdesk.core.trust). Headers as real servers write them."""
from __future__ import annotations

import pytest

from helpdesk.core.trust import aligned, authenticate, parse_authentication_results, trusted_results

OURS = ("mx.example.com",)
AGENT = "agent@example.com"


def ar(value: str) -> tuple[str, str]:
    return ("authentication-results", value)


def received(by: str = "mx.example.com") -> tuple[str, str]:
    return ("received", f"from mail.attacker.example (mail.attacker.example [192.0.2.7]) by {by} "
                        "(Postfix) with ESMTPS id 4Xyz; Mon, 2 Nov 2026 09:00:00 +0000")


# --- parsing ---------------------------------------------------------------------------------

def test_parses_a_multi_result_header_with_comments_and_quoted_values():
    parsed = parse_authentication_results(
        'mx1.riseup.net; dkim=pass (1024-bit key; unprotected) header.d=yandex.ru '
        'header.i=@yandex.ru header.s=mail header.b=avNJu6sw; dkim-atps=neutral; '
        'dmarc=fail reason="signature verification failed; see (this)" header.from=yandex.ru')
    assert parsed.authserv_id == "mx1.riseup.net"
    dkim, atps, dmarc = parsed.results
    assert (dkim.method, dkim.result, dkim.get("header.d"), dkim.get("header.i")) == (
        "dkim", "pass", "yandex.ru", "@yandex.ru")
    assert (atps.method, atps.result) == ("dkim-atps", "neutral")
    assert (dmarc.result, dmarc.get("reason"), dmarc.get("header.from")) == (
        "fail", "signature verification failed; see (this)", "yandex.ru")


def test_a_comment_before_the_id_a_version_and_method_versions_are_read():
    parsed = parse_authentication_results(
        "(our filter) MX.Example.COM 1; dkim/1 = pass header.d=example.com; spf=none")
    assert parsed.authserv_id == "mx.example.com"
    assert [(r.method, r.result) for r in parsed.results] == [("dkim", "pass"), ("spf", "none")]


def test_a_header_without_an_authserv_id_has_none():
    # Exchange Online writes its results without the authserv-id RFC 8601 requires.
    parsed = parse_authentication_results(
        "spf=pass (sender IP is 40.92.73.85) smtp.mailfrom=hotmail.com; dkim=pass (signature "
        "was verified) header.d=hotmail.com;dmarc=pass action=none header.from=hotmail.com")
    assert parsed.authserv_id == ""
    assert [r.method for r in parsed.results] == ["spf", "dkim", "dmarc"]


@pytest.mark.parametrize("value", [
    "", ";", "mx.example.com", "mx.example.com; none", "mx.example.com; dkim", "mx.example.com; =",
    "mx.example.com; dkim=", 'mx.example.com; dkim=pass reason="unterminated',
    "mx.example.com; dkim=pass (unterminated comment header.d=example.com",
    "mx.example.com; ((((( dmarc=pass", "\\\\\\", "mx.example.com;;;; dmarc = = pass",
])
def test_garbage_is_read_as_far_as_it_goes_and_never_raises(value):
    parsed = parse_authentication_results(value)
    assert all(r.result not in ("", "=", ";") for r in parsed.results)
    assert not any(r.method == "dmarc" and r.result == "pass" for r in parsed.results)


def test_parsing_is_linear_in_the_header_size():
    import time
    value = "mx.example.com; " + "(" * 200_000 + ")" * 200_000 + " dkim=pass " + '"' * 100_001
    start = time.perf_counter()
    parse_authentication_results(value)
    assert time.perf_counter() - start < 2


# --- which headers count -----------------------------------------------------------------------

def test_only_our_authserv_ids_count_and_only_down_to_the_receiving_hop():
    trace = [
        received("helpdesk.example.com"),  # a later local hop (e.g. Dovecot LMTP)
        ar("other.example.net; dmarc=pass header.from=example.com"),  # not ours: ignored
        ar("mx.example.com; dkim=fail header.d=example.com"),
        ar("mx.example.com; dmarc=fail header.from=example.com"),  # a second filter of ours
        received(),  # the hop that received the mail: what lies below came with it
        ar("mx.example.com; dmarc=pass header.from=example.com"),  # the sender's forgery
    ]
    block = trusted_results(trace, OURS)
    assert [[r.result for r in h.results] for h in block] == [["fail"], ["fail"]]


def test_a_forged_header_below_ours_never_wins_even_in_the_same_hop():
    # An MTA that adds its verdict below its own Received header, and does not delete the
    # sender's: the forgery sits in the same run, but our verdict is above it and decides.
    trace = [received(), ar("mx.example.com; dmarc=fail (p=reject) header.from=example.com"),
             ar("mx.example.com; dmarc=pass header.from=example.com; dkim=pass "
                "header.d=example.com")]
    trust = authenticate(trace, AGENT, OURS)
    assert not trust.verified and "dmarc=fail" in trust.reason


def test_dkim_cannot_override_a_dmarc_verdict_of_ours():
    trace = [ar("mx.example.com; dmarc=fail header.from=example.com"),
             ar("mx.example.com; dkim=pass header.d=example.com")]
    assert not authenticate(trace, AGENT, OURS).verified


# --- whose mail it is -------------------------------------------------------------------------

@pytest.mark.parametrize("header, via", [
    ("mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com", "dmarc"),
    ("mx.example.com; dmarc=pass (p=none dis=none) header.from=example.com", "dmarc"),
    ("mx.example.com; spf=pass smtp.mailfrom=example.com; dkim=pass header.i=@example.com", "dkim"),
    ("mx.example.com; dkim=pass header.d=example.com; dmarc=none header.from=example.com", "dkim"),
    ("MX.EXAMPLE.COM; dkim=pass header.d=EXAMPLE.com", "dkim"),
])
def test_a_trusted_pass_for_the_from_domain_verifies(header, via):
    trust = authenticate([received("local"), ar(header), received()], AGENT, OURS)
    assert (trust.verified, trust.via) == (True, via)


@pytest.mark.parametrize("header, why", [
    ("mx.example.com; dkim=pass header.d=attacker.example; dmarc=fail header.from=example.com",
     "dmarc=fail"),
    ("mx.example.com; dkim=pass header.d=attacker.example", "neither"),
    ("mx.example.com; dkim=pass header.d=notexample.com", "neither"),
    ("mx.example.com; dkim=pass header.d=com", "neither"),
    ("mx.example.com; dkim=fail header.d=example.com", "neither"),
    ("mx.example.com; spf=pass smtp.mailfrom=example.com", "neither"),
    ("mx.example.com; dmarc=pass header.from=attacker.example", "for attacker.example"),
    ("mx.example.com; dmarc=temperror header.from=example.com", "dmarc=temperror"),
    ("mx.example.com; none", "neither"),
])
def test_anything_else_does_not_and_says_why(header, why):
    trust = authenticate([ar(header)], AGENT, OURS)
    assert not trust.verified and why in trust.reason


def test_without_trusted_ids_or_our_header_nothing_verifies():
    pass_ = ar("mx.example.com; dmarc=pass header.from=example.com")
    assert "trust.authserv_ids is empty" in authenticate([pass_], AGENT, ()).reason
    other = authenticate([ar("mx.google.com; dmarc=pass header.from=example.com")], AGENT, OURS)
    assert not other.verified and "no Authentication-Results header from mx.example.com" in other.reason
    # Exchange Online's id-less header never counts: anyone can write one.
    ms = ar("spf=pass smtp.mailfrom=example.com; dmarc=pass header.from=example.com")
    assert not authenticate([ms], AGENT, OURS).verified


def test_a_subdomain_sender_is_aligned_with_its_parents_signature_not_the_other_way():
    assert aligned("example.com", "mail.example.com") and aligned("@example.com", "example.com")
    assert not aligned("mail.example.com", "example.com")
    assert not aligned("le.com", "example.com") and not aligned("", "example.com")
