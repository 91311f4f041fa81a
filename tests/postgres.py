"""A real PostgreSQL server for the tests, from Debian's binaries (`initdb` + `pg_ctl` in a
temporary directory, C locale, TCP on a free loopback port, a password required).

One server per test session (per xdist worker: `tests/conftest.py` provides the fixture to
every module, none imports it again); each test gets a schema of its own
(`PostgresServer.fresh_url`), so tests never see each other's tables. Skipped locally with a
one-line reason when the binaries are missing; CI installs them (`tests/servers.py`).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.processes import free_port
from tests.servers import binary

PASSWORD = "pg-test-secret-7f3a"
_counter = itertools.count(1)


class PostgresServer:
    def __init__(self, root: Path) -> None:
        initdb = binary("initdb", "postgresql", *glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        bindir = Path(initdb).parent
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.pg_ctl = str(bindir / "pg_ctl") if (bindir / "pg_ctl").exists() else "pg_ctl"
        pwfile = root / "pw"
        pwfile.write_text(PASSWORD)
        user = ["-U", "budget"]
        env = {**os.environ, "LC_ALL": "C"}
        run = _as_postgres_user()
        if run:
            shutil.chown(root, "postgres")
            shutil.chown(pwfile, "postgres")
        init = [initdb, "-D", str(self.data), *user, "--pwfile", str(pwfile), "-A", "md5"]
        subprocess.run(
            [*run, *init, "--locale=C", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            env=env,
        )
        options = f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        start = [self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(root / "log")]
        subprocess.run(
            [*run, *start, "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            env=env,
        )
        self.admin_url = f"postgresql://budget@127.0.0.1:{self.port}/postgres"
        self._run = run
        self._admin: psycopg.Connection[tuple[object, ...]] | None = None

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
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.admin_url, password=PASSWORD, autocommit=True)
        cur = self._admin.execute(sql)
        return list(cur.fetchall()) if cur.description else []

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    # not under pytest's temporary directory: as root, the server runs as the postgres user,
    # who cannot enter root's 0700 directories
    root = Path(tempfile.mkdtemp(prefix="langdock-budget-pg-"))
    root.chmod(0o755)
    try:
        server = PostgresServer(root)
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
