"""Store backends: the conformance suite once per registered backend, and owner strings.

``store_conformance`` sits next to this file; pytest's default ``prepend``
import mode puts ``tests/`` (which has no ``__init__.py``) on ``sys.path``.
Each backend's own specifics live in its own module (``test_store_sqlite.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from storyloom.store.owner import make_owner, owner_alive
from store_conformance import *  # noqa: F403 - the tests, collected here once per backend
from store_conformance_pipelines import *  # noqa: F403 - part two: pipelines
from store_conformance_shared import *  # noqa: F403 - part three: shared rate limits and budgets
from store_conformance import BACKENDS, JOB, add, claim_ids, conformance_test, store_backend  # noqa: F401 - the fixture


def test_the_bundled_backends_are_registered():
    assert {"sqlite", "postgresql"} <= set(BACKENDS)
    assert "postgres" not in BACKENDS  # an alias of postgresql: the suite runs once for both


# -- every backend, with real owner strings


@conformance_test([])  # this module's own: not in store_conformance's listing, which others import
async def test_recover_with_real_owner_strings(store):
    live = make_owner()
    dead = f"{socket.gethostname()}:{dead_pid()}:{'0' * 16}"
    elsewhere = f"not-{socket.gethostname()}:1:{'0' * 16}"
    await add(store, "a", "b", "c")
    await claim_ids(store, limit=1, owner=live)
    await claim_ids(store, limit=1, owner=dead)
    await claim_ids(store, limit=1, owner=elsewhere)
    assert await store.recover(JOB, owner_alive) == 1
    assert {r.owner for r in await store.running(JOB)} == {live, elsewhere}


# -- owner strings


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_make_owner_format():
    host, pid, token = make_owner().rsplit(":", 2)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert len(token) >= 8 and int(token, 16) >= 0
    assert make_owner() != make_owner()


def test_owner_alive():
    assert owner_alive(make_owner())
    assert not owner_alive(f"{socket.gethostname()}:{dead_pid()}:abcd")
    assert owner_alive(f"not-{socket.gethostname()}:{dead_pid()}:abcd")  # cannot tell: assume alive
    assert owner_alive(f"{socket.gethostname()}:1:abcd")  # init exists (PermissionError or not)
    for odd in ("", "garbage", f"{socket.gethostname()}:x:abcd", f"{socket.gethostname()}:0:abcd"):
        assert owner_alive(odd), odd
