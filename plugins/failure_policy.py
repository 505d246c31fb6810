"""The seed's failure policy: pause above 50% failures, notify from 20%.

Once ``min_items`` items have finished in this run (completed or failed;
retries do not count), the failure rate decides:

- above ``pause_above`` (0.5): the job pauses (running items finish, nothing
  new starts; the store keeps it ``paused``, exit code 3) and an ``escalate``
  event lists the failures grouped by error kind;
- from ``notify_from`` (0.2) up to ``pause_above``: a ``notify`` event, once
  each time the rate enters this band;
- below ``notify_from``: nothing.

The rate counts this run's items only, so ``storyloom resume`` after a fix
starts afresh instead of pausing again at once on the old failures.
Thresholds come from ``failure_policy:`` in ``storyloom.yaml``;
``-p no:failure_policy`` turns the policy off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storyloom import hookimpl
from storyloom.settings import FailurePolicy

#: Item ids listed per error kind in an escalation.
IDS_LISTED = 10


def band(policy: FailurePolicy, finished: int, failed: int) -> str:
    """``"pause"``, ``"notify"`` or ``"ok"`` for ``failed`` of ``finished`` items."""
    if finished < policy.min_items:
        return "ok"
    rate = failed / finished
    if rate > policy.pause_above:
        return "pause"
    if rate >= policy.notify_from:
        return "notify"
    return "ok"


@dataclass
class _Run:
    control: object
    #: Items still to finish. Counted from the job file, so on a resume it is
    #: too high (earlier runs' items are in it); only ever used to skip a
    #: pointless pause, never to skip an escalation.
    left: int = 0
    finished: int = 0
    failed: int = 0
    band: str = "ok"
    paused: bool = False
    by_kind: dict[str, list[str]] = field(default_factory=dict)  # error kind -> failed item ids


class FailureWatcher:
    """Applies :func:`band` after every finished item of every batch it sees."""

    def __init__(self, policy: FailurePolicy) -> None:
        self.policy = policy
        self.runs: dict[str, _Run] = {}

    @hookimpl
    def loom_batch_started(self, job, control):
        left = sum(1 for item in job.items if item.status == "pending")
        self.runs[job.job_id] = _Run(control, left=left)

    @hookimpl
    def loom_item_finished(self, job, item, outcome):
        run = self.runs.get(job.job_id)
        if run is None or run.paused or outcome.state not in ("completed", "failed"):
            return
        run.finished += 1
        run.left -= 1
        if outcome.state == "failed":
            run.failed += 1
            run.by_kind.setdefault(str(outcome.error_kind or "UNKNOWN"), []).append(item.item_id)
        now = band(self.policy, run.finished, run.failed)
        rate = run.failed / run.finished
        summary = f"failure rate {rate:.0%} ({run.failed} of {run.finished} finished items)"
        data = {"failure_rate": round(rate, 4), "finished": run.finished, "failed": run.failed,
                "failures_by_kind": {kind: len(ids) for kind, ids in sorted(run.by_kind.items())}}
        if now == "pause":
            run.paused = True
            above = f"{summary} is above {self.policy.pause_above:.0%}"
            if run.left > 0:
                run.control.pause(above)
                what = f"the job is paused (running items finish); continue with: storyloom resume {job.job_id}"
            else:  # pausing would stop nothing, and a resume would have nothing to do
                what = "nothing was left to run"
            run.control.escalate(f"{above}; {what}. Failures by kind: {self._grouped(run)}", **data,
                                 failed_items={kind: ids[:IDS_LISTED] for kind, ids in sorted(run.by_kind.items())})
        elif now == "notify" and run.band != "notify":
            run.control.notify(f"elevated {summary}; the job continues. Failures by kind: {self._grouped(run)}",
                               **data)
        run.band = now

    @hookimpl
    def loom_batch_finished(self, job):
        self.runs.pop(job.job_id, None)

    @staticmethod
    def _grouped(run: _Run) -> str:
        parts = []
        for kind, ids in sorted(run.by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            shown = ", ".join(ids[:IDS_LISTED]) + (", ..." if len(ids) > IDS_LISTED else "")
            parts.append(f"{kind} {len(ids)} ({shown})")
        return "; ".join(parts)


@hookimpl
def loom_configure(config):
    config.register_plugin(FailureWatcher(config.settings.failure_policy), name="failure-policy-watcher")
