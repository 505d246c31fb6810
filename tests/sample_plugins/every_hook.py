"""A plugin implementing every hook, for tests/test_hooks.py.

``test_every_hookspec_is_implemented_here`` fails when a new hookspec has no
implementation below, and ``test_every_hook_fires`` when one is never called.
"""

from __future__ import annotations

import storyloom
from storyloom.jobtype import Result
from storyloom.outputs import Output
from storyloom.provider import BaseProvider, Request, Response
from storyloom.retry import RetryDecision
from storyloom.routing import Choice

CALLS: dict[str, list[dict]] = {}


def _record(name: str, **kwargs) -> None:
    CALLS.setdefault(name, []).append(kwargs)


class EchoProvider(BaseProvider):
    async def complete(self, request: Request) -> Response:
        return Response(text=request.messages[-1]["content"].upper(), input_tokens=3, output_tokens=5)

    async def aclose(self) -> None:
        _record("provider.aclose")


class ShoutJobType:
    name = "shout"
    max_parallel = 2
    timeout_per_item = 5.0
    #: The item fields this job type takes besides the generic ones.
    item_schema = {"type": "object", "required": ["item_id"],
                   "properties": {"title": {"description": "What to shout.", "type": "string"}}}

    def build_request(self, item, job):
        return Request(messages=({"role": "user", "content": item.fields.get("title", item.item_id)},))

    def handle_result(self, item, job, response):
        return Result(text=response.text, file_name=f"{item.item_id}.txt")


class LastModel:
    def choose(self, item, ctx):
        return Choice(ctx.usable[-1], {"strategy": "last"})


class NeverRetry:
    def decide(self, error, attempt, max_retries):
        return RetryDecision(False, reason="never")


class CountingSink:
    async def run(self, events):
        async for event in events:
            _record("sink.event", kind=event.kind)


@storyloom.hookimpl
def loom_configure(config):
    _record("loom_configure", config=config)


@storyloom.hookimpl
def loom_unconfigure(config):
    _record("loom_unconfigure", config=config)


@storyloom.hookimpl
def loom_register_providers(register):
    _record("loom_register_providers")
    register("echo", EchoProvider)


@storyloom.hookimpl
def loom_register_job_types(register):
    _record("loom_register_job_types")
    register(ShoutJobType())


@storyloom.hookimpl
def loom_register_strategies(register):
    _record("loom_register_strategies")
    register("last", lambda options, plan: LastModel())


@storyloom.hookimpl
def loom_register_retry_policies(register):
    _record("loom_register_retry_policies")
    register("never", lambda retry_config: NeverRetry())


@storyloom.hookimpl
def loom_register_sinks(register):
    _record("loom_register_sinks")
    register("counting", lambda config, plan: CountingSink())


@storyloom.hookimpl
def loom_register_renderers(register):
    _record("loom_register_renderers")
    register("count", lambda report: ("count.txt", str(report.get("counts"))))


async def open_nowhere(url, *, state_dir, settings, create):
    """A store backend that refuses: ``store: every-hook:`` is never used by the test run."""
    _record("store.open", url=url)
    raise storyloom.UsageError("the every_hook plugin keeps no store")


@storyloom.hookimpl
def loom_register_stores(register):
    _record("loom_register_stores")
    register("every-hook", open_nowhere)


@storyloom.hookimpl
def loom_validate_job(job, config):
    _record("loom_validate_job", job=job)
    if job.vars.get("reject"):
        raise storyloom.ConfigError(job.source, "vars.reject", "rejected by the every_hook plugin")


@storyloom.hookimpl
def loom_batch_started(job, plan, control):
    _record("loom_batch_started", job=job, plan=plan, control=control)


@storyloom.hookimpl
def loom_item_started(job, item, attempt, model):
    _record("loom_item_started", item_id=item.item_id, attempt=attempt, model=model)


@storyloom.hookimpl
def loom_item_finished(job, item, outcome):
    _record("loom_item_finished", item_id=item.item_id, outcome=outcome)


@storyloom.hookimpl
def loom_batch_finished(job, summary, store):
    _record("loom_batch_finished", summary=summary)

    async def count_results():
        _record("batch_finished.results", counts=await store.counts(job.job_id))

    return count_results


@storyloom.hookimpl
def loom_job_outputs(job, store, config):
    _record("loom_job_outputs", job=job)

    async def shouted():
        # A file of this plugin's own, from the store alone: every completed item's text.
        rows = await store.items(job.job_id, "completed")
        texts = [(await store.result(job.job_id, row.item_id))[0] for row in rows]
        return [Output("shouted.txt", "\n".join(texts) + "\n")]

    return shouted


@storyloom.hookimpl
def loom_project_view(project_id, project, artifacts, gates, config):
    _record("loom_project_view", project_id=project_id, project=project)
    if project_id != "every-book":
        return None
    return {"project_id": project_id, "artifacts": len(artifacts), "text": [f"{project_id}: {len(artifacts)}"]}


@storyloom.hookimpl
def loom_approve(project_id, target, store, config):
    _record("loom_approve", project_id=project_id, target=target)
    if tuple(target) != ("everything",):
        return None

    async def approve():
        return f"opened {await store.open_gate(project_id + ':everything')} item(s)"

    return approve
