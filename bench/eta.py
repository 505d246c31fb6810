"""How close the terminal view's ETA comes to the truth, on real runs.

    .venv/bin/python bench/eta.py

Runs a few jobs through the kernel with the simulated provider (its latency
jitters from 0.5x to 1.5x the mean), feeds the kernel's events to the same
``ProgressTracker`` the terminal view uses, and compares the ETA it gave at
10%, 25%, 50%, 75% and 90% done with the time the last item actually finished.
Prints one row per job and point: estimate, truth, error in percent; then
whether the target (issue 13: within 15% from 10% done onward) is met, and
the load average (the machine is shared: figures move with it).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import trio

import storyloom
from storyloom.api import run_job
from storyloom.config import Options
from storyloom.plugins.support.tracker import ProgressTracker

POINTS = (0.1, 0.25, 0.5, 0.75, 0.9)
#: The largest ETA error allowed, as a share of the true time left, at every point.
TARGET = 0.15
#: (items, max_parallel, mean latency ms, fault rates)
CASES = [
    (200, 8, 200, {}),
    (300, 5, 100, {}),
    (120, 4, 300, {}),
    (200, 8, 200, {"TIMEOUT": 0.1, "TEMPORARY_ERROR": 0.05}),
]


class Recorder:
    """A sink that asks the tracker for an ETA after every finished item."""

    def __init__(self) -> None:
        self.tracker = ProgressTracker()
        self.samples: list[tuple[float, float, float | None]] = []  # (fraction done, wall time, eta)

    async def run(self, events) -> None:
        async for event in events:
            self.tracker.apply(event)
            if event.kind == "item_finished" and self.tracker.total:
                now = time.time()
                self.samples.append((self.tracker.fraction, now, self.tracker.eta(now)))


def measure(n: int, parallel: int, latency_ms: int, faults: dict[str, float]) -> list[tuple[float, float, float]]:
    recorder = Recorder()

    class Plugin:
        @storyloom.hookimpl
        def loom_register_sinks(self, register):
            register("eta-recorder", lambda config, plan: recorder)

    folder = Path(tempfile.mkdtemp(prefix="storyloom-eta-"))
    (folder / "storyloom.yaml").write_text(f"""
models:
  sim: {{provider: simulated, latency_ms: {latency_ms}, output_tokens: 50, seed: 4, errors: {faults}}}
default_models: [sim]
retry_config: {{max_retries: 3, retry_delay: {{initial: 0.05s, max: 0.2s}}}}
progress: [eta-recorder]
reports: []
failure_policy: {{pause_above: 1}}
""")
    (folder / "job.yaml").write_text(f"job_id: eta\njob_type: qc_processing\nconfig: {{max_parallel: {parallel}}}\n"
                                     f"items:\n  - {{project_id: p, chapters: 1-{n}}}\n")
    options = Options(state_dir=str(folder / "state"), out_dir=str(folder / "out"), quiet=True, autoload=False,
                      plugins=("no:outputs",))
    trio.run(lambda: run_job(folder / "job.yaml", options=options, plugins=(Plugin(),)))
    end = max(at for _fraction, at, _eta in recorder.samples)  # the last item finished
    rows = []
    for point in POINTS:
        _fraction, at, eta = min(recorder.samples, key=lambda s: abs(s[0] - point))
        rows.append((point, eta, end - at))
    return rows


def main() -> None:
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'items':>6} {'par':>4} {'ms':>5} {'faults':>7} {'done':>5} {'eta s':>7} {'true s':>7} {'error':>7}")
    worst = (0.0, "")
    for n, parallel, latency, faults in CASES:
        for point, eta, truth in measure(n, parallel, latency, faults):
            error = (eta - truth) / truth * 100 if eta is not None and truth else float("nan")
            print(f"{n:>6} {parallel:>4} {latency:>5} {sum(faults.values()):>7.0%} {point:>5.0%} "
                  f"{eta if eta is not None else float('nan'):>7.2f} {truth:>7.2f} {error:>+6.1f}%", flush=True)
            if math.isnan(error) or abs(error) > worst[0]:
                worst = (abs(error) if not math.isnan(error) else math.inf, f"{n} items at {point:.0%}")
    met = worst[0] <= TARGET * 100
    print(f"target: ETA error <= {TARGET:.0%} from 10% done onward: {'met' if met else 'NOT met'} "
          f"(worst {worst[0]:.1f}%, {worst[1]})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
