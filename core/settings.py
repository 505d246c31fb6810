"""Settings: what `storyloom.yaml` holds, with the seed's defaults.

Job values override settings; command-line flags override both (see
``storyloom.config.effective_limits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorKind


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


@dataclass(frozen=True)
class ModelSpec:
    """One entry under ``models:``; ``name`` is what jobs and routing tables use."""

    name: str
    provider: str
    model: str  # the provider's own id
    base_url: str | None = None
    api_key_env: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    #: The most the store may spend on this model, over every job (None: no cap).
    max_spend_usd: float | None = None
    #: USD per million tokens. None until resolved: the settings loader leaves
    #: it None for an entry without ``price:``, and ``make_config`` fills in the
    #: provider's default price for the model id (else a free ``Price()``), so
    #: every spec the kernel sees has a Price.
    price: Price | None = None
    #: Provider-specific options (everything else on the entry), e.g. the
    #: simulated provider's latency_ms, errors and seed.
    options: dict[str, Any] = field(default_factory=dict)
    #: The settings file the entry was written in (None: built in, or made in
    #: code), so errors about it can name the file, line and column.
    source: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RetryDelay:
    initial: float = 10.0
    multiplier: float = 2.0
    max: float = 120.0


@dataclass(frozen=True)
class RetryConfig:
    """The seed's ``retry_config``."""

    max_retries: int = 3
    retry_delay: RetryDelay = RetryDelay()
    #: The seed's three, and a reply cut off at max_tokens (retried with more room).
    retryable_errors: frozenset[ErrorKind] = frozenset(
        {ErrorKind.API_RATE_LIMIT, ErrorKind.TIMEOUT, ErrorKind.TEMPORARY_ERROR, ErrorKind.OUTPUT_TRUNCATED,
         ErrorKind.INVALID_OUTPUT}
    )
    non_retryable_errors: frozenset[ErrorKind] = frozenset(
        {ErrorKind.INVALID_INPUT, ErrorKind.AUTH_ERROR, ErrorKind.QUOTA_EXCEEDED, ErrorKind.INTERNAL_ERROR}
    )
    policy: str = "exponential"
    #: Rate-limit rejections do not use up max_retries; an item stops being
    #: retried for them once this long has passed since its first attempt.
    rate_limit_timeout: float = 600.0
    #: An item whose structured reply fails its schema (INVALID_OUTPUT) is
    #: retried while its counted attempts are at most this (and max_retries).
    invalid_output_retries: int = 2


@dataclass(frozen=True)
class BatchLimit:
    """A job type's ``batch_limits`` entry; None means "the job type's default"."""

    max_parallel: int | None = None
    timeout_per_item: float | None = None


@dataclass(frozen=True)
class Webhook:
    """One entry under ``webhooks:``: where the ``webhook`` sink POSTs events.

    Exactly one of ``url`` and ``url_env`` (the environment variable holding
    the URL: a Slack webhook URL is a secret) is set.
    """

    url: str | None = None
    url_env: str | None = None
    events: tuple[str, ...] = ("notify", "escalate", "batch_finished")
    timeout: float = 5.0  # seconds per request, connecting included
    retries: int = 3  # after the first request, for timeouts, transport errors, 429 and 5xx


@dataclass(frozen=True)
class FailurePolicy:
    """The seed's failure handling, over the items finished in this run.

    Once ``min_items`` items have finished (completed or failed), a failure
    rate above ``pause_above`` pauses the job and escalates; a rate from
    ``notify_from`` up to ``pause_above`` notifies once each time it is entered.
    """

    min_items: int = 10
    notify_from: float = 0.2
    pause_above: float = 0.5


#: Used when the settings name none. A default whose plugin is blocked
#: (``-p no:terminal``) is skipped; a name the settings give must exist.
DEFAULT_PROGRESS: tuple[str, ...] = ("terminal", "webhook")
DEFAULT_REPORTS: tuple[str, ...] = ("md", "json", "html")

#: Built in so that a job runs with no settings file, no key and no network.
BUILTIN_MODELS: dict[str, ModelSpec] = {
    "simulated": ModelSpec(name="simulated", provider="simulated", model="simulated"),
}
DEFAULT_MODELS: tuple[str, ...] = ("simulated",)


@dataclass(frozen=True)
class Settings:
    path: str | None = None  # the storyloom.yaml it came from, if any
    batch_limits: dict[str, BatchLimit] = field(default_factory=dict)
    retry_config: RetryConfig = RetryConfig()
    models: dict[str, ModelSpec] = field(default_factory=lambda: dict(BUILTIN_MODELS))
    default_models: tuple[str, ...] = DEFAULT_MODELS
    routing: dict[str, Any] = field(default_factory=lambda: {"strategy": "round_robin"})
    plugins: tuple[str, ...] = ()
    #: The live view (plain lines off a terminal), and webhooks when ``webhooks:`` lists any.
    progress: tuple[str, ...] = DEFAULT_PROGRESS
    reports: tuple[str, ...] = DEFAULT_REPORTS
    webhooks: tuple[Webhook, ...] = ()
    failure_policy: FailurePolicy = FailurePolicy()
    grace_period: float = 10.0
    #: How long a normal or low item waits at its level before it moves up
    #: one (never to critical): the queue's guard against starving low work.
    aging: float = 7200.0
    #: ``queue: {lease: ...}``: how long a claim holds an item unless renewed
    #: (workers renew every lease/3; see docs/store.md, "Leases and fences").
    lease: float = 30.0
    #: ``queue: {poll: ...}``: how often a worker looks for new work and for
    #: other processes' pauses and cancels; a store with wake-ups (PostgreSQL
    #: LISTEN/NOTIFY) tells it sooner, and polling is the fallback.
    poll: float = 1.0
    #: The store URL (``store:``); None: ``sqlite`` in the state folder.
    #: ``--store`` and ``$STORYLOOM_STORE`` override it.
    store: str | None = None
    #: sqlite ``synchronous``: NORMAL (default, durable across process crashes)
    #: or FULL (also across power loss).
    synchronous: str = "NORMAL"
    #: Folders besides the job file's own that ``input:`` files may be in
    #: (``input_roots:``, absolute, resolved against the settings file's folder).
    input_roots: tuple[str, ...] = ()
