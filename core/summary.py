"""How a batch stands or ended: what ``run_job`` returns and reports read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The CLI's exit code for each way a batch can end.
EXIT_CODES = {"completed": 0, "failed": 1, "paused": 3, "cancelled": 4, "interrupted": 130}
#: A batch that ended (completed or failed) with an output it could not write.
EXIT_OUTPUTS = 6


@dataclass
class Summary:
    job_id: str
    #: completed | failed | paused | cancelled | interrupted; a report on a job still
    #: going may also see running or pending.
    status: str
    counts: dict[str, int]
    cost_usd: float
    started_at: float
    finished_at: float
    reason: str | None = None
    recovered: int = 0  # items a dead process left running, put back at start
    #: storyloom.outputs.OutputProblem for each output the run could not write.
    output_problems: tuple[Any, ...] = ()
    outputs_rebuilt: int = 0  # missing or partial outputs a resume wrote again from the store
    retried: int = 0  # failed items put back by ``resume --retry-failed``
    idle: bool = False  # a resume that found nothing to run (``reason`` says why)
    #: Where the job's outputs and reports are written (set by the API).
    out_dir: str | None = None
    #: ``run --sample``: the sample's size and the whole job extrapolated from it
    #: (:func:`storyloom.api.extrapolate`).
    sample: dict[str, Any] | None = None

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    def as_dict(self) -> dict[str, Any]:
        """The summary as ``--json`` prints it: one JSON-ready object."""
        return {"job_id": self.job_id, "status": self.status, "exit_code": self.exit_code,
                "counts": dict(self.counts), "cost_usd": self.cost_usd, "duration": round(self.duration, 3),
                "started_at": self.started_at, "finished_at": self.finished_at, "reason": self.reason,
                "recovered": self.recovered, "retried": self.retried, "outputs_rebuilt": self.outputs_rebuilt,
                "output_problems": [{"path": str(getattr(p, "path", p)), "reason": getattr(p, "reason", str(p))}
                                    for p in self.output_problems],
                "out_dir": self.out_dir, "idle": self.idle, "sample": self.sample}

    @property
    def exit_code(self) -> int:
        """The CLI's exit code; 6 instead of 0 or 1 when an output is missing:
        a run never reports success while one is (3, 4 and 130 still say why it stopped)."""
        if self.output_problems and self.status in ("completed", "failed"):
            return EXIT_OUTPUTS
        return EXIT_CODES[self.status]
