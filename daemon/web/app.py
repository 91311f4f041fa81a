"""The status page's routes (Starlette): the overview, a page per rule and per budget member,
sign-in, silences (create, expire), and `/metrics` and `/healthz`.

Reads are open unless ``web.read_token`` is set; writes need ``web.admin_token`` (see
`daemon.web.auth`). Every value is escaped by the templates (autoescape), charts are SVG made
here, and the pages load nothing from outside (`daemon.web.guard` sets the headers). Page
queries run on the pages' own thread and connection (`Site.read`), never on the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from daemon.formatting import format_amount, format_metric, format_score
from daemon.metrics import SnapshotCollector, render
from daemon.money import format_percent
from daemon.rules.durations import format_duration
from daemon.store import Store
from daemon.web.auth import COOKIE, SESSION_SECONDS, Auth, same_origin
from daemon.web.forms import FormError, read_form, silence_form
from daemon.web.guard import Guard
from daemon.web.pages import Site, budget_detail, header, overview, rule_page
from daemon.web.view import shown_text

if TYPE_CHECKING:
    from jinja2 import Environment

HERE = Path(__file__).parent
Handler = Callable[[Request], Awaitable[Response]]
log = structlog.get_logger("langdock_budget.web")


@cache
def _templates() -> Environment:
    """The templates, made on the first page anybody opens: an idle daemon whose page is
    never looked at does not hold jinja2 (docs/PERFORMANCE.md, idle)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        amount=format_amount,
        metric=format_metric,
        score=format_score,
        percent=format_percent,
        duration=format_duration,
        shown=shown_text,
        path=lambda text: quote(str(text), safe=""),  # a "/" in an id stays in its segment
    )
    env.filters["local"] = lambda instant, tz, fmt="%Y-%m-%d %H:%M": (
        "-" if instant is None else instant.astimezone(tz).strftime(fmt)
    )
    return env


def make_app(
    site: Site,
    auth: Auth,
    collector: SnapshotCollector,
    allowed_hosts: tuple[str, ...] = ("*",),
) -> ASGIApp:
    def page(
        request: Request, template: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        body = (
            _templates()
            .get_template(template)
            .render(
                **header(site),
                **context,
                role=auth.role(request),
                writes=auth.writes_enabled,
                csrf=auth.csrf(request),
                path=request.url.path,
            )
        )
        return HTMLResponse(body, status)

    def reader(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not auth.can_read(request):
                return page(request, "login.html", {"error": "this page needs web.read_token"}, 401)
            return await handler(request)

        return guarded

    def refused(request: Request, why: str, status: int = 403) -> Response:
        return page(request, "refused.html", {"error": why}, status)

    async def index(request: Request) -> Response:
        context = await site.read(lambda store: overview(site, store))
        context["prefill"] = {
            "rule": request.query_params.get("rule", "")[:200],
            "member": request.query_params.get("member", "")[:200],
        }
        return page(request, "index.html", context)

    async def rule(request: Request) -> Response:
        name = request.path_params["rule"]
        context = await site.read(lambda store: rule_page(site, store, name))
        if context is None:
            return refused(request, "no such rule", 404)
        return page(request, "rule.html", context)

    async def member(request: Request) -> Response:
        name, scope = request.path_params["rule"], request.path_params["scope"]
        context = await site.read(lambda store: budget_detail(site, store, name, scope))
        if context is None:
            return refused(request, "no such budget member (yet): see the overview", 404)
        return page(request, "member.html", context)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page(request, "login.html", {"error": None})
        if not same_origin(request):
            return refused(request, "refused: the form was sent from another site")
        try:
            form = await read_form(request)
        except FormError as exc:
            return refused(request, str(exc), exc.status)
        role = auth.role_of_token(form.get("token", ""))
        log.info("page_sign_in", ok=role is not None, role=role, client=_client(request))
        if role is None:
            return page(request, "login.html", {"error": "that token is not configured"}, 401)
        response = RedirectResponse("/", 303)
        response.set_cookie(
            COOKIE,
            auth.session(role),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(request: Request) -> Response:
        if not same_origin(request):
            return refused(request, "refused: the form was sent from another site")
        response = RedirectResponse("/", 303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response

    async def write(request: Request) -> tuple[dict[str, str], Response | None]:
        """The form of a write, or the response that refuses it."""
        try:
            form = await read_form(request)
        except FormError as exc:
            return {}, refused(request, str(exc), exc.status)
        why = auth.write_refusal(request, form.get("csrf") or None)
        return form, None if why is None else refused(request, why)

    async def add_silence(request: Request) -> Response:
        fields, refusal = await write(request)
        if refusal is not None:
            return refusal
        try:
            wanted = silence_form(fields, {r.name for r in site.config().rules})
        except FormError as exc:
            return refused(request, str(exc), exc.status)
        now = site.clock()

        def store_it(store: Store) -> int:
            return store.add_silence(
                wanted.rule,
                wanted.member,
                now,
                now + wanted.duration,
                wanted.comment,
                wanted.by,
            )

        silence_id = await site.read(store_it)
        log.info(
            "silence_created",
            id=silence_id,
            rule=wanted.rule,
            member=wanted.member,
            until=(now + wanted.duration).isoformat(),
            by=wanted.by,
            via="bearer" if request.headers.get("authorization") else "session",
            client=_client(request),
        )
        return RedirectResponse("/#silences", 303)

    async def expire_silence(request: Request) -> Response:
        _, refusal = await write(request)
        if refusal is not None:
            return refusal
        silence_id = int(request.path_params["id"])
        now = site.clock()
        if not 0 < silence_id < 2**63 or not await site.read(
            lambda store: store.expire_silence(silence_id, now)
        ):
            return refused(request, "no such active silence", 404)
        log.info("silence_expired", id=silence_id, client=_client(request))
        return RedirectResponse("/#silences", 303)

    async def metrics(request: Request) -> Response:
        return Response(render(collector), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: Request) -> Response:
        ok, detail = site.health()
        return JSONResponse({"status": "ok" if ok else "stale", **detail}, 200 if ok else 503)

    async def favicon(request: Request) -> Response:
        return RedirectResponse("/static/favicon.svg", 301)

    routes = [
        Route("/", reader(index)),
        Route("/rules/{rule}", reader(rule)),
        Route("/rules/{rule}/{scope:path}", reader(member)),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/silences", add_silence, methods=["POST"]),
        Route("/silences/{id:int}/expire", expire_silence, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Guard(Starlette(routes=routes), allowed_hosts)


def _client(request: Request) -> str | None:
    return request.client.host if request.client is not None else None
