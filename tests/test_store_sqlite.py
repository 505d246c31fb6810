"""The sqlite store backend's own tests: pragmas, schema versions and migration,
WAL and locking across processes, query plans, and its URL forms.

Every backend's shared behaviour is in ``store_conformance.py`` (run by
``test_store.py``); this module may open ``SQLiteStore`` directly.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest
import trio

from storyloom.errors import UsageError
from storyloom.plugins.stores import sqlite as sqlite_backend
from storyloom.plugins.stores.sqlite import DB_NAME, SCHEMA_VERSION, SQLiteStore, folder_of, open_sqlite
from storyloom.settings import Settings
from storyloom.store import NewItem, QueuedRow, StartRecord, StoreNotFound, StoreVersionError
from store_conformance import JOB, NOW, OWNER, THAI, claim_ids, job_row, levels, new_items, next_ids, rec
from store_conformance_shared import shares_after_migration


@pytest.mark.parametrize("url,folder", [
    ("sqlite", "STATE"),
    ("sqlite:", "STATE"),
    ("sqlite:///abs/folder", "/abs/folder"),
    ("sqlite:/abs/folder", "/abs/folder"),
    ("sqlite:relative/folder", "relative/folder"),
    ("sqlite:with%20space", "with space"),
])
def test_sqlite_url_forms(url, folder):
    assert folder_of(url, Path("STATE")) == Path(folder)


def test_sqlite_url_expands_home():
    assert folder_of("sqlite:~/loom", Path("x")) == Path("~/loom").expanduser()


@pytest.mark.parametrize("url,message", [
    ("sqlite://host/folder", "names a host"),
    ("sqlite:///folder?synchronous=FULL", "takes no query"),
    ("sqlite:///folder#x", "takes no query or fragment"),
])
def test_sqlite_rejects_malformed_urls(url, message):
    with pytest.raises(UsageError, match=message):
        folder_of(url, Path("x"))


def test_sqlite_opener_opens_only_an_existing_store_when_asked(tmp_path):
    async def main():
        with pytest.raises(StoreNotFound, match="no store in") as info:
            await open_sqlite(f"sqlite://{tmp_path / 'new'}", state_dir=tmp_path, settings=Settings(), create=False)
        assert info.value.location == str(tmp_path / "new")
        assert not (tmp_path / "new").exists()
        store = await open_sqlite(f"sqlite://{tmp_path / 'new'}", state_dir=tmp_path, settings=Settings(),
                                  create=True)
        assert store.location == str(tmp_path / "new")
        await store.aclose()
        again = await open_sqlite(f"sqlite:{tmp_path / 'new'}", state_dir=tmp_path, settings=Settings(),
                                  create=False)
        await again.aclose()
        full = await open_sqlite("sqlite", state_dir=tmp_path / "new",
                                 settings=Settings(synchronous="FULL"), create=False)
        assert pragma(full, "synchronous") == 2  # the settings' synchronous
        await full.aclose()

    trio.run(main)


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
    from storyloom.plugins.stores.sqlite import SQLiteStore
    store = SQLiteStore.open(sys.argv[1])
    print(json.dumps(trio.run(store.counts, sys.argv[2])))
    store.close()
    """
)
SET_STATE = textwrap.dedent(
    """
    import sys, trio
    from storyloom.plugins.stores.sqlite import SQLiteStore
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
    from storyloom.plugins.stores.sqlite import _CLAIM

    store = SQLiteStore.open(tmp_path)
    try:
        plan = " ".join(row[-1] for row in store._conn.execute("EXPLAIN QUERY PLAN " + _CLAIM, (None,) * 6))
        assert "items_claim" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()



def test_sqlite_queue_statements_seek_into_indexes(tmp_path):
    """claim_next, next_queued_at, position and promote must seek into an
    index, not scan or sort the table: at 100k waiting items a pass with
    little to do stays cheap."""
    from storyloom.plugins.stores import sqlite as backend

    cases = [
        # Partial indexes of pending items; COVERING: no table row is read.
        (backend._CLAIM_NEXT, (OWNER, NOW, 30.0, "chapter", NOW, "[]", 10), "COVERING INDEX items_queue (job_type=?)"),
        (backend._CLAIM, (OWNER, NOW, 30.0, JOB, NOW, 10), "COVERING INDEX items_claim (job_id=?)"),
        (backend._NEXT_QUEUED_AT, ("chapter",), "COVERING INDEX items_queue_ready (job_type=?)"),
        (backend._POSITION, (JOB, "a"), "COVERING INDEX items_position (level<?)"),
        (backend._PROMOTE_CRITICAL, (NOW, NOW), "items_deadline (level=? AND deadline<?)"),
        (backend._PROMOTE_HIGH, (NOW, NOW), "items_deadline (level=? AND deadline<?)"),
        (backend._AGE, (NOW, NOW), "items_aging (level=? AND level_since<?)"),
    ]
    store = SQLiteStore.open(tmp_path)
    try:
        for sql, params, wanted in cases:
            plan = [row[-1] for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert any(wanted in line for line in plan), plan
            # json_each (claim_next's exclude list) is the one thing scanned
            assert not [line for line in plan if line.startswith("SCAN") and "VIRTUAL TABLE" not in line], plan
            assert not [line for line in plan if "TEMP B-TREE" in line], plan
    finally:
        store.close()


# The version 1 schema exactly as storyloom 0.1 wrote it: kept here, not
# imported, so that the migration is tested against what is really on disk.
V1_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        job_type TEXT NOT NULL,
        state TEXT NOT NULL,
        definition TEXT NOT NULL,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS items (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        item_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        level INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        free_attempts INTEGER NOT NULL DEFAULT 0,
        first_started_at REAL,
        last_model TEXT,
        owner TEXT,
        started_at REAL,
        not_before REAL NOT NULL DEFAULT 0,
        error_kind TEXT,
        error TEXT,
        definition TEXT NOT NULL,
        route TEXT,
        PRIMARY KEY (job_id, item_id)
    )""",
    # claim walks this in order; with not_before in it, the ready check
    # needs no table lookup.
    "CREATE INDEX IF NOT EXISTS items_claim ON items (job_id, state, level, seq, not_before)",
    # next_ready_at: the earliest not_before without scanning every pending item.
    "CREATE INDEX IF NOT EXISTS items_ready ON items (job_id, state, not_before)",
    "CREATE INDEX IF NOT EXISTS items_seq ON items (job_id, seq)",
    """CREATE TABLE IF NOT EXISTS attempts (
        job_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        model TEXT,
        state TEXT NOT NULL,
        error_kind TEXT,
        error TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        route TEXT,
        FOREIGN KEY (job_id, item_id) REFERENCES items (job_id, item_id)
    )""",
    "CREATE INDEX IF NOT EXISTS attempts_item ON attempts (job_id, item_id, attempt)",
    """CREATE TABLE IF NOT EXISTS results (
        job_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        text TEXT NOT NULL,
        data TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (job_id, item_id),
        FOREIGN KEY (job_id, item_id) REFERENCES items (job_id, item_id)
    )""",
)
DEADLINE = "2030-01-15T09:00:00+00:00"
DEADLINE_S = datetime(2030, 1, 15, 9, tzinfo=timezone.utc).timestamp()
ROUTE = {"strategy": "round_robin", "picked": "m1"}


def write_v1_file(folder) -> None:
    """A version 1 store: job "old" with a completed, a retried, a deadline
    and a skipped item; a paused job; a later job with a naive deadline."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(folder / DB_NAME)
    for statement in V1_SCHEMA:
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 1")
    jobs = [("old", "running", NOW), ("paused", "paused", NOW + 5), ("later", "running", NOW + 10)]
    raw.executemany(
        "INSERT INTO jobs (job_id, job_type, state, definition, reason, created_at, updated_at) "
        "VALUES (?, 'chapter', ?, ?, NULL, ?, ?)",
        [(job_id, state, json.dumps({"job_id": job_id, "title": THAI}), at, at) for job_id, state, at in jobs],
    )
    items = [  # job_id, item_id, level, state, attempts, error_kind, error, last_model, route, deadline
        ("old", "a", 2, "completed", 1, None, None, "m1", json.dumps(ROUTE), None),
        ("old", "b", 2, "pending", 1, "TIMEOUT", "slow", "m1", None, None),
        ("old", "c", 1, "pending", 0, None, None, None, None, DEADLINE),
        ("old", "d", 3, "skipped", 0, None, None, None, None, None),
        ("paused", "e", 0, "pending", 0, None, None, None, None, None),
        ("later", "f", 2, "pending", 0, None, None, None, None, None),
        ("later", "g", 1, "pending", 0, None, None, None, None, "2030-01-15T09:00:00"),  # naive: UTC
    ]
    seqs: dict[str, int] = {}
    for job_id, item_id, level, state, attempts, kind, error, model, route, deadline in items:
        seq = seqs[job_id] = seqs.get(job_id, -1) + 1  # seq counts within a job
        definition = {"item_id": item_id, "deadline": deadline, "fields": {"title": f"{THAI} {item_id}"}}
        raw.execute(
            "INSERT INTO items (job_id, item_id, seq, level, state, attempts, last_model, error_kind, error, "
            "definition, route) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, item_id, seq, level, state, attempts, model, kind, error, json.dumps(definition), route),
        )
    raw.executemany(
        "INSERT INTO attempts (job_id, item_id, attempt, model, state, error_kind, error, input_tokens, "
        "output_tokens, cost_usd, started_at, finished_at, route) VALUES (?, ?, 1, 'm1', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [("old", "b", "pending", "TIMEOUT", "slow", 10, 0, 0.125, NOW, NOW + 1, None),
         ("old", "a", "completed", None, None, 100, 50, 0.5, NOW, NOW + 2, json.dumps(ROUTE))],
    )
    raw.execute("INSERT INTO results (job_id, item_id, text, data, created_at) VALUES ('old', 'a', ?, ?, ?)",
                (f"เนื้อเรื่อง {THAI}", json.dumps({"words": 3}), NOW + 2))
    raw.commit()
    raw.close()


def test_sqlite_migrates_a_version_1_file(tmp_path):
    write_v1_file(tmp_path)

    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            assert pragma(store, "user_version") == SCHEMA_VERSION == 7
            # nothing lost
            assert [(j.job_id, j.state, j.definition["title"]) for j in await store.list_jobs()] == [
                ("old", "running", THAI), ("paused", "paused", THAI), ("later", "running", THAI)]
            rows = {row.item_id: row for row in await store.items("old")}
            assert [(r.item_id, r.state, r.attempts, r.level) for r in rows.values()] == [
                ("a", "completed", 1, 2), ("b", "pending", 1, 2), ("c", "pending", 0, 1), ("d", "skipped", 0, 3)]
            assert (rows["a"].route, rows["a"].last_model) == (ROUTE, "m1")
            assert (rows["b"].error_kind, rows["b"].error) == ("TIMEOUT", "slow")
            assert rows["c"].definition == {"item_id": "c", "deadline": DEADLINE, "fields": {"title": f"{THAI} c"}}
            assert await store.result("old", "a") == (f"เนื้อเรื่อง {THAI}", {"words": 3})
            assert [(r.item_id, r.state, r.cost_usd) for r in await store.attempts("old")] == [
                ("b", "pending", 0.125), ("a", "completed", 0.5)]
            assert (await store.costs("old")).by_model["m1"]["completed"] == 1
            assert await store.counts("old") == {"pending": 2, "running": 0, "completed": 1, "failed": 0,
                                                 "skipped": 1}
            # the queue: job types, order and deadlines filled in; the paused job held
            assert await store.queued(10) == [
                QueuedRow("old", "c", "chapter", 1, 0.0, DEADLINE_S),
                QueuedRow("later", "g", "chapter", 1, 0.0, DEADLINE_S),
                QueuedRow("old", "b", "chapter", 2, 0.0, None),
                QueuedRow("later", "f", "chapter", 2, 0.0, None),
            ]
            assert await store.position("paused", "e") == -1
            # level_since is the job's created_at: only "old"'s pending normal item has aged
            assert await store.promote(NOW + 3599, 3600.0) == 0
            assert await store.promote(NOW + 3600, 3600.0) == 1
            assert (await levels(store, "old"))["b"] == 1
            # a job submitted now queues after every migrated item
            await store.add_job(job_row("new"), [NewItem("n", 1, "pending", {"item_id": "n"})])
            assert await next_ids(store) == [("old", "b"), ("old", "c"), ("later", "g"), ("new", "n"),
                                             ("later", "f")]
            await store.set_job_state("paused", "running")
            assert await next_ids(store) == [("paused", "e")]
        finally:
            await store.aclose()

    trio.run(main)


def schema_of(path) -> tuple:
    raw = sqlite3.connect(path)
    try:
        tables = [name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        columns = {table: raw.execute(f"PRAGMA table_info({table})").fetchall() for table in tables}
        keys = {table: raw.execute(f"PRAGMA foreign_key_list({table})").fetchall() for table in tables}
        indexes = raw.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name")
        return columns, keys, indexes.fetchall()
    finally:
        raw.close()


def write_v2_file(folder) -> None:
    """The version 1 store as version 2 left it: migrated by the 1 -> 2 step."""
    write_v1_file(folder)
    raw = sqlite3.connect(folder / DB_NAME, isolation_level=None)
    raw.execute("BEGIN")
    sqlite_backend._migrate_1_to_2(raw)
    raw.execute("PRAGMA user_version = 2")
    raw.execute("COMMIT")
    raw.close()


def test_sqlite_migrates_a_version_2_file(tmp_path):
    write_v2_file(tmp_path)
    assert "reserved_usd" not in {c[1] for c in schema_of(tmp_path / DB_NAME)[0]["attempts"]}

    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            assert pragma(store, "user_version") == SCHEMA_VERSION == 7
            # every stored attempt is a finished one, its usage known
            assert [(r.item_id, r.state, r.cost_usd) for r in await store.attempts("old")] == [
                ("b", "pending", 0.125), ("a", "completed", 0.5)]
            costs = await store.costs("old")
            assert (costs.attempts, costs.cost_usd, costs.unknown_attempts, costs.unknown_usd) == (
                2, pytest.approx(0.625), 0, 0.0)
            # and a migrated file records attempts when sent
            await claim_ids(store, job_id="old", limit=1)  # c, level 1
            await store.record([], OWNER, started=[StartRecord("old", "c", "m1", NOW, attempt=1,
                                                               reserved_usd=0.25)])
            assert (await store.costs("old")).unknown_usd == pytest.approx(0.25)
        finally:
            await store.aclose()

    trio.run(main)


def write_v3_file(folder) -> None:
    """The version 1 store as version 3 left it: migrated by the 1 -> 2 and 2 -> 3 steps."""
    write_v2_file(folder)
    raw = sqlite3.connect(folder / DB_NAME, isolation_level=None)
    raw.execute("BEGIN")
    sqlite_backend._migrate_2_to_3(raw)
    raw.execute("PRAGMA user_version = 3")
    raw.execute("COMMIT")
    raw.close()


def test_sqlite_migrates_a_version_3_file(tmp_path):
    write_v3_file(tmp_path)
    assert "runner" not in {c[1] for c in schema_of(tmp_path / DB_NAME)[0]["jobs"]}

    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            assert pragma(store, "user_version") == SCHEMA_VERSION == 7
            # nothing lost; no stored job names a runner (version 3 did not record one)
            assert [(j.job_id, j.state, j.runner) for j in await store.list_jobs()] == [
                ("old", "running", None), ("paused", "paused", None), ("later", "running", None)]
            # and a migrated file records who runs a job
            await store.set_job_state("paused", "running", runner=OWNER)
            assert (await store.get_job("paused")).runner == OWNER
        finally:
            await store.aclose()

    trio.run(main)


def write_v4_file(folder) -> None:
    """The version 1 store as version 4 left it, with item "b" of job "old"
    running for a version 4 worker (no lease) and its attempt sent."""
    write_v3_file(folder)
    raw = sqlite3.connect(folder / DB_NAME, isolation_level=None)
    raw.execute("BEGIN")
    sqlite_backend._migrate_3_to_4(raw)
    raw.execute("UPDATE items SET state = 'running', owner = 'old-host:1:v4' WHERE job_id = 'old' AND item_id = 'b'")
    raw.execute("INSERT INTO attempts (job_id, item_id, attempt, model, state, started_at, finished_at, "
                "reserved_usd, unknown) VALUES ('old', 'b', 2, 'm1', 'sent', ?, ?, 0.5, 1)", (NOW, NOW))
    raw.execute("PRAGMA user_version = 4")
    raw.execute("COMMIT")
    raw.close()


def test_sqlite_migrates_a_version_4_file_to_leases_and_fences(tmp_path):
    write_v4_file(tmp_path)
    assert "fence" not in {c[1] for c in schema_of(tmp_path / DB_NAME)[0]["items"]}

    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            assert pragma(store, "user_version") == SCHEMA_VERSION == 7
            [row] = await store.running("old")
            assert (row.item_id, row.owner, row.lease_left, row.fence) == ("b", "old-host:1:v4", None, 0)
            # a version 4 claim has no lease: the first reap puts it back, its sent attempt stale
            assert await store.reap() == 1
            assert await store.reap() == 0
            stale = [(r.item_id, r.attempt, r.state) for r in await store.attempts("old")]
            assert ("b", 2, "stale") in stale
            assert (await store.costs("old")).unknown_usd == pytest.approx(0.5)  # still maybe billed
            # and a migrated file leases and fences its claims
            [claimed] = await store.claim("old", 1, NOW + 10, OWNER, lease_s=30.0)
            assert (claimed.item_id, claimed.fence) == ("c", 1)
            assert await store.workers() == []
        finally:
            await store.aclose()

    trio.run(main)


def test_sqlite_a_migrated_file_has_the_schema_of_a_fresh_one(tmp_path):
    write_v1_file(tmp_path / "old")
    SQLiteStore.open(tmp_path / "old").close()
    SQLiteStore.open(tmp_path / "new").close()
    SQLiteStore.open(tmp_path / "old").close()  # opening again changes nothing
    migrated, fresh = schema_of(tmp_path / "old" / DB_NAME), schema_of(tmp_path / "new" / DB_NAME)
    assert migrated == fresh
    assert "items_queue" in {name for name, _table, _sql in fresh[2]}
    write_v2_file(tmp_path / "v2")
    SQLiteStore.open(tmp_path / "v2").close()
    assert schema_of(tmp_path / "v2" / DB_NAME) == fresh
    assert "attempts_sent" in {name for name, _table, _sql in fresh[2]}
    write_v3_file(tmp_path / "v3")
    SQLiteStore.open(tmp_path / "v3").close()
    assert schema_of(tmp_path / "v3" / DB_NAME) == fresh
    write_v4_file(tmp_path / "v4")
    SQLiteStore.open(tmp_path / "v4").close()
    assert schema_of(tmp_path / "v4" / DB_NAME) == fresh
    assert {"deps", "gates", "artifacts"} <= set(fresh[0])
    assert "workers" in fresh[0] and "items_lease" in {name for name, _table, _sql in fresh[2]}
    write_v6_file(tmp_path / "v6")
    SQLiteStore.open(tmp_path / "v6").close()
    assert schema_of(tmp_path / "v6" / DB_NAME) == fresh
    assert {"rate_limits", "budgets", "budget_holds"} <= set(fresh[0])


def write_v6_file(folder) -> None:
    """The version 1 store as version 6 left it: migrated step by step to 6."""
    write_idle_v4_file(folder)
    raw = sqlite3.connect(folder / DB_NAME, isolation_level=None)
    raw.execute("BEGIN")
    sqlite_backend._migrate_4_to_5_pipelines(raw)
    sqlite_backend._migrate_5_to_6_leases(raw)
    raw.execute("PRAGMA user_version = 6")
    raw.execute("COMMIT")
    raw.close()


def test_sqlite_migrates_a_version_6_file_to_shared_limits(tmp_path):
    write_v6_file(tmp_path)
    assert "budgets" not in schema_of(tmp_path / DB_NAME)[0]

    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            assert pragma(store, "user_version") == SCHEMA_VERSION == 7
            assert [j.job_id for j in await store.list_jobs()] == ["old", "paused", "later"]
            await shares_after_migration(store, "old")
        finally:
            await store.aclose()

    trio.run(main)


def write_idle_v4_file(folder) -> None:
    """The version 1 store as version 4 left it, nothing running: migrated step by step to 4."""
    write_v3_file(folder)
    raw = sqlite3.connect(folder / DB_NAME, isolation_level=None)
    raw.execute("BEGIN")
    sqlite_backend._migrate_3_to_4(raw)
    raw.execute("PRAGMA user_version = 4")
    raw.execute("COMMIT")
    raw.close()


def test_sqlite_migrates_a_version_4_file(tmp_path):
    from storyloom.artifacts import Artifact

    write_idle_v4_file(tmp_path)
    assert "waiting" not in {c[1] for c in schema_of(tmp_path / DB_NAME)[0]["items"]}

    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            assert pragma(store, "user_version") == SCHEMA_VERSION == 7
            # nothing lost, nothing blocked: the queue reads as it did
            assert [(r.item_id, r.state) for r in await store.items("old")] == [
                ("a", "completed"), ("b", "pending"), ("c", "pending"), ("d", "skipped")]
            assert [(q.job_id, q.item_id) for q in await store.queued(10)] == [
                ("old", "c"), ("later", "g"), ("old", "b"), ("later", "f")]
            assert await store.position("paused", "e") == -1  # still held by its paused job
            assert await store.next_ready_at("old") == 0.0
            assert await store.gates() == []
            # and the migrated file runs pipelines: a follow-up waiting on a stored item
            assert await claim_ids(store, job_id="old", limit=1) == ["c"]
            follow_up = NewItem("c-qc", 2, "pending", {"item_id": "c-qc", "job_type": "qc"}, job_type="qc",
                                after=("b",))
            assert await store.record([rec("c", job_id="old", follow_ups=(follow_up,),
                                           artifacts=(Artifact("p", "chapter", "3", THAI),))], OWNER) == [True]
            assert await next_ids(store, job_type="qc") == []
            assert await claim_ids(store, job_id="old") == ["b"]
            await store.record([rec("b", job_id="old")], OWNER)
            assert await next_ids(store, job_type="qc") == [("old", "c-qc")]
            assert [(a.key, a.version, a.content) for a in await store.artifacts("p")] == [("3", 1, THAI)]
            # the paused job's held flag survived: resuming it releases its item
            await store.set_job_state("paused", "running")
            assert await next_ids(store, limit=1) == [("paused", "e")]  # level 0: first
        finally:
            await store.aclose()

    trio.run(main)


def test_sqlite_a_store_another_process_created_while_this_one_waited_opens_cleanly(tmp_path):
    """Two commands on a fresh folder: the second saw version 0, waited for the
    write lock, and finds the first one's schema; it must not migrate it."""
    import threading

    tmp_path.mkdir(exist_ok=True)
    raw = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("BEGIN IMMEDIATE")  # the first process, creating the schema
    opened: list = []
    second = threading.Thread(target=lambda: opened.append(_open_or_error(tmp_path)))
    second.start()
    second.join(0.5)  # it reads version 0, then waits on the write lock
    for statement in (sqlite_backend._TABLES + sqlite_backend._INDEXES + sqlite_backend._INDEXES_3
                      + sqlite_backend._TABLES_5 + sqlite_backend._INDEXES_5
                      + sqlite_backend._TABLES_6 + sqlite_backend._INDEXES_6):
        raw.execute(statement)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    raw.execute("COMMIT")
    raw.close()
    second.join(30)
    assert opened == [SCHEMA_VERSION]


def _open_or_error(folder):
    """The schema version the opened store has, or the error opening raised."""
    try:
        store = SQLiteStore.open(folder)
    except Exception as exc:  # the test shows it
        return exc
    try:
        return pragma(store, "user_version")
    finally:
        store.close()


@pytest.mark.parametrize("busy_timeout", [float("inf"), float("nan"), -1.0, 86401.0])
def test_open_refuses_a_busy_timeout_out_of_range_and_creates_nothing(tmp_path, busy_timeout):
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteStore.open(tmp_path / "state", busy_timeout=busy_timeout)
    assert not (tmp_path / "state").exists()
