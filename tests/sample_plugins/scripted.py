"""A provider whose every attempt follows a script, for kernel tests.

Model options::

    scripted:
      provider: scripted
      latency: 0.01                 # seconds per attempt
      script: {item-1: [TEMPORARY_ERROR, ok], item-2: [hang]}   # per attempt; default ok

A step is ``ok``, ``hang`` (never answers), ``crash`` (raises a plain
exception, as a buggy plugin would) or an ErrorKind name.
"""

from __future__ import annotations

import trio

import storyloom
from storyloom import ErrorKind, ProviderError
from storyloom.provider import BaseProvider, Response

STATS = {"in_flight": 0, "max_in_flight": 0, "calls": [], "by_job": {}, "max_by_job": {}}


def reset() -> None:
    STATS.update(in_flight=0, max_in_flight=0, calls=[], by_job={}, max_by_job={})


class ScriptedProvider(BaseProvider):
    def __init__(self, spec):
        super().__init__(spec)
        self.name = spec.name
        self.latency = float(spec.options.get("latency", 0.0))
        self.script = spec.options.get("script", {})

    async def complete(self, request):
        item_id, attempt = request.metadata["item_id"], request.metadata["attempt"]
        STATS["calls"].append((item_id, attempt, self.name, trio.current_time()))
        STATS["in_flight"] += 1
        STATS["max_in_flight"] = max(STATS["max_in_flight"], STATS["in_flight"])
        job_id, by_job = request.metadata["job_id"], STATS["by_job"]
        by_job[job_id] = by_job.get(job_id, 0) + 1
        STATS["max_by_job"][job_id] = max(STATS["max_by_job"].get(job_id, 0), by_job[job_id])
        try:
            await trio.sleep(self.latency)
            steps = self.script.get(item_id, [])
            step = steps[attempt - 1] if attempt <= len(steps) else "ok"
            if step == "hang":
                await trio.sleep_forever()
            if step == "crash":
                raise RuntimeError("scripted crash")
            if step != "ok":
                raise ProviderError(ErrorKind(step), f"scripted {step}", input_tokens=10)
            return Response(text=f"text for {item_id}", input_tokens=100, output_tokens=50, model=self.name)
        finally:
            STATS["in_flight"] -= 1
            by_job[job_id] -= 1


@storyloom.hookimpl
def loom_register_providers(register):
    register("scripted", ScriptedProvider)
