"""Two real `run` processes on one PostgreSQL store (docs/OPERATIONS.md, "Two replicas"):
one leads, the other serves; the leader dies (SIGKILL while Slack holds an answer), freezes
(SIGSTOP) or loses the database (a partition); the other takes over within 30 s and every
alert reaches the fake Slack exactly once.

Progress is read from each process's systemd notifications (READY, STATUS=leading/following,
STATUS after each cycle): the tests wait for events, never for time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.langdock.simulator import Simulator
from tests.fake_slack import Answer, FakeSlack
from tests.postgres import PASSWORD, PostgresServer
from tests.processes import LOCAL, Notifications, free_port
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.long  # each test runs two daemons for seconds

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-failover-5e4d3c2b1a09"
TOKEN = "xoxb-test-token"
RULE = "- {name: tiny, kind: budget, each: api_key, window: 24h, limit_usd: 0.01}\n"
KEYS = 5  # the simulator's keys: one alert each
TAKEOVER = 30.0  # seconds a follower may take to lead after the leader's end


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    notify: Notifications
    port: int
    log: Path

    def leads_from_the_start(self) -> bool:
        """It took the lease before it was ready (the STATUS came before READY)."""
        return any(m.startswith("STATUS=leading") for m in self.notify.seen)

    def metric(self, name: str) -> float | None:
        text = LOCAL.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def health(self) -> dict[str, object]:
        body: dict[str, object] = LOCAL.get(
            f"http://127.0.0.1:{self.port}/healthz", timeout=10
        ).json()
        return body


@pytest.fixture
def fakes() -> Iterator[tuple[Simulator, FakeSlack]]:
    sim = Simulator(api_key=SECRET)
    sim.start()
    slack = FakeSlack(token=TOKEN, clock=lambda: datetime.now(UTC)).start()
    yield sim, slack
    slack.stop()
    sim.stop()


class Cluster:
    """Replicas of one configuration, each in a directory of its own."""

    def __init__(self, root: Path, sim: Simulator, slack: FakeSlack, url: str) -> None:
        self.root, self.sim, self.slack, self.url = root, sim, slack, url
        (root / "rules").mkdir()
        (root / "rules" / "tiny.yaml").write_text(RULE)
        self.replicas: list[Replica] = []

    def start(self, name: str, url: str | None = None) -> Replica:
        home = self.root / name
        home.mkdir()
        port = free_port()
        (home / "config.yaml").write_text(
            f"langdock: {{base_url: '{self.sim.base_url}', api_key: '${{E2E_KEY}}',"
            " max_requests_per_minute: 250}\n"
            "poll: {interval: 10s, backfill: 2h}\n"
            f"state: {{url: '{url or self.url}', password: '${{PGPASSWORD}}', lease_ttl: 3s}}\n"
            f"metrics: {{listen: '127.0.0.1:{port}'}}\n"
            f"slack: {{token: '${{SLACK_TOKEN}}', channel: '#llm-costs',"
            f" api_url: '{self.slack.url}/api/', recheck_after: 2s}}\n"
            f"rule_files: ['{self.root}/rules/*.yaml']\n"
        )
        log = home / "daemon.log"
        notify = Notifications(home / "notify.sock", logs=log.read_text)
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify.path),
            "E2E_KEY": SECRET,
            "PGPASSWORD": PASSWORD,
            "SLACK_TOKEN": TOKEN,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--config", str(home / "config.yaml"), "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
        )
        replica = Replica(name, proc, notify, port, log)
        self.replicas.append(replica)
        notify.wait_for("READY=1")
        return replica

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGCONT)
                replica.proc.kill()
                replica.proc.wait(timeout=30)
            replica.notify.close()

    def alert_texts(self) -> list[str]:
        return [t for t in self.slack.channel_texts("#llm-costs") if "tiny" in t]

    def logs(self) -> str:
        return "".join(r.log.read_text() for r in self.replicas)


@pytest.fixture
def cluster(
    tmp_path: Path, fakes: tuple[Simulator, FakeSlack], postgres: PostgresServer
) -> Iterator[Cluster]:
    sim, slack = fakes
    made = Cluster(tmp_path, sim, slack, postgres.fresh_url())
    yield made
    made.stop()
    text = made.logs()
    assert SECRET not in text and PASSWORD not in text and TOKEN not in text


def outbox_rows(postgres: PostgresServer, url: str) -> int:
    schema = url.rsplit("%3D", 1)[1]
    return int(postgres.execute(f"SELECT count(*) FROM {schema}.outbox")[0][0])  # type: ignore[arg-type]


def each_alert_once(cluster: Cluster) -> None:
    texts = cluster.alert_texts()
    assert len(texts) == KEYS, texts
    assert len(set(texts)) == KEYS, texts


def test_sigkill_of_the_leader_mid_send_the_follower_takes_over_and_sends_each_alert_once(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    slack = cluster.slack
    # Slack posts the first message at once but answers only when released: the leader
    # dies with that send in flight
    slack.script_for["chat.postMessage"] = deque([Answer.slow()])
    a = cluster.start("a")
    assert a.leads_from_the_start()
    b = cluster.start("b")
    assert b.metric("langdock_leader") == 0 and a.metric("langdock_leader") == 1
    assert b.health()["role"] == "follower"
    assert slack.wait_until(lambda: len(cluster.alert_texts()) == 1)

    killed = time.monotonic()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=30)
    b.notify.wait_for("STATUS=leading", within=TAKEOVER)
    assert time.monotonic() - killed < TAKEOVER
    slack.release()  # the dead leader's answer: nobody reads it
    assert b.metric("langdock_leader") == 1  # served throughout, now as the leader

    # the new leader looks for the uncertain send in Slack before posting it again
    assert slack.wait_until(lambda: outbox_rows(postgres, cluster.url) == 0, timeout=60)
    each_alert_once(cluster)
    assert slack.calls("conversations.history"), "the uncertain send was not looked for"
    b.notify.next_cycle()  # a whole cycle more as the leader: nothing new is sent
    each_alert_once(cluster)
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(timeout=60) == 0


def test_a_frozen_leader_is_replaced_and_stays_quiet_when_it_wakes(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    a = cluster.start("a")
    assert a.leads_from_the_start()
    b = cluster.start("b")
    assert cluster.slack.wait_until(lambda: outbox_rows(postgres, cluster.url) == 0, timeout=60)
    each_alert_once(cluster)

    frozen = time.monotonic()
    a.proc.send_signal(signal.SIGSTOP)  # its sockets stay open; its lease runs out
    b.notify.wait_for("STATUS=leading", within=TAKEOVER)
    assert time.monotonic() - frozen < TAKEOVER
    a.proc.send_signal(signal.SIGCONT)
    a.notify.wait_for("STATUS=following")
    assert a.metric("langdock_leader") == 0 and b.metric("langdock_leader") == 1
    b.notify.next_cycle()
    each_alert_once(cluster)


def test_a_leader_cut_off_from_postgresql_stops_and_the_other_leads(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    proxy = TcpProxy(postgres.port)
    try:
        a = cluster.start("a", url=cluster.url.replace(str(postgres.port), str(proxy.port), 1))
        assert a.leads_from_the_start()
        b = cluster.start("b")
        assert cluster.slack.wait_until(lambda: outbox_rows(postgres, cluster.url) == 0, timeout=60)
        each_alert_once(cluster)

        cut = time.monotonic()
        proxy.cut()
        b.notify.wait_for("STATUS=leading", within=TAKEOVER)
        assert time.monotonic() - cut < TAKEOVER
        a.notify.wait_for("STATUS=following")  # it noticed, and sends nothing more
        assert a.metric("langdock_leader") == 0
        b.notify.next_cycle()
        each_alert_once(cluster)
        assert '"event": "leadership_lost"' in a.log.read_text()
    finally:
        proxy.close()
