"""The seed's retry policy: exponential delay with jitter, by error kind.

``delay = min(max, initial * multiplier ** (attempt - 1))``, then "equal
jitter" (a uniform draw from half the delay to all of it) so that items
failing together do not retry together; never shorter than the server's
``retry-after``. Kinds in ``non_retryable_errors`` (and any kind not listed
as retryable) fail the item at once. A rate-limit rejection waits the
server's ``retry-after`` (or the initial delay), plus up to 20% jitter, and
is retried until ``rate_limit_timeout`` has passed since the first attempt.
A structured reply that fails its schema (``INVALID_OUTPUT``) is retried only
while the item's counted attempts are at most ``invalid_output_retries``.
"""

from __future__ import annotations

import random

from storyloom import ErrorKind, ProviderError, hookimpl
from storyloom.retry import RetryDecision
from storyloom.settings import RetryConfig


class ExponentialBackoff:
    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()

    def decide(self, error: ProviderError, attempt: int, max_retries: int, elapsed: float = 0.0) -> RetryDecision:
        kind = error.kind
        if kind in self.config.non_retryable_errors or kind not in self.config.retryable_errors:
            return RetryDecision(False, reason=f"{kind} is not retryable")
        if kind is ErrorKind.API_RATE_LIMIT:
            # Bounded by time, not by max_retries: the request never reached the model.
            if elapsed > self.config.rate_limit_timeout:
                return RetryDecision(False, reason=f"still rate limited after {elapsed:.0f}s")
            delay = error.retry_after if error.retry_after is not None else self.config.retry_delay.initial
            return RetryDecision(True, delay=delay * self.rng.uniform(1.0, 1.2), reason="rate limited")
        if attempt > max_retries:
            return RetryDecision(False, reason=f"gave up after {attempt} attempts")
        if kind is ErrorKind.INVALID_OUTPUT and attempt > self.config.invalid_output_retries:
            # A model that answers off-schema tends to do it again: fewer tries than other kinds.
            return RetryDecision(False, reason=f"gave up after {attempt} attempts "
                                               f"(invalid_output_retries {self.config.invalid_output_retries})")
        d = self.config.retry_delay
        delay = min(d.max, d.initial * d.multiplier ** (attempt - 1))
        delay = self.rng.uniform(delay / 2, delay)
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return RetryDecision(True, delay=delay, reason=f"{kind}, attempt {attempt} of {max_retries + 1}")


@hookimpl
def loom_register_retry_policies(register):
    register("exponential", ExponentialBackoff)
