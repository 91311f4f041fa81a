"""deploy/kubernetes/ agrees with the code (docs/OPERATIONS.md, "Two replicas (PostgreSQL)").

Every YAML document there is loaded; the ConfigMap's config.yaml goes through the daemon's own
`load_config`, with the Secret's keys written as files where the Deployment mounts them; the
ports, probes, command, mounts and replica count are checked against that config, and the
liveness probe's script is run against a loopback server answering 200, 503 and nothing.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
# stand-ins for the Secret's placeholders, valid where the config checks their form
FAKE = {
    "langdock_api_key": "sk-deploy-test-0c1d2e3f",
    "slack_webhook_url": "https://hooks.slack.com/services/T0/B0/deploytest",
    "pg_password": "pg-deploy-test-4b5a",
    "admin_token": "admin-deploy-test-6789abcdef",
}
SECRET_KEYS = ("api_key", "webhook_url", "token", "password", "admin_token", "read_token")


def documents() -> dict[str, dict[str, Any]]:
    """Every document of every file, by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert doc["kind"] not in found, f"{path.name}: a second {doc['kind']}"
            found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def kube() -> dict[str, dict[str, Any]]:
    return documents()


def container(kube: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = kube["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def mount_of(kube: dict[str, dict[str, Any]], kind: str) -> str:
    """Where the Deployment mounts the ConfigMap or the Secret."""
    spec = kube["Deployment"]["spec"]["template"]["spec"]
    name = kube[kind]["metadata"]["name"]
    field = {"ConfigMap": ("configMap", "name"), "Secret": ("secret", "secretName")}[kind]
    (volume,) = [v["name"] for v in spec["volumes"] if v.get(field[0], {}).get(field[1]) == name]
    (mount,) = [m for m in container(kube)["volumeMounts"] if m["name"] == volume]
    assert mount.get("readOnly") is True
    return str(mount["mountPath"]).rstrip("/")


@pytest.fixture(scope="module")
def config(kube: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The ConfigMap's config.yaml through `load_config`, the Secret's files in a tmp dir."""
    tmp = tmp_path_factory.mktemp("kube")
    secrets = tmp / "secrets"
    secrets.mkdir()
    assert sorted(kube["Secret"]["stringData"]) == sorted(FAKE)
    for key, value in FAKE.items():
        (secrets / key).write_text(value)
    text = kube["ConfigMap"]["data"]["config.yaml"]
    mounted = mount_of(kube, "Secret") + "/"
    assert mounted in text
    path = tmp / "config.yaml"
    path.write_text(text.replace(mounted, f"{secrets}/"))
    env = {name: f"value-of-{name}" for name in re.findall(r"\$\{(\w+)\}", text)}
    return load_config(path, env)


def test_every_file_is_listed_in_the_kustomization(kube: dict[str, dict[str, Any]]) -> None:
    listed = kube["Kustomization"]["resources"]
    assert sorted(listed) == sorted(
        p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert set(kube) == {
        "Kustomization",
        "Secret",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


def test_the_configmap_is_a_valid_postgresql_config(config: Config) -> None:
    assert config.state.url is not None and config.state.url.startswith("postgresql://")
    assert config.state.password is not None
    assert config.state.password.get_secret_value() == FAKE["pg_password"]
    assert config.api_key() == FAKE["langdock_api_key"]
    assert config.slack is not None and config.slack.webhook_url is not None
    assert config.web.admin_token is not None
    # the listener is not loopback, so the Host check lets probes and scrapes by pod IP in
    assert config.metrics.host not in ("127.0.0.1", "localhost", "::1")
    assert config.web.hosts(config.metrics.host) == ("*",)


def test_no_secret_in_the_configmap(kube: dict[str, dict[str, Any]]) -> None:
    assert set(kube["Secret"]["stringData"].values()) == {"REPLACE_ME"}  # placeholders only
    text = kube["ConfigMap"]["data"]["config.yaml"]
    for value in [*FAKE.values(), *kube["Secret"]["stringData"].values()]:
        assert value not in text
    raw = yaml.safe_load(text)
    for section in raw.values():
        if isinstance(section, dict):
            for key in SECRET_KEYS:
                value = section.get(key)
                assert value is None or re.fullmatch(r"\$\{\w+\}", str(value)), key
    user = raw["state"]["url"].split("//", 1)[1].split("@")[0]
    assert ":" not in user  # no password in the URL (the config refuses one too)


def test_the_deployment_runs_two_replicas_of_run_on_the_mounted_config(
    kube: dict[str, dict[str, Any]],
) -> None:
    deployment = kube["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    argv = [*container(kube).get("command", []), *container(kube).get("args", [])]
    assert argv[0] == "langdock-budget" and argv[-1] == "run"
    config_path = argv[argv.index("--config") + 1]
    assert config_path == mount_of(kube, "ConfigMap") + "/config.yaml"
    env = {e["name"]: e.get("value") for e in container(kube).get("env", [])}
    assert env.get("LANGDOCK_BUDGET_CONFIG") in (None, config_path)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        kube["Service"]["spec"]["selector"],
        kube["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert kube["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


def test_ports_and_probes_match_metrics_listen(
    kube: dict[str, dict[str, Any]], config: Config
) -> None:
    port = config.metrics.port
    (declared,) = container(kube)["ports"]
    assert declared["containerPort"] == port
    ready = container(kube)["readinessProbe"]["httpGet"]
    assert ready["path"] == "/healthz"
    assert ready["port"] in (port, declared["name"])
    live = container(kube)["livenessProbe"]["exec"]["command"]
    assert f"http://127.0.0.1:{port}/healthz" in live[-1]
    (service_port,) = kube["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in (port, declared["name"])
    for marks in (
        kube["Service"]["metadata"]["annotations"],
        kube["Deployment"]["spec"]["template"]["metadata"]["annotations"],
    ):
        assert marks["prometheus.io/scrape"] == "true"
        assert marks["prometheus.io/port"] == str(port)
        assert marks["prometheus.io/path"] == "/metrics"


def test_non_root_and_a_read_only_root(kube: dict[str, dict[str, Any]]) -> None:
    pod = kube["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001  # the Dockerfile's USER
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()
    own = container(kube)["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert "/tmp" in {m["mountPath"] for m in container(kube)["volumeMounts"]}


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[tuple[int, type[_Answer]]]:
    handler = type("Handler", (_Answer,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_liveness_passes_on_200_and_503_and_fails_without_an_answer(
    kube: dict[str, dict[str, Any]], config: Config, healthz: tuple[int, type[_Answer]]
) -> None:
    command = container(kube)["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    port, handler = healthz
    script = command[2].replace(f":{config.metrics.port}/", f":{port}/")
    for status in (200, 503):  # a follower or a stale leader answers: alive
        handler.status = status
        exec(compile(script, "livenessProbe", "exec"), {})
    dead = script.replace(f":{port}/", ":1/")  # nothing listens: the probe fails
    with pytest.raises(OSError):
        exec(compile(dead, "livenessProbe", "exec"), {})
