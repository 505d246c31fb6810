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

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    @property
    def exit_code(self) -> int:
        """The CLI's exit code; 6 instead of 0 or 1 when an output is missing:
        a run never reports success while one is (3, 4 and 130 still say why it stopped)."""
        if self.output_problems and self.status in ("completed", "failed"):
            return EXIT_OUTPUTS
        return EXIT_CODES[self.status]
