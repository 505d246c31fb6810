"""The data every report renderer receives, built from the store."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .job import Job
from .store import Store


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


async def build_report(store: Store, job: Job, summary: Any) -> dict[str, Any]:
    """Job information, counts, cost and tokens per model, and failed items.

    Renderers (``loom_register_renderers``) turn this mapping into files."""
    counts = summary.counts
    total = sum(counts.values())
    costs = await store.costs(job.job_id)
    failed = await store.items(job.job_id, "failed")
    completed = counts["completed"]
    return {
        "job_id": job.job_id,
        "job_type": job.job_type,
        "status": summary.status,
        "reason": summary.reason,
        "started": _iso(summary.started_at),
        "finished": _iso(summary.finished_at),
        "duration_s": round(summary.duration, 3),
        "total": total,
        "counts": counts,
        "cost_usd": costs.cost_usd,
        "cost_per_item_usd": costs.cost_usd / completed if completed else None,
        "input_tokens": costs.input_tokens,
        "output_tokens": costs.output_tokens,
        "attempts": costs.attempts,
        "models": costs.by_model,
        "failed_items": [{"item_id": r.item_id, "error_kind": r.error_kind, "error": r.error} for r in failed],
    }
