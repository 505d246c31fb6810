"""The ``simulated`` provider: offline, seeded, with latency, usage and faults.

It is the embedded default, so ``storyloom run jobs/demo.yaml`` needs no key
and no network. Its text says it is simulated, in the item's language.
Options sit on the model entry::

    models:
      sim:
        provider: simulated
        latency_ms: 200        # mean; each attempt draws from an exponential-ish jitter
        output_tokens: 400     # mean output length
        errors: {API_RATE_LIMIT: 0.05, TIMEOUT: 0.01}   # probability per attempt
        retry_after: 1         # seconds suggested with a simulated rate limit
        hang: 0.0              # probability that an attempt never answers
        seed: 7

Outcomes are a pure function of (seed, item_id, attempt): reruns and resumes
see the same faults in the same places, whatever the concurrency.
"""

from __future__ import annotations

import random
from typing import Any

import trio

from storyloom import ErrorKind, ProviderError, hookimpl
from storyloom.provider import BaseProvider, Request, Response, merge_options, spec_error
from storyloom.settings import ModelSpec
from storyloom.tokens import estimate_request_tokens

OPTIONS = {"latency_ms": 200.0, "output_tokens": 400, "errors": {}, "retry_after": 1.0, "hang": 0.0, "seed": 0}

TEXT = {
    "th": "(ข้อความจำลองจาก storyloom: ไม่ได้เรียกใช้โมเดลจริง) ",
    "en": "(Simulated by storyloom: no real model was called.) ",
}
FILLER = {"th": "ฝนตกพรำ ๆ ทั้งคืน ", "en": "The rain kept on all night. "}

ERROR_MESSAGES = {
    ErrorKind.API_RATE_LIMIT: "simulated rate limit (429)",
    ErrorKind.TIMEOUT: "simulated upstream timeout (504)",
    ErrorKind.TEMPORARY_ERROR: "simulated server error (503)",
    ErrorKind.INVALID_INPUT: "simulated invalid request (400)",
    ErrorKind.AUTH_ERROR: "simulated invalid API key (401)",
    ErrorKind.QUOTA_EXCEEDED: "simulated quota exhausted",
}


def _options(spec: ModelSpec) -> dict[str, Any]:
    opts = merge_options(spec, OPTIONS, "simulated")
    if not isinstance(opts["errors"], dict):
        raise spec_error(spec, ("errors",), f"expected a mapping of error kind to probability, got {opts['errors']!r}")
    errors = {}
    for kind, rate in dict(opts["errors"]).items():
        if kind not in ERROR_MESSAGES:
            raise spec_error(spec, ("errors", kind), f"unknown error kind {kind!r} (known: {', '.join(ERROR_MESSAGES)})",
                             at_key=True)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise spec_error(spec, ("errors", kind), f"expected a probability from 0 to 1, got {rate!r}")
        errors[ErrorKind(kind)] = float(rate)
    opts["errors"] = errors
    for key in ("latency_ms", "output_tokens", "retry_after", "hang"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (key == "hang" and value > 1):
            wanted = "a probability from 0 to 1" if key == "hang" else "a number >= 0"
            raise spec_error(spec, (key,), f"expected {wanted}, got {value!r}")
    return opts


class SimulatedProvider(BaseProvider):
    """Free (no ``default_prices``); never reports rate limits beyond its 429s."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.opts = _options(spec)

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> None:
        """The entry's options (latency_ms, errors, ...); no key is needed."""
        _options(spec)

    @classmethod
    def expected_output_tokens(cls, spec: ModelSpec, request: Request) -> int:
        """For ``--dry-run``: the entry's mean ``output_tokens``, within max_tokens."""
        return min(request.max_tokens, int(_options(spec)["output_tokens"]))

    async def complete(self, request: Request) -> Response:
        meta = request.metadata
        rng = random.Random(f"{self.opts['seed']}:{meta.get('item_id')}:{meta.get('attempt')}")
        latency = self.opts["latency_ms"] / 1000 * rng.uniform(0.5, 1.5)
        if latency > 0:
            await trio.sleep(latency)
        else:
            await trio.lowlevel.checkpoint()
        if rng.random() < self.opts["hang"]:
            await trio.sleep_forever()
        # The same estimate the kernel plans with: a real provider's count
        # differs, and the kernel's per-model calibration is tested against that.
        input_tokens = estimate_request_tokens(request)
        draw = rng.random()
        for kind, rate in self.opts["errors"].items():
            if draw < rate:
                # Rejected requests consume nothing; an upstream timeout may have read the prompt.
                raise ProviderError(kind, ERROR_MESSAGES[kind],
                                    retry_after=self.opts["retry_after"] if kind is ErrorKind.API_RATE_LIMIT else None,
                                    billed=None if kind is ErrorKind.TIMEOUT else False)
            draw -= rate
        language = "th" if meta.get("language") == "th" else "en"
        output_tokens = min(request.max_tokens, max(1, int(self.opts["output_tokens"] * rng.uniform(0.8, 1.2))))
        text = TEXT[language] + FILLER[language] * max(1, output_tokens // 8)
        return Response(text=text, input_tokens=input_tokens, output_tokens=output_tokens, model=self.spec.model)


@hookimpl
def loom_register_providers(register):
    register("simulated", SimulatedProvider)
