"""Kernel overhead: N items through the kernel with the simulated provider at
zero latency and the durable SQLite store (WAL, synchronous=NORMAL).

    .venv/bin/python bench/overhead.py            # N = 10,000 and 100,000
    .venv/bin/python bench/overhead.py 20000      # one N
    .venv/bin/python bench/overhead.py --store postgresql://postgres@127.0.0.1/postgres 10000

``--store URL`` runs on that store instead of a fresh SQLite folder; a
``postgresql`` URL gets a fresh schema of its own for each N (``schema=``
added, dropped after), so runs never see each other's items.

Each N runs in a fresh process so peak RSS is its own. Prints items/s for the
run (dispatch to last commit; loading and storing the job are timed apart)
and the process's peak RSS. Results are not written to files (``-p no:outputs``):
the figure is the kernel's and the store's; every acknowledged completion is
committed to SQLite before its hook fires. Reports are off too (building one
reads every attempt: about 1 s at 100,000, measured apart).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

SETTINGS = """
models:
  zero: {provider: simulated, latency_ms: 0, output_tokens: 50, seed: 1}
default_models: [zero]
progress: []
reports: []
"""


def job_yaml(n: int) -> str:
    per = 10_000
    lines = ["job_id: bench", "job_type: qc_processing", "config: {max_parallel: 256}", "items:"]
    for start in range(0, n, per):
        count = min(per, n - start)
        lines.append(f"  - {{project_id: p{start // per}, chapters: 1-{count}}}")
    return "\n".join(lines) + "\n"


def fresh_store(url: str | None) -> tuple[str | None, object]:
    """(the URL to run on, a function that removes what the run stored)."""
    if not url or not url.startswith(("postgresql:", "postgres:")):
        return url, lambda: None
    import secrets

    import psycopg

    schema = f"bench_{secrets.token_hex(4)}"
    base = url.split("?", 1)[0]

    def drop() -> None:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return f"{url}{'&' if '?' in url else '?'}schema={schema}", drop


def one(n: int, store_url: str | None = None) -> dict:
    from storyloom.api import add_job
    from storyloom.config import Options, make_config
    from storyloom.kernel import Worker
    from storyloom.store import open_store

    folder = Path(tempfile.mkdtemp(prefix="storyloom-bench-"))
    (folder / "storyloom.yaml").write_text(SETTINGS)
    (folder / "job.yaml").write_text(job_yaml(n))
    store_url, drop = fresh_store(store_url)
    options = Options(state_dir=str(folder / "state"), out_dir=str(folder / "out"), quiet=True,
                      plugins=("no:outputs",), autoload=False, store=store_url)

    async def main() -> dict:
        t0 = time.perf_counter()
        with make_config(options, job_file=folder / "job.yaml") as config:
            job = config.load_job(folder / "job.yaml")
            worker = Worker(config, only=config.plan(job))
            async with open_store(config) as store:
                await add_job(store, job)
                del job  # from here on, items stream from the store
                t1 = time.perf_counter()
                summary, = await worker.run(store)
                t2 = time.perf_counter()
                counts = await store.counts("bench")
        assert counts["completed"] == n, counts
        return {"n": n, "load_and_store_s": round(t1 - t0, 2), "run_s": round(t2 - t1, 2),
                "items_per_s": round(n / (t2 - t1)), "status": summary.status}

    try:
        result = trio.run(main)
    finally:
        drop()
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main() -> None:
    args = sys.argv[1:]
    store: list[str] = []
    if "--store" in args:
        at = args.index("--store")
        store = args[at:at + 2]
        del args[at:at + 2]
    if len(args) > 1 and args[0] == "--one":
        print(json.dumps(one(int(args[1]), store[1] if store else None)))
        return
    sizes = [int(a) for a in args] or [10_000, 100_000]
    print(f"{'N':>8} {'items/s':>9} {'run s':>7} {'load+store s':>13} {'peak RSS MB':>12}")
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), *store], capture_output=True, text=True,
                             env={**os.environ, "STORYLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n']:>8} {r['items_per_s']:>9} {r['run_s']:>7} {r['load_and_store_s']:>13} {r['peak_rss_mb']:>12}")


if __name__ == "__main__":
    main()
