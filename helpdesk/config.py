"""Load and validate ``helpdesk.yaml`` into frozen settings.

Every error names the key it is about (``inbound.imap.port``), so ``check-config``
can tell an admin exactly what to fix. Secrets come from ``${VAR}`` references to
the environment; they are kept in ``SecretStr`` so they never print or log, and no
error message shows a value that came from the environment. A config file that
other users can read may not hold a secret written out (``strict_secrets``).
"""
from __future__ import annotations

import os
import re
import stat
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(Exception):
    """The config cannot be used; the message names the key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_FACTOR = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
                "kib": 2**10, "mib": 2**20, "gib": 2**30}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_duration(value: Any) -> timedelta:
    """``"3d"``, ``"36h"``, ``"90s"``, ``"10m"``, ``"2w"``; a bare number means seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return timedelta(seconds=float(m[1]) * _UNIT_SECONDS[m[2]])
    raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 10m, 36h, 3d, 2w)")


def parse_size(value: Any) -> int:
    """``"25MB"``, ``"512KB"``, ``"1MiB"`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(float(m[1]) * _SIZE_FACTOR[(m[2] or "b").lower()])
    raise ValueError(f"not a size: {value!r} (use e.g. 512KB, 25MB)")


def _parse_rate(value: Any) -> tuple[int, timedelta]:
    if isinstance(value, str) and "/" in value:
        count, _, window = value.partition("/")
        if count.strip().isdigit():
            return int(count), parse_duration(window)
    raise ValueError(f"not a rate: {value!r} (use e.g. 10/10m, 30/1d)")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Rate = Annotated[tuple[int, timedelta], BeforeValidator(_parse_rate)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HelpdeskSection(_Section):
    name: str = "Support"
    address: str
    domain: str
    templates: Path | None = None  # admin overrides, searched before the built-in set
    attachments: Path = Path("../var/attachments")  # content-addressed store on disk
    attachment_store: Literal["disk", "database"] = "disk"
    secret: SecretStr | None = None  # keys the reply-address tokens; derived from the DB if unset
    show_agent_address: bool = False  # relayed answers name the agent; their address only if on


class DatabaseSection(_Section):
    url: str = "sqlite:///../var/helpdesk.db"
    # How long a write waits for another's lock (or for a connection) before giving up:
    # `ingest` then exits 75 and the SMTP listener answers 451, so the mail waits at
    # its sender instead of an MTA pipe hanging.
    lock_timeout: Duration = timedelta(seconds=30)

    @field_validator("url")
    @classmethod
    def _a_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        try:
            make_url(value)
        except Exception:  # its messages quote the URL, password and all
            raise ValueError("not a database URL (e.g. sqlite:///../var/helpdesk.db, "
                             "postgresql+psycopg://user:${DB_PASSWORD}@host/helpdesk)") from None
        return value


class ImapMailbox(_Section):
    name: str = "default"
    host: str
    port: int | None = None
    security: Literal["ssl", "starttls", "none"] = "ssl"
    ca_file: Path | None = None
    username: str
    password: SecretStr | None = None
    oauth2_token_command: list[str] | None = None  # prints an access token for XOAUTH2
    folder: str = "INBOX"
    processed_folder: str | None = "Processed"
    failed_folder: str = "Failed"
    idle: bool = True
    poll_interval: Duration = timedelta(seconds=60)
    batch_size: int = Field(default=50, ge=1)
    timeout: Duration = timedelta(seconds=30)
    stale_after: Duration = timedelta(minutes=15)  # `status` is unhealthy past this

    @model_validator(mode="after")
    def _one_credential(self) -> ImapMailbox:
        if self.password is None and self.oauth2_token_command is None:
            raise ValueError("needs a password or an oauth2_token_command")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "ssl" else 143)


class SmtpListenerSection(_Section):
    host: str = "127.0.0.1"
    port: int = 2525
    max_sessions: int = Field(default=100, ge=1)  # concurrent SMTP sessions
    max_recipients: int = Field(default=100, ge=1)  # RCPT TO per message
    idle_timeout: Duration = timedelta(seconds=60)  # a silent client is dropped after this


class LmtpSection(_Section):
    """The embedded LMTP listener (RFC 2033): the MTA hands mail to the running daemon.

    TCP on ``host:port``, a Unix socket at ``path``, or both. Only ``path`` given
    means the socket alone.
    """

    host: str = "127.0.0.1"
    port: int | None = 8024
    path: Path | None = None  # relative to the config file's folder

    @model_validator(mode="before")
    @classmethod
    def _socket_alone(cls, data: Any) -> Any:
        if isinstance(data, dict) and "path" in data and "port" not in data:
            return {**data, "port": None}
        return data

    @model_validator(mode="after")
    def _somewhere(self) -> LmtpSection:
        if self.port is None and self.path is None:
            raise ValueError("set port, path, or both")
        return self


class InboundSection(_Section):
    imap: list[ImapMailbox] = []
    smtp_listener: SmtpListenerSection | None = None
    lmtp: LmtpSection | None = None

    @field_validator("imap", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else (value or [])


class SmtpSection(_Section):
    host: str
    port: int | None = None
    security: Literal["ssl", "starttls", "none"] = "starttls"
    ca_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    timeout: Duration = timedelta(seconds=30)

    @property
    def effective_port(self) -> int:
        return self.port or {"ssl": 465, "starttls": 587, "none": 25}[self.security]


class OutboundSection(_Section):
    smtp: SmtpSection | None = None
    maildir: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> OutboundSection:
        if (self.smtp is None) == (self.maildir is None):
            raise ValueError("set exactly one of smtp or maildir")
        return self


class ActivationSection(_Section):
    command: list[str]
    timeout: Duration = timedelta(seconds=120)


class CategorySection(_Section):
    label: str
    prefix: str = Field(pattern=r"^[A-Z]{1,6}$")
    addresses: list[str] = Field(min_length=1)
    lifecycle: Literal["customer_care", "connections"] = "customer_care"
    activation: ActivationSection | None = None
    notify: list[str] = []
    duplicate_key: str | None = None  # a regex whose first group identifies a connection


class TimersSection(_Section):
    reminders: list[Duration] = [timedelta(days=3), timedelta(days=5)]
    close_after: Duration = timedelta(days=7)
    resolved_close_after: Duration = timedelta(days=7)
    sweep_interval: Duration = timedelta(minutes=5)

    @model_validator(mode="after")
    def _ordered(self) -> TimersSection:
        if list(self.reminders) != sorted(self.reminders) or any(
                r >= self.close_after for r in self.reminders):
            raise ValueError("reminders must be increasing and come before close_after")
        return self


class ThreadingSection(_Section):
    reply_address: bool = True
    unknown_sender: Literal["new_case", "join", "reject"] = "new_case"


class LimitsSection(_Section):
    auto_mail_per_recipient: list[Rate] = [(10, timedelta(minutes=10)), (30, timedelta(days=1))]
    auto_mail_per_case: list[Rate] = [(10, timedelta(minutes=10)), (50, timedelta(days=1))]
    participants_per_case: int = 20
    participants_per_message: int = 10
    max_message_size: Size = 25 * 10**6
    max_attachment_size: Size = 10 * 10**6
    # Round 2, trust: what one stranger's mail may cost us and cause.
    recipients_per_mail: int = Field(default=10, ge=1)  # outgoing recipients per inbound mail
    new_cases_per_sender: list[Rate] = [(5, timedelta(hours=1))]  # per sender and per domain
    quote_chars: int = Field(default=4000, ge=0)  # of the description quoted in an ack
    header_chars: int = Field(default=16000, ge=100, le=100_000)  # a longer header line is cut
    subject_chars: int = Field(default=1000, ge=10, le=2_000)  # a longer subject is cut

    @field_validator("new_cases_per_sender", mode="before")
    @classmethod
    def _one_rate_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TrustSection(_Section):
    """Who may steer the helpdesk's mail (SPEC, Round 2: Trust)."""

    # authserv-ids (RFC 8601) of our own MTA: only its Authentication-Results count.
    authserv_ids: list[str] = []
    require_staff_auth: bool = True  # false: a lab setup; check-config and status warn

    @field_validator("authserv_ids")
    @classmethod
    def _lower_ids(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]


class KnowledgeBaseSection(_Section):
    """Suggested articles in the acknowledgement (SPEC, Round 2: Knowledge base)."""

    path: Path | None = None  # a folder of Markdown articles; None: no knowledge base
    suggestions: int = Field(default=3, ge=0)  # per acknowledgement; 0 turns suggestions off
    min_score: float | Literal["auto"] = "auto"
    base_url: str | None = None  # links are base_url/<slug> unless an article has `url`
    hold_staff_notice: Duration = timedelta(0)


#: Mail domains shared by people who have nothing to do with each other: nobody's
#: company (no colleagues' cases, no joining another's case by its tag) and never one
#: sender. The big providers with their country domains, and the large ISPs; an admin
#: whose customers use another adds it (``web.public_domains`` replaces this list).
PUBLIC_MAIL_DOMAINS = [
    # Google, Microsoft, Yahoo, Apple, AOL
    "gmail.com", "googlemail.com",
    "outlook.com", "outlook.fr", "outlook.de", "outlook.es", "outlook.it", "outlook.jp",
    "hotmail.com", "hotmail.co.uk", "hotmail.fr", "hotmail.de", "hotmail.it", "hotmail.es",
    "hotmail.nl", "hotmail.be", "hotmail.ca", "hotmail.com.br", "hotmail.co.jp",
    "live.com", "live.co.uk", "live.fr", "live.de", "live.it", "live.nl", "live.be",
    "live.ca", "live.com.au", "live.com.mx", "msn.com", "windowslive.com", "passport.com",
    "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.it", "yahoo.es", "yahoo.ca",
    "yahoo.com.au", "yahoo.co.in", "yahoo.in", "yahoo.co.jp", "yahoo.com.br", "yahoo.com.mx",
    "yahoo.com.ar", "yahoo.gr", "yahoo.se", "yahoo.dk", "yahoo.no", "yahoo.ie", "ymail.com",
    "rocketmail.com", "icloud.com", "me.com", "mac.com", "aol.com", "aol.co.uk", "aol.fr",
    "aol.de", "aim.com", "verizon.net",
    # independent and private providers
    "proton.me", "protonmail.com", "protonmail.ch", "pm.me", "tutanota.com", "tutanota.de",
    "tuta.io", "tuta.com", "fastmail.com", "fastmail.fm", "hey.com", "zoho.com",
    "zohomail.com", "mail.com", "email.com", "gmx.com", "gmx.net", "gmx.de", "gmx.at",
    "gmx.ch", "gmx.fr", "gmx.us", "web.de", "posteo.de", "mailbox.org", "hushmail.com",
    "duck.com", "yandex.com", "yandex.ru", "yandex.ua", "yandex.by", "yandex.kz", "ya.ru",
    "mail.ru", "bk.ru", "inbox.ru", "list.ru", "rambler.ru", "ukr.net",
    "qq.com", "foxmail.com", "163.com", "126.com", "yeah.net", "sina.com", "sina.cn",
    "sohu.com", "aliyun.com", "139.com", "naver.com", "daum.net", "hanmail.net",
    "rediffmail.com",
    # internet providers' own mail
    "orange.fr", "wanadoo.fr", "free.fr", "sfr.fr", "neuf.fr", "laposte.net",
    "t-online.de", "freenet.de", "arcor.de", "libero.it", "virgilio.it", "tiscali.it",
    "alice.it", "tin.it", "seznam.cz", "centrum.cz", "email.cz", "wp.pl", "o2.pl",
    "interia.pl", "onet.pl", "op.pl", "bluewin.ch", "telenet.be", "skynet.be", "ziggo.nl",
    "kpnmail.nl", "planet.nl", "home.nl", "telia.com", "online.no", "btinternet.com",
    "sky.com", "virginmedia.com", "ntlworld.com", "talktalk.net", "comcast.net", "att.net",
    "sbcglobal.net", "bellsouth.net", "cox.net", "charter.net", "earthlink.net",
    "optonline.net", "shaw.ca", "rogers.com", "sympatico.ca", "bigpond.com",
    "optusnet.com.au", "xtra.co.nz", "uol.com.br", "bol.com.br", "terra.com.br",
]


class WebSection(_Section):
    """The case overview portal (SPEC, Round 2: Case overview)."""

    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str | None = None  # what links in mail point to; default http://host:port
    company_domains: bool = True  # customers also see their colleagues' cases (same domain)
    public_domains: list[str] = PUBLIC_MAIL_DOMAINS  # never treated as one company
    # A case's link in a participant's mail signs them in to that case; mail is read
    # days later, and the resolved case's 7 days to reopen must fit in.
    case_link_ttl: Duration = timedelta(days=30)
    session_ttl: Duration = timedelta(days=7)  # a signed-in browser, from sign-in
    page_size: int = Field(default=25, ge=5, le=200)  # cases per page

    @field_validator("public_domains")
    @classmethod
    def _lower_domains(cls, value: list[str]) -> list[str]:
        return [v.strip().lower().lstrip("@") for v in value]

    @property
    def effective_base_url(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def secure(self) -> bool:
        """Served under https (behind a proxy): cookies get the Secure flag."""
        return self.effective_base_url.lower().startswith("https://")


class HygieneSection(_Section):
    machine_senders: list[str] = [
        "mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply",
        "donotreply", "bounce", "bounces", "auto-reply", "autoreply",
    ]


class Settings(_Section):
    helpdesk: HelpdeskSection
    database: DatabaseSection = DatabaseSection()
    inbound: InboundSection = InboundSection()
    outbound: OutboundSection
    staff: list[str] = []
    categories: dict[str, CategorySection] = Field(min_length=1)
    timers: TimersSection = TimersSection()
    threading: ThreadingSection = ThreadingSection()
    limits: LimitsSection = LimitsSection()
    hygiene: HygieneSection = HygieneSection()
    trust: TrustSection = TrustSection()
    knowledge_base: KnowledgeBaseSection = KnowledgeBaseSection()
    web: WebSection | None = None
    config_dir: Path = Path(".")  # set by the loader, not by the file

    @field_validator("staff")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]

    @field_validator("categories")
    @classmethod
    def _one_category_per_address(
            cls, value: dict[str, CategorySection]) -> dict[str, CategorySection]:
        # Routing takes the first category that lists an address: the other would
        # silently never see the mail.
        owner: dict[str, str] = {}
        for name, category in value.items():
            for address in category.addresses:
                first = owner.setdefault(address.strip().lower(), name)
                if first != name:
                    raise ValueError(f"{address} is an address of both {first} and {name}; "
                                     f"give each address to one category")
        return value

    @property
    def own_addresses(self) -> frozenset[str]:
        """Addresses that are us: never participants, never answered."""
        addrs = {self.helpdesk.address.lower()}
        for cat in self.categories.values():
            addrs.update(a.lower() for a in cat.addresses)
        return frozenset(addrs)

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.config_dir / path).resolve()

    @property
    def database_url(self) -> str:
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite://" and not url.startswith(prefix + "/"):
            rest = url[len(prefix):]
            if rest and rest != ":memory:":
                return prefix + str(self.resolve(Path(rest)))
        return url


def _expand_env(node: Any, path: str, used: dict[str, str]) -> Any:
    """*node* with every ``${VAR}`` replaced by its value; *used* collects
    ``{value: VAR}``, so that no message shows the value (``_without_env_values``)."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), used)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}.{i}", used) for i, v in enumerate(node)]
    if isinstance(node, str):
        def substitute(m: re.Match[str]) -> str:
            if m[1] not in os.environ:
                raise ConfigError(f"{path}: environment variable {m[1]} is not set")
            used[os.environ[m[1]]] = m[1]
            return os.environ[m[1]]
        return _ENV_REF.sub(substitute, node)
    return node


def _describe(error: ValidationError, env_values: dict[str, str]) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"] if p not in ("function-before", "function-after"))
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "value_error":  # our own check: its words, without pydantic's prefix
            message = str(err["ctx"]["error"])
        else:
            message = err["msg"]
        lines.append(f"{key or '(top level)'}: {_without_env_values(message, env_values)}")
    return "\n".join(lines)


def _without_env_values(message: str, env_values: dict[str, str]) -> str:
    """*message* with every value that came from ``${VAR}`` shown as ``${VAR}``: a
    validator's "not a duration: 'hunter2'" must not print a password put in the
    wrong key. Longest first, so a value inside another is not half replaced; a value
    of a few characters only where it is quoted, lest every "s" of the text go."""
    for value in sorted(env_values, key=len, reverse=True):
        reference = f"${{{env_values[value]}}}"
        if value:
            message = message.replace(repr(value), reference)
        if len(value) >= 4:
            message = message.replace(value, reference)
    return message


#: Keys whose value is a secret: a password, a key, a token.
_SECRET_KEY = re.compile(r"(^|_)(password|secret|token)$")


def literal_secrets(node: Any, path: str = "") -> list[str]:
    """The keys of the config as written (before ``${VAR}`` expansion) that hold a
    secret written out rather than taken from the environment: password, secret and
    token keys, and a password inside ``database.url``."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if _SECRET_KEY.search(str(key)) and value is not None and not _from_env(value):
                found.append(where)
            elif where == "database.url" and _password_written_in(value):
                found.append(where)
            else:
                found.extend(literal_secrets(value, where))
        return found
    if isinstance(node, list):
        return [key for i, value in enumerate(node) for key in literal_secrets(value, f"{path}.{i}")]
    return []


def _password_written_in(url: Any) -> bool:
    try:
        password = urlsplit(url).password if isinstance(url, str) else None
    except ValueError:  # not a URL at all: the engine will say so, without the value
        return False
    return password is not None and not _from_env(password)


def _from_env(value: Any) -> bool:
    return isinstance(value, str) and _ENV_REF.fullmatch(value.strip()) is not None


def _readable_by_others(path: Path) -> bool:
    return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))


def load_settings(path: Path | str, *, strict_secrets: bool = False) -> Settings:
    """The settings of the config file at *path*; ``ConfigError`` naming the key.

    ``strict_secrets`` (``run``, ``check-config``): refuse a file that other users can
    read when it holds a secret written out.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    if "config_dir" in data:
        raise ConfigError("config_dir: unknown key")
    if strict_secrets and _readable_by_others(path) and (written := literal_secrets(data)):
        raise ConfigError(
            f"{path} can be read by other users and holds {', '.join(written)} written out: "
            f"run `chmod 600 {path}`, or write each as \"${{VAR}}\" and set VAR in the "
            f"daemon's environment")
    env_values: dict[str, str] = {}
    data = _expand_env(data, "", env_values)
    data["config_dir"] = path.resolve().parent
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, env_values)) from None
