"""Outputs are a projection of the store.

Every file a job leaves in ``<out_dir>/<job_id>/`` -- result files,
``results.jsonl``, reports, a plugin's books -- is computed from the store
alone: plugins say what a job's outputs are (``loom_job_outputs``), and the
kernel renders the reports. :mod:`storyloom.projection` compares that with
what is on disk (present, missing, partial) and writes what the store says;
``storyloom outputs JOB_ID [--rebuild]`` and ``resume`` use it. This module
holds the types plugins use and the one way to write an output.

A write that fails (a full disk, a read-only folder) never stops the kernel:
:func:`write_output` records an :class:`OutputProblem` for the job's run, the
item stays completed in the store, and the run ends with exit code 6
(:data:`storyloom.summary.EXIT_OUTPUTS`) and one line saying what to do.
"""

from __future__ import annotations

import errno as errnos
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .atomic import write_atomic, write_atomic_bytes

if TYPE_CHECKING:
    from .contracts import HookConfig

_STASH_KEY = "storyloom.outputs.problems"
_FREE_SPACE = {errnos.ENOSPC, errnos.EFBIG, getattr(errnos, "EDQUOT", errnos.ENOSPC)}
_NOT_WRITABLE = {errnos.EACCES, errnos.EPERM, errnos.EROFS}
_IN_THE_WAY = {errnos.ENOTDIR, errnos.EISDIR, errnos.EEXIST}


@dataclass(frozen=True)
class Output:
    """One file of a job's outputs, as the store says it should be.

    ``name`` is relative to the job's output folder (``<out_dir>/<job_id>/``).
    ``text`` is written as UTF-8; ``bytes`` as they are (a binary file: an
    EPUB). ``exact``: the file must hold ``text`` byte for byte; False for
    outputs rendered anew each time (reports: their durations are taken at
    the run's end), which are present when the file exists and is not empty."""

    name: str
    text: str | bytes
    exact: bool = True

    def data(self) -> bytes:
        """The file's bytes."""
        text = self.text
        return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class OutputState:
    """An :class:`Output` and how it stands on disk: present, missing or partial
    (the file exists with other content), or after a rebuild ``rebuilt`` or
    ``failed`` (with ``problem``)."""

    name: str
    path: Path
    state: str
    problem: "OutputProblem | None" = None


@dataclass(frozen=True)
class OutputProblem:
    """A write that failed: the path, the errno (None if the OS gave none) and its meaning."""

    path: Path
    errno: int | None
    reason: str


def job_folder(config: "HookConfig", job_id: str) -> Path:
    return config.out_dir / job_id


def write_output(config: "HookConfig", job_id: str, path: Path, text: str | bytes) -> OutputProblem | None:
    """Write one of a job's outputs atomically: ``text`` as UTF-8, bytes as
    they are. A failure (OSError: disk full, folder read-only, a file in the
    way) is recorded for the job's run, which then ends with exit code 6, and
    returned; nothing is raised."""
    try:
        if isinstance(text, bytes):
            write_atomic_bytes(path, text)
        else:
            write_atomic(path, text)
    except OSError as err:
        return record_problem(config, job_id, path, err)
    return None


def record_problem(config: "HookConfig", job_id: str, path: Path, err: OSError) -> OutputProblem:
    """Record a failed write of one of a job's outputs made another way (a
    binary file a plugin writes itself) as :func:`write_output` does: exit 6."""
    problem = OutputProblem(path, err.errno, err.strerror or str(err))
    config.stash.setdefault(_STASH_KEY, {}).setdefault(job_id, []).append(problem)
    return problem


def take_problems(config: "HookConfig", job_id: str) -> tuple[OutputProblem, ...]:
    """The write failures recorded for ``job_id`` since the last call, cleared."""
    return tuple(config.stash.get(_STASH_KEY, {}).pop(job_id, ()))


def problem_line(job_id: str, problems: Sequence[OutputProblem]) -> str:
    """One line for an operator: the first failed path, what the errno means,
    how many more failed, and what to do."""
    first = problems[0]
    code = errnos.errorcode.get(first.errno, "") if first.errno is not None else ""
    more = f", and {len(problems) - 1} more output(s)" if len(problems) > 1 else ""
    return (f"cannot write {first.path}: {first.reason}{f' ({code})' if code else ''}{more}; "
            f"{_advice(first.errno)}, then run `storyloom outputs {job_id} --rebuild` "
            f"(or `storyloom resume {job_id}`)")


def _advice(errno: int | None) -> str:
    if errno in _FREE_SPACE:
        return "free space on that disk (or choose another --out-dir)"
    if errno in _NOT_WRITABLE:
        return "make the output folder writable (or choose another --out-dir)"
    if errno in _IN_THE_WAY:
        return "move away what is in the way of the output folder (or choose another --out-dir)"
    return "fix the output folder (or choose another --out-dir)"


def missing_line(job_id: str, outputs: Iterable[Mapping[str, Any]]) -> str | None:
    """One line naming the outputs (as :func:`as_dict` gives them) still
    missing or partial, or None when there are none."""
    bad = [o for o in outputs if o["state"] in ("missing", "partial")]
    if not bad:
        return None
    more = f", and {len(bad) - 1} more" if len(bad) > 1 else ""
    return (f"{bad[0]['path']} is {bad[0]['state']}{more}; rebuild from the store with "
            f"`storyloom outputs {job_id} --rebuild`")


def as_dict(state: OutputState) -> dict[str, Any]:
    out: dict[str, Any] = {"name": state.name, "path": os.fspath(state.path), "state": state.state}
    if state.problem is not None:
        out["error"] = state.problem.reason
    return out
