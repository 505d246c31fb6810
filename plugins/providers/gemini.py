"""The ``gemini`` provider: ``POST {base_url}/models/{model}:generateContent``.

::

    models:
      flash:
        provider: gemini
        model: gemini-2.5-flash
        base_url: https://generativelanguage.googleapis.com/v1beta   # the default
        api_key_env: GEMINI_API_KEY     # the default; sent as x-goog-api-key, never in the URL
        thinking_budget: 0              # optional: generationConfig.thinkingConfig.thinkingBudget

Streaming uses ``:streamGenerateContent?alt=sse``; every event is a partial
``GenerateContentResponse`` and the last one carries ``usageMetadata``.
Output tokens include thinking tokens (``thoughtsTokenCount``), which are
billed as output and count against ``maxOutputTokens``.

A 429 ``RESOURCE_EXHAUSTED`` is a rate limit (retried after ``retryDelay``)
unless it is a daily quota (a ``QuotaFailure`` whose quota id says
``PerDay``), a quota of zero (``limit: 0``, the tier has no access) or
depleted prepaid credits: those are QUOTA_EXCEEDED, since no retry within a
batch can succeed. The generic message "You exceeded your current quota"
comes with per-minute limits too, so it decides nothing on its own.

A request with a ``response_schema`` sets ``generationConfig.responseMimeType:
application/json`` and ``responseJsonSchema``; the reply's text is the JSON.

Gemini sends no rate-limit headers (``rate_limit_headers`` is empty): the
model cools down from 429s and their ``retryDelay`` alone. A model without
``price:`` is priced from :data:`PRICES`.
"""

from __future__ import annotations

from typing import Any

from storyloom import ErrorKind, hookimpl
from storyloom.provider import Request, spec_error
from storyloom.settings import ModelSpec, Price

from .http import COMMON_RULES, HTTPProvider, Reply, Rule, SSEEvent

#: First match wins; docs/providers.md repeats this table (a test compares them).
RULES: tuple[Rule, ...] = (
    Rule("2xx", "finish=MAX_TOKENS", ErrorKind.OUTPUT_TRUNCATED),
    Rule("2xx", "finish=PROMPT_BLOCKED,SAFETY,RECITATION,PROHIBITED_CONTENT,BLOCKLIST,SPII", ErrorKind.INVALID_INPUT),
    Rule("400", "details~API_KEY_INVALID", ErrorKind.AUTH_ERROR),
    Rule("400", "message~API key not valid", ErrorKind.AUTH_ERROR),
    Rule("429", "details~PerDay", ErrorKind.QUOTA_EXCEEDED),
    Rule("429", "message~limit: 0", ErrorKind.QUOTA_EXCEEDED),
    Rule("429", "message~credits are depleted", ErrorKind.QUOTA_EXCEEDED),
    *COMMON_RULES,
)


#: List prices, USD per million tokens (input, output), standard tier, as of
#: 2025 from Google's price page (gemini-2.5-pro: prompts up to 200k tokens;
#: longer ones cost more). Keys are model ids or families; a ``models/``
#: prefix is ignored. ``price:`` on a model always wins.
PRICES: dict[str, Price] = {
    "gemini-2.0-flash": Price(0.10, 0.40),
    "gemini-2.0-flash-lite": Price(0.075, 0.30),
    "gemini-2.5-flash": Price(0.30, 2.50),
    "gemini-2.5-flash-lite": Price(0.10, 0.40),
    "gemini-2.5-pro": Price(1.25, 10.00),
}


class GeminiProvider(HTTPProvider):
    name = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"
    default_key_env = "GEMINI_API_KEY"
    options = {"thinking_budget": None}
    rules = RULES
    stop_reasons = frozenset({"STOP"})
    default_prices = PRICES

    @classmethod
    def validate_options(cls, opts: dict[str, Any], spec: ModelSpec) -> None:
        budget = opts["thinking_budget"]
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < -1):
            raise spec_error(spec, ("thinking_budget",),
                             f"expected a number of tokens (0 turns thinking off, -1 is dynamic), got {budget!r}")

    def headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def url(self, request: Request) -> str:
        model = self.spec.model.removeprefix("models/")
        if request.stream:
            return f"{self.base_url}/models/{model}:streamGenerateContent?alt=sse"
        return f"{self.base_url}/models/{model}:generateContent"

    def build_body(self, request: Request) -> dict[str, Any]:
        system = [m["content"] for m in request.messages if m["role"] in ("system", "developer")]
        config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if self.opts["thinking_budget"] is not None:
            config["thinkingConfig"] = {"thinkingBudget": self.opts["thinking_budget"]}
        if request.response_schema is not None:
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = dict(request.response_schema)
        body: dict[str, Any] = {
            "contents": [{"role": "model" if m["role"] == "assistant" else "user", "parts": [{"text": m["content"]}]}
                         for m in request.messages if m["role"] not in ("system", "developer")],
            "generationConfig": config,
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        return body

    def parse_reply(self, data: Any, reply: Reply) -> None:
        self._absorb(data, reply)

    def on_event(self, event: SSEEvent, reply: Reply) -> None:
        # No end marker: the server closes the stream after the last chunk.
        self._absorb(self._json(event.data.encode(), "stream event"), reply)

    def _absorb(self, data: Any, reply: Reply) -> None:
        if isinstance(data, list):  # a stream read without alt=sse
            for chunk in data:
                self._absorb(chunk, reply)
            return
        if not isinstance(data, dict):
            return
        if data.get("error"):
            err = data["error"]
            code = err.get("code") if isinstance(err, dict) else None
            raise self.error_from_body(code if isinstance(code, int) else 500, data)
        if (data.get("promptFeedback") or {}).get("blockReason"):
            reply.finish = "PROMPT_BLOCKED"
        candidates = data.get("candidates") or []
        if candidates:
            candidate = candidates[0]
            for part in (candidate.get("content") or {}).get("parts") or []:
                if "text" in part and not part.get("thought"):
                    reply.parts.append(part["text"])
            if candidate.get("finishReason"):
                reply.finish = candidate["finishReason"]
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            if "promptTokenCount" in usage:
                reply.input_tokens = usage["promptTokenCount"]
            if "candidatesTokenCount" in usage or "thoughtsTokenCount" in usage:
                reply.output_tokens = (usage.get("candidatesTokenCount") or 0) + (usage.get("thoughtsTokenCount") or 0)
        reply.model = data.get("modelVersion") or reply.model


@hookimpl
def loom_register_providers(register):
    register("gemini", GeminiProvider)
