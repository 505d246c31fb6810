"""Many ``storyloom work`` processes on one PostgreSQL store (issue 11).

    .venv/bin/python bench/scaleout.py limits [-n 10000] [-w 1,2,4,8]
    .venv/bin/python bench/scaleout.py throughput [-n 6000] [-w 1,2,4]

Each run creates a fresh database on ``$STORYLOOM_BENCH_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) and drops it after.
Workers are real processes (``python -m storyloom.cli work --burst -q``)
started together once the job is submitted.

``limits``: a ``prompts`` job of N requests (default 10,000) against the fake
provider (``tests/fakeprovider.py``, real HTTP on 127.0.0.1, in this
process) at RPM 1,200 and TPM 100,000 in one-second buckets, 200 ms latency,
with 1, 2, 4 and 8 workers. Makespan is storyloom's view, from the first
attempt's start to the last one's finish (the attempts table; the startup of
the processes is not in it), and "fake s" the fake's, from the first request
it admitted to the last reply; "wall s" is from starting the workers until
the last one exited. The bound is ``bench/ratelimit.py``'s ``lower_bound``. Targets: at most 0.1% of requests rate-limited (429) and makespan at
most 1.10 x the bound at every worker count. Without a limiter shared in the
store (branch ``shared-limits``) each worker keeps its own bucket, so N
workers ask N times the limit and draw 429s.

``throughput``: N items of a zero-latency ``simulated`` model (qc_processing,
max_parallel 256 for the job and its type), on PostgreSQL with 1, 2 and 4 workers and on SQLite with
one. Items/s counts from the first attempt's start to the last one's finish
(from the attempts table). Each worker times its store calls (a wrapper
around every ``PostgresStore``/``SQLiteStore`` method, including the hop to
the store's thread), and the table shows where the store time went: claim,
renew, record (complete), and the rest. Target: at least 1,500 items/s in
all on PostgreSQL, on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

SERVER = os.environ.get("STORYLOOM_BENCH_POSTGRES", "").strip() or "postgresql://postgres@127.0.0.1:5432/postgres"
#: Environment of a worker that times its store calls into this file.
TIMINGS_ENV = "STORYLOOM_BENCH_TIMINGS"


# -- a database for one run


class Database:
    """A fresh database on SERVER, dropped on exit."""

    def __enter__(self) -> str:
        import psycopg

        self.name = f"storyloom_bench_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return urlunsplit(urlsplit(SERVER)._replace(path="/" + self.name))

    def __exit__(self, *exc) -> None:
        import psycopg

        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    env["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.update(extra or {})
    return env


def storyloom(*args: str, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"storyloom {' '.join(args)} failed ({done.returncode}): {done.stderr}")


def run_workers(n: int, folder: Path, env: dict[str, str], timed: bool = False) -> tuple[float, list[dict]]:
    """Start ``n`` burst workers together; wait for all. (wall seconds, each one's store timings)."""
    procs, files = [], []
    start = time.perf_counter()
    for i in range(n):
        worker_env = dict(env)
        argv = [sys.executable, "-m", "storyloom.cli", "work", "--burst", "-q"]
        if timed:
            files.append(folder / f"timings-{i}.json")
            worker_env[TIMINGS_ENV] = str(files[-1])
            argv = [sys.executable, str(Path(__file__).resolve()), "_timed_worker"]
        procs.append(subprocess.Popen(argv, cwd=folder, env=worker_env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _out, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"a worker exited {proc.returncode}: {err[-2000:]}")
    wall = time.perf_counter() - start
    return wall, [json.loads(f.read_text()) for f in files]


# -- limits


def limits(n: int, worker_counts: list[int]) -> None:
    from fakeprovider import FakeProviderServer
    from ratelimit import ENGLISH, LATENCY, RPM, TPM, Scenario, lower_bound, requests_jsonl, settings

    scenario = Scenario("scaleout", ENGLISH, RPM, TPM, n=n)
    bound = lower_bound(scenario)
    print(f"limits: {n} requests, RPM {RPM}, TPM {TPM}, one-second buckets, {LATENCY * 1000:.0f} ms latency; "
          f"bound {bound:.2f} s")
    print(f"{'workers':>7} {'makespan s':>10} {'fake s':>8} {'bound s':>8} {'ratio':>6} {'429s':>6} {'429 %':>6} "
          f"{'requests':>8} {'completed':>9} {'wall s':>7}  target")
    for workers in worker_counts:
        folder = Path(tempfile.mkdtemp(prefix=f"storyloom-scaleout-limits-{workers}-"))
        with Database() as url, FakeProviderServer() as server:
            server.configure("m1", rpm=RPM, tpm=TPM, latency=LATENCY, seed=1)
            env = environment(server.env())
            (folder / "storyloom.yaml").write_text(settings(server, scenario) + f"store: '{url}'\n")
            (folder / "requests.jsonl").write_text(requests_jsonl(ENGLISH, n))
            (folder / "job.yaml").write_text("job_id: limits\njob_type: prompts\ninput: requests.jsonl\n"
                                             "config: {max_parallel: 32, timeout_per_item: 60}\n")
            storyloom("submit", "job.yaml", cwd=folder, env=env)
            wall, _ = run_workers(workers, folder, env)
            stats = server.stats("m1")
            first, last, completed = _drain_window(folder, url, "limits")
        admitted = stats.admitted_at
        window = admitted[-1] - admitted[0] + LATENCY if admitted else float("nan")
        makespan = last - first
        share = stats.rate_limited / max(1, stats.requests)
        ok = completed == n and share <= 0.001 and makespan <= 1.10 * bound
        print(f"{workers:>7} {makespan:>10.2f} {window:>8.2f} {bound:>8.2f} {makespan / bound:>6.3f} "
              f"{stats.rate_limited:>6} {share * 100:>6.2f} {stats.requests:>8} {completed:>9} {wall:>7.2f}  "
              f"{'ok' if ok else 'MISSED'}", flush=True)


# -- throughput

THROUGHPUT_SETTINGS = """\
models:
  sim: {provider: simulated, latency_ms: 0, output_tokens: 5, seed: 1, price: {input: 1.0, output: 1.0}}
default_models: [sim]
progress: []
reports: []
batch_limits: {qc_processing: {max_parallel: 256}}
"""


def throughput(n: int, worker_counts: list[int]) -> None:
    print(f"throughput: {n} items, zero-latency simulated model")
    print(f"{'store':<10} {'workers':>7} {'items/s':>8} {'drain s':>8} {'wall s':>7} {'store s':>8} "
          f"{'claim':>6} {'renew':>6} {'record':>6} {'other':>6}  (store time share; target)")
    runs = [("sqlite", 1)] + [("postgresql", w) for w in worker_counts]
    for backend, workers in runs:
        folder = Path(tempfile.mkdtemp(prefix=f"storyloom-scaleout-tp-{backend}-{workers}-"))
        env = environment()
        if backend == "postgresql":
            with Database() as url:
                rate, drain, wall, timings, call_counts = _throughput_run(folder, env, n, workers, url)
        else:
            rate, drain, wall, timings, call_counts = _throughput_run(folder, env, n, workers, None)
        total = sum(t for per in timings for t in per.values())
        share = {k: sum(per.get(k, 0.0) for per in timings) / total if total else 0.0
                 for k in ("claim_next", "renew", "record")}
        other = 1.0 - sum(share.values())
        target = "" if backend == "sqlite" else ("ok" if rate >= 1500 else "MISSED")
        print(f"{backend:<10} {workers:>7} {rate:>8.0f} {drain:>8.2f} {wall:>7.2f} {total:>8.2f} "
              f"{share['claim_next']:>6.0%} {share['renew']:>6.0%} {share['record']:>6.0%} {other:>6.0%}  {target}",
              flush=True)
        busiest = {}
        for per in timings:
            for k, v in per.items():
                busiest[k] = busiest.get(k, 0.0) + v
        top = sorted(busiest.items(), key=lambda kv: -kv[1])[:6]
        calls: dict[str, int] = {}
        for per in call_counts:
            for k, v in per.items():
                calls[k] = calls.get(k, 0) + v
        print("           store seconds (calls) by method: "
              + ", ".join(f"{k} {v:.2f} ({calls.get(k, 0)})" for k, v in top), flush=True)


def _throughput_run(folder: Path, env: dict[str, str], n: int, workers: int, url: str | None):
    (folder / "storyloom.yaml").write_text(THROUGHPUT_SETTINGS + (f"store: '{url}'\n" if url else ""))
    (folder / "job.yaml").write_text(
        "job_id: tp\njob_type: qc_processing\nconfig: {max_parallel: 256, max_retries: 0, timeout_per_item: 1m}\n"
        "items:\n" + "".join(f"  - {{item_id: i{k}}}\n" for k in range(n)))
    storyloom("submit", "job.yaml", cwd=folder, env=env)
    wall, timings = run_workers(workers, folder, env, timed=True)
    first, last, completed = _drain_window(folder, url)
    if completed != n:
        sys.exit(f"only {completed} of {n} items completed")
    drain = last - first
    return n / drain, drain, wall, [t["seconds"] for t in timings], [t["calls"] for t in timings]


def _drain_window(folder: Path, url: str | None, job_id: str = "tp") -> tuple[float, float, int]:
    """(first attempt's start, last one's finish, completed items), read through the store API."""
    import trio

    from storyloom.plugins.stores.postgresql import open_postgres
    from storyloom.plugins.stores.sqlite import SQLiteStore

    async def read():
        if url:
            store = await open_postgres(url, state_dir=None, settings=None, create=False)
        else:
            store = SQLiteStore.open(folder / ".storyloom")
        try:
            rows = await store.attempts(job_id)
            done = (await store.counts(job_id))["completed"]
        finally:
            await store.aclose()
        return min(r.started_at for r in rows), max(r.finished_at for r in rows), done

    return trio.run(read)


def _timed_worker() -> int:
    """``storyloom work --burst -q`` with each store method's seconds summed, written at exit."""
    import atexit
    import functools
    import inspect

    from storyloom.cli import main
    from storyloom.plugins.stores.postgresql import PostgresStore
    from storyloom.plugins.stores.sqlite import SQLiteStore

    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(name, method):
        @functools.wraps(method)
        async def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
                calls[name] = calls.get(name, 0) + 1
        return wrapper

    for cls in (PostgresStore, SQLiteStore):
        for name, method in list(vars(cls).items()):
            if not name.startswith("_") and name not in ("wait_for_change", "aclose") \
                    and inspect.iscoroutinefunction(method):
                setattr(cls, name, timed(name, method))
    path = Path(os.environ[TIMINGS_ENV])
    atexit.register(lambda: path.write_text(json.dumps({"seconds": seconds, "calls": calls})))
    return main(["work", "--burst", "-q"])


def main() -> None:
    if sys.argv[1:2] == ["_timed_worker"]:
        sys.exit(_timed_worker())
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["limits", "throughput"])
    parser.add_argument("-n", type=int, help="requests (limits, default 10000) or items (throughput, default 6000)")
    parser.add_argument("-w", "--workers", help="worker counts, comma-separated (default 1,2,4,8 / 1,2,4)")
    args = parser.parse_args()
    if args.what == "limits":
        counts = [int(w) for w in (args.workers or "1,2,4,8").split(",")]
        limits(args.n or 10_000, counts)
    else:
        counts = [int(w) for w in (args.workers or "1,2,4").split(",")]
        throughput(args.n or 6000, counts)
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
