"""The ``storyloom`` command.

Exit codes: 0 all completed, 1 finished with failed items, 2 bad input or
usage, 3 paused (by policy, budget or an operator), 4 cancelled, 5 the
store cannot be used (its folder read-only or full, its database damaged or
locked), 6 an output could not be written or is missing (the store has it:
``storyloom outputs JOB_ID --rebuild``), 130 interrupted, 141 standard output
closed early (``| head``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import trio

from . import __version__
from . import api
from .atomic import write_atomic
from .config import Options
from .errors import ConfigError, UsageError
from .outputs import missing_line, problem_line
from .store import StoreUnavailable
from .summary import EXIT_OUTPUTS, Summary

EXIT_USAGE = 2
EXIT_STORE = 5
#: 128 + SIGPIPE, as a shell reports a command whose reader went away.
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exits 2 too; keep one format
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                        help="load plugin module NAME; -p no:NAME blocks a plugin")
    common.add_argument("--store", metavar="URL", help="which store: sqlite:///abs/folder, sqlite:relative/folder, "
                                                       "postgresql://user@host/db or another plugin's scheme (default $STORYLOOM_STORE, else store: in "
                                                       "the settings, else sqlite in the state folder)")
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
    p = sub.add_parser("resume", parents=[common, running],
                       help="continue a paused or interrupted job (here, or with --detach in a worker)")
    p.add_argument("job_id")
    p.add_argument("--detach", action="store_true", help="only put it back in the queue for `storyloom work`")
    p.add_argument("--retry-failed", action="store_true",
                   help="run failed items again too (their history kept, with max_retries afresh)")
    p.add_argument("--kind", dest="kinds", action="append", metavar="KIND",
                   help="with --retry-failed: only items that failed with this error kind, e.g. AUTH_ERROR "
                        "(repeatable)")
    p = sub.add_parser("submit", parents=[common], help="validate a job file and queue it for `storyloom work`")
    p.add_argument("file")
    p = sub.add_parser("work", parents=[common, running], help="work through the queue of every submitted job")
    p.add_argument("--burst", action="store_true", help="exit once nothing is left to run")
    p = sub.add_parser("queue", parents=[common], help="what waits, by level; `queue position ITEM_ID`")
    p.add_argument("what", nargs="*", metavar="position ITEM_ID")
    p.add_argument("--job", help="the job of ITEM_ID (needed when several jobs have an item of that id)")
    p.add_argument("--limit", type=_positive_int, default=10, help="waiting items to list (default 10)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("cancel", parents=[common], help="cancel a job: its pending and running items are skipped")
    p.add_argument("job_id")
    p = sub.add_parser("pause", parents=[common], help="hold a job: no worker takes its items; running ones finish")
    p.add_argument("job_id")
    p = sub.add_parser("status", parents=[common], help="counts, running items and cost of a job")
    p.add_argument("job_id", nargs="?")
    p.add_argument("--items", action="store_true", help="every item with its model and why it was routed there")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("report", parents=[common], help="render a job's report (also while it runs or is paused)")
    p.add_argument("job_id")
    p.add_argument("--format", default="md", help="a report renderer: md (default), json, html, or a plugin's")
    p.add_argument("--out", help="write to this file instead of standard output")
    p = sub.add_parser("outputs", parents=[common],
                       help="list a job's output files and whether each is present, missing or partial")
    p.add_argument("job_id")
    p.add_argument("--rebuild", action="store_true", help="write every output of the job again from the store")
    p.add_argument("--out-dir", help="where results go (default ./storyloom-out)")
    p.add_argument("--json", action="store_true")
    sub.add_parser("plugins", parents=[common], help="list plugins and the hooks they implement")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except UsageError as exc:
        print(f"storyloom: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailable as exc:
        print(f"storyloom: error: {exc}", file=sys.stderr)
        return EXIT_STORE
    except KeyboardInterrupt:  # before the kernel's own handler is in place
        print("storyloom: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`storyloom status | head -1`). Point stdout at devnull so
        # that the interpreter's final flush does not fail again (Python's docs, "SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _options(args: argparse.Namespace) -> Options:
    get = lambda name: getattr(args, name, None)  # noqa: E731 - not every command has every flag
    return Options(
        plugins=tuple(args.plugins), store=args.store, state_dir=args.state_dir, settings_file=args.settings_file,
        out_dir=get("out_dir"), max_parallel=get("max_parallel"), timeout_per_item=get("timeout_per_item"),
        max_retries=get("max_retries"), models=tuple(get("models")) if get("models") else None,
        budget_usd=get("budget_usd"), grace_period=get("grace_period"),
        progress=tuple(get("progress")) if get("progress") else None, quiet=bool(get("quiet")),
    )


def cmd_run(args: argparse.Namespace) -> int:
    summary = trio.run(lambda: api.run_job(args.file, options=_options(args), handle_signals=True))
    return _report(summary)


def cmd_resume(args: argparse.Namespace) -> int:
    options = _options(args)
    if args.detach and args.retry_failed:
        retried = trio.run(lambda: api.retry_failed_items(args.job_id, args.kinds, options=options))
        print(f"{args.job_id}: back in the queue; {retried} failed item(s) to run again")
        return 0
    if args.detach:
        trio.run(lambda: api.requeue_job(args.job_id, options=options, kinds=args.kinds))
        print(f"{args.job_id}: back in the queue")
        return 0
    summary = trio.run(lambda: api.resume_job(args.job_id, options=options, handle_signals=True,
                                              retry_failed=args.retry_failed, kinds=args.kinds))
    if summary.idle:
        print(f"{summary.job_id}: {summary.reason}")
        return summary.exit_code
    if summary.retried:
        print(f"{summary.job_id}: {summary.retried} failed item(s) ran again")
    return _report(summary)


def cmd_submit(args: argparse.Namespace) -> int:
    job = trio.run(lambda: api.submit_job(args.file, options=_options(args)))
    print(f"{job.job_id}: queued, {len(job.items)} items at {job.priority.name.lower()}")
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    summaries = trio.run(lambda: api.work(burst=args.burst, options=_options(args), handle_signals=True))
    codes = [_report(summary) for summary in summaries]
    return 130 if summaries.interrupted else EXIT_OUTPUTS if EXIT_OUTPUTS in codes else 0


def cmd_pause(args: argparse.Namespace) -> int:
    trio.run(lambda: api.pause_job(args.job_id, options=_options(args)))
    print(f"{args.job_id}: paused; running items finish. Continue with: storyloom resume {args.job_id}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    skipped = trio.run(lambda: api.cancel_job(args.job_id, options=_options(args)))
    print(f"{args.job_id}: cancelled; {skipped} item(s) skipped")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    options = _options(args)
    if args.what:
        if len(args.what) != 2 or args.what[0] != "position":
            raise UsageError("usage: storyloom queue [position ITEM_ID [--job JOB_ID]]")
        position = trio.run(lambda: api.queue_position(args.what[1], args.job, options=options))
        print(json.dumps(position) if args.json else position["position"])
        return 0
    data = trio.run(lambda: api.queue_overview(args.limit, options=options))
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    for level in data["levels"]:
        jobs = ", ".join(f"{job} {n}" for job, n in level["jobs"].items())
        print(f"{level['level']:<9} {level['waiting']:>7}" + (f"  ({jobs})" if jobs else ""))
    for job in data["held"]:
        print(f"held: {job['job_id']} ({job['state']}): {job['reason'] or '-'}")
    if data["next"]:
        print("next:")
        for row in data["next"]:
            print(f"  {row['level']:<9} {row['job_id']}/{row['item_id']} ({row['job_type']})")
    return 0


def _report(summary: Summary) -> int:
    c = summary.counts
    total = sum(c.values())
    print(f"{summary.job_id}: {summary.status} in {summary.duration:.1f}s: {c['completed']}/{total} completed, "
          f"{c['failed']} failed, {c['skipped']} skipped, {c['pending']} pending; cost ${summary.cost_usd:.4f}"
          + (f"; {len(summary.output_problems)} output(s) NOT written" if summary.output_problems else ""))
    if summary.outputs_rebuilt:
        print(f"{summary.job_id}: {summary.outputs_rebuilt} missing or partial output(s) rebuilt from the store",
              file=sys.stderr)
    if summary.output_problems:
        print(f"storyloom: error: {problem_line(summary.job_id, summary.output_problems)}", file=sys.stderr)
    if summary.status in ("paused", "interrupted"):
        print(f"{summary.reason}. Continue with: storyloom resume {summary.job_id}", file=sys.stderr)
    return summary.exit_code


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for file in args.files:
        try:
            job = api.validate_job(file, options=_options(args))
            print(f"{file}: ok ({job.job_type}, {len(job.items)} items)")
        except UsageError as exc:
            print(f"storyloom: error: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_USAGE if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    data = trio.run(lambda: api.job_status(args.job_id, items=args.items, options=_options(args)))
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif args.job_id is None:
        for job in data["jobs"]:
            counts = ", ".join(f"{n} {s}" for s, n in job["counts"].items() if n)
            print(f"{job['job_id']}  {job['job_type']}  {job['state']}  {counts}")
    else:
        _print_status(data)
    return 0


def _print_status(data: dict[str, Any]) -> None:
    print(f"{data['job_id']} ({data['job_type']}): {data['state']}"
          + (f" - {data['reason']}" if data["reason"] else ""))
    for state, n in data["counts"].items():
        print(f"  {state:<10} {n}")
    for r in data["running"]:
        print(f"  running: {r['item_id']} -> {r['model']} ({r['elapsed']:.0f}s, attempt {r['attempt']})")
    print(f"  cost: ${data['cost_usd']:.4f} ({data['input_tokens']} in / {data['output_tokens']} out tokens, "
          f"{data['attempts']} attempts)")
    if data["unknown_attempts"]:
        print(f"  unknown: {data['unknown_attempts']} attempts sent, outcome unknown, "
              f"up to ${data['unknown_usd']:.4f}")
    for i in data.get("items", ()):
        print(f"  {i['item_id']}  {i['state']}  {i['level']}  {i['model'] or '-'}  {_why(i['route'])}")


def _why(route: dict[str, Any] | None) -> str:
    """A stored route, short: the strategy, then what it decided on."""
    if not route:
        return "-"
    rest = ", ".join(f"{k}={v}" for k, v in route.items() if k not in ("strategy", "usable"))
    return f"{route.get('strategy', '?')}: {rest}" if rest else str(route.get("strategy", "?"))


def cmd_report(args: argparse.Namespace) -> int:
    _file_name, text = trio.run(lambda: api.render_report(args.job_id, args.format, options=_options(args)))
    if args.out:
        write_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_outputs(args: argparse.Namespace) -> int:
    data = trio.run(lambda: api.job_outputs(args.job_id, rebuild=args.rebuild, options=_options(args)))
    if args.json:
        print(json.dumps({k: v for k, v in data.items() if k != "problems"}, indent=2, ensure_ascii=False))
    else:
        for output in data["outputs"]:
            print(f"{output['state']:<8} {output['path']}")
        tally = {}
        for output in data["outputs"]:
            tally[output["state"]] = tally.get(output["state"], 0) + 1
        print(f"{args.job_id}: {len(data['outputs'])} output(s) in {data['out_dir']}"
              + "".join(f", {n} {state}" for state, n in tally.items()))
    if data["problems"]:
        print(f"storyloom: error: {problem_line(args.job_id, data['problems'])}", file=sys.stderr)
        return EXIT_OUTPUTS
    line = missing_line(args.job_id, data["outputs"])
    if line:
        print(f"storyloom: {line}", file=sys.stderr)
        return EXIT_OUTPUTS
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    data = api.describe_plugins(options=_options(args))
    for name, plugin in data["plugins"].items():
        print(f"{name}  ({plugin['origin']})")
        for hook in plugin["hooks"]:
            print(f"    {hook}")
    for attr, table in data["registries"].items():
        names = ", ".join(f"{n} [{owner}]" for n, owner in table.items())
        print(f"{attr.replace('_', ' ')}: {names or '-'}")
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "resume": cmd_resume, "status": cmd_status,
            "report": cmd_report, "plugins": cmd_plugins, "submit": cmd_submit, "work": cmd_work,
            "queue": cmd_queue, "cancel": cmd_cancel, "pause": cmd_pause, "outputs": cmd_outputs}


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
