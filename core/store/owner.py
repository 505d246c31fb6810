"""Who holds a running item: owner strings, and whether a job's worker is gone.

An owner is ``"{hostname}:{pid}:{random hex}"``: the worker's id. The store
records it on every item a kernel claims, with a lease and a fence; leases,
never process ids, decide when an item goes back to the queue
(:meth:`~storyloom.store.protocol.Store.reap`). A running job records its
worker's owner too (its runner), so that :func:`shown_state` can show a job
whose worker is gone (its heartbeat older than its lease) as interrupted.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol import JobRow, RunningRow, Store


def make_owner() -> str:
    """A fresh owner string for this process.

    The random part tells apart two kernels in one process (or a pid reused
    after a reboot), so that one never completes an item the other claimed.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


def owner_alive(owner: str) -> bool:
    """Whether the process behind ``owner`` may still be running: only for
    the deprecated ``Store.recover``; the kernel never asks (a pid says
    nothing across hosts, containers or PID namespaces).

    Errs on "alive": wrongly calling an owner dead lets two processes run
    the same item, while wrongly calling it alive only leaves its items
    running until the owner exits or its host comes back.

    - Another host: we cannot see its processes, so assume alive.
    - This host: alive if the pid exists (even if owned by another user).
      A pid reused by an unrelated process also reads as alive.
    - A string not in the ``make_owner`` format: assume alive.
    """
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return True
    host, pid_text, _token = parts
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid <= 0:  # os.kill(0, ...) would mean "my process group"
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) terminates the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to another user
        return True
    return True



async def held_live(store: Store, job_id: str, live: set[str] | None = None) -> list[RunningRow]:
    """The job's running items that a live worker holds: its heartbeat is
    within its lease (``live``: those workers' ids, if already read), or the
    item's own lease has not run out. No pid is consulted."""
    if live is None:
        live = {w.worker_id for w in await store.workers() if w.alive}
    return [row for row in await store.running(job_id)
            if row.owner in live or (row.lease_left is not None and row.lease_left > 0)]


async def shown_state(store: Store, job: JobRow) -> tuple[str, str | None]:
    """The state and reason that ``status`` and reports show for ``job``, a
    job of ``store``. Reads only.

    A ``running`` job whose runner (the worker that set it running) is gone,
    its heartbeat older than its lease (or no heartbeat at all), and none of
    whose running items is held by a live worker or under a lease that has
    not run out, shows as ``interrupted``, saying so and how to continue: its
    worker died, was stopped or cut off, or the store refused its last write.
    Display only: nothing is written; once the leases run out, the next
    ``resume`` or ``work`` reaps the items and goes on.
    """
    if job.state != "running" or job.runner is None:
        return job.state, job.reason
    live = {w.worker_id for w in await store.workers() if w.alive}
    if job.runner in live or await held_live(store, job.job_id, live):
        return job.state, job.reason  # its worker, or another one, still runs some of it
    worker = job.runner.rsplit(":", 1)[0]  # host:pid, without the random part
    return "interrupted", f"its worker ({worker}) is gone; storyloom resume {job.job_id} continues"
