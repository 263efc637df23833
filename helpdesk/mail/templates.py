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

The variables every template gets are listed in ``helpdesk.mail.context.CONTEXT``
and, for admins, in templates/README.md; the filters are in ``helpdesk.mail.filters``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from helpdesk.mail.context import sample_context
from helpdesk.mail.filters import format_date, format_datetime, nl2br, quote, wrap

BUILTIN_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

# The outbound mail kinds, each a template (mirrors the outbound part of MailKind).
KINDS: tuple[str, ...] = (
    "ack", "relay", "reminder", "closure", "solution", "reopened", "closed_notice",
    "status", "command_error", "credentials", "manual_review", "duplicate",
    "not_completed", "too_large", "staff_notice", "login", "case_list", "unverified_staff",
    "self_solved", "solved_notice",
)
PARTS: tuple[str, ...] = ("txt", "html")
DEFAULT_DIR = "default"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


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
        return self._finish(part, self._render(self.select(category, kind, part), context))

    @staticmethod
    def _finish(part: str, text: str) -> str:
        return _tidy(text) if part == "txt" else text.strip() + "\n"

    def render(self, category: str, kind: str, context: Mapping[str, Any]) -> RenderedBody:
        """Both parts of the body of a mail of ``kind`` in ``category``.

        Raises ``TemplateError`` (naming the template) when a template is missing,
        does not compile, or fails, e.g. on a variable the context lacks.
        """
        return TemplateBatch(self).render(category, kind, context)

    def batch(self) -> TemplateBatch:
        """A renderer for one batch of mail (``TemplateBatch``)."""
        return TemplateBatch(self)

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


class TemplateBatch:
    """Renders a batch of mail, looking each template up once for the whole batch: which
    file serves (category, kind, part) is found once, not once a mail (a look-up tries
    the candidates in turn, each missing one a failed file look-up). An admin's edit,
    new override or removed one shows from the next batch on."""

    def __init__(self, renderer: TemplateRenderer) -> None:
        self._renderer = renderer
        self._selected: dict[tuple[str, str, str], jinja2.Template] = {}

    def render(self, category: str, kind: str, context: Mapping[str, Any]) -> RenderedBody:
        """As ``TemplateRenderer.render``."""
        kind = str(kind)
        return RenderedBody(text=self._part(category, kind, "txt", context),
                            html=self._part(category, kind, "html", context))

    def _part(self, category: str, kind: str, part: str, context: Mapping[str, Any]) -> str:
        key = (category, kind, part)
        template = self._selected.get(key)
        if template is None:
            template = self._selected[key] = self._renderer.select(category, kind, part)
        return self._renderer._finish(part, self._renderer._render(template, context))


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
