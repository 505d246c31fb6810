"""Every hook storyloom calls, documented where it is declared.

Hooks are plain, synchronous functions (pluggy has no async support). Anything
asynchronous -- a provider's ``complete``, a sink's ``run`` -- lives in the
objects the hooks register, and the kernel awaits them in its own nursery.

Call hooks with keyword arguments; an implementation may accept fewer arguments
than its spec, so specs can grow. Implementations run last-registered first:
never make behaviour depend on that order. Choose things by name instead, which
is what the ``loom_register_*`` hooks are for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

import pluggy

if TYPE_CHECKING:
    from .contracts import BatchControl, Outcome
    from .contracts import HookConfig as Config
    from .job import Item, Job, Plan
    from .outputs import Output
    from .summary import Summary
    from .artifacts import Artifact
    from .store.protocol import GateRow, Store

hookspec = pluggy.HookspecMarker("storyloom")


# -------------------------------------------------------------------------
# Start-up and shut-down
# -------------------------------------------------------------------------


@hookspec
def loom_configure(config: "Config") -> None:
    """Configure a plugin once everything is loaded.

    Called once per :class:`storyloom.config.Config`, after the bundled,
    entry-point, ``-p`` and ``plugins:`` plugins are registered and the
    settings are read. A plugin may register further plugins here
    (``config.pluginmanager.register``), as pytest's terminal reporter does.

    :param config: the run's configuration: settings, command-line options,
        plugin manager and a ``stash`` dict for plugin state.

    May raise :class:`storyloom.UsageError` to refuse a configuration (exit 2).
    """


@hookspec
def loom_unconfigure(config: "Config") -> None:
    """Undo :func:`loom_configure`: close files, unregister objects.

    Called once, when the config is closed, also after a failed or interrupted run.

    :param config: the same config that was configured.

    Should not raise; an exception is reported and the others still run.
    """


# -------------------------------------------------------------------------
# Registries: things chosen by name in configuration
# -------------------------------------------------------------------------


@hookspec
def loom_register_providers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register model providers, chosen by ``provider:`` under ``models:``.

    Called once when the registries are first needed.

    :param register: ``register(name, factory)``; ``factory`` is a
        :class:`storyloom.provider.ProviderFactory` (normally a subclass of
        :class:`storyloom.provider.BaseProvider`):

        * ``factory(spec)`` takes a :class:`storyloom.settings.ModelSpec` and
          returns a :class:`storyloom.provider.Provider` (``complete``,
          ``aclose``, ``refunds_unused_tokens``, ``bind_rate_limits``). It is
          called once per model per worker; the kernel then checks the
          provider's members, hands it the model's rate-limit feedback and
          refunds unused tokens if it says its vendor does.
        * ``factory.default_price(model_id)`` returns the provider's list
          :class:`storyloom.settings.Price` for a model id, or None. It is
          called when the settings are loaded, before any provider is built,
          for each model entry without ``price:`` (None: the model is free).
        * optionally ``factory.check_spec(spec)`` checks the entry's options
          when a job is loaded (raise :func:`storyloom.provider.spec_error`),
          and ``factory.required_env(spec)`` names the environment variables
          (the API key's) the models a job would use need set; both are
          asked before anything is stored.

    Registering a name another plugin already registered raises
    :class:`storyloom.UsageError` naming both plugins. A factory (or the
    provider it builds) that lacks a member raises a UsageError naming the
    provider when a model uses it.
    """


@hookspec
def loom_register_job_types(register: Callable[[Any], None]) -> None:
    """Register job types, chosen by a job's ``job_type:``.

    Called once when the registries are first needed.

    :param register: ``register(job_type)``, where ``job_type`` follows
        :class:`storyloom.jobtype.JobType` (its ``name`` is the key).

    Duplicate names raise :class:`storyloom.UsageError`.
    """


@hookspec
def loom_register_strategies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register routing strategies, chosen by ``routing: {strategy: NAME}``.

    Called once when the registries are first needed.

    :param register: ``register(name, factory)``; ``factory(options, plan)``
        receives the ``routing:`` mapping and the :class:`storyloom.job.Plan`,
        and returns a :class:`storyloom.routing.Strategy`. It may raise
        :class:`storyloom.UsageError` for bad options.

    Duplicate names raise :class:`storyloom.UsageError`.
    """


@hookspec
def loom_register_retry_policies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register retry policies, chosen by ``retry_config: {policy: NAME}``.

    Called once when the registries are first needed.

    :param register: ``register(name, factory)``; ``factory(retry_config)``
        returns a :class:`storyloom.retry.RetryPolicy`.

    Duplicate names raise :class:`storyloom.UsageError`.
    """


@hookspec
def loom_register_sinks(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register progress sinks, chosen by ``progress: [NAME, ...]``.

    Called once when the registries are first needed.

    :param register: ``register(name, factory)``; ``factory(config, plan)``
        returns a :class:`storyloom.events.Sink`, or None to sit this batch
        out (a terminal view when ``--quiet`` is given, say). It runs when
        the job run is built, before ``run`` stores the job, and may raise
        :class:`storyloom.UsageError` for bad options (``work`` then pauses
        that job only); open files or sockets in the sink's ``run``, not here.

    Duplicate names raise :class:`storyloom.UsageError`.
    """


@hookspec
def loom_register_renderers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register report renderers, chosen by ``reports: [NAME, ...]``.

    Called once when the registries are first needed.

    :param register: ``register(name, renderer)``; ``renderer(report)`` takes
        the report mapping (see ``storyloom.report.build_report``) and returns
        ``(file_name, text)``. A renderer that raises costs only its own
        report: a line on stderr, and the run, ``outputs`` and ``resume`` go on.

    Duplicate names raise :class:`storyloom.UsageError`.
    """


@hookspec
def loom_register_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register store backends, chosen by the scheme of the store URL.

    The store URL comes from ``--store``, else ``$STORYLOOM_STORE``, else
    ``store:`` in ``storyloom.yaml``, else ``sqlite`` (the bundled SQLite
    backend in the state folder). Called once when the registries are first
    needed.

    :param register: ``register(scheme, opener)``; ``await opener(url, *,
        state_dir, settings, create)`` returns an open
        :class:`storyloom.store.Store` (see
        :class:`storyloom.store.StoreOpener`). ``url`` is the whole URL (or
        the bare scheme, meaning the backend's default place); with
        ``create=False`` the opener raises
        :class:`storyloom.store.StoreNotFound` instead of creating a store.
        Storage that cannot be used is a
        :class:`storyloom.store.StoreUnavailable`, from the opener and from
        every store method. Schemes are matched in lower case.

    Duplicate schemes raise :class:`storyloom.UsageError`.
    """


# -------------------------------------------------------------------------
# Loading jobs
# -------------------------------------------------------------------------


@hookspec
def loom_validate_job(job: "Job", config: "Config") -> None:
    """Check a job beyond its schema.

    Called by ``storyloom validate`` and before a job is stored, after the
    schema and the kernel's own checks (known job type, models, strategy) passed.

    :param job: the loaded job.
    :param config: the run's configuration.

    Raise :class:`storyloom.ConfigError` (or :class:`storyloom.UsageError`) to
    reject the job; nothing has been written yet.
    """


# -------------------------------------------------------------------------
# Running a batch
# -------------------------------------------------------------------------


@hookspec
def loom_batch_started(job: "Job", plan: "Plan", control: "BatchControl") -> None:
    """A batch begins: the job is stored and dispatch is about to start.

    Called once per run or resume, on the kernel's trio thread.

    :param job: the job.
    :param plan: its resolved limits, models and retry settings.
    :param control: a handle to pause the batch (``control.pause(reason)``)
        or send ``notify`` / ``escalate`` events; keep it for later hooks.

    Must be quick and must not block. An exception is reported on stderr and
    does not stop the batch.
    """


@hookspec
def loom_item_started(job: "Job", item: "Item", attempt: int, model: str) -> None:
    """An attempt at an item starts.

    Called on the kernel's trio thread just before the provider is called.

    :param job: the job.
    :param item: the item.
    :param attempt: 1 for the first attempt, 2 for the first retry, ...
    :param model: the model name the router chose.

    Must be quick; an exception is reported and does not stop the batch.
    """


@hookspec
def loom_item_finished(job: "Job", item: "Item", outcome: "Outcome") -> None:
    """An attempt ended and its outcome is committed to the store.

    Called after the commit, so a plugin may rely on the store already
    showing the item's new state. ``outcome.state`` is ``completed``,
    ``failed`` (terminal) or ``retrying`` (the item went back to pending).
    The seed's ``on_item_complete``: chain a next step from here.

    :param job: the job.
    :param item: the item.
    :param outcome: state, attempt, model, error kind and message, tokens,
        cost, elapsed time and the result.

    Must be quick; an exception is reported and does not stop the batch.
    """


@hookspec
def loom_batch_finished(job: "Job", summary: "Summary", store: "Store") -> None:
    """The batch ended: completed, failed, paused, cancelled or interrupted.

    Called once per run of the job, after the last item's outcome is
    committed and the sinks are closed, in the worker that ended it. The seed's ``on_batch_complete``: write reports,
    notify, clean up.

    :param job: the job.
    :param summary: counts by state, cost, duration and ``summary.status``
        (``completed``, ``failed``, ``paused``, ``cancelled`` or ``interrupted``).
    :param store: the job's :class:`storyloom.store.Store`, still open. Its
        methods are async, so read it from the returned callable.
    :returns: None, or an async callable taking no arguments (work that needs
        the store, such as ``await storyloom.report.build_report(store, job,
        summary)``); the kernel awaits each one before the run returns.

    An exception, here or in the returned callable, is reported and does not
    change the exit code.
    """


# -------------------------------------------------------------------------
# Outputs: a projection of the store
# -------------------------------------------------------------------------


@hookspec
def loom_job_outputs(job: "Job", store: "Store",
                     config: "Config") -> "Callable[[], Awaitable[Iterable[Output]]] | None":
    """Say which files of a job's output folder a plugin owns, computed from the store alone.

    Called by ``storyloom outputs JOB_ID [--rebuild]`` and by ``resume``
    (which rebuilds what is missing or partial before it continues), for
    every stored job type: return None for jobs that are not yours. The
    kernel compares the outputs with the files in ``<out_dir>/<job_id>/``
    and writes them atomically; a plugin that also writes them during a run
    should build them the same way, so that a rebuild is byte-identical
    (write with :func:`storyloom.outputs.write_output`, which records a
    failed write for the run's exit code 6 instead of raising).

    :param job: the stored job.
    :param store: the job's :class:`storyloom.store.Store`, open; read it
        from the returned callable.
    :param config: the configuration: ``config.out_dir`` and the settings.
    :returns: None, or an async callable taking no arguments that returns
        :class:`storyloom.outputs.Output` objects (``name`` relative to the
        job's output folder, ``text``: a str written as UTF-8 or bytes for a
        binary file such as an EPUB, and ``exact=False`` for a file that
        is rendered anew each time and so is only checked to exist).

    An exception here or in the callable propagates: the command fails
    rather than report a partial projection as complete.
    """


# -------------------------------------------------------------------------
# Book projects: what `storyloom book` shows and `storyloom approve` does
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def loom_project_view(project_id: str, project: "dict[str, Any] | None", artifacts: "list[Artifact]",
                      gates: "list[GateRow]", config: "Config") -> "dict[str, Any] | None":
    """Describe a project for ``storyloom book PROJECT_ID`` (the first non-None answer wins).

    Called once per ``storyloom book`` (:func:`storyloom.api.book`), after
    the project file and the store are read. An exception propagates: the
    command fails.

    :param project_id: the project asked for.
    :param project: its project file as loaded (``config.project``), or None.
    :param artifacts: every stored version of its artifacts, oldest first.
    :param gates: every gate of the store (:meth:`storyloom.store.Store.gates`).
    :param config: the configuration.
    :returns: a JSON-able mapping (``--json`` prints it) with a ``text`` entry:
        the lines the command prints (data from models and files: the command
        prints it as text, never interprets it). None: not a project of yours.
    """


@hookspec(firstresult=True)
def loom_approve(project_id: str, target: "tuple[str, ...]", store: "Store",
                 config: "Config") -> "Callable[[], Awaitable[str]] | None":
    """Approve something of a project (``storyloom approve PROJECT_ID outline|chapter N``).

    Called once per ``storyloom approve`` (:func:`storyloom.api.approve`),
    with the store open.

    :param project_id: the project named on the command line.
    :param target: what to approve, as written: ``("outline",)``, ``("chapter", "3")``.
    :param store: the open store; change it from the returned callable.
    :param config: the configuration.
    :returns: None if the target is not yours, else an async callable that
        does the approval and returns one line saying what it did. Raise
        :class:`storyloom.UsageError` for a target that cannot be approved
        (exit 2, nothing changed).
    """
