"""Issue 10: an address is one plain addr-spec, or it is not an address (core/addresses.py)."""
from __future__ import annotations

import time

import pytest

from helpdesk.core.addresses import (
    MAX_ADDRESS_CHARS,
    Mailbox,
    NotAnAddress,
    ascii_address,
    check_address,
    split_mailboxes,
)
from helpdesk.core.text import display_name, shown, visible

ACCEPTED = {
    "ana@customer.example": "ana@customer.example",
    "Ana.Garcia@Customer.EXAMPLE": "ana.garcia@customer.example",
    "o'brien+tag@x.example": "o'brien+tag@x.example",
    "jürgen@münchen.example": "jürgen@münchen.example",  # RFC 6531: UTF-8 local part and domain
    "ana@xn--mnchen-3ya.example": "ana@münchen.example",  # an A-label is read as its U-label
    "用户@例子.广告": "用户@例子.广告",
    "ann@customer.test": "ann@customer.test",  # RFC 6761 .test: never resolves, harmless
}

REFUSED = {
    "=?utf-8?q?a=0D=0ABcc:_x=40evil.example=0D=0A?=@evil.example": "encoded-word",
    "=?utf-8?b?YUBldmlsLmV4YW1wbGU=?=@x.example": "encoded-word",
    "a@b@evil.example": "@",
    "eve%evil.example@staff.example.com": "route",  # Postfix: eve@evil.example
    "evil.example!eve@staff.example.com": "route",
    '"victim@evil.example"@good.example': "Quoting",
    '"a b"@x.example': "Quoting",
    "a@[127.0.0.1]": "bracketed",
    "root@localhost": "period",
    "a@host.local": "special-use",
    "a@x.invalid": "special-use",
    "a@x.onion": "special-use",
    "a\u202eb@x.example": "RIGHT-TO-LEFT OVERRIDE",
    "a@x\u2066.example": "",
    "a\u200bb@x.example": "ZERO WIDTH SPACE",
    "a\x00b@x.example": "U+0000",
    "a\r\nb@x.example": "",
    "a b@x.example": "SPACE",
    "a..b@x.example": "two periods",
    "@x.example": "",
    "ana@": "",
    "ana": "@",
    "": "",
    "a@x_y.example": "invalid characters",
    "x" * 250 + "@a.example": f"longer than {MAX_ADDRESS_CHARS}",
}


@pytest.mark.parametrize("text", list(ACCEPTED))
def test_a_plain_address_is_accepted_lower_cased(text):
    assert check_address(text) == ACCEPTED[text]


@pytest.mark.parametrize("text", list(REFUSED))
def test_anything_else_is_not_an_address_and_says_why(text):
    with pytest.raises(NotAnAddress) as refused:
        check_address(text)
    assert REFUSED[text] in str(refused.value) and str(refused.value)


def mb(written, name, address, problem=""):
    return Mailbox(written, name, address, problem)


SPLITS = {
    "ana@x.example": [mb("ana@x.example", "", "ana@x.example")],
    'Ana Garcia <ana@x.example>, "Bo, B." <bo@y.example>': [
        mb("Ana Garcia <ana@x.example>", "Ana Garcia", "ana@x.example"),
        mb('"Bo, B." <bo@y.example>', "Bo, B.", "bo@y.example")],
    "ana@x.example (Ana Garcia)": [mb("ana@x.example (Ana Garcia)", "Ana Garcia", "ana@x.example")],
    "Ana (Sales) <ana@x.example> (office)": [
        mb("Ana (Sales) <ana@x.example> (office)", "Ana", "ana@x.example")],
    '"ceo@x.example" <a@evil.example>': [  # a quoted name may hold anything: it is a name
        mb('"ceo@x.example" <a@evil.example>', "ceo@x.example", "a@evil.example")],
    "ana@x.example,, bo@y.example,": [mb("ana@x.example", "", "ana@x.example"),
                                      mb("bo@y.example", "", "bo@y.example")],
    "undisclosed-recipients:;": [],
    # CVE-2023-27043: getaddresses() made this two addresses, bob's among them
    "alice@a.example)<bob@b.example>": [
        mb("alice@a.example)<bob@b.example>", "alice@a.example", "bob@b.example", "a stray )")],
    "team: a@x.example, b@y.example;, c@z.example": [
        mb("a@x.example", "", "a@x.example", "in a group"),
        mb("b@y.example", "", "b@y.example", "in a group"),
        mb("c@z.example", "", "c@z.example")],
    "a@x.example <b@y.example>": [
        mb("a@x.example <b@y.example>", "a@x.example", "b@y.example",
           "a second @ outside the <address>")],
    "a@x.example (b@y.example)": [
        mb("a@x.example (b@y.example)", "b@y.example", "a@x.example",
           "a comment holding an address")],
    "a(b@y.example)@x.example": [
        mb("a(b@y.example)@x.example", "b@y.example", "a@x.example",
           "a comment holding an address")],
    "A <a@x.example> <b@y.example>": [
        mb("A <a@x.example> <b@y.example>", "A", "a@x.example", "more than one <address>")],
    "<a@x.example> b@y.example": [
        mb("<a@x.example> b@y.example", "", "a@x.example", "text after the <address>")],
    'Ana <ana@x.example': [
        mb("Ana <ana@x.example", "Ana", "ana@x.example", "an unclosed quote, comment or <address>")],
    '"Ana, <ana@x.example>': [
        mb('"Ana, <ana@x.example>', "", '"Ana, <ana@x.example>',
           "an unclosed quote, comment or <address>")],
    "(((((a@x.example": [
        mb("(((((a@x.example", "( ( ( ( a@x.example", "", "an unclosed quote, comment or <address>")],
    "a@x.example; b@y.example": [
        mb("a@x.example; b@y.example", "", "a@x.example b@y.example", "a stray ;")],
    "<a@x.example, b@y.example>": [  # the comma is inside <...>: one (bad) address
        mb("<a@x.example, b@y.example>", "", "a@x.example, b@y.example")],
}


@pytest.mark.parametrize("value", list(SPLITS))
def test_an_address_header_splits_into_mailboxes_each_with_its_problem(value):
    assert split_mailboxes(value) == SPLITS[value]


def test_nested_comments_are_counted_not_recursed():
    # email.utils.getaddresses raised RecursionError on this
    value = "(" * 100_000 + "a@x.example" + ")" * 100_000 + " <b@y.example>"
    [mailbox] = split_mailboxes(value)
    assert (mailbox.address, mailbox.problem) == ("b@y.example", "a comment holding an address")


def _seconds(function, *args):
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


@pytest.mark.parametrize("element", ["user{i}@d{i}.example", '"Name {i}" <user{i}@d{i}.example>',
                                     "(c{i}(nested)) x{i}", '"{i}', "<{i}"],
                         ids=["plain", "named", "comments", "quotes", "angles"])
def test_splitting_is_linear_in_the_header(element):
    small = ", ".join(element.format(i=i) for i in range(5_000))
    large = ", ".join(element.format(i=i) for i in range(50_000))
    assert len(large) > 9 * len(small)
    # Ten times the text: about ten times the time. Quadratic would be a hundred.
    best_small = min(_seconds(split_mailboxes, small) for _ in range(3))
    best_large = min(_seconds(split_mailboxes, large) for _ in range(2))
    assert best_large < 30 * max(best_small, 1e-3)


def test_ascii_address_gives_the_idna_form_or_none_for_a_utf8_local_part():
    assert ascii_address("ana@münchen.example") == "ana@xn--mnchen-3ya.example"
    assert ascii_address("ana@x.example") == "ana@x.example"
    assert ascii_address("jürgen@münchen.example") is None


def test_visible_drops_controls_and_bidi_but_keeps_joiners_and_scripts():
    assert visible("invoice\u202efdp.exe") == "invoicefdp.exe"
    assert visible("a\u2066b\u2069c\u200bd\u00ade\ufeff\x00\x1b[31m") == "abcde[31m"
    assert visible("می\u200cخواهم 👩\u200d💻 Grüße مرحبا") == "می\u200cخواهم 👩\u200d💻 Grüße مرحبا"
    assert display_name(" Ana\r\n\tGarcía\u202e ") == "Ana García"


def test_shown_escapes_what_would_act_on_a_terminal_and_cuts():
    text = shown("a\u202eb\x00c\r\nd\x1b" + "x" * 500, limit=20)
    assert text.startswith("a\\u202eb\\x00c\\x0d\\x0ad\\x1b") and text.endswith("…")
    assert text.isprintable() and len(text) < 60
