"""A worker's leases: renew what it holds, cancel what it lost, reap what others lost.

Every claim leases its items for ``lease`` seconds on the store's clock and
gives each a fence (see :mod:`storyloom.store.protocol`). The
:class:`LeaseKeeper` of a worker remembers the fence of every item it holds
and, every lease/3:

- beats the worker's heartbeat (for ``status`` and ``queue``, never for
  correctness);
- renews its leases; an item missing from the renewal was lost (another
  worker reaped it, or a cancel took it), and its attempt is cancelled at
  once, since its outcome would be refused anyway;
- reaps expired leases of any worker, so that a killed, stopped or cut-off
  worker's items are back in the queue within ``lease + lease/3``.

When renewals fail (the store is unreachable), an item whose lease may have
run out (its last renewal was sent more than ``lease`` ago, on this worker's
clock) is treated as lost too: another worker may hold it by now.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import trio

from .store import ClaimedItem, Store, StoreUnavailable, WorkerInfo


@dataclass
class Held:
    """One item this worker holds under ``fence``."""

    fence: int
    #: trio clock: the lease surely holds until then (measured from before
    #: the claim or renewal was sent, so never later than the store's).
    until: float
    scope: trio.CancelScope | None = None
    lost: bool = False


class LeaseKeeper:
    """The leases of one worker (``owner``) on ``store``."""

    def __init__(self, store: Store, owner: str, lease_s: float, wake: Callable[[], None]) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self.every = lease_s / 3
        self._wake = wake
        self.held: dict[tuple[str, str], Held] = {}
        self.info = WorkerInfo(owner, socket.gethostname(), os.getpid(), time.time(), lease_s)
        #: Items whose lease this worker lost, and items it reaped (of any worker).
        self.lost = 0
        self.reaped = 0
        self._failing = False

    # -- what the worker tells it ------------------------------------------

    def claimed(self, items: Iterable[ClaimedItem], asked_at: float) -> None:
        """``items`` were just claimed; ``asked_at`` is the trio clock before the claim was sent."""
        for item in items:
            key = (item.job_id, item.item_id)
            older = self.held.get(key)
            if older is not None and not older.lost:
                # Claimed again under a new fence: the old claim was lost before a renewal said so.
                self._lose(item.job_id, item.item_id, older)
            self.held[key] = Held(item.fence, asked_at + self.lease_s)

    def attach(self, claimed: ClaimedItem, scope: trio.CancelScope) -> None:
        """The attempt at ``claimed`` runs in ``scope``: losing the lease cancels it."""
        held = self.held.get((claimed.job_id, claimed.item_id))
        if held is None or held.fence != claimed.fence:
            scope.cancel()  # lost before the attempt began
            return
        held.scope = scope
        if held.lost:
            scope.cancel()

    def done(self, job_id: str, item_id: str, fence: int) -> None:
        """The claim is over (its outcome or release was committed)."""
        held = self.held.get((job_id, item_id))
        if held is not None and held.fence == fence:
            del self.held[(job_id, item_id)]

    # -- the chore -----------------------------------------------------------

    async def run(self) -> None:
        """Forever: a tick now, then one every lease/3."""
        while True:
            await self.tick()
            await trio.sleep(self.every)

    async def tick(self) -> None:
        """Beat, renew, cancel what was lost, reap. A store that fails is
        tried again next tick; it only makes leases run out here."""
        store = self.store
        try:
            await store.heartbeat(self.info)
            held = [(job_id, item_id, h.fence) for (job_id, item_id), h in self.held.items() if not h.lost]
            asked_at = trio.current_time()
            kept = await store.renew(self.owner, held, self.lease_s) if held else set()
            for job_id, item_id, fence in held:
                current = self.held.get((job_id, item_id))
                if current is None or current.fence != fence:
                    continue  # finished (or claimed again) while the renewal ran
                if (job_id, item_id, fence) in kept:
                    current.until = asked_at + self.lease_s
                else:
                    self._lose(job_id, item_id, current)
            reaped = await store.reap()
        except StoreUnavailable as exc:
            if not self._failing:
                print(f"storyloom: cannot renew leases: {exc.path}: {exc.reason}; trying again every "
                      f"{self.every:g}s", file=sys.stderr)
            self._failing = True
            now = trio.current_time()
            for (job_id, item_id), h in list(self.held.items()):
                if not h.lost and h.until <= now:
                    self._lose(job_id, item_id, h)
            return
        self._failing = False
        if reaped:
            self.reaped += reaped
            self._wake()  # claimable again, maybe here

    def _lose(self, job_id: str, item_id: str, held: Held) -> None:
        held.lost = True
        self.lost += 1
        print(f"storyloom: lost the lease of {job_id}/{item_id}: its attempt is cancelled "
              "(another worker has it, or it was cancelled)", file=sys.stderr)
        if held.scope is not None:
            held.scope.cancel()

    async def leave(self) -> None:
        """The worker exits cleanly: its heartbeat row goes."""
        try:
            await self.store.forget_worker(self.owner)
        except StoreUnavailable:
            pass  # it ages out: status shows the worker gone after one lease
