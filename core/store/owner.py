"""Who holds a running item: owner strings and whether their process lives.

An owner is ``"{hostname}:{pid}:{random hex}"``. The store records it on
every item a kernel claims; after a crash, ``recover`` asks
:func:`owner_alive` which owners are gone and puts their items back to pending.
A running job records its worker's owner too (its runner), so that
:func:`shown_state` can show a job whose worker is gone as interrupted.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol import JobRow, Store


def make_owner() -> str:
    """A fresh owner string for this process.

    The random part tells apart two kernels in one process (or a pid reused
    after a reboot), so that one never completes an item the other claimed.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


def owner_alive(owner: str) -> bool:
    """Whether the process behind ``owner`` may still be running.

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



async def shown_state(store: Store, job: JobRow) -> tuple[str, str | None]:
    """The state and reason that ``status`` and reports show for ``job``, a
    job of ``store``. Reads only.

    A ``running`` job whose runner (the owner that set it running) is gone,
    and none of whose running items a live owner holds, shows as
    ``interrupted``, saying so and how to continue: its worker died, or the
    store refused its last write. Display only: nothing is written, and the
    next ``resume`` or ``work`` recovers the job by its items' owners.
    """
    if job.state != "running" or job.runner is None or owner_alive(job.runner):
        return job.state, job.reason
    if any(owner_alive(row.owner) for row in await store.running(job.job_id)):
        return job.state, job.reason  # another worker still runs some of it
    worker = job.runner.rsplit(":", 1)[0]  # host:pid, without the random part
    return "interrupted", f"its worker ({worker}) is gone; storyloom resume {job.job_id} continues"
