"""The ``storyloom`` command.

Exit codes: 0 all completed, 1 finished with failed items, 2 bad input or
usage, 3 paused by policy or budget, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import trio

from . import __version__
from .api import resume_job, run_job
from .atomic import write_atomic
from .config import Options, make_config
from .errors import ConfigError, UsageError
from .job import job_from_dict
from .summary import Summary
from .report import build_report, snapshot
from .store.sqlite import SQLiteStore

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exits 2 too; keep one format
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                        help="load plugin module NAME; -p no:NAME blocks a plugin")
    common.add_argument("--state-dir", help="where the store lives (default $STORYLOOM_HOME or ./.storyloom)")
    common.add_argument("--settings", dest="settings_file", help="settings file (default: storyloom.yaml found "
                                                                  "walking up from the job file's folder)")

    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--out-dir", help="where results go (default ./storyloom-out)")
    running.add_argument("--max-parallel", type=_positive_int, help="override max_parallel")
    running.add_argument("--timeout-per-item", type=_duration, help="override timeout_per_item (e.g. 90s, 5m)")
    running.add_argument("--max-retries", type=_non_negative_int, help="override max_retries")
    running.add_argument("--model", dest="models", action="append", help="use this model (repeatable)")
    running.add_argument("--budget-usd", type=_positive_float, help="override the job's budget")
    running.add_argument("--grace-period", type=_duration, help="on SIGINT/SIGTERM, how long running items may "
                                                                "finish (default 10s)")
    running.add_argument("--progress", action="append", help="progress sink to use (repeatable; default: settings)")
    running.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    parser = _Parser(prog="storyloom", description="Batch-process a fiction studio's LLM work.")
    parser.add_argument("--version", action="version", version=f"storyloom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("run", parents=[common, running], help="validate, store and run a job file")
    p.add_argument("file")
    p = sub.add_parser("validate", parents=[common], help="check job files without running them")
    p.add_argument("files", nargs="+")
    p = sub.add_parser("resume", parents=[common, running], help="continue a paused or interrupted job")
    p.add_argument("job_id")
    p = sub.add_parser("status", parents=[common], help="counts, running items and cost of a job")
    p.add_argument("job_id", nargs="?")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("report", parents=[common], help="render a job's report (also while it runs or is paused)")
    p.add_argument("job_id")
    p.add_argument("--format", default="md", help="a report renderer: md (default), json, html, or a plugin's")
    p.add_argument("--out", help="write to this file instead of standard output")
    sub.add_parser("plugins", parents=[common], help="list plugins and the hooks they implement")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"storyloom: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the kernel's own handler is in place
        print("storyloom: interrupted", file=sys.stderr)
        return 130


def _options(args: argparse.Namespace) -> Options:
    get = lambda name: getattr(args, name, None)  # noqa: E731 - not every command has every flag
    return Options(
        plugins=tuple(args.plugins), state_dir=args.state_dir, settings_file=args.settings_file,
        out_dir=get("out_dir"), max_parallel=get("max_parallel"), timeout_per_item=get("timeout_per_item"),
        max_retries=get("max_retries"), models=tuple(get("models")) if get("models") else None,
        budget_usd=get("budget_usd"), grace_period=get("grace_period"),
        progress=tuple(get("progress")) if get("progress") else None, quiet=bool(get("quiet")),
    )


def _existing_state_dir(options: Options) -> Path:
    """The state folder, which must already hold a store (commands that only read)."""
    state_dir = options.state_path()
    if not (state_dir / "storyloom.db").exists():
        raise UsageError(f"no store in {state_dir} (run a job first, or pass --state-dir)")
    return state_dir


def cmd_run(args: argparse.Namespace) -> int:
    summary = trio.run(lambda: run_job(args.file, options=_options(args), handle_signals=True))
    return _report(summary)


def cmd_resume(args: argparse.Namespace) -> int:
    summary = trio.run(lambda: resume_job(args.job_id, options=_options(args), handle_signals=True))
    return _report(summary)


def _report(summary: Summary) -> int:
    c = summary.counts
    total = sum(c.values())
    print(f"{summary.job_id}: {summary.status} in {summary.duration:.1f}s: {c['completed']}/{total} completed, "
          f"{c['failed']} failed, {c['skipped']} skipped, {c['pending']} pending; cost ${summary.cost_usd:.4f}")
    if summary.status in ("paused", "interrupted"):
        print(f"{summary.reason}. Continue with: storyloom resume {summary.job_id}", file=sys.stderr)
    return summary.exit_code


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for file in args.files:
        try:
            with make_config(_options(args), job_file=file) as config:
                job = config.load_job(file)
                config.plan(job)
            print(f"{file}: ok ({job.job_type}, {len(job.items)} items)")
        except UsageError as exc:
            print(f"storyloom: error: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_USAGE if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = _existing_state_dir(_options(args))
    data = trio.run(_status, state_dir, args.job_id)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif args.job_id is None:
        for job in data["jobs"]:
            counts = ", ".join(f"{n} {s}" for s, n in job["counts"].items() if n)
            print(f"{job['job_id']}  {job['job_type']}  {job['state']}  {counts}")
    else:
        _print_status(data)
    return 0


async def _status(state_dir: Path, job_id: str | None) -> dict[str, Any]:
    store = SQLiteStore.open(state_dir)
    try:
        if job_id is None:
            return {"jobs": [{"job_id": j.job_id, "job_type": j.job_type, "state": j.state,
                              "counts": await store.counts(j.job_id)} for j in await store.list_jobs()]}
        job = await store.get_job(job_id)
        if job is None:
            raise UsageError(f"no job {job_id!r} in {state_dir}")
        now = time.time()
        costs = await store.costs(job_id)
        return {
            "job_id": job_id, "job_type": job.job_type, "state": job.state, "reason": job.reason,
            "counts": await store.counts(job_id),
            "running": [{"item_id": r.item_id, "model": r.model, "elapsed": round(now - r.started_at, 1),
                         "attempt": r.attempts + 1} for r in await store.running(job_id)],
            "cost_usd": costs.cost_usd, "input_tokens": costs.input_tokens, "output_tokens": costs.output_tokens,
            "attempts": costs.attempts, "by_model": costs.by_model,
        }
    finally:
        await store.aclose()


def _print_status(data: dict[str, Any]) -> None:
    print(f"{data['job_id']} ({data['job_type']}): {data['state']}"
          + (f" - {data['reason']}" if data["reason"] else ""))
    for state, n in data["counts"].items():
        print(f"  {state:<10} {n}")
    for r in data["running"]:
        print(f"  running: {r['item_id']} -> {r['model']} ({r['elapsed']:.0f}s, attempt {r['attempt']})")
    print(f"  cost: ${data['cost_usd']:.4f} ({data['input_tokens']} in / {data['output_tokens']} out tokens, "
          f"{data['attempts']} attempts)")


def cmd_report(args: argparse.Namespace) -> int:
    options = _options(args)
    state_dir = _existing_state_dir(options)
    with make_config(options, start_dir=".") as config:
        renderer = config.registries.renderers.get(args.format)
        if renderer is None:
            known = ", ".join(sorted(config.registries.renderers))
            raise UsageError(f"unknown report format {args.format!r} (known: {known})")
        report = trio.run(_report_data, state_dir, args.job_id)
    _file_name, text = renderer(report)
    if args.out:
        write_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 0


async def _report_data(state_dir: Path, job_id: str) -> dict[str, Any]:
    store = SQLiteStore.open(state_dir)
    try:
        row = await store.get_job(job_id)
        if row is None:
            raise UsageError(f"no job {job_id!r} in {state_dir}")
        return await build_report(store, job_from_dict(row.definition), await snapshot(store, row))
    finally:
        await store.aclose()


def cmd_plugins(args: argparse.Namespace) -> int:
    with make_config(_options(args), start_dir=".") as config:
        pm = config.pluginmanager
        for name, plugin in sorted(pm.list_name_plugin(), key=lambda np: np[0]):
            hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or ())
            origin = getattr(plugin, "__file__", None) or type(plugin).__module__
            print(f"{name}  ({origin})")
            for hook in hooks:
                print(f"    {hook}")
        registries = config.registries
        for attr in ("providers", "job_types", "strategies", "retry_policies", "sinks", "renderers"):
            names = ", ".join(f"{n} [{registries.owners[(attr, n)]}]" for n in sorted(getattr(registries, attr)))
            print(f"{attr.replace('_', ' ')}: {names or '-'}")
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "resume": cmd_resume, "status": cmd_status,
            "report": cmd_report, "plugins": cmd_plugins}


# -- argument types: bad values are usage errors with the flag's own words


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("expected an integer >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("expected an integer >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("expected a number > 0")
    return value


def _duration(text: str) -> float:
    from .loader import parse_duration

    try:
        return parse_duration(text, positive=True)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


if __name__ == "__main__":
    sys.exit(main())
