"""The data every report renderer receives, built from the store.

:func:`build_report` reads the job's items, attempts and costs and returns
one plain mapping (JSON-ready; described by ``schemas/report.schema.json``):
job information, results, performance, model usage, errors, a throughput
timeline, failed items, and recommendations computed from all of that.
Renderers (``loom_register_renderers``) only format it.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from .errors import ErrorKind
from .job import Job, item_from_dict
from .settings import RetryConfig
from .store import ITEM_STATES, Store
from .store.owner import shown_state
from .store.protocol import AttemptRow, JobRow
from .summary import Summary

#: Bumped when a key changes meaning or goes away (adding keys does not bump it).
REPORT_VERSION = 2
#: Failed items listed one by one; ``failed_items_total`` counts them all.
MAX_FAILED_LISTED = 200
#: The throughput chart's resolution.
TIMELINE_BUCKETS = 30
#: The smoothed throughput's centred moving window, in buckets.
SMOOTH_BUCKETS = 5
#: The latency distribution's quantiles (of completed attempts, per model).
LATENCY_QUANTILES = {"p25_s": 0.25, "p50_s": 0.5, "p75_s": 0.75, "p90_s": 0.9}
_BUCKET_LADDER = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
#: A gap this long with no attempt running (a pause before a resume) is not active time.
IDLE_GAP_S = 300.0

# Recommendation thresholds: a share of attempts, and the least attempts that make a share mean something.
TIMEOUT_SHARE = 0.2
RATE_LIMIT_SHARE = 0.25
MIN_ATTEMPTS_FOR_SHARE = 3
BUDGET_NEARLY_SPENT = 0.9
#: What to do about failures that retrying cannot fix, by kind.
UNFIXABLE_ADVICE = {
    ErrorKind.INVALID_INPUT: "correct those items' inputs or the prompt template, then run them again in a new job",
    ErrorKind.AUTH_ERROR: "check the model's API key (api_key_env) and resume",
    ErrorKind.QUOTA_EXCEEDED: "top up or raise the provider account's quota, then resume",
    ErrorKind.INTERNAL_ERROR: "a plugin raised an unexpected exception; see the traceback on stderr",
}


async def needs_review(job_types: Mapping[str, Any], job: Job, store: Store) -> list[dict[str, Any]]:
    """What of ``job`` waits for a person: every stage's job type's
    :class:`~storyloom.jobtype.FlagsForReview` answer, in stage order."""
    out: list[dict[str, Any]] = []
    for name in dict.fromkeys(job.stage_types):
        flagged = getattr(job_types.get(name), "needs_review", None)
        if flagged is not None:
            out.extend(await flagged(job, store))
    return out


async def snapshot(store: Store, row: JobRow, now: float | None = None) -> Summary:
    """The job as it stands: a running or pending job is reported up to ``now``;
    a running one whose worker is gone, as ``interrupted`` (display only)."""
    now = time.time() if now is None else now
    attempts = await store.attempts(row.job_id)
    started = min((a.started_at for a in attempts), default=row.created_at)
    finished = now if row.state in ("running", "pending") else row.updated_at
    costs = await store.costs(row.job_id)
    status, reason = await shown_state(store, row)
    return Summary(job_id=row.job_id, status=status, counts=await store.counts(row.job_id),
                    cost_usd=costs.cost_usd, started_at=started, finished_at=max(finished, started),
                    reason=reason)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _percent(share: float) -> str:
    """``40%``; one decimal below 10%, so that 1 in 200 reads 0.5%, not 0%."""
    return f"{share:.1%}" if 0 < share < 0.1 else f"{share:.0%}"


async def build_report(store: Store, job: Job, summary: Summary, *,
                       shown_fields: Sequence[str] = (),
                       review: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Everything a report shows, from the store and ``summary`` (what the
    batch returned, or :func:`snapshot` of a job still going).

    Covers the whole job, earlier runs included (a resumed job reports every
    item). Renderers (``loom_register_renderers``) turn this mapping into files.
    ``shown_fields`` are the item fields a failed item's row shows besides
    ``project_id``: the job type's ``event_fields``; ``review`` what
    :func:`needs_review` found (``needs_review`` in the report).
    """
    job_id = job.job_id
    counts = {state: summary.counts.get(state, 0) for state in ITEM_STATES}
    total = sum(counts.values())
    tally = _Tally(await store.attempts(job_id))
    costs = await store.costs(job_id)
    failed_rows = await store.items(job_id, "failed")

    # A resumed job started with its first attempt, in an earlier run.
    started = min(summary.started_at, tally.first_start if tally.first_start is not None else summary.started_at)
    finished = max(summary.finished_at, started)
    active = tally.active_seconds() or (finished - started)
    done_times = tally.completed_item_seconds()
    budget = None
    if job.budget_usd:
        budget = {"budget_usd": job.budget_usd, "spent_usd": costs.cost_usd, "unknown_usd": costs.unknown_usd,
                  "share": _share(costs.cost_usd + costs.unknown_usd, job.budget_usd)}
    failed_by_kind: dict[str, int] = {}
    for row in failed_rows:
        kind = row.error_kind or "UNKNOWN"
        failed_by_kind[kind] = failed_by_kind.get(kind, 0) + 1
    rate_limited = tally.by_kind.get(ErrorKind.API_RATE_LIMIT.value, 0)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "job_id": job_id,
        "job_type": job.job_type,
        "language": job.language,
        "status": summary.status,
        "reason": summary.reason,
        "started": _iso(started),
        "finished": _iso(finished),
        "duration_s": round(finished - started, 3),
        "active_s": round(active, 3),
        "total": total,
        "counts": counts,
        "percent": {state: round(100 * _share(n, total), 1) for state, n in counts.items()},
        "cost_usd": costs.cost_usd,
        "cost_per_item_usd": costs.cost_usd / counts["completed"] if counts["completed"] else None,
        "input_tokens": costs.input_tokens,
        "output_tokens": costs.output_tokens,
        "attempts": costs.attempts,
        "unknown_attempts": costs.unknown_attempts,
        "unknown_usd": costs.unknown_usd,
        "retries": tally.retries,
        "stale_attempts": tally.stale,
        "avg_item_s": round(sum(done_times) / len(done_times), 3) if done_times else None,
        "throughput_per_min": (round(len(tally.finishes) / active * 60, 2)
                               if active > 0 and tally.finishes else None),
        "budget": budget,
        "models": tally.models(),
        "errors": {
            "attempts_by_kind": dict(sorted(tally.by_kind.items())),
            "failed_by_kind": dict(sorted(failed_by_kind.items())),
            "rate_limited": rate_limited,
            "rate_limited_share": round(_share(rate_limited, tally.count), 4),
        },
        "needs_review": [dict(entry) for entry in review],
        "failed_items_total": len(failed_rows),
        "failed_items": [_failed_item(row, job, shown_fields) for row in failed_rows[:MAX_FAILED_LISTED]],
        "timeline": _timeline(tally, started),
        "latency": tally.latency(),
    }
    report["recommendations"] = _recommendations(report)
    return report


class _Tally:
    """One pass over a job's attempts, counting what the report needs
    (a job may have 100,000 of them: no second pass, no objects per row)."""

    def __init__(self, attempts: list[AttemptRow]) -> None:
        self.count = len(attempts)
        self.retries = 0
        self.stale = 0
        self.first_start: float | None = None
        self.by_kind: dict[str, int] = {}
        self.finishes: list[tuple[float, float, str]] = []  # (started_at, finished_at, completed | failed)
        self.spends: list[tuple[float, float]] = []  # (finished_at, cost) of attempts that cost something
        self.spans: list[tuple[float, float]] = []
        self.replies: dict[str, list[float]] = {}  # model -> durations of its completed attempts
        self._item_time: dict[str, float] = {}
        self._completed: list[str] = []
        # model -> [items, attempts, input, output, cost, timeouts, rate_limited, time of completing attempts]
        self._models: dict[str, list[Any]] = {}
        timeout, rate_limit = ErrorKind.TIMEOUT.value, ErrorKind.API_RATE_LIMIT.value
        item_time, models, by_kind = self._item_time, self._models, self.by_kind
        for item_id, _attempt, state, model, start, end, kind, _error, tokens_in, tokens_out, cost in attempts:
            took = end - start if end > start else 0.0
            item_time[item_id] = item_time.get(item_id, 0.0) + took
            self.spans.append((start, end))
            if cost:
                self.spends.append((end, cost))
            if state == "pending":
                self.retries += 1
            elif state == "stale":
                self.stale += 1  # refused: its worker had lost the lease; the cost counts
            elif state in ("completed", "failed"):
                self.finishes.append((start, end, state))
                if state == "completed":
                    self._completed.append(item_id)
            if kind:
                by_kind[kind] = by_kind.get(kind, 0) + 1
            if model is None:  # never reached a model: in the totals only
                continue
            m = models.get(model)
            if m is None:
                m = models[model] = [0, 0, 0, 0, 0.0, 0, 0, 0.0]
            m[1] += 1
            m[2] += tokens_in
            m[3] += tokens_out
            m[4] += cost
            if state == "completed":
                m[0] += 1
                m[7] += took
                self.replies.setdefault(model, []).append(took)
            if kind == timeout:
                m[5] += 1
            elif kind == rate_limit:
                m[6] += 1
        if self.spans:
            self.spans.sort()
            self.first_start = self.spans[0][0]

    def active_spans(self) -> list[tuple[float, float]]:
        """The stretches with an attempt running, bridging gaps up to IDLE_GAP_S
        (retry delays, rate-limit waits) but not a pause that lasted longer."""
        merged: list[tuple[float, float]] = []
        start = end = None
        for s, e in self.spans:
            if start is None:
                start, end = s, e
            elif s - end > IDLE_GAP_S:
                merged.append((start, end))
                start, end = s, e
            elif e > end:
                end = e
        if start is not None:
            merged.append((start, end))
        return merged

    def active_seconds(self) -> float:
        return sum(end - start for start, end in self.active_spans())

    def latency(self) -> list[dict[str, Any]]:
        """Per model, the distribution of its completed attempts' durations."""
        rows = []
        for name in sorted(self.replies):
            durations = sorted(self.replies[name])
            row: dict[str, Any] = {"name": name, "count": len(durations), "min_s": round(durations[0], 3)}
            row.update((key, round(_quantile(durations, q), 3)) for key, q in LATENCY_QUANTILES.items())
            row["max_s"] = round(durations[-1], 3)
            rows.append(row)
        return rows

    def completed_item_seconds(self) -> list[float]:
        """Per completed item, the time its attempts took (retries included)."""
        return [self._item_time[item_id] for item_id in self._completed]

    def models(self) -> list[dict[str, Any]]:
        rows = []
        for name in sorted(self._models):
            items, attempts, tokens_in, tokens_out, cost, timeouts, limited, took = self._models[name]
            rows.append({"name": name, "items": items, "attempts": attempts, "input_tokens": tokens_in,
                         "output_tokens": tokens_out, "tokens": tokens_in + tokens_out, "cost_usd": cost,
                         "timeouts": timeouts, "rate_limited": limited,
                         "avg_s": round(took / items, 3) if items else None})
        return rows


def _failed_item(row: Any, job: Job, shown_fields: Sequence[str]) -> dict[str, Any]:
    item = item_from_dict({"item_id": row.item_id, **(row.definition or {})})
    shown = {name: item.fields[name] for name in shown_fields if item.fields.get(name) is not None}
    # A follow-up of a later stage stores its job type; the first stage's items do not.
    job_type = item.job_type or job.job_type
    stages = job.stage_types
    return {"item_id": row.item_id, "project_id": item.project_id, "job_type": job_type,
            "stage": stages.index(job_type) if job_type in stages else None, "fields": shown,
            "attempts": row.attempts, "model": row.last_model, "error_kind": row.error_kind, "error": row.error}


def _quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of a sorted, non-empty list, interpolating between ranks."""
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _timeline(tally: _Tally, started: float) -> dict[str, Any]:
    """Per time bucket since the start: items finished (completed or failed),
    the smoothed throughput, and the spend so far.

    ``per_min`` counts the items that ended in the bucket. ``smoothed_per_min``
    spreads each item's finish over the time its last attempt ran (items
    finishing in bursts, every slot at once, would make the count saw between
    0 and a peak) and takes items per minute of active time over a centred
    window of SMOOTH_BUCKETS buckets; None where nothing ran (a pause shows
    as a gap, not as a slow stretch)."""
    finishes = tally.finishes
    if not finishes:
        return {"bucket_s": 0, "window_s": 0, "buckets": []}
    span = max(end for _start, end, _state in finishes) - started
    bucket = next((b for b in _BUCKET_LADDER if b * TIMELINE_BUCKETS >= span), _BUCKET_LADDER[-1])
    n = max(1, min(math.ceil(span / bucket) if span > 0 else 1, 10 * TIMELINE_BUCKETS))

    def index(at: float) -> int:
        return min(max(int((at - started) // bucket), 0), n - 1)

    def overlap(i: int, start: float, end: float) -> float:
        return max(0.0, min(end, started + (i + 1) * bucket) - max(start, started + i * bucket))

    buckets = [{"offset_s": i * bucket, "completed": 0, "failed": 0} for i in range(n)]
    spread = {"completed": [0.0] * n, "failed": [0.0] * n}
    for start, end, state in finishes:
        buckets[index(end)][state] += 1
        shares = spread[state]
        if end - start <= 0 or index(start) == index(end):
            shares[index(end)] += 1
            continue
        for i in range(index(start), index(end) + 1):
            shares[i] += overlap(i, start, end) / (end - start)
    spent = [0.0] * n
    for end, cost in tally.spends:
        spent[index(end)] += cost
    active = [0.0] * n  # seconds of each bucket with something running
    for start, end in tally.active_spans():
        for i in range(index(start), index(end) + 1):
            active[i] += overlap(i, start, end)
    half = SMOOTH_BUCKETS // 2
    total = 0.0
    for i, b in enumerate(buckets):
        b["per_min"] = round((b["completed"] + b["failed"]) * 60 / bucket, 2)
        window = range(max(0, i - half), min(n, i + half + 1))
        seconds = sum(active[j] for j in window)
        shown = active[i] > 0 and seconds > 0
        failed = sum(spread["failed"][j] for j in window)
        finished = failed + sum(spread["completed"][j] for j in window)
        b["smoothed_per_min"] = round(finished * 60 / seconds, 2) if shown else None
        b["smoothed_failed_per_min"] = round(failed * 60 / seconds, 2) if shown else None
        total += spent[i]
        b["spent_usd"] = round(total, 6)
    return {"bucket_s": bucket, "window_s": SMOOTH_BUCKETS * bucket, "buckets": buckets}


#: The kinds no retry can fix, whatever a job's settings.
UNFIXABLE = frozenset(RetryConfig().non_retryable_errors)


def _failures(report: dict[str, Any], failed: int) -> str:
    """Which kinds failed, with their share of the items, and the command that runs them again."""
    total, job_id = report["total"], report["job_id"]
    by_kind = sorted(report["errors"]["failed_by_kind"].items(), key=lambda kv: (-kv[1], kv[0]))
    kinds = ", ".join(f"{kind} {n} ({_percent(_share(n, total))})" for kind, n in by_kind)
    text = f"{failed} of {total} items failed ({_percent(_share(failed, total))}): {kinds}. "
    retryable = [kind for kind, _n in by_kind if kind not in UNFIXABLE and kind in _KNOWN_KINDS]
    command = f"storyloom resume {job_id} --retry-failed"
    if len(retryable) == len(by_kind):
        return text + f"Run them again with {command}."
    if not retryable:
        return text + "Another attempt cannot fix these: see below."
    only = " ".join(f"--kind {kind}" for kind in retryable)
    return text + f"Run the ones another attempt may fix again with {command} {only}; for the others, see below."


_KNOWN_KINDS = frozenset(kind.value for kind in ErrorKind)


def _recommendations(report: dict[str, Any]) -> list[dict[str, str]]:
    """What the numbers suggest doing, each with a code renderers may style by."""
    out: list[dict[str, str]] = []
    job_id = report["job_id"]
    failed = report["counts"]["failed"]
    if failed:
        out.append({"code": "failed_items", "text": _failures(report, failed)})
    for m in report["models"]:
        share = _share(m["timeouts"], m["attempts"])
        if m["attempts"] >= MIN_ATTEMPTS_FOR_SHARE and share >= TIMEOUT_SHARE:
            out.append({"code": "model_timeouts", "text": (
                f"Model {m['name']} timed out on {m['timeouts']} of {m['attempts']} attempts ({share:.0%}): "
                "raise timeout_per_item, turn on stream: true, or route long items to another model.")})
    errors = report["errors"]
    if report["attempts"] >= MIN_ATTEMPTS_FOR_SHARE and errors["rate_limited_share"] >= RATE_LIMIT_SHARE:
        out.append({"code": "rate_limits", "text": (
            f"Rate limits dominated the run: {errors['rate_limited']} of {report['attempts']} attempts "
            f"({errors['rate_limited_share']:.0%}) were rejected with 429. Set rpm and tpm on the models to what "
            "the accounts allow, lower max_parallel, or spread the work over more models.")})
    if report["unknown_attempts"]:
        out.append({"code": "unknown_outcomes", "text": (
            f"{report['unknown_attempts']} attempt(s) were sent but no usage came back (a killed worker or a "
            f"timeout): the provider may have billed up to ${report['unknown_usd']:.4f} for them, which budgets "
            "count as spent. Check the provider's usage page for the real figure.")})
    budget = report["budget"]
    if budget and budget["share"] >= BUDGET_NEARLY_SPENT:
        out.append({"code": "budget", "text": (
            f"The budget is nearly spent: ${budget['spent_usd'] + budget['unknown_usd']:.4f} of "
            f"${budget['budget_usd']:.2f} "
            f"({budget['share']:.0%}). Raise it with storyloom resume {job_id} --budget-usd AMOUNT "
            "before running more.")})
    for kind, n in errors["failed_by_kind"].items():
        if kind in UNFIXABLE:  # the kinds no retry can fix, whatever a job's settings
            advice = UNFIXABLE_ADVICE.get(ErrorKind(kind), "see Failed Items")
            out.append({"code": "unfixable_failures",
                        "text": f"{n} item(s) failed with {kind}, which retrying cannot fix: {advice}."})
        elif kind == ErrorKind.OUTPUT_TRUNCATED:
            out.append({"code": "truncated", "text": (
                f"{n} item(s) were still cut off at max_tokens after retries with more room: "
                "raise config.max_tokens for this job.")})
    if report["status"] in ("paused", "interrupted"):
        why = f" ({report['reason']})" if report["reason"] else ""
        out.append({"code": "unfinished", "text": (
            f"The job is {report['status']}{why}: continue it with storyloom resume {job_id}.")})
    return out
