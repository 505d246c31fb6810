"""A pytest plugin for testing job files and plugins (like pytest's pytester).

Installed with storyloom (entry point ``pytest11``), so a studio's own test
suite can do::

    def test_my_job(loom):
        loom.write("storyloom.yaml", SETTINGS)
        result = loom.run(JOB_YAML)
        result.assert_outcomes(completed=12)

Everything lives under the test's ``tmp_path``; nothing reaches the network.
"""

from __future__ import annotations

import textwrap
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import trio

from .. import hookimpl
from ..api import job_outputs, resume_job, run_job, submit_job, work
from ..config import Options, make_config
from ..summary import Summary
from ..store import Store, StoreNotFound, open_store


class HookRecorder:
    """A plugin that records every batch hook call: ``calls[name] -> [kwargs]``."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {}

    def _record(self, name: str, **kwargs: Any) -> None:
        self.calls.setdefault(name, []).append(kwargs)

    @hookimpl
    def loom_batch_started(self, job, plan, control):
        self._record("loom_batch_started", job=job, plan=plan, control=control)

    @hookimpl
    def loom_item_started(self, job, item, attempt, model):
        self._record("loom_item_started", job=job, item=item, attempt=attempt, model=model)

    @hookimpl
    def loom_item_finished(self, job, item, outcome):
        self._record("loom_item_finished", job=job, item=item, outcome=outcome)

    @hookimpl
    def loom_batch_finished(self, job, summary, store):
        self._record("loom_batch_finished", job=job, summary=summary, store=store)


@dataclass
class RunResult:
    summary: Summary
    recorder: HookRecorder
    items: dict[str, Any] = field(default_factory=dict)  # item_id -> storyloom.store.ItemRow

    @property
    def counts(self) -> dict[str, int]:
        return self.summary.counts

    def assert_outcomes(self, **expected: int) -> None:
        """``assert_outcomes(completed=3, failed=1)``: states not named must be 0."""
        wanted = {state: expected.get(state, 0) for state in self.summary.counts}
        assert self.summary.counts == wanted, f"counts {self.summary.counts} != expected {wanted}"


@dataclass
class WorkResult:
    #: job_id -> how its run ended, for every job the worker finished.
    summaries: dict[str, Summary]
    recorder: HookRecorder


class Loom:
    def __init__(self, path: Path, store_url: str | None = None) -> None:
        self.path = path
        self.state_dir = path / ".storyloom"
        self.out_dir = path / "storyloom-out"
        #: The store every run, read and command of this folder uses (``--store``):
        #: None is the default, SQLite in :attr:`state_dir`. Set it to run the same
        #: test on another backend (``loom.store_url = "postgresql://..."``).
        self.store_url = store_url

    def write(self, name: str, text: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text), encoding="utf-8")
        return target

    def options(self, **overrides: Any) -> Options:
        base: dict[str, Any] = dict(state_dir=str(self.state_dir), out_dir=str(self.out_dir), quiet=True,
                                    autoload=False)
        if self.store_url is not None:
            base["store"] = self.store_url
        base.update(overrides)
        return Options(**base)

    def run(self, job_yaml: str, *, name: str = "job.yaml", plugins: tuple = (), **overrides: Any) -> RunResult:
        """Write ``job_yaml`` to a file and run it to its end in-process."""
        path = self.write(name, job_yaml)
        recorder = HookRecorder()
        summary = trio.run(lambda: run_job(path, options=self.options(**overrides), plugins=(recorder, *plugins)))
        return RunResult(summary, recorder, self.items(summary.job_id))

    def resume(self, job_id: str, *, plugins: tuple = (), **overrides: Any) -> RunResult:
        recorder = HookRecorder()
        summary = trio.run(lambda: resume_job(job_id, options=self.options(**overrides),
                                              plugins=(recorder, *plugins)))
        return RunResult(summary, recorder, self.items(job_id))

    def outputs(self, job_id: str, *, rebuild: bool = False, plugins: tuple = (), **overrides: Any) -> dict[str, str]:
        """``storyloom outputs JOB_ID [--rebuild]``: each output's file name -> its state
        (present, missing, partial; rebuilt or failed after ``rebuild``)."""
        data = trio.run(lambda: job_outputs(job_id, rebuild=rebuild, options=self.options(**overrides),
                                            plugins=plugins))
        return {output["name"]: output["state"] for output in data["outputs"]}

    def submit(self, job_yaml: str, *, name: str = "job.yaml", plugins: tuple = (), **overrides: Any) -> str:
        """Write ``job_yaml`` to a file and queue it (``storyloom submit``); returns the job_id."""
        path = self.write(name, job_yaml)
        job = trio.run(lambda: submit_job(path, options=self.options(**overrides), plugins=plugins))
        return job.job_id

    def work(self, *, plugins: tuple = (), **overrides: Any) -> "WorkResult":
        """Work through the whole queue until it is empty (``storyloom work --burst``),
        with this folder's ``storyloom.yaml``."""
        if (self.path / "storyloom.yaml").exists():
            overrides.setdefault("settings_file", str(self.path / "storyloom.yaml"))
        recorder = HookRecorder()
        summaries = trio.run(lambda: work(burst=True, options=self.options(**overrides),
                                          plugins=(recorder, *plugins)))
        return WorkResult({s.job_id: s for s in summaries}, recorder)

    @asynccontextmanager
    async def store(self, *, create: bool = False, **overrides: Any) -> AsyncIterator[Store]:
        """The store this folder's runs use, opened as ``storyloom status`` would
        (through ``storyloom.store.open_store``: ``--store``, ``$STORYLOOM_STORE``,
        ``store:``, else SQLite in :attr:`state_dir`), closed after. Use it
        from inside trio, also next to a running worker: it is a connection of
        its own, as another process would have. ``create=False`` (the
        default): a missing store is a ``StoreNotFound``."""
        config = make_config(self.options(**overrides), start_dir=self.path)  # not configured: only locates
        async with open_store(config, create=create) as store:
            yield store

    def read(self, action: Callable[[Store], Awaitable[Any]], **overrides: Any) -> Any:
        """``await action(store)`` on :meth:`store`, from outside trio:
        ``loom.read(lambda store: store.costs("job-1"))``."""
        async def main() -> Any:
            async with self.store(**overrides) as store:
                return await action(store)

        return trio.run(main)

    def stored_jobs(self) -> list[str]:
        """The ids of every stored job; [] when there is no store yet."""
        try:
            return self.read(lambda store: _job_ids(store))
        except StoreNotFound:
            return []

    def items(self, job_id: str) -> dict[str, Any]:
        async def read(store: Store) -> dict[str, Any]:
            return {row.item_id: row for row in await store.items(job_id)}

        return self.read(read)


async def _job_ids(store: Store) -> list[str]:
    return [row.job_id for row in await store.list_jobs()]


@pytest.fixture
def loom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loom:
    """A scratch studio folder: write settings and jobs, run them, read the store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STORYLOOM_HOME", raising=False)
    monkeypatch.delenv("STORYLOOM_STORE", raising=False)
    return Loom(tmp_path)
