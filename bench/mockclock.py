"""A job under trio's MockClock: how much real time do simulated waits take?

    .venv/bin/python bench/mockclock.py            # 12 items, best of 3, on the mock clock
    .venv/bin/python bench/mockclock.py --real     # the same job on the real clock, once

The job (the one in tests/test_loom_fixture.py): 12 items on a simulated
model with 1 s latency, 60 requests a minute, 30% temporary errors and 20%
rate-limit rejections (``retry_after`` 2 s), retried after 2-8 s, 3 at a
time, on SQLite in a temporary folder, through ``storyloom.testing.fresh_loom``
(``loom.clock = MockClock(autojump_threshold=0)``). Printed: the run's own
duration (``Summary.finished_at - started_at``, on the run's clock), the real
time (``time.perf_counter``) and the attempts.
"""

from __future__ import annotations

import sys
import time

import trio.testing

from storyloom.testing import fresh_loom

def settings(latency_ms: int, rpm: int) -> str:
    return (f"models:\n  slow: {{provider: simulated, latency_ms: {latency_ms}, output_tokens: 20, seed: 3, "
            f"rpm: {rpm}, errors: {{TEMPORARY_ERROR: 0.3, API_RATE_LIMIT: 0.2}}, retry_after: 2}}\n"
            "default_models: [slow]\nretry_config: {max_retries: 6, retry_delay: {initial: 2s, max: 8s}}\n"
            "failure_policy: {pause_above: 1}\nprogress: []\nreports: []\n")


def job(items: int) -> str:
    return "job_id: slow\njob_type: qc_processing\nconfig: {max_parallel: 3}\nitems:\n" + "".join(
        f"  - {{item_id: i{i}}}\n" for i in range(items))


ITEMS, LATENCY_MS, RPM = 12, 1000, 60


def once(real_clock: bool) -> tuple[float, float, int]:
    clock = None if real_clock else trio.testing.MockClock(autojump_threshold=0)
    with fresh_loom(clock=clock) as loom:
        loom.write("storyloom.yaml", settings(LATENCY_MS, RPM))
        started = time.perf_counter()
        result = loom.run(job(ITEMS))
        real = time.perf_counter() - started
        result.assert_outcomes(completed=ITEMS)
        attempts = len(loom.read(lambda store: store.attempts("slow")))
    return result.summary.finished_at - result.summary.started_at, real, attempts


def main() -> None:
    real_clock = "--real" in sys.argv
    runs = [once(real_clock) for _ in range(1 if real_clock else 3)]
    simulated, real, attempts = min(runs, key=lambda run: run[1])
    print(f"{'real' if real_clock else 'mock'} clock: run took {simulated:.1f} s on its clock, "
          f"{real:.3f} s real, {attempts} attempts")


if __name__ == "__main__":
    main()
