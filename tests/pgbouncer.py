"""A PgBouncer in transaction mode in front of the tests' PostgreSQL server.

``pgbouncer_url`` gives the URL of an empty store (the shared schema of
``pgserver.pg_url``) reached through a PgBouncer that this session starts on
a free port and stops after: ``pool_mode = transaction``, fewer server
connections than a store's pool, so that one client's transactions really
run on several server connections. Skipped with the reason when PgBouncer
is not installed (Debian's ``pgbouncer``), unless ``STORYLOOM_REQUIRE_PGBOUNCER=1``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from pgserver import server_url

REQUIRE_ENV = "STORYLOOM_REQUIRE_PGBOUNCER"
#: Server connections per database and user: below a store's pool_size (4).
SERVER_CONNECTIONS = 2


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but PgBouncer cannot be used: {reason}", pytrace=False)
    pytest.skip(f"PgBouncer is not available ({reason}); install Debian's pgbouncer")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def pgbouncer_port(postgres_database: str):
    """The port of a PgBouncer (transaction mode) in front of the tests' server."""
    binary = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer",) if os.access(path, os.X_OK)), None)
    if binary is None:
        _unavailable("no pgbouncer on PATH or in /usr/sbin")
    server = urlsplit(server_url())
    if server.password:
        _unavailable("the test server needs a password, which this PgBouncer (trust) cannot pass on")
    user = server.username or "postgres"
    folder = Path(tempfile.mkdtemp(prefix="storyloom-pgbouncer-"))
    port = _free_port()
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"admin_users = {user}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\nmax_client_conn = 200\n"
        f"logfile = {folder / 'pgbouncer.log'}\nlog_connections = 0\nlog_disconnections = 0\n")
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer will not run as root
        try:
            runner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root, and there is no postgres user to run PgBouncer as")
        os.chmod(folder, 0o755)
        for path in (folder, *folder.iterdir()):
            os.chown(path, runner.pw_uid, runner.pw_gid)
        command[1:1] = ["-u", "postgres"]
    # Not a pipe: PgBouncer logs to stderr too, and a full pipe would stop it.
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "pgbouncer.log").read_text() if (folder / "pgbouncer.log").exists() else ""
                    _unavailable(f"it did not start: {log[-300:]}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pgbouncer_url(pg_url: str, pgbouncer_port: int) -> str:
    """``pg_url``'s empty store, reached through PgBouncer, ``pool_mode=transaction``."""
    parts = urlsplit(pg_url)
    netloc = f"{parts.username or 'postgres'}@127.0.0.1:{pgbouncer_port}"
    return urlunsplit(parts._replace(netloc=netloc, query=parts.query + "&pool_mode=transaction"))
