"""The ``openai`` provider: any OpenAI-compatible ``POST {base_url}/chat/completions``.

::

    models:
      gpt4o:
        provider: openai
        model: gpt-4o
        base_url: https://api.openai.com/v1     # the default; include the /v1
        api_key_env: OPENAI_API_KEY             # the default
        max_tokens_param: max_completion_tokens # or max_tokens, for older compatible servers

Bodies follow the published ``CreateChatCompletionRequest`` schema. Streaming
asks for ``stream_options.include_usage`` so the last event carries the usage.
A request with a ``response_schema`` sends ``response_format: {type:
json_schema, json_schema: {name, schema, strict: true}}`` (strict mode wants
every property required and ``additionalProperties: false``: the schema is
the job type's, sent as it is); the reply's content is the JSON.

Rate limits: OpenAI counts a request's prompt plus ``max_tokens`` against
TPM when it arrives and gives nothing back when the reply is shorter, so
``refunds_unused_tokens`` stays False (``storyloom.tokens.estimate_tpm_cost``
reserves the same). Every reply carries ``x-ratelimit-remaining-{requests,
tokens}`` with ``x-ratelimit-reset-{requests,tokens}`` (``1s``, ``6m0s``,
``20ms``); a remaining count of 0 cools the model down until the reset.
A model without ``price:`` is priced from :data:`PRICES`.

Token estimates (``storyloom.tokens``) are tuned to OpenAI's ``o200k``
tokenizer (GPT-4o class), and their per-message overhead (4 tokens a
message, 3 priming the reply) is how OpenAI counts chat messages.
"""

from __future__ import annotations

from typing import Any

from storyloom import ErrorKind, ProviderError, hookimpl
from storyloom.provider import Request, spec_error
from storyloom.settings import ModelSpec, Price

from .http import COMMON_RULES, HTTPProvider, Reply, Rule, SSEEvent

#: First match wins; docs/providers.md repeats this table (a test compares them).
RULES: tuple[Rule, ...] = (
    Rule("2xx", "finish=length", ErrorKind.OUTPUT_TRUNCATED),
    Rule("2xx", "finish=content_filter", ErrorKind.INVALID_INPUT),
    Rule("429", "code=insufficient_quota", ErrorKind.QUOTA_EXCEEDED),
    Rule("429", "type=insufficient_quota", ErrorKind.QUOTA_EXCEEDED),
    Rule("429", "message~per day", ErrorKind.QUOTA_EXCEEDED),
    *COMMON_RULES,
)

MAX_TOKENS_PARAMS = ("max_completion_tokens", "max_tokens")

#: List prices, USD per million tokens (input, output), standard tier, no batch
#: or cache discounts, as of 2025 from OpenAI's price page. Keys are model ids
#: or families (``gpt-4o-2024-08-06`` is priced as ``gpt-4o``; see
#: :func:`storyloom.pricing.lookup_price`). ``price:`` on a model always wins.
PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-2024-05-13": Price(5.00, 15.00),  # the first snapshot kept its launch price
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o1": Price(15.00, 60.00),
    "o1-mini": Price(1.10, 4.40),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "o3": Price(2.00, 8.00),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
}

#: (remaining, reset) header pairs; resets are Go-style durations.
RATE_LIMIT_HEADERS = tuple((f"x-ratelimit-remaining-{what}", f"x-ratelimit-reset-{what}")
                           for what in ("requests", "tokens"))


class OpenAIProvider(HTTPProvider):
    name = "openai"
    default_base_url = "https://api.openai.com/v1"
    default_key_env = "OPENAI_API_KEY"
    options = {"max_tokens_param": "max_completion_tokens"}
    rules = RULES
    stop_reasons = frozenset({"stop"})
    default_prices = PRICES
    rate_limit_headers = RATE_LIMIT_HEADERS

    @classmethod
    def validate_options(cls, opts: dict[str, Any], spec: ModelSpec) -> None:
        if opts["max_tokens_param"] not in MAX_TOKENS_PARAMS:
            raise spec_error(spec, ("max_tokens_param",),
                             f"expected one of {', '.join(MAX_TOKENS_PARAMS)}, got {opts['max_tokens_param']!r}")

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def url(self, request: Request) -> str:
        return f"{self.base_url}/chat/completions"

    def build_body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
            self.opts["max_tokens_param"]: request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if request.response_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": request.schema_name, "schema": dict(request.response_schema), "strict": True}}
        # Fields a Batch API file carried (response_format, seed, top_p, ...), sent as they were.
        for key, value in request.metadata.get("extra_body", {}).items():
            body.setdefault(key, value)
        return body

    def parse_reply(self, data: Any, reply: Reply) -> None:
        if not isinstance(data, dict):
            raise ProviderError(ErrorKind.TEMPORARY_ERROR, f"{self.name}: unexpected reply (not an object)")
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        if message.get("refusal") and not message.get("content"):
            # Structured outputs: the model declined; the same prompt would be declined again.
            raise ProviderError(ErrorKind.INVALID_INPUT, f"{self.name}: the model refused: "
                                                         f"{str(message['refusal'])[:200]}")
        reply.parts.append(message.get("content") or "")
        reply.finish = choice.get("finish_reason")
        self._usage(data, reply)

    def on_event(self, event: SSEEvent, reply: Reply) -> None:
        if event.data.strip() == "[DONE]":
            reply.done = True
            return
        chunk = self._json(event.data.encode(), "stream event")
        if not isinstance(chunk, dict):
            return
        if chunk.get("error"):
            raise self.error_from_body(500, chunk)  # failed mid-reply: the server's fault
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if content:
                reply.parts.append(content)
            if choice.get("finish_reason"):
                reply.finish = choice["finish_reason"]
        self._usage(chunk, reply)

    @staticmethod
    def _usage(data: dict[str, Any], reply: Reply) -> None:
        usage = data.get("usage")
        if isinstance(usage, dict):
            reply.input_tokens = usage.get("prompt_tokens", reply.input_tokens)
            reply.output_tokens = usage.get("completion_tokens", reply.output_tokens)
        reply.model = data.get("model") or reply.model


@hookimpl
def loom_register_providers(register):
    register("openai", OpenAIProvider)
