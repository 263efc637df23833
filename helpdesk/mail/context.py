"""What a template is rendered with: the context variables, and made-up samples of them.

``CONTEXT`` names every variable with its meaning (templates/README.md shows it to
admins); ``build_context`` makes a complete context for a real mail and
``sample_context`` a realistic one for ``check-config`` and previews.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from helpdesk.core.lifecycle import STATUSES, Lifecycle

# Every context variable a template receives, with its meaning: templates/README.md
# shows this table (a test keeps the two the same).
CONTEXT: dict[str, str] = {
    "helpdesk.name": "the helpdesk's display name (config `helpdesk.name`)",
    "helpdesk.address": "its main support address",
    "case.ref": "the case's reference, e.g. `CC-000042`",
    "case.subject": "the case's subject (customer-supplied)",
    "case.status": "machine name of the current status, e.g. `waiting`",
    "case.status_label": "its label, e.g. `Partner's feedback required`",
    "case.category": "machine name of the category, e.g. `customer_care`",
    "case.category_label": "its label, e.g. `Customer Care`",
    "case.requester": "the requester's address",
    "case.requester_name": "the requester's display name (`\"\"` when unknown)",
    "case.created_at": "when the case was opened (aware `datetime`, UTC)",
    "case.participants": "list of participant addresses, the requester included",
    "case.linked_refs": "list of references of linked cases",
    "message": "the mail this one answers or was triggered by, or `None`",
    "message.sender": "its sender's address",
    "message.sender_name": "its sender's display name (`\"\"` when unknown)",
    "message.subject": "its subject (customer-supplied)",
    "message.text": "its plain-text body (customer-supplied)",
    "message.date": "its date (`datetime`, or `None`)",
    "description": "the text of the case's first message (customer-supplied)",
    "note": ("staff note, resolution, not-completed reason, error text, or why a staff mail "
             "was not verified; `\"\"` when none"),
    "reminder": "for `reminder`: `number` (1-based), `total`, `closes_at`; else `None`",
    "reopen_days": "days the customer has to reply to reopen a resolved case",
    "old_case": "`{ref, subject}` of the closed case whose reply opened this one, or `None`",
    "existing_case": (
        "for `duplicate`: `{ref, subject, status_label}` of the request under way (the same as "
        "`case`), else `None`"
    ),
    "output": "for `credentials`: the activation hook's stdout; `\"\"` otherwise",
    "relay": (
        "a staff member's words the mail carries (a `relay`, or the text of a status change "
        "by mail), else `None`; the helpdesk signs only mail without them"
    ),
    "relay.author": "its author's address if `helpdesk.show_agent_address`, else `\"\"`",
    "relay.author_name": "its author's display name (`\"\"` when unknown)",
    "relay.text": "its plain text",
    "relay.html_safe": "its HTML, already sanitised with nh3 (may be marked safe), or `\"\"`",
    "errors": "for `command_error`: list of error strings; `[]` otherwise",
    "now": "the time of rendering (aware `datetime`, UTC)",
    "portal": "links to the web portal, or `None` when `web` is not configured",
    "portal.case_url": (
        "the case's page; in a participant's own copy it signs them in to this case (a button, "
        "then the case), for `web.case_link_ttl`; `\"\"` without a case"),
    "portal.login_url": "for `login`: the sign-in link (works once); else `\"\"`",
    "portal.expires_at": (
        "when the link in this mail stops working (aware `datetime`, UTC), or `None`"),
    "portal.cases_url": "the overview of the recipient's cases",
    "case_list": "for `case_list`: the sender's open cases; else `None`",
    "case_list.mine": (
        "list of `{ref, subject, status_label, category_label, updated_at, url}` they take "
        "part in (`url` is `\"\"` without `web`)"),
    "case_list.company": (
        "the same for their company's other open cases (`[]` without `company_domains`, or "
        "for a public mail domain)"),
    "case_list.company_domain": "their company's domain, or `\"\"`",
    "case_list.more": "how many open cases the lists leave out (the portal shows them all)",
    "suggestions": (
        "knowledge-base articles suggested when the case opened, best first: each `{title, url, "
        "summary, slug, score}`; `[]` when none"),
    "suggestions.title": "an article's title",
    "suggestions.url": "its link",
    "suggestions.summary": "its summary (front matter `summary`, else its first paragraph)",
}


def build_context(
    *,
    helpdesk: Any,
    case: Any,
    message: Any = None,
    description: str = "",
    note: str = "",
    reminder: Any = None,
    reopen_days: int = 7,
    old_case: Any = None,
    existing_case: Any = None,
    output: str = "",
    relay: Any = None,
    errors: Iterable[str] = (),
    now: datetime | None = None,
    portal: Any = None,
    case_list: Any = None,
    suggestions: Iterable[Any] = (),
) -> dict[str, Any]:
    """A complete template context; every optional value defaults to "none"."""
    return {
        "helpdesk": helpdesk,
        "case": case,
        "message": message,
        "description": description or "",
        "note": note or "",
        "reminder": reminder,
        "reopen_days": reopen_days,
        "old_case": old_case,
        "existing_case": existing_case,
        "output": output or "",
        "relay": relay,
        "errors": list(errors),
        "now": now or datetime.now(timezone.utc),
        "portal": portal,
        "case_list": case_list,
        "suggestions": list(suggestions),
    }


_SAMPLE_CATEGORIES = {
    "customer_care": ("Customer Care", "CC"),
    "billing": ("Billing", "BL"),
    "connections": ("Connections", "CN"),
}
# the status a case usually has when a mail of each kind goes out
_SAMPLE_STATUS = {
    # kind: (customer_care lifecycle, connections lifecycle)
    "ack": ("open", "in_progress"),
    "relay": ("in_progress", "in_progress"),
    "reminder": ("waiting", "pending_seller"),
    "closure": ("closed", "not_completed"),
    "solution": ("resolved", "delivered"),
    "reopened": ("in_progress", "in_progress"),
    "closed_notice": ("closed", "not_completed"),
    "status": ("waiting", "pending_seller"),
    "command_error": ("in_progress", "in_progress"),
    "credentials": ("delivered", "delivered"),
    "manual_review": ("in_progress", "in_progress"),
    "duplicate": ("in_progress", "in_progress"),
    "not_completed": ("not_completed", "not_completed"),
    "too_large": ("open", "in_progress"),
    "staff_notice": ("in_progress", "in_progress"),
    "login": ("open", "in_progress"),
    "case_list": ("open", "in_progress"),
    "unverified_staff": ("in_progress", "in_progress"),
    "self_solved": ("resolved", "in_progress"),
    "solved_notice": ("resolved", "in_progress"),
}
_SAMPLE_WITH_MESSAGE = {"ack", "relay", "reopened", "command_error", "duplicate", "too_large",
                        "staff_notice", "status", "case_list", "unverified_staff",
                        "self_solved", "solved_notice"}


def sample_context(
    kind: str, category: str = "customer_care", *, full: bool = False
) -> dict[str, Any]:
    """A made-up but realistic context for previews and ``check-config``.

    With ``full=False`` only the values a mail of ``kind`` usually gets are set and
    the optional rest is ``None`` / ``""`` / ``[]``; with ``full=True`` every
    optional value is set, so both branches of every ``{% if %}`` get exercised.
    """
    kind = str(kind)
    label, prefix = _SAMPLE_CATEGORIES.get(category, (category.replace("_", " ").title(), "XX"))
    connections = category == "connections"
    statuses = STATUSES[Lifecycle.connections if connections else Lifecycle.customer_care]
    status = _SAMPLE_STATUS.get(kind, ("in_progress", "in_progress"))[1 if connections else 0]
    status_label = statuses.get(status, status.replace("_", " ").capitalize())

    now = datetime(2026, 11, 21, 14, 3, tzinfo=timezone.utc)
    created = now - timedelta(days=4, hours=2)
    ref = f"{prefix}-000042"
    subject = ("New connection: Example Hotels (seller) for Example Travel (buyer)"
               if connections else "Booking flow error on the availability call")
    description = (
        "Hello,\n\nsince this morning every availability request for\n"
        "hotel 12345 answers with error 500.\n\nRequest: <Availability hotel=\"12345\"/>\n\n"
        "Thanks,\nAna"
    )
    helpdesk = {"name": "Example Support", "address": "support@example.com"}
    case = {
        "ref": ref, "subject": subject, "status": status, "status_label": status_label,
        "category": category, "category_label": label,
        "requester": "ana@customer.example", "requester_name": "Ana García",
        "created_at": created,
        "participants": ["ana@customer.example", "bo@partner.example"],
        "linked_refs": [f"{prefix}-000017"] if full else [],
    }
    message = {
        "sender": "ana@customer.example", "sender_name": "Ana García",
        "subject": f"Re: [{ref}] {subject}",
        "text": "Hi,\n\nhere is the log you asked for:\n<error code=\"500\"/>\n\nAna",
        "date": now - timedelta(minutes=5),
    }
    ctx = build_context(
        helpdesk=helpdesk,
        case=case,
        message=message if (full or kind in _SAMPLE_WITH_MESSAGE) else None,
        description=description,
        now=now,
        reopen_days=7,
    )
    if full or kind in ("solution", "not_completed", "closed_notice", "status", "manual_review",
                        "staff_notice", "unverified_staff"):
        ctx["note"] = {
            "solution": "The availability cache was rebuilt;\nrequests answer normally again.",
            "not_completed": "The request was cancelled by the partner.",
            "manual_review": "Activation hook exited with status 3 after 12s:\n"
                             "search test failed: no availability returned",
            "staff_notice": "A participant replied to a case that waits on the customer.",
            "unverified_staff": "mx.example.com reports dmarc=fail",
        }.get(kind, "We are waiting for the seller's test credentials.")
    if full or kind == "reminder":
        # the case entered `waiting` 3 days ago: first of two reminders, closes in 4 days
        ctx["reminder"] = {"number": 1, "total": 2, "closes_at": now + timedelta(days=4)}
    if full:
        ctx["old_case"] = {"ref": f"{prefix}-000017", "subject": "Availability errors"}
    if full or kind == "duplicate":
        ctx["existing_case"] = {"ref": f"{prefix}-000040", "subject": subject,
                                "status_label": statuses.get("in_progress", "In progress")}
    if full or kind == "credentials":
        ctx["output"] = ("Endpoint: https://api.example.com/v1\nUser:     example_travel\n"
                         "Password: s3cr3t & <ok>")
    if full or kind == "relay":
        ctx["relay"] = {
            "author": "agent@example.com", "author_name": "Sam Agent",
            "text": "Hello Ana,\n\nthanks for the log. Could you send us the request\n"
                    "headers as well?\n\nSam",
            "html_safe": "<p>Hello Ana,</p><p>thanks for the log. Could you send us the "
                         "request <b>headers</b> as well?</p><p>Sam</p>" if full else "",
        }
    if full or kind == "command_error":
        ctx["errors"] = ["#status: unknown status 'wating' (one of: "
                         + ", ".join(statuses) + ")", "#assign: not an address: 'sam'"]
    if full or kind in ("ack", "staff_notice", "self_solved", "solved_notice"):
        ctx["suggestions"] = [
            {"slug": "booking/availability-errors", "title": "Availability answers error 500",
             "url": "https://docs.example.com/kb/booking/availability-errors",
             "summary": "What a 500 on the availability call means, and the three checks "
                        "that fix it in most cases.", "score": 2.41},
            {"slug": "how-to-reply", "title": "How to reply to a case",
             "url": "https://docs.example.com/kb/how-to-reply", "summary": "", "score": 1.3},
        ]
    base = "https://help.example.com"
    if full or kind in ("login", "case_list"):
        ctx["portal"] = {"case_url": f"{base}/cases/{ref}?t=Zm9vYmFyYmF6cXV4",
                         "login_url": f"{base}/login/Zm9vYmFyYmF6cXV4" if kind == "login" else "",
                         "expires_at": now + timedelta(minutes=15), "cases_url": f"{base}/cases"}
    if full or kind == "case_list":
        ctx["case_list"] = {
            "mine": [{"ref": ref, "subject": subject, "status_label": status_label,
                      "category_label": label, "updated_at": now - timedelta(hours=3),
                      "url": f"{base}/cases/{ref}"}],
            "company": [{"ref": f"{prefix}-000043", "subject": "Invoice 2026-11 is missing",
                         "status_label": statuses.get("in_progress", "In progress"),
                         "category_label": label, "updated_at": now - timedelta(days=1),
                         "url": f"{base}/cases/{prefix}-000043"}],
            "company_domain": "customer.example", "more": 0}
    if kind in ("too_large", "login", "case_list") and not full:
        ctx["case"] = None
    return ctx
