"""Is this mail written by a machine? A declarative table of small named rules.

In the spirit of GNU Mailman's rule chains: each rule has one job, a name, and a pure
``check`` that returns a reason (or None). ``machine_reasons`` runs the whole table and
returns every hit as ``"<rule-name>: <detail>"`` so the caller can record why a mail was
treated as machine mail. An empty tuple means a human wrote it.

Machine mail is stored but never answered and never counts as the customer's answer
(SPEC "Mail hygiene", RFC 3834). Erring towards "machine" costs one missed acknowledgement;
erring towards "human" can start a mail loop, but every rule must still leave ordinary
human mail alone.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from helpdesk.core.model import InboundMessage
from helpdesk.core.refs import base_address

# Local parts that only software sends from (Zammad's and Znuny's defaults, roughly).
DEFAULT_MACHINE_SENDERS: tuple[str, ...] = (
    "mailer-daemon",
    "postmaster",
    "noreply",
    "no-reply",
    "donotreply",
    "do-not-reply",
)


_SEPARATORS = re.compile(r"[-_.+=]")  # between the words of an address's local part


@dataclass(frozen=True, slots=True)
class HygienePolicy:
    own_domain: str  # the domain of our outgoing Message-IDs
    loop_header: str  # the header NAME we stamp on outgoing mail, e.g. "X-Helpdesk-Loop"
    loop_value: str  # the value we stamp in it (our support address)
    machine_senders: tuple[str, ...] = DEFAULT_MACHINE_SENDERS
    own_addresses: frozenset[str] = frozenset()
    machine_words: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compare case-insensitively everywhere; normalise once here, not in every rule.
        object.__setattr__(self, "own_domain", self.own_domain.strip().lower())
        object.__setattr__(self, "machine_senders", tuple(s.strip().lower() for s in self.machine_senders))
        object.__setattr__(self, "own_addresses", frozenset(a.strip().lower() for a in self.own_addresses))
        # Each machine name without its separators -> its number of words ("donotreply": 3).
        object.__setattr__(self, "machine_words", {
            "".join(_SEPARATORS.split(name)): len(_SEPARATORS.split(name))
            for name in self.machine_senders})


Check = Callable[[InboundMessage, HygienePolicy], str | None]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    check: Check  # a reason string when the rule hits, else None


# --- helpers -----------------------------------------------------------------------------

_COMMENT = re.compile(r"\([^()]*\)")


def _keyword(value: str) -> str:
    """The leading keyword of a structured value: comments and ``; params`` dropped, lower-cased.

    RFC 3834 allows ``Auto-Submitted: auto-replied (vacation); owner-email=...``.
    """
    return _COMMENT.sub(" ", value).split(";", 1)[0].strip().lower()


def _values(msg: InboundMessage, *names: str) -> Iterable[tuple[str, str]]:
    """(header name, value) for every value of the named headers."""
    for name in names:
        for value in msg.headers.get(name.lower(), ()):
            yield name, value


def _present(msg: InboundMessage, *names: str) -> str | None:
    found = [name for name in names if msg.has_header(name)]
    return ", ".join(found) + " present" if found else None


# --- the rules ---------------------------------------------------------------------------


def _auto_submitted(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # RFC 3834 section 5: anything but "no" marks automatic mail. An empty value is not
    # "no" either; a human's mail client never writes this header.
    for _, value in _values(msg, "Auto-Submitted"):
        if _keyword(value) != "no":
            return value.strip() or "(empty)"
    return None


_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})


def _precedence(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    for name, value in _values(msg, "Precedence", "X-Precedence"):
        if _keyword(value) in _BULK_PRECEDENCE:
            return f"{name} {value.strip()}"
    return None


_SUPPRESSING = frozenset({"all", "autoreply", "oof"})


def _auto_response_suppress(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # Microsoft's header: the sender asks not to be auto-answered. Only All/AutoReply/OOF
    # say so; DR, RN, NRN concern delivery and read receipts.
    for _, value in _values(msg, "X-Auto-Response-Suppress"):
        tokens = {t.strip().lower() for t in re.split(r"[,\s]+", value)}
        if tokens & _SUPPRESSING:
            return value.strip()
    return None


def _autoreply_headers(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # Vacation programs' own markers, any value (the extra three are osTicket's list).
    return _present(
        msg, "X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-AutoReply-From", "X-Mail-Autoreply"
    )


def _x_loop(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    return _present(msg, "X-Loop")


def _mailing_list(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # RFC 2919/2369 list headers; Mailing-List is ezmlm's.
    return _present(msg, "List-Id", "List-Unsubscribe", "Mailing-List")


def _null_return_path(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # Return-Path: <> is the null sender used for bounces and most auto-replies.
    return "Return-Path <>" if msg.return_path == "" else None


def _machine_name(address: str, names: dict[str, int]) -> bool:
    """Whether the local part is, or has among its words, a machine name: "noreply",
    "no-reply-billing", "gmail-noreply", "post_master", "MAILER-DAEMON", "noreply+x";
    not "noreplyx" nor "replyno"."""
    local, at, _ = address.lower().rpartition("@")
    if not at:
        return False
    words = [w for w in _SEPARATORS.split(local) if w]
    # Runs of as many words as a name has ("do-not-reply": three): linear in the address.
    longest = max(names.values(), default=0)
    runs = {"".join(words[i:i + n]) for i in range(len(words)) for n in range(1, longest + 1)}
    return not runs.isdisjoint(names)


def _machine_sender(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # From, or the envelope sender a bounce left in Return-Path (MAILER-DAEMON@...).
    for address in (msg.sender, msg.return_path or ""):
        if _machine_name(address, policy.machine_words):
            return address
    return None


# The envelope senders and From addresses of list software (Mailman's -bounces and
# -request, Majordomo's and LISTSERV's owner-): list mail without List-* headers.
_LIST_PREFIX = "owner-"
_LIST_SUFFIXES = ("-owner", "-request", "-bounces")


def _list_sender(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    for address in (msg.sender, msg.return_path or "", *msg.on_behalf):
        local, at, _ = address.lower().rpartition("@")
        base = local.partition("+")[0]  # Mailman's VERP: list-bounces+ann=x.example@
        if at and (local.startswith(_LIST_PREFIX) and len(local) > len(_LIST_PREFIX)
                   or base.endswith(_LIST_SUFFIXES) and base not in _LIST_SUFFIXES):
            return address
    return None


def _report(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # RFC 6522: a multipart/report is a machine's report: a delivery status (a bounce
    # that may not parse as one), a read receipt (disposition-notification), an abuse
    # feedback report. Never the customer's answer.
    for _, value in _values(msg, "Content-Type"):
        if _keyword(value) == "multipart/report":
            kind = re.search(r"report-type\s*=\s*\"?([\w.-]+)", value, re.IGNORECASE)
            return f"multipart/report ({kind.group(1).lower() if kind else 'no report-type'})"
    return None


def _delivery_report(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    if msg.bounce is not None:
        return f"{len(msg.bounce.recipients)} recipient(s)"
    # Exim writes X-Failed-Recipients only on bounces; catch them even when parsing failed.
    if msg.has_header("X-Failed-Recipients"):
        return "X-Failed-Recipients " + msg.header("X-Failed-Recipients").strip()
    return None


def _own_loop_header(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # Only OUR value: another helpdesk's relayed staff answer carries its own, and is human.
    want = policy.loop_value.strip().lower()
    for _, value in _values(msg, policy.loop_header):
        if value.strip().lower() == want:
            return f"{policy.loop_header} {value.strip()}"
    return None


def _own_message_id(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # Our outgoing Message-IDs are helpdesk.<token>@<own_domain>; one arriving means a
    # mail we sent came back (forwarded to us, CC'd to our own address, a loop).
    local, at, domain = msg.message_id.rpartition("@")
    ours = at and domain.lower() == policy.own_domain
    if ours and local.lower().startswith("helpdesk.") and len(local) > len("helpdesk."):
        return msg.message_id
    return None


def _own_address(msg: InboundMessage, policy: HygienePolicy) -> str | None:
    # Our support addresses and the case and staff reply addresses made from them: mail
    # From one of them is our own coming back (a loop), or someone posing as us.
    return msg.sender if msg.sender and base_address(msg.sender) in policy.own_addresses else None


RULES: tuple[Rule, ...] = (
    Rule("auto-submitted", _auto_submitted),
    Rule("precedence", _precedence),
    Rule("auto-response-suppress", _auto_response_suppress),
    Rule("autoreply-header", _autoreply_headers),
    Rule("x-loop", _x_loop),
    Rule("mailing-list", _mailing_list),
    Rule("null-return-path", _null_return_path),
    Rule("machine-sender", _machine_sender),
    Rule("list-sender", _list_sender),
    Rule("report", _report),
    Rule("delivery-report", _delivery_report),
    Rule("own-loop-header", _own_loop_header),
    Rule("own-message-id", _own_message_id),
    Rule("own-address", _own_address),
)


def machine_reasons(msg: InboundMessage, policy: HygienePolicy) -> tuple[str, ...]:
    """Every rule that says a machine sent ``msg``, as ``"<rule-name>: <detail>"``; () for a human."""
    return tuple(f"{rule.name}: {_one_line(why)}" for rule in RULES if (why := rule.check(msg, policy)))


def _one_line(detail: str, limit: int = 200) -> str:
    # Details quote header values written by strangers; they end up in logs and events.
    return " ".join(detail.split())[:limit]
