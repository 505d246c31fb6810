"""A run's configuration: plugins, settings, command-line options, registries.

``Config`` is what hooks receive as ``config``. Build one with
:func:`make_config`; close it with :meth:`Config.close` (or use it as a
context manager) so ``loom_unconfigure`` runs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import pluggy

from . import loader
from .budget import check_budget
from .chosen import lookup
from .errors import UsageError
from .hooks import Hooks
from .job import Job, Plan, Stage
from .pluginmanager import check, import_plugin, make_plugin_manager
from .projects import find_projects_dir, load_project, project_path
from .provider import check_factory, check_spec, missing_env
from .registry import Registries, collect
from .settings import BUILTIN_MODELS, Price, Settings
from .settingsfile import SETTINGS_FILE
from .store.opening import DEFAULT_STORE, STORE_ENV


@dataclass(frozen=True)
class Options:
    """Command-line flags (or ``run_job`` keyword arguments). None = not given;
    these override the job, which overrides the settings."""

    plugins: tuple[str, ...] = ()
    #: A store URL (``--store``); see :attr:`Config.store_url`.
    store: str | None = None
    state_dir: str | None = None
    out_dir: str | None = None
    settings_file: str | None = None
    max_parallel: int | None = None
    timeout_per_item: float | None = None
    max_retries: int | None = None
    models: tuple[str, ...] | None = None
    budget_usd: float | None = None
    grace_period: float | None = None
    progress: tuple[str, ...] | None = None
    quiet: bool = False
    autoload: bool | None = None
    #: Run or submit the job under this id instead of its file's (``--job-id``).
    job_id: str | None = None

    def state_path(self) -> Path:
        """``--state-dir``, else ``$STORYLOOM_HOME``, else the state folder found
        walking up from the working folder (:func:`find_state_dir`)."""
        given = self.state_dir or os.environ.get("STORYLOOM_HOME")
        return Path(given) if given else find_state_dir(Path.cwd())

    def out_path(self) -> Path:
        """``--out-dir``, else ``storyloom-out`` beside the state folder found
        walking up (the studio's folder), else in the working folder."""
        if self.out_dir:
            return Path(self.out_dir)
        if self.state_dir or os.environ.get("STORYLOOM_HOME"):
            return Path(OUT_DIR_NAME)
        return find_state_dir(Path.cwd()).parent / OUT_DIR_NAME


#: The state folder's name, beside a studio's ``storyloom.yaml``; outputs go beside it.
STATE_DIR_NAME = ".storyloom"
OUT_DIR_NAME = "storyloom-out"


def find_state_dir(start: Path) -> Path:
    """The state folder for commands run in ``start``, found as the settings
    are: the ``.storyloom`` beside the nearest ``storyloom.yaml`` in
    ``start`` or a parent (it need not exist yet); with none, ``./.storyloom``.

    So ``status`` in a studio's ``jobs/`` folder reads the studio's store,
    and a store never ends up inside a subfolder of the studio. A
    ``.storyloom`` folder alone marks nothing: a stray one in ``/tmp`` or
    the home folder must not capture every command run below it. Relative
    (``.storyloom``) when it is the working folder's own."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / SETTINGS_FILE).is_file():
            return Path(STATE_DIR_NAME) if folder == start else folder / STATE_DIR_NAME
    return Path(STATE_DIR_NAME)


@dataclass
class Config:
    pluginmanager: pluggy.PluginManager
    settings: Settings
    options: Options
    registries: Registries
    #: Plugin state, keyed by a name the plugin owns (pytest's stash, simply).
    stash: dict[str, Any] = field(default_factory=dict)
    _configured: bool = False
    _registered: list[object] = field(default_factory=list)
    #: project_id -> its loaded project file (None: no such file); see :meth:`project`.
    _projects: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        """``pluginmanager.hook``, for plugins; the kernel calls :attr:`hooks`."""
        return self.pluginmanager.hook

    @cached_property
    def hooks(self) -> Hooks:
        """The hooks the kernel calls, with checked signatures."""
        return Hooks(self.pluginmanager)

    @cached_property
    def state_dir(self) -> Path:
        # Found once per config: outputs are written per item, and the walk up stats folders.
        return self.options.state_path()

    @property
    def store_url(self) -> str:
        """``--store``, else ``$STORYLOOM_STORE``, else ``store:`` in the settings,
        else ``sqlite`` (the SQLite store in :attr:`state_dir`). An empty
        ``$STORYLOOM_STORE`` counts as unset; an empty ``--store`` is an error."""
        if self.options.store is not None:
            return self.options.store
        return os.environ.get(STORE_ENV) or self.settings.store or DEFAULT_STORE

    @cached_property
    def out_dir(self) -> Path:
        return self.options.out_path()

    @property
    def grace_period(self) -> float:
        return self.options.grace_period if self.options.grace_period is not None else self.settings.grace_period

    def known_names(self) -> loader.KnownNames:
        r = self.registries
        return loader.KnownNames(
            job_types=dict(r.job_types),  # the objects: their item schemas and expansion
            providers=set(r.providers),
            strategies=set(r.strategies),
            retry_policies=set(r.retry_policies),
            sinks=set(r.sinks),
            renderers=set(r.renderers),
        )

    def load_job(self, path: str | os.PathLike, now: datetime | None = None) -> Job:
        """Load and fully validate a job file, including plugin checks."""
        doc = loader.parse_document(Path(path))
        job = loader.load_job_document(doc, self.settings, self.known_names(), now=now)
        self.check_model_options()
        for project_id in dict.fromkeys(item.project_id for item in job.items if item.project_id):
            self.project(project_id)  # a bad project file is bad input, found before anything is stored
        self.hooks.validate_job(job=job, config=self)
        return job

    @property
    def projects_dir(self) -> Path:
        """``projects/`` beside the settings file (else in the working folder)."""
        return find_projects_dir(Path(self.settings.path).parent if self.settings.path else None)

    def project(self, project_id: str) -> dict[str, Any] | None:
        """The book project ``project_id`` (``projects/<project_id>.yaml``,
        validated by ``schemas/project.schema.json``), or None if there is no
        such file. Loaded once per config.

        :raises ConfigError: the file is malformed or invalid, at its file:line:col.
        """
        if project_id not in self._projects:
            path = project_path(self.projects_dir, project_id)
            self._projects[project_id] = load_project(_shown(path)) if path is not None and path.exists() else None
        return self._projects[project_id]

    def check_model_options(self) -> None:
        """Every model entry's provider options, checked by its provider
        (``check_spec``) without building it: a settings error names the file,
        line and column before anything is stored."""
        for spec in self.settings.models.values():
            factory = self.registries.providers.get(spec.provider)
            if factory is not None:
                check_spec(factory, spec)

    def check_model_env(self, models: Sequence[str]) -> None:
        """Raise a ConfigError for the first of ``models`` whose provider needs
        an environment variable (its API key) that is unset or empty."""
        for name in dict.fromkeys(models):
            spec = self.settings.models[name]
            factory = self.registries.providers.get(spec.provider)
            problem = missing_env(factory, spec) if factory is not None else None
            if problem is not None:
                raise problem

    def plan(self, job: Job) -> Plan:
        """Resolve limits: command line, then job, then settings, then the job
        type; and the same for each later stage of a pipeline (``then:``),
        whose own models, routing and config come before the job's."""
        if self.options.budget_usd is not None:
            job = dataclasses.replace(job, budget_usd=self.options.budget_usd)
        pinned = tuple(item.model for item in job.items if item.model and item.model in self.settings.models)
        stages = {stage.job_type: self._stage_plan(job, stage) for stage in job.stages[1:]}
        plan = dataclasses.replace(self._stage_plan(job, job.stages[0], pinned), stage_plans=stages)
        for stage_plan in (plan, *stages.values()):
            self._strategy(stage_plan)
        check_budget(plan, self)  # a budget no attempt of the pipeline fits in is bad input
        return plan

    def _strategy(self, plan: Plan) -> Any:
        """The stage's routing strategy, built as its worker will build it: options
        it refuses (a genre table naming a model the stage does not have, say)
        fail validate and submit, not the worker after the job is stored."""
        options = {key: value for key, value in plan.routing.items() if key != "strategy"}
        return lookup(self.registries.strategies, plan.routing.get("strategy", "round_robin"),
                      "routing strategy")(options, plan)

    def _stage_plan(self, job: Job, stage: Stage, pinned: tuple[str, ...] = ()) -> Plan:
        job_type = self._job_type(stage.job_type)
        limit = self.settings.batch_limits.get(stage.job_type)
        opts, cfg = self.options, stage.config
        max_parallel = _pick(opts.max_parallel, cfg.max_parallel, self.max_parallel(stage.job_type))
        timeout = _pick(opts.timeout_per_item, cfg.timeout_per_item, limit and limit.timeout_per_item,
                       job_type.timeout_per_item)
        retry = self.settings.retry_config
        max_retries = _pick(opts.max_retries, cfg.max_retries, retry.max_retries)
        if not cfg.retry_on_failure:
            max_retries = 0
        models = tuple(opts.models or stage.models or job.models or self.settings.default_models)
        for name in models:
            if name not in self.settings.models:
                raise UsageError(f"unknown model {name!r} (known: {', '.join(sorted(self.settings.models))})")
        self.check_model_env(models + pinned)  # a missing key is found here, not by every item failing
        routing = {**self.settings.routing, **(stage.routing or job.routing)}
        is_first = stage.job_type == job.job_type
        return Plan(job=job, max_parallel=max_parallel, timeout_per_item=timeout, max_retries=max_retries,
                    retry=retry, models=models, routing=routing, job_type=None if is_first else stage.job_type)

    def max_parallel(self, job_type: str) -> int:
        """A job type's limit across jobs: ``--max-parallel``, then the settings'
        ``batch_limits``, then the job type's default. A job's own
        ``config.max_parallel`` may only lower it for that job."""
        limit = self.settings.batch_limits.get(job_type)
        return _pick(self.options.max_parallel, limit and limit.max_parallel, self._job_type(job_type).max_parallel)

    def _job_type(self, name: str) -> Any:
        job_type = self.registries.job_types.get(name)
        if job_type is None:
            raise UsageError(f"unknown job type {name!r} (known: {', '.join(sorted(self.registries.job_types))})")
        return job_type

    def register_plugin(self, plugin: object, name: str) -> None:
        """Register a plugin object for this config's lifetime (typically from
        ``loom_configure``); it is unregistered when the config closes."""
        self.pluginmanager.register(plugin, name=name)
        self._registered.append(plugin)

    def configure(self) -> None:
        if not self._configured:
            self._configured = True
            self.hooks.configure(config=self)

    def close(self) -> None:
        if self._configured:
            self._configured = False
            try:
                self.hooks.unconfigure(config=self)
            finally:
                while self._registered:
                    self.pluginmanager.unregister(self._registered.pop())

    def __enter__(self) -> "Config":
        self.configure()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shown(path: Path) -> Path:
    """``path`` relative to the working folder when it is inside it: errors name it as a user would."""
    try:
        return path.relative_to(Path.cwd()) if path.is_absolute() else path
    except ValueError:
        return path


def _pick(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def make_config(options: Options = Options(), *, job_file: str | os.PathLike | None = None,
                start_dir: str | os.PathLike | None = None, extra_plugins: Sequence[object] = ()) -> Config:
    """Plugins and settings for a run.

    The settings file is ``options.settings_file`` if given, else the first
    ``storyloom.yaml`` found walking up from the job file's folder (or
    ``start_dir``, or the working folder). ``plugins:`` listed in the settings
    and in the job are imported before the job is validated.
    ``extra_plugins`` are plugin objects to register (for embedding and tests).
    A model entry without ``price:`` gets its provider's default price for
    the model id (see :func:`resolve_prices`).
    """
    pm = make_plugin_manager(options.plugins, autoload=options.autoload)
    for plugin in extra_plugins:
        pm.register(plugin)

    if options.settings_file:
        settings_path: Path | None = Path(options.settings_file)
    else:
        base = Path(job_file).resolve().parent if job_file else Path(start_dir or ".").resolve()
        settings_path = loader.find_settings(base)
    # ``plugins:`` modules import from the settings file's folder first, for
    # that import only (the studio's own code; a job file's folder is not searched).
    studio = settings_path.resolve().parent if settings_path is not None else None
    if settings_path is not None:
        for name, where in loader.peek_plugins(loader.parse_document(settings_path)):
            import_plugin(pm, name, where, "plugins", folder=studio)
    if job_file is not None:
        for name, where in loader.peek_plugins(loader.parse_document(Path(job_file))):
            import_plugin(pm, name, where, "plugins", folder=studio)
    check(pm)
    registries = collect(pm)
    settings = loader.load_settings(settings_path)
    # A built-in model whose provider plugin is blocked (``-p no:simulated``)
    # drops out, like a default sink: the settings never named it.
    for name, spec in BUILTIN_MODELS.items():
        if settings.models.get(name) is spec and spec.provider not in registries.providers:
            del settings.models[name]
    settings = resolve_prices(settings, registries)
    return Config(pluginmanager=pm, settings=settings, options=options, registries=registries)


def resolve_prices(settings: Settings, registries: Registries) -> Settings:
    """The settings with every model's price resolved: its own ``price:``, else
    its provider factory's ``default_price(model id)``, else free ``Price()``.

    Each model's provider factory is checked once here (a UsageError names a
    non-conforming one). A model whose provider is not registered keeps a free
    price; using it fails later, naming the known providers.
    """
    models = {}
    for name, spec in settings.models.items():
        factory = registries.providers.get(spec.provider)
        if factory is not None:
            check_factory(factory, spec.provider, registries.owners.get(("providers", spec.provider)))
        if spec.price is None:
            price = factory.default_price(spec.model) if factory is not None else None
            if price is not None and not isinstance(price, Price):
                raise UsageError(f"provider {spec.provider!r}: default_price({spec.model!r}) returned {price!r}, "
                                 "not a storyloom.settings.Price or None")
            spec = dataclasses.replace(spec, price=price if price is not None else Price())
        models[name] = spec
    return dataclasses.replace(settings, models=models)
