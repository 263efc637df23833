"""The outgoing mail templates and their renderer (helpdesk.mail.templates)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpdesk.core.model import MailKind
from helpdesk.mail import filters
from helpdesk.mail import templates as tpl
from helpdesk.mail.context import CONTEXT, build_context, sample_context
from helpdesk.mail.templates import (
    BUILTIN_TEMPLATES,
    KINDS,
    RenderedBody,
    TemplateError,
    TemplateRenderer,
)

CATEGORIES = ("customer_care", "billing", "connections")
INBOUND = {MailKind.NEW, MailKind.REPLY, MailKind.STAFF, MailKind.MACHINE, MailKind.UNVERIFIED}
SCRIPT = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(BUILTIN_TEMPLATES, None)


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- the set


def test_kinds_are_the_outbound_mail_kinds():
    assert set(KINDS) == {str(k) for k in MailKind if k not in INBOUND}


def test_builtin_folder_is_the_top_level_templates_folder():
    assert BUILTIN_TEMPLATES == Path(tpl.__file__).resolve().parents[1] / "templates"
    for kind in KINDS:
        for part in ("txt", "html"):
            assert (BUILTIN_TEMPLATES / "default" / f"{kind}.{part}.j2").is_file()
    assert (BUILTIN_TEMPLATES / "default" / "_layout.html.j2").is_file()
    for kind in ("ack", "reminder", "closure"):
        for part in ("txt", "html"):
            assert (BUILTIN_TEMPLATES / "connections" / f"{kind}.{part}.j2").is_file()


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("full", [False, True], ids=["usual", "full"])
def test_every_kind_renders_for_every_category(renderer, category, kind, full):
    ctx = sample_context(kind, category, full=full)
    body = renderer.render(category, kind, ctx)
    assert isinstance(body, RenderedBody)
    assert body.text.strip() and body.html.strip()
    assert body.text.endswith("\n") and not body.text.endswith("\n\n")
    assert "\n\n\n" not in body.text
    assert not re.search(r"</?(p|div|table|br|strong)\b", body.text), "HTML in the text part"
    assert body.html.lstrip().lower().startswith("<!doctype html>")
    assert '<html lang="en">' in body.html and "</html>" in body.html
    assert "None" not in body.text and "None" not in body.html
    if ctx["case"] is not None:
        assert ctx["case"]["ref"] in body.text and ctx["case"]["ref"] in body.html
    assert ctx["helpdesk"]["name"] in body.text and ctx["helpdesk"]["name"] in body.html


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("kind", KINDS)
def test_plain_text_wraps_at_72(renderer, category, kind):
    ctx = sample_context(kind, category, full=True)
    text = renderer.render(category, kind, ctx).text
    for line in text.splitlines():
        if line.startswith((">", "Subject:")):
            continue  # quoted customer text; a subject is one line however long
        assert len(line) <= 72, line


def test_mail_kind_enum_works_as_kind(renderer):
    ctx = sample_context("ack")
    assert renderer.render("billing", MailKind.ACK, ctx) == renderer.render("billing", "ack", ctx)


# --------------------------------------------------------------------------- strictness


def test_missing_variable_is_an_error_naming_the_template(renderer):
    ctx = sample_context("ack")
    del ctx["description"]
    with pytest.raises(TemplateError) as info:
        renderer.render("customer_care", "ack", ctx)
    assert "ack.txt.j2" in str(info.value)
    assert "description" in str(info.value)
    assert info.value.template.endswith("default/ack.txt.j2")


def test_missing_attribute_is_an_error(renderer):
    ctx = sample_context("reminder")
    ctx["reminder"] = {"number": 1}  # no total, no closes_at
    with pytest.raises(TemplateError):
        renderer.render("customer_care", "reminder", ctx)


def test_misspelt_variable_in_an_override_names_the_file(tmp_path):
    write(tmp_path, "default/status.txt.j2", "Case {{ case.ref }}\nnow {{ case.statsu }}\n")
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    with pytest.raises(TemplateError) as info:
        renderer.render("billing", "status", sample_context("status", "billing"))
    assert "override:default/status.txt.j2" in str(info.value)
    assert "statsu" in str(info.value)
    assert "line 2" in str(info.value)


def test_template_error_is_a_jinja_template_error():
    import jinja2

    assert issubclass(TemplateError, jinja2.TemplateError)


def test_unknown_kind_is_an_error(renderer):
    with pytest.raises(TemplateError, match="not found"):
        renderer.render("customer_care", "no_such_kind", sample_context("ack"))


@pytest.mark.parametrize("category,kind", [("../etc", "ack"), ("customer_care", "../ack"),
                                           ("customer_care", "a/b"), ("", "ack")])
def test_names_cannot_leave_the_template_folders(renderer, category, kind):
    with pytest.raises(TemplateError):
        renderer.render(category, kind, sample_context("ack"))


# --------------------------------------------------------------------------- escaping


def hostile_context(kind: str, category: str) -> dict:
    ctx = sample_context(kind, category, full=True)
    ctx["case"]["subject"] = f"Help {SCRIPT}"
    ctx["case"]["requester_name"] = SCRIPT
    ctx["message"].update(subject=f"Re: {SCRIPT}", text=f"see {SCRIPT}", sender_name=SCRIPT)
    ctx["description"] = f"It breaks:\n{SCRIPT}\n<img src=x onerror=alert(1)>"
    ctx["note"] = SCRIPT
    ctx["output"] = SCRIPT
    ctx["old_case"]["subject"] = SCRIPT
    ctx["existing_case"]["subject"] = SCRIPT
    ctx["errors"] = [SCRIPT]
    ctx["relay"]["text"] = SCRIPT
    ctx["relay"]["html_safe"] = ""
    return ctx


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("kind", KINDS)
def test_html_escapes_customer_text(renderer, category, kind):
    html = renderer.render(category, kind, hostile_context(kind, category)).html
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()


def test_html_escapes_description_subject_and_message_text(renderer):
    ctx = hostile_context("ack", "customer_care")
    html = renderer.render("customer_care", "ack", ctx).html
    assert "&lt;script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    notice = renderer.render("customer_care", "staff_notice", ctx).html
    assert "see &lt;script&gt;" in notice


def test_text_part_is_not_escaped(renderer):
    ctx = sample_context("ack")
    ctx["description"] = "a < b & c"
    ctx["case"]["subject"] = "Tom & Jerry <fun>"
    text = renderer.render("customer_care", "ack", ctx).text
    assert "> a < b & c" in text
    assert "Tom & Jerry <fun>" in text
    assert "&amp;" not in text and "&lt;" not in text


def test_relay_uses_sanitised_html_as_is_and_escapes_plain_text(renderer):
    ctx = sample_context("relay", full=True)
    html = renderer.render("customer_care", "relay", ctx).html
    assert "request <b>headers</b> as well" in html
    ctx["relay"]["html_safe"] = ""
    ctx["relay"]["text"] = "Use <b>bold</b>\nthanks"
    html = renderer.render("customer_care", "relay", ctx).html
    assert "Use &lt;b&gt;bold&lt;/b&gt;<br>" in html
    text = renderer.render("customer_care", "relay", ctx).text
    assert text.startswith("Use <b>bold</b>\nthanks\n")
    assert "Sam Agent" in text


# --------------------------------------------------------------------------- look-up order


def test_override_wins_over_builtin(tmp_path):
    write(tmp_path, "default/ack.txt.j2", "OVERRIDE {{ case.ref }}\n")
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    body = renderer.render("billing", "ack", sample_context("ack", "billing"))
    assert body.text == "OVERRIDE BL-000042\n"
    assert "Thank you for contacting" in body.html  # no html override: built-in
    # a default override beats a built-in category template too
    body = renderer.render("connections", "ack", sample_context("ack", "connections"))
    assert body.text == "OVERRIDE CN-000042\n"
    assert renderer.template_name("connections", "ack", "html") == "builtin:connections/ack.html.j2"


def test_category_override_wins_over_default_override(tmp_path):
    write(tmp_path, "default/reminder.txt.j2", "DEFAULT\n")
    write(tmp_path, "billing/reminder.txt.j2", "BILLING {{ reminder.number }}\n")
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    billing = renderer.render("billing", "reminder", sample_context("reminder", "billing"))
    assert billing.text == "BILLING 1\n"
    other = renderer.render("customer_care", "reminder", sample_context("reminder"))
    assert other.text == "DEFAULT\n"
    name = renderer.template_name("billing", "reminder", "txt")
    assert name == "override:billing/reminder.txt.j2"


def test_lookup_order(tmp_path):
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    assert renderer.candidates("connections", "ack", "txt") == [
        "override:connections/ack.txt.j2",
        "override:default/ack.txt.j2",
        "builtin:connections/ack.txt.j2",
        "builtin:default/ack.txt.j2",
    ]
    assert TemplateRenderer(BUILTIN_TEMPLATES).candidates("billing", "ack", "html") == [
        "builtin:billing/ack.html.j2",
        "builtin:default/ack.html.j2",
    ]


def test_overridden_layout_applies_to_builtin_templates(tmp_path):
    write(tmp_path, "default/_layout.html.j2",
          '<!DOCTYPE html>\n<html lang="en"><body class="acme">'
          "{% block content %}{% endblock %}</body></html>\n")
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    html = renderer.render("customer_care", "solution", sample_context("solution")).html
    assert 'class="acme"' in html and "has been resolved" in html


def test_override_can_extend_the_builtin_template_it_replaces(tmp_path):
    write(tmp_path, "default/closure.txt.j2",
          '{% extends "builtin:default/closure.txt.j2" %}\n'
          "{% block signoff %}\nCheers,\nThe ACME desk\n{% endblock %}\n")
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    text = renderer.render("billing", "closure", sample_context("closure", "billing")).text
    assert "The ACME desk" in text and "Kind regards" not in text
    assert "we have now closed it" in " ".join(text.split())


def test_override_folder_that_is_the_builtin_one_is_ignored():
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, BUILTIN_TEMPLATES / ".")
    assert renderer.override_dir is None
    assert renderer.candidates("billing", "ack", "txt")[0] == "builtin:billing/ack.txt.j2"


def test_overrides_are_reread_when_edited(tmp_path):
    write(tmp_path, "default/status.txt.j2", "one\n")
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    ctx = sample_context("status")
    assert renderer.render("billing", "status", ctx).text == "one\n"
    path = tmp_path / "default/status.txt.j2"
    path.write_text("two\n", encoding="utf-8")
    stat = path.stat()
    import os

    os.utime(path, (stat.st_atime, stat.st_mtime + 5))
    assert renderer.render("billing", "status", ctx).text == "two\n"


# --------------------------------------------------------------------------- wording


@pytest.mark.parametrize("category", CATEGORIES)
def test_ack_names_both_refs_when_a_closed_case_was_replied_to(renderer, category):
    ctx = sample_context("ack", category)
    prefix = ctx["case"]["ref"].split("-")[0]
    ctx["old_case"] = {"ref": f"{prefix}-000007", "subject": "Old trouble"}
    body = renderer.render(category, "ack", ctx)
    for part in (body.text, body.html):
        assert f"{prefix}-000007" in part
        assert f"{prefix}-000042" in part
        assert "Old trouble" in part
    plain = renderer.render(category, "ack", sample_context("ack", category))
    assert f"{prefix}-000007" not in plain.text


@pytest.mark.parametrize("category", CATEGORIES)
def test_ack_shows_reference_subject_and_quoted_description(renderer, category):
    ctx = sample_context("ack", category)
    body = renderer.render(category, "ack", ctx)
    assert ctx["case"]["subject"] in body.text
    assert "> since this morning every availability request for" in body.text
    assert "\n>\n" in body.text  # blank lines of the quote are a bare ">"
    assert "since this morning every availability request for<br>" in body.html


def test_connections_ack_mentions_auto_activation(renderer):
    body = renderer.render("connections", "ack", sample_context("ack", "connections"))
    for part in (body.text, body.html):
        flat = " ".join(part.split())
        assert "auto-activation process" in flat
        assert "Connectivity Team will review it manually" in flat
    cc = renderer.render("customer_care", "ack", sample_context("ack"))
    assert "auto-activation" not in cc.text


@pytest.mark.parametrize("category", CATEGORIES)
def test_reminder_mentions_number_and_closure_date(renderer, category):
    ctx = sample_context("reminder", category)
    closes_at = datetime(2026, 12, 3, 9, 30, tzinfo=timezone.utc)
    ctx["reminder"] = {"number": 2, "total": 2, "closes_at": closes_at}
    body = renderer.render(category, "reminder", ctx)
    for part in (body.text, body.html):
        flat = " ".join(part.split())
        assert "friendly reminder" in flat
        assert "reminder 2 of 2" in flat
        assert "last one" in flat
        assert "2026-12-03 09:30 UTC" in flat
    ctx["reminder"] = {"number": 1, "total": 2, "closes_at": closes_at}
    assert "last one" not in renderer.render(category, "reminder", ctx).text


def test_connections_reminder_and_closure_speak_of_the_seller(renderer):
    for kind in ("reminder", "closure"):
        body = renderer.render("connections", kind, sample_context(kind, "connections"))
        assert "seller's feedback" in " ".join(body.text.split())
        assert "seller&#39;s feedback" in body.html or "seller's feedback" in body.html


@pytest.mark.parametrize("category", CATEGORIES)
def test_solution_mentions_reopen_days(renderer, category):
    ctx = sample_context("solution", category)
    ctx["reopen_days"] = 9
    body = renderer.render(category, "solution", ctx)
    for part in (body.text, body.html):
        flat = " ".join(part.split())
        assert "9 days" in flat
        assert "reopen" in flat
    assert "The availability cache was rebuilt;\nrequests answer normally again." in body.text


def test_credentials_carry_the_hook_output_verbatim(renderer):
    ctx = sample_context("credentials", "connections")
    body = renderer.render("connections", "credentials", ctx)
    assert ctx["output"] in body.text
    assert "Password: s3cr3t &amp; &lt;ok&gt;" in body.html
    assert "<pre" in body.html


def test_duplicate_names_the_request_already_under_way(renderer):
    body = renderer.render("connections", "duplicate", sample_context("duplicate", "connections"))
    assert "CN-000042" in body.text and "CN-000042" in body.html
    assert "In progress" in body.text and "added to CN-000042" in body.text


def test_command_error_lists_the_errors(renderer):
    ctx = sample_context("command_error")
    body = renderer.render("customer_care", "command_error", ctx)
    assert "- #assign: not an address: 'sam'" in body.text
    assert "<li>#assign: not an address: &#39;sam&#39;</li>" in body.html


def test_too_large_without_a_case(renderer):
    ctx = sample_context("too_large")
    assert ctx["case"] is None
    body = renderer.render("customer_care", "too_large", ctx)
    assert "too large" in body.text and "support@example.com" in body.text


# --------------------------------------------------------------------------- check_all


def test_check_all_builtin_is_clean(renderer):
    assert renderer.check_all(CATEGORIES) == []
    assert renderer.check_all(["customer_care", "other_category"]) == []


def test_check_all_reports_broken_overrides(tmp_path):
    write(tmp_path, "default/ack.txt.j2", "{% if case %}unclosed\n")
    write(tmp_path, "billing/status.html.j2", "<p>{{ case.nope }}</p>\n")
    write(tmp_path, "default/reminders.txt.j2", "typo in the kind\n")
    write(tmp_path, "custmer_care/ack.txt.j2", "typo in the category\n")
    write(tmp_path, "default/_partial.txt.j2", "partials are fine\n")
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    errors = renderer.check_all(CATEGORIES)
    joined = "\n".join(errors)
    assert "override:default/ack.txt.j2" in joined and "syntax error" in joined
    assert "billing/status" in joined and "nope" in joined
    assert "reminders.txt.j2" in joined
    assert "custmer_care/ack.txt.j2" in joined
    assert "_partial" not in joined
    assert len(errors) == len(set(errors))


def test_check_all_catches_unguarded_optional_values(tmp_path):
    # old_case is None for most acks: a template must guard it
    write(tmp_path, "default/ack.txt.j2", "{{ case.ref }} follows {{ old_case.ref }}\n")
    errors = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path).check_all(["billing"])
    assert any("billing/ack" in e and "has no attribute 'ref'" in e for e in errors)


# --------------------------------------------------------------------------- filters


def test_datetime_filter():
    aware = datetime(2026, 11, 21, 15, 3, tzinfo=timezone(timedelta(hours=1)))
    assert filters.format_datetime(aware) == "2026-11-21 14:03 UTC"
    assert filters.format_datetime(datetime(2026, 11, 21, 14, 3)) == "2026-11-21 14:03 UTC"
    assert filters.format_datetime(None) == ""
    assert filters.format_datetime(aware, "%d.%m.%Y") == "21.11.2026"
    assert filters.format_date(aware) == "2026-11-21"


def test_datetime_filter_in_a_template(tmp_path):
    write(tmp_path, "default/status.txt.j2", "{{ case.created_at|datetime }}\n")
    renderer = TemplateRenderer(BUILTIN_TEMPLATES, tmp_path)
    ctx = sample_context("status")
    ctx["case"]["created_at"] = datetime(2026, 11, 21, 14, 3, tzinfo=timezone.utc)
    assert renderer.render("customer_care", "status", ctx).text == "2026-11-21 14:03 UTC\n"


def test_quote_filter():
    assert filters.quote("a\r\n\r\nb  \n") == "> a\n>\n> b"
    assert filters.quote("") == "" and filters.quote(None) == ""


def test_wrap_filter():
    text = "word " * 30 + "\n\n- item " + "x " * 40 + "\nnext line\n"
    out = filters.wrap(text)
    assert out.endswith("\n")
    assert all(len(line) <= 72 for line in out.splitlines())
    assert "\n\n- item" in out
    assert "\n  x" in out  # list items continue with a hanging indent
    assert filters.wrap("a   b\nc") == "a b c\n"
    long = "https://example.com/" + "a" * 90
    assert long in filters.wrap(f"see {long} now")


def test_nl2br_escapes_first():
    assert str(filters.nl2br("<b>\nx")) == "&lt;b&gt;<br>\nx"


# --------------------------------------------------------------------------- documentation


def test_context_is_documented_in_the_readme():
    readme = (BUILTIN_TEMPLATES / "README.md").read_text(encoding="utf-8")
    for name, meaning in CONTEXT.items():
        row = f"| `{name}` | {meaning} |"
        assert row in readme, row


def test_sample_context_has_every_documented_variable():
    top = {name.split(".")[0] for name in CONTEXT}
    for kind in KINDS:
        for full in (False, True):
            assert set(sample_context(kind, full=full)) == top


def test_build_context_defaults():
    ctx = build_context(helpdesk={"name": "x", "address": "y"}, case=None)
    assert set(ctx) == {name.split(".")[0] for name in CONTEXT}
    assert ctx["note"] == "" and ctx["errors"] == [] and ctx["reminder"] is None
    assert ctx["now"].tzinfo is not None


def test_objects_work_as_well_as_mappings(renderer):
    from types import SimpleNamespace

    ctx = sample_context("solution", "billing")
    ctx["case"] = SimpleNamespace(**ctx["case"])
    ctx["helpdesk"] = SimpleNamespace(**ctx["helpdesk"])
    assert "BL-000042" in renderer.render("billing", "solution", ctx).text


# --------------------------------------------------------------------------- wording (issue 11)

CUSTOMER_KINDS = [k for k in KINDS if k not in ("command_error", "manual_review", "staff_notice")]


@pytest.mark.parametrize("category", ["customer_care", "billing"])
@pytest.mark.parametrize("kind", CUSTOMER_KINDS)
def test_a_generic_helpdesk_speaks_to_the_customer_not_of_a_marketplace(renderer, category, kind):
    for full in (False, True):
        ctx = sample_context(kind, category, full=full)
        # the label and the values are the admin's, staff's and customer's; the prose is ours
        ctx["note"] = "NOTE" if ctx["note"] else ""
        if ctx["case"] is not None:
            ctx["case"] |= {"status_label": "LABEL", "participants": ["ana@customer.example",
                                                                      "carl@customer.example"]}
        body = renderer.render(category, kind, ctx)
        for text in (body.text, body.html):
            for marketplace in ("buyer", "seller", "partner", "product team"):
                assert marketplace not in text.lower(), (kind, marketplace)
