"""What a retry policy is: from an error, decide retry, delay or failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .errors import ProviderError


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float = 0.0  # seconds before the next attempt may start
    reason: str = ""


class RetryPolicy(Protocol):
    def decide(self, error: ProviderError, attempt: int, max_retries: int) -> RetryDecision:
        """``attempt`` is the 1-based number of the attempt that just failed."""
