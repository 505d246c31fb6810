"""Pipelines in the store: does a claim grow with blocked items, and what does
a completion with follow-ups cost?

    .venv/bin/python bench/blocked.py              # B = 0, 10,000 and 100,000 blocked items
    .venv/bin/python bench/blocked.py 50000        # one B

Each B runs in a temporary folder (removed after), on one SQLite store (WAL,
``synchronous=NORMAL``) through the Store protocol only:

* **claim**: one job of 1,000 ready items and B items blocked (each waits on
  an item that is not in the job, like a chapter whose previous chapter is not
  written yet; a tenth wait at a closed gate instead), all submitted *before*
  the ready ones, so the blocked items sit at the head of the queue order.
  Then the ready items are drained with ``claim_next`` of 256, as a worker
  does; the time per claimed item is printed (best of 5 drains, each on a
  fresh copy of the file), and the same for ``claim(job_id, ..., job_type=)``
  (``storyloom run`` of a pipeline).
* **record**: 1,000 claimed items completed in commits of 64 (the writer's
  group commit), first plain, then each with 2 follow-ups (one waiting on the
  other) and one artifact; the time per completion (best of 5), and VM
  steps per completion.

Times are ``time.perf_counter``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from storyloom.artifacts import Artifact
from storyloom.plugins.stores.sqlite import DB_NAME, SQLiteStore
from storyloom.store import AttemptRecord, JobRow, NewItem

READY = 1000
CLAIM = 256
COMMIT = 64
REPEATS = 5
OWNER = "bench:1:x"


def item(item_id: str, **kw) -> NewItem:
    return NewItem(item_id, 2, "pending", {"item_id": item_id, "fields": {"chapter": 1}}, **kw)


async def build(folder: Path, blocked: int) -> None:
    store = SQLiteStore.open(folder)
    try:
        items = [item(f"b{i}", gate="p:outline") if i % 10 == 0 else item(f"b{i}", after=(f"missing{i}",))
                 for i in range(blocked)]
        items += [item(f"r{i}", job_type="stage") for i in range(READY)]
        await store.add_job(JobRow("j", "stage", "running", {"job_id": "j"}, 0.0, 0.0), items)
    finally:
        store.close()


STEP = 10


async def drain(folder: Path, per_job: bool, steps: list[int] | None = None) -> float:
    store = SQLiteStore.open(folder)
    try:
        claimed = 0
        if steps is not None:
            def count() -> int:
                steps[0] += STEP
                return 0

            store._conn.set_progress_handler(count, STEP)
        start = time.perf_counter()
        while True:
            if per_job:
                got = await store.claim("j", CLAIM, 1.0, OWNER, job_type="stage")
            else:
                got = await store.claim_next("stage", CLAIM, 1.0, OWNER)
            if not got:
                break
            claimed += len(got)
        elapsed = time.perf_counter() - start
        assert claimed == READY, claimed
        return elapsed / READY
    finally:
        store.close()


async def complete(folder: Path, follow_ups: bool, steps: list[int] | None = None) -> float:
    store = SQLiteStore.open(folder)
    try:
        ids = [c.item_id for c in await store.claim_next("stage", READY, 1.0, OWNER)]
        if steps is not None:
            def count() -> int:
                steps[0] += STEP
                return 0

            store._conn.set_progress_handler(count, STEP)
        start = time.perf_counter()
        for first in range(0, len(ids), COMMIT):
            records = []
            for item_id in ids[first:first + COMMIT]:
                extra = {}
                if follow_ups:
                    extra = dict(follow_ups=(item(f"{item_id}-a", job_type="next"),
                                             item(f"{item_id}-b", job_type="next", after=(f"{item_id}-a",))),
                                 artifacts=(Artifact("p", "chapter", item_id, "text " * 50),))
                records.append(AttemptRecord("j", item_id, 1, "completed", "m", 0.0, 1.0, result_text="t", **extra))
            assert all(await store.record(records, OWNER))
        return (time.perf_counter() - start) / len(ids)
    finally:
        store.close()


def fresh_copy(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    shutil.copy(source / DB_NAME, target / DB_NAME)
    return target


def main(sizes: list[int]) -> None:
    for blocked in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / "base"
            trio.run(build, base, blocked)
            rows = []
            steps = {}
            for label, per_job in (("claim_next", False), ("claim(job, job_type)", True)):
                best = min(trio.run(drain, fresh_copy(base, Path(tmp) / "run"), per_job) for _ in range(REPEATS))
                rows.append((label, best))
                counted = [0]
                trio.run(drain, fresh_copy(base, Path(tmp) / "run"), per_job, counted)
                steps[label] = counted[0] / READY
            for label, follow in (("record, plain", False), ("record, 2 follow-ups + artifact", True)):
                best = min(trio.run(complete, fresh_copy(base, Path(tmp) / "run"), follow) for _ in range(REPEATS))
                rows.append((label, best))
                counted = [0]
                trio.run(complete, fresh_copy(base, Path(tmp) / "run"), follow, counted)
                steps[label] = counted[0] / READY
            print(f"B = {blocked:,} blocked items, {READY:,} ready")
            for label, seconds in rows:
                extra = f"  ({steps[label]:,.0f} VM steps per item)" if label in steps else ""
                print(f"  {label:34} {seconds * 1e6:8.1f} us per item{extra}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [0, 10_000, 100_000])
