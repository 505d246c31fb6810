"""The store behind the kernel: jobs, items, attempts and results.

Every backend implements :class:`Store` and passes the conformance suite in
``tests/store_conformance.py``. Methods are async so that a networked backend
(PostgreSQL) fits; the SQLite backend answers without awaiting.

Item states: ``pending`` (waiting, possibly until ``not_before``), ``running``
(claimed by an owner), and the terminal ``completed``, ``failed``, ``skipped``.

The store is also the queue that every submitted job's items wait in: four
levels (``storyloom.job.Priority``), and within a level the order in which
items were submitted, across jobs. :meth:`Store.claim_next` serves one job
type from it; :meth:`Store.promote` raises levels as deadlines near and items
age. Items of a ``paused`` or ``cancelled`` job (HELD_JOB_STATES) are *held*:
no claim returns them. The job's state is the one source of truth for that:
a backend that copies it onto items changes the copy in the transaction that
changes the state, and callers hold or release items only through
:meth:`Store.set_job_state` and :meth:`Store.cancel`.

Backends are plugins (``loom_register_stores``): each registers a URL scheme
and a :class:`StoreOpener`. :func:`storyloom.store.open_store` is the one place
that chooses a URL (``--store``, ``$STORYLOOM_STORE``, ``store:`` in the
settings, else ``sqlite``) and calls the opener; nothing else opens a store or
its files.

**Pipelines** (schema of issue 10). An item belongs to one *stage* of its job
(``job_type``; claims serve items by it). An item may wait on others of its
job (``after``): it is *blocked*, not claimable and not in the queue views
(:meth:`Store.position`, :meth:`Store.queued`, :meth:`Store.queue_counts`),
while any of them is not ``completed``; an id not in the job (yet) counts as
not completed. The store keeps a count of the dependencies still open on each
item, decremented when one completes, so a claim never looks at blocked items.
When an item ends ``failed`` or ``skipped`` (a record, :meth:`Store.cancel`),
every pending item waiting on it, transitively, becomes ``skipped`` with
error ``blocked: <id> failed`` (or ``skipped``), error_kind None, in the same
transaction. A *gated* item (``gate``) is blocked until :meth:`Store.open_gate`
opens its gate (gates are global, named by the caller: ``proj-a:outline``).
Blocked items count as ``pending`` in :meth:`Store.counts`.

Leases and fences (the only thing that decides who holds a running item; no
process id is ever consulted):

- A claim gives each item a *lease* until ``lease_until`` = the store's own
  clock + ``lease_s`` (the database's clock, never the worker's, so workers
  on hosts whose clocks differ agree), and increments the item's *fence*, a
  counter that only ever grows. :class:`ClaimedItem` carries the new fence;
  the worker quotes it in every :class:`StartRecord`, :class:`AttemptRecord`
  and :meth:`Store.release` for that claim.
- The worker renews its leases (:meth:`Store.renew`, every lease/3); one that
  is no longer held (reaped, cancelled, finished elsewhere) is missing from
  the result, and the worker cancels that attempt at once.
- Any worker reaps (:meth:`Store.reap`): an item whose lease ran out goes
  back to ``pending`` with ``fence + 1``, so that the late outcome of the
  worker that lost it no longer matches.
- A start, record or release applies only if the item is still ``running``
  for that owner *and* its fence still matches, checked in the transaction
  that writes the outcome. A refused outcome is still recorded as an attempt
  (state ``stale``, with its tokens and cost, or ``skipped`` when a cancel
  took the item while it ran): what a provider may have billed is never lost.
- Workers also write heartbeats (:meth:`Store.heartbeat`) to a ``workers``
  table, for operators only (``storyloom status`` and ``queue``, and showing a
  job whose runner is gone as interrupted): never for correctness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, NamedTuple, Protocol, Sequence, runtime_checkable

from ..artifacts import Artifact, check_artifact
from ..errors import UsageError

if TYPE_CHECKING:
    from ..settings import Settings

#: Seconds a claim holds an item unless renewed (``queue: {lease: 30s}``).
DEFAULT_LEASE_S = 30.0
#: Most items one :meth:`Store.reap` call puts back.
REAP_BATCH = 1000
#: A worker whose heartbeat is older than this is forgotten by :meth:`Store.reap`.
WORKER_FORGET_S = 3600.0

ITEM_STATES = ("pending", "running", "completed", "failed", "skipped")
TERMINAL_STATES = ("completed", "failed", "skipped")
#: running: being processed; paused: stopped by policy or budget (resume continues);
#: interrupted: stopped by a signal; completed / failed: every item is terminal.
JOB_STATES = ("pending", "running", "paused", "interrupted", "completed", "failed", "cancelled")
#: Job states whose items are held: never claimed until the state changes.
HELD_JOB_STATES = ("paused", "cancelled")


class JobExists(Exception):
    """``add_job`` was given a job_id the store already holds."""


class StoreNotFound(UsageError):
    """An opener was asked for an existing store (``create=False``) and there is none.

    ``location`` says where it looked, with no secret in it (see
    :func:`storyloom.store.mask_url`)."""

    def __init__(self, message: str, location: str) -> None:
        super().__init__(message)
        self.location = location


class StoreVersionError(UsageError):
    """The store was written by a newer storyloom, with a schema this one does not know."""


class StoreUnavailable(Exception):
    """The store cannot be used: its folder is read-only or full, its database
    damaged (truncated, garbage) or locked by another process for longer than
    the backend waits.

    ``path`` is the file or folder at fault (never a secret: a URL is masked),
    ``reason`` what happened, ``hint`` what the operator can do. A backend
    raises it from any method and from its opener, after rolling back: what
    was committed before stays, nothing is half-written. The CLI prints
    ``storyloom: error: PATH: REASON; HINT`` and exits 5.
    """

    def __init__(self, path: str, reason: str, hint: str) -> None:
        super().__init__(f"{path}: {reason}; {hint}")
        self.path = str(path)
        self.reason = reason
        self.hint = hint


@dataclass(frozen=True)
class JobRow:
    job_id: str
    job_type: str
    state: str
    #: The job as ``storyloom.job.job_to_dict`` wrote it: enough to resume
    #: without the job file.
    definition: dict[str, Any]
    created_at: float
    updated_at: float
    reason: str | None = None
    #: The owner (:func:`storyloom.store.owner.make_owner`) of the worker that
    #: set the job ``running``; None in any other state. For display only
    #: (``status`` shows a running job whose runner is gone as interrupted):
    #: claims and recovery go by the items' owners, never by this.
    runner: str | None = None


@dataclass(frozen=True)
class NewItem:
    item_id: str
    level: int  # storyloom.job.Priority value: 0 critical ... 3 low
    state: str  # pending or skipped
    definition: dict[str, Any]  # storyloom.job.item_to_dict
    #: Epoch seconds: the item's own deadline, or its job's. promote() raises
    #: the level as it nears.
    deadline: float | None = None
    #: The item's stage (None: the job's job_type); claims serve it by this.
    job_type: str | None = None
    #: Item ids of the same job this item waits on (see the module docs).
    #: Given an id that is already failed or skipped, the item is stored
    #: ``skipped`` with ``blocked: <id> failed|skipped``.
    after: tuple[str, ...] = ()
    #: Only for a follow-up (:attr:`AttemptRecord.follow_ups`) of the item it
    #: names: in the same transaction, before that item's completion
    #: releases anyone, every item waiting on it waits on this one instead
    #: (an item waiting on both waits on this one once). Ignored in add_job.
    takes_over: str | None = None
    #: A gate name: blocked until :meth:`Store.open_gate` (at once if it is open).
    gate: str | None = None


#: The states an item is added in (add_job, follow-ups).
NEW_ITEM_STATES = ("pending", "skipped")


def check_new_items(items: Sequence[NewItem]) -> None:
    """What every backend refuses in items it is given to add, before it
    writes anything: a state other than NEW_ITEM_STATES, an item waiting on itself.

    :raises ValueError: naming the item.
    """
    for item in items:
        if item.state not in NEW_ITEM_STATES:
            raise ValueError(f"item {item.item_id!r}: state must be pending or skipped, not {item.state!r}")
        if item.item_id in item.after:
            raise ValueError(f"item {item.item_id!r} waits on itself")


def item_artifact_json(item_id: str, artifact: Artifact) -> str:
    """:func:`storyloom.artifacts.check_artifact` for a backend writing the
    artifact of item ``item_id``; the ValueError names the item."""
    try:
        return check_artifact(artifact)
    except ValueError as exc:
        raise ValueError(f"item {item_id!r}: {exc}") from None


@dataclass(frozen=True)
class ClaimedItem:
    item_id: str
    definition: dict[str, Any]
    attempts: int  # attempts already made
    last_model: str | None
    #: Attempts that did not count against max_retries (rate-limit rejections,
    #: a model taken out of the batch).
    free_attempts: int = 0
    first_started_at: float | None = None  # wall clock of the first attempt
    last_error_kind: str | None = None
    job_id: str = ""  # claim_next serves many jobs
    #: The item's fence for this claim: quote it in starts, records, releases and renewals.
    fence: int = 0


@dataclass(frozen=True)
class AttemptRecord:
    """One finished attempt, and the item state it leads to.

    ``state`` is the item's next state: ``completed``, ``failed``,
    ``pending`` (a retry, not before ``not_before``), or ``skipped`` (its job
    was cancelled while it ran). The attempt row, the item's state change and
    (when completed) the result commit together.
    """

    job_id: str
    item_id: str
    attempt: int
    state: str
    model: str | None
    started_at: float
    finished_at: float
    error_kind: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    not_before: float = 0.0
    #: True if this attempt does not count against max_retries.
    free: bool = False
    route: dict[str, Any] | None = None
    result_text: str | None = None
    result_data: dict[str, Any] | None = None
    #: A :class:`StartRecord` of this attempt was committed: the outcome
    #: completes the attempt row written then, rather than adding one.
    sent: bool = False
    #: The worst-case cost reserved when the attempt was sent.
    reserved_usd: float = 0.0
    #: The provider may have billed the attempt but no usage came back (a
    #: timeout): the store counts ``reserved_usd`` as "outcome unknown".
    outcome_unknown: bool = False
    #: Only with ``state == "completed"`` (else ValueError, nothing written):
    #: new items of the job, inserted in this transaction after the item is
    #: completed and before its waiters are released. An item_id the job
    #: already holds is left as it is (a completion repeated after a crash
    #: makes nothing twice). Each is queued after every item already
    #: submitted, at its own ``level``.
    follow_ups: tuple[NewItem, ...] = ()
    #: Only with ``state == "completed"``: artifacts committed with it; the
    #: store sets ``version`` (previous max + 1 per project_id, kind, key;
    #: 1 for the first), ``job_id``, ``item_id``, ``attempt`` and ``model``
    #: from this record, and ``created_at`` (``finished_at``). Content is
    #: stored as JSON and read back as equal JSON values.
    artifacts: tuple[Artifact, ...] = ()
    #: The fence of the claim this attempt ran under (:attr:`ClaimedItem.fence`).
    #: None: an old caller; then only the owner is checked, and a refused
    #: record is not stored as stale.
    fence: int | None = None


@dataclass(frozen=True)
class StartRecord:
    """An attempt began on ``model``: shown by ``storyloom status``.

    With ``attempt`` (1-based), the request is about to be sent: the store
    also writes the attempt's row in state ``sent`` with ``reserved_usd``
    (its worst-case cost), so that a call billed by the provider is on disk
    even if its outcome never arrives (a kill). The outcome completes that
    row (:attr:`AttemptRecord.sent`)."""

    job_id: str
    item_id: str
    model: str
    started_at: float
    attempt: int = 0
    reserved_usd: float = 0.0
    #: The claim's fence, as in :attr:`AttemptRecord.fence` (None: owner only).
    fence: int | None = None


@dataclass(frozen=True)
class RunningRow:
    item_id: str
    model: str | None
    started_at: float
    attempts: int
    owner: str
    #: Seconds until the lease runs out, on the store's clock (negative:
    #: expired, not yet reaped); None for an item claimed before leases.
    lease_left: float | None = None
    fence: int = 0


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says of itself in :meth:`Store.heartbeat`."""

    worker_id: str  # its owner string (storyloom.store.owner.make_owner)
    host: str
    pid: int
    started_at: float  # wall clock, for display
    lease_s: float  # its lease; its heartbeat counts as live for this long


@dataclass(frozen=True)
class WorkerRow:
    """A worker as :meth:`Store.workers` lists it (for operators only)."""

    worker_id: str
    host: str
    pid: int
    started_at: float
    beat_at: float  # the store's clock at its last heartbeat
    lease_s: float
    #: Its last heartbeat is no older than its lease (on the store's clock).
    alive: bool
    #: job_id -> how many items it holds running now.
    holding: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemRow:
    item_id: str
    state: str
    attempts: int
    last_model: str | None
    error_kind: str | None
    error: str | None
    definition: dict[str, Any]
    level: int = 2  # now, after any promotion
    route: dict[str, Any] | None = None  # of the last finished attempt
    free_attempts: int = 0  # of ``attempts``, those that did not count against max_retries


@dataclass(frozen=True)
class QueuedRow:
    """A pending item waiting in the queue (``Store.queued``)."""

    job_id: str
    item_id: str
    job_type: str
    level: int
    not_before: float
    deadline: float | None


class AttemptRow(NamedTuple):
    """One stored attempt, as reports read it. ``state`` is the item state the
    attempt led to: ``completed``, ``failed``, ``pending`` (a retry) or
    ``skipped``; or ``stale``: its worker had lost the item (its lease ran out
    and its fence moved on), so the outcome was refused, but what it cost counts.
    A tuple, because a report reads every attempt of a job (100,000 of them)."""

    item_id: str
    attempt: int
    state: str
    model: str | None
    started_at: float
    finished_at: float
    error_kind: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class GateRow(NamedTuple):
    """A gate (:meth:`Store.gates`): ``opened_at`` None while closed;
    ``waiting`` is how many pending items it blocks (0 once opened)."""

    name: str
    opened_at: float | None
    waiting: int


@dataclass
class CostTotals:
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    attempts: int = 0  # finished attempts
    #: Attempts sent whose outcome never arrived (in flight, lost with a
    #: killed worker, or timed out), and their worst-case cost: maybe billed.
    #: ``cost_usd`` leaves them out; budgets add ``unknown_usd``.
    unknown_attempts: int = 0
    unknown_usd: float = 0.0
    #: model -> cost_usd, input_tokens, output_tokens, attempts, completed
    #: (attempts that never reached a model are in the totals only).
    by_model: dict[str, dict[str, float | int]] = field(default_factory=dict)


class Store(Protocol):
    #: Where the store is, for messages ("no job 'x' in <location>"): a
    #: folder, or a URL with its password masked. Never a secret.
    location: str

    async def add_job(self, job: JobRow, items: Sequence[NewItem]) -> None:
        """Insert a job and its items in one transaction. Raise JobExists; raise
        ValueError for a duplicate item_id or an item state other than pending
        or skipped. On any error nothing is written.

        An item's ``after`` may name items later in ``items``; one naming a
        skipped item is stored skipped (``blocked: <id> skipped``), and so,
        transitively, are items waiting on it. A ``gate`` not known yet is
        created closed."""

    async def get_job(self, job_id: str) -> JobRow | None: ...

    async def list_jobs(self) -> list[JobRow]: ...

    async def set_job_definition(self, job_id: str, definition: dict[str, Any]) -> None:
        """Replace a job's stored definition. KeyError for an unknown job."""

    async def set_job_state(self, job_id: str, state: str, reason: str | None = None,
                            runner: str | None = None) -> None:
        """Raise KeyError for an unknown job, ValueError for a state not in JOB_STATES.

        ``runner`` (the worker's owner string) is stored with ``running``, in
        the same write as the state, and cleared by any other state (a
        ``runner`` given with another state is ignored).

        ``paused`` and ``cancelled`` hold the job's items (no claim returns
        them); any other state releases them. Items are not otherwise touched:
        to end a job's items too, use :meth:`cancel`."""

    async def cancel(self, job_id: str, reason: str) -> int:
        """Cancel a job in one transaction: its state becomes ``cancelled``
        (with ``reason``), and every pending or running item ``skipped`` with
        ``error = reason`` (blocked ones too, with the same reason). A worker's later ``record`` for an item it was
        running returns False. Returns how many items were skipped; KeyError
        for an unknown job."""

    async def delete_job(self, job_id: str) -> bool:
        """Remove a job and everything stored of it (items, attempts, results,
        its shared budget and holds) in one transaction, so that its id can be used again; False if there
        is no such job. Callers make sure no live worker runs it
        (``storyloom delete`` refuses one)."""

    async def recover(self, job_id: str, owner_alive: Callable[[str], bool]) -> int:
        """Deprecated (the kernel no longer calls it; use :meth:`reap`): put
        the job's items left ``running`` by owners that ``owner_alive`` calls
        dead back to ``pending``, ``fence + 1``. Returns how many."""

    async def claim(self, job_id: str, limit: int, now: float, owner: str,
                    only: Collection[str] | None = None, job_type: str | None = None,
                    lease_s: float = DEFAULT_LEASE_S) -> list[ClaimedItem]:
        """``now`` is wall-clock time (``time.time()``), stored as ``started_at``.

        Move up to ``limit`` ready pending items (``not_before <= now``) of
        the job (only those of stage ``job_type``, if given) to ``running``
        for ``owner``, highest level first, FIFO within a level (insertion
        order), and return them. Held and blocked items are left alone. One
        transaction; the cost per item does not grow with blocked items or,
        given ``job_type``, with items of other stages. ``only``: claim none
        but these item ids (``storyloom run --sample``).

        Each claimed item's lease runs until the store's clock + ``lease_s``
        (computed by the store, in the statement), and its fence is
        incremented; the returned :class:`ClaimedItem` carries the new fence.
        ``lease_s <= 0`` gives a lease that has already run out (the
        conformance tests use it to reap without sleeping)."""

    async def claim_next(
        self, job_type: str, limit: int, now: float, owner: str, exclude: Collection[str] = (),
        lease_s: float = DEFAULT_LEASE_S,
    ) -> list[ClaimedItem]:
        """Like :meth:`claim`, across every job except those in ``exclude``,
        items of stage ``job_type`` (whatever their job's own job_type): the
        next ready, pending, unheld, unblocked items in queue order
        (lowest level, then submission order across jobs), returned in that
        order. One transaction; the cost per item does not grow with the
        queue. Leases and fences as in :meth:`claim`."""

    async def renew(self, owner: str, held: Sequence[tuple[str, str, int]],
                    lease_s: float = DEFAULT_LEASE_S) -> set[tuple[str, str, int]]:
        """Extend the leases of ``held`` = (job_id, item_id, fence) triples to
        the store's clock + ``lease_s``, in one transaction, and return the
        triples that are still held: the item is ``running`` for ``owner``
        with that fence. A lease that ran out but was not yet reaped is still
        held (nobody else has the item) and is renewed. A triple missing from
        the result was lost (reaped, cancelled, released): its outcome will
        be refused, so the worker cancels that attempt."""

    async def reap(self, limit: int = REAP_BATCH) -> int:
        """Put up to ``limit`` items whose lease has run out (on the store's
        clock) back to ``pending``, ``fence + 1``, owner cleared, in one
        transaction; held items stay held. Each one's attempt rows still
        ``sent`` under the lost fence become ``stale`` (outcome unknown: their
        worst case still counts; a late outcome settles them with its real
        cost). Concurrent reapers never reap an item twice. Also forgets
        workers whose heartbeat is older than ``WORKER_FORGET_S``, and (a
        :class:`SharedLimits` store) moves the budget holds of workers with no
        live heartbeat to spent. Returns how many items it put back."""

    async def heartbeat(self, worker: WorkerInfo) -> None:
        """Insert or refresh ``worker``'s row in the workers table, its beat
        time from the store's clock. For operators only."""

    async def forget_worker(self, worker_id: str) -> None:
        """Remove a worker's row (it exits cleanly). Unknown ids are ignored.
        A :class:`SharedLimits` store then moves holds of workers with no live
        heartbeat (this one's included) to spent, as :meth:`reap` does."""

    async def workers(self) -> list[WorkerRow]:
        """Every known worker, oldest first, with whether its heartbeat is
        within its lease and what it holds running now."""

    async def next_ready_at(self, job_id: str, job_type: str | None = None) -> float | None:
        """The earliest ``not_before`` among pending items that are not
        blocked (held ones included), or None if there is none. Given
        ``job_type``: among the unheld, unblocked pending items of that stage."""

    async def next_queued_at(self, job_type: str) -> float | None:
        """The earliest ``not_before`` among pending, unheld, unblocked items of stage ``job_type``, or None."""

    async def promote(self, now: float, aging: float | None) -> int:
        """Promote pending items (held ones too) as time passes; returns how
        many items changed level. A level number only ever goes down.

        An item whose deadline is less than ``storyloom.job.CRITICAL_WITHIN_S``
        away becomes critical (0), less than ``HIGH_WITHIN_S`` away high (1).
        With ``aging`` (seconds), a low or normal item that has kept its level
        for ``aging`` seconds moves up one level; aging never makes an item
        critical."""

    async def position(self, job_id: str, item_id: str) -> int:
        """The item's 1-based place in the queue: among pending, unheld items
        of every job and type, by level then submission order. -1 if it is
        not pending or is held; KeyError if there is no such item."""

    async def queue_counts(self) -> dict[int, dict[str, int]]:
        """Pending, unheld items: level -> job_id -> count (non-zero counts only)."""

    async def queued(self, limit: int) -> list[QueuedRow]:
        """The first ``limit`` pending, unheld items in queue order."""

    async def record(
        self, records: Sequence[AttemptRecord], owner: str, started: Sequence[StartRecord] = ()
    ) -> list[bool]:
        """Commit finished attempts, and the models of started ones, in one
        transaction (group commit). ``started`` rows only set the running
        item's model and start time.

        Each record and each start applies only if its item is still
        ``running`` for ``owner`` and, when it carries a ``fence``, the item's
        fence still equals it; the returned list says which applied: one
        entry per record, then one per start. A start that did not apply
        (the item was cancelled, or recovered by another owner) writes
        nothing, and its request must not be sent. This is what keeps a
        completed item from ever completing twice, and a record for an item
        that :meth:`cancel` skipped from applying. A record whose state is not
        completed, failed, pending or skipped (a running item of a cancelled
        job) raises ValueError and nothing is written. The attempt row keeps
        the record's state, so ``pending`` there means "this attempt led to a
        retry".

        A ``started`` row with an ``attempt`` that applies also writes that
        attempt's row, state ``sent``; a record with ``sent`` completes the
        newest ``sent`` row of its item and attempt number (an older one, of
        a worker that died, stays ``sent``: outcome unknown). A ``sent``
        record refused because :meth:`cancel` skipped its item still settles
        that ``sent`` row, state ``skipped``, with the record's real cost
        (the provider billed it); the item is left as the cancel left it.

        A completed record's ``follow_ups`` and ``artifacts`` are written in
        the same transaction (see :class:`AttemptRecord`); then the items
        waiting on it lose one open dependency. A failed or skipped record
        skips the items waiting on it (see the module docs).

        A refused record that carries a ``fence`` is *stale* unless a cancel
        skipped its item under that same fence (then as above): it is still
        stored as an attempt in state ``stale`` with its tokens, cost and
        ``outcome_unknown``: it completes the newest ``sent`` or ``stale`` row
        of its item, attempt number and fence (the one its start wrote, or
        :meth:`reap` marked), or adds a row if there is none. The item, and
        any newer claim of it, are not touched. :meth:`costs`,
        :meth:`spend_by_model` and :meth:`attempts` count stale attempts like
        any finished one. A start whose fence no longer matches writes
        nothing (its request must not be sent)."""

    async def release(self, job_id: str, owner: str, item_ids: Sequence[str] | None = None,
                      fences: Sequence[int] | None = None) -> int:
        """Put the items ``owner`` holds ``running`` (every one, or those in
        ``item_ids``) back to ``pending``, lease cleared. With ``fences``
        (one per item id), an item goes back only if its fence still matches:
        a stale release is ignored. Returns how many."""

    async def counts(self, job_id: str) -> dict[str, int]:
        """Items per state; every state in ITEM_STATES is a key."""

    async def running(self, job_id: str) -> list[RunningRow]:
        """The job's running items, longest-running first, with their leases."""

    async def items(self, job_id: str, state: str | None = None) -> list[ItemRow]: ...

    async def result(self, job_id: str, item_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """The stored result text and data of a completed item."""

    async def costs(self, job_id: str) -> CostTotals:
        """Totals over every finished attempt, failed ones included, and
        (``unknown_*``) over attempts whose outcome is unknown."""

    async def spend_by_model(self) -> dict[str, float]:
        """USD spent on each model over every job's attempts (a model's
        ``max_spend_usd`` counts against this), the worst case of attempts
        whose outcome is unknown included."""

    async def attempts(self, job_id: str) -> list[AttemptRow]:
        """Every finished attempt of the job, in the order they finished
        (attempts still ``sent`` are not listed: see :meth:`costs`)."""

    async def requeue_failed(self, job_id: str, kinds: Collection[str] | None = None) -> int:
        """Put the job's ``failed`` items (only those whose ``error_kind`` is
        in ``kinds``, if given) back to ``pending`` in one transaction, ready
        now, and return how many. Their attempt rows stay; their attempt
        count goes on, but every earlier attempt becomes free, so each item
        has its whole ``max_retries`` again, and its retry window restarts
        (``first_started_at`` is cleared). Held if the job is held; the job's
        state is the caller's to change. KeyError for an unknown job.

        Items skipped because a requeued item failed (error ``blocked: <id>
        failed``) are pending again in the same transaction, waiting on their
        open dependencies as before (and on their gate if it is still closed);
        they are not counted."""

    async def open_gate(self, name: str) -> int:
        """Open a gate (creating it open if unknown; opening an open gate
        does nothing): its pending items are no longer blocked by it (they may
        still wait on dependencies). Returns how many items it blocked. One
        transaction."""

    async def gates(self) -> list[GateRow]:
        """Every gate named by an item or opened, by name."""

    async def artifacts(self, project_id: str, kinds: Collection[str] | None = None) -> list[Artifact]:
        """Every stored version of the project's artifacts (only ``kinds``,
        if given), oldest first (the order they were committed; versions of
        one key ascend)."""

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notice that some process
        submitted a job or paused or cancelled one; True if a notice came
        (also one that came since the last call), False if the time ran out.

        Best effort: a notice may be lost (a dropped connection, a pooler
        that does not pass them), so a caller looks for changes itself after
        every return, and the timeout is its poll interval. A backend without
        notices sleeps the timeout. One waiting task per store."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RateTake:
    """One take of a model's shared rate limits (:meth:`SharedLimits.rate_take`),
    for one request or a batch of them taken together (their costs summed).

    The store keeps, per model, the theoretical arrival time (TAT) of its
    requests GCRA and of its tokens GCRA, and a cool-down end, all on the
    store's clock. The caller turns its limits into seconds (so the store
    needs no rpm, tpm or burst of its own): ``*_cost`` is what the take
    adds to each TAT (units x 60 / per-minute rate; 0 without that limit),
    ``*_slack`` how far ahead of the TAT it may still go (a full bucket less
    the units taken and the headroom; ``inf``, the default, for a budget with no
    limit, which then never holds a request). ``token_adjust`` (seconds) is charged
    (positive) or refunded (negative, never making the bucket fuller than
    full) on the tokens TAT first: earlier requests' reconciled usage."""

    model: str
    request_cost: float = 0.0
    request_slack: float = math.inf
    token_cost: float = 0.0
    token_slack: float = math.inf
    token_adjust: float = 0.0


class RateTaken(NamedTuple):
    """What a take returned, every time on the store's clock (epoch seconds)."""

    now: float  # when the store computed it
    send_at: float  # when the request may go (>= now)
    requests_tat: float  # the TATs after the take
    tokens_tat: float
    cool_until: float  # the model's cool-down end (in the past when none)


class BudgetState(NamedTuple):
    """A job's shared budget (:meth:`SharedLimits.budget_state`)."""

    cap: float
    spent: float
    reserved: float  # held by reservations not settled yet
    holds: int  # how many


@runtime_checkable
class SharedLimits(Protocol):
    """An optional method group: rate limits and budgets shared by every
    worker of the store (docs/scale-out.md, "Shared rate limits and budgets").

    A backend that has it is used for them; one that has not leaves each
    process its own limiter and budget (:func:`shares_limits`). Every method
    is one transaction; the clock is the store's (PostgreSQL's
    ``clock_timestamp()``; SQLite's is the host's wall clock, which is one
    clock for every process on one host).

    **Rate limits.** :meth:`rate_take` is one transaction that locks the
    model's row and reads the clock once, then one UPDATE: it applies the
    take's ``token_adjust``, computes ``send_at`` = the latest of now, the
    cool-down end and each TAT less its slack, and moves each TAT to
    ``max(TAT, send_at) + cost``. A model's row is made by its first take.
    Takes are served in the order they commit, so the waits they hand out
    keep every worker together under the limit. :meth:`rate_cool_down`
    (a 429) moves the cool-down end, only ever later, so that every later
    take of any worker waits for it.

    **Budgets.** A job's ``budget_usd`` is a row (cap, spent, reserved).
    :meth:`budget_reserve` is one conditional update (``spent + reserved +
    amount <= cap``) that also writes a *hold* of the reserving worker;
    :meth:`budget_settle` ends a hold, moving its amount out of reserved and
    the real cost into spent. A hold dies with its worker: :meth:`Store.reap`
    and :meth:`Store.forget_worker` move the holds of workers with no live
    heartbeat (none, older than their lease, or forgotten) to spent, whole:
    what a lost worker may have sent counts at its worst case, as its
    ``sent`` attempts do in :meth:`Store.costs`. A late settle of a hold so
    reclaimed changes nothing (its worst case is already spent).
    :meth:`Store.delete_job` removes the job's row and holds.
    """

    async def rate_take(self, take: RateTake) -> RateTaken: ...

    async def rate_cool_down(self, model: str, seconds: float) -> float:
        """Hold every take of ``model`` until the store's clock + ``seconds``
        (only ever extends); returns the cool-down end."""

    async def budget_open(self, job_id: str, cap: float, spent: float) -> BudgetState:
        """Make the job's budget row if there is none, starting at ``spent``
        (what its stored attempts already cost); an existing row keeps its
        spent and reservations and takes the new ``cap``."""

    async def budget_state(self, job_id: str) -> BudgetState | None: ...

    async def budget_reserve(self, job_id: str, owner: str, amount: float) -> int | None:
        """Reserve ``amount`` if spent + reserved + amount <= cap: returns the
        new hold's id, or None (nothing changed). KeyError if the job has no
        budget row."""

    async def budget_settle(self, hold_id: int, actual: float) -> bool:
        """End a hold, charging ``actual``; False if it was reclaimed already
        (nothing changes then)."""


def shares_limits(store: Any) -> bool:
    """Whether ``store`` offers :class:`SharedLimits`."""
    return isinstance(store, SharedLimits)


class StoreOpener(Protocol):
    """What a backend registers with ``register(scheme, opener)``.

    ``await opener(url, state_dir=..., settings=..., create=...)`` returns an
    open :class:`Store`; the caller closes it with ``aclose()``.

    - ``url``: the whole store URL as the user gave it, its scheme already
      matched (lower case) to this opener: ``sqlite:///abs/dir``,
      ``postgresql://user:pass@host/db``, or the bare scheme name
      (``sqlite``), meaning "this backend's default place". The opener parses
      the rest; a malformed one is a :class:`storyloom.UsageError`.
    - ``state_dir``: the state folder (``--state-dir``, else
      ``$STORYLOOM_HOME``, else ``./.storyloom``), for backends that keep
      files and for the bare-scheme default.
    - ``settings``: the run's :class:`storyloom.settings.Settings` (SQLite
      reads ``synchronous``).
    - ``create``: False for commands that only read or act on what is stored
      (``status``, ``queue``, ``report``, ``pause``, ``cancel``, ``resume
      --detach``): then raise :class:`StoreNotFound` rather than create a
      store where there is none. True: create it if needed.

    An opener must never put a password in an error message or in
    ``Store.location``: use :func:`storyloom.store.mask_url`. Storage that
    cannot be used (read-only, full, damaged, locked, unreachable) is a
    :class:`StoreUnavailable`, from the opener and from every method.
    """

    async def __call__(self, url: str, *, state_dir: Path, settings: "Settings", create: bool) -> Store: ...
