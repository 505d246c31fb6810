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
from .estimate import SHOWN_ITEMS, shown_time
from .config import Options
from .errors import ConfigError, ConfigErrors, UsageError
from .outputs import missing_line, problem_line
from .store import StoreUnavailable
from .summary import EXIT_OUTPUTS, Summary

EXIT_USAGE = 2
EXIT_STORE = 5
#: 128 + SIGPIPE, as a shell reports a command whose reader went away.
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exits 2 too; keep one format
        # main() adds the one "storyloom: error:" prefix; the command's help is named once.
        raise UsageError(f"{message} (see `{self.prog} --help`)")


#: Options every command takes, before the subcommand (as pytest's) or after it.
GLOBAL_OPTIONS = ("plugins", "store", "state_dir", "settings_file")
_GLOBAL = "global_"

#: One example per command, shown at the end of its --help.
EXAMPLES = {
    "init": "storyloom init my-studio && cd my-studio && storyloom run jobs/book.yaml\n  storyloom init   # here",
    "run": "storyloom run jobs/demo.yaml\n  storyloom run jobs/demo.yaml --dry-run\n"
           "  storyloom run jobs/demo.yaml --sample 4   # then: storyloom resume demo-chapters\n"
           "  storyloom run jobs/demo.yaml --job-id demo-2 --json",
    "validate": "storyloom validate jobs/*.yaml",
    "resume": "storyloom resume demo-chapters\n  storyloom resume demo-chapters --retry-failed --kind TIMEOUT",
    "submit": "storyloom submit jobs/demo.yaml --job-id demo-nightly\n  storyloom work --burst",
    "work": "storyloom work --burst --json",
    "queue": "storyloom queue\n  storyloom queue position rain-over-chiang-mai-ch3 --job demo-chapters",
    "cancel": "storyloom cancel demo-chapters",
    "pause": "storyloom pause demo-chapters",
    "status": "storyloom status\n  storyloom status demo-chapters --items",
    "report": "storyloom report demo-chapters --format html --out report.html",
    "outputs": "storyloom outputs demo-chapters --rebuild",
    "plugins": "storyloom -p myplugin plugins",
    "delete": "storyloom delete demo-chapters --yes   # then the demo runs again",
    "book": "storyloom book salt-and-signal\n  storyloom book salt-and-signal --json",
    "approve": "storyloom approve salt-and-signal outline\n  storyloom approve salt-and-signal chapter 3",
}


def _common_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The global options; ``prefix`` keeps the copy before the subcommand
    apart, as argparse lets a subcommand's defaults overwrite it."""
    parser.add_argument("-p", dest=prefix + "plugins", action="append", metavar="NAME",
                        help="load plugin module NAME; -p no:NAME blocks a plugin")
    parser.add_argument("--store", dest=prefix + "store", metavar="URL",
                        help="which store: sqlite:///abs/folder, sqlite:relative/folder, postgresql://user@host/db "
                             "or another plugin's scheme "
                             "(default $STORYLOOM_STORE, else store: in the settings, else sqlite in the state folder)")
    parser.add_argument("--state-dir", dest=prefix + "state_dir", metavar="DIR",
                        help="where the store lives (default $STORYLOOM_HOME, else the .storyloom beside the "
                             "nearest storyloom.yaml walking up, else ./.storyloom)")
    parser.add_argument("--settings", dest=prefix + "settings_file", metavar="FILE",
                        help="settings file (default: storyloom.yaml found walking up from the job file's folder)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common)

    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--out-dir", help="where results go (default storyloom-out beside the store's .storyloom)")
    running.add_argument("--max-parallel", type=_positive_int, help="override max_parallel")
    running.add_argument("--timeout-per-item", type=_duration, help="override timeout_per_item (e.g. 90s, 5m)")
    running.add_argument("--max-retries", type=_non_negative_int, help="override max_retries")
    running.add_argument("--model", dest="models", action="append", help="use this model (repeatable)")
    running.add_argument("--budget-usd", type=_positive_float, help="override the job's budget")
    running.add_argument("--grace-period", type=_duration, help="on SIGINT/SIGTERM, how long running items may "
                                                                "finish (default 10s)")
    running.add_argument("--progress", action="append", help="progress sink to use (repeatable; default: settings)")
    running.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    summary_json = argparse.ArgumentParser(add_help=False)
    summary_json.add_argument("--json", action="store_true", help="print the final summary as one JSON object")

    parser = _Parser(prog="storyloom", description="Batch-process a fiction studio's LLM work.",
                     epilog="example:\n  storyloom run jobs/demo.yaml\n  storyloom -p myplugin status",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"storyloom {__version__}")
    _common_options(parser, _GLOBAL)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("init", help="make a studio folder (settings, a book project, jobs) that runs offline")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="the folder (default: this one; made if missing)")
    p = sub.add_parser("run", parents=[common, running, summary_json], help="validate, store and run a job file")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true",
                   help="show the plan (routes, tokens, cost, time) and stop: nothing is sent or stored")
    p.add_argument("--sample", type=_positive_int, metavar="N",
                   help="run N items spread over the job's projects and models, then pause with the whole "
                        "job's cost and time extrapolated; `storyloom resume JOB_ID` runs the rest")
    p.add_argument("--job-id", metavar="ID", help="run the job under this id instead of its file's")
    p = sub.add_parser("validate", parents=[common], help="check job files without running them")
    p.add_argument("files", nargs="+")
    p = sub.add_parser("resume", parents=[common, running, summary_json],
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
    p.add_argument("--dry-run", action="store_true",
                   help="show the plan (routes, tokens, cost, time) and stop: nothing is queued")
    p.add_argument("--job-id", metavar="ID", help="queue the job under this id instead of its file's")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as one JSON object")
    p = sub.add_parser("work", parents=[common, running, summary_json],
                       help="work through the queue of every submitted job")
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
    p.add_argument("--out-dir", help="where results go (default storyloom-out beside the store's .storyloom)")
    p.add_argument("--json", action="store_true")
    sub.add_parser("plugins", parents=[common], help="list plugins and the hooks they implement")
    p = sub.add_parser("book", parents=[common],
                       help="a book project: bible, outline, each chapter's state, version, QC verdict and score")
    p.add_argument("project_id")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("approve", parents=[common],
                       help="approve a book's outline (opens its gate) or a chapter that needs review")
    p.add_argument("project_id")
    p.add_argument("target", nargs="+", metavar="outline|chapter N")
    p = sub.add_parser("delete", parents=[common],
                       help="remove a stored job and its history, so that its id can run again")
    p.add_argument("job_id")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (needed when standard input is not a tty)")
    for name, command in sub.choices.items():
        if name in EXAMPLES:
            command.epilog = "example:\n  " + EXAMPLES[name]
            command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Arguments with the global options merged: given after the subcommand
    they win; ``-p`` adds up from both places."""
    args = build_parser().parse_args(argv)
    for name in GLOBAL_OPTIONS:
        before = getattr(args, _GLOBAL + name)
        after = getattr(args, name, None)
        if name == "plugins":
            setattr(args, name, [*(before or ()), *(after or ())])
        else:
            setattr(args, name, after if after is not None else before)
        delattr(args, _GLOBAL + name)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except ConfigErrors as many:  # run, submit...: the first, and where to see the rest
        print(f"storyloom: error: {many} (and {len(many.errors) - 1 + many.more} more: "
              f"`storyloom validate {many.location.file}` lists them)", file=sys.stderr)
        return EXIT_USAGE
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
        progress=tuple(get("progress")) if get("progress") else None,
        quiet=bool(get("quiet")), job_id=get("job_id"),
    )


def cmd_init(args: argparse.Namespace) -> int:
    written = api.init_studio(args.dir)
    root = Path(args.dir)
    print(f"a new studio in {root.resolve()}:")
    for path in written:
        print(f"  {path.relative_to(root)}")
    go = "" if root.resolve() == Path.cwd().resolve() else f"cd {args.dir} && "
    print(f"next: {go}storyloom run jobs/book.yaml   # offline: one book, premise to EPUB")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        if args.sample is not None:
            raise UsageError("--dry-run and --sample: choose one (a dry run sends nothing)")
        return _print_estimate(api.estimate_job(args.file, options=_options(args)), args.json)
    summary = trio.run(lambda: api.run_job(args.file, options=_options(args), handle_signals=True,
                                           sample=args.sample))
    return _report(summary, args.json)


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
        if args.json:
            print(json.dumps(summary.as_dict(), ensure_ascii=False))
        else:
            print(f"{summary.job_id}: {summary.reason}")
        return summary.exit_code
    if summary.retried and not args.json:
        print(f"{summary.job_id}: {summary.retried} failed item(s) ran again")
    return _report(summary, args.json)


def cmd_submit(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _print_estimate(api.estimate_job(args.file, options=_options(args)), args.json)
    job = trio.run(lambda: api.submit_job(args.file, options=_options(args)))
    print(f"{job.job_id}: queued, {len(job.items)} items at {job.priority.name.lower()}")
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    summaries = trio.run(lambda: api.work(burst=args.burst, options=_options(args), handle_signals=True))
    if args.json:  # one object for the whole worker: the jobs it ended, in order
        for summary in summaries:
            _report(summary, quiet=True)
        print(json.dumps({"interrupted": summaries.interrupted, "jobs": [s.as_dict() for s in summaries]},
                         ensure_ascii=False))
    codes = [summary.exit_code if args.json else _report(summary) for summary in summaries]
    return 130 if summaries.interrupted else EXIT_OUTPUTS if EXIT_OUTPUTS in codes else 0


def cmd_delete(args: argparse.Namespace) -> int:
    options = _options(args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"delete {args.job_id!r}: standard input is not a terminal to ask on; pass --yes")
        answer = input(f"Delete job {args.job_id!r} and its whole history from the store? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print(f"{args.job_id}: not deleted")
            return 0
    gone = trio.run(lambda: api.delete_job(args.job_id, options=options))
    print(f"{args.job_id}: deleted ({gone['state']}, {gone['items']} item(s)); its output files are kept")
    return 0


def _print_estimate(plan: Any, as_json: bool) -> int:
    """What ``--dry-run`` prints: the items (the first few), each model's totals, the job's."""
    if as_json:
        print(json.dumps(plan.as_dict(), ensure_ascii=False))
        return 0
    items = plan.items
    first = sum(1 for row in items if row.job_type == plan.job_type)
    later = {name: t for name, t in plan.stages.items() if name != plan.job_type}
    planned = (f", then {sum(t.items for t in later.values())} planned in {len(later)} later stage(s) "
               f"(up to {sum(t.worst_items for t in later.values())})") if later else ""
    print(f"{plan.job_id} ({plan.job_type}): dry run, nothing sent or stored; {first} item(s) to run"
          + (f", {plan.skipped} skipped" if plan.skipped else "") + planned + f", max_parallel {plan.max_parallel}")
    for row in items[:SHOWN_ITEMS]:
        times = "" if (row.count, row.worst_count) == (1, 1) else (
            f" x{row.count}" if row.count == row.worst_count else f" x{row.count}-{row.worst_count}")
        if row.model is None:
            print(f"  {row.item_id}{times}  ({row.job_type}: done in code, sends nothing)")
            continue
        stage = f"{row.job_type}, " if later else ""
        print(f"  {row.item_id}{times}  -> {row.model}  ({stage}{_why(row.route)}; ~{row.prompt_tokens} in, "
              f"~{row.expected_output_tokens}/{row.max_tokens} out; ${row.expected_usd:.4f}, "
              f"worst ${row.worst_usd:.4f})")
    if len(items) > SHOWN_ITEMS:
        print(f"  ... and {len(items) - SHOWN_ITEMS} more (--json lists every item)")
    if later:
        for name, t in plan.stages.items():
            print(f"  stage {name}: {t.items} item(s), up to {t.worst_items}; ${t.expected_usd:.4f} "
                  f"(worst ${t.worst_usd:.4f})")
    for name in plan.unplanned_stages:
        print(f"  stage {name}: not estimated (its job type plans no items before the run)")
    for name, m in plan.models.items():
        limits = ", ".join(f"{k} {v}" for k, v in (("rpm", m.rpm), ("tpm", m.tpm)) if v)
        floor = f"{limits}: at least {shown_time(m.min_seconds)}" if limits else "no rate limit"
        print(f"  model {name}: {m.items} item(s), ~{m.expected_tokens} tokens (worst {m.worst_tokens}), "
              f"${m.expected_usd:.4f} (worst ${m.worst_usd:.4f}); {floor}")
    floor = plan.min_seconds
    time_text = (f"at least {shown_time(floor)} by the rate limits" if floor is not None
                 else "no rate limit bounds it (the provider's speed does)")
    budget = f" of a ${plan.budget_usd:.2f} budget" if plan.budget_usd is not None else ""
    print(f"expected cost ${plan.expected_usd:.4f}, worst case ${plan.worst_usd:.4f}{budget}; time: {time_text}")
    return 0


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
    _print_workers(data["workers"])
    return 0


def _print_workers(workers: list[dict[str, Any]]) -> None:
    """One line per live worker and what it holds."""
    for w in workers:
        held = sum(w["holding"].values())
        jobs = ", ".join(f"{job} {n}" for job, n in w["holding"].items())
        print(f"worker {w['worker']}: holds {held}" + (f" ({jobs})" if jobs else ""))


def _report(summary: Summary, as_json: bool = False, quiet: bool = False) -> int:
    """Print how a job run ended (or, ``as_json``, the summary as one JSON
    object on stdout; ``quiet``: only the messages on stderr)."""
    c = summary.counts
    total = sum(c.values())
    if as_json:
        print(json.dumps(summary.as_dict(), ensure_ascii=False))
    elif not quiet:
        print(f"{summary.job_id}: {summary.status} in {summary.duration:.1f}s: {c['completed']}/{total} completed, "
              f"{c['failed']} failed, {c['skipped']} skipped, {c['pending']} pending; cost ${summary.cost_usd:.4f}"
              + (f"; {len(summary.output_problems)} output(s) NOT written" if summary.output_problems else ""))
        if summary.sample:
            print(_sample_line(summary))
        if summary.out_dir and (c["completed"] or c["failed"]):
            print(_where_line(summary.out_dir))
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
        except ConfigErrors as many:  # every problem in the file, each on its line
            for problem in many.errors:
                print(f"storyloom: error: {problem}", file=sys.stderr)
            if many.more:
                print(f"storyloom: error: {file}: more problems not shown (the first {len(many.errors)} are)",
                      file=sys.stderr)
            failed += 1
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
        _print_workers(data["workers"])
    else:
        _print_status(data)
    return 0


def _print_status(data: dict[str, Any]) -> None:
    print(f"{data['job_id']} ({data['job_type']}): {data['state']}"
          + (f" - {data['reason']}" if data["reason"] else ""))
    for state, n in data["counts"].items():
        print(f"  {state:<10} {n}")
    review = data.get("needs_review") or ()
    if review:
        print(f"  {'needs_review':<10} {len(review)}")
    for entry in review:
        print(f"    {entry['project_id'] or '-'} {entry['what']}: `{entry['approve']}`")
    for r in data["running"]:
        print(f"  running: {r['item_id']} -> {r['model']} ({r['elapsed']:.0f}s, attempt {r['attempt']}, "
              f"worker {r['worker']})")
    print(f"  cost: ${data['cost_usd']:.4f} ({data['input_tokens']} in / {data['output_tokens']} out tokens, "
          f"{data['attempts']} attempts)")
    if data["unknown_attempts"]:
        print(f"  unknown: {data['unknown_attempts']} attempts sent, outcome unknown, "
              f"up to ${data['unknown_usd']:.4f}")
    for w in data["workers"]:
        print(f"  worker {w['worker']}: holds {w['holding'][data['job_id']]}")
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


def _sample_line(summary: Summary) -> str:
    s = summary.sample or {}
    rest = s.get("projected_rest_seconds")
    time_text = f"about {shown_time(s['projected_seconds'])} in all ({shown_time(rest)} more)" \
        if rest is not None else "time unknown"
    return (f"{summary.job_id}: sample of {s['items']} item(s) cost ${s['cost_usd']:.4f} "
            f"(${s['cost_per_item_usd']:.4f} an item); the whole job of {s['total_items']}: "
            f"about ${s['projected_cost_usd']:.4f}, {time_text}")


def _where_line(out_dir: str) -> str:
    """Where a run wrote: the job's output folder and the reports in it."""
    folder = Path(out_dir)
    reports = sorted(p.name for p in folder.glob("report.*")) if folder.is_dir() else []
    return f"outputs: {out_dir}{os.sep}" + (f" (reports: {', '.join(reports)})" if reports else "")


def cmd_book(args: argparse.Namespace) -> int:
    data = trio.run(lambda: api.book(args.project_id, options=_options(args)))
    if args.json:
        print(json.dumps({k: v for k, v in data.items() if k != "text"}, indent=2, ensure_ascii=False))
    else:
        for line in data.get("text", ()):
            print(line)
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    print(trio.run(lambda: api.approve(args.project_id, args.target, options=_options(args))))
    return 0


COMMANDS = {"init": cmd_init, "book": cmd_book, "approve": cmd_approve, "run": cmd_run, "validate": cmd_validate, "resume": cmd_resume, "status": cmd_status,
            "report": cmd_report, "plugins": cmd_plugins, "submit": cmd_submit, "work": cmd_work,
            "queue": cmd_queue, "cancel": cmd_cancel, "pause": cmd_pause, "outputs": cmd_outputs,
            "delete": cmd_delete}


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
