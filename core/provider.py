"""What a model provider is: an object with an async ``complete``.

Providers are registered by plugins through ``loom_register_providers`` and
built once per model per batch; the kernel owns their lifetime (``aclose``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

from .errors import ConfigError

if TYPE_CHECKING:
    from .settings import ModelSpec


@dataclass(frozen=True)
class Request:
    """One chat request. ``messages`` are OpenAI-style ``{"role", "content"}`` dicts."""

    messages: tuple[dict[str, str], ...]
    max_tokens: int = 1024
    temperature: float | None = None
    stream: bool = False
    #: Free-form hints a provider may use (language, item_id, ...); never sent as-is.
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"
    model: str | None = None  # the provider's model id that answered


def merge_options(spec: "ModelSpec", defaults: Mapping[str, Any], provider: str) -> dict[str, Any]:
    """A model entry's provider options over ``defaults``; an unknown option is
    a ConfigError that suggests the close one."""
    for key in spec.options:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(defaults)})"
            raise ConfigError("settings", f"models.{spec.name}", f"unknown option {key!r} for the {provider} provider{hint}")
    return {**defaults, **spec.options}


@runtime_checkable
class Provider(Protocol):
    async def complete(self, request: Request) -> Response:
        """Send one request. Raise :class:`storyloom.ProviderError` with an
        :class:`storyloom.ErrorKind` on failure. Must not apply its own overall
        timeout: the kernel wraps each attempt in ``trio.fail_after``."""

    async def aclose(self) -> None:
        """Release connections. Called once when the batch ends."""
