"""Bounce recognition: real RFC 3464 reports, the plain-text styles MTAs still send, and non-bounces."""
from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from helpdesk.core.model import Bounce, BouncedRecipient
from helpdesk.mail.bounce import parse_bounce

DATA = Path(__file__).resolve().parent.parent / "data"
POLICIES = pytest.mark.parametrize("policy", [email.policy.compat32, email.policy.default], ids=["compat32", "default"])


def parse(raw: bytes, policy: email.policy.Policy) -> Bounce | None:
    return parse_bounce(email.message_from_bytes(raw, policy=policy))


def load(name: str, policy: email.policy.Policy) -> Bounce | None:
    return parse((DATA / name).read_bytes(), policy)


def original_mail() -> EmailMessage:
    original = EmailMessage()
    original["From"] = "Example Support <support@example.com>"
    original["To"] = "bob@example.net"
    original["Subject"] = "[CC-1042] We received your request"
    original["Message-ID"] = "<helpdesk.5d41402abc@example.com>"
    original["Auto-Submitted"] = "auto-replied"
    original.set_content("Thank you, we received your request.\n")
    return original


def dsn_block(**fields: str) -> Message:
    block = Message()
    for name, value in fields.items():
        block[name.replace("_", "-")] = value
    return block


def build_dsn(recipient_blocks: list[Message], *, subject: str = "Delivery Status Notification (Failure)") -> bytes:
    """A multipart/report the way an RFC 3464 MTA writes it, serialised to bytes."""
    report = EmailMessage()
    report["From"] = "Mail Delivery Subsystem <MAILER-DAEMON@mx.example.org>"
    report["To"] = "support@example.com"
    report["Subject"] = subject
    report["Message-ID"] = "<dsn.1@mx.example.org>"
    report["Auto-Submitted"] = "auto-replied"
    report.set_content("Your message could not be delivered to one or more recipients.\n")
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")

    status = EmailMessage()
    status["Content-Type"] = "message/delivery-status"
    status.set_payload([dsn_block(Reporting_MTA="dns; mx.example.org"), *recipient_blocks])
    report.attach(status)

    returned = EmailMessage()
    returned["Content-Type"] = "message/rfc822"
    returned["Content-Description"] = "Undelivered Message"
    returned.set_payload([original_mail()])
    report.attach(returned)
    return report.as_bytes()


# --- RFC 3464 --------------------------------------------------------------------------------------


@POLICIES
def test_rfc3464_report_built_with_the_email_package(policy: email.policy.Policy) -> None:
    raw = build_dsn([
        dsn_block(
            Final_Recipient="rfc822; Bob@Example.NET",
            Action="failed",
            Status="5.1.1",
            Diagnostic_Code="smtp; 550 5.1.1 <bob@example.net>: user unknown",
        )
    ])
    assert b"message/delivery-status" in raw and b"message/rfc822" in raw
    bounce = parse(raw, policy)
    assert bounce == Bounce(
        recipients=(BouncedRecipient("bob@example.net", "failed", "5.1.1", "550 5.1.1 <bob@example.net>: user unknown"),),
        original_message_id="helpdesk.5d41402abc@example.com",
    )
    assert bounce.recipients[0].permanent


@POLICIES
def test_delayed_report_is_not_permanent(policy: email.policy.Policy) -> None:
    raw = build_dsn(
        [dsn_block(Final_Recipient="rfc822; bob@example.net", Action="delayed", Status="4.4.7",
                   Diagnostic_Code="smtp; 421 4.4.7 connection timed out", Will_Retry_Until="Fri, 15 Mar 2024 10:15:00 +0100")],
        subject="Delivery Status Notification (Delay)",
    )
    bounce = parse(raw, policy)
    assert bounce is not None
    (recipient,) = bounce.recipients
    assert (recipient.action, recipient.status) == ("delayed", "4.4.7")
    assert not recipient.permanent
    assert bounce.original_message_id == "helpdesk.5d41402abc@example.com"


@POLICIES
def test_postfix_3_multipart_report(policy: email.policy.Policy) -> None:
    bounce = load("bounce_postfix.eml", policy)
    assert bounce is not None
    assert bounce.original_message_id == "helpdesk.7f3a9c2e1b@example.com"  # from text/rfc822-headers
    first, second = bounce.recipients
    assert first == BouncedRecipient(
        "nosuchuser@example.net", "failed", "5.1.1",
        "550 5.1.1 <nosuchuser@example.net>: Recipient address rejected: User unknown in virtual mailbox table",
    )
    # Original-Recipient is the address we wrote to (an alias that expanded): that one bounced for us.
    assert (second.address, second.status, second.permanent) == ("sales@example.com", "5.2.2", True)


def test_delivery_status_as_raw_text_payload() -> None:
    """A report whose delivery-status part holds plain text (not the parser's list of blocks)."""
    report = Message()
    report["From"] = "MAILER-DAEMON@mx.example.org"
    report["Content-Type"] = "multipart/report; report-type=delivery-status"
    status = Message()
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(
        "Reporting-MTA: dns; mx.example.org\n\n"
        "Original-Recipient: rfc822;<Carol@Example.org>\nFinal-Recipient: rfc822;carol@mail.example.org\n"
        "Action: failed\nStatus: 5.2.1\nDiagnostic-Code: smtp; 550 5.2.1 mailbox disabled\n"
    )
    report.attach(status)
    report["X-Original-Message-ID"] = "<helpdesk.raw@example.com>"
    bounce = parse_bounce(report)
    assert bounce == Bounce(
        (BouncedRecipient("carol@example.org", "failed", "5.2.1", "550 5.2.1 mailbox disabled"),), "helpdesk.raw@example.com"
    )


@POLICIES
def test_base64_encoded_delivery_status(policy: email.policy.Policy) -> None:
    raw = b"""From: MAILER-DAEMON@mx.example.org
Subject: Undeliverable: hello
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Delivery has failed.
--b1
Content-Type: message/delivery-status
Content-Transfer-Encoding: base64

UmVwb3J0aW5nLU1UQTogZG5zOyBteC5leGFtcGxlLm9yZwoKRmluYWwtUmVjaXBpZW50OiByZmM4
MjI7IGJvYkBleGFtcGxlLm5ldApBY3Rpb246IGZhaWxlZApTdGF0dXM6IDUuMS4xCg==
--b1--
"""
    bounce = parse(raw, policy)
    assert bounce == Bounce((BouncedRecipient("bob@example.net", "failed", "5.1.1", ""),), None)


@POLICIES
def test_recipients_run_together_without_blank_line(policy: email.policy.Policy) -> None:
    raw = b"""From: MAILER-DAEMON@mx.example.org
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
Final-Recipient: rfc822; a@example.net
Action: failed
Status: 5.1.1
Final-Recipient: rfc822; b@example.net
Action: delayed
Status: 4.2.2
--b1--
"""
    bounce = parse(raw, policy)
    assert bounce is not None
    assert [(r.address, r.action, r.status) for r in bounce.recipients] == [
        ("a@example.net", "failed", "5.1.1"), ("b@example.net", "delayed", "4.2.2")]


@POLICIES
def test_read_receipt_report_is_not_a_bounce(policy: email.policy.Policy) -> None:
    raw = b"""From: Bob <bob@example.net>
Subject: Read: your request
Content-Type: multipart/report; report-type=disposition-notification; boundary="b1"

--b1
Content-Type: text/plain

Your message was read.
--b1
Content-Type: message/disposition-notification

Final-Recipient: rfc822; bob@example.net
Disposition: manual-action/MDN-sent-manually; displayed
--b1--
"""
    assert parse(raw, policy) is None


# --- plain-text bounces ------------------------------------------------------------------------------


@POLICIES
def test_postfix_plain_text(policy: email.policy.Policy) -> None:
    bounce = load("bounce_postfix_plain.eml", policy)
    assert bounce == Bounce(
        (BouncedRecipient(
            "customer@example.net", "failed", "5.7.1",
            "host mx.example.net[203.0.113.9] said: 554 5.7.1 <customer@example.net>: Relay access denied "
            "(in reply to RCPT TO command)",
        ),),
        "helpdesk.00c0ffee@example.com",
    )


@POLICIES
def test_qmail(policy: email.policy.Policy) -> None:
    bounce = load("bounce_qmail.eml", policy)
    assert bounce is not None
    assert bounce.original_message_id == "helpdesk.q3m41l@example.com"
    nohost, unknown = bounce.recipients
    assert nohost == BouncedRecipient(
        "nobody@nowhere.example", "failed", "5.1.2", "Sorry, I couldn't find any host named nowhere.example. (#5.1.2)")
    assert (unknown.address, unknown.status) == ("bob@example.net", "5.1.1")  # not fooled by the IP address
    assert "User unknown" in unknown.diagnostic
    assert all(r.permanent for r in bounce.recipients)


@POLICIES
def test_exim(policy: email.policy.Policy) -> None:
    bounce = load("bounce_exim.eml", policy)
    assert bounce is not None
    assert bounce.original_message_id == "helpdesk.e11m-42@example.com"
    unknown, unroutable = bounce.recipients
    assert unknown.address == "nosuchuser@example.net"
    assert unknown.status == "5.1.1"
    assert unknown.diagnostic.startswith("host mx1.example.net [203.0.113.25] SMTP error from remote mail server")
    assert unroutable == BouncedRecipient("old@example.org", "failed", "", "Unrouteable address")
    assert unroutable.permanent


def test_exim_delay_warning_is_delayed() -> None:
    raw = b"""From: Mail Delivery System <Mailer-Daemon@mail.example.org>
To: support@example.com
Subject: Warning: message 1rk2Zb-0004Qh-1D delayed 24 hours
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 24 hours on the queue on mail.example.org.

The message identifier is:     1rk2Zb-0004Qh-1D
The subject of the message is: [CC-1042] Printer on fire
The date of the message is:    Tue, 12 Mar 2024 10:15:00 +0100

The address to which the message has not yet been delivered is:

  slow@example.net
    host mx.example.net [203.0.113.30]: Connection timed out

No action is required on your part. Delivery attempts will continue for
some time, and this warning may be repeated at intervals if the message
remains undelivered. Eventually the mail delivery software will give up,
and when that happens, the message will be returned to you.
"""
    bounce = parse(raw, email.policy.default)
    assert bounce == Bounce(
        (BouncedRecipient("slow@example.net", "delayed", "", "host mx.example.net [203.0.113.30]: Connection timed out"),),
        None,
    )
    assert not bounce.recipients[0].permanent


def test_exim_generated_from_names_the_address_we_wrote_to() -> None:
    raw = b"""From: Mail Delivery System <Mailer-Daemon@mail.example.org>
Subject: Mail delivery failed: returning message to sender
In-Reply-To: <helpdesk.gen@example.com>

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  real.person@example.org
    (generated from Info@Example.com)
    Mailbox quota exceeded: 552 5.2.2
"""
    bounce = parse(raw, email.policy.compat32)
    assert bounce is not None
    assert [(r.address, r.status) for r in bounce.recipients] == [("info@example.com", "5.2.2")]
    assert bounce.original_message_id == "helpdesk.gen@example.com"  # no copy: falls back to In-Reply-To


@pytest.mark.parametrize(
    "subject",
    ["Undelivered Mail Returned to Sender", "Delivery Status Notification (Failure)", "Mail delivery failed",
     "failure notice", "Undeliverable: [CC-1042] Printer on fire"],
)
def test_bounce_subject_from_an_ordinary_sender(subject: str) -> None:
    raw = f"""From: Mail System <mail@relay.example.org>
Subject: {subject}

<bob@example.net>: host mx.example.net[203.0.113.5] said: 550 5.1.1 no such user
""".encode()
    bounce = parse(raw, email.policy.default)
    assert bounce is not None
    assert [(r.address, r.status) for r in bounce.recipients] == [("bob@example.net", "5.1.1")]


def test_smtp_code_without_enhanced_status_maps_to_x00() -> None:
    raw = b"""From: MAILER-DAEMON@relay.example.org
Subject: Undelivered Mail Returned to Sender

<bob@example.net>: host mx.example.net[203.0.113.5] said: 550 mailbox unavailable
"""
    bounce = parse(raw, email.policy.compat32)
    assert bounce is not None and bounce.recipients[0].status == "5.0.0"


# --- not bounces -----------------------------------------------------------------------------------------


@POLICIES
def test_human_mail_is_not_a_bounce(policy: email.policy.Policy) -> None:
    raw = b"""From: Ann Example <ann@customer.example.net>
To: support@example.com
Subject: Re: [CC-1042] Printer on fire
Message-ID: <CAH4x=Ann.1234@mail.gmail.com>
In-Reply-To: <helpdesk.7f3a9c2e1b@example.com>
Content-Type: text/plain; charset=utf-8

<bob@example.net>: is my colleague, please add him.

Message-ID: <something@example.org>
"""
    assert parse(raw, policy) is None


@POLICIES
def test_human_forwarding_a_bounce_as_attachment_is_not_a_bounce(policy: email.policy.Policy) -> None:
    fwd = EmailMessage()
    fwd["From"] = "Ann Example <ann@customer.example.net>"
    fwd["To"] = "support@example.com"
    fwd["Subject"] = "Fwd: Undelivered Mail Returned to Sender"
    fwd.set_content("Why did this bounce?\n")
    fwd.add_attachment(email.message_from_bytes((DATA / "bounce_postfix.eml").read_bytes(), policy=email.policy.default))
    assert parse(fwd.as_bytes(), policy) is None


def test_unreadable_mailer_daemon_mail_is_none() -> None:
    raw = b"From: MAILER-DAEMON@mx.example.org\nSubject: hello\n\nsomething went wrong somewhere\n"
    assert parse(raw, email.policy.default) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage \x80\x81",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"x\"\n\n--x\nContent-Type: message/delivery-status\n\n\x00\xff:::\n--x",
        b"From: MAILER-DAEMON@\nSubject: =?bogus?Q?=ZZ?=\nContent-Type: text/plain; charset=no-such-charset\n\n<@>: \xff\n",
        b"Content-Type: multipart/report; report-type=delivery-status\n\nno boundary at all\n",
        b"From: postmaster@x\nContent-Type: multipart/mixed; boundary=a\n\n" + b"--a\nContent-Type: multipart/mixed; boundary=a\n\n" * 300,
    ],
)
@POLICIES
def test_garbage_never_raises(raw: bytes, policy: email.policy.Policy) -> None:
    result = parse(raw, policy)
    assert result is None or isinstance(result, Bounce)
