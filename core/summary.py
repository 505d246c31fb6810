"""How a batch stands or ended: what ``run_job`` returns and reports read."""

from __future__ import annotations

from dataclasses import dataclass

#: The CLI's exit code for each way a batch can end.
EXIT_CODES = {"completed": 0, "failed": 1, "paused": 3, "cancelled": 4, "interrupted": 130}


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
    retried: int = 0  # failed items put back by ``resume --retry-failed``
    idle: bool = False  # a resume that found nothing to run (``reason`` says why)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]
