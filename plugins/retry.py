"""The seed's retry policy: exponential delay with jitter, by error kind.

``delay = min(max, initial * multiplier ** (attempt - 1))``, then "equal
jitter" (a uniform draw from half the delay to all of it) so that items
failing together do not retry together; never shorter than the server's
``retry-after``. Kinds in ``non_retryable_errors`` (and any kind not listed
as retryable) fail the item at once.
"""

from __future__ import annotations

import random

from storyloom import ProviderError, hookimpl
from storyloom.retry import RetryDecision
from storyloom.settings import RetryConfig


class ExponentialBackoff:
    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()

    def decide(self, error: ProviderError, attempt: int, max_retries: int) -> RetryDecision:
        kind = error.kind
        if kind in self.config.non_retryable_errors or kind not in self.config.retryable_errors:
            return RetryDecision(False, reason=f"{kind} is not retryable")
        if attempt > max_retries:
            return RetryDecision(False, reason=f"gave up after {attempt} attempts")
        d = self.config.retry_delay
        delay = min(d.max, d.initial * d.multiplier ** (attempt - 1))
        delay = self.rng.uniform(delay / 2, delay)
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return RetryDecision(True, delay=delay, reason=f"{kind}, attempt {attempt} of {max_retries + 1}")


@hookimpl
def loom_register_retry_policies(register):
    register("exponential", ExponentialBackoff)
