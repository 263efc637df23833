"""Machine-mail rules: one test per rule, and human mail stays human."""
from __future__ import annotations

import pytest

from helpdesk.core.classify import RULES, HygienePolicy, machine_reasons
from helpdesk.core.model import Bounce, BouncedRecipient, InboundMessage

POLICY = HygienePolicy(
    own_domain="example.com",
    loop_header="X-Helpdesk-Loop",
    loop_value="support@example.com",
    machine_senders=("mailer-daemon", "postmaster", "noreply", "no-reply"),
    own_addresses=frozenset({"support@example.com", "Billing@Example.com"}),
)


def mail(headers: dict[str, str | tuple[str, ...]] | None = None, **fields: object) -> InboundMessage:
    """A plain human mail from Ann, with the given headers (name -> value or values) and fields."""
    defaults: dict[str, object] = dict(
        message_id="CAH4x=Ann.1234@mail.gmail.com",
        content_hash="0" * 64,
        sender="ann@customer.example.net",
        sender_name="Ann Example",
        to=("support@example.com",),
        cc=(),
        reply_to=(),
        subject="Printer on fire",
        date=None,
        in_reply_to=(),
        references=(),
        text="Hello, my printer is on fire.\n\nAnn",
        html="",
        return_path="ann@customer.example.net",
    )
    defaults.update(fields)
    hdrs = {k.lower(): (v,) if isinstance(v, str) else v for k, v in (headers or {}).items()}
    return InboundMessage(headers=hdrs, **defaults)  # type: ignore[arg-type]


def rule_names(msg: InboundMessage) -> list[str]:
    return [reason.split(":", 1)[0] for reason in machine_reasons(msg, POLICY)]


# --- human mail ------------------------------------------------------------------------------


def test_plain_human_mail_is_human() -> None:
    assert machine_reasons(mail(), POLICY) == ()


def test_human_mail_with_ordinary_headers_is_human() -> None:
    msg = mail(
        {
            "Received": ("from a by b", "from c by d"),
            "DKIM-Signature": "v=1; a=rsa-sha256; d=customer.example.net",
            "Auto-Submitted": "no",
            "Precedence": "normal",  # what some clients write for "not bulk"
            "X-Auto-Response-Suppress": "DR, RN, NRN",  # receipts only, not auto-replies
            "X-Mailer": "Microsoft Outlook 16.0",
            "X-Helpdesk-Loop": "help@other-helpdesk.example.org",  # another helpdesk, not ours
            "In-Reply-To": "helpdesk.abc@example.com",
        },
        in_reply_to=("helpdesk.abc@example.com",),  # a reply TO our mail is not our mail
        references=("helpdesk.abc@example.com",),
        return_path="ann@customer.example.net",
    )
    assert machine_reasons(msg, POLICY) == ()


@pytest.mark.parametrize(
    "sender",
    ["noreplyfan@customer.example.net", "postmasterson@x.example", "replyno@x.example",
     "mailer@x.example", "requester-relations@x.example", "owner@x.example",
     "ann.owner@x.example", ""],
)
def test_senders_that_only_look_like_machines_are_human(sender: str) -> None:
    assert machine_reasons(mail(sender=sender), POLICY) == ()


def test_no_return_path_header_is_not_the_null_sender() -> None:
    assert machine_reasons(mail(return_path=None), POLICY) == ()


def test_message_id_in_our_domain_without_our_prefix_is_human() -> None:
    # A staff member's own mail client also writes Message-IDs in our domain.
    assert machine_reasons(mail(message_id="abc.123@example.com"), POLICY) == ()
    assert machine_reasons(mail(message_id="helpdesk.abc@example.com.evil.example"), POLICY) == ()


# --- one test per rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["auto-replied", "Auto-Generated", "auto-notified", "auto-replied; owner-email=\"x@y.example\"", "x-vacation", ""]
)
def test_auto_submitted_other_than_no(value: str) -> None:
    reasons = machine_reasons(mail({"Auto-Submitted": value}), POLICY)
    assert [r.split(":", 1)[0] for r in reasons] == ["auto-submitted"]


@pytest.mark.parametrize("value", ["no", "No", " no ", "no (human)", "NO; x=y"])
def test_auto_submitted_no_is_human(value: str) -> None:
    assert machine_reasons(mail({"Auto-Submitted": value}), POLICY) == ()


def test_auto_submitted_reason_carries_the_value() -> None:
    assert machine_reasons(mail({"Auto-Submitted": "auto-replied (vacation)"}), POLICY) == (
        "auto-submitted: auto-replied (vacation)",
    )


@pytest.mark.parametrize("name", ["Precedence", "X-Precedence"])
@pytest.mark.parametrize("value", ["bulk", "JUNK", "list", "auto_reply", "Bulk (newsletter)"])
def test_precedence(name: str, value: str) -> None:
    assert rule_names(mail({name: value})) == ["precedence"]


@pytest.mark.parametrize("value", ["All", "OOF", "AutoReply", "DR, RN, NRN, OOF, AutoReply", "dr,oof", "all"])
def test_auto_response_suppress(value: str) -> None:
    assert rule_names(mail({"X-Auto-Response-Suppress": value})) == ["auto-response-suppress"]


@pytest.mark.parametrize("name", ["X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-AutoReply-From", "X-Mail-Autoreply"])
@pytest.mark.parametrize("value", ["yes", "", "anything"])
def test_autoreply_headers(name: str, value: str) -> None:
    assert rule_names(mail({name: value})) == ["autoreply-header"]


def test_x_loop() -> None:
    assert rule_names(mail({"X-Loop": "list@lists.example.org"})) == ["x-loop"]


@pytest.mark.parametrize("name", ["List-Id", "List-Unsubscribe", "Mailing-List"])
def test_mailing_list(name: str) -> None:
    assert rule_names(mail({name: "<news.lists.example.org>"})) == ["mailing-list"]


def test_null_return_path() -> None:
    assert rule_names(mail(return_path="")) == ["null-return-path"]


@pytest.mark.parametrize(
    "sender",
    [
        "mailer-daemon@mx.example.org",
        "MAILER-DAEMON@mx.example.org",
        "postmaster@example.org",
        "noreply@shop.example",
        "no-reply@shop.example",
        "noreply+bounces@shop.example",
        "no-reply-billing@shop.example",
        "noreply.eu@shop.example",
        "gmail-noreply@google.com",  # real-world: the machine name among the words
        "calendar-notification-noreply@google.com",
        "post_master@mx.example.org",
        "no_reply@shop.example",
    ],
)
def test_machine_sender(sender: str) -> None:
    assert rule_names(mail(sender=sender)) == ["machine-sender"]


def test_a_bounce_by_its_envelope_sender_alone() -> None:
    # A "Mail Delivery System" mail with no delivery-status part, From a friendly name.
    found = rule_names(mail(sender="mail@mx3.example", return_path="MAILER-DAEMON@mx3.example"))
    assert found == ["machine-sender"]


@pytest.mark.parametrize(("field", "address"), [
    ("return_path", "owner-rrga-l@list.rtowest.org"),  # LISTSERV, Majordomo
    ("return_path", "users-bounces+ann=customer.example@lists.example.org"),  # Mailman VERP
    ("sender", "ppp-request@zzz.org"),  # a Mailman 2.0 digest, From the list's -request
    ("on_behalf", ("devel-owner@lists.example.org",)),  # the Sender header
])
def test_list_mail_without_list_headers(field: str, address: str | tuple[str, ...]) -> None:
    assert rule_names(mail(**{field: address})) == ["list-sender"]


@pytest.mark.parametrize("content_type", [
    'multipart/report; report-type=disposition-notification; boundary="b"',  # read receipt
    "multipart/report; report-type=feedback-report; boundary=x",  # abuse report (ARF)
    'Multipart/Report; report-type="delivery-status"; boundary="y"',  # no status part
])
def test_a_report_is_machine_mail(content_type: str) -> None:
    assert rule_names(mail(headers={"Content-Type": content_type})) == ["report"]


def test_machine_sender_uses_the_policy_list() -> None:
    policy = HygienePolicy("example.com", "X-Helpdesk-Loop", "support@example.com", machine_senders=("robot",))
    assert machine_reasons(mail(sender="robot@x.example"), policy) == ("machine-sender: robot@x.example",)
    assert machine_reasons(mail(sender="noreply@x.example"), policy) == ()


def test_delivery_report() -> None:
    bounce = Bounce((BouncedRecipient("bob@example.net", "failed", "5.1.1", "user unknown"),), "helpdesk.x@example.com")
    assert machine_reasons(mail(bounce=bounce), POLICY) == ("delivery-report: 1 recipient(s)",)


def test_delivery_report_from_exim_header_when_parsing_found_nothing() -> None:
    assert rule_names(mail({"X-Failed-Recipients": "bob@example.net"})) == ["delivery-report"]


@pytest.mark.parametrize("value", ["support@example.com", " Support@Example.com "])
def test_own_loop_header(value: str) -> None:
    assert rule_names(mail({"X-Helpdesk-Loop": value})) == ["own-loop-header"]


def test_own_loop_header_name_is_case_insensitive_and_any_value_counts() -> None:
    msg = mail({"x-helpdesk-loop": ("other@example.org", "support@example.com")})
    assert rule_names(msg) == ["own-loop-header"]


@pytest.mark.parametrize("mid", ["helpdesk.7f3a9c2e1b@example.com", "helpdesk.a-b_c.1@EXAMPLE.COM"])
def test_own_message_id(mid: str) -> None:
    assert rule_names(mail(message_id=mid)) == ["own-message-id"]


@pytest.mark.parametrize("sender", ["support@example.com", "billing@example.com"])
def test_own_address(sender: str) -> None:
    assert rule_names(mail(sender=sender)) == ["own-address"]


# --- the table as a whole -------------------------------------------------------------------------


def test_every_hit_is_reported_in_table_order() -> None:
    msg = mail(
        {"Auto-Submitted": "auto-replied", "Precedence": "bulk", "X-Helpdesk-Loop": "support@example.com"},
        sender="mailer-daemon@mx.example.org",
        return_path="",
    )
    assert rule_names(msg) == ["auto-submitted", "precedence", "null-return-path", "machine-sender", "own-loop-header"]


def test_rule_names_are_unique() -> None:
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))


def test_policy_normalises_case() -> None:
    policy = HygienePolicy("Example.COM", "X-Helpdesk-Loop", "support@example.com", ("NoReply",), frozenset({"A@B.example"}))
    assert policy.own_domain == "example.com"
    assert policy.machine_senders == ("noreply",)
    assert policy.own_addresses == frozenset({"a@b.example"})


def test_reason_details_are_one_short_line() -> None:
    (reason,) = machine_reasons(mail({"Auto-Submitted": "auto-replied\r\n\tfake: log line " + "x" * 500}), POLICY)
    assert "\n" not in reason and "\r" not in reason and len(reason) < 250
