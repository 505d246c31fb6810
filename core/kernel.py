"""The trio scheduler: the store's queue -> per-type limiter -> job run -> provider.

A :class:`Worker` runs the items of many jobs at once. The store keeps every
submitted item in one durable queue (critical, high, normal, low; FIFO within
a level across jobs). One dispatcher per job type claims as many items as the
type's ``CapacityLimiter`` has room for, so a type's ``max_parallel`` holds
across jobs; a job's own ``max_parallel`` is kept by leaving it out of claims
while it is full. Each attempt runs under ``trio.fail_after(timeout_per_item)``.
Outcomes of every job go through one writer task that commits them in groups,
and hooks and sinks hear of an outcome only after it is on disk.

Models, their rate limits and their providers belong to the worker: a 429 or
a revoked key is a fact about the model, whichever job met it. Plan, routing
strategy, retry policy, budget and sinks belong to each job's
:class:`~storyloom.jobrun.JobRun`.

``storyloom run FILE`` is a worker given one job (``only``): it claims only
that job's items and ends with it. ``storyloom work`` is a worker over the
whole queue.

A pipeline job's items carry their stage's job type: each stage's items are
claimed by that type's dispatcher and run under the stage's plan (see
:class:`~storyloom.jobrun.StageRun`); a completion's follow-ups and artifacts
(:mod:`storyloom.pipeline`) commit with it.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

import trio

from .clock import wall
from .attempt import NotStarted, run_attempt
from .config import Config
from .contracts import Outcome, Result, Stop
from .errors import ConfigError, ErrorKind, UsageError
from .events import Event
from .job import Item, Plan, item_from_dict, job_from_dict
from .chosen import lookup, progress_sinks, report_renderers
from .jobrun import JobRun, Sending, StageRun
from .jobtype import reads_project
from .pipeline import completion, project_context
from .pool import ModelPool
from .provider import check_provider
from .artifacts import Artifact
from .leases import LeaseKeeper
from .store import AttemptRecord, ClaimedItem, NewItem, RunningRow, Store, StoreUnavailable, shares_limits
from .store.owner import make_owner
from .summary import Summary

#: Most items claimed, and most outcomes committed, in one transaction.
CLAIM_BATCH = 256
COMMIT_BATCH = 512
#: After the worker ends, how long sinks may take to drain their last events.
SINK_GRACE = 2.0
#: How many scheduler rounds the writer waits for more outcomes before it commits.
LINGER_ROUNDS = 3
#: How often a sample run (``run --sample``) looks again while its items wait for a retry.
SAMPLE_POLL = 0.25
#: How often levels are re-evaluated as deadlines approach and items age.
PROMOTE_INTERVAL = 5.0
#: Longest wait between looks at items another worker holds, when a run
#: waits for them (their lease to run out, or their worker to finish them).
LEASE_POLL = 1.0
#: Over the whole queue, a dispatcher whose type has nothing queued looks
#: again at most this often: every commit wakes every dispatcher, and on a
#: store across the network each look is a claim and a query, round trips
#: that would otherwise outnumber the work of the busy types.
IDLE_LOOK = 0.1


@dataclass
class _Finished:
    run: JobRun
    claimed: ClaimedItem
    item: Item
    outcome: Outcome
    record: AttemptRecord


@dataclass
class _Released:
    """An item that never started (its job is stopping): back to pending."""

    run: JobRun
    item_id: str
    fence: int = 0


class Worker:
    """Run queued items until the queue is empty (``burst``), forever, or,
    given ``only``, until that one job ends.

    ``progress`` overrides the sinks each job run starts (None: the
    options', else the settings').
    """

    def __init__(self, config: Config, *, only: Plan | None = None, burst: bool = True,
                 handle_signals: bool = False, progress: tuple[str, ...] | None = None,
                 sample: Sequence[str] | None = None) -> None:
        self.config = config
        self.burst = burst
        self.handle_signals = handle_signals
        self.progress = config.options.progress if progress is None else progress
        self.owner = make_owner()
        #: ``queue: {lease: ...}``: how long a claim holds an item unless renewed.
        self.lease_s = config.settings.lease
        #: ``queue: {poll: ...}``: how often it re-reads its jobs' states (another
        #: process's pause or cancel) and, waiting for work, looks for new jobs,
        #: unless the store's wake-up (``wait_for_change``) comes first.
        self.poll_s = config.settings.poll
        self.pool = ModelPool(dict(config.settings.models))
        self.providers: dict[str, Any] = {}
        self.runs: dict[str, JobRun] = {}
        #: How each job run ended, in the order they ended.
        self.summaries: list[Summary] = []
        self.interrupted = False
        self._changed = trio.Event()
        self._claiming = 0
        self._recheck: set[JobRun] = set()
        self._dispatch_scope = trio.CancelScope()
        self._work_scope: trio.CancelScope | None = None
        #: The one job run of ``storyloom run`` / ``resume``; None over the whole queue.
        self.only: JobRun | None = None
        # Names every job run resolves, checked now: a typo on the command line
        # is a UsageError before anything is stored, not a job paused for it.
        progress_sinks(config, self.progress)
        report_renderers(config)
        if only is not None:  # built now, so bad options fail before anything is stored
            self.only = JobRun(self, only)
            self.runs[only.job.job_id] = self.only
            if sample is not None:  # run these items only, then pause (``run --sample``)
                self.only.sample = set(sample)
                self.only.sample_size = len(self.only.sample)

    # -- what job runs use -------------------------------------------------

    def providers_for(self, models: tuple[str, ...]) -> dict[str, Any]:
        """The worker's providers, building those of ``models`` not built yet.

        Each new provider is checked against the Provider protocol once (a
        UsageError names it), given its model's limiter as rate-limit
        feedback, and decides whether that limiter refunds unused tokens."""
        for name in models:
            if name in self.providers:
                continue
            spec = self.config.settings.models[name]
            registries = self.config.registries
            provider = lookup(registries.providers, spec.provider, f"provider (model {name!r})")(spec)
            check_provider(provider, spec.provider, name, registries.owners.get(("providers", spec.provider)))
            limiter = self.pool[name].limiter
            provider.bind_rate_limits(limiter)  # the limiter is the model's RateLimitFeedback
            limiter.refund_unused = provider.refunds_unused_tokens
            self.providers[name] = provider
        return self.providers

    async def send(self, message: Any) -> None:
        """Queue a start, an outcome or a release for the next group commit."""
        await self._outcomes.send(message)

    def store_state(self, job_id: str, state: str, reason: str | None) -> trio.Event:
        """Store a job state from sync code (a plugin's ``control.pause``);
        the returned event is set once it is written."""
        written = trio.Event()

        async def write() -> None:
            try:
                await self.store.set_job_state(job_id, state, reason)
            finally:
                written.set()

        self._background.start_soon(write)
        return written

    def interrupt(self) -> None:
        """First signal: stop dispatch and give running items the grace period.
        Second signal: cancel them now."""
        if not self.interrupted:
            self.interrupted = True
            for run in self.runs.values():
                run.interrupt()
            self._dispatch_scope.cancel()
            if self._work_scope is not None:
                self._work_scope.deadline = min(self._work_scope.deadline,
                                                trio.current_time() + self.config.grace_period)
        elif self._work_scope is not None:
            self._work_scope.cancel()

    # -- running -----------------------------------------------------------

    async def run(self, store: Store) -> list[Summary]:
        """Run until done; return the summaries of the job runs that ended."""
        self.store = store
        self.leases = LeaseKeeper(store, self.owner, self.lease_s, self._wake)
        fault: StoreUnavailable | None = None
        try:
            async with trio.open_nursery() as outer:
                self._background = outer
                await self.leases.tick()  # heartbeat, and reap what dead workers left, before claiming
                if shares_limits(store):  # every worker of the store keeps to one limit per model
                    self.pool.share(store, outer.start_soon)
                chores = trio.CancelScope()
                outer.start_soon(self._chores, chores)
                self.pool.cap_spend(await store.spend_by_model())
                if self.only is not None:
                    await self.only.start(store, outer, self.owner)
                await self._pipeline()
                for run in list(self.runs.values()):  # interrupted, or ended with the pipeline
                    if not run.finishing:
                        run.finishing = True
                        await self._finish(run)
                chores.cancel()
                # Sinks drain what is left in their (now closed) channels, within limits.
                outer.cancel_scope.deadline = trio.current_time() + SINK_GRACE
        except* (UsageError, StoreUnavailable) as group:
            # One plain error, which the CLI maps: a failed store (exit 5) before
            # bad input met only once running; the store is the truth.
            errors = _leaves(group)
            fault = next((e for e in errors if isinstance(e, StoreUnavailable)), None)
            raise (fault or errors[0]) from None
        finally:
            with trio.CancelScope(shield=True):
                try:
                    for run in self.runs.values():  # cancelled from outside, or an error escaped
                        reason = f"the store failed: {fault.reason}" if fault else "the run was cancelled"
                        try:
                            await store.release(run.job_id, self.owner)
                            if run.summary is None:
                                await store.set_job_state(run.job_id, "interrupted", reason)
                        except StoreUnavailable:
                            # Left running; its lease runs out and the next resume or
                            # work reaps it, so it continues as if interrupted.
                            pass
                    await self.leases.leave()
                finally:
                    await self.aclose()
        return self.summaries

    async def aclose(self) -> None:
        """Close the providers this worker built; safe to call again, and
        needed when :meth:`run` is never reached (it closes them itself)."""
        providers, self.providers = list(self.providers.values()), {}
        with trio.CancelScope(shield=True):
            for provider in providers:
                try:
                    await provider.aclose()
                except Exception:
                    traceback.print_exc()

    async def _pipeline(self) -> None:
        send, receive = trio.open_memory_channel[Any](max(COMMIT_BATCH, CLAIM_BATCH * 2))
        async with trio.open_nursery() as pipeline:
            self._finishers = pipeline
            pipeline.start_soon(self._writer, receive)
            async with send:
                self._outcomes = send
                async with trio.open_nursery() as work:
                    self._work_scope = work.cancel_scope
                    with self._dispatch_scope:
                        async with trio.open_nursery() as dispatchers:
                            for job_type, limit in self._type_limits().items():
                                dispatchers.start_soon(self._dispatch, job_type, trio.CapacityLimiter(limit), work)

    def _type_limits(self) -> dict[str, int]:
        if self.only is not None:
            return {plan.stage_type: plan.max_parallel for plan in self.only.plan.all_stages()}
        return {name: self.config.max_parallel(name) for name in self.config.registries.job_types}

    async def _dispatch(self, job_type: str, limiter: trio.CapacityLimiter, work: trio.Nursery) -> None:
        """Claim items of one job type while the type has room; wait when none is ready."""
        store, only = self.store, self.only
        # A pipeline's stages are claimed each by its own dispatcher; a plain job as ever.
        stage = job_type if only is not None and len(only.stages) > 1 else None
        while True:
            changed = self._changed
            tokens = [object()]
            await limiter.acquire_on_behalf_of(tokens[0])
            while len(tokens) < CLAIM_BATCH:
                token = object()
                try:
                    limiter.acquire_on_behalf_of_nowait(token)
                except trio.WouldBlock:
                    break
                tokens.append(token)
            now, asked_at = wall(), trio.current_time()
            # Claimed items are running in the store but not yet counted in
            # their run's in_flight: no run may be judged done meanwhile.
            self._claiming += 1
            try:
                if only is not None:
                    # A pipeline's stage claims its own items; a sample only its own ids, and no
                    # more of them than are not yet running.
                    kwargs: dict[str, Any] = {"job_type": stage} if stage else {}
                    room = len(tokens)
                    if only.sample is not None:
                        kwargs["only"] = sorted(only.sample)
                        room = min(room, len(only.sample) - only.in_flight)
                    claimed = [] if only.stopping or room <= 0 else await store.claim(
                        only.job_id, room, now, self.owner, lease_s=self.lease_s, **kwargs)
                else:
                    exclude = [job_id for job_id, run in self.runs.items() if not run.accepting_for(job_type)]
                    claimed = await store.claim_next(job_type, len(tokens), now, self.owner, exclude, self.lease_s)
                self.leases.claimed(claimed, asked_at)
                for token in tokens[len(claimed):]:
                    limiter.release_on_behalf_of(token)
                for item, token in zip(claimed, tokens):
                    run = await self._admit(item, job_type)
                    if run is None:
                        await store.release(item.job_id, self.owner, [item.item_id], fences=[item.fence])
                        self.leases.done(item.job_id, item.item_id, item.fence)
                        limiter.release_on_behalf_of(token)
                        continue
                    run.in_flight += 1
                    batch = run.stage(job_type)
                    batch.active += 1
                    work.start_soon(self._run_item, run, batch, item, limiter, token)
            finally:
                self._claiming -= 1
            if not self._claiming:
                for run in self._recheck.copy():
                    self._recheck.discard(run)
                    await self._maybe_finish(run)
            if claimed:
                continue
            if only is not None and only.sample is not None:
                if only.stopping or only.finishing:
                    return
                # The job's other items are ready, so next_ready_at cannot say when
                # a sample item waiting for its retry is: look again shortly.
                with trio.move_on_after(SAMPLE_POLL):
                    await changed.wait()
                continue
            elsewhere: float | None = None  # the soonest lease of this work that another worker holds
            if only is not None:
                if only.stopping or only.finishing:
                    return
                ready_at = await store.next_ready_at(only.job_id, job_type=stage) if stage \
                    else await store.next_ready_at(only.job_id)
                # Not while another stage's dispatcher is claiming: the items it
                # claimed are running in the store but not yet in in_flight
                # (a store that runs claims in a thread yields meanwhile).
                if ready_at is None and only.in_flight == 0 and not self._claiming and (
                        not stage or await store.next_ready_at(only.job_id) is None) and (
                        only.in_flight == 0 and not self._claiming):  # again: that await yielded
                    elsewhere = await self.leased_elsewhere([only.job_id])
                    # Read again: a store that awaits (PostgreSQL) lets the lease
                    # keeper reap between the two reads, and a reaped item is pending.
                    if elsewhere is None:
                        if await store.next_ready_at(only.job_id) is None:
                            return  # nothing pending, nothing running anywhere: done
                        # Pending after all: this stage's (reaped) to claim now, or another
                        # stage's, whose completions wake this dispatcher.
                        ready_at = await store.next_ready_at(only.job_id, job_type=stage) if stage \
                            else await store.next_ready_at(only.job_id)
            else:
                ready_at = await store.next_queued_at(job_type)
                if ready_at is None and self.burst and await self._drained():
                    # Any unfinished job: a pipeline's items of this type may yet come
                    # from another stage's item held elsewhere.
                    jobs = [row.job_id for row in await store.list_jobs()
                            if row.state not in ("completed", "failed", "cancelled")]
                    elsewhere = await self.leased_elsewhere(jobs)
                    if elsewhere is None:
                        ready_at = await store.next_queued_at(job_type)  # read again, as above
                        if ready_at is None:
                            return
            wait = math.inf if ready_at is None else max(0.0, ready_at - wall())
            if only is None and not self.burst:
                wait = min(wait, self.poll_s)  # another process may submit work
            if elsewhere is not None:
                # Held elsewhere: it ends there, or its lease runs out and it is reaped here.
                wait = min(wait, max(0.0, elsewhere), LEASE_POLL)
            with trio.move_on_after(wait):
                await changed.wait()
            if only is None and ready_at is None:
                await trio.sleep(IDLE_LOOK)
            if elsewhere is not None and elsewhere <= wait:
                await store.reap()

    async def leased_elsewhere(self, job_ids: list[str]) -> float | None:
        """Seconds until the soonest lease runs out among the running items
        of ``job_ids`` that no live claim of this worker holds (0 if one
        already has); None if there are none. This worker's own rows count
        too once their claim is lost here: a lease that ran out while it was
        stopped or slow leaves its items running in the store until a reap,
        and a burst that ended then would leave them pending with no one left."""
        soonest: float | None = None
        for job_id in job_ids:
            for row in await self.store.running(job_id):
                if self._held_here(job_id, row):
                    continue  # it ends here
                left = 0.0 if row.lease_left is None else max(0.0, row.lease_left)
                soonest = left if soonest is None else min(soonest, left)
        return soonest

    async def orphaned(self, job_id: str) -> bool:
        """Whether items of ``job_id`` run in the store under this worker's
        name with no live claim here: a claim whose answer never came back
        (the connection died during its COMMIT), or one lost while stopped.
        They end only by their lease running out and a reap."""
        return any(row.owner == self.owner and not self._held_here(job_id, row)
                   for row in await self.store.running(job_id))

    def _held_here(self, job_id: str, row: RunningRow) -> bool:
        mine = self.leases.held.get((job_id, row.item_id)) if row.owner == self.owner else None
        return mine is not None and not mine.lost and mine.fence == row.fence

    async def _drained(self) -> bool:
        """Over the whole queue in a burst: nothing is in flight (a job in
        flight may yet make items of any type: a pipeline's follow-ups) and no
        type this worker serves has an item queued."""
        if self._claiming or any(r.in_flight for r in self.runs.values()):
            return False
        for job_type in self._type_limits():
            if await self.store.next_queued_at(job_type) is not None:
                return False
        return True

    async def _admit(self, claimed: ClaimedItem, job_type: str) -> JobRun | None:
        """The run a claimed item (of stage ``job_type``) belongs to, started
        if it is the job's first here; None if the item must go back (the job
        or its stage is full, it is stopping, or cannot run in this worker)."""
        if self.only is not None:
            run: JobRun | None = self.only
        else:
            run = self.runs.get(claimed.job_id)
            if run is None:
                run = await self._start_run(claimed.job_id)
        if run is None or not run.accepting_for(job_type):
            return None
        return run

    async def _start_run(self, job_id: str) -> JobRun | None:
        row = await self.store.get_job(job_id)
        try:
            if row is None:
                raise UsageError("the job is not in the store")
            run = JobRun(self, self.config.plan(job_from_dict(row.definition)))
        except UsageError as exc:
            # Held until an operator fixes the worker's settings and resumes it.
            reason = f"this worker cannot run it: {exc}"
            print(f"storyloom: job {job_id!r} paused: {reason}", file=sys.stderr)
            if row is not None:
                await self.store.set_job_state(job_id, "paused", reason)
            return None
        self.runs[job_id] = run
        try:
            await run.start(self.store, self._background, self.owner)
        except UsageError as exc:  # a plugin's batch_started refusing the job, say: that job only
            del self.runs[job_id]
            run.close_sinks()
            reason = f"this worker cannot run it: {exc}"
            print(f"storyloom: job {job_id!r} paused: {reason}", file=sys.stderr)
            await self.store.set_job_state(job_id, "paused", reason)
            return None
        return run

    async def _run_item(self, run: JobRun, batch: JobRun | StageRun, claimed: ClaimedItem,
                        limiter: trio.CapacityLimiter, token: object) -> None:
        scope = run.item_scope()
        try:
            with scope:
                self.leases.attach(claimed, scope)  # a lost lease cancels the attempt
                if run.stopping:
                    await self.send(_Released(run, claimed.item_id, claimed.fence))
                    return
                item = item_from_dict(claimed.definition)
                started_wall = wall()
                try:
                    outcome = await self._attempt(run, batch, claimed, item)
                except Stop as stop:
                    run.pause(stop.reason)
                    await self.send(_Released(run, item.item_id, claimed.fence))
                    return
                except NotStarted:  # cancelled or taken elsewhere before it was sent
                    await self.send(_Released(run, item.item_id, claimed.fence))
                    return
                outcome, follow_ups, artifacts = completion(self.config.registries, run.job, item, outcome)
                record = _record(run, claimed, item, outcome, started_wall, follow_ups, artifacts)
                await self.send(_Finished(run, claimed, item, outcome, record))
            if scope.cancelled_caught:
                # The job was cancelled (the store skipped the item), or the lease
                # was lost (under its old fence the release is ignored).
                await self.send(_Released(run, claimed.item_id, claimed.fence))
        finally:
            run.item_done(scope)
            batch.active -= 1
            limiter.release_on_behalf_of(token)

    async def _attempt(self, run: JobRun, batch: JobRun | StageRun, claimed: ClaimedItem, item: Item) -> Outcome:
        """One attempt; a ``reads_project`` job type's item first gets its project as ``item.context``."""
        if reads_project(batch.job_type):
            try:
                context = await project_context(self.config, self.store, item)
            except ConfigError as exc:  # a bad project file: this item cannot be built
                return Outcome(state="failed", attempt=claimed.attempts + 1, model=None, elapsed=0.0,
                               error_kind=ErrorKind.INVALID_INPUT, error=f"project {item.project_id!r}: {exc}")
            item = dataclasses.replace(item, context=context)
        return await run_attempt(batch, claimed, item)

    async def _writer(self, receive: trio.MemoryReceiveChannel[Any]) -> None:
        """Group commit: whatever is waiting goes into one transaction."""
        store = self.store
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
                sending = [m for m in batch if isinstance(m, Sending)]
                starts = [m.record for m in sending]
                finished = [m for m in batch if isinstance(m, _Finished)]
                released: dict[JobRun, list[_Released]] = {}
                for m in batch:
                    if isinstance(m, _Released):
                        released.setdefault(m.run, []).append(m)
                applied = await store.record([f.record for f in finished], self.owner, starts)
                for m, ok in zip(sending, applied[len(finished):]):
                    m.ok = ok
                    m.written.set()
                leases = self.leases
                for run, gone in released.items():
                    await store.release(run.job_id, self.owner, [m.item_id for m in gone], [m.fence for m in gone])
                    run.in_flight -= len(gone)
                    for m in gone:
                        leases.done(run.job_id, m.item_id, m.fence)
                touched = set(released)
                for done, ok in zip(finished, applied):
                    done.run.in_flight -= 1
                    touched.add(done.run)
                    leases.done(done.run.job_id, done.claimed.item_id, done.claimed.fence)
                    if ok:
                        _acknowledge(done)
                        if done.run.sample is not None and done.record.state != "pending":
                            done.run.sample_settled(done.item.item_id)
                for run in touched:
                    await self._maybe_finish(run)
                self._wake()

    async def _maybe_finish(self, run: JobRun) -> None:
        if self._claiming:
            self._recheck.add(run)  # a dispatcher checks again once its claim is counted
            return
        if await run.done(self.store):
            run.finishing = True
            self._finishers.start_soon(self._finish, run)

    async def _finish(self, run: JobRun) -> None:
        summary = await run.finish(self.store, self.owner)
        if summary is not None:
            self.summaries.append(summary)
        if self.runs.get(run.job_id) is run:
            del self.runs[run.job_id]
        self._wake()

    async def _chores(self, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                if self.handle_signals:
                    nursery.start_soon(self._watch_signals)
                nursery.start_soon(self._promote)
                nursery.start_soon(self._poll)
                nursery.start_soon(self._keep_leases)

    async def _keep_leases(self) -> None:
        """Every lease/3: heartbeat, renew (a lost item's attempt is cancelled), reap."""
        while True:
            await trio.sleep(self.leases.every)
            await self.leases.tick()

    async def _promote(self) -> None:
        """Approaching deadlines and aging raise waiting items' levels."""
        while True:
            if await self.store.promote(wall(), self.config.settings.aging):
                self._wake()
            await trio.sleep(PROMOTE_INTERVAL)

    async def _poll(self) -> None:
        """Notice pauses and cancels made by other processes (``storyloom pause``),
        and new work: at once when the store sends a wake-up, else every poll."""
        while True:
            await self.store.wait_for_change(self.poll_s)
            for run in list(self.runs.values()):
                row = await self.store.get_job(run.job_id)
                if row is not None and row.state in ("paused", "cancelled") and not run.finishing:
                    run.stopped_elsewhere(row.state, row.reason)
                    await self._maybe_finish(run)
            self._wake()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.interrupt()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _acknowledge(done: _Finished) -> None:
    run, outcome = done.run, done.outcome
    run.hooks.item_finished(job=run.job, item=done.item, outcome=outcome)
    data = {"state": outcome.state, "attempt": outcome.attempt, "model": outcome.model,
            "elapsed": outcome.elapsed, "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens, "cost_usd": outcome.cost_usd}
    if outcome.error_kind is not None:
        data.update(error_kind=str(outcome.error_kind), error=outcome.error, retry_delay=outcome.retry_delay)
    if done.record.follow_ups:
        data["follow_ups"] = len(done.record.follow_ups)
    run.emit(Event("item_finished", run.job_id, done.item.item_id, data=data))


def _record(run: JobRun, claimed: ClaimedItem, item: Item, outcome: Outcome, started_wall: float,
            follow_ups: tuple[NewItem, ...] = (), artifacts: tuple[Artifact, ...] = ()) -> AttemptRecord:
    return AttemptRecord(
        job_id=run.job_id, item_id=item.item_id, attempt=outcome.attempt,
        state="pending" if outcome.state == "retrying" else outcome.state, model=outcome.model,
        started_at=started_wall, finished_at=wall(), error_kind=outcome.error_kind,
        error=outcome.error, input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens,
        cost_usd=outcome.cost_usd,
        not_before=wall() + outcome.retry_delay if outcome.retry_delay else 0.0,
        free=outcome.free, route=outcome.route or None, sent=outcome.sent_worst_usd is not None,
        reserved_usd=outcome.sent_worst_usd or 0.0, outcome_unknown=outcome.usage_unknown,
        result_text=outcome.result.text if outcome.result else None,
        result_data=_result_data(outcome.result) if outcome.result else None,
        follow_ups=follow_ups, artifacts=artifacts, fence=claimed.fence,
    )


def _leaves(group: BaseExceptionGroup[Any]) -> list[Any]:
    """Every error of a (possibly nested) group, in order."""
    return [leaf for error in group.exceptions
            for leaf in (_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])]


def _drain(receive: trio.MemoryReceiveChannel[Any], batch: list[Any]) -> None:
    while len(batch) < COMMIT_BATCH:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return


def _result_data(result: Result) -> dict[str, Any]:
    data = {"file_name": result.file_name}
    if result.data:
        data.update(result.data)
    return data
