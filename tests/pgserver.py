"""A throwaway PostgreSQL database for the test session, on a real server.

``$STORYLOOM_TEST_POSTGRES`` names the server (a URL to a database the user
can ``CREATE DATABASE`` from; default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth). The session creates ``storyloom_test_<random>`` there and drops
it at the end; each test gets a store URL with a schema of its own
(:func:`pg_store_url`), so every test starts from an empty store.

No server answering: the PostgreSQL tests are skipped with the reason, unless
``STORYLOOM_REQUIRE_POSTGRES=1`` (CI sets it), which makes them fail.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import pytest

SERVER_ENV = "STORYLOOM_TEST_POSTGRES"
REQUIRE_ENV = "STORYLOOM_REQUIRE_POSTGRES"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get(SERVER_ENV, "").strip() or DEFAULT_SERVER


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but PostgreSQL cannot be used: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server for the tests ({reason}); set ${SERVER_ENV} to one")


@pytest.fixture(scope="session")
def postgres_database() -> str:
    """The URL of a fresh database for this session (dropped after)."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency
        _unavailable(f"psycopg is not installed: {exc}")
    from storyloom.store import mask_url

    server = server_url()
    name = f"storyloom_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        _unavailable(f"{mask_url(server)}: {' '.join(str(exc).split())}")
    try:
        yield _with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_store_url(database: str, schema: str | None = None) -> str:
    """A store URL in ``database`` with a fresh schema (or ``schema``): an empty store."""
    schema = schema or f"t_{secrets.token_hex(6)}"
    sep = "&" if "?" in database else "?"
    return f"{database}{sep}schema={schema}"


#: The schema that :func:`pg_url` empties for each test.
SHARED_SCHEMA = "shared"


@pytest.fixture(scope="session")
def pg_admin(postgres_database: str):
    """One connection to the session's database, for emptying the shared schema."""
    import psycopg

    with psycopg.connect(postgres_database, autocommit=True) as conn:
        # Foreign keys are not checked while emptying, so the order of the
        # tables (which other branches add to) does not matter.
        conn.execute("SET session_replication_role = replica")
        yield conn


@pytest.fixture
def pg_url(postgres_database: str, pg_admin) -> str:
    """A store URL of an empty PostgreSQL store in the session's database.

    One schema serves every test, its tables emptied before each (DELETE: a
    TRUNCATE or a fresh schema's tables and indexes cost more than most
    tests); a test of creating or migrating a store uses
    :func:`pg_store_url` for a schema of its own.
    """
    tables = [name for (name,) in pg_admin.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <> 'storyloom_schema'",
        (SHARED_SCHEMA,))]
    with pg_admin.transaction():
        for name in tables:
            pg_admin.execute(f'DELETE FROM "{SHARED_SCHEMA}"."{name}"')
    return pg_store_url(postgres_database, SHARED_SCHEMA)
