"""What a model provider is: an object with an async ``complete``.

Providers are registered by plugins through ``loom_register_providers`` and
built once per model per batch; the kernel owns their lifetime (``aclose``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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


@runtime_checkable
class Provider(Protocol):
    async def complete(self, request: Request) -> Response:
        """Send one request. Raise :class:`storyloom.ProviderError` with an
        :class:`storyloom.ErrorKind` on failure. Must not apply its own overall
        timeout: the kernel wraps each attempt in ``trio.fail_after``."""

    async def aclose(self) -> None:
        """Release connections. Called once when the batch ends."""
