"""The ``simulated`` provider: offline, seeded, with latency, usage and faults.

It is the embedded default, so ``storyloom run jobs/demo.yaml`` needs no key
and no network. Its text says it is simulated, then runs on as varied prose
in the request's language (``Request.language``, else the item's; Thai for
``th``), about ``metadata["target_length"]`` words (characters for Thai) if
the job type gives one, else about ``output_tokens``.

A request with a ``response_schema`` is answered with a valid instance of the
schema (``storyloom.plugins.support.prose.instance``: objects, arrays with
minItems, enums, strings in the request's language, integers within their
bounds), as JSON text and as ``Response.data``. ``fail_qc_rate`` is the
probability, drawn once per item (not per attempt), that a structured reply
whose ``schema_name`` starts with ``qc`` is a failing report: every integer at
its minimum, every boolean false. ``fail_qc_items`` lists item ids (shell
patterns: ``book-en-ch3-qc``, ``*-ch2-qc``) whose QC reports always fail. Both
make the rewrite loop show offline.
Options sit on the model entry::

    models:
      sim:
        provider: simulated
        latency_ms: 200        # mean; each attempt draws from an exponential-ish jitter
        output_tokens: 400     # mean output length
        errors: {API_RATE_LIMIT: 0.05, TIMEOUT: 0.01}   # probability per attempt
        retry_after: 1         # seconds suggested with a simulated rate limit
        hang: 0.0              # probability that an attempt never answers
        fail_qc_rate: 0.0      # probability that an item's QC report (schema qc*) fails
        fail_qc_items: []      # item ids (shell patterns) whose QC reports fail
        seed: 7

Outcomes are a pure function of (seed, item_id, attempt): reruns and resumes
see the same faults in the same places, whatever the concurrency.
"""

from __future__ import annotations

import fnmatch
import json
import random
from typing import Any

import trio

from storyloom import ErrorKind, ProviderError, hookimpl
from storyloom.plugins.support.prose import instance, prose
from storyloom.provider import BaseProvider, Request, Response, merge_options, spec_error, structured_data
from storyloom.settings import ModelSpec
from storyloom.tokens import estimate_request_tokens

OPTIONS = {"latency_ms": 200.0, "output_tokens": 400, "errors": {}, "retry_after": 1.0, "hang": 0.0,
           "fail_qc_rate": 0.0, "fail_qc_items": [], "seed": 0}

TEXT = {
    "th": "(ข้อความจำลองจาก storyloom: ไม่ได้เรียกใช้โมเดลจริง) ",
    "en": "(Simulated by storyloom: no real model was called.) ",
}
#: Words (Thai: characters) of prose per output token, roughly.
PER_TOKEN = {"th": 2.5, "en": 0.75}

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
    patterns = opts["fail_qc_items"]
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise spec_error(spec, ("fail_qc_items",), f"expected a list of item ids or patterns, got {patterns!r}")
    for key in ("latency_ms", "output_tokens", "retry_after", "hang", "fail_qc_rate"):
        value = opts[key]
        rate = key in ("hang", "fail_qc_rate")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (rate and value > 1):
            wanted = "a probability from 0 to 1" if rate else "a number >= 0"
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
        tag = str(request.language or meta.get("language") or "en")
        language = "th" if tag.lower().split("-")[0] == "th" else "en"
        output_tokens = min(request.max_tokens, max(1, int(self.opts["output_tokens"] * rng.uniform(0.8, 1.2))))
        target = meta.get("target_length")
        if isinstance(target, bool) or not isinstance(target, int) or target <= 0:
            target = max(1, int(output_tokens * PER_TOKEN[language]))
        if request.response_schema is not None:
            low = request.schema_name.startswith("qc") and self._fails_qc(str(meta.get("item_id")))
            data = instance(request.response_schema, rng, language, low=low, text_length=target)
            text = json.dumps(data, ensure_ascii=False)
            # Checked like a real reply: a schema the generator cannot satisfy is INVALID_OUTPUT, not a lie.
            data = structured_data(request, text, data, who="simulated", input_tokens=input_tokens,
                                   output_tokens=output_tokens)
            return Response(text=text, input_tokens=input_tokens, output_tokens=output_tokens,
                            model=self.spec.model, data=data)
        text = TEXT[language] + prose(rng, language, target)
        return Response(text=text, input_tokens=input_tokens, output_tokens=output_tokens, model=self.spec.model)


    def _fails_qc(self, item_id: str) -> bool:
        """Whether this item's QC reports fail: named in fail_qc_items, else
        drawn once per item (every attempt of it agrees) against fail_qc_rate."""
        if any(fnmatch.fnmatchcase(item_id, pattern) for pattern in self.opts["fail_qc_items"]):
            return True
        return random.Random(f"{self.opts['seed']}:{item_id}:qc").random() < self.opts["fail_qc_rate"]


@hookimpl
def loom_register_providers(register):
    register("simulated", SimulatedProvider)
