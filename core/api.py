"""Running jobs from Python: ``await run_job(...)`` inside trio,
``run_job_sync(...)`` outside it."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

import trio

from .config import Config, Options, make_config
from .chosen import chosen
from .errors import ErrorKind, UsageError
from .job import Job, Priority, item_from_dict, item_to_dict, job_from_dict, job_to_dict
from .kernel import Worker
from .outputs import as_dict as outputs_as_dict, job_folder
from .projection import check_outputs, rebuild_outputs, render_reports
from .registry import REGISTRY_HOOKS
from .report import needs_review, snapshot
from .settings import DEFAULT_PROGRESS
from .summary import Summary
from .store import HELD_JOB_STATES, JobExists, JobRow, NewItem, Store, StoreNotFound, open_store
from .store.owner import held_live, shown_state
from .estimate import Estimate, estimate
from .init import init_studio  # noqa: F401 - `storyloom init`, part of the public API
from .jobtype import identifier_problem


async def run_job(
    job: str | os.PathLike | Job,
    *,
    options: Options = Options(),
    config: Config | None = None,
    store: Store | None = None,
    plugins: Sequence[object] = (),
    handle_signals: bool = False,
    sample: int | None = None,
) -> Summary:
    """Validate, store and run a job to its end; return its :class:`Summary`.

    ``job`` is a job file's path or a loaded :class:`storyloom.job.Job`.
    Bad input raises :class:`storyloom.UsageError` (a ConfigError for a bad
    file) before anything is written. Cancelling the surrounding scope stops
    the batch cleanly: running items go back to pending, and
    :func:`resume_job` continues. ``plugins`` are plugin objects to register
    for this run; ``store`` defaults to the one the configuration chooses
    (``--store``, ``$STORYLOOM_STORE``, ``store:``, else SQLite in the state folder).

    ``sample=N`` (``run --sample N``) runs only N items spread over the job's
    projects and models (:func:`pick_sample`), then pauses the job (exit 3)
    with the whole job's cost and time extrapolated in ``summary.sample``;
    :func:`resume_job` runs the rest.
    """
    job_file = None if isinstance(job, Job) else job
    with _configured(config, options, job_file, plugins) as config:
        loaded = _load(config, job)
        plan = config.plan(loaded)
        # A job with nothing pending has no sample: it simply ends.
        chosen_ids = (pick_sample(loaded, sample) or None) if sample is not None else None
        worker = Worker(config, only=plan, handle_signals=handle_signals, sample=chosen_ids)
        try:
            async with _opened(store, config) as store:
                await add_job(store, loaded)
                summary = _only_summary(await worker.run(store), loaded.job_id)
        finally:  # run() closes the providers too, but it may never be reached
            await worker.aclose()
        summary.out_dir = os.fspath(job_folder(config, loaded.job_id))
        if chosen_ids is not None:
            summary.sample = extrapolate(summary, len(chosen_ids), plan.max_parallel)
        return summary


def pick_sample(job: Job, n: int) -> list[str]:
    """The ids of ``n`` of the job's pending items, spread over its projects
    and pinned models: one from each (project, model) group in turn, each
    group's items in job order. Items without a pinned model go to the
    job's models by its routing strategy, which spreads them (round_robin
    gives each model its turn)."""
    if n < 1:
        raise UsageError("--sample: expected an integer >= 1")
    groups: dict[tuple[str | None, str | None], list[str]] = {}
    for item in job.items:
        if item.status == "pending":
            groups.setdefault((item.project_id, item.model), []).append(item.item_id)
    queues = [list(reversed(ids)) for ids in groups.values()]
    picked: list[str] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def extrapolate(summary: Summary, size: int, max_parallel: int) -> dict[str, Any]:
    """The whole job from its sample: cost at the sample's cost per item, time
    at its pace (items per second, scaled from the sample's parallelism to
    the job's ``max_parallel``). ``left`` is what ``resume`` would run.
    An estimate from a few items: the per-item cost varies with item size."""
    counts = summary.counts
    left = counts["pending"] + counts["running"]
    settled = counts["completed"] + counts["failed"]  # a fresh job: the sample's items that ended
    per_item = summary.cost_usd / settled if settled else 0.0
    pace = settled / summary.duration if summary.duration > 0 else 0.0
    if pace and left:
        pace *= min(max_parallel, left) / max(1, min(max_parallel, settled))
    rest_s = left / pace if pace else None
    return {"items": size, "left": left, "total_items": sum(counts.values()) - counts["skipped"],
            "cost_usd": summary.cost_usd, "cost_per_item_usd": per_item,
            "projected_cost_usd": summary.cost_usd + per_item * left,
            "seconds": summary.duration, "projected_rest_seconds": rest_s,
            "projected_seconds": summary.duration + rest_s if rest_s is not None else None}


async def resume_job(
    job_id: str,
    *,
    options: Options = Options(),
    config: Config | None = None,
    store: Store | None = None,
    plugins: Sequence[object] = (),
    handle_signals: bool = False,
    retry_failed: bool = False,
    kinds: Sequence[str] | None = None,
) -> Summary:
    """Continue a stored job: paused, interrupted, or left by a killed process.

    The job goes back into the queue, and this call works on it until it
    ends. Items left running by a dead process go back to pending; completed
    items never run again. With ``retry_failed``, failed items (only those
    of the error ``kinds``, if given) run again too: see
    :func:`retry_failed_items`. The store is found from the working folder's
    settings (or ``config``); the job then runs with the settings found from
    its job file's folder if that still exists, else the working folder's.

    A job with nothing left to run is not run: the summary has ``idle`` set
    and its ``reason`` says why (and how to run failed items again).
    """
    async with _opened(store, config, options, plugins, create=False, job_id=job_id) as opened:
        stored = job_from_dict((await _resumable(opened, job_id)).definition)
        source = Path(stored.source) if stored.source and Path(stored.source).exists() else None
        with _configured(config, options, source, plugins, start_dir=".") as config:
            # Built before the job goes back in the queue: a bad name on the
            # command line (--progress nosuch) leaves the job as it was.
            worker = Worker(config, only=config.plan(stored), handle_signals=handle_signals)
            try:
                # Outputs a kill or a full disk lost come back first, also when nothing is
                # left to run; while the job is still stopped, so its reports are due too.
                rebuilt = await rebuild_outputs(config, stored, opened, everything=False)
                # Checked (a new --budget-usd too) before anything is stored.
                _loaded, retried = await _requeue(opened, job_id, options, retry_failed, kinds, check=config.plan)
                counts = await opened.counts(job_id)
                if not counts["pending"] and not counts["running"]:
                    summary = await _nothing_to_resume(opened, job_id, counts, kinds if retry_failed else None)
                else:
                    summary = _only_summary(await worker.run(opened), job_id)
                    summary.retried = retried
            finally:  # run() closes the providers too, but it may never be reached
                await worker.aclose()
            summary.out_dir = os.fspath(job_folder(config, job_id))
            summary.outputs_rebuilt = sum(s.state == "rebuilt" for s in rebuilt)
            failed = tuple(s.problem for s in rebuilt if s.problem is not None)
            summary.output_problems = failed + tuple(summary.output_problems)
            return summary


async def requeue_job(job_id: str, *, options: Options = Options(), config: Config | None = None,
                      store: Store | None = None, plugins: Sequence[object] = (), retry_failed: bool = False,
                      kinds: Sequence[str] | None = None) -> Job:
    """Put a paused or interrupted job back in the queue for a worker to take
    (``storyloom resume --detach``); ``options.budget_usd`` raises its budget
    for good; ``retry_failed`` and ``kinds`` as in :func:`retry_failed_items`.
    Returns the job. A cancelled job is a UsageError; so is a job that is not
    stored (no store is created for it)."""
    async with _opened(store, config, options, plugins, create=False, job_id=job_id) as opened:
        loaded, _retried = await _requeue(opened, job_id, options, retry_failed, kinds)
    return loaded


async def _resumable(store: Store, job_id: str) -> JobRow:
    """The stored job's row; a UsageError if it is not stored or was cancelled."""
    row = await store.get_job(job_id)
    if row is None:
        raise UsageError(f"no job {job_id!r} in {_where(store)}")
    if row.state == "cancelled":
        raise UsageError(f"job {job_id!r} was cancelled; submit it again under a new job_id")
    return row


async def retry_failed_items(job_id: str, kinds: Sequence[str] | None = None, *, options: Options = Options(),
                             config: Config | None = None, store: Store | None = None,
                             plugins: Sequence[object] = ()) -> int:
    """Put a job's failed items back in the queue (``storyloom resume JOB_ID
    --retry-failed --detach``), only those whose error kind is in ``kinds``
    (ErrorKind values such as ``AUTH_ERROR``) if given; return how many.

    Each keeps its attempt history and gets its whole ``max_retries`` again.
    A job that ended ``failed`` goes back to ``pending``. An unknown kind, a
    cancelled or unknown job is a UsageError."""
    async with _opened(store, config, options, plugins, create=False, job_id=job_id) as opened:
        _loaded, retried = await _requeue(opened, job_id, options, True, kinds)
    return retried


async def _requeue(store: Store, job_id: str, options: Options, retry_failed: bool,
                   kinds: Sequence[str] | None, check: Any = None) -> tuple[Job, int]:
    """What resume, requeue and retry share: the job back in the queue; how
    many failed items came back. ``check(job)`` may refuse the job before
    anything is written."""
    if kinds and not retry_failed:
        raise UsageError("--kind chooses which failed items --retry-failed runs again: give --retry-failed too")
    known = [kind.value for kind in ErrorKind]
    for kind in kinds or ():
        if kind not in known:
            raise UsageError(f"unknown error kind {kind!r} (known: {', '.join(known)})")
    row = await _resumable(store, job_id)
    loaded = job_from_dict(row.definition)
    if options.budget_usd is not None:  # raising the budget outlives this resume
        loaded = dataclasses.replace(loaded, budget_usd=options.budget_usd)
    if check is not None:  # with the items still to run: a stored definition holds none
        left = [item_from_dict(row.definition) for row in await store.items(job_id)
                if row.state in ("pending", "running") or (retry_failed and row.state == "failed")]
        check(dataclasses.replace(loaded, items=tuple(left)))
    if options.budget_usd is not None:
        await store.set_job_definition(job_id, job_to_dict(loaded))
    retried = await store.requeue_failed(job_id, list(kinds) if kinds else None) if retry_failed else 0
    if row.state in ("paused", "interrupted") or (retried and row.state in ("failed", "completed")):
        await store.set_job_state(job_id, "pending", None)
    return loaded, retried


async def _nothing_to_resume(store: Store, job_id: str, counts: dict[str, int],
                             kinds: Sequence[str] | None) -> Summary:
    """The summary of a resume that found nothing to run, its reason saying so."""
    status = "failed" if counts["failed"] else "completed"
    row = await store.get_job(job_id)
    if row is not None and row.state != status:  # paused as its last item ended, say
        await store.set_job_state(job_id, status, None)
    if counts["failed"]:
        by_kind: dict[str, int] = {}
        for item in await store.items(job_id, "failed"):
            by_kind[item.error_kind or "UNKNOWN"] = by_kind.get(item.error_kind or "UNKNOWN", 0) + 1
        shown = ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items()))
        if kinds:
            why = f"no failed item has error kind {', '.join(kinds)}; {counts['failed']} failed ({shown})"
        else:
            why = (f"{counts['failed']} item(s) failed ({shown}); run them again with "
                   f"`storyloom resume {job_id} --retry-failed [--kind KIND]`")
    else:
        why = f"all {counts['completed']} item(s) completed" + (
            f", {counts['skipped']} skipped" if counts["skipped"] else "")
    now = time.time()
    return Summary(job_id=job_id, status=status, counts=counts, cost_usd=(await store.costs(job_id)).cost_usd,
                   started_at=now, finished_at=now, reason=f"nothing to resume: {why}", idle=True)


async def submit_job(
    job: str | os.PathLike | Job,
    *,
    options: Options = Options(),
    config: Config | None = None,
    store: Store | None = None,
    plugins: Sequence[object] = (),
) -> Job:
    """Validate a job and put it in the queue for ``storyloom work``; return it.

    Nothing runs here. Bad input raises :class:`storyloom.UsageError` before
    anything is written.
    """
    job_file = None if isinstance(job, Job) else job
    with _configured(config, options, job_file, plugins) as config:
        loaded = _load(config, job)
        config.plan(loaded)  # unknown models or strategies fail here, not in the worker
        async with _opened(store, config) as store:
            await add_job(store, loaded)
    return loaded


class WorkSummaries(list):
    """What :func:`work` returns: the :class:`Summary` of each job run that
    ended, in the order they ended, and whether a signal stopped the worker."""

    interrupted: bool = False


async def work(
    *,
    burst: bool = False,
    options: Options = Options(),
    config: Config | None = None,
    store: Store | None = None,
    plugins: Sequence[object] = (),
    handle_signals: bool = False,
    progress: tuple[str, ...] | None = None,
) -> WorkSummaries:
    """Work through the queue of every submitted job, by level, until it is
    empty (``burst``) or forever; return the summaries of the job runs that
    ended (``.interrupted``: a signal stopped the worker). Cancelling the
    surrounding scope stops cleanly.

    ``progress`` names the sinks each job run starts; by default
    ``options.progress``, else the settings' with the live terminal view
    replaced by plain lines: one live view cannot show many jobs at once.
    """
    with _configured(config, options, None, plugins, start_dir=".") as config:
        if progress is None and config.options.progress is None:
            names = chosen(config.settings.progress, DEFAULT_PROGRESS, config.registries.sinks)
            progress = tuple(dict.fromkeys("plain" if n == "terminal" else n for n in names))
        worker = Worker(config, burst=burst, handle_signals=handle_signals, progress=progress)
        try:
            async with _opened(store, config) as store:
                summaries = WorkSummaries(await worker.run(store))
        finally:  # run() closes the providers too, but it may never be reached
            await worker.aclose()
        for summary in summaries:
            summary.out_dir = os.fspath(job_folder(config, summary.job_id))
        summaries.interrupted = worker.interrupted
        return summaries


async def cancel_job(job_id: str, reason: str = "cancelled by an operator", *, options: Options = Options(),
                     config: Config | None = None, store: Store | None = None) -> int:
    """Cancel a job: its pending and running items are skipped with ``reason``
    (a worker running them stops them within a second). Returns how many."""
    async with _opened(store, config, options, create=False) as store:
        await _unfinished(store, job_id)
        return await store.cancel(job_id, reason)


async def pause_job(job_id: str, reason: str = "paused by an operator", *, options: Options = Options(),
                    config: Config | None = None, store: Store | None = None) -> None:
    """Hold a job: no worker takes its items; running ones finish. ``resume`` continues it."""
    async with _opened(store, config, options, create=False) as store:
        await _unfinished(store, job_id)
        await store.set_job_state(job_id, "paused", reason)


async def job_status(job_id: str | None = None, *, items: bool = False, options: Options = Options(),
                     config: Config | None = None, store: Store | None = None) -> dict[str, Any]:
    """What ``storyloom status [JOB_ID] [--items] --json`` prints.

    Without ``job_id``: ``{"jobs": [{job_id, job_type, state, counts}, ...]}``.
    With one: its state and reason, ``counts`` by state, the ``running`` items
    (model, seconds elapsed, attempt), cost and tokens (``by_model`` too),
    attempts sent whose outcome is unknown (``unknown_attempts``, and their
    worst case, ``unknown_usd``: in flight, lost with a killed worker, or
    timed out), ``needs_review`` (what waits for a person: a chapter that
    failed QC every time, :func:`storyloom.report.needs_review`), and
    with ``items=True`` every item's state, level, attempts, model and route.
    A ``running`` job whose worker is gone shows as ``interrupted``, with a
    reason that says so (:func:`storyloom.store.owner.shown_state`).
    ``workers``: the live workers (heartbeat within their lease), each with
    ``holding`` (job_id -> items it runs); with ``job_id``, only those
    holding some of that job. Running items name their ``worker`` (host:pid)
    and ``lease_left`` (seconds).
    Reads only: a missing store is a :class:`storyloom.store.StoreNotFound`.
    """
    config = _located(config, options)
    async with _opened(store, config, options, create=False) as store:
        workers = await _live_workers(store)
        if job_id is None:
            return {"jobs": [{"job_id": j.job_id, "job_type": j.job_type,
                              "state": (await shown_state(store, j))[0],
                              "counts": await store.counts(j.job_id)} for j in await store.list_jobs()],
                    "workers": workers}
        job = await store.get_job(job_id)
        if job is None:
            raise UsageError(f"no job {job_id!r} in {_where(store)}")
        now = time.time()
        costs = await store.costs(job_id)
        state, reason = await shown_state(store, job)
        return {
            "job_id": job_id, "job_type": job.job_type, "state": state, "reason": reason,
            "counts": await store.counts(job_id),
            "running": [{"item_id": r.item_id, "model": r.model, "elapsed": round(now - r.started_at, 1),
                         "attempt": r.attempts + 1, "worker": _host_pid(r.owner),
                         "lease_left": None if r.lease_left is None else round(r.lease_left, 1)}
                        for r in await store.running(job_id)],
            "workers": [w for w in workers if job_id in w["holding"]],
            "cost_usd": costs.cost_usd, "input_tokens": costs.input_tokens, "output_tokens": costs.output_tokens,
            "attempts": costs.attempts, "by_model": costs.by_model,
            "unknown_attempts": costs.unknown_attempts, "unknown_usd": costs.unknown_usd,
            "needs_review": await needs_review(config.registries.job_types, job_from_dict(job.definition), store),
            **({"items": [{"item_id": i.item_id, "state": i.state, "level": Priority(i.level).name.lower(),
                           "attempts": i.attempts, "model": i.last_model, "route": i.route,
                           "error_kind": i.error_kind} for i in await store.items(job_id)]} if items else {}),
        }


async def queue_overview(limit: int = 10, *, options: Options = Options(), config: Config | None = None,
                         store: Store | None = None) -> dict[str, Any]:
    """What ``storyloom queue --json`` prints: ``levels`` (each level's waiting
    count, and per job), ``held`` (paused or cancelled jobs with pending
    items) and the ``next`` ``limit`` items in queue order. Levels approaching
    deadlines give are applied first."""
    async with _opened(store, config, options, create=False) as store:
        await store.promote(time.time(), None)
        counts = await store.queue_counts()
        levels = [{"level": p.name.lower(), "waiting": sum(counts.get(p.value, {}).values()),
                   "jobs": counts.get(p.value, {})} for p in Priority]
        held = [{"job_id": j.job_id, "state": j.state, "reason": j.reason}
                for j in await store.list_jobs() if j.state in HELD_JOB_STATES
                and (await store.counts(j.job_id))["pending"]]
        nxt = [{"job_id": r.job_id, "item_id": r.item_id, "job_type": r.job_type,
                "level": Priority(r.level).name.lower()} for r in await store.queued(limit)]
        return {"levels": levels, "held": held, "next": nxt, "workers": await _live_workers(store)}


async def _live_workers(store: Store) -> list[dict[str, Any]]:
    """The workers whose heartbeat is within their lease, and what each holds (for operators)."""
    return [{"worker": f"{w.host}:{w.pid}", "worker_id": w.worker_id, "started_at": w.started_at,
             "lease_s": w.lease_s, "holding": w.holding} for w in await store.workers() if w.alive]


def _host_pid(owner: str | None) -> str | None:
    """An owner string without its random part (host:pid), for display."""
    return None if owner is None else owner.rsplit(":", 1)[0]


async def queue_position(item_id: str, job_id: str | None = None, *, options: Options = Options(),
                         config: Config | None = None, store: Store | None = None) -> dict[str, Any]:
    """An item's 1-based place in the queue across levels and jobs, -1 when it
    is not waiting: ``{"job_id", "item_id", "position"}``. Without ``job_id``
    the item id must be in one job only (else a UsageError naming them)."""
    async with _opened(store, config, options, create=False) as store:
        await store.promote(time.time(), None)
        jobs = [job_id] if job_id else [j.job_id for j in await store.list_jobs()]
        found = []
        for candidate in jobs:
            try:
                found.append((candidate, await store.position(candidate, item_id)))
            except KeyError:
                continue
        if not found:
            raise UsageError(f"no item {item_id!r}" + (f" in job {job_id!r}" if job_id else ""))
        if len(found) > 1:
            raise UsageError(f"item {item_id!r} is in several jobs ({', '.join(j for j, _ in found)}); pass --job")
        job, position = found[0]
        return {"job_id": job, "item_id": item_id, "position": position}


async def render_report(job_id: str, format: str = "md", *, options: Options = Options(),
                        config: Config | None = None, store: Store | None = None,
                        plugins: Sequence[object] = ()) -> tuple[str, str]:
    """A stored job's report, as the renderer ``format`` (md, json, html, or a
    plugin's) renders it: ``(file_name, text)``. Works for running and paused
    jobs too. An unknown format or job is a UsageError."""
    with _configured(config, options, None, plugins, start_dir=".") as config:
        renderer = config.registries.renderers.get(format)
        if renderer is None:
            known = ", ".join(sorted(config.registries.renderers))
            raise UsageError(f"unknown report format {format!r} (known: {known})")
        async with _opened(store, config, create=False) as store:
            row = await store.get_job(job_id)
            if row is None:
                raise UsageError(f"no job {job_id!r} in {_where(store)}")
            rendered = await render_reports(config, job_from_dict(row.definition), store,
                                            await snapshot(store, row), [(format, renderer)])
    if not rendered:
        raise UsageError(f"the report renderer {format!r} failed (its error is above)")
    _name, file_name, text = rendered[0]
    return file_name, text


async def job_outputs(job_id: str, *, rebuild: bool = False, options: Options = Options(),
                      config: Config | None = None, store: Store | None = None,
                      plugins: Sequence[object] = ()) -> dict[str, Any]:
    """What ``storyloom outputs JOB_ID [--rebuild] --json`` prints: every
    output the store says the job has (result files, ``results.jsonl``,
    reports, a plugin's), each ``{"name", "path", "state"}``.

    Without ``rebuild`` the state is ``present``, ``missing`` or ``partial``
    (a file with other content than the store's); nothing is written. With
    it every output is written again from the store: ``rebuilt``, or
    ``failed`` with an ``error``. ``problems`` holds the failed writes
    (:class:`storyloom.outputs.OutputProblem`). An unknown job is a UsageError.
    """
    async with _opened(store, config, options, plugins, create=False, job_id=job_id) as opened:
        row = await opened.get_job(job_id)
        if row is None:
            raise UsageError(f"no job {job_id!r} in {_where(opened)}")
        loaded = job_from_dict(row.definition)
        source = Path(loaded.source) if loaded.source and Path(loaded.source).exists() else None
        with _configured(config, options, source, plugins, start_dir=".") as config:
            if rebuild:
                states = await rebuild_outputs(config, loaded, opened)
            else:
                states = [state for _output, state in await check_outputs(config, loaded, opened)]
    return {"job_id": job_id, "out_dir": os.fspath(job_folder(config, job_id)),
            "outputs": [outputs_as_dict(s) for s in states],
            "problems": [s.problem for s in states if s.problem is not None]}


async def book(project_id: str, *, options: Options = Options(), config: Config | None = None,
               store: Store | None = None, plugins: Sequence[object] = ()) -> dict[str, Any]:
    """What ``storyloom book PROJECT_ID [--json]`` prints: the project as the
    plugins describe it (``loom_project_view``) from its project file (found
    beside the working folder's ``storyloom.yaml``) and its stored artifacts.
    A project no plugin describes (the bundled one: a project file, or
    something stored for it) is a UsageError."""
    with _configured(config, options, None, plugins, start_dir=".") as config:
        project = config.project(project_id)
        async with _opened(store, config, options, plugins, create=project is not None) as opened:
            artifacts = await opened.artifacts(project_id)
            gates = await opened.gates()
        view = config.hooks.project_view(project_id=project_id, project=project, artifacts=artifacts,
                                         gates=gates, config=config)
        if view is None:
            found = "nothing stored for it" if not artifacts else "no plugin describes it"
            raise UsageError(f"no project {project_id!r}: "
                             + (f"no {config.projects_dir}/{project_id}.yaml, " if project is None else "")
                             + f"{found} in {_where(opened)}")
    return dict(view)


async def approve(project_id: str, target: Sequence[str], *, options: Options = Options(),
                  config: Config | None = None, store: Store | None = None,
                  plugins: Sequence[object] = ()) -> str:
    """``storyloom approve PROJECT_ID outline|chapter N``: the plugin that owns
    the target (``loom_approve``) does it; returns its one line. An unknown
    target is a UsageError and changes nothing."""
    with _configured(config, options, None, plugins, start_dir=".") as config:
        async with _opened(store, config, options, plugins, create=False) as opened:
            action = config.hooks.approve(project_id=project_id, target=tuple(target), store=opened, config=config)
            if action is None:
                raise UsageError(f"nothing to approve as {' '.join(target)!r} for project {project_id!r}")
            return await action()


def validate_job(job_file: str | os.PathLike, *, options: Options = Options(),
                 plugins: Sequence[object] = ()) -> Job:
    """Load and fully check a job file (schema, plugins, models, strategy)
    without storing anything; return the job. A bad file is a ConfigError."""
    with make_config(options, job_file=job_file, extra_plugins=plugins) as config:
        job = config.load_job(job_file)
        config.plan(job)
    return job


def describe_plugins(*, options: Options = Options(), plugins: Sequence[object] = ()) -> dict[str, Any]:
    """What ``storyloom plugins`` prints: ``plugins`` (name -> origin and the
    hooks it implements, by name) and ``registries`` (registry -> name -> the
    plugin that registered it), in the order of ``REGISTRY_HOOKS``."""
    with make_config(options, start_dir=".", extra_plugins=plugins) as config:
        pm = config.pluginmanager
        found = {}
        for name, plugin in sorted(pm.list_name_plugin(), key=lambda np: np[0]):
            found[name] = {"origin": getattr(plugin, "__file__", None) or type(plugin).__module__,
                           "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or ())}
        registries = config.registries
        tables = {attr: {n: registries.owners[(attr, n)] for n in sorted(getattr(registries, attr))}
                  for attr in REGISTRY_HOOKS}
    return {"plugins": found, "registries": tables}


def run_job_sync(job: str | os.PathLike | Job, **kwargs) -> Summary:
    """:func:`run_job` for code that is not already inside trio."""
    return trio.run(functools.partial(run_job, job, **kwargs))


def resume_job_sync(job_id: str, **kwargs) -> Summary:
    """:func:`resume_job` for code that is not already inside trio."""
    return trio.run(functools.partial(resume_job, job_id, **kwargs))


def _load(config: Config, job: str | os.PathLike | Job) -> Job:
    """A job file loaded and validated, or a loaded Job validated by plugins;
    under ``options.job_id`` if given (``--job-id``)."""
    new_id = config.options.job_id
    if new_id is not None:
        problem = identifier_problem(new_id)
        if problem:
            raise UsageError(f"--job-id {new_id!r}: {problem}")
    if isinstance(job, Job):
        loaded = dataclasses.replace(job, job_id=new_id) if new_id else job
        config.hooks.validate_job(job=loaded, config=config)
        return loaded
    loaded = config.load_job(job)
    # Replaced after the plugins' checks of the file as written: the id is the only change.
    return dataclasses.replace(loaded, job_id=new_id) if new_id else loaded


def estimate_job(job: str | os.PathLike | Job, *, options: Options = Options(), config: Config | None = None,
                 plugins: Sequence[object] = ()) -> Estimate:
    """``--dry-run``: validate and plan the job as ``run`` would, and return
    its :class:`storyloom.estimate.Estimate` (each item's route, tokens and
    cost, expected and worst case, and the rate limits' time floor). Nothing
    is sent, no provider is built, no store is opened or created."""
    job_file = None if isinstance(job, Job) else job
    with _configured(config, options, job_file, plugins) as config:
        loaded = _load(config, job)
        return estimate(config, config.plan(loaded))


async def delete_job(job_id: str, *, options: Options = Options(), config: Config | None = None,
                     store: Store | None = None) -> dict[str, Any]:
    """Remove a stored job and everything of it (``storyloom delete``), so
    that its id can run again; its output files stay where they are.
    Returns ``{"job_id", "state", "items"}`` as it was. A job that a live
    worker is running is refused (pause or cancel it first, or let it end);
    so is an unknown one. Creates no store."""
    async with _opened(store, config, options, create=False, job_id=job_id) as opened:
        row = await opened.get_job(job_id)
        if row is None:
            raise UsageError(f"no job {job_id!r} in {_where(opened)}")
        state, _reason = await shown_state(opened, row)
        live = await held_live(opened, job_id)
        if state == "running" or live:
            raise UsageError(f"job {job_id!r} is running in a live worker; stop it first "
                             f"(`storyloom pause {job_id}` or `storyloom cancel {job_id}`), then delete it")
        counts = await opened.counts(job_id)
        await opened.delete_job(job_id)
    return {"job_id": job_id, "state": state, "items": sum(counts.values())}


async def _unfinished(store: Store, job_id: str) -> None:
    """UsageError unless the store holds the job and it has not ended."""
    row = await store.get_job(job_id)
    if row is None:
        raise UsageError(f"no job {job_id!r}")
    if row.state in ("completed", "failed", "cancelled"):
        raise UsageError(f"job {job_id!r} already ended ({row.state})")


def _only_summary(summaries: list[Summary], job_id: str) -> Summary:
    return next(s for s in summaries if s.job_id == job_id)


async def add_job(store: Store, job: Job) -> None:
    """Store a job and its items as pending (skipped where the file says so)."""
    now = time.time()
    row = JobRow(job_id=job.job_id, job_type=job.job_type, state="pending", definition=job_to_dict(job),
                 created_at=job.created_at.timestamp() if job.created_at else now, updated_at=now)
    items = [
        NewItem(item_id=item.item_id, level=int(item.priority if item.priority is not None else job.priority),
                state="skipped" if item.status == "skipped" else "pending", definition=item_to_dict(item),
                deadline=item.deadline.timestamp() if item.deadline else None,
                job_type=item.job_type, after=item.after, gate=item.gate)
        for item in job.items
    ]
    try:
        await store.add_job(row, items)
    except JobExists:
        existing = await store.get_job(job.job_id)
        state = existing.state if existing else "unknown"
        failed = (await store.counts(job.job_id))["failed"] if existing else 0
        again = f"; {failed} item(s) failed: run them again with `storyloom resume {job.job_id} --retry-failed`" \
            if failed else ""
        raise UsageError(
            f"job {job.job_id!r} already exists (state: {state}); continue it with "
            f"`storyloom resume {job.job_id}`, run it again under another id with --job-id ID, or remove "
            f"the stored one with `storyloom delete {job.job_id}`{again}") from None


@contextmanager
def _configured(config: Config | None, options: Options, job_file: str | os.PathLike | None,
                plugins: Sequence[object], start_dir: str | None = None) -> Iterator[Config]:
    """The caller's config as it is, or a new one configured for this call."""
    if config is not None:
        config.configure()
        yield config
        return
    with make_config(options, job_file=job_file, start_dir=start_dir, extra_plugins=plugins) as config:
        yield config


def _located(config: Config | None, options: Options, plugins: Sequence[object] = ()) -> Config:
    """The caller's config, or one (not configured: no ``loom_configure``) that
    says which store to open: options, environment, the working folder's settings."""
    return config if config is not None else make_config(options, start_dir=".", extra_plugins=plugins)


def _where(store: Store) -> str:
    return getattr(store, "location", None) or "the store"


@asynccontextmanager
async def _opened(store: Store | None, config: Config | None, options: Options = Options(),
                  plugins: Sequence[object] = (), *, create: bool = True,
                  job_id: str | None = None) -> AsyncIterator[Store]:
    """The caller's store as it is, or the store the configuration chooses
    (``config``'s, else one located from ``options``), closed after.

    ``create=False`` opens only an existing store. With ``job_id``, a missing
    store reads as that job missing (``storyloom resume nope``)."""
    if store is not None:
        yield store
        return
    try:
        async with open_store(_located(config, options, plugins), create=create) as opened:
            yield opened
    except StoreNotFound as exc:
        if job_id is None:
            raise
        raise UsageError(f"no job {job_id!r} in {exc.location}") from None
