"""Stage 3b of loading a file: ``storyloom.yaml`` into :class:`~storyloom.settings.Settings`.

:func:`find_settings` finds the file, :func:`load_settings` parses and builds
it, and :func:`check_settings` checks the names in it against the loaded
plugins (that needs the plugins, so it runs later, when a job is loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from .document import Document, PathKey, locate, parse_document
from .document import duration_at as _duration
from .document import error_at as _error
from .document import int_or_none as _int_or_none
from .errors import ConfigError, ErrorKind, Location
from .names import KnownNames
from .names import check_name as _check_name
from .settings import (
    BUILTIN_MODELS,
    DEFAULT_PROGRESS,
    DEFAULT_REPORTS,
    BatchLimit,
    FailurePolicy,
    ModelSpec,
    Price,
    RetryConfig,
    RetryDelay,
    Settings,
    Webhook,
)
from .validation import format_path, unknown_name
from .validation import validate as _validate

__all__ = ["SETTINGS_FILE", "check_settings", "find_settings", "load_settings", "settings_from_document"]

#: The settings file :func:`find_settings` looks for.
SETTINGS_FILE = "storyloom.yaml"

def find_settings(start_dir: Path) -> Path | None:
    """The nearest ``storyloom.yaml`` in ``start_dir`` or one of its parents, or None."""
    start = Path(start_dir).resolve()
    for folder in (start, *start.parents):
        candidate = folder / SETTINGS_FILE
        if candidate.is_file():
            return candidate
    return None


def load_settings(path: Path | None) -> Settings:
    """Settings from a ``storyloom.yaml``; ``None`` gives the defaults.

    Names that depend on plugins (providers, strategies, sinks...) are checked
    later, by :func:`check_settings`.

    :raises ConfigError: unreadable, malformed or invalid.
    """
    if path is None:
        return Settings()
    return settings_from_document(parse_document(path))


def settings_from_document(doc: Document) -> Settings:
    """Validate a parsed settings document and build :class:`Settings` (``path`` = ``doc.file``)."""
    _validate(doc, "settings.schema.json")
    data, defaults = doc.data, Settings()
    models = dict(BUILTIN_MODELS)
    for name, entry in data.get("models", {}).items():
        models[name] = _model_spec(doc, name, entry)
    default_models = tuple(data.get("default_models", defaults.default_models))
    for i, name in enumerate(default_models):
        if name not in models:
            raise _error(doc, ("default_models", i), unknown_name("model", name, models))
    return Settings(
        path=doc.file,
        batch_limits={name: _batch_limit(doc, name, entry) for name, entry in data.get("batch_limits", {}).items()},
        retry_config=_retry_config(doc, data.get("retry_config", {})),
        models=models,
        default_models=default_models,
        routing=dict(data.get("routing", defaults.routing)),
        plugins=tuple(data.get("plugins", defaults.plugins)),
        progress=tuple(data.get("progress", defaults.progress)),
        reports=tuple(data.get("reports", defaults.reports)),
        webhooks=tuple(_webhook(doc, i, entry) for i, entry in enumerate(data.get("webhooks", ()))),
        failure_policy=_failure_policy(doc, data.get("failure_policy", {})),
        grace_period=_duration(doc, ("grace_period",), defaults.grace_period),
        aging=_duration(doc, ("aging",), defaults.aging, positive=True),
        lease=_lease(doc, defaults.lease),
        poll=_duration(doc, ("queue", "poll"), defaults.poll, positive=True),
        synchronous=data.get("synchronous", defaults.synchronous),
        store=data.get("store", defaults.store),
        input_roots=tuple(str((Path(doc.file).parent / root).resolve()) for root in data.get("input_roots", ())),
    )


#: The shortest lease: renewals every lease/3 must fit well inside it.
MIN_LEASE_S = 1.0


def _lease(doc: Document, default: float) -> float:
    lease = _duration(doc, ("queue", "lease"), default, positive=True)
    assert lease is not None
    if lease < MIN_LEASE_S:
        raise _error(doc, ("queue", "lease"), f"must be at least {MIN_LEASE_S:g}s, not {lease:g}s")
    return lease


_MODEL_KEYS = {"provider", "model", "base_url", "api_key_env", "rpm", "tpm", "max_parallel", "max_spend_usd", "price"}


def _model_spec(doc: Document, name: str, entry: dict[str, Any]) -> ModelSpec:
    provider = entry.get("provider")
    if provider is None:
        if name not in BUILTIN_MODELS:
            raise _error(doc, ("models", name), "missing required key 'provider' (which provider calls this model?)")
        provider = BUILTIN_MODELS[name].provider
    model_id = entry.get("model", name)
    price = None  # without price: the provider's default, resolved by make_config once providers are known
    if "price" in entry:
        price = Price(input=float(entry["price"].get("input", 0.0)), output=float(entry["price"].get("output", 0.0)))
    return ModelSpec(
        name=name,
        provider=provider,
        model=model_id,
        base_url=entry.get("base_url"),
        api_key_env=entry.get("api_key_env"),
        rpm=_int_or_none(entry.get("rpm")),
        tpm=_int_or_none(entry.get("tpm")),
        max_parallel=_int_or_none(entry.get("max_parallel")),
        max_spend_usd=float(entry["max_spend_usd"]) if "max_spend_usd" in entry else None,
        price=price,
        options={key: value for key, value in entry.items() if key not in _MODEL_KEYS},
        source=doc.file,
    )


def _batch_limit(doc: Document, job_type: str, entry: dict[str, Any]) -> BatchLimit:
    return BatchLimit(
        max_parallel=_int_or_none(entry.get("max_parallel")),
        timeout_per_item=_duration(doc, ("batch_limits", job_type, "timeout_per_item"), None, positive=True),
    )


def _webhook(doc: Document, index: int, entry: dict[str, Any]) -> Webhook:
    if ("url" in entry) == ("url_env" in entry):
        raise _error(doc, ("webhooks", index), "give either url or url_env (the variable holding the URL)")
    if "url" in entry and not _parses(entry["url"]):
        raise _error(doc, ("webhooks", index, "url"), "expected an http:// or https:// URL with a valid host and "
                                                      "port (the value is not shown: webhook URLs are secrets)")
    defaults = Webhook()
    return Webhook(
        url=entry.get("url"),
        url_env=entry.get("url_env"),
        events=tuple(entry.get("events", defaults.events)),
        timeout=_duration(doc, ("webhooks", index, "timeout"), defaults.timeout),
        retries=int(entry.get("retries", defaults.retries)),
    )


def _parses(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:
        return False


def _failure_policy(doc: Document, data: dict[str, Any]) -> FailurePolicy:
    defaults = FailurePolicy()
    policy = FailurePolicy(
        min_items=int(data.get("min_items", defaults.min_items)),
        notify_from=float(data.get("notify_from", defaults.notify_from)),
        pause_above=float(data.get("pause_above", defaults.pause_above)),
    )
    if policy.notify_from > policy.pause_above:
        raise _error(doc, ("failure_policy", "notify_from"),
                     f"notify_from ({policy.notify_from:g}) is above pause_above ({policy.pause_above:g})")
    return policy


def _retry_config(doc: Document, data: dict[str, Any]) -> RetryConfig:
    defaults = RetryConfig()
    delay = data.get("retry_delay", {})
    retry_delay = RetryDelay(
        initial=_duration(doc, ("retry_config", "retry_delay", "initial"), defaults.retry_delay.initial),
        multiplier=float(delay.get("multiplier", defaults.retry_delay.multiplier)),
        max=_duration(doc, ("retry_config", "retry_delay", "max"), defaults.retry_delay.max),
    )
    if retry_delay.initial > retry_delay.max:
        raise _error(doc, ("retry_config", "retry_delay", "initial"),
                     f"the initial delay ({retry_delay.initial:g}s) is longer than max ({retry_delay.max:g}s)")
    retryable, non_retryable = _error_kinds(doc, data, defaults)
    return RetryConfig(
        max_retries=int(data.get("max_retries", defaults.max_retries)),
        retry_delay=retry_delay,
        retryable_errors=retryable,
        non_retryable_errors=non_retryable,
        policy=data.get("policy", defaults.policy),
        rate_limit_timeout=_duration(doc, ("retry_config", "rate_limit_timeout"), defaults.rate_limit_timeout,
                                     positive=True),
        invalid_output_retries=int(data.get("invalid_output_retries", defaults.invalid_output_retries)),
    )


def _error_kinds(doc: Document, data: dict[str, Any], defaults: RetryConfig) -> tuple[frozenset[ErrorKind], ...]:
    """(retryable, non-retryable) kinds.

    A kind listed in neither is not retried, so once a list is given the second
    set is everything the first is not; non_retryable_errors given alone takes
    its kinds out of the default retryable ones.
    """
    given_retryable = data.get("retryable_errors")
    given_non = data.get("non_retryable_errors")
    if given_retryable is None and given_non is None:
        return defaults.retryable_errors, defaults.non_retryable_errors
    if given_retryable is None:
        retryable = defaults.retryable_errors - frozenset(map(ErrorKind, given_non))
    else:
        retryable = frozenset(map(ErrorKind, given_retryable))
        for i, kind in enumerate(given_non or ()):
            if kind in retryable:
                raise _error(doc, ("retry_config", "non_retryable_errors", i),
                             f"{kind} is listed in both retryable_errors and non_retryable_errors")
    return retryable, frozenset(ErrorKind) - retryable


def check_settings(settings: Settings, known: KnownNames) -> None:
    """Check the settings' plugin names (providers, routing strategy, retry
    policy, progress sinks, report renderers) against what is registered.

    Errors point into the settings file. :func:`load_job` calls this.

    :raises ConfigError: a name is not registered.
    """

    def at(path: PathKey) -> Callable[[str], ConfigError]:
        return lambda message: ConfigError(_settings_location(settings, path), format_path(path), message)

    for name, spec in settings.models.items():
        _check_name("provider", spec.provider, known.providers, at(("models", name, "provider")))
    _check_name("routing strategy", settings.routing.get("strategy", ""), known.strategies, at(("routing", "strategy")))
    _check_name("retry policy", settings.retry_config.policy, known.retry_policies, at(("retry_config", "policy")))
    if settings.progress != DEFAULT_PROGRESS:
        for i, sink in enumerate(settings.progress):
            _check_name("progress sink", sink, known.sinks, at(("progress", i)))
    if settings.reports != DEFAULT_REPORTS:
        for i, renderer in enumerate(settings.reports):
            _check_name("report renderer", renderer, known.renderers, at(("reports", i)))


def _settings_location(settings: Settings, path: PathKey) -> Location:
    """Where ``path`` is in the settings file; re-read only on this error path."""
    if settings.path is None:
        return Location("<built-in settings>")
    return locate(settings.path, path)
