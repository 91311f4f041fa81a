"""The lease, the fencing of a leader's writes, the outbox claims and `state.url`, against a
real PostgreSQL (`tests.postgres`). The processes that take over are `tests/test_failover.py`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from daemon.config import ConfigError, DigestConfig, load_config
from daemon.digest import digest_mark, missed_digests
from daemon.leadership import LeaderOnly, Lease
from daemon.notify.senders import ConsoleSender
from daemon.state import leader_line, open_store
from daemon.store import OutboxItem, Store, StoreError
from daemon.store.db import NotLeader
from tests.postgres import PASSWORD, PostgresServer

T0 = datetime(2026, 11, 20, 9, tzinfo=UTC)
TTL = timedelta(seconds=15)


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def connect(url: str, password: str, **settings: Any) -> Any:
    """`PgConnection.connect`, psycopg loaded on first use (every xdist worker collects this
    module; few of them run it)."""
    from daemon.store.pg import PgConnection

    return PgConnection.connect(url, password, **settings)


def lease(url: str, holder: str, clock: Ticks | None = None) -> Lease:
    # as `daemon.state.lease_for`: a renewal never waits long on a lock
    settings = {"lock_timeout": "500ms", "statement_timeout": "2s"}
    return Lease(
        lambda: connect(url, PASSWORD, settings=settings),
        TTL,
        holder,
        monotonic=clock or Ticks(),
    )


def expire(server: PostgresServer, url: str) -> None:
    """The server's clock passes the lease's end (as if its holder died TTL ago)."""
    schema = url.rsplit("%3D", 1)[1]
    server.execute(f"UPDATE {schema}.leader_lease SET expires_at = 0")


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    fresh = postgres.fresh_url()
    Store.open_url(fresh, PASSWORD).close()  # the tables
    return fresh


def test_one_holder_at_a_time_and_a_new_term_after_expiry(
    url: str, postgres: PostgresServer
) -> None:
    a, b = lease(url, "a"), lease(url, "b")
    assert a.renew() and a.term is not None and a.term.epoch == 1
    assert not b.renew() and b.term is None
    assert a.renew() and a.term.epoch == 1  # renewing keeps the term
    assert b.current_holder()[0] == "a"
    expire(postgres, url)
    assert b.renew() and b.term is not None and b.term.epoch == 2
    assert not a.renew() and not a.held()
    b.release()  # a clean stop: the lease is free at once
    assert a.renew() and a.term is not None and a.term.epoch == 3
    for held in (a, b):
        held.close()


def test_a_leader_counts_its_lease_shorter_than_the_server_grants(url: str) -> None:
    clock = Ticks()
    a = lease(url, "a", clock)
    assert a.renew()
    clock.now += TTL.total_seconds() * 0.79  # the server grants 15 s; it trusts 12 s
    assert a.held()
    clock.now += TTL.total_seconds() * 0.02
    assert not a.held()
    a.close()


def test_a_lost_server_is_not_holding_the_lease(url: str) -> None:
    clock = Ticks()
    a = lease(url, "a", clock)
    assert a.renew()
    a._connect = lambda: connect(url.replace("127.0.0.1", "127.0.0.2"), "x")
    a._drop_connection()
    assert a.renew()  # still within its own count
    clock.now += TTL.total_seconds()
    assert not a.renew() and not a.held()


def test_a_deposed_leaders_writes_are_fenced(url: str, postgres: PostgresServer) -> None:
    a = lease(url, "a")
    assert a.renew() and a.term is not None
    store = Store.open_url(url, PASSWORD)
    store.lead((a.term.holder, a.term.epoch))
    store.add_silence("r", None, T0, T0 + TTL, "while leading")
    expire(postgres, url)
    b = lease(url, "b")
    assert b.renew()
    with pytest.raises(NotLeader, match="lease ended"):
        store.queue([OutboxItem("bot:#x", "test", [], None, {"text": "late"}, T0)])
    assert store.outbox_pending_count() == 0  # nothing was written
    store.lead(None)  # a follower reads on, and writes nothing either
    assert len(store.silences(T0)) == 1
    with pytest.raises(NotLeader):
        store.add_silence("r", None, T0, T0 + TTL, "as a follower")
    store.close()


def test_a_leaders_open_transaction_holds_off_a_takeover_but_not_its_renewal(
    url: str, postgres: PostgresServer
) -> None:
    a, b = lease(url, "a"), lease(url, "b")
    assert a.renew() and a.term is not None
    store = Store.open_url(url, PASSWORD)
    store.lead((a.term.holder, a.term.epoch))
    writing = store._transaction()
    writing.__enter__()  # fenced: the lease row is key-share locked until it ends
    assert a.renew()  # a renewal changes no key: not held off
    expire(postgres, url)
    assert not b.renew()  # a takeover waits for the write to end (here: gives up at once)
    writing.__exit__(None, None, None)
    assert b.renew() and b.term is not None and b.term.epoch == 2
    store.close()


def test_an_outbox_row_is_sent_by_one_replica_only(url: str) -> None:
    one, two = Store.open_url(url, PASSWORD), Store.open_url(url, PASSWORD)
    one.queue([OutboxItem("bot:#x", "test", [], None, {"text": "hi"}, T0)])
    (item,) = one.outbox_pending()
    import psycopg  # here: every xdist worker collects this module, few use PostgreSQL

    with psycopg.connect(url, password=PASSWORD) as other:  # a replica's claim, mid-way
        other.execute("SELECT id FROM outbox WHERE id = %s FOR UPDATE", (item.id,))
        assert one.outbox_sending(item.id, T0) is None  # skipped, not waited for
    claim = two.outbox_sending(item.id, T0 + TTL, due=T0)
    assert claim is not None and not claim.uncertain
    # another term's try meanwhile: not due any more, and now uncertain
    assert one.outbox_sending(item.id, T0 + TTL, due=T0) is None
    again = one.outbox_sending(item.id, T0 + 2 * TTL, due=T0 + TTL)
    assert again is not None and again.uncertain  # look in Slack first
    two.outbox_sent(item.id)
    assert one.outbox_sending(item.id, T0) is None  # sent: gone
    one.close()
    two.close()


def test_a_sender_stops_when_its_lease_ends() -> None:
    held = [True]
    sender = LeaderOnly(ConsoleSender(), lambda: held[0])
    assert sender.send("console", {"text": "x"}, None).ok
    held[0] = False
    result = sender.send("console", {"text": "x"}, None)
    assert not result.ok and result.elsewhere


def test_commands_that_write_take_the_lease_or_refuse(tmp_path: Path, url: str) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"langdock: {{api_key: sk-x}}\nstate: {{url: '{url}', password_file: pw}}\n"
    )
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    config = load_config(config_path)
    assert leader_line(config).startswith("leader: none")
    first = open_store(config, exclusive=True)
    assert re.match(r"leader: .+:\d+/\w+ \(its lease runs \d+s more", leader_line(config))
    with pytest.raises(StoreError, match=r"is led by .*lease ends in"):
        open_store(config, exclusive=True)
    assert open_store(config).api_key_names() == {}  # readers need no lease
    first.close()  # released: the next one leads at once
    open_store(config, exclusive=True).close()


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ("{url: 'postgresql://u:secret@db/x'}", "state.url holds a password"),
        ("{url: 'postgresql://db/x?password=secret'}", "holds a password parameter"),
        ("{url: 'mysql://db/x'}", "state.url must be postgresql://"),
        ("{password: abc}", "state.password is set but state.url is not"),
        ("{url: 'postgresql://db/x', lease_ttl: 1s}", "lease_ttl must be between 3s and 2m"),
    ],
)
def test_bad_state_settings_are_refused(tmp_path: Path, state: str, error: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"langdock: {{api_key: sk-x}}\nstate: {state}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any(error in line for line in err.value.lines), err.value.lines
    assert not any("secret" in line for line in err.value.lines)


def test_a_scheduled_digest_is_queued_once_whichever_replica_runs_it(url: str) -> None:
    one, two = Store.open_url(url, PASSWORD), Store.open_url(url, PASSWORD)
    item = OutboxItem("bot:#x", "digest", [], None, {"text": "yesterday"}, T0)
    assert one.queue_once([item], "digest:day:1763600000")
    assert not two.queue_once([item], "digest:day:1763600000")
    assert two.queue_once([item], "digest:day:1763686400")  # the next day's
    assert one.outbox_pending_count() == 2
    one.close()
    two.close()


def test_a_new_leader_sends_the_digests_due_in_the_last_hour() -> None:
    tz = ZoneInfo("Europe/Berlin")
    digests = [DigestConfig(period="day"), DigestConfig(period="week", weekday="mon")]
    monday = datetime(2026, 11, 23, 9, 30, tzinfo=tz)  # both were due at 09:00
    hour = timedelta(hours=1)
    due = monday.replace(minute=0)
    assert missed_digests(digests, monday, tz, hour) == [("day", due), ("week", due)]
    assert missed_digests(digests, monday + hour, tz, hour) == []  # too late: left out
    assert missed_digests(digests, monday - hour, tz, hour) == []  # not due yet
    tuesday = monday + timedelta(days=1)
    assert missed_digests(digests, tuesday, tz, hour) == [("day", due + timedelta(days=1))]
    # due yesterday just before midnight: yesterday's digest (of the day before), once
    late = [DigestConfig(period="day", at="23:30")]
    at = datetime(2026, 11, 24, 0, 10, tzinfo=tz)
    ((period, was_due),) = missed_digests(late, at, tz, hour)
    assert was_due == datetime(2026, 11, 23, 23, 30, tzinfo=tz)
    assert digest_mark(period, was_due, tz) == digest_mark("day", at - hour, tz)
    assert digest_mark(period, was_due, tz) != digest_mark("day", at, tz)


def test_readers_never_create_or_upgrade_the_shared_schema(postgres: PostgresServer) -> None:
    url = postgres.fresh_url()
    with pytest.raises(StoreError, match=r"no store at .* yet: run `langdock-budget once`"):
        Store.open_url(url, PASSWORD, upgrade=False)
    Store.open_url(url, PASSWORD).close()  # what writes creates it
    Store.open_url(url, PASSWORD, upgrade=False).close()
