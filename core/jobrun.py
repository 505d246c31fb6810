"""One job inside a worker: what is the job's own while items of many jobs
share the worker's models, limiters and writer.

A :class:`JobRun` holds the job's plan, routing strategy, retry policy,
budget, progress sinks and count of items in flight. It is what
:func:`storyloom.attempt.run_attempt` sees as ``batch``. It starts when the
worker claims the job's first item (or at once, for ``storyloom run``) and
finishes when nothing of the job is left to run here, or it is stopped.

A pipeline job (``then:``) has one :class:`StageRun` per later stage: the
stage's plan, job type, routing strategy, retry policy and providers, and
the job run's budget, sinks and writer, so that one job (one budget, one
pause, one report) covers every stage.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .clock import wall
from .budget import Budget
from .contracts import BatchControl
from .events import Event
from .job import Job, Plan
from .chosen import lookup, progress_sinks, report_renderers
from .pipeline import blocked_end
from .outputs import OutputProblem, job_folder, problem_line, take_problems, write_output
from .projection import render_reports
from .sharedlimits import SharedBudget
from .store import StartRecord, Store, shares_limits
from .summary import Summary

if TYPE_CHECKING:
    from .roles import RunWorker

SINK_BUFFER = 4096


@dataclass
class Sending:
    """An attempt's start on its way to the writer; ``written`` is set once
    committed, and ``ok`` says whether the start applied (its item was still
    running for this worker)."""

    record: StartRecord
    written: trio.Event
    ok: bool = False


class JobRun:
    def __init__(self, worker: "RunWorker", plan: Plan) -> None:
        self.worker = worker
        self.config = worker.config
        self.hooks = self.config.hooks
        self.plan = plan
        self.job: Job = plan.job
        # Built before anything is stored, so bad options fail cleanly.
        self.job_type, self.strategy, self.policy = _stage_parts(self.config, plan)
        # Sinks are built here, before anything is stored, so a factory that
        # refuses its options is a clean UsageError; they open files only in run().
        self.sinks = [(name, sink) for name, factory in progress_sinks(self.config, worker.progress)
                      if (sink := factory(self.config, plan)) is not None]
        self.renderers = report_renderers(self.config)
        self.pool = worker.pool
        self.providers = worker.providers_for(plan.models)
        self.budget = Budget(self.job.budget_usd, 0.0)
        self.control = BatchControl(self)
        #: Claimed here and not yet committed (the run ends when it is 0).
        self.in_flight = 0
        #: Item tasks alive now: what the job's own max_parallel limits. An
        #: item's slot frees as its task ends, before its outcome commits,
        #: just as the job type's limiter token does.
        self.active = 0
        #: Set when the run stops early: paused | interrupted | cancelled.
        self.status: str | None = None
        self.reason: str | None = None
        self.started_at = wall()
        self.recovered = 0
        self.summary: Summary | None = None
        self._sinks: list[trio.MemorySendChannel[Event]] = []
        self._scopes: set[trio.CancelScope] = set()
        self._state_written: trio.Event | None = None
        #: Set by the worker once it has decided to finish this run.
        self.finishing = False
        #: ``run --sample``: the sample's items not yet settled; the run pauses
        #: once none is left (None: not a sample run).
        self.sample: set[str] | None = None
        self.sample_size = 0
        #: Every stage's batch by job type: this run for the job's own, a
        #: StageRun for each later one.
        self.stages: dict[str, JobRun | StageRun] = {self.job.job_type: self}
        for job_type, stage_plan in plan.stage_plans.items():
            self.stages[job_type] = StageRun(self, stage_plan)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def stopping(self) -> bool:
        return self.status is not None

    @property
    def accepting(self) -> bool:
        """May take another item: not stopping, finishing, or at the job's own max_parallel."""
        return not (self.status or self.finishing) and self.active < self.plan.max_parallel

    def stage(self, job_type: str | None) -> "JobRun | StageRun":
        """The batch that runs items of stage ``job_type`` (None: the job's own).
        KeyError if the job has no such stage."""
        return self.stages[job_type or self.job.job_type]

    def accepting_for(self, job_type: str) -> bool:
        """May take another item of stage ``job_type`` (False if it is not a stage)."""
        stage = self.stages.get(job_type)
        return stage is not None and not (self.status or self.finishing) and stage.active < stage.plan.max_parallel

    # -- life cycle ------------------------------------------------------

    async def start(self, store: Store, nursery: trio.Nursery, owner: str) -> None:
        """Mark the job running for ``owner`` (the worker), start its sinks, and tell plugins."""
        job_id = self.job_id
        costs = await store.costs(job_id)
        # Attempts whose outcome never arrived may have been billed: their worst case counts as spent.
        if self.job.budget_usd is not None and shares_limits(store):
            # One budget for every worker of the job, in the store.
            self.budget = await SharedBudget.open(store, job_id, self.job.budget_usd, owner,
                                                  costs.cost_usd + costs.unknown_usd, costs.unknown_usd)
        else:
            self.budget = Budget(self.job.budget_usd, costs.cost_usd, costs.unknown_usd)
        if self.config.options.budget_usd is not None:
            await self._keep_budget(store)
        if costs.by_model and hasattr(self.strategy, "resume"):
            try:
                self.strategy.resume({m: int(c["attempts"]) for m, c in costs.by_model.items()})
            except Exception:
                print("storyloom: the routing strategy's resume() raised; it starts afresh:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
        self.recovered = await store.reap()  # expired leases of any job: items of workers that are gone
        await store.set_job_state(job_id, "running", runner=owner)
        self._start_sinks(nursery)
        self.hooks.batch_started(job=self.job, plan=self.plan, control=self.control)
        counts = await store.counts(job_id)
        self.emit(Event("batch_started", job_id, data={
            "job_type": self.job.job_type, "total": sum(counts.values()), "counts": counts,
            "max_parallel": self.plan.max_parallel, "models": list(self.plan.models),
            "budget_usd": self.job.budget_usd}))

    async def done(self, store: Store) -> bool:
        """Nothing of the job runs here, and it is stopped or has nothing pending."""
        if self.in_flight or self.finishing:
            return False
        if self.stopping:
            return True
        if await store.next_ready_at(self.job_id) is not None:
            return False
        # Items whose lease ran out come back now, not at the next reap.
        if await store.reap():
            return False
        # `run` / `resume` ends with its job: it waits for items other workers
        # hold (their outcome, or their lease running out) rather than stop.
        if self.worker.only is self:
            return await self.worker.leased_elsewhere([self.job_id]) is None
        # Over the queue other workers' items end there, but items under this
        # worker's own name end only here, once reaped (finish would put them
        # back pending and call the job blocked).
        return not await self.worker.orphaned(self.job_id)

    async def finish(self, store: Store, owner: str) -> Summary | None:
        """Store how the job ended, write its reports and tell plugins.

        None when other live workers still run some of the job's items, or
        (over the queue) some are pending and ready: the worker that ends the
        last of them ends the job."""
        job_id = self.job_id
        with trio.CancelScope(shield=True):
            if self._state_written is not None:  # the pause's own write lands first
                await self._state_written.wait()
            released = await store.release(job_id, owner)
            counts = await store.counts(job_id)
            if self.status is None and (counts["pending"] or counts["running"]):
                # Held by another process before this worker's poll saw it.
                row = await store.get_job(job_id)
                if row is not None:
                    self.stopped_elsewhere(row.state, row.reason)
            over_queue = self.worker.only is not self
            # Over the queue another worker may reap items between done() and
            # these counts: pending and ready, they are the queue's, not blocked.
            if self.status is None and (counts["running"] or over_queue and counts["pending"]
                                        and await store.next_ready_at(job_id) is not None):
                for channel in self._sinks:
                    channel.close()
                if over_queue:
                    _report_problems(job_id, take_problems(self.config, job_id))
                    return None
                self.status = "interrupted"  # not stored: the job goes on elsewhere
                self.reason = f"{counts['running']} item(s) are running in another process, which ends the job"
                summary = self._summary(counts, (await store.costs(job_id)).cost_usd)
                summary.output_problems = take_problems(self.config, job_id)
                return summary
            if self.status == "paused" and not counts["pending"] and not counts["running"]:
                self.status = None  # paused as the last item finished: nothing is left to resume
            if self.status is None and counts["pending"]:
                # Nothing ready and nothing running, yet items are left: blocked
                # (a closed gate, a failed item's follow-up never made).
                self.status, self.reason = await blocked_end(store, job_id, counts)
            if self.status is None:
                self.status = "failed" if counts["failed"] else "completed"
            elif self.status == "interrupted" and released:
                self.reason = f"interrupted; {released} running item(s) put back to pending"
            if self.status != "cancelled":  # cancel() stored it, with the operator's reason
                await store.set_job_state(job_id, self.status, self.reason)
            costs = await store.costs(job_id)
        summary = self._summary(counts, costs.cost_usd)
        self.emit(Event("batch_finished", job_id, data={
            "status": summary.status, "counts": counts, "cost_usd": summary.cost_usd,
            "duration": summary.duration, "reason": summary.reason}))
        for channel in self._sinks:
            channel.close()
        with trio.CancelScope(shield=True):
            await self._write_reports(store, summary)
            await self._batch_finished(store, summary)
        summary.output_problems = take_problems(self.config, job_id)
        return summary

    async def _keep_budget(self, store: Store) -> None:
        """Store the budget given on the command line (``run``, ``work`` or
        ``resume --budget-usd``) in the job's definition: a later plain
        ``resume`` runs under it too."""
        row = await store.get_job(self.job_id)
        if row is not None and row.definition.get("budget_usd") != self.job.budget_usd:
            await store.set_job_definition(self.job_id, {**row.definition, "budget_usd": self.job.budget_usd})

    def _summary(self, counts: dict[str, int], cost_usd: float) -> Summary:
        assert self.status is not None
        self.summary = Summary(job_id=self.job_id, status=self.status, counts=counts, cost_usd=cost_usd,
                               started_at=self.started_at, finished_at=wall(), reason=self.reason,
                               recovered=self.recovered)
        return self.summary

    # -- control ---------------------------------------------------------

    def pause(self, reason: str) -> None:
        """Stop taking this job's items; running ones finish; stored as paused now,
        so that no worker claims its items meanwhile."""
        if self.status is None:
            self.status, self.reason = "paused", reason
            self._state_written = self.worker.store_state(self.job_id, "paused", reason)

    def sample_settled(self, item_id: str) -> None:
        """One of the sample's items has ended (completed, failed or
        skipped); with the last, the job pauses so that the user can look
        before the rest runs."""
        assert self.sample is not None
        self.sample.discard(item_id)
        if not self.sample:
            self.pause(f"sample of {self.sample_size} item(s) done")

    def interrupt(self) -> None:
        if self.status is None:
            self.status, self.reason = "interrupted", "interrupted by signal"

    def stopped_elsewhere(self, state: str, reason: str | None) -> None:
        """The stored state changed under us (``storyloom pause`` or ``cancel``)."""
        if state == "cancelled" and self.status != "cancelled":
            self.status, self.reason = "cancelled", reason
            for scope in self._scopes:
                scope.cancel()
        elif state == "paused" and self.status is None:
            self.status, self.reason = "paused", reason

    def item_scope(self) -> trio.CancelScope:
        """A scope for one running item; cancelling the job cancels it."""
        scope = trio.CancelScope()
        if self.status == "cancelled":
            scope.cancel()
        self._scopes.add(scope)
        return scope

    def item_done(self, scope: trio.CancelScope) -> None:
        self._scopes.discard(scope)

    # -- what attempts use -----------------------------------------------

    async def started(self, record: StartRecord) -> bool:
        """Queue an attempt's start for the next group commit and wait until
        it is on disk: a request is sent only once its attempt is recorded.
        False if the start did not apply (the item was cancelled or taken by
        another worker): then nothing was recorded and nothing may be sent."""
        sending = Sending(record, trio.Event())
        try:
            await self.worker.send(sending)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The writer is gone (the store failed): its error is on its way
            # up and cancels this task; sending nothing meanwhile is right.
            await trio.sleep_forever()
        await sending.written.wait()
        return sending.ok

    def close_sinks(self) -> None:
        """End the sinks' event streams: they drain what is queued and stop."""
        for channel in self._sinks:
            channel.close()

    def emit(self, event: Event) -> None:
        for channel in list(self._sinks):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                # A sink that cannot keep up loses events rather than stall the kernel.
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._sinks.remove(channel)

    # -- plumbing --------------------------------------------------------

    def _start_sinks(self, nursery: trio.Nursery) -> None:
        for name, sink in self.sinks:
            send, receive = trio.open_memory_channel[Event](SINK_BUFFER)
            self._sinks.append(send)
            nursery.start_soon(_run_sink, name, sink, receive)

    async def _write_reports(self, store: Store, summary: Summary) -> None:
        for _name, file_name, text in await render_reports(self.config, self.job, store, summary,
                                                           self.renderers):
            # A failed write is recorded for the exit code (6), not raised.
            write_output(self.config, self.job_id, job_folder(self.config, self.job_id) / file_name, text)

    async def _batch_finished(self, store: Store, summary: Summary) -> None:
        for finish in self.hooks.batch_finished(job=self.job, summary=summary, store=store):
            try:
                await finish()
            except Exception:
                print("storyloom: work returned by a loom_batch_finished hook failed:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)


class StageRun:
    """A later stage of a pipeline job, as its attempts see it
    (:class:`storyloom.roles.AttemptBatch`): the stage's own plan, job type,
    routing strategy, retry policy and providers; the job run's budget,
    control, hooks, writer and sinks."""

    def __init__(self, run: JobRun, plan: Plan) -> None:
        self.run = run
        self.plan = plan
        self.job = run.job
        self.hooks = run.hooks
        self.pool = run.pool
        self.job_type, self.strategy, self.policy = _stage_parts(run.config, plan)
        self.providers = run.worker.providers_for(plan.models)
        #: This stage's item tasks alive now (its max_parallel limits them).
        self.active = 0

    @property
    def budget(self) -> Budget | SharedBudget:
        return self.run.budget  # one budget for the whole job, replaced when the run starts

    @property
    def control(self) -> BatchControl:
        return self.run.control

    async def started(self, record: StartRecord) -> bool:
        return await self.run.started(record)

    def emit(self, event: Event) -> None:
        self.run.emit(event)


def _stage_parts(config: Any, plan: Plan) -> tuple[Any, Any, Any]:
    """A stage's job type, routing strategy and retry policy, looked up (and
    built) now, so that bad options fail before anything is stored."""
    reg = config.registries
    job_type = lookup(reg.job_types, plan.stage_type, "job type")
    strategy_name = plan.routing.get("strategy", "round_robin")
    options = {k: v for k, v in plan.routing.items() if k != "strategy"}
    strategy = lookup(reg.strategies, strategy_name, "routing strategy")(options, plan)
    policy = lookup(reg.retry_policies, plan.retry.policy, "retry policy")(plan.retry)
    return job_type, strategy, policy


def _report_problems(job_id: str, problems: tuple[OutputProblem, ...]) -> None:
    """Write failures of a job that another process ends: said here, as no summary carries them."""
    if problems:
        print(f"storyloom: job {job_id!r}: {problem_line(job_id, problems)}", file=sys.stderr)


async def _run_sink(name: str, sink: Any, receive: trio.MemoryReceiveChannel[Event]) -> None:
    async with receive:
        try:
            await sink.run(receive)
        except OSError as err:  # a full or read-only disk: one line, not a traceback
            where = f" {err.filename}" if err.filename else ""
            print(f"storyloom: progress sink {name!r} stopped: cannot write{where}: {err.strerror or err}",
                  file=sys.stderr)
        except Exception:
            print(f"storyloom: progress sink {name!r} failed and was dropped:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
