"""The portal's routes: Starlette, server-rendered Jinja2 pages, plain HTML forms.

No JavaScript: every action is a form POST with a CSRF token, answered by a
redirect (303) to the page to show next. Database work runs in Starlette's thread
pool (SQLAlchemy is synchronous), in a fixed number of statements per page.
"""
from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpdesk.app import App
from helpdesk.core.access import Viewer
from helpdesk.core.addresses import NotAnAddress, check_address
from helpdesk.mail.filters import format_date, format_datetime
from helpdesk.outbound.personal import queue_login
from helpdesk.store import tokens
from helpdesk.web import actions, kb_pages, pages
from helpdesk.web.scope import ANON_COOKIE, SESSION_COOKIE, Csrf, csrf_key, is_known, signed_in

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
_EMAIL = 320


class Portal:
    """The routes, with what they share: the App, the CSRF key, the page templates."""

    def __init__(self, app: App, wake_sender: Callable[[], None] = lambda: None) -> None:
        if app.settings.web is None:
            raise ValueError("the web portal needs a `web:` section in the config")
        self.app = app
        self.web = app.settings.web
        self.wake_sender = wake_sender
        self.csrf = Csrf(csrf_key(app))
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                      autoescape=True, undefined=jinja2.StrictUndefined,
                                      trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(datetime=format_datetime, date=format_date)
        self.env.globals.update(status_label=lambda c, s: pages.status_label(app, c, s),
                                category_label=lambda c: pages.category_label(app, c),
                                is_final=lambda c, s: pages.is_final(app, c, s),
                                case_link_days=self.web.case_link_ttl.days)

    # ------------------------------------------------------------------ plumbing

    def read(self) -> Any:
        """A session for reading a page: never takes the write lock."""
        return self.app.reads()

    def viewer(self, request: Request, session: Any = None) -> Viewer | None:
        if session is None:
            with self.read() as session:
                return self.viewer(request, session)
        return signed_in(session, self.app, request.cookies.get(SESSION_COOKIE),
                         self.app.clock.now())

    def page(self, request: Request, name: str, status: int = 200,
             viewer: Viewer | None = None, **values: Any) -> HTMLResponse:
        cookie = request.cookies.get(SESSION_COOKIE) if viewer else None
        new_anon = None
        if cookie is None:
            cookie = request.cookies.get(ANON_COOKIE)
            if not cookie:
                cookie = new_anon = secrets.token_urlsafe(32)
        html = self.env.get_template(name).render(
            helpdesk=self.app.settings.helpdesk.name, viewer=viewer,
            csrf=self.csrf.token(cookie), nonce=secrets.token_urlsafe(24), **values)
        response = HTMLResponse(html, status_code=status)
        if new_anon:
            self.set_cookie(response, ANON_COOKIE, new_anon, None)
        return response

    def set_cookie(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                            samesite="lax", secure=self.web.secure)

    def csrf_ok(self, request: Request, form: dict[str, str]) -> bool:
        cookie = request.cookies.get(SESSION_COOKIE) or request.cookies.get(ANON_COOKIE)
        if not self.csrf.valid(cookie, form.get("csrf")):
            return self.csrf.valid(request.cookies.get(ANON_COOKIE), form.get("csrf"))
        return True

    def refuse_csrf(self, request: Request, viewer: Viewer | None = None) -> HTMLResponse:
        return self.page(request, "error.html", 403, viewer, title="Form expired",
                         text="This form was not sent from this site's page, or it has "
                              "expired. Go back, reload the page and try again.")

    def not_found(self, request: Request, viewer: Viewer | None) -> HTMLResponse:
        return self.page(request, "error.html", 404, viewer, title="Not found",
                         text="There is no such case, or it is not one of yours.")

    @staticmethod
    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)

    # ------------------------------------------------------------------ knowledge base

    def kb_index(self, request: Request) -> Response:
        kb = self.app.knowledge_base
        if not kb.enabled:
            return self.no_article(request)
        return self.page(request, "kb.html", viewer=self.viewer(request), article=None,
                         articles=kb_pages.by_title(kb.articles()))

    def kb_article(self, request: Request) -> Response:
        kb = self.app.knowledge_base
        article = kb.get(request.path_params["slug"]) if kb.enabled else None
        if article is None:
            return self.no_article(request)
        return self.page(request, "kb.html", viewer=self.viewer(request), article=article,
                         body=kb_pages.article_html(article))

    def no_article(self, request: Request) -> HTMLResponse:
        return self.page(request, "error.html", 404, self.viewer(request), title="Not found",
                         text="There is no such article in the knowledge base.")

    # ------------------------------------------------------------------ sign-in

    def login_form(self, request: Request) -> Response:
        return self.page(request, "login.html", viewer=self.viewer(request), sent=None,
                         email=request.query_params.get("email", "")[:_EMAIL])

    def login_post(self, request: Request, form: dict[str, str]) -> Response:
        if not self.csrf_ok(request, form):
            return self.refuse_csrf(request)
        address = form.get("email", "").strip().lower()[:_EMAIL]
        try:  # the address as mail would have it: checked, normalised, never a route
            address, valid = check_address(address), True
        except NotAnAddress:
            valid = False
        if valid:
            with self.read() as session:  # a stranger's request never takes the write lock
                known = is_known(session, self.app, address)
            if known:
                with self.app.sessions.begin() as session:
                    queued = queue_login(session, self.app, address, self.app.clock.now())
                if queued:
                    self.wake_sender()
        # The same page whether we know the address or not: nobody learns who is a customer.
        return self.page(request, "login.html", viewer=None, sent=address if valid else "",
                         email=address)

    def link_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        with self.read() as session:
            grant = tokens.peek(session, token, "login", self.app.clock.now())
        return self.page(request, "link.html", 200 if grant else 410, viewer=None,
                         action=f"/login/{quote(token)}", grant=grant, ref=None, token=None)

    def link_post(self, request: Request, form: dict[str, str]) -> Response:
        if not self.csrf_ok(request, form):
            return self.refuse_csrf(request)
        token = request.path_params["token"]
        return self._sign_in(request, token, "login", None, "/cases")

    def _sign_in(self, request: Request, token: str, kind: str, ref: str | None,
                 target: str) -> Response:
        now = self.app.clock.now()
        with self.app.sessions.begin() as session:
            grant = tokens.redeem(session, token, kind, now, ref)
            if grant is None:
                cookie = None
            else:
                cookie = tokens.open_session(session, grant.address, grant.case_id, now,
                                             self.web.session_ttl)
        if cookie is None:
            return self.page(request, "link.html", 410, viewer=None, action="", grant=None,
                             ref=ref, token=None)
        log.info("WEB SIGN-IN %s (%s link%s)", grant.address, kind,
                 f" of {grant.ref}" if grant.ref else "")
        response = RedirectResponse(target, status_code=303)
        self.set_cookie(response, SESSION_COOKIE, cookie,
                        int(self.web.session_ttl.total_seconds()))
        response.delete_cookie(ANON_COOKIE, path="/")
        return response

    def logout(self, request: Request, form: dict[str, str]) -> Response:
        if not self.csrf_ok(request, form):
            return self.refuse_csrf(request, self.viewer(request))
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            with self.app.sessions.begin() as session:
                tokens.close_session(session, cookie)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ pages

    def cases(self, request: Request) -> Response:
        with self.read() as session:
            viewer = self.viewer(request, session)
            if viewer is None:
                return self.to_login(request)
            params = pages.list_params(self.app, viewer, dict(request.query_params))
            listing = pages.case_list(session, self.app, viewer, params)
        return self.page(request, "cases.html", viewer=viewer, listing=listing,
                         statuses=pages.status_choices(self.app),
                         categories=[(n, c.label) for n, c in self.app.settings.categories.items()],
                         link=lambda **change: _query(params, **change))

    def case(self, request: Request, error: str = "", status: int = 200) -> Response:
        ref = request.path_params["ref"].upper()
        token = request.query_params.get("t")
        with self.read() as session:
            viewer = self.viewer(request, session)
            found = pages.case_page(session, self.app, viewer, ref) if viewer else None
            if token:  # a case link: a button that signs in, unless already signed in here
                if found is not None and (viewer.staff or viewer.only_case in (None, ref)):
                    return RedirectResponse(f"/cases/{quote(ref)}", status_code=303)
                grant = tokens.peek(session, token, "case", self.app.clock.now(), ref)
                return self.page(request, "link.html", 200 if grant else 410, viewer=None,
                                 action=f"/cases/{quote(ref)}", grant=grant, ref=ref,
                                 token=token)
            if viewer is None:
                return self.to_login(request)
            if found is None:
                return self.not_found(request, viewer)
            return self._case_response(request, viewer, found, error, status)

    def _case_response(self, request: Request, viewer: Viewer, found: pages.CasePage,
                       error: str, status: int) -> Response:
        done = request.query_params.get("done", "")
        return self.page(request, "case.html", status, viewer=viewer, c=found, error=error,
                         done=done if done in _DONE else "", done_text=_DONE.get(done, ""),
                         statuses=self._statuses(found.case.category))

    def _statuses(self, category: str) -> list[tuple[str, str]]:
        from helpdesk.core import lifecycle
        from helpdesk.core.lifecycle import Lifecycle
        cat = self.app.settings.categories[category]
        return list(lifecycle.STATUSES[Lifecycle(cat.lifecycle)].items())

    def case_sign_in(self, request: Request, form: dict[str, str]) -> Response:
        if not self.csrf_ok(request, form):
            return self.refuse_csrf(request)
        ref = request.path_params["ref"].upper()
        return self._sign_in(request, form.get("t", ""), "case", ref, f"/cases/{quote(ref)}")

    def attachment(self, request: Request) -> Response:
        viewer = self.viewer(request)
        if viewer is None:
            return self.to_login(request)
        try:
            attachment_id = int(request.path_params["id"])
        except ValueError:
            return self.not_found(request, viewer)
        if not 0 < attachment_id < 2**63:  # no row has it, and the database would overflow
            return self.not_found(request, viewer)
        with self.read() as session:
            found = pages.attachment(session, self.app, viewer, request.path_params["ref"],
                                     attachment_id)
        if found is None:
            return self.not_found(request, viewer)
        filename, data = found
        # filename= for old clients, in plain ASCII (a header is Latin-1); filename* whole.
        safe = "".join(c for c in filename
                       if c.isascii() and (c.isalnum() or c in "._- ")).strip() or "attachment"
        return Response(data, media_type="application/octet-stream", headers={
            "Content-Disposition": f"attachment; filename=\"{safe}\"; "
                                   f"filename*=UTF-8''{quote(filename)}",
            "Cache-Control": "private, no-store"})

    # ------------------------------------------------------------------ actions

    def act(self, request: Request, form: dict[str, str]) -> Response:
        viewer = self.viewer(request)
        if viewer is None:
            return self.to_login(request)
        if not self.csrf_ok(request, form):
            return self.refuse_csrf(request, viewer)
        ref, what = request.path_params["ref"].upper(), request.path_params["action"]
        nonce = form.get("nonce", "")
        try:
            if what == "close":
                done = actions.close(self.app, viewer, ref)
            elif what == "reply":
                done = actions.reply(self.app, viewer, ref, form.get("text", ""), nonce)
            elif what == "note":
                done = actions.note(self.app, viewer, ref, form.get("text", ""), nonce)
            elif what == "assign":
                done = actions.assign(self.app, viewer, ref, form.get("assignee", ""), nonce)
            elif what == "status":
                done = actions.set_status(self.app, viewer, ref, form.get("status", ""),
                                          form.get("note", ""))
            else:
                return self.not_found(request, viewer)
        except actions.NotFound:
            return self.not_found(request, viewer)
        except actions.Refused as exc:
            return self.case(request, error=str(exc), status=409)
        self.wake_sender()
        key = {"close": "closed", "reply": "replied", "note": "noted", "assign": "assigned",
               "status": "status"}[what]
        if done.ref != ref:
            key = "reopened"
        return RedirectResponse(f"/cases/{quote(done.ref)}?done={key}", status_code=303)


_DONE = {"closed": "The case is closed.", "replied": "Your message was added to the case.",
         "noted": "The internal note was added.", "assigned": "The assignment was saved.",
         "status": "The status was changed.",
         "reopened": "That case was closed, so your message opened this new case."}


def _query(params: pages.ListParams, **change: Any) -> str:
    values = {"scope": str(params.scope), "status": params.status, "category": params.category,
              "q": params.q, "sort": params.sort, "order": params.order, "page": params.page}
    values.update(change)
    if "page" not in change:
        values["page"] = 1 if change else params.page
    return "/cases?" + urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _sync(method: Callable[..., Response]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(method, request)
    return endpoint


def _with_form(method: Callable[..., Response]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        async with request.form(max_files=0, max_fields=20) as form:
            values = {k: v for k, v in form.items() if isinstance(v, str)}
        return await run_in_threadpool(method, request, values)
    return endpoint


class Headers:
    """Security headers on every response, and the server's own time (Server-Timing) on
    pages: never on a POST, whose time would tell what it did (POST /login: a known
    address costs a token and a mail, an unknown one nothing)."""

    HEADERS = [
        (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self'; "
                                     b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name for name, _ in headers}
                headers += [(n, v) for n, v in self.HEADERS if n not in names]
                if b"cache-control" not in names and not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                if scope["method"] in ("GET", "HEAD"):  # see the docstring
                    took = (time.perf_counter() - started) * 1000
                    headers.append((b"server-timing", f"app;dur={took:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def make_app(app: App, wake_sender: Callable[[], None] = lambda: None) -> ASGIApp:
    portal = Portal(app, wake_sender)
    css = HERE / "static" / "portal.css"
    routes = [
        Route("/", lambda request: RedirectResponse("/cases", status_code=303)),
        Route("/static/portal.css", lambda request: FileResponse(
            css, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})),
        Route("/login", _sync(portal.login_form), methods=["GET"]),
        Route("/login", _with_form(portal.login_post), methods=["POST"]),
        Route("/login/{token}", _sync(portal.link_page), methods=["GET"]),
        Route("/login/{token}", _with_form(portal.link_post), methods=["POST"]),
        Route("/logout", _with_form(portal.logout), methods=["POST"]),
        Route("/cases", _sync(portal.cases), methods=["GET"]),
        Route("/cases/{ref}", _sync(portal.case), methods=["GET"]),
        Route("/cases/{ref}", _with_form(portal.case_sign_in), methods=["POST"]),
        Route("/cases/{ref}/attachments/{id}", _sync(portal.attachment), methods=["GET"]),
        Route("/cases/{ref}/{action}", _with_form(portal.act), methods=["POST"]),
        Route("/kb", _sync(portal.kb_index), methods=["GET"]),
        Route("/kb/{slug:path}", _sync(portal.kb_article), methods=["GET"]),
    ]
    return Headers(Starlette(routes=routes))
