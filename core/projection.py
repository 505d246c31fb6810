"""What the store says a job's output folder holds, against what it holds.

:func:`expected_outputs` asks the plugins (``loom_job_outputs``) and renders
the reports; :func:`check_outputs` compares each with its file;
:func:`rebuild_outputs` writes them from the store.
"""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING, Any

from .atomic import remove_temporary
from .chosen import report_renderers
from .jobtype import event_fields
from .outputs import Output, OutputState, job_folder, take_problems, write_output
from .report import build_report, needs_review, snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from .job import Job
    from .roles import RunConfig
    from .store.protocol import Store

#: Job states in which a run has ended, so its end-of-batch outputs (reports,
#: results.jsonl) are due.
STOPPED_STATES = ("paused", "interrupted", "completed", "failed", "cancelled")


async def expected_outputs(config: "RunConfig", job: "Job", store: "Store") -> list[Output]:
    """Every output the store says ``job`` has: the plugins' (``loom_job_outputs``)
    and, once a run of it has ended, one report per configured renderer."""
    outputs: list[Output] = []
    for collect in config.hooks.job_outputs(job=job, store=store, config=config):
        # Raises, as loom_job_outputs documents: a partial projection must not pass as complete.
        outputs.extend(await collect())
    row = await store.get_job(job.job_id)
    if row is not None and row.state in STOPPED_STATES:
        renderers = report_renderers(config)
        if renderers:
            for _name, file_name, text in await render_reports(config, job, store, await snapshot(store, row),
                                                               renderers):
                outputs.append(Output(file_name, text, exact=False))
    return outputs


async def render_reports(config: "RunConfig", job: "Job", store: "Store", summary: Any,
                         renderers: list[tuple[str, Any]]) -> list[tuple[str, str, str]]:
    """``(name, file_name, text)`` of the report each of ``renderers`` (as
    :func:`storyloom.chosen.report_renderers` gives them) makes of ``job`` as
    ``summary`` (a run's Summary, or a :func:`~storyloom.report.snapshot`)
    says it stands. A renderer that raises is reported on stderr and left
    out: one buggy renderer costs only its own report. Never raises for a renderer."""
    if not renderers:
        return []
    job_types = config.registries.job_types
    shown = dict.fromkeys(name for stage in job.stage_types for name in event_fields(job_types.get(stage)))
    report = await build_report(store, job, summary, shown_fields=tuple(shown),
                                review=await needs_review(job_types, job, store))
    rendered = []
    for name, renderer in renderers:
        try:
            file_name, text = renderer(report)
        except Exception:
            print(f"storyloom: report renderer {name!r} failed:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            continue
        rendered.append((name, file_name, text))
    return rendered


async def check_outputs(config: "RunConfig", job: "Job", store: "Store") -> list[tuple[Output, OutputState]]:
    """Each expected output with its state on disk: present, missing or partial."""
    folder = job_folder(config, job.job_id)
    return [(output, OutputState(output.name, folder / output.name, _state(folder / output.name, output)))
            for output in await expected_outputs(config, job, store)]


async def rebuild_outputs(config: "RunConfig", job: "Job", store: "Store", *,
                          everything: bool = True) -> list[OutputState]:
    """Write the job's outputs from the store: every one (``everything``), or
    only those missing or partial. Returns each output's state after:
    ``rebuilt``, ``failed`` (with its problem), or ``present`` (left as it was).
    Temporary files a killed process left behind are removed."""
    states = []
    for output, state in await check_outputs(config, job, store):
        if state.state == "present" and not everything:
            states.append(state)
            continue
        problem = write_output(config, job.job_id, state.path, output.text)
        states.append(OutputState(output.name, state.path, "failed" if problem else "rebuilt", problem))
    take_problems(config, job.job_id)  # returned in the states, not left for a later run
    try:
        remove_temporary(job_folder(config, job.job_id))
    except OSError:
        pass  # a folder we cannot list holds no temporaries we could remove
    return states


def _state(path: "Path", output: Output) -> str:
    try:
        with path.open("rb") as f:
            data = f.read() if output.exact else f.read(1)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError:  # unreadable, or a folder in the file's place
        return "partial"
    if not output.exact:
        return "present" if data else "partial"
    return "present" if data == output.data() else "partial"
