"""Opening the configured store: the SQLite file (`state.path`), or PostgreSQL (`state.url`)
with the lease for what writes (`daemon.leadership`).

`run` opens PostgreSQL as a follower and leads when its lease says so (`daemon.service`).
The commands that write and send (`once`, `import`, `digest`, `demo`) take the lease for as
long as they run, renewed by a thread, so they never write beside a running leader: while a
replica leads, they refuse with who it is.
"""

from __future__ import annotations

from datetime import timedelta

from daemon.config import Config
from daemon.leadership import LeaderOnly, Lease, LeaseKeeper, Term
from daemon.notify.senders import Sender
from daemon.store import Store, StoreError


def store_password(config: Config) -> str | None:
    secret = config.state.password
    return None if secret is None else secret.get_secret_value()


def lease_for(config: Config, ttl: timedelta | None = None) -> Lease:
    """The lease on the configured PostgreSQL server, on a connection of its own."""
    from daemon.store.pg import PgConnection  # psycopg: only where state.url is set

    url, password = config.state.url, store_password(config)
    assert url is not None
    span = ttl or config.state.lease_ttl
    third = int(span.total_seconds() * 1000 / 3)
    # a renewal that would wait (a takeover held off by the leader's open transaction) gives
    # up within a third of the TTL and tries again at the next renewal
    settings = {"lock_timeout": f"{third}ms", "statement_timeout": f"{third}ms"}
    return Lease(lambda: PgConnection.connect(url, password, settings=settings), span)


def open_store(config: Config, *, exclusive: bool = False) -> Store:
    """The configured store. ``exclusive``: for a command that writes and sends; on
    PostgreSQL it holds the lease until the store is closed."""
    if config.state.url is None:
        return Store.open(config.state.path, exclusive=exclusive, tz=config.tz)
    # only what writes upgrades the shared schema: a reader (`status`, the page) never does
    store = Store.open_url(
        config.state.url, store_password(config), tz=config.tz, upgrade=exclusive
    )
    if exclusive:
        try:
            _hold_lease(store, config)
        except BaseException:
            store.close()
            raise
    return store


def follower_store(config: Config) -> Store:
    """`run` on PostgreSQL: a follower until its lease says otherwise (`daemon.service`)."""
    assert config.state.url is not None
    return Store.open_url(config.state.url, store_password(config), tz=config.tz)


def _hold_lease(store: Store, config: Config) -> None:
    lease = lease_for(config)
    if not lease.renew():
        holder, left = lease.current_holder()
        lease.close()
        who = f"{holder} (lease ends in {left:.0f}s)" if holder and left else "another replica"
        raise StoreError(
            f"the store {store.where} is led by {who}: this command would write and send"
            " beside it; stop the replicas first, or use `status`"
        )
    assert lease.term is not None
    store.lead((lease.term.holder, lease.term.epoch))
    store.held = lease.held  # what sends for the command checks first (`LeaderOnly`)

    def follow(term: Term | None) -> None:
        # a new term after a lapse, or none: the command's writes are fenced by it
        store.lead(None if term is None else (term.holder, term.epoch))

    keeper = LeaseKeeper(lease, follow, lease.term)
    keeper.start()

    def release() -> None:
        keeper.stop()
        lease.release()
        lease.close()

    store.on_close(release)


def store_exists(config: Config) -> bool:
    """Whether there is a store to read (a PostgreSQL server always has one)."""
    return config.state.url is not None or config.state.path.exists()


def store_name(config: Config) -> str:
    """Where the store is, for messages (a URL holds no password: see `StateConfig`)."""
    return config.state.url or str(config.state.path)


def leader_line(config: Config) -> str:
    """Who leads the replicas, for `status`."""
    lease = lease_for(config)
    try:
        holder, left = lease.current_holder()
    finally:
        lease.close()
    if holder is None or left is None:
        return "leader: none (no replica holds the lease; one takes it within a few seconds)"
    return f"leader: {holder} (its lease runs {left:.0f}s more unless renewed)"


def command_sender(store: Store, sender: Sender) -> Sender:
    """A command's sender: on PostgreSQL it sends only while the command's lease holds."""
    return sender if store.held is None else LeaderOnly(sender, store.held)
