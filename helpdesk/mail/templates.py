"""Render the bodies of outgoing mail from Jinja2 templates.

Every outgoing mail has a *kind* (``helpdesk.core.model.MailKind``: ``ack``,
``reminder``, ...) and belongs to a *category* (``customer_care``, ``billing``,
``connections``, ...). Its body is rendered twice, from ``<kind>.txt.j2`` (the
plain-text part) and ``<kind>.html.j2`` (the HTML part). The first template found
wins, in this order::

    <override_dir>/<category>/<kind>.<part>.j2   admin, this category
    <override_dir>/default/<kind>.<part>.j2      admin, every category
    <builtin_dir>/<category>/<kind>.<part>.j2    built-in, this category
    <builtin_dir>/default/<kind>.<part>.j2       built-in, every category

``{% extends %}``, ``{% include %}`` and ``{% import %}`` names such as
``"default/_layout.html.j2"`` are looked up in the override folder first, then in
the built-in one, so an admin can replace the layout alone. The prefixed names
``"builtin:default/ack.txt.j2"`` and ``"override:..."`` name one folder exactly
(for an override that extends the built-in template it replaces).

The plain-text environment does not escape; the HTML one escapes every value
(``autoescape``), so customer-supplied text (subjects, descriptions, message
bodies) is always escaped there. Never mark such values ``|safe``; only
``relay.html_safe`` (already sanitised with nh3) may be. Both environments use
``StrictUndefined``: a misspelt or missing variable is an error, not an empty string.
Optional values are ``None`` (or ``""`` / ``[]``) and templates guard them with
``{% if ... %}``; ``None`` printed directly renders as an empty string.

Context variables (every template receives all of them; mappings or objects with
attributes both work). ``templates/README.md`` shows the same table; both are
made from ``CONTEXT``:

| variable | meaning |
| --- | --- |
| `helpdesk.name` | the helpdesk's display name (config `helpdesk.name`) |
| `helpdesk.address` | its main support address |
| `case.ref` | the case's reference, e.g. `CC-000042` |
| `case.subject` | the case's subject (customer-supplied) |
| `case.status` | machine name of the current status, e.g. `waiting` |
| `case.status_label` | its label, e.g. `Partner's feedback required` |
| `case.category` | machine name of the category, e.g. `customer_care` |
| `case.category_label` | its label, e.g. `Customer Care` |
| `case.requester` | the requester's address |
| `case.requester_name` | the requester's display name (`""` when unknown) |
| `case.created_at` | when the case was opened (aware `datetime`, UTC) |
| `case.participants` | list of participant addresses, the requester included |
| `case.linked_refs` | list of references of linked cases |
| `message` | the mail this one answers or was triggered by, or `None` |
| `message.sender` | its sender's address |
| `message.sender_name` | its sender's display name (`""` when unknown) |
| `message.subject` | its subject (customer-supplied) |
| `message.text` | its plain-text body (customer-supplied) |
| `message.date` | its date (`datetime`, or `None`) |
| `description` | the text of the case's first message (customer-supplied) |
| `note` | staff note, resolution, not-completed reason or error text; `""` when none |
| `reminder` | for `reminder`: `number` (1-based), `total`, `closes_at`; else `None` |
| `reopen_days` | days the customer has to reply to reopen a resolved case |
| `old_case` | `{ref, subject}` of the closed case whose reply opened this one, or `None` |
| `existing_case` | for `duplicate`: `{ref, subject, status_label}` of the request under way (the same as `case`), else `None` |
| `output` | for `credentials`: the activation hook's stdout; `""` otherwise |
| `relay` | for `relay`: the staff answer relayed, else `None` |
| `relay.author` | its author's address |
| `relay.author_name` | its author's display name (`""` when unknown) |
| `relay.text` | its plain text |
| `relay.html_safe` | its HTML, already sanitised with nh3 (may be marked safe), or `""` |
| `errors` | for `command_error`: list of error strings; `[]` otherwise |
| `suggestions` | knowledge-base articles suggested when the case opened, best first: each `{title, url, summary, slug, score}`; `[]` when none |
| `suggestions.title` | an article's title |
| `suggestions.url` | its link |
| `suggestions.summary` | its summary (front matter `summary`, else its first paragraph) |
| `now` | the time of rendering (aware `datetime`, UTC) |

``case`` is ``None`` only for ``too_large`` about a mail that opened no case.

Filters (both environments): ``datetime`` (``2026-11-21 14:03 UTC``; an optional
``strftime`` format), ``date`` (``2026-11-21``), ``quote`` (prefixes every line with
``> ``), ``wrap`` (re-wraps prose paragraphs at 72 columns); HTML only: ``nl2br``
(escapes, then turns line breaks into ``<br>``).
"""
from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

__all__ = [
    "BUILTIN_TEMPLATES",
    "CONTEXT",
    "KINDS",
    "RenderedBody",
    "TemplateError",
    "TemplateRenderer",
    "build_context",
    "sample_context",
]

BUILTIN_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

# The outbound mail kinds, each a template (mirrors the outbound part of MailKind).
KINDS: tuple[str, ...] = (
    "ack", "relay", "reminder", "closure", "solution", "reopened", "closed_notice",
    "status", "command_error", "credentials", "manual_review", "duplicate",
    "not_completed", "too_large", "staff_notice", "self_solved", "solved_notice",
)
PARTS: tuple[str, ...] = ("txt", "html")
DEFAULT_DIR = "default"

# Every context variable a template receives, with its meaning (see the module
# docstring and templates/README.md, which show the same table).
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
    "note": "staff note, resolution, not-completed reason or error text; `\"\"` when none",
    "reminder": "for `reminder`: `number` (1-based), `total`, `closes_at`; else `None`",
    "reopen_days": "days the customer has to reply to reopen a resolved case",
    "old_case": "`{ref, subject}` of the closed case whose reply opened this one, or `None`",
    "existing_case": (
        "for `duplicate`: `{ref, subject, status_label}` of the request under way (the same as "
        "`case`), else `None`"
    ),
    "output": "for `credentials`: the activation hook's stdout; `\"\"` otherwise",
    "relay": "for `relay`: the staff answer relayed, else `None`",
    "relay.author": "its author's address",
    "relay.author_name": "its author's display name (`\"\"` when unknown)",
    "relay.text": "its plain text",
    "relay.html_safe": "its HTML, already sanitised with nh3 (may be marked safe), or `\"\"`",
    "errors": "for `command_error`: list of error strings; `[]` otherwise",
    "suggestions": "knowledge-base articles suggested when the case opened, best first: each `{title, url, summary, slug, score}`; `[]` when none",
    "suggestions.title": "an article's title",
    "suggestions.url": "its link",
    "suggestions.summary": "its summary (front matter `summary`, else its first paragraph)",
    "now": "the time of rendering (aware `datetime`, UTC)",
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_WRAP_WIDTH = 72


class TemplateError(jinja2.TemplateError):
    """A template is missing, does not compile, or fails to render.

    ``template`` names the template (``builtin:default/ack.txt.j2``) or, when none
    was found, the candidates that were tried.
    """

    def __init__(self, template: str, message: str) -> None:
        super().__init__(f"template {template}: {message}")
        self.template = template
        self.detail = message


@dataclass(frozen=True, slots=True)
class RenderedBody:
    text: str
    html: str


# --------------------------------------------------------------------------- filters


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def format_datetime(value: Any, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """``2026-11-21 14:03 UTC``; naive datetimes are taken as UTC; ``None`` → ``""``."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _as_utc(value).strftime(fmt)
    if isinstance(value, date):
        return value.strftime(fmt.replace(" %H:%M", "").replace(" UTC", ""))
    return str(value)


def format_date(value: Any) -> str:
    """``2026-11-21`` (UTC); ``None`` → ``""``."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _as_utc(value).strftime("%Y-%m-%d")
    if isinstance(value, date):
        return value.strftime("%Y-%m-%d")
    return str(value)


def _lines(value: Any) -> list[str]:
    text = "" if value is None else str(value)
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    return [line.rstrip() for line in text.split("\n")] if text else []


def quote(value: Any, prefix: str = "> ") -> str:
    """Prefix every line with ``> `` (blank lines get a bare ``>``), as mail clients quote."""
    bare = prefix.rstrip()
    return "\n".join(prefix + line if line else bare for line in _lines(value))


def wrap(value: Any, width: int = _WRAP_WIDTH) -> str:
    """Re-wrap prose at ``width`` columns.

    Paragraphs are separated by blank lines; the lines of a paragraph are joined and
    filled again. A line starting with ``- `` or ``* `` begins a list item (continued
    with a hanging indent). Words are never broken (long addresses stay whole). The
    result ends with a newline, for use as ``{% filter wrap %}...{% endfilter %}``.
    """
    out: list[str] = []
    para: list[str] = []
    bullet = ""

    def flush() -> None:
        nonlocal para, bullet
        if para:
            words = " ".join(" ".join(para).split())
            out.extend(textwrap.wrap(
                words, width=width, initial_indent=bullet,
                subsequent_indent=" " * len(bullet), break_long_words=False,
                break_on_hyphens=False,
            ) or [""])
        para, bullet = [], ""

    lines = _lines(value)
    for line in lines:
        stripped = line.strip()
        if not stripped:
            flush()
            if out and out[-1] != "":
                out.append("")
            continue
        if stripped[:2] in ("- ", "* "):
            flush()
            bullet = stripped[:2]
            para.append(stripped[2:].strip())
        else:
            para.append(stripped)
    flush()
    while out and out[-1] == "":
        out.pop()
    # a block filter: end with a newline so that what follows starts a new line
    return "\n".join(out) + "\n" if out else ""


def nl2br(value: Any) -> Markup:
    """Escape ``value``, then turn its line breaks into ``<br>`` (HTML only)."""
    lines = "\n".join(_lines(value))
    if not lines:
        return Markup("")
    return Markup("<br>\n").join(escape(line) for line in lines.split("\n"))


def _finalize(value: Any) -> Any:
    return "" if value is None else value


# --------------------------------------------------------------------------- renderer


def _frame_location(exc: BaseException) -> str:
    """`` (line N of name)`` from the deepest template frame of ``exc``'s traceback."""
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"  # the template named is the one at fault
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            where = f" (line {tb.tb_lineno} of {filename})"
        tb = tb.tb_next
    return where


class _RootLoader(jinja2.PrefixLoader):
    """``builtin:default/ack.txt.j2`` → that file; the template keeps the full name.

    (``PrefixLoader.load`` would name it ``default/ack.txt.j2``, losing which folder
    it came from, which error messages and ``template_name`` need.)
    """

    load = jinja2.BaseLoader.load  # get_source is PrefixLoader's; the name stays whole


class TemplateRenderer:
    """Find and render the templates of outgoing mail (see the module docstring)."""

    def __init__(
        self, builtin_dir: Path = BUILTIN_TEMPLATES, override_dir: Path | None = None
    ) -> None:
        self.builtin_dir = Path(builtin_dir).resolve()
        override = Path(override_dir).resolve() if override_dir is not None else None
        # An admin folder that is the built-in one (config `templates: ../templates`)
        # is the built-in set: no second look-up.
        self.override_dir = None if override == self.builtin_dir else override

        roots: dict[str, jinja2.BaseLoader] = {"builtin": jinja2.FileSystemLoader(self.builtin_dir)}
        plain: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(self.builtin_dir)]
        if self.override_dir is not None:
            roots["override"] = jinja2.FileSystemLoader(self.override_dir)
            plain.insert(0, jinja2.FileSystemLoader(self.override_dir))
        loader = jinja2.ChoiceLoader([_RootLoader(roots, delimiter=":"), *plain])

        common: dict[str, Any] = dict(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
            auto_reload=True,
        )
        self.text_env = jinja2.Environment(autoescape=False, **common)
        self.html_env = jinja2.Environment(autoescape=True, **common)
        for env in (self.text_env, self.html_env):
            env.filters.update(datetime=format_datetime, date=format_date, quote=quote, wrap=wrap)
        self.html_env.filters["nl2br"] = nl2br

    # ---------------------------------------------------------------- look-up

    def candidates(self, category: str, kind: str, part: str) -> list[str]:
        """The template names tried for (category, kind, part), best first."""
        for what, value in (("category", category), ("kind", kind)):
            if not _NAME.match(str(value)):
                raise TemplateError(f"{category}/{kind}.{part}.j2",
                                    f"invalid {what} name {value!r}")
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, not {part!r}")
        file = f"{kind}.{part}.j2"
        dirs = [category] if category == DEFAULT_DIR else [category, DEFAULT_DIR]
        roots = ["override", "builtin"] if self.override_dir is not None else ["builtin"]
        return [f"{root}:{d}/{file}" for root in roots for d in dirs]

    def select(self, category: str, kind: str, part: str) -> jinja2.Template:
        """The template that renders ``part`` (``txt`` or ``html``) of (category, kind)."""
        names = self.candidates(category, kind, part)
        env = self.html_env if part == "html" else self.text_env
        try:
            return env.select_template(names)
        except jinja2.TemplatesNotFound:
            raise TemplateError(" | ".join(names), "not found") from None
        except jinja2.TemplateError as exc:  # found, but does not compile
            raise TemplateError(
                _failing_name(exc, names), f"{_message(exc)}{_frame_location(exc)}"
            ) from exc

    def template_name(self, category: str, kind: str, part: str) -> str:
        """The name (``override:billing/ack.txt.j2``) of the template that would be used."""
        return self.select(category, kind, part).name or ""

    # ---------------------------------------------------------------- rendering

    def _render(self, template: jinja2.Template, context: Mapping[str, Any]) -> str:
        try:
            return template.render(dict(context))
        except Exception as exc:  # undefined variables, bad filters, errors in the data
            raise TemplateError(
                template.name or "?", f"{_message(exc)}{_frame_location(exc)}"
            ) from exc

    def render_part(self, category: str, kind: str, part: str, context: Mapping[str, Any]) -> str:
        text = self._render(self.select(category, kind, part), context)
        return _tidy(text) if part == "txt" else text.strip() + "\n"

    def render(self, category: str, kind: str, context: Mapping[str, Any]) -> RenderedBody:
        """Both parts of the body of a mail of ``kind`` in ``category``.

        Raises ``TemplateError`` (naming the template) when a template is missing,
        does not compile, or fails, e.g. on a variable the context lacks.
        """
        kind = str(kind)
        return RenderedBody(
            text=self.render_part(category, kind, "txt", context),
            html=self.render_part(category, kind, "html", context),
        )

    # ---------------------------------------------------------------- checking

    def check_all(self, categories: Iterable[str]) -> list[str]:
        """Compile every template and render every kind for every category.

        Each (category, kind) is rendered with ``sample_context(kind, category)``,
        both with only the values that kind usually gets and with every optional
        value set. Returns one string per problem (empty: all good); also reports
        template files in the override folder that nothing would ever use.
        """
        categories = list(dict.fromkeys(str(c) for c in categories))
        errors: list[str] = []
        seen: set[str] = set()
        broken: set[str] = set()  # templates that do not compile, reported once

        def note(msg: str) -> None:
            if msg not in seen:
                seen.add(msg)
                errors.append(msg)

        # every file compiles, partials and unused ones included
        for root, base in (("override", self.override_dir), ("builtin", self.builtin_dir)):
            if base is None or not base.is_dir():
                if root == "builtin":
                    note(f"built-in templates folder {base} is missing")
                continue
            for path in sorted(base.rglob("*.j2")):
                name = path.relative_to(base).as_posix()
                env = self.html_env if name.endswith(".html.j2") else self.text_env
                try:
                    env.get_template(f"{root}:{name}")
                except jinja2.TemplateError as exc:
                    failing = exc.name if isinstance(exc, jinja2.TemplateSyntaxError) and exc.name \
                        else f"{root}:{name}"
                    if failing not in broken:
                        broken.add(failing)
                        note(f"template {failing}: {_message(exc)}{_frame_location(exc)}")
            if root == "override":
                for msg in self._unused_overrides(base, categories):
                    note(msg)

        # one line per distinct failure, naming the mails it breaks
        failures: dict[str, list[str]] = {}
        for category in categories:
            for kind in KINDS:
                for full in (False, True):
                    context = sample_context(kind, category, full=full)
                    for part in PARTS:
                        try:
                            self.render_part(category, kind, part, context)
                        except TemplateError as exc:
                            if exc.template in broken:
                                continue
                            mails = failures.setdefault(str(exc), [])
                            if f"{category}/{kind}" not in mails:
                                mails.append(f"{category}/{kind}")
        for message, mails in failures.items():
            shown = ", ".join(mails[:4]) + (f" and {len(mails) - 4} more" if len(mails) > 4 else "")
            note(f"{message} [breaks {shown}]")
        return errors

    @staticmethod
    def _unused_overrides(base: Path, categories: list[str]) -> list[str]:
        problems = []
        folders = {DEFAULT_DIR, *categories}
        for path in sorted(base.rglob("*.j2")):
            rel = path.relative_to(base)
            if path.name.startswith("_"):
                continue  # layouts, macros, partials
            if len(rel.parts) != 2 or rel.parts[0] not in folders:
                problems.append(
                    f"template override {rel.as_posix()}: not used (templates go in "
                    f"<folder>/<kind>.txt.j2 or .html.j2, folder one of: "
                    f"{', '.join(sorted(folders))})"
                )
                continue
            stem, _, suffix = path.name.partition(".")
            if suffix not in ("txt.j2", "html.j2") or stem not in KINDS:
                problems.append(
                    f"template override {rel.as_posix()}: not used ({stem!r} is not a mail kind; "
                    f"kinds: {', '.join(KINDS)}; parts: .txt.j2, .html.j2)"
                )
        return problems


def _message(exc: BaseException) -> str:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template not found: {exc.name}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc.message}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failing_name(exc: jinja2.TemplateError, names: list[str]) -> str:
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.name:
        return exc.name
    return " | ".join(names)


_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _tidy(text: str) -> str:
    """No leading blank lines, at most one blank line in a row, one final newline."""
    text = text.replace("\r\n", "\n")
    text = _BLANKS.sub("\n\n", text)
    return text.strip("\n") + "\n"


# --------------------------------------------------------------------------- contexts


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
    suggestions: Iterable[Any] = (),
    now: datetime | None = None,
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
        "suggestions": list(suggestions),
        "now": now or datetime.now(timezone.utc),
    }


_SAMPLE_CATEGORIES = {
    "customer_care": ("Customer Care", "CC"),
    "billing": ("Billing", "BL"),
    "connections": ("Connections", "CN"),
}
_CUSTOMER_CARE_STATUSES = {
    "open": "Open", "in_progress": "In progress", "waiting": "Partner's feedback required",
    "resolved": "Resolved", "closed": "Closed",
}
_CONNECTIONS_STATUSES = {
    "in_progress": "In progress", "pending_seller": "Pending seller's feedback",
    "delivered": "Delivered", "not_completed": "Not completed",
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
    "self_solved": ("resolved", "in_progress"),
    "solved_notice": ("resolved", "in_progress"),
}
_SAMPLE_WITH_MESSAGE = {"ack", "relay", "reopened", "command_error", "duplicate", "too_large",
                        "self_solved", "solved_notice",
                        "staff_notice", "status"}


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
    statuses = _CONNECTIONS_STATUSES if connections else _CUSTOMER_CARE_STATUSES
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
                        "staff_notice"):
        ctx["note"] = {
            "solution": "The availability cache was rebuilt;\nrequests answer normally again.",
            "not_completed": "The request was cancelled by the partner.",
            "manual_review": "Activation hook exited with status 3 after 12s:\n"
                             "search test failed: no availability returned",
            "staff_notice": "A participant replied to a case that waits on the customer.",
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
    if kind == "too_large" and not full:
        ctx["case"] = None
    return ctx
