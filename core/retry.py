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
    def decide(self, error: ProviderError, attempt: int, max_retries: int, elapsed: float = 0.0) -> RetryDecision:
        """Decide after a failed attempt.

        ``attempt`` counts the attempts that use up the retry budget, the one
        that just failed included (1 after the first); rate-limit rejections
        do not count. ``elapsed`` is the seconds since the item's first
        attempt began, which bounds rate-limit retries instead."""
