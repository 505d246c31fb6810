"""The ``anthropic`` provider: the Messages API, ``POST {base_url}/v1/messages``.

::

    models:
      haiku:
        provider: anthropic
        model: claude-haiku-4-5
        base_url: https://api.anthropic.com   # the default; without /v1
        api_key_env: ANTHROPIC_API_KEY        # the default
        anthropic_version: "2023-06-01"       # the default

System messages become the top-level ``system`` field (joined by blank
lines). A request with a ``response_schema`` sends it as the one tool, with
``tool_choice: {type: tool, name}``; the reply is the ``tool_use`` block's
``input`` (streamed: its ``input_json_delta`` pieces). Input tokens include cache writes and reads. Streaming reads usage
from ``message_start`` (input) and ``message_delta`` (output, cumulative).

Rate limits: every reply carries ``anthropic-ratelimit-{requests,tokens,
input-tokens,output-tokens}-{remaining,reset}`` (resets are RFC 3339 times);
a remaining count of 0 cools the model down until the reset. Anthropic
charges the output-token limit by ``max_tokens`` up front and gives the
unused part back when the reply ends, so ``refunds_unused_tokens`` is True
and the kernel's limiter refunds too. A model without ``price:`` is priced
from :data:`PRICES`.
"""

from __future__ import annotations

from typing import Any

from storyloom import ErrorKind, ProviderError, hookimpl
from storyloom.provider import Request, spec_error
from storyloom.settings import ModelSpec, Price

from .http import COMMON_RULES, HTTPProvider, Reply, Rule, SSEEvent

#: First match wins; docs/providers.md repeats this table (a test compares them).
RULES: tuple[Rule, ...] = (
    Rule("2xx", "finish=max_tokens", ErrorKind.OUTPUT_TRUNCATED),
    Rule("2xx", "finish=refusal", ErrorKind.INVALID_INPUT),
    Rule("529", "", ErrorKind.TEMPORARY_ERROR),
    Rule("400,403", "type=billing_error", ErrorKind.QUOTA_EXCEEDED),
    Rule("400,403", "message~credit balance", ErrorKind.QUOTA_EXCEEDED),
    Rule("400,403", "message~billing", ErrorKind.QUOTA_EXCEEDED),
    Rule("400,403", "message~usage limits", ErrorKind.QUOTA_EXCEEDED),
    *COMMON_RULES,
)

#: The status each error ``type`` comes with, for error events inside a stream.
TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 400,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


#: List prices, USD per million tokens (input, output), standard tier, no batch
#: or cache discounts, as of 2025 from Anthropic's price page. Keys are model
#: ids or families (``claude-3-5-haiku-20241022`` and ``claude-3-5-haiku@20241022``
#: are priced as ``claude-3-5-haiku``). ``price:`` on a model always wins.
PRICES: dict[str, Price] = {
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-3-5-sonnet": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    "claude-opus-4-5": Price(5.00, 25.00),
}

#: (remaining, reset) header pairs, one per budget Anthropic enforces.
RATE_LIMIT_HEADERS = tuple((f"anthropic-ratelimit-{what}-remaining", f"anthropic-ratelimit-{what}-reset")
                           for what in ("requests", "tokens", "input-tokens", "output-tokens"))


class AnthropicProvider(HTTPProvider):
    name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    default_key_env = "ANTHROPIC_API_KEY"
    options = {"anthropic_version": "2023-06-01"}
    rules = RULES
    #: ``tool_use``: the forced tool of a structured request was called.
    stop_reasons = frozenset({"end_turn", "stop_sequence", "tool_use"})
    #: Anthropic charges output-token limits by max_tokens up front and gives
    #: the unused part back when the reply ends; the kernel's limiter follows.
    refunds_unused_tokens = True
    default_prices = PRICES
    rate_limit_headers = RATE_LIMIT_HEADERS

    @classmethod
    def validate_options(cls, opts: dict[str, Any], spec: ModelSpec) -> None:
        if not isinstance(opts["anthropic_version"], str) or not opts["anthropic_version"]:
            raise spec_error(spec, ("anthropic_version",),
                             f"expected a version string like 2023-06-01, got {opts['anthropic_version']!r}")

    def headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": self.opts["anthropic_version"]}

    def url(self, request: Request) -> str:
        # Tolerate a base_url that already ends in /v1.
        return f"{self.base_url}/messages" if self.base_url.endswith("/v1") else f"{self.base_url}/v1/messages"

    def build_body(self, request: Request) -> dict[str, Any]:
        system = [m["content"] for m in request.messages if m["role"] in ("system", "developer")]
        body: dict[str, Any] = {
            "model": self.spec.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m["role"], "content": m["content"]}
                         for m in request.messages if m["role"] not in ("system", "developer")],
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stream:
            body["stream"] = True
        if request.response_schema is not None:
            # A forced tool is Anthropic's structured output: the reply is its input.
            body["tools"] = [{"name": request.schema_name, "description": "Record the answer.",
                              "input_schema": dict(request.response_schema)}]
            body["tool_choice"] = {"type": "tool", "name": request.schema_name}
        return body

    def parse_reply(self, data: Any, reply: Reply) -> None:
        if not isinstance(data, dict):
            raise ProviderError(ErrorKind.TEMPORARY_ERROR, f"{self.name}: unexpected reply (not an object)")
        for block in data.get("content") or []:
            if block.get("type") == "text":
                reply.parts.append(block.get("text") or "")
            elif block.get("type") == "tool_use" and not reply.has_data:
                reply.data, reply.has_data = block.get("input"), True
        reply.finish = data.get("stop_reason")
        reply.model = data.get("model")
        self._usage(data.get("usage"), reply)

    def on_event(self, event: SSEEvent, reply: Reply) -> None:
        data = self._json(event.data.encode(), "stream event")
        if not isinstance(data, dict):
            return
        kind = data.get("type") or event.event
        if kind == "message_start":
            message = data.get("message") or {}
            reply.model = message.get("model")
            self._usage(message.get("usage"), reply)
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                reply.block = data.get("index")
                reply.parts.clear()  # a forced tool comes first; anything before it is not the answer
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and reply.block is None:
                reply.parts.append(delta.get("text") or "")
            elif delta.get("type") == "input_json_delta" and data.get("index") == reply.block:
                reply.parts.append(delta.get("partial_json") or "")  # the tool's input, as JSON text
        elif kind == "message_delta":
            reply.finish = (data.get("delta") or {}).get("stop_reason") or reply.finish
            self._usage(data.get("usage"), reply)  # cumulative counts
        elif kind == "message_stop":
            reply.done = True
        elif kind == "error":
            err_type = (data.get("error") or {}).get("type")
            raise self.error_from_body(TYPE_STATUS.get(err_type, 500), data)

    @staticmethod
    def _usage(usage: Any, reply: Reply) -> None:
        if not isinstance(usage, dict):
            return
        if "input_tokens" in usage:
            reply.input_tokens = sum(usage.get(k) or 0 for k in (
                "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        if "output_tokens" in usage:
            reply.output_tokens = usage["output_tokens"]


@hookimpl
def loom_register_providers(register):
    register("anthropic", AnthropicProvider)
