"""Reference numbers, subject tags, reply addresses and #commands (pure)."""
from __future__ import annotations

import pytest

from helpdesk.core.commands import parse_commands
from helpdesk.core.refs import (
    format_ref,
    normalise_subject,
    parse_reply_address,
    reply_address,
    reply_token,
    strip_prefixes,
    subject_tags,
    tagged_subject,
)


def test_references_are_prefix_and_six_digits():
    assert format_ref("CC", 42) == "CC-000042"
    assert format_ref("BL", 1234567) == "BL-1234567"


@pytest.mark.parametrize("subject", [
    "Re: [CC-000042] Printer", "AW: [CC-000042] Printer", "SV: VS: [CC-000042] Printer",
    "RE[2]: [CC-000042] Printer", "Fwd: Re: [CC-000042] Printer", "Antw: [CC-000042] Printer",
    "回复: [CC-000042] Printer", "RE: AW: WG: [CC-000042] Printer", "Re^3: [CC-000042] Printer",
])
def test_tags_are_found_and_prefixes_stripped_in_many_languages(subject):
    assert subject_tags(subject) == ("CC-000042",)
    assert strip_prefixes(subject) == "Printer"
    assert tagged_subject("CC-000042", subject) == "[CC-000042] Printer"


def test_words_that_merely_start_like_a_prefix_are_kept():
    assert strip_prefixes("Return policy: question") == "Return policy: question"
    assert strip_prefixes("Reset: password") == "Reset: password"
    assert tagged_subject("CC-000001", "") == "[CC-000001] (no subject)"


def test_normalised_subjects_compare_requests():
    assert normalise_subject("AW: New   Connection [CN-000003]") == "new connection"


def test_reply_addresses_carry_an_unguessable_token():
    token = reply_token(b"secret", "CC-000042")
    address = reply_address("support@example.com", "CC-000042", token)
    assert address == f"support+CC-000042.{token}@example.com"
    assert parse_reply_address(address.upper()) == ("support@example.com", "CC-000042", token)
    assert reply_token(b"other", "CC-000042") != token
    assert parse_reply_address("support@example.com") is None


def test_commands_only_in_the_first_lines_and_stripped_from_the_text():
    body = parse_commands("\n#status waiting\n#assign bob@example.com\nCould you send the log?\n"
                          "#not-a-command-here\n")
    assert [(c.name, c.argument) for c in body.commands] == [
        ("status", "waiting"), ("assign", "bob@example.com")]
    assert body.text == "Could you send the log?\n#not-a-command-here"
    assert body.unknown == ()


def test_unknown_commands_are_reported_and_plain_text_is_untouched():
    assert parse_commands("#frobnicate x\nHi").unknown == ("#frobnicate x",)
    plain = parse_commands("Hello #1 fan,\nthanks")
    assert plain.commands == () and plain.text == "Hello #1 fan,\nthanks"


# -- what an admin types (issue 11) ------------------------------------------------------------

def test_ref_candidates_read_short_and_bare_references():
    from helpdesk.core.refs import ref_candidates

    prefixes = ["CC", "CN", "BL"]
    assert ref_candidates("CC-000042", prefixes) == ("CC-000042",)
    assert ref_candidates(" cc-42 ", prefixes) == ("CC-000042",)
    assert ref_candidates("cc42", prefixes) == ("CC-000042",)
    assert ref_candidates("42", prefixes) == ("CC-000042", "CN-000042", "BL-000042")
    assert ref_candidates("CC-1234567", prefixes) == ("CC-1234567",)
    assert ref_candidates("printer", prefixes) == ()
    assert ref_candidates("", prefixes) == ()


def test_status_and_category_names_or_labels_in_any_case():
    import pytest

    from helpdesk.core.lifecycle import Lifecycle
    from helpdesk.core.names import UnknownName, find_category, find_status

    both = (Lifecycle.customer_care, Lifecycle.connections)
    assert find_status("Partner's Feedback Required", both) == "waiting"
    assert find_status("in progress", both) == "in_progress"
    assert find_status("pending_seller", both) == "pending_seller"
    with pytest.raises(UnknownName, match=r"unknown status 'pending_seller'; one of: open \(Open\)"):
        find_status("pending_seller", (Lifecycle.customer_care,))
    labels = {"customer_care": "Customer Care", "billing": "Billing"}
    assert find_category("BILLING", labels) == "billing"
    assert find_category(" customer care ", labels) == "customer_care"
    with pytest.raises(UnknownName, match=r"one of: customer_care \(Customer Care\), billing"):
        find_category("sales", labels)
