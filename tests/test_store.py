"""Store backends: the conformance suite once per backend, then backend-specific tests.

``store_conformance`` sits next to this file; pytest's default ``prepend``
import mode puts ``tests/`` (which has no ``__init__.py``) on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import trio

from storyloom.errors import UsageError
from storyloom.store.owner import make_owner, owner_alive
from storyloom.store import StoreVersionError
from storyloom.store.sqlite import DB_NAME, SCHEMA_VERSION, SQLiteStore
from store_conformance import *  # noqa: F403 - the tests, collected here once per backend
from store_conformance import JOB, NOW, OWNER, add, claim_ids, job_row, new_items, rec, trio_test

BACKENDS = [
    "sqlite",
    # "postgres" goes here with its backend: open_store() connects to a
    # throwaway database (e.g. from $STORYLOOM_TEST_POSTGRES) and skips
    # when none is configured.
]


def open_store(backend: str, tmp_path):
    if backend == "sqlite":
        return SQLiteStore.open(tmp_path / "state")
    raise AssertionError(f"unknown backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """A fresh, empty store of each backend."""
    backend = open_store(request.param, tmp_path)
    yield backend
    trio.run(backend.aclose)


# -- every backend, with real owner strings


@trio_test
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


# -- SQLite specifics


def pragma(store: SQLiteStore, name: str):
    return store._conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_sqlite_pragmas(tmp_path):
    store = SQLiteStore.open(tmp_path / "deep" / "state")
    try:
        assert (tmp_path / "deep" / "state" / DB_NAME).is_file()
        assert pragma(store, "journal_mode") == "wal"
        assert pragma(store, "synchronous") == 1  # NORMAL
        assert pragma(store, "foreign_keys") == 1
        assert pragma(store, "busy_timeout") >= 1000
        assert pragma(store, "user_version") == SCHEMA_VERSION
    finally:
        store.close()
    full = SQLiteStore.open(tmp_path / "deep" / "state", synchronous="full")
    try:
        assert pragma(full, "synchronous") == 2  # FULL
    finally:
        full.close()


@pytest.mark.parametrize("bad", ["OFF", "EXTRA", "NORMAL; DROP TABLE jobs", ""])
def test_sqlite_rejects_other_synchronous_modes(tmp_path, bad):
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore.open(tmp_path, synchronous=bad)


def test_sqlite_state_survives_close_and_reopen(tmp_path):
    async def first():
        store = SQLiteStore.open(tmp_path)
        await store.add_job(job_row(), new_items("a", "b", "c"))
        await claim_ids(store, limit=2)
        await store.record([rec("a", result_text="เสร็จ", result_data={"n": 1}, cost_usd=0.5)], OWNER)
        await store.set_job_state(JOB, "interrupted", "SIGINT")
        await store.aclose()

    async def second():
        store = SQLiteStore.open(tmp_path)
        try:
            job = await store.get_job(JOB)
            assert (job.state, job.reason, job.definition) == ("interrupted", "SIGINT", job_row().definition)
            assert await store.counts(JOB) == {"pending": 1, "running": 1, "completed": 1, "failed": 0, "skipped": 0}
            assert await store.result(JOB, "a") == ("เสร็จ", {"n": 1})
            assert (await store.costs(JOB)).cost_usd == 0.5
            assert [r.owner for r in await store.running(JOB)] == [OWNER]
            assert await store.recover(JOB, lambda owner: False) == 1
            assert await claim_ids(store) == ["b", "c"]
        finally:
            await store.aclose()

    trio.run(first)
    trio.run(second)


def test_sqlite_refuses_a_newer_schema(tmp_path):
    SQLiteStore.open(tmp_path).close()
    raw = sqlite3.connect(tmp_path / DB_NAME)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreVersionError, match=rf"version {SCHEMA_VERSION + 1}.*upgrade storyloom") as info:
        SQLiteStore.open(tmp_path)
    assert isinstance(info.value, UsageError)  # the CLI prints it and exits 2


def test_sqlite_two_connections_never_claim_the_same_item(tmp_path):
    async def main():
        one, two = SQLiteStore.open(tmp_path), SQLiteStore.open(tmp_path)
        try:
            await one.add_job(job_row(), new_items(*(f"i{n:02d}" for n in range(40))))
            seen = []
            for turn in range(10):
                seen += await claim_ids((one, two)[turn % 2], limit=5, owner=f"o{turn % 2}")
            assert len(seen) == len(set(seen)) == 40
            assert await two.record([rec("i00")], "o0") == [True]  # o0 claimed i00 through `one`
            assert await one.record([rec("i00")], "o0") == [False]
        finally:
            one.close()
            two.close()

    trio.run(main)


READ_COUNTS = textwrap.dedent(
    """
    import json, sys, trio
    from storyloom.store.sqlite import SQLiteStore
    store = SQLiteStore.open(sys.argv[1])
    print(json.dumps(trio.run(store.counts, sys.argv[2])))
    store.close()
    """
)
SET_STATE = textwrap.dedent(
    """
    import sys, trio
    from storyloom.store.sqlite import SQLiteStore
    store = SQLiteStore.open(sys.argv[1])
    trio.run(store.set_job_state, sys.argv[2], "paused", "from another process")
    store.close()
    """
)


@pytest.mark.slow
def test_sqlite_another_process_reads_while_open(tmp_path):
    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            await store.add_job(job_row(), new_items("a", "b", "c"))
            await claim_ids(store, limit=1)
            await store.record([rec("a")], OWNER)
            await claim_ids(store, limit=1)
            # an open read transaction on our side must not block the reader
            store._conn.execute("BEGIN")
            store._conn.execute("SELECT COUNT(*) FROM items").fetchone()
            out = subprocess.run(
                [sys.executable, "-c", READ_COUNTS, str(tmp_path), JOB],
                capture_output=True, text=True, timeout=60,
            )
            store._conn.execute("COMMIT")
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout) == {"pending": 1, "running": 1, "completed": 1, "failed": 0, "skipped": 0}
        finally:
            await store.aclose()

    trio.run(main)


@pytest.mark.slow
def test_sqlite_another_process_waits_for_a_write_lock(tmp_path):
    store = SQLiteStore.open(tmp_path)
    try:
        trio.run(store.add_job, job_row(), new_items("a"))
        store._conn.execute("BEGIN IMMEDIATE")  # as if a record() were in progress
        proc = subprocess.Popen(
            [sys.executable, "-c", SET_STATE, str(tmp_path), JOB], stderr=subprocess.PIPE, text=True
        )
        try:
            proc.wait(timeout=1.5)
        except subprocess.TimeoutExpired:
            pass
        assert proc.poll() is None, f"did not wait for the lock: {proc.stderr.read()}"
        store._conn.execute("COMMIT")
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        job = trio.run(store.get_job, JOB)
        assert (job.state, job.reason) == ("paused", "from another process")
    finally:
        store.close()


def test_sqlite_foreign_keys_guard_orphans(tmp_path):
    store = SQLiteStore.open(tmp_path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            store._conn.execute("INSERT INTO items (job_id, item_id, seq, level, state, definition) "
                                "VALUES ('no-such-job', 'x', 0, 2, 'pending', '{}')")
    finally:
        store.close()


def test_sqlite_claim_uses_the_claim_index(tmp_path):
    """At 100k pending items claim must walk an index, not sort the table."""
    from storyloom.store.sqlite import _CLAIM

    store = SQLiteStore.open(tmp_path)
    try:
        plan = " ".join(row[-1] for row in store._conn.execute("EXPLAIN QUERY PLAN " + _CLAIM, (None,) * 5))
        assert "items_claim" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()

