"""End to end in a real browser: headless Chromium against the real `langdock-budget run`
process and its status page on `metrics.listen`.

The daemon polls the loopback Langdock simulator (its default keys plus one whose name is a
script tag) and alerts to the fake Slack's webhook. Two budget rules: `tiny` (every key over
its limit from the first cycle) and `later` (nothing fires until a reload drops its limit).
The module's tests share that one daemon and one browser and run in file order:

- every budget bar carries its rule, scope and utilisation, equal to `/metrics`, and every
  budget series of those rules on `/metrics` has a bar;
- the hostile key name is shown as text: no dialog, no <script> element in the DOM;
- without signing in, nothing can be written: the form's button is disabled, and a POST
  without a cookie, with a wrong bearer token, or signed in but from a foreign origin is
  refused (403, saying why), and no silence is stored;
- signed in at /login, a silence made with the page's form is listed; after a reload that
  makes `later` fire for every key, Slack hears about the non-prod keys only and the page
  shows the prod alerts as silenced; expired from the page, the silence is gone;
- at a phone's width (390 px) no page scrolls sideways.

With ``LANGDOCK_BUDGET_SCREENSHOTS=<dir>`` the pages are saved there as PNGs (1280 px wide,
full height, and the overview at 390 px) for docs/. The test waits for states (cycles over
NOTIFY_SOCKET, page loads), never for time.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.langdock.sim_workspace import DEFAULT_KEYS, SimKey
from daemon.langdock.simulator import Simulator
from tests.fake_slack import FakeSlack
from tests.processes import LOCAL, Notifications, free_port
from tests.servers import binary

# Selenium is imported where it is used: every xdist worker collects this module, one runs it
# (importing selenium.webdriver costs each worker about 60 ms of CPU)
if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

# one daemon and one browser for the module (seconds to start): the module runs early
pytestmark = pytest.mark.long
ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-web-e2e-3e4d5c6b7a"
ADMIN = "web-e2e-admin-token-0123456789ab"  # 32 characters
HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE = SimKey("key_h0st1le", HOSTILE_NAME, 0.2)
KEYS = (*DEFAULT_KEYS, HOSTILE)
PROD = {k.id for k in KEYS if k.name.startswith("prod-")}  # what the silence's `prod-*` covers
NOT_PROD = {k.id for k in KEYS} - PROD
RULES = """\
rules:
  - {{name: tiny, kind: budget, each: api_key, window: 24h, limit_usd: 0.01}}
  - {{name: later, kind: budget, each: api_key, window: 24h, limit_usd: {later}}}
"""
SHOWN_RULES = {"tiny", "later"}
SILENCE = {"rule": "later", "member": "prod-*", "for": "1h", "by": "browser-test"}
WHY = "noisy in the test"
WIDE, PHONE = 1280, 390
WAIT = 15.0  # seconds for a page to load after a form's submit
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
)


# ------------------------------------------------------------------ the daemon and the fakes


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    base: str
    notify: Notifications
    rules: Path
    log: Path
    sim: Simulator
    slack: FakeSlack

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def reload(self, later: str) -> str:
        """Rewrite `later`'s limit, SIGHUP (which starts a cycle) and wait for that cycle."""
        self.rules.write_text(RULES.format(later=later))
        self.proc.send_signal(signal.SIGHUP)
        with _log_on_failure(self.log):
            self.notify.wait_for("STATUS=config reloaded")
            return self.notify.next_cycle()


@contextmanager
def _log_on_failure(log: Path) -> Iterator[None]:
    """A failed wait for the daemon says what the daemon logged last."""
    try:
        yield
    except AssertionError as exc:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise AssertionError(f"{exc}\nthe daemon's last log lines ({log}):\n{tail}") from None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("web-e2e")
    sim = Simulator(api_key=SECRET, keys=KEYS)
    sim.start()
    slack = FakeSlack().start()
    port = free_port()
    rules = tmp / "rules" / "budgets.yaml"
    rules.parent.mkdir()
    rules.write_text(RULES.format(later="100000"))
    (tmp / "admin.token").write_text(ADMIN + "\n")
    config = tmp / "config.yaml"
    config.write_text(
        f"langdock: {{base_url: '{sim.base_url}', api_key: '${{E2E_KEY}}',"
        " max_requests_per_minute: 250}\n"
        "timezone: Europe/Berlin\npoll: {interval: 1h, backfill: 2d}\n"
        f"state: {{path: state.db}}\nmetrics: {{listen: '127.0.0.1:{port}'}}\n"
        "web: {admin_token_file: admin.token}\n"
        f"slack: {{webhook_url: '{slack.url}/services/T/B/web-e2e'}}\n"
        "rule_files: [rules/*.yaml]\n"
    )
    notify = Notifications(tmp / "notify.sock")
    log = tmp / "daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "--config", str(config), "run"],
        cwd=ROOT,
        env={**os.environ, "NOTIFY_SOCKET": str(notify.path), "E2E_KEY": SECRET},
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )
    try:
        with _log_on_failure(log):
            notify.wait_for("READY=1")
            notify.next_cycle()
            # The first cycle fills the budget windows; the rest of the 2d backfill is fetched in
            # the background, and its completion starts a cycle. Wait for that one too: from
            # then on only the test's reloads start cycles (the page and /metrics stay put).
            notify.next_cycle()
            health = LOCAL.get(f"http://127.0.0.1:{port}/healthz").json()
            assert health["state"] == "ready", f"after the backfill's cycle /healthz says {health}"
        yield Daemon(proc, f"http://127.0.0.1:{port}", notify, rules, log, sim, slack)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == 0, f"the daemon exited {code} on SIGTERM; log: {log}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.sock.close()
        slack.stop()
        sim.stop()


# ------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary("chromium", "chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={WIDE},900")
    options.unhandled_prompt_behavior = "ignore"  # an alert() stays open for the test to see
    # both paths given: Selenium Manager is never asked (it would go to the network)
    service = Service(binary("chromedriver", "chromium-driver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _viewport(driver: WebDriver, width: int, height: int = 900, *, mobile: bool = False) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def _reset_viewport(driver: WebDriver) -> None:
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _screenshot(driver: WebDriver, name: str, width: int, *, mobile: bool = False) -> None:
    """The page at ``width`` CSS px, full height, into $LANGDOCK_BUDGET_SCREENSHOTS/name."""
    folder = os.environ.get("LANGDOCK_BUDGET_SCREENSHOTS")
    if not folder:
        return
    try:
        _viewport(driver, width, 100, mobile=mobile)  # short: scrollHeight is the content's
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        _viewport(driver, width, height, mobile=mobile)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        _reset_viewport(driver)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / name).write_bytes(base64.b64decode(shot["data"]))


OVERFLOW = """\
const width = window.innerWidth;
const wide = [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > width + 1)
  .slice(0, 5)
  .map(e => `<${e.tagName.toLowerCase()} class="${e.className}"> right edge at `
            + `${Math.round(e.getBoundingClientRect().right)}px`);
return [document.documentElement.scrollWidth, width, wide];
"""


def _assert_no_sideways_scroll(driver: WebDriver, page: str) -> None:
    scroll_width, inner_width, wide = driver.execute_script(OVERFLOW)
    assert inner_width == PHONE, f"{page}: the phone viewport is {inner_width}px, not {PHONE}px"
    assert scroll_width <= inner_width + 1, (
        f"{page} scrolls sideways at {PHONE}px: the document is {scroll_width}px wide;"
        f" wider than the viewport: {wide}"
    )


def _submit(driver: WebDriver, button: WebElement) -> None:
    """Click a form's submit button and wait for the page it leads to."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    button.click()
    WebDriverWait(driver, WAIT).until(expected_conditions.staleness_of(button))
    WebDriverWait(driver, WAIT).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


BARS = """\
return [...document.querySelectorAll('.budget')].map(e => ({
  rule: e.getAttribute('data-rule'),
  scope: e.getAttribute('data-scope'),
  utilization: e.getAttribute('data-utilization'),
  member: (e.querySelector('.member') || {}).textContent,
  silenced: e.querySelector('.badge.silenced') !== null,
  html: e.outerHTML.slice(0, 160),
}));
"""


def _bars(driver: WebDriver) -> dict[tuple[str, str], dict[str, Any]]:
    """The page's budget bars by (rule, scope); each must carry its data attributes."""
    bars: dict[tuple[str, str], dict[str, Any]] = {}
    for shown in driver.execute_script(BARS):
        for attribute in ("rule", "scope", "utilization"):
            assert shown[attribute], f"a .budget without data-{attribute}: {shown['html']}"
        key = (shown["rule"], shown["scope"])
        assert key not in bars, f"two bars for rule {key[0]}, scope {key[1]}"
        bars[key] = shown
    return bars


def _rows(driver: WebDriver, selector: str) -> list[dict[str, Any]]:
    """Table rows: their data attributes and cell texts."""
    return list(
        driver.execute_script(
            """return [...document.querySelectorAll(arguments[0])].map(r => ({
                 data: {...r.dataset},
                 cells: [...r.cells].map(c => c.textContent.trim()),
                 silenced: r.querySelector('.badge.silenced') !== null,
               }));""",
            selector,
        )
    )


def _utilization(daemon: Daemon) -> dict[tuple[str, str], float]:
    """`langdock_budget_utilization_ratio` on /metrics by (rule, scope), for the shown rules."""
    text = LOCAL.get(daemon.url("/metrics")).raise_for_status().text
    ratios: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "langdock_budget_utilization_ratio":
            continue
        for sample in family.samples:
            if sample.labels["rule"] in SHOWN_RULES:
                ratios[(sample.labels["rule"], sample.labels["scope"])] = sample.value
    return ratios


ALERT = re.compile(r"reached: (?P<rule>\S+).*? — .*?\((?P<key>key_[0-9a-z]+)\)")


def _alerted(texts: list[str]) -> set[tuple[str, str]]:
    """(rule, key id) of every budget alert in Slack texts, one per message or several in a
    grouped one (a member's label ends in its id: ``name (key_...)``)."""
    return {(m["rule"], m["key"]) for text in texts for m in ALERT.finditer(text)}


# ------------------------------------------------------------------ the tests


def test_every_budget_bar_is_its_metric(daemon: Daemon, browser: WebDriver) -> None:
    ratios = _utilization(daemon)
    browser.get(daemon.url("/"))
    bars = _bars(browser)
    assert _utilization(daemon) == ratios, "a cycle ran while the test read the page (a race)"
    expected = {(rule, key.id) for rule in SHOWN_RULES for key in KEYS}
    assert set(ratios) == expected, (
        f"/metrics budget series differ from one per rule and key: "
        f"missing {sorted(expected - set(ratios))}, unexpected {sorted(set(ratios) - expected)}"
    )
    missing = sorted(set(ratios) - set(bars))
    assert not missing, f"budget series on /metrics with no bar on the overview: {missing}"
    for (rule, scope), shown in sorted(bars.items()):
        assert (rule, scope) in ratios, f"bar {rule}/{scope} has no utilization series on /metrics"
        page, metric = Decimal(shown["utilization"]), ratios[(rule, scope)]
        assert abs(page - Decimal(metric)) <= Decimal("1e-9") * abs(Decimal(metric)), (
            f"bar {rule}/{scope}: data-utilization {page} but"
            f' langdock_budget_utilization_ratio{{rule="{rule}",scope="{scope}"}} {metric}'
        )


def test_a_hostile_key_name_is_only_text(daemon: Daemon, browser: WebDriver) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    label = f"{HOSTILE_NAME} ({HOSTILE.id})"
    for path in ("/", "/rules/tiny", f"/rules/tiny/{HOSTILE.id}"):
        browser.get(daemon.url(path))
        try:
            dialog = browser.switch_to.alert
        except NoAlertPresentException:
            pass
        else:
            text = dialog.text
            dialog.dismiss()
            pytest.fail(f"{path}: a dialog opened ({text!r}): the key name ran as a script")
        scripts = [
            e.get_attribute("outerHTML") for e in browser.find_elements(By.TAG_NAME, "script")
        ]
        assert not scripts, f"{path}: the DOM has <script> elements: {scripts}"
        visible = browser.find_element(By.TAG_NAME, "body").text
        assert label in visible, f"{path}: the text {label!r} is not shown"
    bar = _bars(browser)[("tiny", HOSTILE.id)]
    assert bar["member"] == label, f"bar tiny/{HOSTILE.id} names the key {bar['member']!r}"


def _refusal(answer: httpx.Response) -> str:
    match = re.search(r'id="refusal">([^<]*)<', answer.text)
    return match.group(1) if match else answer.text[:300]


def test_nothing_is_written_without_signing_in(daemon: Daemon, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(daemon.url("/"))
    button = browser.find_element(By.CSS_SELECTOR, "#silence-form button[type=submit]")
    assert not button.is_enabled(), "the silence form's button is enabled before signing in"

    form = {**SILENCE, "comment": WHY}
    cases: list[tuple[str, dict[str, str], str]] = [
        ("no cookie, no token", {}, "sign in with web.admin_token first"),
        ("a wrong bearer token", {"Authorization": f"Bearer {'x' * 32}"}, "bearer token is not"),
    ]
    for what, headers, why in cases:
        answer = LOCAL.post(daemon.url("/silences"), data=form, headers=headers)
        assert answer.status_code == 403, f"{what}: POST /silences answered {answer.status_code}"
        assert why in _refusal(answer), f"{what}: refused with {_refusal(answer)!r}"

    with httpx.Client(base_url=daemon.base) as client:
        signed_in = client.post("/login", data={"token": ADMIN})
        assert signed_in.status_code == 303 and client.cookies, "signing in with httpx failed"
        mark = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/").text)
        assert mark is not None, "a signed-in page has no CSRF mark in the silence form"
        answer = client.post(
            "/silences",
            data={**form, "csrf": mark.group(1)},
            headers={"Origin": "https://evil.example"},
        )
    assert answer.status_code == 403, (
        f"a foreign Origin: POST /silences answered {answer.status_code}"
    )
    assert "another site" in _refusal(answer), (
        f"a foreign Origin: refused with {_refusal(answer)!r}"
    )

    browser.get(daemon.url("/"))
    stored = _rows(browser, "tr.silence")
    assert not stored, f"a refused write stored a silence: {stored}"
    assert "No active silence." in browser.find_element(By.ID, "silences").text


def test_a_silence_from_the_page_quiets_slack(daemon: Daemon, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # sign in with the admin token
    browser.delete_all_cookies()
    browser.get(daemon.url("/login"))
    browser.find_element(By.NAME, "token").send_keys(ADMIN)
    _submit(browser, browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]"))
    assert browser.find_elements(By.CSS_SELECTOR, "form[action='/logout']"), (
        f"not signed in after /login: {browser.current_url}: "
        f"{browser.find_element(By.TAG_NAME, 'body').text[:300]!r}"
    )

    # the "New silence" form
    form = browser.find_element(By.ID, "silence-form")
    Select(form.find_element(By.NAME, "rule")).select_by_visible_text(SILENCE["rule"])
    for field, value in (*((k, v) for k, v in SILENCE.items() if k != "rule"), ("comment", WHY)):
        box = form.find_element(By.NAME, field)
        box.clear()
        box.send_keys(value)
    button = form.find_element(By.CSS_SELECTOR, "button[type=submit]")
    assert button.is_enabled(), "the silence form's button is disabled after signing in"
    _submit(browser, button)
    listed = _rows(browser, "tr.silence")
    assert len(listed) == 1, f"after the form, silences listed: {listed}"
    silence = listed[0]
    number, rule, member, _until, by, why = silence["cells"][:6]
    assert (rule, member, by, why) == ("later", "prod-*", "browser-test", WHY), (
        f"the silence is listed as rule {rule!r}, glob {member!r}, by {by!r}, why {why!r}"
    )

    # `later` now fires for every key: Slack hears of the non-prod keys only
    before = len(daemon.slack.posts())
    status = daemon.reload(later="0.01")
    firing = f"{len(SHOWN_RULES) * len(KEYS)} firing"
    assert firing in status, f"after the reload's cycle, expected {firing}: {status!r}"
    texts = [r.body.get("text", "") for r in daemon.slack.posts()[before:]]
    later = {key for rule, key in _alerted(texts) if rule == "later"}
    assert later & PROD == set(), f"Slack got `later` alerts of silenced prod keys: {later & PROD}"
    assert later == NOT_PROD, (
        f"Slack got `later` alerts for {sorted(later)}, expected {sorted(NOT_PROD)}; texts: {texts}"
    )

    # the page shows the prod alerts as silenced (the alert rows and the bars)
    browser.get(daemon.url("/"))
    alerts = {r["data"]["scope"]: r for r in _rows(browser, "tr.alert[data-rule='later']")}
    assert set(alerts) == PROD | NOT_PROD, f"`later` alert rows for {sorted(alerts)}"
    for scope, row in sorted(alerts.items()):
        assert row["silenced"] == (scope in PROD), (
            f"alert later/{scope} shows silenced={row['silenced']}: {row['cells']}"
        )
    bars = _bars(browser)
    for scope in sorted(PROD | NOT_PROD):
        shown = bars[("later", scope)]["silenced"]
        assert shown == (scope in PROD), f"bar later/{scope} shows silenced={shown}"

    _screenshot(browser, "status-page.png", WIDE)
    _screenshot(browser, "status-page-phone.png", PHONE, mobile=True)
    try:
        _viewport(browser, PHONE, mobile=True)
        _assert_no_sideways_scroll(browser, "the overview")
    finally:
        _reset_viewport(browser)
    browser.get(daemon.url("/rules/tiny/key_4f1a9c"))
    _screenshot(browser, "budget-member.png", WIDE)
    browser.get(daemon.url("/rules/tiny"))
    _screenshot(browser, "rule.png", WIDE)

    # expire it from the page
    browser.get(daemon.url("/"))
    expire = browser.find_element(
        By.CSS_SELECTOR, f"tr.silence[data-id='{number}'] form[action$='/expire'] button"
    )
    _submit(browser, expire)
    left = _rows(browser, "tr.silence")
    assert not left, f"silences still listed after expiring #{number}: {left}"


@pytest.mark.parametrize("path", ["/", "/rules/tiny", "/rules/tiny/key_4f1a9c", "/login"])
def test_no_page_scrolls_sideways_on_a_phone(daemon: Daemon, browser: WebDriver, path: str) -> None:
    try:
        _viewport(browser, PHONE, mobile=True)
        browser.get(daemon.url(path))
        _assert_no_sideways_scroll(browser, path)
    finally:
        _reset_viewport(browser)
