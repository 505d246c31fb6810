"""Leases and fences in the kernel: a worker that loses an item's lease
cancels its attempt at once; a renewal that fails lets the lease run out
rather than pretend; killed, stopped and far-away workers lose their items
within the lease, and their late outcomes are refused but still counted.
No process id is consulted anywhere."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

import storyloom

from storyloom import ConfigError
from storyloom.api import run_job
from storyloom.plugins.stores.sqlite import DB_NAME
from storyloom.settingsfile import load_settings
from storyloom.testing import Loom
from storyloom.store import AttemptRecord, StartRecord, StoreNotFound, StoreUnavailable, WorkerInfo
from test_cli import cli, completed_attempts, popen, read_store

SETTINGS = """
models:
  sim: {{provider: simulated, latency_ms: {latency}, output_tokens: 20, hang: {hang}, seed: 5,
         price: {{input: 1.0, output: 2.0}}}}
default_models: [sim]
progress: []
queue: {{lease: {lease}}}
"""
ONE = """
job_id: L
job_type: qc_processing
config: {max_parallel: 1, max_retries: 0, timeout_per_item: 10m}
items:
  - {item_id: a}
"""
TWO = ONE + "  - {item_id: b}\n"
OTHER = "far-away:1:0badc0de"  # pid 1 on another host: a pid check could tell nothing


def settings(hang: float = 0.0, lease: str = "1s", latency: int = 1) -> str:
    return SETTINGS.format(hang=hang, lease=lease, latency=latency)


def test_the_lease_is_a_setting_of_the_queue(tmp_path):
    path = tmp_path / "storyloom.yaml"
    assert load_settings(None).lease == 30.0
    path.write_text("queue: {lease: 45s}\n")
    assert load_settings(path).lease == 45.0
    path.write_text("queue:\n  lease: 500ms\n")
    with pytest.raises(ConfigError, match=r"storyloom.yaml:2:\d+.*queue.lease.*at least 1s"):
        load_settings(path)
    path.write_text("queue: {leese: 5s}\n")
    with pytest.raises(ConfigError, match="leese"):
        load_settings(path)


async def wait_until(check, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.02)


def test_a_lost_lease_cancels_the_attempt_at_once_and_its_late_outcome_cannot_land(loom, capsys):
    """The worker stops renewing in time (stood in for by ageing its lease);
    another worker reaps the item and takes it: the first cancels its attempt,
    which would otherwise hang for timeout_per_item (10 minutes)."""
    loom.write("storyloom.yaml", settings(hang=1.0))  # every request hangs
    path = loom.write("job.yaml", ONE)
    ended: dict = {}

    async def main():
        async with trio.open_nursery() as nursery:
            async def run():
                ended["summary"] = await run_job(path, options=loom.options())

            nursery.start_soon(run)
            await wait_until(lambda: _sent(loom, "L", 1))
            async with loom.store() as store:
                db = sqlite3.connect(loom.state_dir / DB_NAME, isolation_level=None)
                # No checkpoint between these: the worker cannot renew in between.
                db.execute("UPDATE items SET lease_until = 0 WHERE job_id = 'L'")
                db.close()
                assert await store.reap() == 1
                [taken] = await store.claim("L", 1, time.time(), OTHER, lease_s=60.0)
                with trio.fail_after(30):  # not 10 minutes: the attempt was cancelled
                    while not capsys.readouterr().err.count("lost the lease of L/a"):
                        await trio.sleep(0.05)
                assert await store.record([AttemptRecord(
                    "L", "a", 1, "completed", "sim", time.time(), time.time(), input_tokens=5, output_tokens=7,
                    cost_usd=0.001, result_text="from the other worker", fence=taken.fence)], OTHER) == [True]

    trio.run(main)
    assert ended["summary"].status == "completed"
    rows = loom.read(lambda store: store.attempts("L"))
    assert sorted((r.state, r.error_kind) for r in rows) == [("completed", None), ("stale", "LEASE_LOST")]
    assert loom.read(lambda store: store.result("L", "a"))[0] == "from the other worker"
    costs = loom.read(lambda store: store.costs("L"))
    assert costs.unknown_attempts == 1  # the cancelled request may have been billed: its worst case counts


def test_when_renewals_fail_the_attempt_is_cancelled_once_its_lease_may_have_run_out(loom, capsys, monkeypatch):
    """Fault: the store refuses every write (a lock held elsewhere) while an
    attempt runs. The keeper keeps trying; once the lease may have run out it
    cancels the attempt (another worker may hold the item by now), and the
    run stops with the store's error; the next resume finishes the item."""
    monkeypatch.setenv("STORYLOOM_SQLITE_BUSY_TIMEOUT", "0.1")
    loom.write("storyloom.yaml", settings(hang=1.0))
    path = loom.write("job.yaml", ONE)
    raised: list = []

    async def main():
        async with trio.open_nursery() as nursery:
            async def run():
                try:
                    await run_job(path, options=loom.options())
                except StoreUnavailable as exc:
                    raised.append(exc)

            nursery.start_soon(run)
            await wait_until(lambda: _sent(loom, "L", 1))
            lock = sqlite3.connect(loom.state_dir / DB_NAME, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            try:
                with trio.fail_after(30):
                    while not raised:
                        await trio.sleep(0.05)
            finally:
                lock.execute("ROLLBACK")
                lock.close()

    trio.run(main)
    err = capsys.readouterr().err
    assert "cannot renew leases" in err and "the database is locked" in err
    assert "lost the lease of L/a" in err  # cancelled, not left hanging for timeout_per_item
    assert "locked" in raised[0].reason
    loom.write("storyloom.yaml", settings(hang=0.0))
    resumed = loom.resume("L")  # the lease has run out: reaped at start, then run
    assert resumed.summary.status == "completed"
    rows = loom.read(lambda store: store.attempts("L"))
    assert sorted(r.state for r in rows) == ["completed", "stale"]


def test_a_burst_does_not_end_while_its_own_items_run_in_the_store_without_a_claim_here(loom_each_store, monkeypatch):
    """A claim the store committed but whose answer never reached the worker
    (its connection died during COMMIT) leaves an item running under the
    worker's own name that it does not know it holds. A burst that took
    "mine" for "ending here" would exit and leave it for no one; instead it
    waits out the lease, reaps it and runs it."""
    import storyloom.kernel

    loom = loom_each_store
    me = "this-host:1:feedface"
    monkeypatch.setattr(storyloom.kernel, "make_owner", lambda: me)
    loom.write("storyloom.yaml", settings(lease="1s"))
    loom.submit(TWO)

    async def orphan(store):
        return await store.claim("L", 1, time.time(), me, lease_s=1.0)

    [orphaned] = loom.read(orphan)
    result = loom.work()
    assert result.summaries["L"].status == "completed"
    rows = loom.read(lambda store: store.attempts("L"))
    assert sorted((r.item_id, r.state) for r in rows if r.state == "completed") == [("a", "completed"),
                                                                                     ("b", "completed")]
    assert orphaned.item_id == "a" and loom.items("L")["a"].state == "completed"


class ReapedMeanwhile:
    """The SQLite store, with another worker's reap landing at the worst
    moment: after a job run over the queue found nothing of its job pending
    (the far-away worker's item still leased), just before it counts what is
    left. Stood in for at the store seam, since no timing can aim at it."""

    def __init__(self, inner, state_dir: Path) -> None:
        self.inner = inner
        self.location = inner.location
        self.db = state_dir / DB_NAME
        self.armed = True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def release(self, job_id, owner, item_ids=None, fences=None):
        if item_ids is None and self.armed:  # the finishing run lets go of what it holds
            self.armed = False
            db = sqlite3.connect(self.db, isolation_level=None)
            db.execute("UPDATE items SET lease_until = 0 WHERE job_id = 'L' AND owner = ?", (OTHER,))
            db.close()
            assert await self.inner.reap() == 1
        return await self.inner.release(job_id, owner, item_ids, fences)


def test_an_item_reaped_while_the_job_run_finishes_is_run_not_called_blocked(loom):
    """Over the queue a run finishes once nothing of its job is pending here,
    leaving items other workers hold to them. One of those reaped between
    that look and the final counts is pending and ready: the job goes on in
    the queue (here, in this same burst), rather than end paused as blocked."""
    from storyloom.plugins.stores.sqlite import open_sqlite

    class Plugin:
        @storyloom.hookimpl
        def loom_register_stores(self, register):
            async def opener(url, *, state_dir, settings, create):
                inner = await open_sqlite("sqlite", state_dir=state_dir, settings=settings, create=create)
                return ReapedMeanwhile(inner, Path(state_dir))

            register("reaped-meanwhile", opener)

    loom.write("storyloom.yaml", settings())
    loom.submit(TWO)
    [taken] = loom.read(lambda store: store.claim("L", 1, time.time(), OTHER, lease_s=60.0))
    assert taken.item_id == "a"
    result = loom.work(plugins=(Plugin(),), store="reaped-meanwhile")
    assert result.summaries["L"].status == "completed"
    assert {item_id: row.state for item_id, row in loom.items("L").items()} == {"a": "completed", "b": "completed"}


async def _sent_in(store, job_id: str, at_least: int) -> bool:
    return (await store.costs(job_id)).unknown_attempts >= at_least


def _sent(loom, job_id: str, at_least: int):
    async def check() -> bool:
        try:
            async with loom.store() as store:
                return await store.get_job(job_id) is not None and await _sent_in(store, job_id, at_least)
        except Exception:  # not created yet
            return False

    return check()


# -- many processes


JOBS = """
job_id: {job_id}
job_type: qc_processing
config: {{max_parallel: {parallel}, max_retries: 1, timeout_per_item: 1m}}
items:
  - {{project_id: p, chapters: 1-{n}}}
"""


def submit(folder: Path, job_id: str, n: int, parallel: int = 2) -> None:
    """``storyloom submit`` in ``folder``, in this process (no interpreter to start)."""
    assert Loom(folder).submit(JOBS.format(job_id=job_id, n=n, parallel=parallel), name=f"{job_id}.yaml") == job_id


async def holding(store, job_ids) -> dict[str, set[tuple[str, str]]]:
    """owner -> the (job_id, item_id) it holds running now."""
    held: dict[str, set[tuple[str, str]]] = {}
    for job_id in job_ids:
        for row in await store.running(job_id):
            held.setdefault(row.owner, set()).add((job_id, row.item_id))
    return held


async def sent_by(store, job_ids, owner: str) -> set[tuple[str, str]]:
    """What ``owner`` holds whose request it has sent (its start is stored: the item names a model)."""
    return {(job_id, row.item_id) for job_id in job_ids for row in await store.running(job_id)
            if row.owner == owner and row.model is not None}


async def stored_results(store, job_ids) -> int:
    """How many items of ``job_ids`` have a stored result; many reads at once
    (a store in threads, PostgreSQL, answers them in parallel)."""
    found = [0]
    limiter = trio.CapacityLimiter(8)

    async def one(job_id: str, item_id: str) -> None:
        async with limiter:
            stored = await store.result(job_id, item_id) is not None
        found[0] += stored  # after the await: another task may have counted meanwhile

    async with trio.open_nursery() as nursery:
        for job_id in job_ids:
            for item in await store.items(job_id):
                nursery.start_soon(one, job_id, item.item_id)
    return found[0]


def owner_of(held: dict, pid: int) -> str | None:
    return next((owner for owner in held if f":{pid}:" in owner), None)


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s")


def stop_outside_a_write(proc: subprocess.Popen, db: Path) -> None:
    """SIGSTOP ``proc``, but not inside a write transaction: SQLite has one
    write lock, and a process stopped while holding it stops every writer
    until it is continued (no lease can help; see docs/store.md)."""
    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        probe = sqlite3.connect(db, timeout=1.0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # it holds the lock: let it commit, then try again
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        finally:
            probe.close()
    raise AssertionError("the worker always held the write lock")


def pg_sessions(store_url: str, owner: str | None = None) -> str:
    """What every storyloom session is doing, and who waits on whom: the
    message of a reap that does not come."""
    import psycopg

    from storyloom.plugins.stores.postgresql import parse_url

    target = parse_url(store_url)
    with psycopg.connect(target.conninfo, autocommit=True) as probe:
        probe.execute(f"SET search_path TO {target.schema}")
        rows = probe.execute(
            "SELECT pid, client_port, state, wait_event_type, wait_event, pg_blocking_pids(pid), "
            "clock_timestamp() - xact_start, clock_timestamp() - state_change, left(query, 160) "
            "FROM pg_stat_activity WHERE application_name = 'storyloom' ORDER BY client_port").fetchall()
        held = probe.execute(
            "SELECT job_id, item_id, state, fence, lease_until - extract(epoch FROM clock_timestamp()) "
            "FROM items WHERE owner = %s", (owner,)).fetchall() if owner else []
    sockets = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
    return "\n".join(" | ".join(str(v) for v in row) for row in rows + held) + "\n" + sockets


#: Seconds for the server to finish what a stopped or killed worker had sent
#: it (a COMMIT still in the socket lands after the signal).
SETTLE = 0.5


def server_ports(pid: int, port: int) -> set[int]:
    """The local ports of ``pid``'s connections to the server at ``port``."""
    lines = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    return {int(line.split()[2].rsplit(":", 1)[1]) for line in lines if f"pid={pid}," in line}


def settle(store_url: str, ports: set[int], timeout: float = 15.0) -> None:
    """Wait until the server runs nothing for these client ports: a statement
    the worker sent before it stopped or died (a COMMIT under load, a statement
    waiting on a lock) may land well after the signal. What is left is idle,
    and uncommitted work there is rolled back, never applied later."""
    import psycopg

    from storyloom.plugins.stores.postgresql import parse_url

    target = parse_url(store_url)
    deadline = time.monotonic() + timeout
    with psycopg.connect(target.conninfo, autocommit=True) as probe:
        while True:
            active = probe.execute("SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) "
                                   "AND state = 'active'", (list(ports),)).fetchone()[0]
            if not active:
                return
            assert time.monotonic() < deadline, f"{active} statements still running after {timeout}s"
            time.sleep(0.05)


@pytest.mark.slow
def test_four_workers_drain_the_queue_exactly_once_through_a_kill_and_a_stop(tmp_path, store_url):
    """The issue's test: on PostgreSQL 2,000 items, many in flight per
    worker; on SQLite (one host) 300, fewer at once."""
    # 3 s: on PostgreSQL a worker stopped inside a transaction keeps its rows
    # locked until the server ends that session (after lease/3, 1 s), so the
    # reap can have them only after that; it must be well inside the lease.
    lease = 3.0
    store = f"store: '{store_url}'\n" if store_url else ""
    # 250 ms: the queue lasts long enough that both workers hold items when signalled.
    n, parallel, latency = (1000, 16, 250) if store_url else (150, 2, 400)
    pg_port = (urlsplit(store_url).port or 5432) if store_url else None
    (tmp_path / "storyloom.yaml").write_text(settings(lease="3s", latency=latency) + store)
    submit(tmp_path, "m1", n, parallel)
    submit(tmp_path, "m2", n, parallel)
    jobs = ("m1", "m2")
    procs = [popen("work", "--burst", "-q", cwd=tmp_path) for _ in range(4)]
    doomed, sleeper = procs[0], procs[1]
    try:
        def both_hold():
            held = read_store(tmp_path, lambda store: holding(store, jobs))
            if owner_of(held, doomed.pid) and owner_of(held, sleeper.pid):
                return held
            return None

        wait_for(both_hold, what="items held by the doomed and the stopped worker")
        queue = json.loads(cli("queue", "--json", cwd=tmp_path).stdout)
        assert len(queue["workers"]) >= 3 and any(w["holding"] for w in queue["workers"])
        # Stop one first, at a moment it holds items (it may be between claims:
        # then let it go on and stop it again), then kill the other. On
        # PostgreSQL at any moment, inside a transaction too.
        tries = []  # (held by the stopped one, sent of those, the other holds some, seconds stopped)
        for _ in range(50):
            if store_url:
                ports = server_ports(sleeper.pid, pg_port)
                sleeper.send_signal(signal.SIGSTOP)
                stopped_at = time.monotonic()
                time.sleep(SETTLE)
                settle(store_url, ports | server_ports(sleeper.pid, pg_port))
            else:
                stop_outside_a_write(sleeper, tmp_path / ".storyloom" / DB_NAME)
                stopped_at = time.monotonic()
            held = read_store(tmp_path, lambda store: holding(store, jobs))
            stopped_owner, killed_owner = owner_of(held, sleeper.pid), owner_of(held, doomed.pid)
            # What the stopped one has sent stays as it is until reaped.
            lost = read_store(tmp_path, lambda store: sent_by(store, jobs, stopped_owner)) if stopped_owner else set()
            if held.get(stopped_owner) and killed_owner and lost:
                break
            tries.append((len(held.get(stopped_owner, ())), len(lost), bool(killed_owner),
                          round(time.monotonic() - stopped_at, 2)))
            sleeper.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        doomed_ports = server_ports(doomed.pid, pg_port) if store_url else set()
        doomed.kill()  # SIGKILL: no cleanup at all
        doomed.wait(timeout=10)
        time.sleep(SETTLE)
        if store_url:
            settle(store_url, doomed_ports)
        # Read once it is dead: until then it may finish what it had sent.
        killed_sent = read_store(tmp_path, lambda store: sent_by(store, jobs, killed_owner)) if killed_owner else set()
        lost |= killed_sent
        stopped_items = held.get(stopped_owner, set())
        assert stopped_items and lost, tries

        def stopped_lost_all():
            now = read_store(tmp_path, lambda store: holding(store, jobs))
            return not (now.get(stopped_owner, set()) & stopped_items)

        try:
            wait_for(stopped_lost_all, timeout=30, what="reaping of the stopped worker's items")
        except AssertionError:
            for proc in procs[2:]:
                print("live worker", proc.pid, "exit", proc.poll())
            if store_url:
                print(pg_sessions(store_url, stopped_owner))
            raise
        back_after = time.monotonic() - stopped_at
        # Back within the lease and one reap interval (lease/3), plus room for a loaded machine.
        assert back_after <= lease + lease / 3 + 3.0, back_after
        time.sleep(max(0.0, lease + 1.0 - (time.monotonic() - stopped_at)))  # stopped longer than the lease
        sleeper.send_signal(signal.SIGCONT)
        errs = {}
        for proc in procs[1:]:
            _out, errs[proc.pid] = err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "Traceback" not in err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)
    per_item = read_store(tmp_path, completed_attempts)
    if len(per_item) != 2 * n:  # say which, and what their attempts are
        async def missing(store):
            return [(job, item.item_id, item.state, [(r.attempt, r.state, r.error_kind) for r in await store.attempts(job)
                                                     if r.item_id == item.item_id])
                    for job in jobs for item in await store.items(job) if (job, item.item_id) not in per_item]
        print("stopped", stopped_owner, "killed", killed_owner, read_store(tmp_path, missing))
        print([(row.job_id, row.state, row.reason) for row in read_store(tmp_path, lambda store: store.list_jobs())])
        print("\n".join(f"worker {pid}: {err}" for pid, err in errs.items()))
    assert len(per_item) == 2 * n and set(per_item.values()) == {1}  # every item completed exactly once
    assert read_store(tmp_path, lambda store: stored_results(store, jobs)) == 2 * n

    async def stale(store):
        return [(job, r.item_id) for job in jobs for r in await store.attempts(job) if r.state == "stale"]

    # Every request the stopped or the killed worker had sent is on record as a
    # stale attempt: reaped (outcome unknown, worst case counted), or settled by
    # the stopped worker's late, refused outcome with its real cost.
    not_stale = lost - set(read_store(tmp_path, stale))
    if not_stale:  # say whose they were, and what their attempts are
        async def attempts_of(store):
            return {key: [(r.attempt, r.state, r.error_kind, r.model) for r in await store.attempts(key[0])
                          if r.item_id == key[1]] for key in sorted(not_stale)}
        print("stopped", stopped_owner, "killed", killed_owner, "the killed one's:", sorted(not_stale & killed_sent),
              read_store(tmp_path, attempts_of))
    assert not not_stale
    states = read_store(tmp_path, lambda store: store.list_jobs())
    assert {row.job_id: row.state for row in states} == {"m1": "completed", "m2": "completed"}
    listing = json.loads(cli("status", "--json", cwd=tmp_path).stdout)
    assert listing["workers"] == []  # the survivors left; the killed one's heartbeat has aged
    if store_url:  # it really ran on PostgreSQL
        assert not (tmp_path / ".storyloom" / DB_NAME).exists()


@pytest.mark.slow
def test_a_worker_registered_as_another_host_dies_and_its_items_come_back_within_the_lease(tmp_path, store_url):
    """The far-away worker claims five items, sends their requests, and is
    never heard from again. A pid check would call it alive forever (another
    host); its leases run out instead, and a local worker finishes the job."""
    lease = 2.0
    store = f"store: '{store_url}'\n" if store_url else ""
    (tmp_path / "storyloom.yaml").write_text(settings(lease="2s", latency=20) + store)
    db = tmp_path / ".storyloom" / DB_NAME
    worker = popen("work", "-q", cwd=tmp_path)  # waits for work
    try:
        async def up(store) -> bool:
            return any(w.pid == worker.pid for w in await store.workers())

        def worker_up() -> bool:
            try:
                return read_store(tmp_path, up)
            except StoreNotFound:
                return False

        wait_for(worker_up, timeout=60, what="heartbeat of the local worker")
        # Held still while the job is submitted and the far-away worker claims,
        # so that the far-away worker gets its five items.
        if store_url:
            worker.send_signal(signal.SIGSTOP)
        else:
            stop_outside_a_write(worker, db)
        try:
            submit(tmp_path, "far", 20)

            async def die_far_away(store):
                await store.heartbeat(WorkerInfo(OTHER, "far-away", 1, time.time(), lease))
                claimed = await store.claim("far", 5, time.time(), OTHER, lease_s=lease)
                await store.record([], OTHER, started=[StartRecord("far", c.item_id, "sim", time.time(), attempt=1,
                                                                   reserved_usd=0.01, fence=c.fence)
                                                       for c in claimed])
                return {c.item_id for c in claimed}

            taken = read_store(tmp_path, die_far_away)
            claimed_at = time.monotonic()
        finally:
            worker.send_signal(signal.SIGCONT)
        status = json.loads(cli("status", "far", "--json", cwd=tmp_path).stdout)
        if time.monotonic() - claimed_at < lease * 0.9:  # still within its lease: shown as a live worker
            assert ("far-away:1", {"far": 5}) in [(w["worker"], w["holding"]) for w in status["workers"]]

        def far_lost_all():
            held = read_store(tmp_path, lambda store: holding(store, ["far"]))
            return OTHER not in held

        wait_for(far_lost_all, timeout=30, what="reaping of the far-away worker's items")
        back_after = time.monotonic() - claimed_at
        # Within the lease and one reap interval (lease/3), plus room for a loaded machine.
        assert back_after <= lease + lease / 3 + 2.0, back_after
        wait_for(lambda: read_store(tmp_path, lambda store: store.counts("far"))["completed"] == 20,
                 timeout=60, what="completion of every item")
        worker.send_signal(signal.SIGINT)
        _out, err = worker.communicate(timeout=60)
        assert worker.returncode == 130 and "Traceback" not in err, err
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.wait(timeout=10)
    per_item = read_store(tmp_path, completed_attempts)
    assert len(per_item) == 20 and set(per_item.values()) == {1}
    rows = read_store(tmp_path, lambda store: store.attempts("far"))
    assert {r.item_id for r in rows if r.state == "stale"} == taken  # the far-away attempts: stale, maybe billed
    assert read_store(tmp_path, lambda store: store.costs("far")).unknown_usd == pytest.approx(0.05)
    assert json.loads(cli("status", "--json", cwd=tmp_path).stdout)["workers"] == []
    assert db.exists() != bool(store_url)  # it really ran on that backend
