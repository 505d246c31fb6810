"""Fixtures shared by the test modules.

``loom`` (a scratch studio folder that runs jobs) and ``loom_factory`` (a
fresh one per hypothesis example) come from storyloom's own pytest plugin,
``storyloom.testing``; ``fake_provider`` (real HTTP on
127.0.0.1 speaking the OpenAI, Anthropic and Gemini formats) from
``tests/fakeprovider.py``; ``postgres_database`` and ``pg_url`` (a fresh
database per session on a real PostgreSQL server, an empty store per test)
from ``tests/pgserver.py``; ``pgbouncer_url`` (that store through a
PgBouncer in transaction mode) from ``tests/pgbouncer.py``; ``store_url`` and ``loom_each_store`` run a test
on each bundled backend.
"""

from fakeprovider import fake_provider  # noqa: F401
from pgbouncer import pgbouncer_port, pgbouncer_url  # noqa: F401
from pgserver import pg_admin, pg_url, postgres_database  # noqa: F401

import os
import subprocess
from pathlib import Path

import pytest

from storyloom.cli import main


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request):
    """Each bundled backend in turn: None (the default, SQLite in the state
    folder), then the URL of an empty PostgreSQL store (skipped with the
    reason when no server answers)."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def loom_each_store(loom, store_url):
    """``loom``, once on each bundled backend: an end-to-end test that takes
    it runs twice."""
    loom.store_url = store_url
    yield loom
    if store_url is not None:  # it really ran on the other backend
        assert not (loom.state_dir / "storyloom.db").exists()


@pytest.fixture
def main_in(monkeypatch, capsys):
    """``test_cli.cli`` without the interpreter start-up (~0.5 s each):
    ``storyloom.cli.main`` run in-process in ``cwd`` with the same environment
    (STORYLOOM_* cleared, autoload off, ``env`` added), returning a
    CompletedProcess. For commands whose point is the message, the code or
    the store they leave; tests whose point is the process (signals, kills,
    a terminal, exit at a process's end) keep the subprocess."""
    def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
        for name in [n for n in os.environ if n.startswith("STORYLOOM_")]:
            monkeypatch.delenv(name)
        for name, value in {"STORYLOOM_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run
