"""Dispatch: the cost of one dequeue-and-route decision, on a queue of N items
spread over 50 jobs and the 4 levels, with the simulated provider at zero latency.

    .venv/bin/python bench/dispatch.py              # N = 1,000, 10,000 and 100,000
    .venv/bin/python bench/dispatch.py 20000        # one N
    .venv/bin/python bench/dispatch.py --no-e2e     # decisions only (skip work())
    .venv/bin/python bench/dispatch.py --claim=20   # claims of 20 (qc_processing's default limit)

Each N runs in a fresh process, in a temporary folder (removed after). The
queue is built through the real API: 50 ``qc_processing`` job files, each
``submit_job``-ed into one SQLite store (WAL, ``synchronous=NORMAL``), so
``qseq`` and the levels are the store's own. Job j has priority
``LEVELS[j % 4]``; each job's items come in four equal entries, the first at
the job's level and the other three with their own ``priority:``, so every job
has items on every level. One queue is built per strategy (``round_robin``,
``least_loaded``: the job's ``routing:``), otherwise identical. Settings: 4
simulated models at ``latency_ms: 0``, ``progress: []``, ``reports: []``,
``batch_limits: {qc_processing: {max_parallel: 256}}`` (so a claim may reach
``CLAIM_BATCH``; with ``--claim=K`` both the limit and the claims are K);
plugins ``-p no:outputs``.

**Decisions** (the headline): on a fresh copy of the queue file, a
``Worker(config, burst=True)`` with ``worker.store`` set starts its 50 job
runs (``Worker._start_run``, timed apart), then drains the queue as
``Worker._dispatch`` and ``run_attempt`` do, minus the provider call, the
budget, the rate limiter and the commit:

* claim: the exclude list, then ``store.claim_next(job_type, limit, now,
  owner, exclude)``, ``limit`` = ``CLAIM_BATCH`` (one write transaction,
  WAL checkpoints included when they fall due; it also decodes the definitions);
* route, per claimed item: ``Worker._admit``, ``item_from_dict``,
  ``attempt._request`` (the job type's ``build_request``: a Jinja render),
  ``pool.wait_for_usable``, ``estimate_request_tokens``, ``attempt._route``
  (the ``RouteContext`` and the strategy's choice).

The "first 1,000" window is the same work on every queue: claims of 256,
256, 256 and 232 off the head of the queue. The whole drain takes every
item; "last 1,000" is its tail, and for N >= 10,000 the claim and total cost
of each tenth of the drain are printed too (does the claim slow down as the
drain goes on?). A warm-up (one template render, the claim statement
prepared on an empty job type) runs before the clock. Every drain is on a
fresh copy of the queue file. Whole-drain and last-1,000 figures are the
best of ``REPEATS`` (5) drains; first-1,000 figures the best of
``WINDOW_REPEATS`` (20: those 5 and 15 drains stopped after the window);
the min, median and max of the totals are printed as the spread (on a
shared machine the median can be 1.5x the best). Times are
``time.perf_counter``; the per-stage timers cost about 0.1 us a call, 5
calls an item (printed).

**End to end**: ``storyloom.api.work(burst=True)`` over another fresh copy:
every item runs on the simulated provider and every outcome is committed.
Wall time of the call and items/s (best of ``E2E_REPEATS``, both printed),
and the number and mean size of the claims the worker made.

Also printed once: ``EXPLAIN QUERY PLAN`` of the claim.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

JOBS = 50
JOB_TYPE = "qc_processing"
LEVELS = ("critical", "high", "normal", "low")
STRATEGIES = ("round_robin", "least_loaded")
REPEATS = 5
#: The first window is cheap: it is the best of this many (the REPEATS drains, then drains stopped after it).
WINDOW_REPEATS = 20
E2E_REPEATS = 2
WINDOW = 1_000
GENRES = ("fantasy", "horror", "mystery", "romantic-comedy", "bl-gl")

SETTINGS = """
models:
  m0: {provider: simulated, latency_ms: 0, output_tokens: 50, seed: 1}
  m1: {provider: simulated, latency_ms: 0, output_tokens: 50, seed: 2}
  m2: {provider: simulated, latency_ms: 0, output_tokens: 50, seed: 3}
  m3: {provider: simulated, latency_ms: 0, output_tokens: 50, seed: 4}
default_models: [m0, m1, m2, m3]
batch_limits:
  qc_processing: {max_parallel: CLAIM}
progress: []
reports: []
"""


def job_yaml(j: int, count: int, strategy: str) -> str:
    """Job j: ``count`` items in four entries, one per level."""
    lines = [f"job_id: bench-{j:02d}", f"job_type: {JOB_TYPE}", f"priority: {LEVELS[j % 4]}",
             "language: en", f"routing: {{strategy: {strategy}}}", "items:"]
    for k in range(4):
        size = count // 4 + (k < count % 4)
        if not size:
            continue
        entry = f"  - {{project_id: p{j:02d}e{k}, chapters: 1-{size}, genre: {GENRES[(j + k) % len(GENRES)]}"
        if k:
            entry += f", priority: {LEVELS[(j + k) % 4]}"
        lines.append(entry + "}")
    return "\n".join(lines) + "\n"


def options_for(folder: Path, state: Path):
    from storyloom.config import Options

    return Options(settings_file=str(folder / "storyloom.yaml"), state_dir=str(state), out_dir=str(folder / "out"),
                   quiet=True, plugins=("no:outputs",), autoload=False)


async def build_queue(folder: Path, n: int, strategy: str) -> tuple[Path, float]:
    """Submit the 50 jobs; return the queue's state folder and the seconds it took."""
    from storyloom.api import submit_job
    from storyloom.config import make_config
    from storyloom.store import open_store

    base = folder / f"queue-{strategy}"
    (base / "jobs").mkdir(parents=True)
    files = []
    for j in range(JOBS):
        path = base / "jobs" / f"job{j:02d}.yaml"
        path.write_text(job_yaml(j, n // JOBS + (j < n % JOBS), strategy))
        files.append(path)
    state = base / "state"
    t0 = time.perf_counter()
    with make_config(options_for(folder, state)) as config:
        async with open_store(config) as store:  # closing the last connection checkpoints the WAL into the file
            for path in files:
                await submit_job(path, config=config, store=store)
    return state, time.perf_counter() - t0


def fresh_copy(queue: Path, folder: Path, name: str) -> Path:
    from storyloom.plugins.stores.sqlite import DB_NAME  # the queue is copied as the sqlite backend's files

    state = folder / "copies" / name
    state.mkdir(parents=True)
    for suffix in ("", "-wal"):
        if (queue / (DB_NAME + suffix)).exists():
            shutil.copyfile(queue / (DB_NAME + suffix), state / (DB_NAME + suffix))
    return state


def query_plan(state: Path) -> list[str]:
    from storyloom.plugins.stores.sqlite import DB_NAME, _CLAIM_NEXT  # the sqlite backend's own claim statement

    conn = sqlite3.connect(state / DB_NAME)
    try:
        rows = conn.execute("EXPLAIN QUERY PLAN " + _CLAIM_NEXT,
                            ("owner", time.time(), JOB_TYPE, time.time(), "[]", 256)).fetchall()
    finally:
        conn.close()
    return [detail for *_ids, detail in rows]


async def decisions(folder: Path, state: Path, n: int, claim: int, stop_after: int | None = None) -> dict:
    """One drain of a fresh queue copy (or its first ``stop_after`` items), timed per claim and per stage."""
    from storyloom.attempt import _request, _route
    from storyloom.config import make_config
    from storyloom.job import Item, item_from_dict
    from storyloom.kernel import Worker
    from storyloom.store import open_store
    from storyloom.tokens import estimate_request_tokens

    clock = time.perf_counter
    with make_config(options_for(folder, state)) as config:
        async with open_store(config, create=False) as store:
            worker = Worker(config, burst=True)
            worker.store = store
            async with trio.open_nursery() as nursery:
                worker._background = nursery
                t0 = clock()
                for row in await store.list_jobs():
                    await worker._start_run(row.job_id)
                start_runs_s = clock() - t0
                assert len(worker.runs) == JOBS, len(worker.runs)
                # Warm-up, not timed: the template's first render compiles it;
                # the claim statement is prepared on a job type with no items.
                first = next(iter(worker.runs.values()))
                first.job_type.build_request(Item("warm-up", "p", 1), first.job)
                assert not await store.claim_next("no-such-type", 1, time.time(), worker.owner, [])

                batches = []  # (items, claim s, admit+decode s, request s, usable+estimate s, route s)
                chosen: dict[str, int] = {}
                claimed_total = 0
                while stop_after is None or claimed_total < stop_after:
                    limit = claim if claimed_total >= WINDOW else min(claim, WINDOW - claimed_total)
                    c0 = clock()
                    exclude = [job_id for job_id, run in worker.runs.items() if not run.accepting]
                    claimed = await store.claim_next(JOB_TYPE, limit, time.time(), worker.owner, exclude)
                    c1 = clock()
                    if not claimed:
                        break
                    decode = request_s = estimate = route = 0.0
                    for item_row in claimed:
                        a = clock()
                        run = await worker._admit(item_row)
                        item = item_from_dict(item_row.definition)
                        b = clock()
                        request = _request(run, item_row, item, item_row.attempts + 1)
                        c = clock()
                        usable = await run.pool.wait_for_usable([item.model] if item.model else list(run.plan.models))
                        estimated = estimate_request_tokens(request)
                        d = clock()
                        model, _why = _route(run, item, item_row, usable, request, estimated)
                        e = clock()
                        decode += b - a
                        request_s += c - b
                        estimate += d - c
                        route += e - d
                        chosen[model] = chosen.get(model, 0) + 1
                    batches.append((len(claimed), c1 - c0, decode, request_s, estimate, route))
                    claimed_total += len(claimed)
                nursery.cancel_scope.cancel()
            counts = {"pending": 0, "running": 0}
            for job_id in worker.runs:
                c = await store.counts(job_id)
                counts["pending"] += c["pending"]
                counts["running"] += c["running"]
    want = n if stop_after is None else min(n, stop_after)
    assert claimed_total == want and counts == {"pending": n - want, "running": want}, (claimed_total, counts)
    return {"start_runs_s": start_runs_s, "batches": batches, "chosen": chosen}


def window(batches: list[tuple], first: int | None = None, last: int | None = None) -> dict:
    """Per-item microseconds over the first (or last) claims holding ``first`` (``last``) items."""
    if last is not None:
        picked, total = [], 0
        for b in reversed(batches):
            if total >= last:
                break
            picked.append(b)
            total += b[0]
    elif first is not None:
        picked, total = [], 0
        for b in batches:
            if total >= first:
                break
            picked.append(b)
            total += b[0]
    else:
        picked = batches
    items = sum(b[0] for b in picked)
    us = [sum(b[i] for b in picked) / items * 1e6 for i in range(1, 6)]
    claim, decode, request, estimate, route = us
    return {"items": items, "claims": len(picked), "claim": claim, "decode": decode, "request": request,
            "estimate": estimate, "route": route, "route_total": decode + request + estimate + route,
            "total": claim + decode + request + estimate + route,
            # The decision proper: everything but the job type's prompt render.
            "decision": claim + decode + estimate + route}


def tenths(batches: list[tuple]) -> list[tuple[float, float]]:
    """(claim, total) us per item over each tenth of the drain, by claims."""
    n = sum(b[0] for b in batches)
    parts: list[list[tuple]] = [[] for _ in range(10)]
    done = 0
    for b in batches:
        parts[min(9, done * 10 // n)].append(b)
        done += b[0]
    out = []
    for part in parts:
        items = sum(b[0] for b in part) or 1
        out.append((sum(b[1] for b in part) / items * 1e6, sum(sum(b[1:6]) for b in part) / items * 1e6))
    return out


def best(runs: list[dict]) -> dict:
    """The run with the lowest total, and the spread of totals."""
    out = dict(min(runs, key=lambda r: r["total"]))
    out["totals"] = [round(r["total"], 1) for r in runs]  # in run order
    out["median_total"] = statistics.median(r["total"] for r in runs)
    return out


async def end_to_end(folder: Path, state: Path, n: int) -> dict:
    from storyloom.api import work
    from storyloom.config import make_config
    from storyloom.store import open_store_url

    config = make_config(options_for(folder, state))  # not configured: it only locates the store
    store = await open_store_url(config.store_url, stores=config.registries.stores, state_dir=config.state_dir,
                                 settings=config.settings, create=False)
    sizes: list[int] = []
    claim_next = store.claim_next

    async def counting_claim_next(*args, **kwargs):
        claimed = await claim_next(*args, **kwargs)
        sizes.append(len(claimed))
        return claimed

    store.claim_next = counting_claim_next  # this instance only: counts the worker's claims
    try:
        t0 = time.perf_counter()
        summaries = await work(burst=True, options=options_for(folder, state), store=store)
        wall = time.perf_counter() - t0
        completed = sum(s.counts["completed"] for s in summaries)
    finally:
        await store.aclose()
    assert len(summaries) == JOBS and completed == n, (len(summaries), completed)
    nonempty = [s for s in sizes if s]
    return {"wall_s": wall, "items_per_s": n / wall, "claims": len(nonempty),
            "mean_claim": sum(nonempty) / len(nonempty), "max_claim": max(nonempty),
            "statuses": sorted({s.status for s in summaries})}


def one(n: int, e2e: bool, claim: int) -> dict:
    from storyloom.plugins.stores.sqlite import DB_NAME  # the queue is copied as the sqlite backend's files

    clock = time.perf_counter
    t = clock()
    for _ in range(100_000):
        clock()
    timer_ns = (clock() - t) / 100_000 * 1e9

    folder = Path(tempfile.mkdtemp(prefix="storyloom-dispatch-"))

    def on_copy(queue: Path, fn, *args):
        """``fn`` on a fresh copy of the queue, deleted after."""
        state = fresh_copy(queue, folder, "copy")
        try:
            return fn(state, *args) if fn is query_plan else trio.run(fn, folder, state, *args)
        finally:
            shutil.rmtree(state)

    try:
        (folder / "storyloom.yaml").write_text(SETTINGS.replace("CLAIM", str(claim)))
        result: dict = {"n": n, "claim": claim, "timer_ns": round(timer_ns), "strategies": {}}
        for strategy in STRATEGIES:
            queue, build_s = trio.run(build_queue, folder, n, strategy)
            out: dict = {"build_s": round(build_s, 2), "db_mb": round((queue / DB_NAME).stat().st_size / 2**20, 1)}
            if "plan" not in result:
                result["plan"] = on_copy(queue, query_plan)
            drains = [on_copy(queue, decisions, n, claim) for _ in range(REPEATS)]
            heads = [on_copy(queue, decisions, n, claim, WINDOW) for _ in range(WINDOW_REPEATS - REPEATS)]
            by_tenth = [tenths(d["batches"]) for d in drains]
            out["tenths"] = [(min(t[i][0] for t in by_tenth), min(t[i][1] for t in by_tenth)) for i in range(10)]
            out["first"] = best([window(d["batches"], first=WINDOW) for d in drains + heads])
            out["drain"] = best([window(d["batches"]) for d in drains])
            out["last"] = best([window(d["batches"], last=WINDOW) for d in drains])
            out["start_runs_ms_per_job"] = min(d["start_runs_s"] for d in drains) / JOBS * 1e3
            out["chosen"] = dict(sorted(drains[0]["chosen"].items()))
            if e2e:
                runs = [on_copy(queue, end_to_end, n) for _ in range(E2E_REPEATS)]
                out["e2e"] = min(runs, key=lambda r: r["wall_s"])
                out["e2e"]["all_items_per_s"] = [round(r["items_per_s"]) for r in runs]
            shutil.rmtree(queue.parent)
            result["strategies"][strategy] = out
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    from storyloom.kernel import CLAIM_BATCH

    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("--")]
    e2e = "--no-e2e" not in flags
    claim = next((int(a.split("=", 1)[1]) for a in flags if a.startswith("--claim=")), CLAIM_BATCH)
    if "--one" in flags:
        n = int(next(a for a in args if not a.startswith("--")))
        print(json.dumps(one(n, e2e, claim)))
        return
    sizes = [int(a) for a in args if not a.startswith("--")] or [1_000, 10_000, 100_000]
    results = []
    for n in sizes:
        command = [sys.executable, __file__, "--one", str(n), *flags]
        out = subprocess.run(command, capture_output=True, text=True,
                             env={**os.environ, "STORYLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
        if out.returncode:
            sys.exit(out.stderr)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print("claim plan (EXPLAIN QUERY PLAN of claim_next):")
    for line in results[0]["plan"]:
        print(f"  {line}")
    print(f"\nus per item, best of {REPEATS} drains on fresh copies of the queue (first {WINDOW:,}: best of "
          f"{WINDOW_REPEATS}); claims of {claim} "
          f"(per-stage timers: {results[0]['timer_ns']} ns a call, 5 calls an item)")
    print(f"{'N':>8} {'strategy':<13} {'window':<11} {'claim':>6} {'decode':>7} {'request':>8} {'estim.':>7} "
          f"{'route':>6} {'route+':>7} {'total':>7} {'decision':>9}   spread: min median max of the totals")
    for r in results:
        for strategy, s in r["strategies"].items():
            for name, label in (("first", f"first {WINDOW:,}"), ("drain", "all"), ("last", f"last {WINDOW:,}")):
                w = s[name]
                if name != "first" and r["n"] <= WINDOW:
                    continue
                print(f"{r['n']:>8} {strategy:<13} {label:<11} {w['claim']:>6.1f} {w['decode']:>7.1f} "
                      f"{w['request']:>8.1f} {w['estimate']:>7.1f} {w['route']:>6.1f} {w['route_total']:>7.1f} "
                      f"{w['total']:>7.1f} {w['decision']:>9.1f}   "
                      f"{min(w['totals']):.0f} {w['median_total']:.0f} {max(w['totals']):.0f} ({len(w['totals'])} runs)")
    print("  claim: exclude list + store.claim_next; decode: _admit + item_from_dict; request: _request "
          "(build_request);\n  estim.: wait_for_usable + estimate_request_tokens; route: attempt._route; "
          "route+: decode..route; decision: total without request (the job type's prompt render)")
    print("\nclaim / total us per item by tenth of the drain (best of the drains for each tenth):")
    for r in results:
        if r["n"] < 10 * WINDOW:
            continue
        for strategy, s in r["strategies"].items():
            print(f"{r['n']:>8} {strategy:<13} " + " ".join(f"{c:.0f}/{t:.0f}" for c, t in s["tenths"]))
    print(f"\n{'N':>8} {'strategy':<13} {'db MB':>6} {'build s':>8} {'runs ms/job':>12} {'e2e items/s':>12} "
          f"{'e2e s':>7} {'claims':>7} {'mean claim':>11}  {'e2e runs items/s':<17} models chosen (one drain)")
    for r in results:
        for strategy, s in r["strategies"].items():
            e = s.get("e2e")
            if e:
                e2e_cols = (f"{e['items_per_s']:>12,.0f} {e['wall_s']:>7.2f} {e['claims']:>7} "
                            f"{e['mean_claim']:>11.1f}  {str(e['all_items_per_s']):<17}")
            else:
                e2e_cols = f"{'-':>12} {'-':>7} {'-':>7} {'-':>11}  {'-':<17}"
            print(f"{r['n']:>8} {strategy:<13} {s['db_mb']:>6} {s['build_s']:>8} "
                  f"{s['start_runs_ms_per_job']:>12.2f} {e2e_cols}  {s['chosen']}")


if __name__ == "__main__":
    main()
