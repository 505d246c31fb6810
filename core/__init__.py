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

__all__ = ["ConfigError", "ErrorKind", "ProviderError", "UsageError", "hookimpl", "__version__"]
