"""The conformance suite every Store backend must pass.

Not collected on its own (the name does not start with ``test_``):
``tests/test_store.py`` star-imports these tests next to the
``store_backend`` fixture below, parametrised over every backend registered
through ``loom_register_stores`` (:data:`BACKENDS`), so each test runs once per
backend. A backend is opened through the registry, from the URL
:data:`TEST_URLS` gives for a fresh, empty store; a backend with no test URL
is skipped, and so is PostgreSQL when no server answers (unless
``STORYLOOM_REQUIRE_POSTGRES=1``).

Tests are sync functions wrapped by :func:`trio_test`, which opens the store
and runs the async body inside one ``trio.run`` (the project does not use
pytest-trio), so a backend whose connection belongs to a trio run fits.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import trio

from storyloom.job import CRITICAL_WITHIN_S, HIGH_WITHIN_S
from storyloom.pluginmanager import make_plugin_manager
from storyloom.registry import collect
from storyloom.settings import Settings
from storyloom.store import open_store_url
from storyloom.store.protocol import (
    ITEM_STATES,
    AttemptRecord,
    JobExists,
    JobRow,
    NewItem,
    QueuedRow,
    StartRecord,
    WorkerInfo,
)

__all__ = []  # filled in by trio_test: only the tests leave with `import *`

JOB = "job-1"
OWNER = "host-a:100:aaaa"
OTHER = "host-b:200:bbbb"
NOW = 1_000_000.0
THAI = "บทที่หนึ่ง: เจ้าหญิงกับมังกร"
DAY = 24 * 3600.0


#: Every registered store backend (URL scheme -> opener), bundled and entry-point ones.
STORES = collect(make_plugin_manager()).stores

#: scheme -> URL of a fresh, empty store, given the test's request and
#: tmp_path (None: skip the backend). PostgreSQL: a fresh schema in the
#: session's database (``tests/pgserver.py``; skipped, with the reason, if no
#: server answers).
TEST_URLS: dict[str, Callable[[pytest.FixtureRequest, Path], str | None]] = {
    "sqlite": lambda request, tmp_path: f"sqlite://{tmp_path / 'state'}",
    "postgresql": lambda request, tmp_path: request.getfixturevalue("pg_url"),
}


def _one_scheme_per_backend(stores: dict[str, Any]) -> list[str]:
    """One scheme per opener (``postgres`` is ``postgresql`` again), the one with a test URL if any."""
    chosen: dict[Any, str] = {}
    for scheme in sorted(stores):
        if stores[scheme] not in chosen or scheme in TEST_URLS:
            chosen[stores[scheme]] = scheme
    return sorted(chosen.values())


BACKENDS = _one_scheme_per_backend(STORES)


class Backend:
    """One backend under test: ``await backend.open()`` gives a fresh, empty store."""

    def __init__(self, scheme: str, url: str, tmp_path: Path) -> None:
        self.scheme, self.url, self.tmp_path = scheme, url, tmp_path

    async def open(self) -> Any:
        return await open_store_url(self.url, stores=STORES, state_dir=self.tmp_path / "state", settings=Settings(),
                                    create=True)


@pytest.fixture(params=BACKENDS)
def store_backend(request, tmp_path) -> Backend:
    """Each registered backend, by scheme."""
    url = TEST_URLS.get(request.param, lambda _request, _path: None)(request, tmp_path)
    if url is None:
        pytest.skip(f"no test store configured for the {request.param!r} backend")
    return Backend(request.param, url, tmp_path)


def conformance_test(listing: list[str]) -> Callable[[Callable[..., Awaitable[None]]], Callable[[Any], None]]:
    """A decorator turning ``async def test_x(store)`` into a sync pytest test
    that opens a fresh store of each backend and closes it after, and lists it
    in ``listing`` (its module's ``__all__``: only the tests leave with
    ``import *``). A body that takes ``backend`` too may open a second
    connection to the store (another worker's) with ``await backend.open()``."""

    def decorate(fn: Callable[..., Awaitable[None]]) -> Callable[[Any], None]:
        wants_backend = "backend" in inspect.signature(fn).parameters

        def test(store_backend: Backend) -> None:
            async def main() -> None:
                store = await store_backend.open()
                try:
                    await (fn(store, store_backend) if wants_backend else fn(store))
                finally:
                    await store.aclose()

            trio.run(main)

        test.__name__ = test.__qualname__ = fn.__name__
        test.__doc__ = fn.__doc__
        test.__module__ = fn.__module__
        listing.append(fn.__name__)
        return test

    return decorate


trio_test = conformance_test(__all__)


# -- builders


def job_row(job_id: str = JOB, *, state: str = "running", created_at: float = NOW, job_type: str = "chapter",
            **definition: Any) -> JobRow:
    data = {"job_id": job_id, "job_type": job_type, "vars": {"title": THAI}, **definition}
    return JobRow(job_id, job_type, state, data, created_at, created_at)


def new_items(*ids: str, level: int = 2, state: str = "pending", deadline: float | None = None) -> list[NewItem]:
    return [NewItem(i, level, state, {"item_id": i, "fields": {"title": f"{THAI} {i}"}}, deadline) for i in ids]


def rec(item_id: str, state: str = "completed", *, attempt: int = 1, model: str | None = "m1",
        job_id: str = JOB, **kw: Any) -> AttemptRecord:
    kw.setdefault("started_at", NOW)
    kw.setdefault("finished_at", NOW + 1)
    return AttemptRecord(job_id=job_id, item_id=item_id, attempt=attempt, state=state, model=model, **kw)


async def add(store: Any, *ids: str, job_id: str = JOB, level: int = 2, job_type: str = "chapter",
              state: str = "running") -> None:
    await store.add_job(job_row(job_id, job_type=job_type, state=state), new_items(*ids, level=level))


async def add_levels(store: Any, job_id: str, *layout: tuple[str, int], job_type: str = "chapter") -> None:
    """A job whose items have the levels given: ``("a", 2), ("b", 0)``."""
    await store.add_job(job_row(job_id, job_type=job_type),
                        [NewItem(i, level, "pending", {"item_id": i}) for i, level in layout])


async def claim_ids(store: Any, limit: int = 100, now: float = NOW, owner: str = OWNER, job_id: str = JOB) -> list[str]:
    return [c.item_id for c in await store.claim(job_id, limit, now, owner)]


async def next_ids(store: Any, limit: int = 100, now: float = NOW, *, job_type: str = "chapter",
                   exclude: Any = ()) -> list[tuple[str, str]]:
    """What claim_next claims for OWNER, as (job_id, item_id)."""
    return [(c.job_id, c.item_id) for c in await store.claim_next(job_type, limit, now, OWNER, exclude)]


async def levels(store: Any, job_id: str = JOB) -> dict[str, int]:
    return {row.item_id: row.level for row in await store.items(job_id)}


# -- jobs


@trio_test
async def test_add_job_roundtrips_definition_with_unicode(store):
    definition = {"nested": {"list": [1, 2.5, None, True]}, "language": "th", "title": THAI}
    job = job_row(**definition)
    await store.add_job(job, new_items("a"))
    got = await store.get_job(JOB)
    assert got == job
    assert got.definition["title"] == THAI
    assert got.definition["vars"] == {"title": THAI}
    assert [j.job_id for j in await store.list_jobs()] == [JOB]


@trio_test
async def test_wait_for_change_returns_by_its_timeout_and_the_store_goes_on(store):
    """Wake-ups are best effort: a wait returns by its timeout, True (a
    notice) or False (none, or a backend without them), and the store
    answers as ever after it."""
    with trio.fail_after(5):
        assert await store.wait_for_change(0.05) in (True, False)
    await add(store, "a")
    with trio.fail_after(5):
        assert await store.wait_for_change(0.05) in (True, False)
    assert await claim_ids(store) == ["a"]


@trio_test
async def test_get_job_unknown_is_none(store):
    assert await store.get_job("nope") is None
    assert await store.list_jobs() == []


@trio_test
async def test_add_job_twice_raises_and_writes_nothing(store):
    await store.add_job(job_row(marker="first"), new_items("a", "b"))
    with pytest.raises(JobExists):
        await store.add_job(job_row(marker="second"), new_items("c", "d", "e"))
    assert (await store.get_job(JOB)).definition["marker"] == "first"
    assert [i.item_id for i in await store.items(JOB)] == ["a", "b"]
    assert (await store.counts(JOB))["pending"] == 2
    assert len(await store.list_jobs()) == 1


@trio_test
async def test_add_job_with_duplicate_item_ids_writes_nothing(store):
    with pytest.raises(ValueError):
        await store.add_job(job_row(), new_items("a", "b", "a"))
    assert await store.get_job(JOB) is None
    assert await store.items(JOB) == []


@trio_test
async def test_add_job_keeps_skipped_items_out_of_claims(store):
    await store.add_job(job_row(), new_items("a") + new_items("s", state="skipped") + new_items("b"))
    assert await claim_ids(store) == ["a", "b"]
    counts = await store.counts(JOB)
    assert counts["skipped"] == 1 and counts["running"] == 2


@trio_test
async def test_delete_job_removes_everything_of_it_and_frees_its_id(store):
    await add(store, "a", "b")
    await add(store, "a", job_id="other")
    await store.claim(JOB, 2, NOW, OWNER)
    await store.record([rec("a"), rec("b", "failed", error_kind="TIMEOUT")], OWNER)
    assert await store.delete_job(JOB) is True
    assert await store.get_job(JOB) is None
    assert await store.items(JOB) == [] and await store.attempts(JOB) == []
    assert await store.result(JOB, "a") is None
    assert [j.job_id for j in await store.list_jobs()] == ["other"]
    assert [i.item_id for i in await store.items("other")] == ["a"]  # another job's items stay
    assert await store.delete_job(JOB) is False
    await add(store, "c")  # the id can be used again
    assert [i.item_id for i in await store.items(JOB)] == ["c"]
    assert (await store.costs(JOB)).attempts == 0


@trio_test
async def test_set_job_state_roundtrip(store):
    await add(store, "a")
    before = (await store.get_job(JOB)).updated_at
    await store.set_job_state(JOB, "paused", "budget reached: ถึงงบแล้ว")
    got = await store.get_job(JOB)
    assert (got.state, got.reason) == ("paused", "budget reached: ถึงงบแล้ว")
    assert got.updated_at >= before
    assert got.created_at == NOW
    await store.set_job_state(JOB, "running")
    got = await store.get_job(JOB)
    assert (got.state, got.reason) == ("running", None)
    assert (await store.list_jobs())[0].state == "running"


@trio_test
async def test_a_running_job_names_its_runner_until_it_leaves_running(store):
    await add(store, "a")
    assert (await store.get_job(JOB)).runner is None
    await store.set_job_state(JOB, "running", runner=OWNER)
    assert (await store.get_job(JOB)).runner == OWNER
    assert (await store.list_jobs())[0].runner == OWNER
    await store.set_job_state(JOB, "running", runner="host:2:other")  # a resume elsewhere takes it over
    assert (await store.get_job(JOB)).runner == "host:2:other"
    await store.set_job_state(JOB, "interrupted", "stopped")
    assert (await store.get_job(JOB)).runner is None
    await store.set_job_state(JOB, "paused", "budget", runner=OWNER)  # only a running job has one
    assert (await store.get_job(JOB)).runner is None


@trio_test
async def test_set_job_state_of_unknown_job_raises(store):
    with pytest.raises(KeyError):
        await store.set_job_state("nope", "paused")


@trio_test
async def test_list_jobs_oldest_first(store):
    await store.add_job(job_row("late", created_at=NOW + 10), new_items("a"))
    await store.add_job(job_row("early", created_at=NOW), new_items("a"))
    assert [j.job_id for j in await store.list_jobs()] == ["early", "late"]


# -- claim


@trio_test
async def test_claim_order_is_level_then_insertion_order(store):
    layout = [("a", 2), ("b", 0), ("c", 3), ("d", 0), ("e", 1), ("f", 2), ("g", 1)]
    await store.add_job(job_row(), [NewItem(i, lvl, "pending", {"item_id": i}) for i, lvl in layout])
    got = []
    for _ in range(4):  # order holds across batches too
        got += await claim_ids(store, limit=2)
    assert got == ["b", "d", "e", "g", "a", "f", "c"]


@trio_test
async def test_claim_returns_definition_and_attempt_history(store):
    await add(store, "a")
    [first] = await store.claim(JOB, 10, NOW, OWNER)
    assert (first.item_id, first.attempts, first.last_model) == ("a", 0, None)
    assert first.definition == {"item_id": "a", "fields": {"title": f"{THAI} a"}}
    await store.record([rec("a", "pending", model="m1", error_kind="TIMEOUT")], OWNER)
    [again] = await store.claim(JOB, 10, NOW, OWNER)
    assert (again.attempts, again.last_model) == (1, "m1")


@trio_test
async def test_claim_respects_limit(store):
    await add(store, *"abcde")
    assert await claim_ids(store, limit=3) == ["a", "b", "c"]
    assert await claim_ids(store, limit=0) == []
    assert await claim_ids(store, limit=10) == ["d", "e"]


@trio_test
async def test_claim_only_among_given_ids_keeps_their_order(store):
    await add(store, "a", "b", "c", "d", "e")
    got = await store.claim(JOB, 10, NOW, OWNER, only=["d", "b", "nope"])
    assert [c.item_id for c in got] == ["b", "d"]
    assert await store.claim(JOB, 10, NOW, OWNER, only=["b"]) == []  # running now
    assert await claim_ids(store) == ["a", "c", "e"]


@trio_test
async def test_claim_never_returns_an_item_twice(store):
    ids = [f"i{n:03d}" for n in range(50)]
    await add(store, *ids)
    seen = []
    for turn in range(20):
        seen += await claim_ids(store, limit=7, owner=(OWNER, OTHER)[turn % 2])
    assert sorted(seen) == ids  # each exactly once
    assert await claim_ids(store) == []
    assert (await store.counts(JOB))["running"] == 50


@trio_test
async def test_claim_only_touches_its_job(store):
    await add(store, "a", "b", job_id="one")
    await add(store, "a", "c", job_id="two")
    assert await claim_ids(store, job_id="one") == ["a", "b"]
    assert (await store.counts("two"))["pending"] == 2
    assert await claim_ids(store, job_id="two") == ["a", "c"]
    assert await store.record([rec("a", job_id="one")], OWNER) == [True]
    assert (await store.counts("two"))["running"] == 2
    assert await store.result("two", "a") is None


@trio_test
async def test_claim_respects_not_before(store):
    await add(store, "a", "b")
    await claim_ids(store, limit=1)
    await store.record([rec("a", "pending", not_before=NOW + 60)], OWNER)
    assert await claim_ids(store, now=NOW + 1) == ["b"]
    assert await claim_ids(store, now=NOW + 59.9) == []
    assert await claim_ids(store, now=NOW + 60) == ["a"]  # not_before <= now


@trio_test
async def test_ready_retry_keeps_its_level(store):
    """A retried critical item, once ready, goes before normal ones."""
    await store.add_job(job_row(), new_items("crit", level=0) + new_items("n1", "n2", level=2))
    assert await claim_ids(store, limit=1) == ["crit"]
    await store.record([rec("crit", "pending", not_before=NOW + 5)], OWNER)
    assert await claim_ids(store, limit=1, now=NOW + 1) == ["n1"]
    assert await claim_ids(store, limit=5, now=NOW + 5) == ["crit", "n2"]


@trio_test
async def test_next_ready_at(store):
    assert await store.next_ready_at(JOB) is None
    await add(store, "a", "b")
    assert await store.next_ready_at(JOB) == 0.0
    await claim_ids(store)
    assert await store.next_ready_at(JOB) is None  # nothing pending
    await store.record([rec("a", "pending", not_before=NOW + 30), rec("b", "pending", not_before=NOW + 20)], OWNER)
    assert await store.next_ready_at(JOB) == NOW + 20
    await claim_ids(store, now=NOW + 20)
    assert await store.next_ready_at(JOB) == NOW + 30


# -- record


@trio_test
async def test_record_completed_stores_result(store):
    await add(store, "a", "b")
    await claim_ids(store)
    applied = await store.record(
        [rec("a", result_text=f"เนื้อเรื่อง {THAI}", result_data={"words": 3, "ภาษา": "ไทย"},
             route={"strategy": "round_robin", "picked": "m1"})],
        OWNER,
    )
    assert applied == [True]
    assert await store.result(JOB, "a") == (f"เนื้อเรื่อง {THAI}", {"words": 3, "ภาษา": "ไทย"})
    assert await store.result(JOB, "b") is None
    assert await store.result(JOB, "missing") is None
    [row] = await store.items(JOB, "completed")
    assert (row.item_id, row.attempts, row.last_model, row.error_kind) == ("a", 1, "m1", None)


@trio_test
async def test_record_result_without_data(store):
    await add(store, "a")
    await claim_ids(store)
    await store.record([rec("a", result_text="plain")], OWNER)
    assert await store.result(JOB, "a") == ("plain", None)


@trio_test
async def test_record_failed_keeps_error_and_no_result(store):
    await add(store, "a")
    await claim_ids(store)
    assert await store.record([rec("a", "failed", error_kind="AUTH_ERROR", error="bad key")], OWNER) == [True]
    [row] = await store.items(JOB)
    assert (row.state, row.attempts, row.error_kind, row.error) == ("failed", 1, "AUTH_ERROR", "bad key")
    assert await store.result(JOB, "a") is None
    assert await store.running(JOB) == []


@trio_test
async def test_record_retry_goes_pending_with_error(store):
    await add(store, "a")
    await claim_ids(store)
    await store.record([rec("a", "pending", error_kind="API_RATE_LIMIT", error="429", not_before=NOW + 9)], OWNER)
    [row] = await store.items(JOB)
    assert (row.state, row.attempts, row.error_kind, row.error) == ("pending", 1, "API_RATE_LIMIT", "429")
    assert await store.running(JOB) == []
    assert await store.next_ready_at(JOB) == NOW + 9
    # the next attempt can complete it
    await claim_ids(store, now=NOW + 9)
    assert await store.record([rec("a", attempt=2, model="m2")], OWNER) == [True]
    [row] = await store.items(JOB)
    assert (row.state, row.attempts, row.last_model, row.error_kind) == ("completed", 2, "m2", None)


@trio_test
async def test_record_only_applies_for_the_owner(store):
    await add(store, "a")
    await claim_ids(store, owner=OWNER)
    assert await store.record([rec("a")], OTHER) == [False]
    assert (await store.counts(JOB))["running"] == 1
    assert (await store.costs(JOB)).attempts == 0
    assert await store.result(JOB, "a") is None
    assert [r.owner for r in await store.running(JOB)] == [OWNER]


@trio_test
async def test_record_for_an_unclaimed_item_changes_nothing(store):
    await add(store, "a")
    assert await store.record([rec("a"), rec("ghost")], OWNER) == [False, False]
    assert (await store.counts(JOB))["pending"] == 1
    assert (await store.costs(JOB)).attempts == 0


@trio_test
async def test_no_double_completion(store):
    await add(store, "a", "b")
    await claim_ids(store)
    assert await store.record([rec("a", result_text="first", cost_usd=0.5)], OWNER) == [True]
    # the same item again, later or in the same batch: ignored
    assert await store.record([rec("a", result_text="second", cost_usd=0.5)], OWNER) == [False]
    assert await store.record(
        [rec("b", result_text="one"), rec("b", "failed", result_text="two", attempt=2)], OWNER
    ) == [True, False]
    assert await store.result(JOB, "a") == ("first", None)
    assert await store.result(JOB, "b") == ("one", None)
    costs = await store.costs(JOB)
    assert (costs.attempts, costs.cost_usd) == (2, 0.5)
    counts = await store.counts(JOB)
    assert (counts["completed"], counts["failed"]) == (2, 0)


@trio_test
async def test_record_batch_mixes_applied_and_not(store):
    await add(store, "a", "b", "c")
    await claim_ids(store, limit=2)  # a, b
    got = await store.record([rec("a"), rec("c"), rec("b", "failed")], OWNER)
    assert got == [True, False, True]
    counts = await store.counts(JOB)
    assert (counts["completed"], counts["failed"], counts["pending"]) == (1, 1, 1)


@trio_test
async def test_record_rejects_an_unknown_state(store):
    await add(store, "a")
    await claim_ids(store)
    with pytest.raises(ValueError):
        await store.record([rec("a"), rec("a", "running")], OWNER)
    # the whole batch is refused: the good record did not apply either
    assert (await store.counts(JOB))["running"] == 1


@trio_test
async def test_start_record_shows_model_in_running(store):
    await add(store, "a", "b")
    await claim_ids(store)
    await store.record([], OWNER, started=[StartRecord(JOB, "a", "m2", NOW + 3)])
    await store.record([], OTHER, started=[StartRecord(JOB, "b", "m9", NOW + 4)])  # not its item
    rows = {r.item_id: r for r in await store.running(JOB)}
    assert (rows["a"].model, rows["a"].started_at, rows["a"].owner) == ("m2", NOW + 3, OWNER)
    assert (rows["b"].model, rows["b"].started_at) == (None, NOW)


@trio_test
async def test_start_and_finish_in_one_batch(store):
    await add(store, "a", "b")
    await claim_ids(store)
    applied = await store.record([rec("a", model="m1")], OWNER, started=[StartRecord(JOB, "b", "m2", NOW + 1)])
    assert applied == [True, True]  # the record, then the start
    [running] = await store.running(JOB)
    assert (running.item_id, running.model) == ("b", "m2")


@trio_test
async def test_record_reports_which_starts_applied(store):
    await add(store, "a", "b", "c")
    await claim_ids(store)
    await store.cancel(JOB, "stop")  # every item skipped: no start may apply now
    applied = await store.record([], OWNER, started=[StartRecord(JOB, "a", "m1", NOW + 1, attempt=1,
                                                                 reserved_usd=0.5)])
    assert applied == [False]
    costs = await store.costs(JOB)
    assert (costs.attempts, costs.unknown_attempts, costs.unknown_usd) == (0, 0, 0.0)


@trio_test
async def test_record_lists_starts_after_records(store):
    await add(store, "a", "b", "c")
    await claim_ids(store)
    applied = await store.record([rec("a")], OWNER, started=[
        StartRecord(JOB, "b", "m1", NOW + 1, attempt=1, reserved_usd=0.5),
        StartRecord(JOB, "c", "m1", NOW + 1, attempt=1, reserved_usd=0.5),
    ])
    assert applied == [True, True, True]
    assert await store.record([], OTHER, started=[StartRecord(JOB, "b", "m1", NOW + 2, attempt=2)]) == [False]
    assert (await store.costs(JOB)).unknown_attempts == 2


@trio_test
async def test_running_is_ordered_by_start(store):
    await add(store, "a", "b", "c")
    await claim_ids(store, limit=1, now=NOW + 5)  # a
    await claim_ids(store, limit=1, now=NOW + 1)  # b
    await claim_ids(store, limit=1, now=NOW + 3)  # c
    rows = await store.running(JOB)
    assert [(r.item_id, r.started_at, r.attempts) for r in rows] == [
        ("b", NOW + 1, 0), ("c", NOW + 3, 0), ("a", NOW + 5, 0)
    ]


# -- counts, costs, items


@trio_test
async def test_counts_has_every_state(store):
    assert await store.counts(JOB) == dict.fromkeys(ITEM_STATES, 0)
    await store.add_job(job_row(), new_items(*"abcde") + new_items("s", state="skipped"))
    await claim_ids(store, limit=3)
    await store.record([rec("a"), rec("b", "failed")], OWNER)
    assert await store.counts(JOB) == {"pending": 2, "running": 1, "completed": 1, "failed": 1, "skipped": 1}


@trio_test
async def test_costs_include_failed_attempts(store):
    assert (await store.costs(JOB)).attempts == 0
    await add(store, "a", "b")
    await claim_ids(store)
    await store.record([
        rec("a", "pending", model="m1", input_tokens=10, output_tokens=0, cost_usd=0.25, error_kind="TIMEOUT"),
        rec("b", "failed", model="m1", input_tokens=5, output_tokens=1, cost_usd=0.125, error_kind="INVALID_INPUT"),
    ], OWNER)
    await claim_ids(store)
    await store.record([rec("a", attempt=2, model="m2", input_tokens=100, output_tokens=50, cost_usd=0.5)], OWNER)
    costs = await store.costs(JOB)
    assert costs.cost_usd == pytest.approx(0.875)
    assert (costs.input_tokens, costs.output_tokens, costs.attempts) == (115, 51, 3)
    assert costs.by_model["m1"] == {
        "cost_usd": pytest.approx(0.375), "input_tokens": 15, "output_tokens": 1, "attempts": 2, "completed": 0
    }
    assert costs.by_model["m2"] == {
        "cost_usd": pytest.approx(0.5), "input_tokens": 100, "output_tokens": 50, "attempts": 1, "completed": 1
    }
    assert set(costs.by_model) == {"m1", "m2"}


@trio_test
async def test_spend_by_model_sums_every_job(store):
    assert await store.spend_by_model() == {}
    await add(store, "a", "b")
    await add(store, "c", job_id="job-2")
    await claim_ids(store)
    await claim_ids(store, job_id="job-2")
    await store.record([rec("a", model="m1", cost_usd=0.25), rec("b", "failed", model="m2", cost_usd=0.5),
                        rec("c", model="m1", cost_usd=0.125, job_id="job-2")], OWNER)
    spend = await store.spend_by_model()
    assert spend == {"m1": pytest.approx(0.375), "m2": pytest.approx(0.5)}


@trio_test
async def test_items_in_order_and_filtered(store):
    await store.add_job(
        job_row(), new_items("z", level=3) + new_items("y", level=0) + new_items("x", state="skipped")
    )
    await claim_ids(store, limit=1)  # y
    await store.record([rec("y", "failed", error="boom")], OWNER)
    everything = await store.items(JOB)
    assert [(i.item_id, i.state) for i in everything] == [("z", "pending"), ("y", "failed"), ("x", "skipped")]
    assert everything[0].definition == {"item_id": "z", "fields": {"title": f"{THAI} z"}}
    assert [i.item_id for i in await store.items(JOB, "failed")] == ["y"]
    assert [i.item_id for i in await store.items(JOB, "pending")] == ["z"]
    assert await store.items(JOB, "completed") == []
    assert await store.items("other-job") == []


# -- release and recover


@trio_test
async def test_release_returns_only_that_owners_items(store):
    await add(store, *"abcde")
    await claim_ids(store, limit=3, owner=OWNER)
    await claim_ids(store, limit=2, owner=OTHER)
    assert await store.release(JOB, OWNER) == 3
    counts = await store.counts(JOB)
    assert (counts["pending"], counts["running"]) == (3, 2)
    assert {r.owner for r in await store.running(JOB)} == {OTHER}
    # the released owner can no longer record them
    assert await store.record([rec("a")], OWNER) == [False]
    assert await store.release(JOB, OWNER) == 0
    # and they are claimable again, in their old order
    assert await claim_ids(store, owner=OTHER) == ["a", "b", "c"]


@trio_test
async def test_release_keeps_attempt_count(store):
    await add(store, "a")
    await claim_ids(store)
    await store.record([rec("a", "pending")], OWNER)
    await claim_ids(store)
    await store.release(JOB, OWNER)
    [item] = await store.claim(JOB, 1, NOW, OWNER)
    assert item.attempts == 1


@trio_test
async def test_recover_dead_owner_only(store):
    dead, live = "host:1:dead", "host:2:live"
    await add(store, *"abcd")
    await claim_ids(store, limit=2, owner=dead)
    await claim_ids(store, limit=1, owner=live)
    asked = []

    def owner_alive(owner: str) -> bool:
        asked.append(owner)
        return owner != dead

    assert await store.recover(JOB, owner_alive) == 2
    assert set(asked) == {dead, live}
    counts = await store.counts(JOB)
    assert (counts["pending"], counts["running"]) == (3, 1)
    assert [r.owner for r in await store.running(JOB)] == [live]
    assert await store.record([rec("a")], dead) == [False]
    assert await claim_ids(store, owner=live) == ["a", "b", "d"]
    assert await store.recover(JOB, lambda owner: True) == 0


@trio_test
async def test_recover_only_touches_its_job(store):
    await add(store, "a", job_id="one")
    await add(store, "a", job_id="two")
    await claim_ids(store, job_id="one")
    await claim_ids(store, job_id="two")
    assert await store.recover("one", lambda owner: False) == 1
    assert (await store.counts("two"))["running"] == 1


# -- scale


@pytest.mark.slow
@trio_test
async def test_hundred_thousand_items(store):
    n = 100_000
    items = [NewItem(f"i{k:06d}", 3 - k % 4, "pending", {"item_id": f"i{k:06d}"}) for k in range(n)]
    started = time.perf_counter()
    await store.add_job(job_row(), items)
    assert time.perf_counter() - started < 30  # generous: this is a smoke check, not a benchmark
    assert (await store.counts(JOB))["pending"] == n
    started = time.perf_counter()
    got = await claim_ids(store, limit=256)
    assert time.perf_counter() - started < 2
    assert got[:3] == ["i000003", "i000007", "i000011"]  # level 0 items, in order
    assert len(got) == 256


# -- retry bookkeeping, partial release, definitions


@trio_test
async def test_free_attempts_first_start_and_last_error_kind_come_back_with_a_claim(store):
    await add(store, "a")
    await claim_ids(store)
    await store.record([rec("a", "pending", attempt=1, free=True, error_kind="API_RATE_LIMIT",
                            started_at=NOW + 5)], OWNER)
    await claim_ids(store, now=NOW + 10)
    await store.record([rec("a", "pending", attempt=2, error_kind="TIMEOUT", started_at=NOW + 20)], OWNER)
    (claimed,) = await store.claim(JOB, 1, NOW + 30, OWNER)
    assert claimed.attempts == 2
    assert claimed.free_attempts == 1  # only the first attempt was free
    assert claimed.first_started_at == NOW + 5  # the first attempt's start, kept
    assert claimed.last_error_kind == "TIMEOUT"
    (row,) = await store.items(JOB)
    assert (row.attempts, row.free_attempts) == (2, 1)  # items() shows them too


@trio_test
async def test_release_named_items_only(store):
    await add(store, "a", "b", "c")
    await claim_ids(store)
    assert await store.release(JOB, OWNER, ["b"]) == 1
    assert await store.release(JOB, OTHER, ["a"]) == 0  # not the holder
    counts = await store.counts(JOB)
    assert counts["running"] == 2 and counts["pending"] == 1
    assert await claim_ids(store) == ["b"]


@trio_test
async def test_set_job_definition_replaces_it(store):
    await add(store, "a")
    await store.set_job_definition(JOB, {"job_id": JOB, "budget_usd": 12.5, "title": THAI})
    row = await store.get_job(JOB)
    assert row.definition == {"job_id": JOB, "budget_usd": 12.5, "title": THAI}
    with pytest.raises(KeyError):
        await store.set_job_definition("nope", {})


@trio_test
async def test_attempts_are_listed_in_finish_order_for_their_job_only(store):
    await add(store, "a", "b")
    await store.add_job(job_row("job-2"), new_items("a"))
    await claim_ids(store)
    await claim_ids(store, job_id="job-2")
    await store.record([
        rec("b", "failed", model="m2", started_at=NOW, finished_at=NOW + 3, error_kind="INVALID_INPUT",
            error=f"bad {THAI}", input_tokens=7, output_tokens=0, cost_usd=0.01),
        rec("a", "pending", model="m1", started_at=NOW, finished_at=NOW + 2, error_kind="TIMEOUT"),
        rec("a", "completed", job_id="job-2", finished_at=NOW + 1),
    ], OWNER)
    await claim_ids(store)
    await store.record([rec("a", attempt=2, started_at=NOW + 4, finished_at=NOW + 6, input_tokens=100,
                            output_tokens=50, cost_usd=0.5)], OWNER)
    rows = await store.attempts(JOB)
    assert [(r.item_id, r.attempt, r.state) for r in rows] == [("a", 1, "pending"), ("b", 1, "failed"),
                                                                ("a", 2, "completed")]
    b = rows[1]
    assert (b.model, b.started_at, b.finished_at, b.error_kind, b.error) == ("m2", NOW, NOW + 3, "INVALID_INPUT",
                                                                             f"bad {THAI}")
    assert (b.input_tokens, b.output_tokens, b.cost_usd) == (7, 0, pytest.approx(0.01))
    assert [r.item_id for r in await store.attempts("job-2")] == ["a"]
    assert await store.attempts("other-job") == []


# -- the queue across jobs


@trio_test
async def test_claim_next_serves_level_then_submission_order_across_jobs(store):
    await add_levels(store, "one", ("a1", 2), ("a2", 3), ("a3", 2))
    await add_levels(store, "two", ("b1", 1), ("b2", 2))
    await add_levels(store, "three", ("c1", 0), ("c2", 2), ("c3", 1))
    got = []
    for _ in range(5):  # the order holds across batches too
        got += await next_ids(store, limit=2)
    # a later job's more urgent item goes first; equal levels are FIFO across jobs
    assert got == [("three", "c1"), ("two", "b1"), ("three", "c3"), ("one", "a1"), ("one", "a3"),
                   ("two", "b2"), ("three", "c2"), ("one", "a2")]
    assert await next_ids(store) == []
    assert (await store.counts("one"))["running"] == 3


@trio_test
async def test_claim_next_returns_what_claim_does(store):
    await add(store, "a")
    [first] = await store.claim_next("chapter", 10, NOW, OWNER)
    assert (first.job_id, first.item_id, first.attempts, first.last_model) == (JOB, "a", 0, None)
    assert first.definition == {"item_id": "a", "fields": {"title": f"{THAI} a"}}
    await store.record([rec("a", "pending", model="m1", error_kind="TIMEOUT", free=True)], OWNER)
    [again] = await store.claim_next("chapter", 10, NOW, OTHER)
    assert (again.attempts, again.free_attempts, again.last_model, again.last_error_kind) == (1, 1, "m1", "TIMEOUT")
    assert [r.owner for r in await store.running(JOB)] == [OTHER]
    assert await store.release(JOB, OTHER) == 1
    [claimed] = await store.claim(JOB, 1, NOW, OWNER)
    assert claimed.job_id == JOB  # claim fills it too


@trio_test
async def test_claim_next_honours_job_type_limit_and_not_before(store):
    await add(store, "a", "b", "c", job_id="one")
    await add(store, "x", job_id="other", job_type="summary", level=0)
    assert await next_ids(store, job_type="summary") == [("other", "x")]
    assert await next_ids(store, job_type="nope") == []
    assert await next_ids(store, limit=0) == []
    assert await next_ids(store, limit=2) == [("one", "a"), ("one", "b")]
    await store.record([rec("b", "pending", job_id="one", not_before=NOW + 60)], OWNER)
    assert await next_ids(store, now=NOW + 1) == [("one", "c")]
    assert await next_ids(store, now=NOW + 59.9) == []
    assert await next_ids(store, now=NOW + 60) == [("one", "b")]  # not_before <= now


@trio_test
async def test_claim_next_leaves_out_excluded_jobs(store):
    for job_id, item in (("one", "a"), ("two", "b"), ("three", "c")):
        await add(store, item, job_id=job_id)
    assert await next_ids(store, exclude={"one", "three"}) == [("two", "b")]
    assert await next_ids(store, exclude=["two", "no-such-job"]) == [("one", "a"), ("three", "c")]


@trio_test
async def test_paused_and_cancelled_jobs_are_held(store):
    await add(store, "a", "b", job_id="one")
    await add(store, "c", job_id="two")
    await store.set_job_state("one", "paused", "budget")
    assert await next_ids(store) == [("two", "c")]
    await store.set_job_state("one", "running")
    assert await next_ids(store) == [("one", "a"), ("one", "b")]
    await store.release("one", OWNER)
    await store.set_job_state("one", "cancelled", "by hand")  # the state alone holds, too
    assert await next_ids(store) == []
    assert (await store.counts("one"))["pending"] == 2  # held, not skipped
    await store.set_job_state("one", "interrupted")  # any other state lets go
    assert await next_ids(store, limit=1) == [("one", "a")]


@trio_test
async def test_a_held_item_back_from_running_stays_held(store):
    await add(store, "a", "b")
    assert await claim_ids(store, limit=1) == ["a"]
    await store.set_job_state(JOB, "paused")
    # the worker finishes its attempt after the pause: a retry, then a release
    assert await store.record([rec("a", "pending")], OWNER) == [True]
    assert await next_ids(store) == []
    assert await claim_ids(store) == []
    await store.set_job_state(JOB, "running")
    assert await next_ids(store) == [(JOB, "a"), (JOB, "b")]


@trio_test
async def test_claim_skips_held_items(store):
    await add(store, "a", "b")
    await store.set_job_state(JOB, "paused")
    assert await claim_ids(store) == []
    await store.set_job_state(JOB, "running")
    assert await claim_ids(store) == ["a", "b"]


@trio_test
async def test_add_job_in_a_held_state_holds_its_items(store):
    await add(store, "a", job_id="one", state="paused")
    await add(store, "b", job_id="two", state="cancelled")
    await add(store, "c", job_id="three", state="pending")
    assert await next_ids(store) == [("three", "c")]
    assert await claim_ids(store, job_id="one") == []
    await store.set_job_state("one", "running")
    assert await next_ids(store) == [("one", "a")]


@trio_test
async def test_cancel_skips_pending_and_running_items(store):
    await add(store, *"abcd")
    await add(store, "a", job_id="other")
    await claim_ids(store, limit=3)  # a, b, c
    await store.record([rec("a"), rec("c", "pending", error_kind="TIMEOUT", error="slow")], OWNER)
    assert await store.cancel(JOB, "cancelled by ผู้ใช้") == 3  # b running, c and d pending
    job = await store.get_job(JOB)
    assert (job.state, job.reason) == ("cancelled", "cancelled by ผู้ใช้")
    rows = {row.item_id: row for row in await store.items(JOB)}
    assert rows["a"].state == "completed"
    for item_id in "bcd":
        row = rows[item_id]
        assert (row.state, row.error_kind, row.error) == ("skipped", None, "cancelled by ผู้ใช้"), item_id
    assert await store.running(JOB) == []
    # the worker that ran b finds out when it records
    assert await store.record([rec("b", "failed")], OWNER) == [False]
    assert await store.result(JOB, "a") is not None
    assert await next_ids(store) == [("other", "a")]
    assert await store.cancel(JOB, "again") == 0
    with pytest.raises(KeyError):
        await store.cancel("nope", "why")


@trio_test
async def test_record_skipped_for_a_running_item(store):
    await add(store, "a")
    await claim_ids(store)
    await store.set_job_state(JOB, "cancelled", "stop")
    assert await store.record([rec("a", "skipped", error="stop", cost_usd=0.25)], OWNER) == [True]
    [row] = await store.items(JOB)
    assert (row.state, row.error) == ("skipped", "stop")
    assert await store.result(JOB, "a") is None
    assert (await store.costs(JOB)).cost_usd == 0.25  # what the attempt spent still counts


@trio_test
async def test_promote_by_deadline(store):
    await store.add_job(job_row(), [
        NewItem("none", 2, "pending", {}),
        NewItem("far", 2, "pending", {}, NOW + 10 * DAY),
        NewItem("soon", 3, "pending", {}, NOW + 2 * DAY),
        NewItem("urgent", 2, "pending", {}, NOW + 23 * 3600),
        NewItem("edge", 2, "pending", {}, NOW + CRITICAL_WITHIN_S),  # not under 24 h: high
        NewItem("late", 1, "pending", {}, NOW - 5),  # past its deadline
        NewItem("crit", 0, "pending", {}, NOW + 2 * DAY),  # never demoted
    ])
    await store.add_job(job_row("busy"), new_items("r", deadline=NOW + 60))
    await claim_ids(store, job_id="busy")  # running items keep their level
    assert await store.promote(NOW, None) == 4
    assert await levels(store) == {"none": 2, "far": 2, "soon": 1, "urgent": 0, "edge": 1, "late": 0, "crit": 0}
    assert await levels(store, "busy") == {"r": 2}
    assert await store.promote(NOW, None) == 0
    assert await store.promote(NOW + 1, None) == 1  # edge: now under 24 h
    assert await store.promote(NOW + 10 * DAY - HIGH_WITHIN_S + 1, None) == 2  # far under 3 days, soon past
    assert await levels(store) == {"none": 2, "far": 1, "soon": 0, "urgent": 0, "edge": 0, "late": 0, "crit": 0}
    assert await store.promote(NOW + 10 * DAY - CRITICAL_WITHIN_S + 1, None) == 1  # far under 24 h
    assert (await levels(store))["far"] == 0


@trio_test
async def test_promote_by_aging(store):
    await add_levels(store, JOB, ("low", 3), ("normal", 2), ("high", 1), ("crit", 0))
    await add_levels(store, "held", ("h", 3))
    await store.set_job_state("held", "paused")  # held items age too: harmless
    await add_levels(store, "busy", ("r", 3))
    await claim_ids(store, job_id="busy")  # running: not aged
    t0 = time.time()  # items got their level_since when added: a moment before t0
    aging = 600.0
    assert await store.promote(t0 + 1e6, None) == 0  # no aging asked for
    assert await store.promote(t0 + 300, aging) == 0
    assert await store.promote(t0 + aging, aging) == 3  # low, normal, h: one level each
    assert await levels(store) == {"low": 2, "normal": 1, "high": 1, "crit": 0}
    assert await levels(store, "held") == {"h": 2}
    assert await store.promote(t0 + aging + 300, aging) == 0  # their clock restarted
    assert await store.promote(t0 + 2 * aging, aging) == 2  # low, h
    assert await levels(store) == {"low": 1, "normal": 1, "high": 1, "crit": 0}
    assert await store.promote(t0 + 100 * aging, aging) == 0  # aging never makes an item critical
    assert await levels(store, "busy") == {"r": 3}


@trio_test
async def test_position_across_levels_and_jobs(store):
    await add_levels(store, "one", ("a", 2), ("b", 2))
    await add_levels(store, "two", ("c", 1), ("d", 2))
    await add_levels(store, "three", ("e", 0), job_type="summary")  # every job type shares the count
    assert [await store.position(j, i) for j, i in (("three", "e"), ("two", "c"), ("one", "a"), ("one", "b"),
                                                     ("two", "d"))] == [1, 2, 3, 4, 5]
    await claim_ids(store, limit=1, job_id="one")  # a
    assert await store.position("one", "a") == -1  # running
    assert await store.position("two", "d") == 4
    await store.record([rec("a", job_id="one")], OWNER)
    assert await store.position("one", "a") == -1  # completed
    await store.set_job_state("three", "paused")
    assert await store.position("three", "e") == -1  # held
    assert (await store.position("two", "c"), await store.position("one", "b")) == (1, 2)
    with pytest.raises(KeyError):
        await store.position("one", "nope")
    with pytest.raises(KeyError):
        await store.position("nope", "a")


@trio_test
async def test_queue_counts_and_queued(store):
    assert await store.queue_counts() == {}
    assert await store.queued(10) == []
    await add_levels(store, "one", ("a", 2), ("b", 3), ("s", 2))
    await store.add_job(job_row("two"), new_items("c", deadline=NOW + DAY))
    await add_levels(store, "three", ("d", 0), job_type="summary")
    await claim_ids(store, limit=1, job_id="one")  # a
    await store.record([rec("a", "pending", job_id="one", not_before=NOW + 9)], OWNER)  # a retry waits in line
    assert await store.queue_counts() == {0: {"three": 1}, 2: {"one": 2, "two": 1}, 3: {"one": 1}}
    assert await store.queued(10) == [
        QueuedRow("three", "d", "summary", 0, 0.0, None),
        QueuedRow("one", "a", "chapter", 2, NOW + 9, None),
        QueuedRow("one", "s", "chapter", 2, 0.0, None),
        QueuedRow("two", "c", "chapter", 2, 0.0, NOW + DAY),
        QueuedRow("one", "b", "chapter", 3, 0.0, None),
    ]
    assert [row.item_id for row in await store.queued(2)] == ["d", "a"]
    assert await store.queued(0) == []
    await store.set_job_state("two", "paused")
    await claim_ids(store, limit=1, job_id="three")
    assert await store.queue_counts() == {2: {"one": 2}, 3: {"one": 1}}
    assert [row.item_id for row in await store.queued(10)] == ["a", "s", "b"]


@trio_test
async def test_next_queued_at(store):
    assert await store.next_queued_at("chapter") is None
    await add(store, "a", "b", job_id="one")
    await add(store, "x", job_id="other", job_type="summary")
    assert await store.next_queued_at("chapter") == 0.0
    await next_ids(store)
    assert await store.next_queued_at("chapter") is None  # nothing pending
    assert await store.next_queued_at("summary") == 0.0
    await store.record([rec("a", "pending", job_id="one", not_before=NOW + 30),
                        rec("b", "pending", job_id="one", not_before=NOW + 20)], OWNER)
    assert await store.next_queued_at("chapter") == NOW + 20
    await store.set_job_state("one", "paused")
    assert await store.next_queued_at("chapter") is None  # held


@trio_test
async def test_items_show_level_and_route(store):
    await store.add_job(job_row(), new_items("a", level=3, deadline=NOW + DAY) + new_items("b", level=1))
    assert [(row.item_id, row.level, row.route) for row in await store.items(JOB)] == [("a", 3, None),
                                                                                      ("b", 1, None)]
    await claim_ids(store, limit=1)  # b
    route = {"strategy": "round_robin", "picked": "m1", "เหตุผล": THAI}
    await store.record([rec("b", "pending", route=route)], OWNER)
    await store.promote(NOW + 1, None)
    rows = {row.item_id: row for row in await store.items(JOB)}
    assert (rows["a"].level, rows["a"].route) == (0, None)
    assert (rows["b"].level, rows["b"].route) == (1, route)


@pytest.mark.slow
@trio_test
async def test_queue_of_a_hundred_thousand_items(store):
    n = 50_000
    for job_id in ("one", "two"):
        await store.add_job(job_row(job_id), [
            NewItem(f"i{k:06d}", 3 - k % 4, "pending", {"item_id": f"i{k:06d}"}, NOW + 10 * DAY + k)
            for k in range(n)
        ])
    started = time.perf_counter()
    got = await next_ids(store, limit=256, exclude={"no-such-job"})
    assert time.perf_counter() - started < 2  # generous: these are smoke checks, not benchmarks
    assert got[:3] == [("one", "i000003"), ("one", "i000007"), ("one", "i000011")]
    started = time.perf_counter()
    assert await store.promote(NOW, 3600.0) == 0  # nothing due: cheap
    assert await store.next_queued_at("chapter") == 0.0
    assert await store.position("two", "i000003") == n // 4 - 256 + 1
    assert time.perf_counter() - started < 2


@trio_test
async def test_location_names_the_store_for_messages(store):
    assert isinstance(store.location, str) and store.location


# -- failed items run again (``resume --retry-failed``)


async def failed_job(store: Any) -> None:
    """a failed AUTH_ERROR after 3 attempts, b failed INVALID_INPUT, c completed, d pending."""
    await add(store, *"abcd")
    await claim_ids(store, limit=3)
    await store.record([rec("a", "pending", attempt=1, error_kind="AUTH_ERROR", started_at=NOW + 1)], OWNER)
    await claim_ids(store, limit=1)
    await store.record([
        rec("a", "failed", attempt=2, error_kind="AUTH_ERROR", error="bad key"),
        rec("b", "failed", error_kind="INVALID_INPUT", error="no title"),
        rec("c"),
    ], OWNER)
    await store.set_job_state(JOB, "failed")


@trio_test
async def test_requeue_failed_puts_every_failed_item_back_keeping_its_history(store):
    await failed_job(store)
    assert await store.requeue_failed(JOB) == 2
    assert await store.counts(JOB) == {"pending": 3, "running": 0, "completed": 1, "failed": 0, "skipped": 0}
    claimed = {c.item_id: c for c in await store.claim(JOB, 10, NOW + 50, OWNER)}
    assert set(claimed) == {"a", "b", "d"}
    # attempt numbers go on from the history; every earlier attempt is free, so
    # the item has its whole max_retries again, and its retry window restarts
    a = claimed["a"]
    assert (a.attempts, a.free_attempts, a.first_started_at, a.last_error_kind) == (2, 2, None, "AUTH_ERROR")
    assert [(r.item_id, r.attempt, r.state) for r in await store.attempts(JOB)] == [
        ("a", 1, "pending"), ("a", 2, "failed"), ("b", 1, "failed"), ("c", 1, "completed")]
    assert await store.requeue_failed(JOB) == 0  # nothing failed is left


@trio_test
async def test_requeue_failed_only_of_the_kinds_given(store):
    await failed_job(store)
    assert await store.requeue_failed(JOB, ["TIMEOUT"]) == 0
    assert await store.requeue_failed(JOB, ["AUTH_ERROR", "QUOTA_EXCEEDED"]) == 1
    assert [(r.item_id, r.state) for r in await store.items(JOB) if r.state in ("pending", "failed")] == [
        ("a", "pending"), ("b", "failed"), ("d", "pending")]


@trio_test
async def test_requeue_failed_of_a_paused_job_keeps_the_items_held(store):
    await failed_job(store)
    await store.set_job_state(JOB, "paused", "by hand")
    assert await store.requeue_failed(JOB) == 2
    assert await claim_ids(store) == []
    await store.set_job_state(JOB, "pending")
    assert sorted(await claim_ids(store)) == ["a", "b", "d"]


@trio_test
async def test_requeue_failed_of_an_unknown_job_raises(store):
    with pytest.raises(KeyError):
        await store.requeue_failed("nope")


# -- attempts are recorded when sent (spend is never under-counted)


def sent(item_id: str, attempt: int = 1, reserved: float = 0.5, model: str = "m1") -> StartRecord:
    return StartRecord(JOB, item_id, model, NOW + 1, attempt=attempt, reserved_usd=reserved)


@trio_test
async def test_a_sent_attempt_counts_its_worst_case_until_its_outcome_arrives(store):
    await add(store, "a", "b")
    await claim_ids(store)
    await store.record([], OWNER, started=[sent("a", reserved=0.5), sent("b", reserved=0.25)])
    costs = await store.costs(JOB)
    assert (costs.unknown_attempts, costs.unknown_usd) == (2, pytest.approx(0.75))
    assert (costs.attempts, costs.cost_usd) == (0, 0.0)  # nothing finished yet
    assert await store.attempts(JOB) == []  # only finished ones are listed
    await store.record([rec("a", sent=True, reserved_usd=0.5, cost_usd=0.125)], OWNER)
    costs = await store.costs(JOB)
    assert (costs.unknown_attempts, costs.unknown_usd) == (1, pytest.approx(0.25))
    assert (costs.attempts, costs.cost_usd) == (1, pytest.approx(0.125))
    assert [(r.item_id, r.attempt, r.state, r.cost_usd) for r in await store.attempts(JOB)] == [
        ("a", 1, "completed", 0.125)]
    assert await store.spend_by_model() == {"m1": pytest.approx(0.125 + 0.25)}


@trio_test
async def test_an_attempt_lost_with_its_worker_stays_sent_outcome_unknown(store):
    await add(store, "a")
    await claim_ids(store, owner="host:1:dead")
    await store.record([], "host:1:dead", started=[sent("a", reserved=0.5)])
    assert await store.recover(JOB, lambda owner: False) == 1
    # the next try has the same attempt number: its outcome updates its own row only
    await claim_ids(store)
    await store.record([], OWNER, started=[sent("a", reserved=0.25)])
    await store.record([rec("a", sent=True, reserved_usd=0.25, cost_usd=0.125)], OWNER)
    costs = await store.costs(JOB)
    assert (costs.unknown_attempts, costs.unknown_usd) == (1, pytest.approx(0.5))
    assert (costs.attempts, costs.cost_usd) == (1, pytest.approx(0.125))


@trio_test
async def test_a_timed_out_attempt_counts_its_worst_case(store):
    await add(store, "a")
    await claim_ids(store)
    await store.record([], OWNER, started=[sent("a", reserved=0.5)])
    await store.record([rec("a", "pending", error_kind="TIMEOUT", sent=True, reserved_usd=0.5,
                            outcome_unknown=True)], OWNER)
    costs = await store.costs(JOB)
    assert (costs.attempts, costs.unknown_attempts, costs.unknown_usd) == (1, 1, pytest.approx(0.5))
    assert [(r.state, r.error_kind) for r in await store.attempts(JOB)] == [("pending", "TIMEOUT")]


@trio_test
async def test_a_sent_attempt_refused_after_a_cancel_keeps_its_real_cost(store):
    await add(store, "a")
    await claim_ids(store)
    await store.record([], OWNER, started=[sent("a", reserved=0.5)])
    await store.cancel(JOB, "stop")
    assert await store.record([rec("a", sent=True, reserved_usd=0.5, cost_usd=0.125)], OWNER) == [False]
    costs = await store.costs(JOB)  # billed: its real cost, no longer "outcome unknown"
    assert (costs.attempts, costs.cost_usd, costs.unknown_attempts) == (1, pytest.approx(0.125), 0)
    assert [(r.state, r.cost_usd) for r in await store.attempts(JOB)] == [("skipped", 0.125)]
    assert [r.state for r in await store.items(JOB)] == ["skipped"]


@trio_test
async def test_a_start_for_an_item_not_held_records_no_attempt(store):
    await add(store, "a")
    await claim_ids(store)
    await store.record([], OTHER, started=[sent("a")])
    assert (await store.costs(JOB)).unknown_attempts == 0


# -- leases and fences
#
# A lease_s <= 0 gives a lease that has already run out on the store's clock:
# these tests never sleep.

EXPIRED = -1.0


async def claim_fenced(store: Any, owner: str = OWNER, limit: int = 100, lease_s: float = 30.0,
                       job_id: str = JOB) -> dict[str, int]:
    """item_id -> fence, for what ``owner`` claims."""
    return {c.item_id: c.fence for c in await store.claim(job_id, limit, NOW, owner, lease_s=lease_s)}


def fenced(item_id: str, fence: int, state: str = "completed", **kw: Any) -> AttemptRecord:
    return rec(item_id, state, fence=fence, **kw)


def sent_fenced(item_id: str, fence: int, reserved: float = 0.5, attempt: int = 1) -> StartRecord:
    return StartRecord(JOB, item_id, "m1", NOW + 1, attempt=attempt, reserved_usd=reserved, fence=fence)


@trio_test
async def test_a_claim_leases_each_item_on_the_store_clock_and_increments_its_fence(store):
    await add(store, "a", "b")
    assert await claim_fenced(store, limit=1) == {"a": 1}
    [row] = await store.running(JOB)
    assert row.fence == 1 and 0 < row.lease_left <= 30.0
    assert await store.release(JOB, OWNER) == 1
    assert await claim_fenced(store, limit=1) == {"a": 2}  # a new claim, a new fence
    [claimed] = await store.claim_next("chapter", 1, NOW, OTHER, lease_s=5.0)
    assert (claimed.item_id, claimed.fence) == ("b", 1)
    assert {r.item_id: (r.owner, r.fence) for r in await store.running(JOB)} == {"a": (OWNER, 2), "b": (OTHER, 1)}
    assert 0 < {r.item_id: r.lease_left for r in await store.running(JOB)}["b"] <= 5.0


@trio_test
async def test_renew_keeps_what_the_owner_holds_under_that_fence_and_nothing_else(store):
    await add(store, "a", "b", "c")
    fences = await claim_fenced(store, limit=2, lease_s=EXPIRED)  # run out, not yet reaped
    held = [(JOB, "a", fences["a"]), (JOB, "b", fences["b"] + 1), (JOB, "c", 1)]
    assert await store.renew(OWNER, held, 30.0) == {(JOB, "a", fences["a"])}
    assert await store.renew(OTHER, [(JOB, "a", fences["a"])], 30.0) == set()
    assert await store.renew(OWNER, [], 30.0) == set()
    leases = {r.item_id: r.lease_left for r in await store.running(JOB)}
    assert 0 < leases["a"] <= 30.0 and leases["b"] < 0  # renewed; not renewed
    assert await store.reap() == 1  # only b had run out
    assert await store.renew(OWNER, [(JOB, "b", fences["b"])], 30.0) == set()  # lost: reaped


@trio_test
async def test_reap_puts_expired_leases_back_pending_with_the_fence_moved_on(store):
    await add(store, "a", "b")
    await add(store, "x", job_id="other")
    await store.set_job_state("other", "paused")
    await store.set_job_state("other", "running")
    old = await claim_fenced(store, limit=1, lease_s=EXPIRED)
    await claim_fenced(store, owner=OTHER, limit=1)  # b, leased for 30 s
    await claim_fenced(store, lease_s=EXPIRED, job_id="other")
    await store.set_job_state("other", "paused")
    assert await store.reap() == 2
    assert await store.reap() == 0
    assert [(r.item_id, r.owner) for r in await store.running(JOB)] == [("b", OTHER)]
    assert (await store.counts("other"))["pending"] == 1
    assert await store.position("other", "x") == -1  # back, and still held by its paused job
    assert await store.record([fenced("a", old["a"])], OWNER) == [False]  # the lost claim
    assert await claim_fenced(store, owner=OTHER) == {"a": old["a"] + 2}  # reap +1, claim +1


@trio_test
async def test_reap_takes_at_most_limit_items(store):
    await add(store, *"abcde")
    await claim_fenced(store, lease_s=EXPIRED)
    assert await store.reap(2) == 2
    assert await store.reap(0) == 0
    assert await store.reap(10) == 3
    assert (await store.counts(JOB))["pending"] == 5


@trio_test
async def test_a_stale_outcome_is_refused_and_still_recorded_with_its_cost(store):
    await add(store, "a")
    lost = (await claim_fenced(store, lease_s=EXPIRED))["a"]
    await store.record([], OWNER, started=[sent_fenced("a", lost, reserved=0.5)])
    assert await store.reap() == 1
    # the reap marked the lost attempt stale: outcome unknown, its worst case counted
    assert [(r.state, r.error_kind) for r in await store.attempts(JOB)] == [("stale", "LEASE_LOST")]
    assert (await store.costs(JOB)).unknown_usd == pytest.approx(0.5)
    now = (await claim_fenced(store, owner=OTHER))["a"]
    assert await store.record([], OTHER, started=[sent_fenced("a", now, reserved=0.25)]) == [True]
    # the worker that lost it answers late: refused, stored stale with its real cost
    late = fenced("a", lost, sent=True, reserved_usd=0.5, cost_usd=0.125, input_tokens=10, output_tokens=20,
                  result_text="late")
    assert await store.record([late], OWNER) == [False]
    assert await store.result(JOB, "a") is None
    assert [(r.owner, r.fence) for r in await store.running(JOB)] == [(OTHER, now)]
    assert [(r.state, r.cost_usd, r.input_tokens, r.output_tokens) for r in await store.attempts(JOB)] == [
        ("stale", 0.125, 10, 20)]
    costs = await store.costs(JOB)
    assert (costs.attempts, costs.cost_usd) == (1, pytest.approx(0.125))
    assert (costs.unknown_attempts, costs.unknown_usd) == (1, pytest.approx(0.25))  # OTHER's, in flight
    assert await store.spend_by_model() == {"m1": pytest.approx(0.125 + 0.25)}
    # the holder's outcome applies, completing its own row only
    done = fenced("a", now, sent=True, reserved_usd=0.25, cost_usd=0.0625, result_text="kept")
    assert await store.record([done], OTHER) == [True]
    assert await store.result(JOB, "a") == ("kept", None)
    assert sorted((r.state, r.cost_usd) for r in await store.attempts(JOB)) == [
        ("completed", 0.0625), ("stale", 0.125)]
    assert (await store.costs(JOB)).unknown_attempts == 0


@trio_test
async def test_a_stale_outcome_never_sent_is_recorded_as_a_stale_attempt(store):
    await add(store, "a")
    lost = (await claim_fenced(store, lease_s=EXPIRED))["a"]
    await store.reap()
    await claim_fenced(store, owner=OTHER)
    assert await store.record([fenced("a", lost, "failed", error_kind="TIMEOUT", cost_usd=0.01)], OWNER) == [False]
    assert [(r.state, r.error_kind, r.cost_usd) for r in await store.attempts(JOB)] == [("stale", "TIMEOUT", 0.01)]
    assert (await store.counts(JOB))["running"] == 1


@trio_test
async def test_the_same_owner_under_an_old_fence_is_refused_too(store):
    """A worker that lost an item and claimed it again must not complete the new claim with the old answer."""
    await add(store, "a")
    old = (await claim_fenced(store, lease_s=EXPIRED))["a"]
    await store.reap()
    new = (await claim_fenced(store))["a"]
    assert new > old
    assert await store.record([fenced("a", old)], OWNER) == [False]
    assert (await store.counts(JOB))["running"] == 1
    assert await store.record([fenced("a", new)], OWNER) == [True]
    assert (await store.counts(JOB))["completed"] == 1


@trio_test
async def test_a_stale_release_is_ignored(store):
    await add(store, "a", "b")
    old = await claim_fenced(store, lease_s=EXPIRED)
    await store.reap()
    new = await claim_fenced(store, limit=1)  # a again, under a new fence
    assert await store.release(JOB, OWNER, ["a"], fences=[old["a"]]) == 0
    assert [(r.item_id, r.fence) for r in await store.running(JOB)] == [("a", new["a"])]
    assert await store.release(JOB, OWNER, ["a"], fences=[new["a"]]) == 1
    assert (await store.counts(JOB))["running"] == 0


@trio_test
async def test_a_start_under_an_old_fence_writes_nothing(store):
    await add(store, "a")
    old = (await claim_fenced(store, lease_s=EXPIRED))["a"]
    await store.reap()
    new = (await claim_fenced(store))["a"]
    assert await store.record([], OWNER, started=[sent_fenced("a", old)]) == [False]
    assert (await store.costs(JOB)).unknown_attempts == 0
    assert [r.model for r in await store.running(JOB)] == [None]
    assert await store.record([], OWNER, started=[sent_fenced("a", new, reserved=0.25)]) == [True]
    costs = await store.costs(JOB)
    assert (costs.unknown_attempts, costs.unknown_usd) == (1, pytest.approx(0.25))


@trio_test
async def test_a_fenced_outcome_refused_by_a_cancel_is_settled_skipped_not_stale(store):
    await add(store, "a")
    fence = (await claim_fenced(store))["a"]
    await store.record([], OWNER, started=[sent_fenced("a", fence, reserved=0.5)])
    await store.cancel(JOB, "stop")
    assert await store.record([fenced("a", fence, sent=True, reserved_usd=0.5, cost_usd=0.125)], OWNER) == [False]
    assert [(r.state, r.cost_usd) for r in await store.attempts(JOB)] == [("skipped", 0.125)]
    assert (await store.costs(JOB)).unknown_attempts == 0
    assert await store.renew(OWNER, [(JOB, "a", fence)], 30.0) == set()  # a cancel ends the lease too


@trio_test
async def test_heartbeats_list_workers_with_what_they_hold(store):
    assert await store.workers() == []
    await store.heartbeat(WorkerInfo(OWNER, "host-a", 100, NOW, 30.0))
    await store.heartbeat(WorkerInfo(OTHER, "host-b", 200, NOW + 1, EXPIRED))  # its heartbeat is too old
    await add(store, "a", "b", "c")
    await claim_fenced(store, limit=2)
    rows = await store.workers()
    assert [(w.worker_id, w.host, w.pid, w.started_at, w.alive, w.holding) for w in rows] == [
        (OWNER, "host-a", 100, NOW, True, {JOB: 2}), (OTHER, "host-b", 200, NOW + 1, False, {})]
    before = rows[0].beat_at
    await store.heartbeat(WorkerInfo(OTHER, "host-b", 200, NOW + 1, 30.0))  # beats again: alive
    assert [w.alive for w in await store.workers()] == [True, True]
    await store.heartbeat(WorkerInfo(OWNER, "host-a", 100, NOW, 30.0))
    assert (await store.workers())[0].beat_at >= before
    await store.forget_worker(OWNER)
    await store.forget_worker("never-seen")
    assert [w.worker_id for w in await store.workers()] == [OTHER]
