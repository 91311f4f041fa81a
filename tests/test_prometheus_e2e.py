"""End to end, issue #16: the real `langdock-budget run` process scraped by a real Prometheus.

The daemon runs against the loopback simulator (one export file that does not parse and one
row out of bounds, so the error and rejection counters have data) with an 8-day backfill;
Prometheus (`deploy/prometheus/prometheus.yml` with its target, rule files and intervals
replaced) scrapes it every second and evaluates the rules of `rules export-prometheus` and
the health rules of docs/OPERATIONS.md. Through Prometheus' HTTP API the test checks:

- every budget's utilisation equals the daemon's own `/metrics` and spend / limit;
- every exported budget alert fires for exactly the scopes the daemon fires for: the keys
  over their limit, and (after a reload puts the month's limit between the workspace's spend
  and forecast) the forecast alert;
- every query of dashboards/langdock-budget.json (panels and template variables) and every
  PromQL example of docs/OPERATIONS.md returns data: a renamed metric or label fails here,
  naming the panel.

The test waits for states (the daemon's cycles and reload over NOTIFY_SOCKET, Prometheus' API
with deadlines), never for time.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.langdock.simulator import Simulator
from tests.fake_slack import FakeSlack
from tests.processes import LOCAL, Notifications, free_port
from tests.servers import binary

T = TypeVar("T")
# one daemon and one Prometheus for the module (`stack`, seconds to start): it runs early
pytestmark = pytest.mark.long
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "langdock-budget.json"
PROMETHEUS_EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
SECRET = "sk-prom-e2e-5d1c9b3a7e"
DEADLINE = 30.0  # seconds for each state the test waits for
KEY_RULE = "key-24h"  # every key is over its tiny limit
FORECAST_RULE = "workspace-monthly"  # its limit is set between spend and forecast by a reload
RULES = f"""\
rules:
  - {{name: {KEY_RULE}, kind: budget, each: api_key, window: 24h, limit_usd: 0.01}}
  - {{name: {FORECAST_RULE}, kind: budget, window: month, limit_usd: {{limit}},
      thresholds: [50, 100], severity: {{50: info, 100: critical}}, forecast: true}}
  - {{name: requests-daily, kind: budget, window: day, limit_requests: 100000000, forecast: true}}
  - {{name: tokens-daily, kind: budget, each: model, window: day, limit_tokens: 10000000000}}
  # anomaly rules of every unit the dashboard charts (min_delta: the simulator's noise is quiet)
  - {{name: cost-spike, kind: anomaly, each: model, metric: cost_usd, baseline: 7d,
      seasonality: none}}
  - {{name: model-errors, kind: anomaly, each: model, metric: error_rate, baseline: 7d,
      seasonality: none, min_delta: 0.05}}
  - {{name: model-latency, kind: anomaly, each: model, metric: response_time_ms, baseline: 7d,
      seasonality: none, min_delta: 500}}
"""
# Grafana's built-in interval variables, as a dashboard over the last hour would have them
BUILTIN = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}


# ------------------------------------------------------------------ the dashboard's queries


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # a collapsed row holds its panels


def panel_targets() -> list[Any]:
    return [
        pytest.param(panel["title"], target["expr"], id=f"{panel['title']} [{target['refId']}]")
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def variable_values() -> dict[str, str]:
    """What each dashboard variable stands for in a query: "All" (``.*``) or its default."""
    values = dict(BUILTIN)
    for var in dashboard()["templating"]["list"]:
        current = var.get("current", {}).get("value")
        if var.get("includeAll") and current in ("$__all", ["$__all"]):
            values[var["name"]] = var["allValue"]
        elif isinstance(current, str):
            values[var["name"]] = current
    return values


def interpolate(expr: str, values: dict[str, str]) -> str:
    """``$name``, ``${name}`` and ``${name:format}`` replaced as Grafana would; ``$1`` (a
    label_replace group) is left alone. A variable the dashboard does not define fails."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():
            return match.group(0)
        assert name in values, f"${name} is not a variable of the dashboard"
        return values[name]

    return re.sub(r"\$(?:\{(\w+)(?::[^}]*)?\}|(\w+))", one, expr)


# ------------------------------------------------------------------ the servers


def wait(what: str, probe: Callable[[], T | None], logs: Callable[[], str]) -> T:
    """Call ``probe`` until it returns something (not None); fail after `DEADLINE`."""
    deadline = time.monotonic() + DEADLINE
    while (found := probe()) is None:
        assert time.monotonic() < deadline, f"waited {DEADLINE:.0f} s for {what}\n{logs()}"
        time.sleep(0.1)  # between probes of an HTTP API, not a wait for time to pass
    return found


def tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"{path.name} (tail):\n" + "\n".join(text.splitlines()[-lines:])


def unix_time(rfc3339: str) -> float:
    """Prometheus' timestamps (nanoseconds, ``Z``) as seconds since the epoch."""
    whole, _, fraction = rfc3339.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


@dataclass
class Stack:
    daemon: str  # base URL of the daemon's /metrics
    prometheus: str  # base URL of Prometheus
    exported: dict[str, Any]  # the rule file of `rules export-prometheus`
    logs: Callable[[], str]

    def daemon_samples(self) -> Samples:
        return parse(LOCAL.get(f"{self.daemon}/metrics", timeout=10).text)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = LOCAL.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert body.get("status") == "success", f"{expr}: {body.get('error', body)}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def rule_groups(self) -> list[dict[str, Any]]:
        body = LOCAL.get(f"{self.prometheus}/api/v1/rules", timeout=10).json()
        groups: list[dict[str, Any]] = body["data"]["groups"]
        return groups


def operations_blocks(language: str) -> list[str]:
    """The ```language blocks of docs/OPERATIONS.md's "Prometheus" section."""
    section = OPERATIONS.read_text().split("\n## Prometheus\n", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    return blocks


def promql_examples() -> list[Any]:
    """The queries of the section's promql blocks (split at blank lines), each named by its
    comment line."""
    params = []
    for block in operations_blocks("promql"):
        for example in block.strip().split("\n\n"):
            lines = example.splitlines()
            comment = next((line[1:].strip() for line in lines if line.startswith("#")), "")
            query = "\n".join(line for line in lines if not line.startswith("#"))
            params.append(pytest.param(query, id=comment[:60] or query.splitlines()[0]))
    return params


def health_rules() -> str:
    """The health rule file of docs/OPERATIONS.md's "Prometheus" section (a yaml block)."""
    found = [b for b in operations_blocks("yaml") if b.startswith("groups:")]
    assert len(found) == 1, "docs/OPERATIONS.md, Prometheus: one yaml block of health rules"
    return found[0]


def prometheus_config(target: str, rule_files: list[Path]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the test's target, rule files, 1 s intervals."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(path) for path in rule_files]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "langdock-budget"]
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [target]}])
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = binary("prometheus", "prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-e2e")
    sim = Simulator(api_key=SECRET)
    # the first download's file misses a column (a fetch error), the second has a row whose
    # cost is out of bounds (a rejected row); both are fetched again later
    sim.download_faults.extend(["missing_column", "poison"])
    sim.start()
    slack = FakeSlack().start()
    procs: list[subprocess.Popen[bytes]] = []
    closing: list[Callable[[], None]] = [sim.stop, slack.stop]
    daemon_log, prometheus_log = tmp / "daemon.log", tmp / "prometheus.log"

    def logs() -> str:
        return f"{tail(daemon_log)}\n{tail(prometheus_log)}"

    try:
        port = free_port()
        config = tmp / "config.yaml"

        def write_config(workspace_limit: str) -> None:
            # 8 days of history: a week for the forecast's hour-of-week profile (whatever the
            # day of the month) and for the anomaly baselines
            config.write_text(
                f"langdock: {{base_url: '{sim.base_url}', api_key: '${{E2E_KEY}}',"
                " max_requests_per_minute: 250, backfill_max_requests_per_minute: 10000}\n"
                "timezone: Europe/Berlin\npoll: {interval: 10m, backfill: 8d}\n"
                f"state: {{path: state.db}}\nmetrics: {{listen: '127.0.0.1:{port}'}}\n"
                "slack: {webhook_url: '${E2E_SLACK}'}\n" + RULES.replace("{limit}", workspace_limit)
            )

        write_config("1000000")
        env = {
            **os.environ,
            "E2E_KEY": SECRET,
            "E2E_SLACK": f"{slack.url}/services/T/B/e2e",
            "LANGDOCK_BUDGET_LOG_FORMAT": "json",
        }
        cli = [sys.executable, "-m", "daemon.cli", "--config", str(config)]
        # the exported rules name no limit: the reload below leaves them as they are
        exported_text = subprocess.run(
            [*cli, "rules", "export-prometheus"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        exported_file = tmp / "langdock-budget.yml"
        exported_file.write_text(exported_text)
        health_file = tmp / "langdock-budget-health.yml"
        health_file.write_text(health_rules())
        prom_port = free_port()
        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(
            yaml.safe_dump(prometheus_config(f"127.0.0.1:{port}", [exported_file, health_file]))
        )
        # Prometheus first: its first scrape comes about 5 s after its start, while the
        # daemon fills its history
        with prometheus_log.open("ab") as err:
            procs.append(
                subprocess.Popen(
                    [
                        prometheus,
                        f"--config.file={prom_config}",
                        f"--storage.tsdb.path={tmp / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    cwd=tmp,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
        stack = Stack(
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{prom_port}",
            yaml.safe_load(exported_text),
            logs,
        )

        # a silence on one key: its alert fires, Slack is not told, langdock_alert_silenced
        silence = ["--rule", KEY_RULE, "--member", "staging", "--for", "1h", "--reason", "e2e"]
        subprocess.run(
            [*cli, "silence", "add", *silence],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        notify = Notifications(tmp / "notify.sock", DEADLINE, logs)
        closing.append(notify.close)
        with daemon_log.open("ab") as err:
            procs.append(
                subprocess.Popen(
                    [*cli, "run"],
                    cwd=ROOT,
                    env={**env, "NOTIFY_SOCKET": str(notify.path)},
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
        # cycle 1 stores the backfill a day per call; the background then fetches it hour by
        # hour and, done, starts cycle 2: every rule ready, and no poll for 10 minutes
        notify.wait_for("STATUS=cycle 2")
        # the month limit between the workspace's spend and its forecast: after the reload,
        # cycle 3 fires the forecast alert
        daemon = stack.daemon_samples()
        spend, forecast = (
            next(v for lb, v in daemon[name] if lb["rule"] == FORECAST_RULE)
            for name in ("langdock_budget_spend_usd", "langdock_budget_forecast_usd")
        )
        assert forecast > spend, f"{FORECAST_RULE}: forecast {forecast}, spend {spend}"
        write_config(repr((spend + forecast) / 2))
        procs[1].send_signal(signal.SIGHUP)
        notify.wait_for("STATUS=config reloaded")
        notify.wait_for("STATUS=cycle 3")

        first_scrape: list[float] = []  # when the last cycle's series were first scraped

        def settled() -> bool | None:
            """Prometheus has scraped the last cycle's series twice (a rate or a delta over
            the last hour has two samples of a series new in it) and evaluated every rule
            since."""
            for proc, name in zip(procs, ("Prometheus", "the daemon"), strict=True):
                assert proc.poll() is None, f"{name} exited ({proc.returncode})\n{logs()}"
            try:
                scraped = stack.query(
                    "timestamp(langdock_polls_total) and langdock_polls_total == 3"
                )
            except httpx.TransportError:
                return None  # not listening yet
            if not scraped:
                return None
            since = float(scraped[0]["value"][1])
            if not first_scrape:
                first_scrape.append(since)
            if since == first_scrape[0]:
                return None  # the first scrape of them: the next one comes within a second
            rules = [rule for group in stack.rule_groups() for rule in group["rules"]]
            evaluated = all(
                r["health"] == "ok" and unix_time(r["lastEvaluation"]) > since for r in rules
            )
            return True if rules and evaluated else None

        wait(
            "Prometheus to scrape the daemon's last cycle twice, then evaluate the rules",
            settled,
            logs,
        )
        yield stack
    finally:
        for proc in reversed(procs):
            stop(proc)
        for close in reversed(closing):
            close()


# ------------------------------------------------------------------ the checks


def test_rule_files_load(stack: Stack) -> None:
    """The exported budget alerts and the docs' health rules load and evaluate cleanly."""
    groups = {g["file"].rsplit("/", 1)[-1]: g for g in stack.rule_groups()}
    assert sorted(groups) == ["langdock-budget-health.yml", "langdock-budget.yml"]
    exported = [r["alert"] for r in stack.exported["groups"][0]["rules"]]
    loaded = groups["langdock-budget.yml"]["rules"]
    assert [r["name"] for r in loaded] == exported
    # thresholds: 1 + 2 + 1 + 1 of the four budgets, and the forecasts of two of them
    assert len(exported) == 7
    for rule in (r for g in groups.values() for r in g["rules"]):
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"


def test_utilization_matches_the_daemon(stack: Stack) -> None:
    """Every budget's utilisation in Prometheus equals the daemon's `/metrics`, and equals
    its spend (or requests, tokens) divided by its limit."""

    def settled() -> Samples | None:  # the daemon's series as Prometheus last scraped them
        daemon = stack.daemon_samples()
        (polls,) = stack.query("langdock_polls_total")
        return daemon if float(polls["value"][1]) == daemon["langdock_polls_total"][0][1] else None

    daemon = wait("Prometheus to have the daemon's last cycle", settled, stack.logs)

    def by_scope(name: str) -> dict[tuple[str, str], float]:
        return {(lb["rule"], lb["scope"]): v for lb, v in daemon.get(name, [])}

    published = by_scope("langdock_budget_utilization_ratio")
    scraped = {
        (s["metric"]["rule"], s["metric"]["scope"]): float(s["value"][1])
        for s in stack.query("langdock_budget_utilization_ratio")
    }
    assert scraped == published
    assert {rule for rule, _ in published} == {
        KEY_RULE,
        FORECAST_RULE,
        "requests-daily",
        "tokens-daily",
    }
    assert sum(rule == KEY_RULE for rule, _ in published) == 5  # the simulator's keys
    for unit, used in (("usd", "spend"), ("requests", "used"), ("tokens", "used")):
        spend = by_scope(f"langdock_budget_{used}_{unit}")
        limit = by_scope(f"langdock_budget_limit_{unit}")
        assert spend.keys() == limit.keys()
        for scope, value in spend.items():
            assert math.isclose(published.pop(scope), value / limit[scope], rel_tol=1e-9), scope
    assert not published, f"utilisation without spend and limit: {published}"


def test_exported_alerts_fire_like_the_daemon(stack: Stack) -> None:
    """Each alert of `rules export-prometheus` fires for the same scopes as the daemon's own
    alert of that rule and threshold (the rules have no `for`): the keys over budget, and
    the workspace's month on track to pass its limit."""
    daemon = stack.daemon_samples()
    own: dict[tuple[str, str], set[str]] = {}
    for labels, _ in daemon.get("langdock_alert_firing", []):
        own.setdefault((labels["rule"], labels["condition"]), set()).add(labels["scope"])
    for rule in stack.exported["groups"][0]["rules"]:
        labels = rule["labels"]
        firing = {
            s["metric"]["scope"]
            for s in stack.query(f'ALERTS{{alertname="{rule["alert"]}", alertstate="firing"}}')
        }
        expected = own.get((labels["rule"], labels["threshold"]), set())
        assert firing == expected, f"{rule['alert']}: Prometheus {firing}, daemon {expected}"
    over = {s["metric"]["scope"] for s in stack.query(f'ALERTS{{rule="{KEY_RULE}"}}')}
    assert len(over) == 5 and all(scope.startswith("key_") for scope in over)
    forecast = stack.query(f'ALERTS{{rule="{FORECAST_RULE}", threshold="forecast"}}')
    assert [(s["metric"]["alertstate"], s["metric"]["scope"]) for s in forecast] == [
        ("firing", "workspace")
    ]


@pytest.mark.parametrize(("panel", "expr"), panel_targets())
def test_dashboard_panel_has_data(stack: Stack, panel: str, expr: str) -> None:
    query = interpolate(expr, variable_values())
    assert stack.query(query), (
        f"panel {panel!r} of dashboards/langdock-budget.json: no data for\n{query}\n"
        "(a metric or label renamed? docs/METRICS.md lists what the daemon serves)"
    )


@pytest.mark.parametrize("query", promql_examples())
def test_operations_promql_example_has_data(stack: Stack, query: str) -> None:
    assert stack.query(query), f"docs/OPERATIONS.md, Prometheus: no data for\n{query}"


@pytest.mark.parametrize(
    "variable",
    [
        pytest.param(var, id=var["name"])
        for var in dashboard()["templating"]["list"]
        if var["type"] == "query"
    ],
)
def test_dashboard_variable_has_values(stack: Stack, variable: dict[str, Any]) -> None:
    """A query variable lists something, and its default (when not "All") is among it."""
    query = variable["definition"]
    if match := re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query):
        metric, label = match.groups()
        answer = LOCAL.get(
            f"{stack.prometheus}/api/v1/series", params={"match[]": metric}, timeout=10
        ).json()
        values = {series[label] for series in answer["data"] if label in series}
    elif match := re.fullmatch(r"query_result\((.+)\)", query):
        # Grafana's text of each result, then the variable's regex (named groups text, value)
        lines = []
        for s in stack.query(match.group(1)):
            labels = {k: v for k, v in s["metric"].items() if k != "__name__"}
            pairs = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{s['metric'].get('__name__', '')}{{{pairs}}} {s['value'][1]}")
        regex = re.compile(variable["regex"].strip("/").replace("(?<", "(?P<"))
        values = {m.group("value") for line in lines if (m := regex.search(line))}
    else:
        pytest.fail(f"variable {variable['name']}: unknown query {query}")
    assert values, f"variable {variable['name']}: {query} lists nothing"
    current = variable.get("current", {}).get("value")
    if isinstance(current, str) and current != "$__all":
        assert current in values, f"variable {variable['name']}: default {current} not in {values}"


def test_dashboard_is_importable() -> None:
    """The shape Grafana 10+ imports: the datasource input and variable, every panel and
    target on ``${datasource}``, unique panel ids, panels within the 24-column grid."""
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    panels = list(all_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == source, var["name"]
