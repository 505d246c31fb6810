"""Running jobs from Python: ``await run_job(...)`` inside trio,
``run_job_sync(...)`` outside it."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator, Sequence

import trio

from .config import Config, Options, make_config
from .errors import UsageError
from .job import Job, item_to_dict, job_from_dict, job_to_dict
from .kernel import Worker
from .summary import Summary
from .store import JobExists, JobRow, NewItem, Store
from .store.sqlite import SQLiteStore


async def run_job(
    job: str | os.PathLike | Job,
    *,
    options: Options = Options(),
    config: Config | None = None,
    store: Store | None = None,
    plugins: Sequence[object] = (),
    handle_signals: bool = False,
) -> Summary:
    """Validate, store and run a job to its end; return its :class:`Summary`.

    ``job`` is a job file's path or a loaded :class:`storyloom.job.Job`.
    Bad input raises :class:`storyloom.UsageError` (a ConfigError for a bad
    file) before anything is written. Cancelling the surrounding scope stops
    the batch cleanly: running items go back to pending, and
    :func:`resume_job` continues. ``plugins`` are plugin objects to register
    for this run; ``store`` defaults to SQLite in the state folder.
    """
    job_file = None if isinstance(job, Job) else job
    with _configured(config, options, job_file, plugins) as config:
        loaded = _load(config, job)
        worker = Worker(config, only=config.plan(loaded), handle_signals=handle_signals)
        async with _opened(store, config) as store:
            await add_job(store, loaded)
            return _only_summary(await worker.run(store), loaded.job_id)


async def resume_job(
    job_id: str,
    *,
    options: Options = Options(),
    config: Config | None = None,
    store: Store | None = None,
    plugins: Sequence[object] = (),
    handle_signals: bool = False,
) -> Summary:
    """Continue a stored job: paused, interrupted, or left by a killed process.

    The job goes back into the queue, and this call works on it until it
    ends. Items left running by a dead process go back to pending; completed
    items never run again. Settings are found from the job file's folder if
    it still exists, else from the working folder.
    """
    loaded = await requeue_job(job_id, options=options, config=config, store=store)
    source = Path(loaded.source) if loaded.source and Path(loaded.source).exists() else None
    if config is None:
        config = make_config(options, job_file=source, start_dir=".", extra_plugins=plugins)
    with _configured(config, options, None, ()) as config:
        worker = Worker(config, only=config.plan(loaded), handle_signals=handle_signals)
        async with _opened(store, config) as store:
            return _only_summary(await worker.run(store), job_id)


async def requeue_job(job_id: str, *, options: Options = Options(), config: Config | None = None,
                      store: Store | None = None) -> Job:
    """Put a paused or interrupted job back in the queue for a worker to take
    (``storyloom resume --detach``); ``options.budget_usd`` raises its budget
    for good. Returns the job. A cancelled or finished job is a UsageError."""
    async with _opened(store, config, options) as opened:
        row = await opened.get_job(job_id)
        if row is None:
            raise UsageError(f"no job {job_id!r} in {options.state_path() if store is None else 'the store'}")
        if row.state == "cancelled":
            raise UsageError(f"job {job_id!r} was cancelled; submit it again under a new job_id")
        loaded = job_from_dict(row.definition)
        if options.budget_usd is not None:  # raising the budget outlives this resume
            loaded = dataclasses.replace(loaded, budget_usd=options.budget_usd)
            await opened.set_job_definition(job_id, job_to_dict(loaded))
        if row.state in ("paused", "interrupted"):
            await opened.set_job_state(job_id, "pending", None)
    return loaded


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


async def work(
    *,
    burst: bool = False,
    options: Options = Options(),
    config: Config | None = None,
    store: Store | None = None,
    plugins: Sequence[object] = (),
    handle_signals: bool = False,
    progress: tuple[str, ...] | None = None,
) -> list[Summary]:
    """Work through the queue of every submitted job, by level, until it is
    empty (``burst``) or forever; return the summaries of the job runs that
    ended. Cancelling the surrounding scope stops cleanly."""
    with _configured(config, options, None, plugins, start_dir=".") as config:
        worker = Worker(config, burst=burst, handle_signals=handle_signals, progress=progress)
        async with _opened(store, config) as store:
            return await worker.run(store)


async def cancel_job(job_id: str, reason: str = "cancelled by an operator", *, store: Store) -> int:
    """Cancel a job: its pending and running items are skipped with ``reason``
    (a worker running them stops them within a second). Returns how many."""
    await _unfinished(store, job_id)
    return await store.cancel(job_id, reason)


async def pause_job(job_id: str, reason: str = "paused by an operator", *, store: Store) -> None:
    """Hold a job: no worker takes its items; running ones finish. ``resume`` continues it."""
    await _unfinished(store, job_id)
    await store.set_job_state(job_id, "paused", reason)


def run_job_sync(job: str | os.PathLike | Job, **kwargs) -> Summary:
    """:func:`run_job` for code that is not already inside trio."""
    return trio.run(functools.partial(run_job, job, **kwargs))


def resume_job_sync(job_id: str, **kwargs) -> Summary:
    """:func:`resume_job` for code that is not already inside trio."""
    return trio.run(functools.partial(resume_job, job_id, **kwargs))


def _load(config: Config, job: str | os.PathLike | Job) -> Job:
    """A job file loaded and validated, or a loaded Job validated by plugins."""
    if isinstance(job, Job):
        config.hooks.validate_job(job=job, config=config)
        return job
    return config.load_job(job)


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
                deadline=item.deadline.timestamp() if item.deadline else None)
        for item in job.items
    ]
    try:
        await store.add_job(row, items)
    except JobExists:
        existing = await store.get_job(job.job_id)
        state = existing.state if existing else "unknown"
        raise UsageError(
            f"job {job.job_id!r} already exists (state: {state}); continue it with "
            f"`storyloom resume {job.job_id}`, or give the job a new job_id") from None


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


@asynccontextmanager
async def _opened(store: Store | None, config: Config | None, options: Options | None = None) -> AsyncIterator[Store]:
    """The caller's store as it is, or the SQLite store in the state folder, closed after."""
    if store is not None:
        yield store
        return
    if config is not None:
        own = SQLiteStore.open(config.state_dir, config.settings.synchronous)
    else:
        own = SQLiteStore.open((options or Options()).state_path())
    try:
        yield own
    finally:
        await own.aclose()
