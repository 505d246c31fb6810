"""The trio scheduler: store -> priority order -> per-type limiter -> provider.

One :class:`Batch` runs one job. Items stream from the store, which keeps
them in priority order (critical, high, normal, low; FIFO within a level).
The dispatcher claims as many as the job type's ``CapacityLimiter`` has room
for; each attempt runs under ``trio.fail_after(timeout_per_item)``. Outcomes
go through one writer task that commits them in groups, and hooks and sinks
hear of an outcome only after it is on disk.
"""

from __future__ import annotations

import math
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import trio

from .atomic import write_atomic
from .attempt import Outcome, Stop, run_attempt
from .budget import Budget
from .config import Config
from .errors import UsageError
from .events import Event
from .job import Item, Job, Plan, item_from_dict
from .jobtype import Result
from .pool import ModelPool
from .settings import DEFAULT_PROGRESS, DEFAULT_REPORTS
from .report import build_report
from .store import AttemptRecord, ClaimedItem, StartRecord, Store
from .store.owner import make_owner, owner_alive
from .summary import Summary

#: Most items claimed, and most outcomes committed, in one transaction.
CLAIM_BATCH = 256
COMMIT_BATCH = 512
SINK_BUFFER = 4096
#: After the batch ends, how long sinks may take to drain their last events.
SINK_GRACE = 2.0
#: How many scheduler rounds the writer waits for more outcomes before it commits.
LINGER_ROUNDS = 3

class BatchControl:
    """What plugins may do to a running batch (given to ``loom_batch_started``)."""

    def __init__(self, batch: "Batch") -> None:
        self._batch = batch

    @property
    def job_id(self) -> str:
        return self._batch.job.job_id

    def pause(self, reason: str) -> None:
        """Stop dispatching; running items finish; the job is stored as paused."""
        self._batch.pause(reason)

    def notify(self, message: str, **data: Any) -> None:
        self._batch.emit(Event("notify", self.job_id, data={"message": message, **data}))

    def escalate(self, message: str, **data: Any) -> None:
        self._batch.emit(Event("escalate", self.job_id, data={"message": message, **data}))


@dataclass
class _Finished:
    claimed: ClaimedItem
    item: Item
    outcome: Outcome
    record: AttemptRecord


@dataclass
class _Released:
    """An item that never started (the batch is pausing): back to pending."""

    item_id: str


class Batch:
    def __init__(self, config: Config, plan: Plan, *, handle_signals: bool = False) -> None:
        self.config = config
        self.plan = plan
        self.job: Job = plan.job
        self.handle_signals = handle_signals
        self.owner = make_owner()
        reg = config.registries
        self.job_type = reg.job_types[self.job.job_type]
        self.limiter = trio.CapacityLimiter(plan.max_parallel)
        self.in_flight = 0  # claimed and not yet committed
        self.pool = ModelPool({name: config.settings.models[name] for name in plan.models})
        self.budget = Budget(plan.job.budget_usd, 0.0)
        self._status: str | None = None  # set when stopping early: paused | interrupted
        self._reason: str | None = None
        self._changed = trio.Event()
        self._sinks: list[trio.MemorySendChannel[Event]] = []
        self._dispatch_scope = trio.CancelScope()
        self._work_scope: trio.CancelScope | None = None
        self.control = BatchControl(self)
        # Built here, before anything is stored, so bad options fail cleanly.
        strategy_name = plan.routing.get("strategy", "round_robin")
        options = {k: v for k, v in plan.routing.items() if k != "strategy"}
        self.strategy = _lookup(reg.strategies, strategy_name, "routing strategy")(options, plan)
        self.policy = _lookup(reg.retry_policies, plan.retry.policy, "retry policy")(plan.retry)
        self.providers = self._build_providers()

    # -- control -------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._status is not None

    def pause(self, reason: str) -> None:
        if self._status is None:
            self._status, self._reason = "paused", reason
            self._dispatch_scope.cancel()

    def interrupt(self) -> None:
        """First signal: stop dispatch and give running items the grace period.
        Second signal: cancel them now."""
        if self._status != "interrupted":
            self._status, self._reason = "interrupted", "interrupted by signal"
            self._dispatch_scope.cancel()
            if self._work_scope is not None:
                self._work_scope.deadline = min(self._work_scope.deadline,
                                                trio.current_time() + self.config.grace_period)
        elif self._work_scope is not None:
            self._work_scope.cancel()

    def emit(self, event: Event) -> None:
        for channel in list(self._sinks):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                # A sink that cannot keep up loses events rather than stall the kernel.
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._sinks.remove(channel)

    # -- running -------------------------------------------------------

    async def run(self, store: Store) -> Summary:
        """Run the stored job to its end, a pause or an interruption."""
        self.store = store
        started = time.time()
        self.budget = Budget(self.job.budget_usd, (await store.costs(self.job.job_id)).cost_usd)
        recovered = await self.store.recover(self.job.job_id, owner_alive)
        await self.store.set_job_state(self.job.job_id, "running")
        summary: Summary | None = None
        try:
            async with trio.open_nursery() as outer:
                self._start_sinks(outer)
                signals = trio.CancelScope()
                if self.handle_signals:
                    outer.start_soon(self._watch_signals, signals)
                self.call_hook("loom_batch_started", job=self.job, plan=self.plan, control=self.control)
                counts = await self.store.counts(self.job.job_id)
                self.emit(Event("batch_started", self.job.job_id, data={
                    "job_type": self.job.job_type, "total": sum(counts.values()), "counts": counts,
                    "max_parallel": self.plan.max_parallel, "models": list(self.plan.models),
                    "budget_usd": self.job.budget_usd}))
                await self._pipeline()
                summary = await self._finish(started, recovered)
                await self._write_reports(summary)
                signals.cancel()
                # Sinks drain what is left in their (now closed) channels, within limits.
                outer.cancel_scope.deadline = trio.current_time() + SINK_GRACE
        finally:
            with trio.CancelScope(shield=True):
                await self.store.release(self.job.job_id, self.owner)
                if summary is None:  # cancelled from outside, or an error escaped
                    await self.store.set_job_state(self.job.job_id, "interrupted", "the run was cancelled")
                for provider in self.providers.values():
                    try:
                        await provider.aclose()
                    except Exception:
                        traceback.print_exc()
        await self._batch_finished(summary)
        return summary

    async def _pipeline(self) -> None:
        send, receive = trio.open_memory_channel[Any](max(COMMIT_BATCH, self.plan.max_parallel * 2))
        async with trio.open_nursery() as pipeline:
            pipeline.start_soon(self._writer, receive)
            async with send:
                self._outcomes = send
                async with trio.open_nursery() as work:
                    self._work_scope = work.cancel_scope
                    with self._dispatch_scope:
                        await self._dispatch(work)

    async def _finish(self, started: float, recovered: int) -> Summary:
        with trio.CancelScope(shield=True):
            released = await self.store.release(self.job.job_id, self.owner)
            counts = await self.store.counts(self.job.job_id)
            if self._status == "paused" and not counts["pending"] and not counts["running"]:
                self._status = None  # paused as the last item finished: nothing is left to resume
            if self._status is None:
                self._status = "failed" if counts["failed"] else "completed"
            elif self._status == "interrupted" and released:
                self._reason = f"interrupted; {released} running item(s) put back to pending"
            await self.store.set_job_state(self.job.job_id, self._status, self._reason)
            costs = await self.store.costs(self.job.job_id)
        summary = Summary(job_id=self.job.job_id, status=self._status, counts=counts, cost_usd=costs.cost_usd,
                          started_at=started, finished_at=time.time(), reason=self._reason, recovered=recovered)
        self.emit(Event("batch_finished", self.job.job_id, data={
            "status": summary.status, "counts": counts, "cost_usd": summary.cost_usd,
            "duration": summary.duration, "reason": summary.reason}))
        for channel in self._sinks:
            channel.close()
        return summary

    async def _dispatch(self, work: trio.Nursery) -> None:
        job_id = self.job.job_id
        while True:
            changed = self._changed
            tokens = [object()]
            await self.limiter.acquire_on_behalf_of(tokens[0])
            while len(tokens) < CLAIM_BATCH:
                token = object()
                try:
                    self.limiter.acquire_on_behalf_of_nowait(token)
                except trio.WouldBlock:
                    break
                tokens.append(token)
            claimed = await self.store.claim(job_id, len(tokens), time.time(), self.owner)
            for token in tokens[len(claimed):]:
                self.limiter.release_on_behalf_of(token)
            for item, token in zip(claimed, tokens):
                self.in_flight += 1
                work.start_soon(self._run_item, item, token)
            if claimed:
                continue
            ready_at = await self.store.next_ready_at(job_id)
            if ready_at is None and self.in_flight == 0:
                return  # nothing pending, nothing running: done
            wait = math.inf if ready_at is None else max(0.0, ready_at - time.time())
            with trio.move_on_after(wait):
                await changed.wait()

    async def _run_item(self, claimed: ClaimedItem, token: object) -> None:
        try:
            item = item_from_dict(claimed.definition)
            started_wall = time.time()
            try:
                outcome = await run_attempt(self, claimed, item)
            except Stop as stop:
                self.pause(stop.reason)
                await self._outcomes.send(_Released(item.item_id))
                return
            record = AttemptRecord(
                job_id=self.job.job_id, item_id=item.item_id, attempt=outcome.attempt,
                state="pending" if outcome.state == "retrying" else outcome.state, model=outcome.model,
                started_at=started_wall, finished_at=time.time(), error_kind=outcome.error_kind,
                error=outcome.error, input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens,
                cost_usd=outcome.cost_usd,
                not_before=time.time() + outcome.retry_delay if outcome.retry_delay else 0.0,
                free=outcome.free, route=outcome.route or None,
                result_text=outcome.result.text if outcome.result else None,
                result_data=_result_data(outcome.result) if outcome.result else None,
            )
            await self._outcomes.send(_Finished(claimed, item, outcome, record))
        finally:
            self.limiter.release_on_behalf_of(token)

    async def started(self, record: StartRecord) -> None:
        """Queue an attempt's start for the next group commit."""
        await self._outcomes.send(record)

    async def _writer(self, receive: trio.MemoryReceiveChannel[Any]) -> None:
        """Group commit: whatever is waiting goes into one transaction."""
        async with receive:
            async for first in receive:
                batch = [first]
                # Let the tasks that are ready finish their attempts first, so
                # that one commit carries many outcomes rather than one.
                for _ in range(LINGER_ROUNDS):
                    before = len(batch)
                    _drain(receive, batch)
                    if len(batch) >= COMMIT_BATCH or len(batch) == before and before > 1:
                        break
                    await trio.lowlevel.checkpoint()
                starts = [m for m in batch if isinstance(m, StartRecord)]
                finished = [m for m in batch if isinstance(m, _Finished)]
                released = [m.item_id for m in batch if isinstance(m, _Released)]
                applied = await self.store.record([f.record for f in finished], self.owner, starts)
                if released:
                    await self.store.release(self.job.job_id, self.owner, released)
                    self.in_flight -= len(released)
                for done, ok in zip(finished, applied):
                    self.in_flight -= 1
                    if ok:
                        self._acknowledge(done)
                self._changed.set()
                self._changed = trio.Event()

    def _acknowledge(self, done: _Finished) -> None:
        outcome = done.outcome
        self.call_hook("loom_item_finished", job=self.job, item=done.item, outcome=outcome)
        data = {"state": outcome.state, "attempt": outcome.attempt, "model": outcome.model,
                "elapsed": outcome.elapsed, "input_tokens": outcome.input_tokens,
                "output_tokens": outcome.output_tokens, "cost_usd": outcome.cost_usd}
        if outcome.error_kind is not None:
            data.update(error_kind=str(outcome.error_kind), error=outcome.error, retry_delay=outcome.retry_delay)
        self.emit(Event("item_finished", self.job.job_id, done.item.item_id, data=data))

    async def _write_reports(self, summary: Summary) -> None:
        names = _chosen(self.config.settings.reports, DEFAULT_REPORTS, self.config.registries.renderers)
        if not names:
            return
        report = await build_report(self.store, self.job, summary)
        for name in names:
            try:
                file_name, text = _lookup(self.config.registries.renderers, name, "report renderer")(report)
                write_atomic(self.config.out_dir / self.job.job_id / file_name, text)
            except Exception:
                print(f"storyloom: report renderer {name!r} failed:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)

    # -- plumbing ------------------------------------------------------

    def _build_providers(self) -> dict[str, Any]:
        providers = {}
        for name in self.plan.models:
            spec = self.config.settings.models[name]
            provider = _lookup(self.config.registries.providers, spec.provider, f"provider (model {name!r})")(spec)
            limiter = self.pool[name].limiter
            if hasattr(provider, "on_headers"):  # HTTP providers report rate-limit headers
                provider.on_headers = limiter.update_from_headers
            limiter.refund_unused = bool(getattr(provider, "refunds_unused_tokens", False))
            providers[name] = provider
        return providers

    def _start_sinks(self, nursery: trio.Nursery) -> None:
        names = self.config.options.progress
        if names is None:
            names = _chosen(self.config.settings.progress, DEFAULT_PROGRESS, self.config.registries.sinks)
        for name in names:
            sink = _lookup(self.config.registries.sinks, name, "progress sink")(self.config, self.plan)
            if sink is None:
                continue
            send, receive = trio.open_memory_channel[Event](SINK_BUFFER)
            self._sinks.append(send)
            nursery.start_soon(_run_sink, name, sink, receive)

    async def _batch_finished(self, summary: Summary) -> None:
        try:
            finishers = self.config.hook.loom_batch_finished(job=self.job, summary=summary, store=self.store)
        except Exception:
            print("storyloom: a loom_batch_finished hook raised:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return
        for finish in finishers:
            if finish is None:
                continue
            try:
                await finish()
            except Exception:
                print("storyloom: work returned by a loom_batch_finished hook failed:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)

    def call_hook(self, name: str, **kwargs: Any) -> None:
        """Call a notification hook; a plugin that raises is reported, not fatal."""
        try:
            getattr(self.config.hook, name)(**kwargs)
        except Exception:
            print(f"storyloom: a {name} hook raised; the batch goes on:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with scope, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.interrupt()


async def _run_sink(name: str, sink: Any, receive: trio.MemoryReceiveChannel[Event]) -> None:
    async with receive:
        try:
            await sink.run(receive)
        except Exception:
            print(f"storyloom: progress sink {name!r} failed and was dropped:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)


def _drain(receive: trio.MemoryReceiveChannel[Any], batch: list[Any]) -> None:
    while len(batch) < COMMIT_BATCH:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return


def _chosen(names: tuple[str, ...], defaults: tuple[str, ...], registered: dict[str, Any]) -> tuple[str, ...]:
    """The names to use: defaults whose plugin is blocked drop out; names the
    user gave stay, so a missing one is an error."""
    if names == defaults:
        return tuple(n for n in names if n in registered)
    return names


def _lookup(table: dict[str, Any], name: str, noun: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown {noun} {name!r} (known: {', '.join(sorted(table))})") from None


def _with_metadata(request: Any, *, item: Item, job: Job, attempt: int) -> Any:
    language = item.fields.get("language") or job.language
    meta = {"job_id": job.job_id, "item_id": item.item_id, "attempt": attempt, "language": language,
            **request.metadata}  # what the job type set wins
    request.metadata.update(meta)
    return request


def _result_data(result: Result) -> dict[str, Any]:
    data = {"file_name": result.file_name}
    if result.data:
        data.update(result.data)
    return data
