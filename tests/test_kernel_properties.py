"""Property tests: the kernel's invariants hold at random fault rates and limits."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storyloom.testing import Loom

#: Attempts that do not use up max_retries: rate-limit rejections, and a model taken out of the batch.
FREE_KINDS = ("API_RATE_LIMIT", "AUTH_ERROR", "QUOTA_EXCEEDED")
KINDS = ["API_RATE_LIMIT", "TIMEOUT", "TEMPORARY_ERROR", "INVALID_INPUT", "AUTH_ERROR", "QUOTA_EXCEEDED"]

# Auth and quota errors pause a one-model batch; keep them rare enough that
# the resume loop below ends: at worst a resume pauses with 0.08 per attempt
# and completes with 0.1, so 30 items need about 25 resumes of the 200 allowed.
rates = st.fixed_dictionaries({
    kind: st.sampled_from([0.0, 0.05, 0.1] if kind in ("AUTH_ERROR", "QUOTA_EXCEEDED") else [0.0, 0.05, 0.2, 0.5])
    for kind in KINDS
})


async def stored(store) -> tuple[list, int, dict[str, int]]:
    """Through the Store protocol: every attempt, how many results, item_id -> free attempts."""
    rows = await store.attempts("prop")
    items = await store.items("prop")
    results = sum([await store.result("prop", item.item_id) is not None for item in items])
    return rows, results, {item.item_id: item.free_attempts for item in items}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = now = 0
    for _t, step in events:
        now += step
        best = max(best, now)
    return best


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 30),
    max_parallel=st.integers(1, 6),
    max_retries=st.integers(0, 3),
    error_rates=rates,
    hang=st.sampled_from([0.0, 0.1]),
    skipped=st.sets(st.integers(0, 29), max_size=3),
    seed=st.integers(0, 1000),
)
def test_kernel_invariants(n, max_parallel, max_retries, error_rates, hang, skipped, seed):
    # Keep the total fault rate a probability.
    total = sum(error_rates.values())
    if total > 0.9:
        error_rates = {k: v * 0.9 / total for k, v in error_rates.items()}
    with tempfile.TemporaryDirectory() as tmp:
        loom = Loom(Path(tmp))
        loom.write("storyloom.yaml", f"""
            models:
              sim: {{provider: simulated, latency_ms: 2, output_tokens: 20, seed: {seed},
                     hang: {hang}, retry_after: 0.001, errors: {error_rates}}}
            default_models: [sim]
            retry_config: {{max_retries: {max_retries}, retry_delay: {{initial: 0.001s, max: 0.004s}}}}
            failure_policy: {{pause_above: 1}}  # high fault rates are the point here, not a reason to stop
        """)
        items = "".join(
            f"  - {{item_id: i{i}{', status: skipped' if i in skipped else ''}}}\n" for i in range(n))
        result = loom.run(f"job_id: prop\njob_type: qc_processing\n"
                          f"config: {{max_parallel: {max_parallel}, timeout_per_item: 0.05s}}\nitems:\n{items}")
        # An auth or quota error takes the only model out; the items left
        # then fail, saying so, instead of waiting for a model that cannot come back.
        assert result.summary.status != "paused"
        after_out = [r for r in result.items.values() if r.error and r.error.startswith("no model left")]
        assert all(r.state == "failed" for r in after_out)

        counts = result.counts
        assert counts["pending"] == 0 and counts["running"] == 0
        assert counts["completed"] + counts["failed"] + counts["skipped"] == n
        assert counts["skipped"] == len([i for i in skipped if i < n])
        assert result.summary.status == ("failed" if counts["failed"] else "completed")
        assert result.summary.exit_code == (1 if counts["failed"] else 0)

        rows, results, free = loom.read(stored)
        attempts = [(r.item_id, r.attempt, r.state, r.started_at, r.finished_at) for r in rows]
        free_kinds = Counter(r.item_id for r in rows if r.error_kind in FREE_KINDS)
        assert {k: v for k, v in free.items() if v} == free_kinds
        per_item: dict[str, list] = {}
        for item_id, attempt, state, *_ in attempts:
            per_item.setdefault(item_id, []).append((attempt, state))
        for item_id, rows in per_item.items():
            # Rate-limit rejections and attempts on a model taken out of the
            # batch do not use up retries; every other attempt does.
            assert len(rows) - free[item_id] <= max_retries + 1, (item_id, rows)
            assert sorted(a for a, _ in rows) == list(range(1, len(rows) + 1))  # no attempt twice
            assert [s for _, s in rows].count("completed") <= 1  # never completes twice
            terminal = [s for _, s in sorted(rows)][-1]
            assert terminal == result.items[item_id].state  # one terminal state, the last attempt's
            assert all(s == "pending" for _, s in sorted(rows)[:-1])  # earlier attempts were retries
        assert results == counts["completed"]
        assert max_overlap([(s, e) for *_, s, e in attempts]) <= max_parallel
