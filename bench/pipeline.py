"""The studio pipeline at scale: B books x C chapters on the simulated provider with latency.

    .venv/bin/python bench/pipeline.py                    # 20 books x 12 chapters, 200 ms mean latency
    .venv/bin/python bench/pipeline.py --books 5 --chapters 4 --latency-ms 100

One job (``character_generation`` then plot_outlining, chapter_writing,
qc_processing, export), one item per book, in a temporary folder (removed
after) with its own ``storyloom.yaml`` and ``projects/``: every stage has
``max_parallel`` 64 (enough capacity: at most B items of a stage are ever
ready at once), the simulated model answers after ``latency_ms`` x U(0.5,
1.5), no faults, no injected QC failures (a rewrite lengthens a book's
critical path on purpose; the bound below would not count it). Reports and
the live view are off; outputs are written (the EPUBs too).

Printed:

* **makespan**: from the first attempt's start to the last attempt's end
  (stored attempt times), and for reference the wall time of
  ``storyloom.api.run_job`` (with loading the job, creating the SQLite store
  in the temporary folder, storing the job, and closing);
* **critical-path bound**: a book cannot finish before its chain of
  sequential steps has run: characters -> outline -> chapter 1 -> ... ->
  chapter C -> chapter C's QC -> export, each at least its own attempt's
  duration (``finished_at - started_at`` of its stored attempts). The bound
  is the longest such chain over the books, from the attempts this very run
  made (so the latency draws are the run's own), and, for reference, the
  nominal ``(C + 3) x latency_ms`` (export is code: ~0);
* the **ratio** makespan / bound (target: <= 1.2), and the mean gap between a
  chapter's completion and the start of the next chapter of its book (the
  dispatcher's share of the critical path).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

SETTINGS = """\
models:
  sim:
    provider: simulated
    latency_ms: {latency}
    output_tokens: 300
    seed: 3
default_models: [sim]
progress: []
reports: []
batch_limits:
  character_generation: {{max_parallel: 64}}
  plot_outlining: {{max_parallel: 64}}
  chapter_writing: {{max_parallel: 64}}
  qc_processing: {{max_parallel: 64}}
  export: {{max_parallel: 64}}
"""

PROJECT = """\
project_id: {pid}
title: Bench book {n}
language: {language}
genre: mystery
premise: A lighthouse keeper receives messages from a ship that sank long ago (book {n}).
style: {{tone: dry, pov: third person, tense: past}}
chapters: {chapters}
chapter_length: {length}
"""


def build(folder: Path, books: int, chapters: int, latency: float) -> Path:
    (folder / "projects").mkdir(parents=True)
    (folder / "storyloom.yaml").write_text(SETTINGS.format(latency=latency))
    lines = ["job_id: bench-pipeline", "job_type: character_generation", "then:",
             "  - {job_type: plot_outlining}", "  - {job_type: chapter_writing}", "  - {job_type: qc_processing}",
             "  - {job_type: export}", "items:"]
    for n in range(books):
        pid = f"book-{n:02d}"
        language = "th" if n % 2 else "en"
        (folder / "projects" / f"{pid}.yaml").write_text(PROJECT.format(
            pid=pid, n=n, language=language, chapters=chapters, length=300 if language == "th" else 150))
        lines.append(f"  - {{item_id: {pid}, project_id: {pid}}}")
    job = folder / "job.yaml"
    job.write_text("\n".join(lines) + "\n")
    return job


async def measure(job: Path, folder: Path, books: int, chapters: int) -> dict:
    from storyloom import api
    from storyloom.config import Options
    from storyloom.store import open_store
    from storyloom.config import make_config

    options = Options(state_dir=str(folder / "state"), out_dir=str(folder / "out"), quiet=True,
                      settings_file=str(folder / "storyloom.yaml"))
    t0 = time.perf_counter()
    summary = await api.run_job(job, options=options)
    wall = time.perf_counter() - t0
    with make_config(options, start_dir=str(folder)) as config:
        async with open_store(config, create=False) as store:
            attempts = await store.attempts("bench-pipeline")
    spans: dict[str, list[tuple[float, float]]] = {}
    for a in attempts:
        spans.setdefault(a.item_id, []).append((a.started_at, a.finished_at))
    chains = []
    gaps = []
    for n in range(books):
        pid = f"book-{n:02d}"
        chain = [pid, f"{pid}-outline", *(f"{pid}-ch{c}" for c in range(1, chapters + 1)),
                 f"{pid}-ch{chapters}-qc", f"{pid}-export"]
        chains.append(sum(end - start for item in chain for start, end in spans.get(item, ())))
        for c in range(2, chapters + 1):
            before, this = spans.get(f"{pid}-ch{c - 1}"), spans.get(f"{pid}-ch{c}")
            if before and this:
                gaps.append(min(s for s, _ in this) - max(e for _, e in before))
    epubs = sorted(p.name for p in (folder / "out" / "bench-pipeline").glob("*.epub"))
    makespan = max(a.finished_at for a in attempts) - min(a.started_at for a in attempts)
    return {"status": summary.status, "counts": summary.counts, "makespan": makespan, "wall": wall,
            "bound": max(chains),
            "gap_mean": statistics.mean(gaps) if gaps else 0.0, "gap_max": max(gaps) if gaps else 0.0,
            "epubs": len(epubs), "attempts": len(attempts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=20)
    parser.add_argument("--chapters", type=int, default=12)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="storyloom-bench-pipeline-"))
    cwd = os.getcwd()
    try:
        job = build(folder, args.books, args.chapters, args.latency_ms)
        os.chdir(folder)
        result = trio.run(measure, job, folder, args.books, args.chapters)
    finally:
        os.chdir(cwd)
        shutil.rmtree(folder, ignore_errors=True)
    nominal = (args.chapters + 3) * args.latency_ms / 1000
    print(f"{args.books} books x {args.chapters} chapters, simulated latency {args.latency_ms:g} ms mean "
          f"(U(0.5, 1.5)); status {result['status']}, {result['attempts']} attempts, {result['epubs']} EPUBs")
    print(f"  makespan            {result['makespan']:8.2f} s (first attempt's start to last attempt's end; "
          f"run_job's wall time, with loading, storing and closing: {result['wall']:.2f} s)")
    print(f"  critical-path bound {result['bound']:8.2f} s (this run's attempts; nominal {nominal:.2f} s)")
    print(f"  ratio               {result['makespan'] / result['bound']:8.3f} (target <= 1.2); "
          f"vs nominal {result['makespan'] / nominal:.3f}")
    print(f"  chapter -> next chapter gap: mean {result['gap_mean'] * 1000:.1f} ms, "
          f"max {result['gap_max'] * 1000:.1f} ms")
    if result["status"] != "completed":
        print(f"  NOT completed: {result['counts']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
