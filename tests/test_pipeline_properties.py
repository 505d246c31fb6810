"""Property test: over random dependency DAGs, on a real SQLite store, no
item is ever claimed before every item it waits on has completed, failures
skip exactly what waits on them, and nothing claimable is left behind.

Some items are in the job from the start; others arrive as follow-ups of
another item's completion (so an item may wait on one that does not exist
yet, or never will, if its maker fails). Workers claim in random batches,
finish claimed items in random order, and fail some.
"""

from __future__ import annotations

import itertools
import random
import tempfile

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storyloom.plugins.stores.sqlite import SQLiteStore
from storyloom.store import AttemptRecord, JobRow, NewItem

OWNER = "host:1:prop"


@st.composite
def dags(draw):
    """n nodes; node i waits on some of 0..i-1 and is made at the start or by the completion of a lower node."""
    n = draw(st.integers(1, 18))
    nodes = []
    for i in range(n):
        after = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        maker = draw(st.one_of(st.none(), st.integers(0, i - 1))) if i else None
        nodes.append((sorted(after), maker))
    fails = draw(st.sets(st.integers(0, n - 1), max_size=3))
    return nodes, fails


def new_item(i: int, after: list[int]) -> NewItem:
    return NewItem(f"n{i}", 2, "pending", {"item_id": f"n{i}"}, after=tuple(f"n{a}" for a in after))


def ancestors(nodes, i: int) -> set[str]:
    seen: set[int] = set()
    todo = list(nodes[i][0])
    while todo:
        a = todo.pop()
        if a not in seen:
            seen.add(a)
            todo.extend(nodes[a][0])
    return {f"n{a}" for a in seen}


async def check(nodes, fails, seed, folder, job_id):
    rng = random.Random(seed)
    store = SQLiteStore.open(folder)
    try:
        made_by: dict[int, list[int]] = {}
        for i, (_after, maker) in enumerate(nodes):
            if maker is not None:
                made_by.setdefault(maker, []).append(i)
        first = [new_item(i, after) for i, (after, maker) in enumerate(nodes) if maker is None]
        await store.add_job(JobRow(job_id, "t", "running", {"job_id": job_id}, 0.0, 0.0), first)
        done: set[str] = set()
        ended_badly: set[str] = set()
        running: list[str] = []
        for _round in range(200):
            claimed = [c.item_id for c in await store.claim(job_id, rng.randint(1, 4), 1.0, OWNER)]
            for item_id in claimed:
                after = nodes[int(item_id[1:])][0]
                # The property: everything it waits on has completed.
                assert all(f"n{a}" in done for a in after), (item_id, after, done)
            running += claimed
            if not running:
                break
            rng.shuffle(running)
            for item_id in running[:rng.randint(1, len(running))]:
                i = int(item_id[1:])
                if i in fails:
                    record = AttemptRecord(job_id, item_id, 1, "failed", "m", 0.0, 1.0, error="boom")
                    ended_badly.add(item_id)
                else:
                    follow = tuple(new_item(j, nodes[j][0]) for j in made_by.get(i, ()))
                    record = AttemptRecord(job_id, item_id, 1, "completed", "m", 0.0, 1.0, follow_ups=follow)
                    done.add(item_id)
                assert await store.record([record], OWNER) == [True]
                running.remove(item_id)
        assert not running
        rows = {row.item_id: row for row in await store.items(job_id)}
        existing = set(rows)
        for item_id, row in rows.items():
            after = [f"n{a}" for a in nodes[int(item_id[1:])][0]]
            if row.state == "skipped":
                # Skipped only behind a failure, naming the failed item it (transitively) waits on.
                root = row.error.removeprefix("blocked: ").removesuffix(" failed")
                assert root in ended_badly and root in ancestors(nodes, int(item_id[1:])), (item_id, row.error)
            elif row.state == "pending":
                # Left only if it waits on something that never completed and did not end
                # badly: missing (its maker failed, or was itself left), or left pending too.
                waits = [a for a in after if a not in done]
                assert waits, (item_id, "pending with every dependency done")
                assert not any(rows[a].state in ("failed", "skipped") for a in waits if a in existing), item_id
                assert all(a not in existing or rows[a].state == "pending" for a in waits), item_id
            else:
                assert row.state in ("completed", "failed"), row
        assert await store.next_ready_at(job_id) is None
    finally:
        store.close()


@pytest.fixture(scope="module")
def folder():
    # One store for every example (each its own job): opening a fresh file per
    # example would be most of the test's time.
    with tempfile.TemporaryDirectory() as path:
        yield path


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@given(dag=dags(), seed=st.integers(0, 10_000))
def test_claims_respect_dependencies_over_random_dags(folder, dag, seed):
    nodes, fails = dag
    job_id = f"dag-{next(COUNTER)}"
    trio.run(check, nodes, fails, seed, folder, job_id)


COUNTER = itertools.count()
