"""A pytest plugin for testing job files and plugins (like pytest's pytester).

Installed with storyloom (entry point ``pytest11``), so a studio's own test
suite can do::

    def test_my_job(loom):
        loom.write("storyloom.yaml", SETTINGS)
        result = loom.run(JOB_YAML)
        result.assert_outcomes(completed=12)

Everything lives under the test's ``tmp_path``; nothing reaches the network.
A :class:`Loom` runs with the bundled plugins only unless ``loom.autoload =
True``; ``loom.store_url`` picks the store, ``loom.clock`` the trio clock
(``MockClock(autojump_threshold=0)``: retry delays and latency take no real
time). Under hypothesis's ``@given``, take a fresh folder per example from
the session-wide ``loom_factory`` fixture (``with loom_factory() as loom:``),
or from :func:`fresh_loom` outside pytest. Hypothesis strategies for job,
settings, project and Batch API documents: :mod:`storyloom.testing.strategies`.
See docs/testing.md.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import trio

from .. import hookimpl
from ..api import delete_job, job_outputs, resume_job, run_job, submit_job, validate_job, work
from ..config import Options, make_config
from ..job import Job
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
    """A scratch studio folder: write settings and jobs, run them in-process, read the store.

    Three attributes change how every run, read and command of the folder goes:

    - :attr:`autoload`: False (the default) runs with the bundled plugins and
      those a test passes (``plugins=``) or the files name (``plugins:``);
      True also loads the installed plugins (entry point group
      ``storyloom``), as the ``storyloom`` command does.
    - :attr:`store_url`: None (the default) is SQLite in :attr:`state_dir`;
      a URL (``postgresql://...``) runs the test against that store.
    - :attr:`clock`: None (the default) is trio's real clock; a
      ``trio.testing.MockClock(autojump_threshold=0)`` makes latency, retry
      delays and rate-limit waits pass as soon as nothing else can run.
    """

    def __init__(self, path: Path, store_url: str | None = None, *, autoload: bool = False,
                 clock: trio.abc.Clock | None = None) -> None:
        self.path = path
        self.state_dir = path / ".storyloom"
        self.out_dir = path / "storyloom-out"
        #: The store every run, read and command of this folder uses (``--store``):
        #: None is the default, SQLite in :attr:`state_dir`. Set it to run the same
        #: test on another backend (``loom.store_url = "postgresql://..."``).
        self.store_url = store_url
        #: Load installed plugins (entry points) too, as the CLI does.
        self.autoload = autoload
        #: The trio clock every run uses (None: the real one).
        self.clock = clock

    def _trio(self, action: Callable[[], Awaitable[Any]]) -> Any:
        return trio.run(action, clock=self.clock)

    def write(self, name: str, text: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text), encoding="utf-8")
        return target

    def options(self, **overrides: Any) -> Options:
        base: dict[str, Any] = dict(state_dir=str(self.state_dir), out_dir=str(self.out_dir), quiet=True,
                                    autoload=self.autoload)
        if self.store_url is not None:
            base["store"] = self.store_url
        base.update(overrides)
        return Options(**base)

    def run(self, job_yaml: str, *, name: str = "job.yaml", plugins: tuple = (), **overrides: Any) -> RunResult:
        """Write ``job_yaml`` to a file and run it to its end in-process."""
        path = self.write(name, job_yaml)
        recorder = HookRecorder()
        summary = self._trio(lambda: run_job(path, options=self.options(**overrides), plugins=(recorder, *plugins)))
        return RunResult(summary, recorder, self.items(summary.job_id))

    def resume(self, job_id: str, *, plugins: tuple = (), **overrides: Any) -> RunResult:
        recorder = HookRecorder()
        summary = self._trio(lambda: resume_job(job_id, options=self.options(**overrides),
                                              plugins=(recorder, *plugins)))
        return RunResult(summary, recorder, self.items(job_id))

    def outputs(self, job_id: str, *, rebuild: bool = False, plugins: tuple = (), **overrides: Any) -> dict[str, str]:
        """``storyloom outputs JOB_ID [--rebuild]``: each output's file name -> its state
        (present, missing, partial; rebuilt or failed after ``rebuild``)."""
        data = self._trio(lambda: job_outputs(job_id, rebuild=rebuild, options=self.options(**overrides),
                                            plugins=plugins))
        return {output["name"]: output["state"] for output in data["outputs"]}

    def validate(self, job_yaml: str, *, name: str = "job.yaml", plugins: tuple = (), **overrides: Any) -> Job:
        """Write ``job_yaml`` to a file and check it as ``storyloom validate`` does
        (schema, settings, plugins, routing); returns the loaded job, or raises
        ``storyloom.ConfigError`` saying where and what (``UsageError`` for what
        only the plan shows: a budget no item fits in, a strategy's options).
        Nothing is stored."""
        path = self.write(name, job_yaml)
        return validate_job(path, options=self.options(**overrides), plugins=plugins)

    def submit(self, job_yaml: str, *, name: str = "job.yaml", plugins: tuple = (), **overrides: Any) -> str:
        """Write ``job_yaml`` to a file and queue it (``storyloom submit``); returns the job_id."""
        path = self.write(name, job_yaml)
        job = self._trio(lambda: submit_job(path, options=self.options(**overrides), plugins=plugins))
        return job.job_id

    def work(self, *, plugins: tuple = (), **overrides: Any) -> "WorkResult":
        """Work through the whole queue until it is empty (``storyloom work --burst``),
        with this folder's ``storyloom.yaml``."""
        if (self.path / "storyloom.yaml").exists():
            overrides.setdefault("settings_file", str(self.path / "storyloom.yaml"))
        recorder = HookRecorder()
        summaries = self._trio(lambda: work(burst=True, options=self.options(**overrides),
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

        return self._trio(main)

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


_CLEARED_ENV = ("STORYLOOM_HOME", "STORYLOOM_STORE")


@contextmanager
def fresh_loom(base: str | os.PathLike | None = None, *, store_url: str | None = None, autoload: bool = False,
               clock: trio.abc.Clock | None = None) -> Iterator[Loom]:
    """A :class:`Loom` in a new empty folder (under ``base``, else the system's
    temporary folder), the working folder while it is open, with
    ``$STORYLOOM_HOME`` and ``$STORYLOOM_STORE`` unset; all three are put back
    after. A context manager rather than a fixture, so that each example of a
    hypothesis ``@given`` test gets its own. With ``store_url``, the jobs it
    stored there are deleted on the way out: examples sharing one store
    (a studio's PostgreSQL) start alike."""
    folder = Path(tempfile.mkdtemp(prefix="loom-", dir=base))
    before, saved = os.getcwd(), {name: os.environ.pop(name, None) for name in _CLEARED_ENV}
    loom = Loom(folder, store_url, autoload=autoload, clock=clock)
    existing = set(loom.stored_jobs()) if store_url is not None else set()
    os.chdir(folder)
    try:
        yield loom
    finally:
        try:
            if store_url is not None:
                for job_id in set(loom.stored_jobs()) - existing:
                    loom._trio(lambda: delete_job(job_id, options=loom.options()))
        finally:
            os.chdir(before)
            for name, value in saved.items():
                if value is not None:
                    os.environ[name] = value


@pytest.fixture
def loom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loom:
    """A scratch studio folder: write settings and jobs, run them, read the store
    (see :class:`Loom`). One per test: under ``@given`` use ``loom_factory``."""
    monkeypatch.chdir(tmp_path)
    for name in _CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    return Loom(tmp_path)


@pytest.fixture(scope="session")
def loom_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """Fresh looms on demand, for hypothesis: ``with loom_factory() as loom:``
    inside a ``@given`` test gives each example its own empty folder (see
    :func:`fresh_loom` for the keyword arguments: ``store_url``,
    ``autoload``, ``clock``). Session-scoped, so hypothesis's
    function-scoped-fixture health check has nothing to object to."""
    base = tmp_path_factory.mktemp("looms")

    def factory(**kwargs: Any) -> Any:
        return fresh_loom(base, **kwargs)

    return factory
