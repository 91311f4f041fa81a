"""The status page's routes (Starlette): the overview, a page per rule and per budget member,
sign-in, silences (create, expire), and `/metrics` and `/healthz`.

Reads are open unless ``web.read_token`` is set; writes need ``web.admin_token`` (see
`daemon.web.auth`). Every value is escaped by the templates (autoescape), charts are SVG made
here, and the pages load nothing from outside (a content security policy says so too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from daemon.formatting import format_amount, format_metric, format_score
from daemon.metrics import SnapshotCollector, render
from daemon.money import format_percent
from daemon.rules.durations import parse_duration
from daemon.web.auth import COOKIE, SESSION_SECONDS, Auth
from daemon.web.pages import Site, budget_detail, header, overview, rule_page

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self';"
    " form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)
Handler = Callable[[Request], Awaitable[Response]]
MAX_SILENCE = timedelta(days=90)


def _templates() -> Environment:
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
    )
    env.filters["local"] = lambda instant, tz, fmt="%Y-%m-%d %H:%M": (
        "-" if instant is None else instant.astimezone(tz).strftime(fmt)
    )
    return env


def make_app(site: Site, auth: Auth, collector: SnapshotCollector) -> Starlette:
    env = _templates()

    def page(
        request: Request, template: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        body = env.get_template(template).render(
            **header(site),
            **context,
            role=auth.role(request),
            writes=auth.writes_enabled,
            csrf=auth.csrf(request),
            path=request.url.path,
        )
        return HTMLResponse(body, status, headers={"Content-Security-Policy": CSP})

    def reader(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not auth.can_read(request):
                return page(request, "login.html", {"error": "this page needs web.read_token"}, 401)
            return await handler(request)

        return guarded

    def refused(request: Request, why: str, status: int = 403) -> Response:
        return page(request, "refused.html", {"error": why}, status)

    async def index(request: Request) -> Response:
        context = overview(site)
        context["prefill"] = {
            "rule": request.query_params.get("rule", ""),
            "member": request.query_params.get("member", ""),
        }
        return page(request, "index.html", context)

    async def rule(request: Request) -> Response:
        context = rule_page(site, request.path_params["rule"])
        if context is None:
            return refused(request, "no such rule", 404)
        return page(request, "rule.html", context)

    async def member(request: Request) -> Response:
        context = budget_detail(site, request.path_params["rule"], request.path_params["scope"])
        if context is None:
            return refused(request, "no such budget member (yet): see the overview", 404)
        return page(request, "member.html", context)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page(request, "login.html", {"error": None})
        form = await request.form()
        role = auth.role_of_token(str(form.get("token", "")))
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
        response = RedirectResponse("/", 303)
        response.delete_cookie(COOKIE)
        return response

    async def add_silence(request: Request) -> Response:
        form = await request.form()
        why = auth.write_refusal(request, str(form.get("csrf", "")) or None)
        if why is not None:
            return refused(request, why)
        config = site.config()
        fields = {
            k: str(form.get(k, "")).strip() for k in ("rule", "member", "for", "comment", "by")
        }
        if fields["rule"] not in {r.name for r in config.rules}:
            return refused(request, "no such rule: pick one from the list", 400)
        try:
            duration = parse_duration(fields["for"])
        except ValueError as exc:
            return refused(request, f"duration: {exc}", 400)
        if not timedelta(0) < duration <= MAX_SILENCE:
            return refused(request, "duration: between 1 minute and 90 days, e.g. 2h", 400)
        if not fields["comment"] or not fields["by"]:
            return refused(
                request, "say who you are and why (both are shown with the silence)", 400
            )
        now = site.clock()
        site.store.add_silence(
            fields["rule"],
            fields["member"] or None,
            now,
            now + duration,
            fields["comment"][:500],
            fields["by"][:100],
        )
        return RedirectResponse("/#silences", 303)

    async def expire_silence(request: Request) -> Response:
        form = await request.form()
        why = auth.write_refusal(request, str(form.get("csrf", "")) or None)
        if why is not None:
            return refused(request, why)
        if not site.store.expire_silence(int(request.path_params["id"]), site.clock()):
            return refused(request, "no such active silence", 404)
        return RedirectResponse("/#silences", 303)

    async def metrics(request: Request) -> Response:
        return Response(render(collector), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: Request) -> Response:
        ok, detail = site.health()
        return JSONResponse({"status": "ok" if ok else "stale", **detail}, 200 if ok else 503)

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
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes)
