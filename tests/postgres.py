"""A real PostgreSQL server for the tests, from Debian's binaries (`initdb` + `pg_ctl` in a
temporary directory, C locale, TCP on a free loopback port, a password required).

One server per run: the first process that asks for the `postgres` fixture (an xdist worker,
or pytest itself without workers) starts it, the others of the run use it, and the last of
them to finish stops it (`shared_server`; `tests/conftest.py` also stops what a crashed worker
left, at the end of the run). Each test gets a schema of its own (`PostgresServer.fresh_url`),
so tests never see each other's tables. Skipped locally with a one-line reason when the
binaries are missing; CI installs them (`tests/servers.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.processes import free_port
from tests.servers import binary

if TYPE_CHECKING:  # imported where used: every xdist worker loads this module, few use it
    import psycopg

PASSWORD = "pg-test-secret-7f3a"
_counter = itertools.count(1)


class PostgresServer:
    """A server in ``root`` on ``port``: `start` makes one, `attach` finds a running one."""

    def __init__(self, root: Path, port: int) -> None:
        initdb = binary("initdb", "postgresql", *glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        bindir = Path(initdb).parent
        self.initdb = initdb
        self.root, self.port = root, port
        self.data = root / "data"
        self.pg_ctl = str(bindir / "pg_ctl") if (bindir / "pg_ctl").exists() else "pg_ctl"
        self.admin_url = f"postgresql://budget@127.0.0.1:{self.port}/postgres"
        self._run = _as_postgres_user()
        self._admin: psycopg.Connection[tuple[object, ...]] | None = None

    @classmethod
    def start(cls, root: Path) -> PostgresServer:
        """initdb and start a server in the (empty, world-readable) directory ``root``."""
        server = cls(root, free_port())
        pwfile = root / "pw"
        pwfile.write_text(PASSWORD)
        env = {**os.environ, "LC_ALL": "C"}
        run = server._run
        if run:
            shutil.chown(root, "postgres")
            shutil.chown(pwfile, "postgres")
        init = [server.initdb, "-D", str(server.data), "-U", "budget", "--pwfile", str(pwfile)]
        subprocess.run(
            [*run, *init, "-A", "md5", "--locale=C", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            env=env,
        )
        options = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
        start = [server.pg_ctl, "-D", str(server.data), "-o", options, "-l", str(root / "log")]
        subprocess.run(
            [*run, *start, "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            env=env,
        )
        (root / "port").write_text(str(server.port))
        return server

    @classmethod
    def at(cls, root: Path) -> PostgresServer:
        """The server `start` made in ``root`` (raises `OSError` if there is none)."""
        return cls(root, int((root / "port").read_text()))

    @classmethod
    def attach(cls, root: Path) -> PostgresServer | None:
        """The server another process of this run started in ``root``, if it answers."""
        import psycopg

        try:
            server = cls.at(root)
            server.execute("SELECT 1")
        except (OSError, ValueError, psycopg.Error):
            return None
        return server

    def url(self, schema: str | None = None) -> str:
        """The URL without its password (the daemon takes it from state.password)."""
        suffix = f"?options=-csearch_path%3D{schema}" if schema else ""
        return f"postgresql://budget@127.0.0.1:{self.port}/postgres{suffix}"

    def fresh_url(self) -> str:
        """A URL whose tables live in a new, empty schema."""
        schema = f"t{os.getpid()}_{next(_counter)}"
        self.execute(f"CREATE SCHEMA {schema}")
        return self.url(schema)

    def execute(self, sql: str) -> list[tuple[object, ...]]:
        """``sql`` on the server's own connection (autocommit), kept open: a connection is a
        new server process, which costs the server more than most statements here."""
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.admin_url, password=PASSWORD, autocommit=True)
        cur = self._admin.execute(sql)
        return list(cur.fetchall()) if cur.description else []

    def close(self) -> None:
        """This process's connection; the server runs on."""
        if self._admin is not None:
            self._admin.close()

    def stop(self) -> None:
        self.close()
        subprocess.run(
            [*self._run, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its binaries as the postgres user."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


def run_home(run: int) -> Path:
    """Where the server of the run whose pytest process is ``run`` lives. Not under pytest's
    temporary directory: as root, the server runs as the postgres user, who cannot enter
    root's 0700 directories."""
    return Path(tempfile.gettempdir()) / f"langdock-budget-pg-{run}"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    with open(f"{home}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def shared_server(run: int) -> Iterator[PostgresServer]:
    """The run's server, started by the first process to ask (an initdb and a server cost a
    second of CPU: once a run, not once a worker) and stopped when the last user is done."""
    home, me = run_home(run), str(os.getpid())
    with _locked(home):
        server = PostgresServer.attach(home)
        if server is None:
            shutil.rmtree(home, ignore_errors=True)  # a dead server's, from a crashed run
            home.mkdir()
            home.chmod(0o755)
            server = PostgresServer.start(home)
        (home / "users").mkdir(exist_ok=True)
        (home / "users" / me).touch()
    try:
        yield server
    finally:
        with _locked(home):
            (home / "users" / me).unlink(missing_ok=True)
            if any((home / "users").iterdir()):
                server.close()
            else:
                stop_run_server(run, server)


def stop_run_server(run: int, server: PostgresServer) -> None:
    """Stop the run's server and remove its files."""
    server.stop()
    shutil.rmtree(run_home(run), ignore_errors=True)


def end_run(run: int) -> None:
    """At the end of the run (its pytest process): the server a worker that died before
    stopping it left, and the run's lock file."""
    home = run_home(run)
    if (home / "port").exists():
        stop_run_server(run, PostgresServer.at(home))
    Path(f"{home}.lock").unlink(missing_ok=True)


def run_of_this_process() -> int:
    """The pid of the run's pytest process: this one, or the xdist controller that started
    this worker."""
    return os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with shared_server(run_of_this_process()) as server:
        yield server
