"""The conformance suite, part two: pipelines (issue 10).

Follow-ups committed with the completion, dependencies and their cascade,
taking over, gates, stages in claims, and artifacts: every backend passes
these, as the Store protocol's docstrings specify. Collected by
``tests/test_store.py`` with the rest of the suite (same ``store_backend``
fixture, same builders).
"""

from __future__ import annotations

from typing import Any

import pytest

from storyloom.artifacts import Artifact
from storyloom.store.protocol import GateRow, NewItem
from store_conformance import conformance_test, JOB, NOW, OTHER, OWNER, THAI, claim_ids, job_row, next_ids, rec

__all__: list[str] = []


test = conformance_test(__all__)  # as store_conformance.trio_test, listed in this module's __all__


def item(item_id: str, *, after: tuple[str, ...] = (), gate: str | None = None, job_type: str | None = None,
         takes_over: str | None = None, level: int = 2, state: str = "pending") -> NewItem:
    definition: dict[str, Any] = {"item_id": item_id, "fields": {"title": f"{THAI} {item_id}"}}
    if job_type:
        definition["job_type"] = job_type
    return NewItem(item_id, level, state, definition, None, job_type=job_type, after=after, takes_over=takes_over,
                   gate=gate)


async def add_pipeline(store: Any, *items: NewItem, state: str = "running", job_id: str = JOB) -> None:
    await store.add_job(job_row(job_id, state=state), list(items))


async def complete(store: Any, item_id: str, *, job_id: str = JOB, owner: str = OWNER, **kw: Any) -> bool:
    """Record a completion of an item claimed by ``owner``."""
    [ok] = await store.record([rec(item_id, job_id=job_id, result_text=item_id, **kw)], owner)
    return ok


async def run_one(store: Any, item_id: str, state: str = "completed", **kw: Any) -> None:
    """Claim everything claimable, check ``item_id`` is among it, record it, release the rest."""
    claimed = await claim_ids(store)
    assert item_id in claimed, (item_id, claimed)
    [ok] = await store.record([rec(item_id, state, result_text=item_id if state == "completed" else None, **kw)],
                              OWNER)
    assert ok
    await store.release(JOB, OWNER)


async def states(store: Any, job_id: str = JOB) -> dict[str, str]:
    return {row.item_id: row.state for row in await store.items(job_id)}


async def errors(store: Any, job_id: str = JOB) -> dict[str, str | None]:
    return {row.item_id: row.error for row in await store.items(job_id) if row.error}


# -- follow-ups


@test
async def test_follow_ups_are_inserted_with_the_completion(store):
    await add_pipeline(store, item("a"))
    await claim_ids(store)
    assert await complete(store, "a", follow_ups=(item("a-next", job_type="qc"), item("a-more")))
    rows = {row.item_id: row for row in await store.items(JOB)}
    assert [r for r in rows] == ["a", "a-next", "a-more"]  # in job order, after the job's own
    assert rows["a-next"].definition["job_type"] == "qc"
    assert rows["a-next"].definition["fields"]["title"] == f"{THAI} a-next"
    assert (await store.counts(JOB))["pending"] == 2
    # claims serve the follow-up by its own stage
    assert await next_ids(store, job_type="qc") == [(JOB, "a-next")]
    assert await next_ids(store, job_type="chapter") == [(JOB, "a-more")]


@test
async def test_follow_ups_of_a_refused_record_are_not_inserted(store):
    await add_pipeline(store, item("a"))
    await claim_ids(store, owner=OTHER)
    assert not await complete(store, "a", follow_ups=(item("x"),),
                              artifacts=(Artifact("p", "outline", "", "o"),))
    assert list(await states(store)) == ["a"]
    assert await store.artifacts("p") == []


@test
async def test_follow_ups_are_idempotent_on_item_id(store):
    await add_pipeline(store, item("a"), item("b"), item("c"))
    await claim_ids(store)
    assert await complete(store, "a", follow_ups=(item("export", gate="g1"),))
    # a second completion (another item, or a completion repeated) naming the same id
    assert await complete(store, "b", follow_ups=(item("export", job_type="qc"), item("b-2")))
    rows = {row.item_id: row for row in await store.items(JOB)}
    assert list(rows) == ["a", "b", "c", "export", "b-2"]
    assert "job_type" not in rows["export"].definition  # the first one stays as it was
    # an id that is an original item of the job is left alone too
    assert await complete(store, "c", follow_ups=(item("a"),))
    assert (await states(store))["a"] == "completed"


@test
async def test_follow_ups_queue_after_everything_submitted_at_their_level(store):
    await add_pipeline(store, item("a"), item("b"))
    await store.add_job(job_row("other"), [item("o1")])
    assert await claim_ids(store, limit=1) == ["a"]
    assert await complete(store, "a", follow_ups=(item("a-low", level=3), item("a-hi", level=1)))
    assert await next_ids(store) == [(JOB, "a-hi"), (JOB, "b"), ("other", "o1"), (JOB, "a-low")]


@test
async def test_follow_ups_and_artifacts_need_a_completion(store):
    await add_pipeline(store, item("a"))
    await claim_ids(store)
    with pytest.raises(ValueError):
        await store.record([rec("a", "failed", follow_ups=(item("x"),))], OWNER)
    with pytest.raises(ValueError):
        await store.record([rec("a", "pending", artifacts=(Artifact("p", "k", "", "v"),))], OWNER)
    assert await states(store) == {"a": "running"}


@test
async def test_a_bad_follow_up_or_artifact_writes_nothing(store):
    await add_pipeline(store, item("a"), item("b"))
    await claim_ids(store)
    for bad in ({"follow_ups": (item("x", state="running"),)},
                {"follow_ups": (item("x", after=("x",)),)},
                {"artifacts": (Artifact("p", "k", "", object()),)},
                {"artifacts": (Artifact("p", "k", "", [float("inf")]),)},
                {"artifacts": (Artifact("", "k", "", "v"),)}):
        with pytest.raises(ValueError):
            await store.record([rec("b"), rec("a", **bad)], OWNER)
    # the same check as the pipeline's (storyloom.artifacts.check_artifact), saying which item
    with pytest.raises(ValueError, match=r"^item 'a': artifact 'k': key must be a string, not 1$"):
        await store.record([rec("a", artifacts=(Artifact("p", "k", 1, "v"),))], OWNER)
    assert await states(store) == {"a": "running", "b": "running"}
    assert await store.artifacts("p") == []


# -- dependencies


@test
async def test_an_item_is_not_claimed_before_its_dependencies_complete(store):
    await add_pipeline(store, item("c2", after=("c1",)), item("c1"), item("c3", after=("c1", "c2")))
    assert await claim_ids(store) == ["c1"]
    assert await store.next_ready_at(JOB) is None  # c2 and c3 are blocked, not ready
    assert await complete(store, "c1")
    assert await store.next_ready_at(JOB) == 0.0
    assert await claim_ids(store) == ["c2"]
    assert await complete(store, "c2")
    assert await claim_ids(store) == ["c3"]


@test
async def test_blocked_items_stay_out_of_the_queue_views_but_count_as_pending(store):
    await add_pipeline(store, item("a"), item("b", after=("a",)))
    assert await store.position(JOB, "b") == -1
    assert await store.position(JOB, "a") == 1
    assert [r.item_id for r in await store.queued(10)] == ["a"]
    assert await store.queue_counts() == {2: {JOB: 1}}
    assert (await store.counts(JOB))["pending"] == 2
    assert await store.next_queued_at("chapter") == 0.0
    await claim_ids(store)
    assert await store.next_queued_at("chapter") is None


@test
async def test_a_dependency_not_in_the_job_counts_as_not_done(store):
    await add_pipeline(store, item("a", after=("later",)), item("b"))
    assert await claim_ids(store) == ["b"]
    # "later" arrives as a follow-up of b, then completes: a is released
    assert await complete(store, "b", follow_ups=(item("later"),))
    assert await claim_ids(store) == ["later"]
    assert await complete(store, "later")
    assert await claim_ids(store) == ["a"]


@test
async def test_a_dependency_completed_before_the_item_arrives_does_not_block_it(store):
    await add_pipeline(store, item("a"), item("b"))
    await claim_ids(store)
    assert await complete(store, "a")
    assert await complete(store, "b", follow_ups=(item("c", after=("a", "b")),))
    assert await claim_ids(store) == ["c"]


@test
async def test_a_failed_item_skips_what_waits_on_it_transitively(store):
    await add_pipeline(store, item("a"), item("b", after=("a",)), item("c", after=("b",)), item("d"),
                       item("e", after=("d", "a")))
    await claim_ids(store)  # a and d
    [ok] = await store.record([rec("a", "failed", error_kind="TIMEOUT", error="slow")], OWNER)
    assert ok
    assert await states(store) == {"a": "failed", "b": "skipped", "c": "skipped", "d": "running", "e": "skipped"}
    assert await errors(store) == {"a": "slow", "b": "blocked: a failed", "c": "blocked: a failed",
                                   "e": "blocked: a failed"}
    assert all(row.error_kind is None for row in await store.items(JOB, "skipped"))


@test
async def test_a_skipped_item_skips_what_waits_on_it(store):
    await add_pipeline(store, item("a"), item("b", after=("a",)))
    await claim_ids(store)
    [ok] = await store.record([rec("a", "skipped", error="cancelled")], OWNER)
    assert ok
    assert await errors(store) == {"a": "cancelled", "b": "blocked: a skipped"}


@test
async def test_an_item_waiting_on_a_skipped_or_failed_one_is_stored_skipped(store):
    await add_pipeline(store, item("s", state="skipped"), item("a", after=("s",)), item("b", after=("a",)),
                       item("f"))
    assert await states(store) == {"s": "skipped", "a": "skipped", "b": "skipped", "f": "pending"}
    assert await errors(store) == {"a": "blocked: s skipped", "b": "blocked: s skipped"}
    assert await claim_ids(store) == ["f"]


@test
async def test_a_follow_up_waiting_on_a_failed_item_is_skipped_at_once(store):
    await add_pipeline(store, item("f"), item("a"))
    await claim_ids(store)
    await store.record([rec("f", "failed", error="bad")], OWNER)
    assert await complete(store, "a", follow_ups=(item("n", after=("f",)), item("m", after=("n",))))
    assert await errors(store) == {"f": "bad", "n": "blocked: f failed", "m": "blocked: f failed"}


@test
async def test_requeue_failed_brings_back_what_it_blocked(store):
    await add_pipeline(store, item("a"), item("b", after=("a",)), item("c", after=("b",)))
    await claim_ids(store)
    await store.record([rec("a", "failed", error_kind="TIMEOUT", error="slow")], OWNER)
    assert await store.requeue_failed(JOB) == 1
    assert await states(store) == {"a": "pending", "b": "pending", "c": "pending"}
    assert await errors(store) == {"a": "slow"}  # the requeued item's own error stays, as ever
    assert await claim_ids(store) == ["a"]  # b and c wait again
    assert await complete(store, "a", attempt=2)
    assert await claim_ids(store) == ["b"]


@test
async def test_cancel_skips_blocked_items_too(store):
    await add_pipeline(store, item("a"), item("b", after=("a",)), item("g", gate="p:outline"))
    assert await store.cancel(JOB, "operator") == 3
    assert await errors(store) == {"a": "operator", "b": "operator", "g": "operator"}


@test
async def test_pausing_a_job_keeps_its_blocked_items_blocked(store):
    await add_pipeline(store, item("a"), item("b", after=("a",)))
    await claim_ids(store)
    await store.set_job_state(JOB, "paused")
    assert await complete(store, "a")  # released while the job is held
    assert await claim_ids(store) == []
    await store.set_job_state(JOB, "running")
    assert await claim_ids(store) == ["b"]
    await store.add_job(job_row("j2", state="paused"), [item("x"), item("y", after=("x",))])
    await store.set_job_state("j2", "running")
    assert await claim_ids(store, job_id="j2") == ["x"]


# -- taking over


@test
async def test_a_follow_up_takes_over_the_waiters_of_the_item_it_replaces(store):
    """The rewrite loop: QC of ch3 fails -> ch3-r1 (a rewrite) and ch3-r1-qc
    (after ch3-r1, taking over ch3-qc): export waited on ch3-qc, now on ch3-r1-qc."""
    await add_pipeline(store, item("ch3-qc", job_type="qc"), item("export", after=("ch3-qc",), job_type="export"),
                       item("other", after=("ch3-qc", "ch3-r1-qc")))
    assert await next_ids(store, job_type="qc") == [(JOB, "ch3-qc")]
    assert await complete(store, "ch3-qc", follow_ups=(
        item("ch3-r1"), item("ch3-r1-qc", after=("ch3-r1",), takes_over="ch3-qc", job_type="qc")))
    assert await next_ids(store, job_type="export") == []  # export waits on the rewrite's QC now
    assert await next_ids(store, job_type="qc") == []  # ch3-r1-qc waits on ch3-r1
    assert await claim_ids(store) == ["ch3-r1"]
    assert await complete(store, "ch3-r1")
    assert await next_ids(store, job_type="qc") == [(JOB, "ch3-r1-qc")]
    assert await complete(store, "ch3-r1-qc")
    assert await next_ids(store, job_type="export") == [(JOB, "export")]
    # "other" waited on both: once released by the new QC, it is free too
    assert await claim_ids(store) == ["other"]


@test
async def test_taking_over_a_failed_chain_passes_the_failure_on(store):
    await add_pipeline(store, item("f"), item("qc"), item("export", after=("qc",)))
    await claim_ids(store)
    await store.record([rec("f", "failed", error="bad")], OWNER)
    assert await complete(store, "qc", follow_ups=(item("qc-2", after=("f",), takes_over="qc"),))
    assert await errors(store) == {"f": "bad", "qc-2": "blocked: f failed", "export": "blocked: f failed"}


# -- stages in claims


@test
async def test_claim_of_one_stage_serves_only_its_items(store):
    await add_pipeline(store, item("a"), item("q1", job_type="qc"), item("b"), item("q2", job_type="qc", level=1))
    assert [c.item_id for c in await store.claim(JOB, 10, NOW, OWNER, job_type="qc")] == ["q2", "q1"]
    assert [c.item_id for c in await store.claim(JOB, 10, NOW, OWNER, job_type="qc")] == []
    assert [c.item_id for c in await store.claim(JOB, 1, NOW, OWNER, job_type="chapter")] == ["a"]
    assert await claim_ids(store) == ["b"]


# -- gates


@test
async def test_a_gated_item_waits_for_its_gate(store):
    await add_pipeline(store, item("outline"), item("ch1", gate="p:outline", after=("outline",)),
                       item("ch2", gate="p:outline"), item("x", gate="q:outline"))
    assert await claim_ids(store) == ["outline"]
    assert await complete(store, "outline")
    assert await claim_ids(store) == []  # ch1's dependency is done, its gate is not
    assert await store.gates() == [GateRow("p:outline", None, 2), GateRow("q:outline", None, 1)]
    assert await store.open_gate("p:outline") == 2
    assert await claim_ids(store) == ["ch1", "ch2"]
    [p, q] = await store.gates()
    assert (p.name, p.waiting, q.waiting, q.opened_at) == ("p:outline", 0, 1, None)
    assert p.opened_at is not None
    assert await store.open_gate("p:outline") == 0  # again: nothing to do, opened_at kept
    assert (await store.gates())[0].opened_at == p.opened_at


@test
async def test_a_gate_opened_first_lets_later_items_through(store):
    assert await store.open_gate("p:outline") == 0
    await add_pipeline(store, item("a"))
    await claim_ids(store)
    assert await complete(store, "a", follow_ups=(item("ch1", gate="p:outline"),))
    assert await claim_ids(store) == ["ch1"]
    assert [(g.name, g.waiting) for g in await store.gates()] == [("p:outline", 0)]


@test
async def test_opening_a_gate_leaves_items_that_still_wait_blocked(store):
    await add_pipeline(store, item("a"), item("b", gate="g", after=("a",)))
    assert await store.open_gate("g") == 1
    assert await claim_ids(store) == ["a"]
    assert await complete(store, "a")
    assert await claim_ids(store) == ["b"]


# -- artifacts


@test
async def test_artifacts_are_committed_with_versions_and_provenance(store):
    await add_pipeline(store, item("a"), item("b"), item("c"))
    await claim_ids(store)
    outline = {"arcs": ["ขึ้น", "ลง"], "beats": [{"title": THAI, "n": 1}]}
    assert await complete(store, "a", model="m2", attempt=2, finished_at=NOW + 5, artifacts=(
        Artifact("p1", "outline", "", outline), Artifact("p1", "chapter", "1", f"{THAI} v1")))
    assert await complete(store, "b", artifacts=(Artifact("p1", "chapter", "1", "v2"),
                                                 Artifact("p2", "chapter", "1", "other book")))
    assert await complete(store, "c", artifacts=(Artifact("p1", "chapter", "2", "two"),
                                                 Artifact("p1", "chapter", "1", "v3")))
    every = await store.artifacts("p1")
    assert [(a.kind, a.key, a.version, a.content) for a in every] == [
        ("outline", "", 1, outline), ("chapter", "1", 1, f"{THAI} v1"), ("chapter", "1", 2, "v2"),
        ("chapter", "2", 1, "two"), ("chapter", "1", 3, "v3")]
    first = every[0]
    assert (first.project_id, first.job_id, first.item_id, first.attempt, first.model, first.created_at) == (
        "p1", JOB, "a", 2, "m2", NOW + 5)
    assert [(a.item_id, a.version) for a in await store.artifacts("p2")] == [("b", 1)]
    assert [a.kind for a in await store.artifacts("p1", kinds=["outline", "summary"])] == ["outline"]
    assert await store.artifacts("p1", kinds=[]) == []
    assert await store.artifacts("nobody") == []


@test
async def test_artifacts_of_a_failed_batch_are_not_stored(store):
    await add_pipeline(store, item("a"))
    await claim_ids(store)
    with pytest.raises(ValueError):
        await store.record([rec("a", artifacts=(Artifact("p", "k", "", "ok"), Artifact("p", "k", 1, "bad key")))],
                           OWNER)
    assert await store.artifacts("p") == []
    assert await complete(store, "a", artifacts=(Artifact("p", "k", "", "ok"),))
    assert [a.version for a in await store.artifacts("p")] == [1]


@test
async def test_a_late_waiter_of_a_skipped_item_names_the_failure_behind_it(store):
    await add_pipeline(store, item("f"), item("b", after=("f",)), item("m"))
    await claim_ids(store)
    await store.record([rec("f", "failed", error="bad")], OWNER)
    assert await complete(store, "m", follow_ups=(item("late", after=("b",)),))
    assert (await errors(store))["late"] == "blocked: f failed"
    # so requeueing f brings it back with the rest
    assert await store.requeue_failed(JOB) == 1
    assert (await states(store))["late"] == "pending"
    assert await claim_ids(store) == ["f"]


@test
async def test_next_ready_at_of_one_stage(store):
    await add_pipeline(store, item("a"), item("q", job_type="qc"), item("w", job_type="qc", after=("a",)))
    assert await store.next_ready_at(JOB, job_type="qc") == 0.0
    assert await store.next_ready_at(JOB, job_type="export") is None
    await store.claim(JOB, 10, NOW, OWNER, job_type="qc")
    assert await store.next_ready_at(JOB, job_type="qc") is None  # w is blocked
    assert await store.next_ready_at(JOB) == 0.0  # a
    [ok] = await store.record([rec("q", not_before=NOW + 50, state="pending")], OWNER)
    assert ok
    assert await store.next_ready_at(JOB, job_type="qc") == NOW + 50


@test
async def test_follow_ups_of_a_held_job_are_held(store):
    await add_pipeline(store, item("a"))
    await claim_ids(store)
    await store.set_job_state(JOB, "paused")
    assert await complete(store, "a", follow_ups=(item("b"), item("c", after=("b",))))
    assert await claim_ids(store) == []
    assert await store.next_queued_at("chapter") is None
    await store.set_job_state(JOB, "running")
    assert await claim_ids(store) == ["b"]


@test
async def test_a_deleted_jobs_dependencies_do_not_reach_a_new_job_of_its_id(store):
    """``delete_job`` removes the job's dependency rows too: the old "y after x"
    must not release a new job's y, which waits on z, when the new x completes."""
    await add_pipeline(store, item("x"), item("y", after=("x",)))
    assert await store.delete_job(JOB) is True
    await add_pipeline(store, item("x"), item("z"), item("y", after=("z",)))
    run_ids = await claim_ids(store, limit=1)
    assert run_ids == ["x"]
    assert await complete(store, "x")
    assert await claim_ids(store) == ["z"]  # y still waits on z
    assert await complete(store, "z")
    assert await claim_ids(store) == ["y"]
