"""storyloom: a batch-processing kernel for a fiction studio's LLM work."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

from .errors import ConfigError, ErrorKind, ProviderError, UsageError

try:
    __version__ = version("storyloom")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

#: Marks a hook implementation: ``@storyloom.hookimpl def loom_...``.
hookimpl = pluggy.HookimplMarker("storyloom")

_API = ("run_job", "run_job_sync", "resume_job", "resume_job_sync", "submit_job", "work", "cancel_job",
        "pause_job", "requeue_job", "retry_failed_items", "job_status", "queue_overview", "queue_position",
        "render_report", "validate_job", "describe_plugins", "job_outputs", "estimate_job", "delete_job",
        "book", "approve", "init_studio")


def __getattr__(name: str):
    # Lazy, so that plugins importing ``storyloom.hookimpl`` do not pull in the kernel.
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'storyloom' has no attribute {name!r}")


__all__ = ["ConfigError", "ErrorKind", "ProviderError", "UsageError", "hookimpl", "__version__", *_API]
