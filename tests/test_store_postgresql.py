"""The postgresql store backend's own tests, on a real server: URL forms,
schema versions, StoreNotFound and StoreUnavailable (passwords never shown),
a lost connection, concurrent claims and opens, the pool's limiter, and the
claim's query plan.

Every backend's shared behaviour is in ``store_conformance.py`` (run by
``test_store.py``). A server: ``tests/pgserver.py`` (skipped with the reason
if none answers, unless ``STORYLOOM_REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

import random
import secrets
import socket
import time
import subprocess
import sys
import textwrap

import psycopg
import pytest
import trio

from storyloom.cli import main
from storyloom.errors import UsageError
from storyloom.plugins.stores import postgresql as pg
from storyloom.settings import Settings
from storyloom.store.protocol import NewItem
from storyloom.store import StoreNotFound, StoreUnavailable, StoreVersionError, open_store_url
from pgserver import pg_store_url
from storyloom.store.protocol import StartRecord
from store_conformance import JOB, NOW, OWNER, OTHER, STORES, job_row, new_items, rec
from store_conformance_shared import shares_after_migration


def open_url(url: str, create: bool = True):
    return open_store_url(url, stores=STORES, state_dir=".", settings=Settings(), create=create)


def schema_exists(database: str, schema: str) -> bool:
    with psycopg.connect(database) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- URLs (no server needed)


@pytest.mark.parametrize("url,schema,pool_size", [
    ("postgresql://u@h/db", "storyloom", 4),
    ("postgres://u@h:5433/db?schema=studio_a", "studio_a", 4),
    ("PostgreSQL://u@h/db?pool_size=9&sslmode=disable", "storyloom", 9),
    ("postgresql", "storyloom", 4),
])
def test_url_forms(url, schema, pool_size):
    target = pg.parse_url(url)
    assert (target.schema, target.pool_size) == (schema, pool_size)
    assert "schema=" not in target.conninfo and "pool_size" not in target.conninfo  # ours, not libpq's
    assert "connect_timeout=10" in target.conninfo
    assert target.conninfo.startswith("postgresql://")


@pytest.mark.parametrize("url,message", [
    ("postgresql://u@h/db?schema=bad-name", "schema must be"),
    ("postgresql://u@h/db?schema=1x", "schema must be"),
    ("postgresql://u@h/db?pool_size=0", "pool_size must be"),
    ("postgresql://u@h/db?pool_size=many", "pool_size must be"),
    ("postgresql://u@h/db?no_such_option=1", "no_such_option"),
    ("postgresql://u@h/db#frag", "no fragment"),
    ("postgresql:db", "postgresql://user@host"),
    ("postgresql://u@h/db?pool_mode=statement", "pool_mode must be session or transaction"),
    ("postgresql://u@h/db?pool_mode=transaction&listen=on", "listen=on needs a session of its own"),
])
def test_malformed_urls_are_usage_errors_without_the_password(url, message):
    url = url.replace("u@h", "u:s3cr3t@h")
    with pytest.raises(UsageError, match=message) as info:
        pg.parse_url(url)
    assert "s3cr3t" not in str(info.value)


def test_pool_mode_transaction_turns_wake_ups_off():
    assert (pg.parse_url("postgresql://u@h/db").listen, pg.parse_url("postgresql://u@h/db").pool_mode) == (
        True, "session")
    behind = pg.parse_url("postgresql://u@h/db?pool_mode=transaction&listen=off")
    assert (behind.listen, behind.pool_mode) == (False, "transaction")
    assert pg.parse_url("postgresql://u@h/db?pool_mode=transaction").listen is False
    assert "pool_mode" not in behind.conninfo  # ours, not libpq's


def test_a_password_in_the_query_is_masked_in_the_location():
    target = pg.parse_url("postgresql://h/db?user=u&password=s3cr3t")
    assert "s3cr3t" not in target.location and "password=***" in target.location
    assert target.secret == "s3cr3t"


# -- opening


def test_an_unreachable_server_is_unavailable_and_never_shows_the_password(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storyloom.yaml").write_text("{}\n")  # no settings file further up is read
    url = f"postgresql://loom:s3cr3t-pw@127.0.0.1:{free_port()}/studio?connect_timeout=3"

    async def opening():
        with pytest.raises(StoreUnavailable) as info:
            await open_url(url)
        return info.value

    err = trio.run(opening)
    assert err.path == f"postgresql://loom:***@127.0.0.1:{url.split(':')[3].split('/')[0]}/studio?connect_timeout=3"
    assert "cannot connect" in err.reason and "refused" in err.reason
    assert "s3cr3t-pw" not in str(err)
    # the CLI: one line, exit 5, no password
    assert main(["status", "--store", url]) == 5
    out = capsys.readouterr()
    assert "s3cr3t-pw" not in out.err + out.out
    assert "storyloom: error: postgresql://loom:***@127.0.0.1" in out.err and "Traceback" not in out.err


def test_a_missing_database_is_unavailable_with_a_hint(postgres_database):
    url = postgres_database.rsplit("/", 1)[0] + "/storyloom_no_such_db"

    async def opening():
        with pytest.raises(StoreUnavailable) as info:
            await open_url(url)
        return info.value

    err = trio.run(opening)
    assert "does not exist" in err.reason and "createdb" in err.hint


def test_create_false_finds_no_store_and_creates_nothing(postgres_database):
    url = pg_store_url(postgres_database)
    schema = pg.parse_url(url).schema

    async def opening():
        with pytest.raises(StoreNotFound, match="no store in") as info:
            await open_url(url, create=False)
        return info.value

    assert trio.run(opening).location == url
    assert not schema_exists(postgres_database, schema)


def test_read_only_commands_on_a_missing_schema_exit_2(postgres_database, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storyloom.yaml").write_text("{}\n")  # no settings file further up is read
    url = pg_store_url(postgres_database)
    assert main(["status", "--store", url]) == 2
    assert "no store in" in capsys.readouterr().err
    assert not schema_exists(postgres_database, pg.parse_url(url).schema)


def test_a_fresh_store_records_its_version_once(postgres_database):
    url = pg_store_url(postgres_database)
    schema = pg.parse_url(url).schema

    async def twice():
        for _ in range(2):
            store = await open_url(url)
            await store.aclose()
        store = await open_url(url, create=False)  # now it exists
        await store.aclose()

    trio.run(twice)
    with psycopg.connect(postgres_database) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".storyloom_schema ORDER BY version').fetchall()
    # one row per migration applied, each once, however many times it was opened
    assert rows == [(version,) for version in range(1, pg.SCHEMA_VERSION + 1)]


def test_a_newer_schema_is_refused(postgres_database):
    url = pg_store_url(postgres_database)
    schema = pg.parse_url(url).schema

    async def create():
        await (await open_url(url)).aclose()

    trio.run(create)
    with psycopg.connect(postgres_database) as conn:
        conn.execute(f'INSERT INTO "{schema}".storyloom_schema (version) VALUES (%s)', (pg.SCHEMA_VERSION + 1,))

    async def reopen():
        with pytest.raises(StoreVersionError, match=f"version {pg.SCHEMA_VERSION + 1}.*upgrade storyloom"):
            await open_url(url)

    trio.run(reopen)


def test_two_processes_creating_one_store_at_once_both_open_it(postgres_database, tmp_path):
    url = pg_store_url(postgres_database)
    script = textwrap.dedent(f"""
        import sys, trio
        sys.path.insert(0, {str(sys.path[0])!r})
        from storyloom.settings import Settings
        from storyloom.store import open_store_url
        from store_conformance import STORES
        async def main():
            store = await open_store_url({url!r}, stores=STORES, state_dir=".", settings=Settings())
            print(len(await store.list_jobs()))
            await store.aclose()
        trio.run(main)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert (proc.returncode, out.strip()) == (0, "0"), err


def test_schemas_are_separate_stores(postgres_database):
    one, two = pg_store_url(postgres_database), pg_store_url(postgres_database)

    async def both():
        a, b = await open_url(one), await open_url(two)
        try:
            await a.add_job(job_row(), new_items("x"))
            assert await b.get_job(JOB) is None
            await b.add_job(job_row(), new_items("y", "z"))  # the same job id, another store
            assert [i.item_id for i in await a.items(JOB)] == ["x"]
            assert b.location == two and a.schema != b.schema
        finally:
            await a.aclose()
            await b.aclose()

    trio.run(both)


def old_store(database: str, version: int) -> tuple[str, str]:
    """A store as ``version`` left it, in a fresh schema, holding one running
    job ``j``: its URL and schema."""
    url = pg_store_url(database)
    schema = pg.parse_url(url).schema
    with psycopg.connect(database) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(pg._VERSION_TABLE)
        for step in range(1, version + 1):
            for statement in pg.MIGRATIONS[step]:
                conn.execute(statement)
            conn.execute("INSERT INTO storyloom_schema (version) VALUES (%s)", (step,))
        conn.execute("INSERT INTO jobs VALUES ('j', 'chapter', 'running', '{}', NULL, 1, 1, NULL)")
    return url, schema


def test_a_version_1_store_migrates_to_leases_and_its_running_items_come_back(postgres_database):
    """Version 1 (before leases) had no lease: an item it left running reads as expired."""
    url, schema = old_store(postgres_database, 1)
    with psycopg.connect(postgres_database) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("INSERT INTO items (job_id, item_id, seq, level, state, definition, job_type, qseq, "
                     "level_since, owner, started_at) VALUES "
                     "('j', 'a', 0, 2, 'running', '{}', 'chapter', 1, 1, 'old-worker', 1), "
                     "('j', 'b', 1, 2, 'pending', '{}', 'chapter', 2, 1, NULL, NULL)")

    async def scenario():
        store = await open_url(url)
        try:
            [row] = await store.running("j")
            assert (row.item_id, row.owner, row.lease_left, row.fence) == ("a", "old-worker", None, 0)
            assert await store.reap() == 1
            assert (await store.counts("j"))["pending"] == 2
            claimed = await store.claim("j", 2, NOW, OWNER)
            assert {c.item_id: c.fence for c in claimed} == {"a": 2, "b": 1}  # reap +1, claim +1
            assert await store.workers() == []
        finally:
            await store.aclose()

    trio.run(scenario)
    with psycopg.connect(postgres_database) as conn:
        versions = conn.execute(f'SELECT version FROM "{schema}".storyloom_schema ORDER BY version').fetchall()
    assert versions == [(1,), (2,), (3,), (4,)]


def test_a_version_3_store_migrates_to_shared_limits(postgres_database):
    """Version 4 adds only tables: a version 3 store's job gets a budget, its models rate rows."""
    url, schema = old_store(postgres_database, 3)

    async def scenario():
        store = await open_url(url)
        try:
            assert [j.job_id for j in await store.list_jobs()] == ["j"]
            await shares_after_migration(store, "j")
            assert await store.budget_state("j") is not None
        finally:
            await store.aclose()

    trio.run(scenario)
    with psycopg.connect(postgres_database) as conn:
        (version,) = conn.execute(f'SELECT MAX(version) FROM "{schema}".storyloom_schema').fetchone()
    assert version == pg.SCHEMA_VERSION == 4


def test_a_batch_of_starts_and_outcomes_fences_each_row(pg_url):
    """Two or more rows go as one statement of arrays: each row's fence is checked on its own."""
    async def scenario():
        store = await open_url(pg_url)
        try:
            await store.add_job(job_row(), new_items("a", "b"))
            [lost] = await store.claim(JOB, 1, NOW, OWNER, lease_s=-1.0)  # a, run out
            assert await store.reap() == 1
            [taken] = await store.claim(JOB, 1, NOW, OTHER, only=["a"])
            [held] = await store.claim(JOB, 1, NOW, OWNER, only=["b"])
            starts = [StartRecord(JOB, "a", "m1", NOW, attempt=1, reserved_usd=0.5, fence=lost.fence),
                      StartRecord(JOB, "b", "m1", NOW, attempt=1, reserved_usd=0.5, fence=held.fence)]
            assert await store.record([], OWNER, started=starts) == [False, True]
            outcomes = [rec("a", fence=lost.fence, cost_usd=0.25, result_text="late"),
                        rec("b", fence=held.fence, sent=True, reserved_usd=0.5, cost_usd=0.125, result_text="b")]
            assert await store.record(outcomes, OWNER) == [False, True]
            assert await store.result(JOB, "a") is None and await store.result(JOB, "b") == ("b", None)
            assert [(r.item_id, r.owner, r.fence) for r in await store.running(JOB)] == [("a", OTHER, taken.fence)]
            assert sorted((r.item_id, r.state, r.cost_usd) for r in await store.attempts(JOB)) == [
                ("a", "stale", 0.25), ("b", "completed", 0.125)]
            costs = await store.costs(JOB)
            assert (costs.cost_usd, costs.unknown_attempts) == (pytest.approx(0.375), 0)
        finally:
            await store.aclose()

    trio.run(scenario)


# -- faults while open


def terminate_store_sessions(database: str) -> int:
    """End every storyloom session of ``database`` (as a server restart or an operator would)."""
    with psycopg.connect(database, autocommit=True) as admin:
        return len(admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name = 'storyloom'").fetchall())


def test_a_connection_the_server_drops_is_replaced_and_the_call_runs_again(pg_url, postgres_database):
    """Lost before its COMMIT, nothing of a transaction was written: it runs
    again on a new connection, once, and lands once."""
    async def scenario():
        store = await open_url(pg_url)
        try:
            await store.add_job(job_row(), new_items("a"))
            assert terminate_store_sessions(postgres_database)
            assert (await store.get_job(JOB)).job_id == JOB
            assert terminate_store_sessions(postgres_database)
            [claimed] = await store.claim(JOB, 1, NOW, OWNER)
            assert await store.record([rec("a", fence=claimed.fence, result_text="once")], OWNER) == [True]
            assert [(r.item_id, r.state) for r in await store.attempts(JOB)] == [("a", "completed")]
        finally:
            await store.aclose()

    trio.run(scenario)


@pytest.mark.slow
def test_a_server_that_takes_no_new_connection_is_unavailable(pg_admin, postgres_database):
    """The call runs again once after a lost connection, then gives up: a
    StoreUnavailable within seconds, not a hang."""
    name = f"storyloom_closed_{secrets.token_hex(4)}"
    pg_admin.execute(f'CREATE DATABASE "{name}"')
    database = postgres_database.rsplit("/", 1)[0] + "/" + name

    async def scenario():
        store = await open_url(pg_store_url(database))
        try:
            await store.add_job(job_row(), new_items("a"))
            pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            with psycopg.connect(postgres_database, autocommit=True) as admin:  # its sessions: from outside it
                assert admin.execute("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                     "WHERE datname = %s", (name,)).fetchone()[0]
            with pytest.raises(StoreUnavailable) as info:
                await store.get_job(JOB)
            assert "connection" in info.value.reason
        finally:
            await store.aclose()

    try:
        trio.run(scenario)
    finally:
        pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def deadlocks(database: str) -> int:
    """Deadlocks PostgreSQL has broken in ``database`` so far (its sessions
    flush their counts when they end)."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
                            ).fetchone()[0]


def test_renewals_and_records_of_one_worker_at_once_never_deadlock(pg_url, postgres_database):
    """A worker renews all it holds while it records starts of some: each
    takes the item rows in the one order, so neither waits for the other in a
    cycle (one that did would stall 1 s, then be aborted and run again)."""
    ids = [f"i{n:03d}" for n in range(60)]
    before = deadlocks(postgres_database)

    async def scenario():
        store = await open_url(pg_url)
        try:
            await store.add_job(job_row(), new_items(*ids))
            claimed = await store.claim(JOB, len(ids), NOW, OWNER, lease_s=60.0)
            rng = random.Random(7)

            async def renew_often():
                for _ in range(40):
                    held = [(JOB, c.item_id, c.fence) for c in claimed]
                    rng.shuffle(held)
                    assert len(await store.renew(OWNER, held, 60.0)) == len(ids)

            async def start_often():
                for _ in range(40):
                    some = rng.sample(claimed, 20)
                    starts = [StartRecord(JOB, c.item_id, "m1", NOW, attempt=0, fence=c.fence) for c in some]
                    assert await store.record([], OWNER, started=starts) == [True] * 20

            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(renew_often)
                    nursery.start_soon(start_often)
        finally:
            await store.aclose()

    trio.run(scenario)
    time.sleep(0.5)  # the closed sessions' counts reach the statistics
    assert deadlocks(postgres_database) == before


@pytest.mark.slow
def test_a_worker_frozen_inside_a_transaction_loses_its_locks_before_its_lease(pg_url):
    """A worker stopped mid-transaction (SIGSTOP, a paused VM) holds its rows
    locked, and a reap skips locked rows. The server ends that session after
    lease/3, so its items are reaped once the lease runs out; the frozen
    transaction, when it wakes, runs again on a new connection."""
    lease = 3.0
    woke = trio.Event()
    runs: list[str] = []

    def frozen_touch(cur, item_id: str) -> None:
        runs.append("run")
        cur.execute("UPDATE items SET started_at = 1 WHERE item_id = %s", (item_id,))  # its row: locked
        if len(runs) == 1:
            time.sleep(lease + 1.5)  # frozen for longer than the lease

    async def scenario():
        frozen = await open_store_url(pg_url, stores=STORES, state_dir=".", settings=Settings(lease=lease))
        reaper = await open_url(pg_url)
        try:
            await frozen.add_job(job_row(), new_items("a"))
            await frozen.claim(JOB, 1, NOW, OWNER, lease_s=lease)

            async def freeze():
                await frozen._run(frozen_touch, "a")
                woke.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(freeze)
                reaped = 0
                while not reaped and not woke.is_set():
                    await trio.sleep(0.1)
                    reaped = await reaper.reap()
                assert reaped == 1 and not woke.is_set()  # reaped while the frozen one still slept
            assert runs == ["run", "run"]  # its transaction was ended, and ran again once it woke
        finally:
            await frozen.aclose()
            await reaper.aclose()

    assert pg.idle_timeout(lease) == 1.0
    trio.run(scenario)


def test_a_bug_is_not_a_store_fault(pg_url):
    """An SQL error that is not about the storage passes unchanged (it is a bug to fix)."""
    async def scenario():
        store = await open_url(pg_url)
        try:
            with pytest.raises(psycopg.errors.UndefinedFunction):
                await store._run(pg._op_scalar, "SELECT no_such_function()", ())
        finally:
            await store.aclose()

    trio.run(scenario)


# -- concurrency


def test_two_stores_claiming_at_once_never_share_an_item(pg_url):
    ids = [f"i{n:03d}" for n in range(120)]

    async def scenario():
        first, second = await open_url(pg_url), await open_url(pg_url)
        await first.add_job(job_row(), new_items(*ids))
        got: dict[str, list[str]] = {OWNER: [], OTHER: []}

        async def drain(store, owner):
            while batch := await store.claim_next("chapter", 3, NOW, owner):
                got[owner] += [c.item_id for c in batch]

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(3):  # several claimers per store: the pool's connections at once
                    nursery.start_soon(drain, first, OWNER)
                    nursery.start_soon(drain, second, OTHER)
        finally:
            await first.aclose()
            await second.aclose()
        return got

    got = trio.run(scenario)
    assert sorted(got[OWNER] + got[OTHER]) == ids  # each exactly once
    assert got[OWNER] and got[OTHER]


def test_more_calls_than_connections_wait_for_the_limiter(pg_url):
    async def scenario():
        store = await open_url(pg_url + "&pool_size=2")
        await store.add_job(job_row(), new_items("a"))
        results = []

        async def read():
            results.append(await store.counts(JOB))

        try:
            assert store.pool_size == 2 and store._limiter.total_tokens == 2
            async with trio.open_nursery() as nursery:
                for _ in range(30):
                    nursery.start_soon(read)
        finally:
            await store.aclose()
        return results

    results = trio.run(scenario)
    assert len(results) == 30 and all(r["pending"] == 1 for r in results)


# -- query plans


def test_claims_walk_the_queue_index(pg_url, postgres_database):
    async def fill():
        store = await open_url(pg_url)
        try:
            await store.add_job(job_row(), new_items(*[f"i{n:04d}" for n in range(2000)]))
            # another job type ahead in the queue: a walk of the whole queue would meet it first
            await store.add_job(job_row("summaries", job_type="summary"),
                                new_items(*[f"s{n:04d}" for n in range(2000)], level=0))
            await store.add_job(job_row("two"), new_items(*[f"i{n:04d}" for n in range(2000)]))
        finally:
            await store.aclose()

    trio.run(fill)
    schema = pg.parse_url(pg_url).schema
    with psycopg.connect(postgres_database) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("ANALYZE items")
        params = {"job_type": "chapter", "now": NOW, "limit": 8, "owner": OWNER, "exclude": [], "job_id": JOB, "only": None,
                  "lease_s": 30.0}
        plans = {name: "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params))
                 for name, sql in (("claim_next", pg._CLAIM_NEXT), ("claim", pg._CLAIM),
                                   ("claim_stage", pg._CLAIM_STAGE))}
        conn.rollback()
    assert "Index Scan using items_queue on items" in plans["claim_next"], plans["claim_next"]
    assert "Index Scan using items_claim on items" in plans["claim"], plans["claim"]
    assert "Index Scan using items_claim_stage on items" in plans["claim_stage"], plans["claim_stage"]
    for plan in plans.values():
        assert "LockRows" in plan and "Sort" not in plan.split("LockRows")[1], plan  # in index order, no sort


def test_a_claim_walks_past_no_blocked_item(pg_url, postgres_database):
    """The claim indexes hold only claimable items: 500 items ahead of the
    one ready item, waiting on one not done (or on a closed gate), are not
    met, let alone filtered out, by any claim's walk."""
    async def fill():
        store = await open_url(pg_url)
        try:
            await store.add_job(job_row(), [
                *(NewItem(f"w{n:03d}", 2, "pending", {}, after=("last",)) for n in range(250)),
                *(NewItem(f"g{n:03d}", 2, "pending", {}, gate="proj:outline") for n in range(250)),
                *new_items("last")])
        finally:
            await store.aclose()

    trio.run(fill)
    schema = pg.parse_url(pg_url).schema
    params = {"job_type": "chapter", "now": NOW, "limit": 1, "owner": OWNER, "exclude": [], "job_id": JOB,
              "only": None, "lease_s": 30.0}
    with psycopg.connect(postgres_database) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("ANALYZE items")
        conn.commit()  # a rollback below would undo the SET
        for sql in (pg._CLAIM, pg._CLAIM_STAGE, pg._CLAIM_NEXT):
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN (ANALYZE, BUFFERS OFF) " + sql, params))
            assert "Index Scan using items_" in plan and "Rows Removed by Filter" not in plan, plan
            assert "rows=1 loops=1" in plan.split("LockRows")[1], plan  # one row read: the ready one
            conn.rollback()  # EXPLAIN ANALYZE ran the claim


def test_a_version_1_store_migrates_to_pipelines(postgres_database):
    """A store written before pipelines (version 1) opens as the newest version: its
    items keep their state and order and nothing waits; new pipeline jobs work."""
    url = pg_store_url(postgres_database)
    schema = pg.parse_url(url).schema
    with psycopg.connect(postgres_database) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(pg._VERSION_TABLE)
        for statement in pg.MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO storyloom_schema (version) VALUES (1)")
        conn.execute("INSERT INTO jobs (job_id, job_type, state, definition, created_at, updated_at) "
                     "VALUES (%s, 'chapter', 'pending', '{}', 1, 1)", (JOB,))
        for seq, item_id in enumerate(("b", "a")):
            conn.execute("INSERT INTO items (job_id, item_id, seq, level, state, definition, job_type, qseq, "
                         "level_since) VALUES (%s, %s, %s, 2, 'pending', '{}', 'chapter', %s, 1)",
                         (JOB, item_id, seq, seq + 1))

    async def use():
        store = await open_url(url, create=False)
        try:
            assert [c.item_id for c in await store.claim(JOB, 5, NOW, OWNER)] == ["b", "a"]
            await store.add_job(job_row("pipe"), [*new_items("x"), NewItem("y", 2, "pending", {}, after=("x",))])
            assert [c.item_id for c in await store.claim("pipe", 5, NOW, OWNER)] == ["x"]
            assert await store.gates() == [] and await store.artifacts("p") == []
        finally:
            await store.aclose()

    trio.run(use)
    with psycopg.connect(postgres_database) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".storyloom_schema ORDER BY version').fetchall()
    assert rows == [(1,), (2,), (3,), (4,)]


# -- the test fixture itself: no server means skipped with the reason, or failed when required


#: A test module for a pytest of its own that loads only tests/pgserver.py.
_NEEDS_SERVER = """
from pgserver import pg_admin, pg_url, postgres_database  # noqa: F401


def test_needs_a_server(pg_url):
    assert pg_url


def test_needs_nothing():
    pass
"""


@pytest.mark.slow
@pytest.mark.parametrize("required", [False, True])
def test_no_server_skips_the_postgresql_tests_unless_they_are_required(tmp_path, required):
    import os
    from pathlib import Path

    (tmp_path / "test_needs_server.py").write_text(_NEEDS_SERVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent)
    env["STORYLOOM_TEST_POSTGRES"] = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    if required:
        env["STORYLOOM_REQUIRE_POSTGRES"] = "1"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:storyloom",
                          f"--rootdir={tmp_path}", "test_needs_server.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    if required:
        assert out.returncode == 1, text
        assert "STORYLOOM_REQUIRE_POSTGRES=1 but PostgreSQL cannot be used" in text and "1 passed, 1 error" in text
    else:
        assert out.returncode == 0, text
        assert "no PostgreSQL server for the tests" in text and "refused" in text, text
        assert "1 passed, 1 skipped" in text  # the other test ran; the one that needs a server was skipped
