"""The status page's routes over Starlette's test client: what reading shows (escaped, no
secret), who may write (admin token, session cookie + CSRF mark, same origin), and the
read token."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from daemon.config import Config, load_config
from daemon.cycle import CycleResult, evaluate_rules, readiness
from daemon.ingest import PollReport
from daemon.langdock.csv import KeyUsage
from daemon.metrics import SnapshotCollector, Stats
from daemon.notify import DeliveryReport
from daemon.published import load_published
from daemon.store import Store
from daemon.web.app import make_app
from daemon.web.auth import COOKIE, Auth
from daemon.web.pages import Site
from tests.conftest import store_with_history

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
API_KEY = "sk-page-secret-5a4b3c2d1e"
HOSTILE = "<script>alert(1)</script>"
RULES = """\
rules:
  - {name: keys, kind: budget, each: api_key, window: day, limit_usd: 10, thresholds: [50, 100]}
  - {name: month, kind: budget, window: month, limit_usd: 1000, forecast: true}
  - {name: calls, kind: budget, window: day, limit_requests: 100}
"""


def _config(tmp_path: Path, web: str) -> Config:
    (tmp_path / "config.yaml").write_text(
        f"langdock: {{api_key: {API_KEY}}}\ntimezone: Europe/Berlin\nstate: {{path: state.db}}\n"
        f"{web}{RULES}"
    )
    return load_config(tmp_path / "config.yaml", {})


def _site(tmp_path: Path, web: str = "") -> tuple[Site, Store]:
    config = _config(tmp_path, web)
    store = store_with_history(config, NOW, tz=config.tz)
    start = NOW.replace(minute=0)
    rows = [
        KeyUsage("k1", "web", "gpt-4o", 40, Decimal("12.5")),
        KeyUsage("k2", HOSTILE, "gpt-4o", 3, Decimal("6")),
        KeyUsage("k3", "batch", "gpt-4o", 1, Decimal("1")),
    ]
    store.replace_key_usage(start, start + timedelta(hours=1), rows, NOW)
    engine = evaluate_rules(store, config, NOW)
    result = CycleResult(
        PollReport(started=NOW),
        engine,
        DeliveryReport(),
        readiness=readiness(store, config, NOW),
        published=load_published(store, config, engine, NOW),
    )
    site = Site(
        config=lambda: config,
        latest=lambda: result,
        stats=Stats,
        health=lambda: (True, {"state": "ready"}),
        clock=lambda: NOW,
    )
    return site, store


def _client(app: Starlette) -> httpx.AsyncClient:
    """Requests through the ASGI app in the test's own loop (the store's thread)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Store]]:
    site, store = _site(tmp_path)
    async with _client(make_app(site, Auth.fixed(ADMIN), SnapshotCollector())) as client:
        yield client, store
    site.close()
    store.close()


async def _sign_in(client: httpx.AsyncClient, token: str = ADMIN) -> str:
    answer = await client.post("/login", data={"token": token})
    assert answer.status_code == 303 and COOKIE in answer.cookies
    page = (await client.get("/")).text
    match = re.search(r'name="csrf" value="([0-9a-f]*)"', page)
    assert match is not None
    return match.group(1)


SILENCE = {"rule": "keys", "member": "bat*", "for": "2h", "by": "ops", "comment": "known job"}


async def test_the_overview_shows_every_budget_in_risk_order_and_escapes_names(
    admin: tuple[httpx.AsyncClient, Store],
) -> None:
    client, _ = admin
    page = await client.get("/")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    order = re.findall(r'class="budget[^"]*" data-rule="([^"]*)" data-scope="([^"]*)"', page.text)
    # k1 is over its limit (125 %), then the request budget (43 %), k2 at 60 %, ...
    assert order[0] == ("keys", "k1")
    assert set(order) >= {("keys", "k1"), ("keys", "k2"), ("month", "workspace")}
    assert HOSTILE not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script" not in page.text


async def test_no_secret_on_any_page(tmp_path: Path) -> None:
    site, store = _site(tmp_path, f"web: {{admin_token: {ADMIN}, read_token: {READ}}}\n")
    app = make_app(site, Auth.fixed(ADMIN, READ), SnapshotCollector())
    async with _client(app) as client:
        await _sign_in(client)
        for path in (
            "/",
            "/rules/keys",
            "/rules/keys/k1",
            "/rules/month/workspace",
            "/login",
            "/metrics",
            "/healthz",
            "/rules/nope",
        ):
            text = (await client.get(path)).text
            for secret in (ADMIN, READ, API_KEY):
                assert secret not in text, f"{path} shows a secret"
    site.close()
    store.close()


async def test_a_budget_member_page_draws_its_window_and_hours(
    admin: tuple[httpx.AsyncClient, Store],
) -> None:
    client, _ = admin
    page = await client.get("/rules/month/workspace")
    assert page.status_code == 200
    assert page.text.count("<svg") == 2 and 'class="limit"' in page.text
    assert (await client.get("/rules/keys/k2")).status_code == 200
    assert (await client.get("/rules/keys/nobody")).status_code == 404
    assert (await client.get("/rules/nope")).status_code == 404


async def test_writes_are_refused_without_the_admin_token(
    admin: tuple[httpx.AsyncClient, Store],
) -> None:
    client, store = admin
    refused = await client.post("/silences", data=SILENCE)
    assert refused.status_code == 403 and "sign in" in refused.text
    wrong = await client.post("/silences", data=SILENCE, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert (await client.post("/login", data={"token": "nope"})).status_code == 401
    assert store.silences(NOW) == []


async def test_a_signed_in_form_needs_its_csrf_mark_and_this_origin(
    admin: tuple[httpx.AsyncClient, Store],
) -> None:
    client, store = admin
    mark = await _sign_in(client)
    assert (await client.post("/silences", data=SILENCE)).status_code == 403  # no mark
    assert (await client.post("/silences", data={**SILENCE, "csrf": "0" * 64})).status_code == 403
    foreign = await client.post(
        "/silences", data={**SILENCE, "csrf": mark}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403 and "another site" in foreign.text
    assert store.silences(NOW) == []
    made = await client.post("/silences", data={**SILENCE, "csrf": mark}, follow_redirects=False)
    assert made.status_code == 303
    [silence] = store.silences(NOW)
    assert (silence.rule, silence.member, silence.created_by, silence.reason) == (
        "keys",
        "bat*",
        "ops",
        "known job",
    )
    assert silence.ends == NOW + timedelta(hours=2)
    listed = (await client.get("/")).text
    assert 'class="silence" data-id="1"' in listed and "known job" in listed
    expired = await client.post("/silences/1/expire", data={"csrf": mark}, follow_redirects=False)
    assert expired.status_code == 303 and store.silences(NOW) == []


async def test_a_script_writes_with_the_bearer_token(
    admin: tuple[httpx.AsyncClient, Store],
) -> None:
    client, store = admin
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    made = await client.post("/silences", data=SILENCE, headers=bearer, follow_redirects=False)
    assert made.status_code == 303 and len(store.silences(NOW)) == 1
    for bad, why in (
        ({**SILENCE, "rule": "nope"}, "no such rule"),
        ({**SILENCE, "for": "soon"}, "duration"),
        ({**SILENCE, "for": "365d"}, "90 days"),
        ({**SILENCE, "by": ""}, "who you are"),
    ):
        answer = await client.post("/silences", data=bad, headers=bearer)
        assert answer.status_code == 400 and why in answer.text
    assert (await client.post("/silences/99/expire", headers=bearer)).status_code == 404


async def test_without_an_admin_token_the_page_is_read_only(tmp_path: Path) -> None:
    site, store = _site(tmp_path)
    async with _client(make_app(site, Auth.fixed(None), SnapshotCollector())) as client:
        page = (await client.get("/")).text
        assert "set <code>web.admin_token</code>" in page
        answer = await client.post("/silences", data=SILENCE, headers={"Authorization": "Bearer x"})
        assert answer.status_code == 403 and "web.admin_token" in answer.text
    site.close()
    store.close()


async def test_the_read_token_guards_reading_but_not_metrics(tmp_path: Path) -> None:
    site, store = _site(tmp_path)
    async with _client(make_app(site, Auth.fixed(ADMIN, READ), SnapshotCollector())) as client:
        assert (await client.get("/")).status_code == 401
        assert (await client.get("/rules/keys")).status_code == 401
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (
            await client.get("/", headers={"Authorization": f"Bearer {READ}"})
        ).status_code == 200
        await _sign_in(client, READ)
        assert (await client.get("/")).status_code == 200
        refused = await client.post(
            "/silences", data=SILENCE, headers={"Authorization": f"Bearer {READ}"}
        )
        assert refused.status_code == 403
    site.close()
    store.close()


async def test_healthz_is_503_while_stale(tmp_path: Path) -> None:
    site, store = _site(tmp_path)
    site.health = lambda: (False, {"state": "starting"})
    async with _client(make_app(site, Auth.fixed(None), SnapshotCollector())) as client:
        answer = await client.get("/healthz")
        assert answer.status_code == 503 and answer.json()["status"] == "stale"
        assert "langdock_budget_daemon_build_info" in (await client.get("/metrics")).text
        assert (await client.get("/static/style.css")).status_code == 200
    site.close()
    store.close()


async def test_oversized_or_multipart_forms_are_refused_before_they_are_read(
    admin: tuple[httpx.AsyncClient, Store],
) -> None:
    client, store = admin
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    huge = await client.post(
        "/silences",
        content=b"a=" + b"x" * 20_000,
        headers={**bearer, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    multipart = await client.post("/login", files={"token": ("t", b"x" * 1000)})
    assert multipart.status_code == 415
    assert store.silences(NOW) == []


async def test_a_cookie_write_needs_its_mark_whatever_authorization_says(
    admin: tuple[httpx.AsyncClient, Store],
) -> None:
    client, store = admin
    await _sign_in(client)
    for header in ("Basic Zm9vOmJhcg==", "Bearer", "Token x"):
        answer = await client.post("/silences", data=SILENCE, headers={"Authorization": header})
        assert answer.status_code == 403, header
    assert store.silences(NOW) == []


async def test_every_answer_carries_the_security_headers_and_errors_stay_plain(
    tmp_path: Path,
) -> None:
    site, store = _site(tmp_path)

    def broken() -> None:
        raise RuntimeError("a bug")

    app = make_app(site, Auth.fixed(ADMIN), SnapshotCollector(), ("localhost", "127.0.0.1"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9464") as client:
        for path in ("/", "/nope", "/static/style.css", "/metrics"):
            answer = await client.get(path)
            assert answer.headers["x-content-type-options"] == "nosniff", path
            assert "default-src 'none'" in answer.headers["content-security-policy"], path
        assert (await client.get("/", headers={"Host": "evil.example"})).status_code == 400
        too_big = await client.post(
            "/silences/99999999999999999999999/expire", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert too_big.status_code == 404
        site.latest = broken  # type: ignore[assignment,method-assign]
        failed = await client.get("/")
        assert failed.status_code == 500 and "Traceback" not in failed.text
    site.close()
    store.close()


def test_names_show_bounded_and_without_bidi_tricks() -> None:
    from daemon.web.view import shown_text

    assert shown_text("prod-\u202eevil\u202c-web") == "prod-\ufffdevil\ufffd-web"
    assert len(shown_text("n" * 5000)) == 120
