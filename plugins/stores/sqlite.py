"""The bundled ``sqlite`` store backend: one file, ``<folder>/storyloom.db``, in WAL mode.

Chosen by a ``sqlite`` store URL (see :func:`folder_of`); the default store.

Methods are ``async`` to fit :class:`~storyloom.store.protocol.Store`, but
they call :mod:`sqlite3` directly and never await: each call is a short
transaction on the caller's thread. Every write runs in ``BEGIN IMMEDIATE``
... ``COMMIT``, so a second process (``storyloom status``, or another run)
waits on the busy timeout instead of failing, and readers never block.
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Sequence
from urllib.parse import unquote

import trio

from storyloom import hookimpl
from storyloom.artifacts import Artifact
from storyloom.job import CRITICAL_WITHIN_S, HIGH_WITHIN_S
from storyloom.store.protocol import (
    HELD_JOB_STATES,
    ITEM_STATES,
    JOB_STATES,
    AttemptRecord,
    AttemptRow,
    BudgetState,
    ClaimedItem,
    CostTotals,
    GateRow,
    ItemRow,
    JobExists,
    JobRow,
    NewItem,
    QueuedRow,
    REAP_BATCH,
    WORKER_FORGET_S,
    DEFAULT_LEASE_S,
    RateTake,
    RateTaken,
    RunningRow,
    StartRecord,
    WorkerInfo,
    WorkerRow,
    StoreNotFound,
    StoreUnavailable,
    StoreVersionError,
    check_new_items,
    item_artifact_json,
)
from storyloom.errors import UsageError
from storyloom.store.opening import mask_url

DB_NAME = "storyloom.db"
#: Stored in ``PRAGMA user_version``; bump it (and add a migration) when the schema changes.
SCHEMA_VERSION = 7
BUSY_TIMEOUT_S = 10.0
#: Seconds to wait for another process's write lock, instead of BUSY_TIMEOUT_S.
BUSY_TIMEOUT_ENV = "STORYLOOM_SQLITE_BUSY_TIMEOUT"
#: The longest busy timeout accepted (a day): SQLite takes whole milliseconds in an int.
MAX_BUSY_TIMEOUT_S = 86400.0
SYNCHRONOUS_MODES = ("NORMAL", "FULL")
#: States an AttemptRecord may move an item to.
RECORD_STATES = ("completed", "failed", "pending", "skipped")
#: States an item may start in.


# Version 2's columns of items. They come last, with the defaults that ALTER
# TABLE ADD COLUMN needs, so that a migrated version 1 table and a fresh one
# are the same.
_ITEM_COLUMNS_2 = (
    "job_type TEXT NOT NULL DEFAULT ''",
    "qseq INTEGER NOT NULL DEFAULT 0",  # submission order, across every job
    "deadline REAL",
    "level_since REAL NOT NULL DEFAULT 0",  # when the item got its level: aging counts from it
    "held INTEGER NOT NULL DEFAULT 0",  # 1 while the job is paused or cancelled (see _set_job_state)
)
# Version 3's columns of attempts, last for the same reason. An attempt row is
# written when the request is sent (state 'sent'); its outcome completes it.
_ATTEMPT_COLUMNS_3 = (
    "reserved_usd REAL NOT NULL DEFAULT 0",  # the worst-case cost reserved when it was sent
    "unknown INTEGER NOT NULL DEFAULT 0",  # 1: maybe billed, no usage known (sent, or timed out)
)

# Version 4's column of jobs, last for the same reason: the owner of the
# worker that set the job running (NULL in every other state), for display.
_JOB_COLUMNS_4 = (
    "runner TEXT",
)
# Version 6's columns (leases and fences), last for the same reason. The
# lease is on this database's clock (_DB_NOW); the fence only ever grows.
_ITEM_COLUMNS_6 = (
    "lease_until REAL",
    "fence INTEGER NOT NULL DEFAULT 0",
)
#: The claim's fence an attempt ran under (NULL: written before version 6).
_ATTEMPT_COLUMNS_6 = (
    "fence INTEGER",
)
_TABLES_6 = (
    # For operators only: who works on this store, and since when.
    """CREATE TABLE IF NOT EXISTS workers (
        worker_id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        beat_at REAL NOT NULL,
        lease_s REAL NOT NULL
    )""",
)
_INDEXES_6 = (
    # reap: running items by lease end.
    "CREATE INDEX IF NOT EXISTS items_lease ON items (lease_until) WHERE state = 'running'",
)
# Version 7: rate limits and budgets shared by every process on this host
# (issue 11). One row per model holds both GCRAs and the cool-down, so that
# a take computes one send time for both in one single-row UPDATE.
_TABLES_7 = (
    """CREATE TABLE IF NOT EXISTS rate_limits (
        model TEXT PRIMARY KEY,
        requests_tat REAL NOT NULL DEFAULT 0,
        tokens_tat REAL NOT NULL DEFAULT 0,
        cool_until REAL NOT NULL DEFAULT 0,
        sent_at REAL NOT NULL DEFAULT 0,
        taken_at REAL NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS budgets (
        job_id TEXT PRIMARY KEY,
        cap REAL NOT NULL,
        spent REAL NOT NULL DEFAULT 0,
        reserved REAL NOT NULL DEFAULT 0
    )""",
    # A reservation not settled yet, and the worker that holds it.
    """CREATE TABLE IF NOT EXISTS budget_holds (
        hold_id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        amount REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS budget_holds_job ON budget_holds (job_id)",
    "CREATE INDEX IF NOT EXISTS budget_holds_owner ON budget_holds (owner)",
)
#: The database's clock, in epoch seconds: every lease is computed and
#: compared on it, never on a worker's clock. (unixepoch('now', 'subsec')
#: needs SQLite 3.42; this works on every version storyloom supports.)
_DB_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

# Version 5's columns of items (pipelines), last for the same reason.
# ``held`` becomes two flags: 1 while the job is paused or cancelled, 2 while
# the item is blocked (``waiting`` > 0, or ``gate`` set); ``held = 0`` stays
# "claimable", so the queue's indexes serve pipelines unchanged.
_ITEM_COLUMNS_5 = (
    "waiting INTEGER NOT NULL DEFAULT 0",  # dependencies not completed yet: rows of deps naming the item
    "gate TEXT",  # the gate that blocks it, while that gate is closed
)
#: The ``held`` flags.
HELD_JOB, HELD_BLOCKED = 1, 2

_TABLES = (
    f"""CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        job_type TEXT NOT NULL,
        state TEXT NOT NULL,
        definition TEXT NOT NULL,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        {', '.join(_JOB_COLUMNS_4)}
    )""",
    f"""CREATE TABLE IF NOT EXISTS items (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        item_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        level INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        free_attempts INTEGER NOT NULL DEFAULT 0,
        first_started_at REAL,
        last_model TEXT,
        owner TEXT,
        started_at REAL,
        not_before REAL NOT NULL DEFAULT 0,
        error_kind TEXT,
        error TEXT,
        definition TEXT NOT NULL,
        route TEXT,
        {', '.join(_ITEM_COLUMNS_2)},
        {', '.join(_ITEM_COLUMNS_5)},
        {', '.join(_ITEM_COLUMNS_6)},
        PRIMARY KEY (job_id, item_id)
    )""",
    f"""CREATE TABLE IF NOT EXISTS attempts (
        job_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        model TEXT,
        state TEXT NOT NULL,
        error_kind TEXT,
        error TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        route TEXT,
        {', '.join(_ATTEMPT_COLUMNS_3)},
        {', '.join(_ATTEMPT_COLUMNS_6)},
        FOREIGN KEY (job_id, item_id) REFERENCES items (job_id, item_id)
    )""",
    """CREATE TABLE IF NOT EXISTS results (
        job_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        text TEXT NOT NULL,
        data TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (job_id, item_id),
        FOREIGN KEY (job_id, item_id) REFERENCES items (job_id, item_id)
    )""",
)
# Version 5: dependencies, gates and artifacts.
_TABLES_5 = (
    # One row per open dependency: item_id waits on after_id (of the same
    # job). Deleted when after_id completes; kept when it fails, so that a
    # requeued item can bring back what it blocked.
    """CREATE TABLE IF NOT EXISTS deps (
        job_id TEXT NOT NULL,
        after_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        PRIMARY KEY (job_id, after_id, item_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS gates (
        name TEXT PRIMARY KEY,
        opened_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS artifacts (
        project_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        content TEXT NOT NULL,
        job_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        model TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (project_id, kind, key, version)
    )""",
)
_INDEXES_5 = (
    "CREATE INDEX IF NOT EXISTS deps_item ON deps (job_id, item_id)",
    "CREATE INDEX IF NOT EXISTS items_gate ON items (gate, state) WHERE gate IS NOT NULL",
    # next_ready_at: as items_ready, without blocked items.
    "CREATE INDEX IF NOT EXISTS items_unblocked ON items (job_id, not_before, state, held) "
    "WHERE state = 'pending' AND held < 2",
    # claim of one stage of one job (storyloom run of a pipeline).
    "CREATE INDEX IF NOT EXISTS items_claim_stage ON items (job_id, job_type, level, seq, not_before, state, held) "
    "WHERE state = 'pending' AND held = 0",
    "CREATE INDEX IF NOT EXISTS artifacts_project ON artifacts (project_id, kind)",
)

# The queue's indexes are partial: they hold only the rows they serve
# (pending items, or running ones), so an item that moves on leaves them with
# one delete, and finished items, most of a big store, are in none of them.
# state and held, constant in each, come last only so that SQLite reads the
# index alone (it checks a partial index's terms against the columns).
_INDEXES = (
    # claim walks this in order; with not_before in it, the ready check
    # needs no table lookup.
    "CREATE INDEX IF NOT EXISTS items_claim ON items (job_id, level, seq, not_before, state, held) "
    "WHERE state = 'pending' AND held = 0",
    # next_ready_at: the earliest not_before of a job's pending items, held or not.
    "CREATE INDEX IF NOT EXISTS items_ready ON items (job_id, not_before, state) WHERE state = 'pending'",
    # recover and running: a job's running items and their owners.
    "CREATE INDEX IF NOT EXISTS items_running ON items (job_id, owner, state) WHERE state = 'running'",
    "CREATE INDEX IF NOT EXISTS items_seq ON items (job_id, seq)",
    # claim_next walks this in queue order; not_before and job_id in it make
    # the ready and exclude checks without a table lookup.
    "CREATE INDEX IF NOT EXISTS items_queue ON items (job_type, level, qseq, not_before, job_id, state, held) "
    "WHERE state = 'pending' AND held = 0",
    # next_queued_at, as items_ready does for one job.
    "CREATE INDEX IF NOT EXISTS items_queue_ready ON items (job_type, not_before, state, held) "
    "WHERE state = 'pending' AND held = 0",
    # The whole queue, every job type: position counts along it, queued reads
    # its head, queue_counts groups it (job_id makes that a covering read).
    "CREATE INDEX IF NOT EXISTS items_position ON items (level, qseq, job_id, state, held) "
    "WHERE state = 'pending' AND held = 0",
    # promote: one seek per level for deadlines near (only items that have
    # one), and for levels kept long.
    "CREATE INDEX IF NOT EXISTS items_deadline ON items (level, deadline) "
    "WHERE state = 'pending' AND deadline IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS items_aging ON items (level, level_since) WHERE state = 'pending'",
    # add_job's MAX(qseq) without a scan; unique because it is an order.
    "CREATE UNIQUE INDEX IF NOT EXISTS items_qseq ON items (qseq)",
    "CREATE INDEX IF NOT EXISTS attempts_item ON attempts (job_id, item_id, attempt)",
)
# Version 3: the attempts in flight, which an outcome completes.
_INDEXES_3 = (
    "CREATE INDEX IF NOT EXISTS attempts_sent ON attempts (job_id, item_id, attempt) WHERE state = 'sent'",
)
# INDEXED BY: walking items_claim in order beats items_ready plus a sort,
# whatever the planner's statistics say.
_CLAIM = f"""
UPDATE items SET state = 'running', owner = ?, started_at = ?, fence = fence + 1, lease_until = {_DB_NOW} + ?
WHERE rowid IN (
    SELECT rowid FROM items INDEXED BY items_claim
    WHERE job_id = ? AND state = 'pending' AND held = 0 AND not_before <= ?
    ORDER BY level, seq LIMIT ?
)
RETURNING level, seq, item_id, definition, attempts, last_model, free_attempts, first_started_at, error_kind,
    fence
"""
_CLAIM_STAGE = f"""
UPDATE items SET state = 'running', owner = ?, started_at = ?, fence = fence + 1, lease_until = {_DB_NOW} + ?
WHERE rowid IN (
    SELECT rowid FROM items INDEXED BY items_claim_stage
    WHERE job_id = ? AND job_type = ? AND state = 'pending' AND held = 0 AND not_before <= ?
    ORDER BY level, seq LIMIT ?
)
RETURNING level, seq, item_id, definition, attempts, last_model, free_attempts, first_started_at, error_kind,
    fence
"""
_NEXT_STAGE_READY_AT = """
SELECT MIN(not_before) FROM items INDEXED BY items_claim_stage
WHERE job_id = ? AND job_type = ? AND state = 'pending' AND held = 0
"""
_NEXT_READY_AT = """
SELECT MIN(not_before) FROM items INDEXED BY items_unblocked WHERE job_id = ? AND state = 'pending' AND held < 2
"""
# The same walks, among the item ids of one JSON array (a sample run's).
_ONLY = "AND not_before <= ? AND item_id IN (SELECT value FROM json_each(?))"
_CLAIM_ONLY = _CLAIM.replace("AND not_before <= ?", _ONLY)
_CLAIM_STAGE_ONLY = _CLAIM_STAGE.replace("AND not_before <= ?", _ONLY)
# The same walk along the queue of one job type. exclude comes as one JSON
# array, so the statement is the same whatever its length.
_CLAIM_NEXT = f"""
UPDATE items SET state = 'running', owner = ?, started_at = ?, fence = fence + 1, lease_until = {_DB_NOW} + ?
WHERE rowid IN (
    SELECT rowid FROM items INDEXED BY items_queue
    WHERE job_type = ? AND state = 'pending' AND held = 0 AND not_before <= ?
        AND job_id NOT IN (SELECT value FROM json_each(?))
    ORDER BY level, qseq LIMIT ?
)
RETURNING level, qseq, job_id, item_id, definition, attempts, last_model, free_attempts, first_started_at,
    error_kind, fence
"""
_NEXT_QUEUED_AT = """
SELECT MIN(not_before) FROM items INDEXED BY items_queue_ready
WHERE job_type = ? AND state = 'pending' AND held = 0
"""
# One statement per target level, and `level IN (...)` rather than
# `level > ?`: each level is then its own seek into the index, so a pass
# with nothing to do reads next to nothing however many items wait.
_PROMOTE_CRITICAL = """
UPDATE items INDEXED BY items_deadline SET level = 0, level_since = ?
WHERE state = 'pending' AND level IN (1, 2, 3) AND deadline < ?
"""
_PROMOTE_HIGH = """
UPDATE items INDEXED BY items_deadline SET level = 1, level_since = ?
WHERE state = 'pending' AND level IN (2, 3) AND deadline < ?
"""
# Aging stops at high: critical is for deadlines only.
_AGE = """
UPDATE items INDEXED BY items_aging SET level = level - 1, level_since = ?
WHERE state = 'pending' AND level IN (2, 3) AND level_since <= ?
"""
# One statement, so the item and the count come from one snapshot.
_POSITION = """
SELECT CASE WHEN item.state = 'pending' AND item.held = 0 THEN 1 + (
    SELECT COUNT(*) FROM items AS ahead INDEXED BY items_position
    WHERE ahead.state = 'pending' AND ahead.held = 0 AND (ahead.level, ahead.qseq) < (item.level, item.qseq)
) ELSE -1 END
FROM items AS item WHERE item.job_id = ? AND item.item_id = ?
"""
_QUEUED = """
SELECT job_id, item_id, job_type, level, not_before, deadline FROM items INDEXED BY items_position
WHERE state = 'pending' AND held = 0 ORDER BY level, qseq LIMIT ?
"""
_QUEUE_COUNTS = """
SELECT level, job_id, COUNT(*) FROM items INDEXED BY items_position
WHERE state = 'pending' AND held = 0 GROUP BY level, job_id
"""
_START = """
UPDATE items SET last_model = ?, started_at = ?
WHERE job_id = ? AND item_id = ? AND state = 'running' AND owner = ? AND (? IS NULL OR fence = ?)
"""
_FINISH = """
UPDATE items SET state = ?, attempts = ?, free_attempts = free_attempts + ?,
    first_started_at = COALESCE(first_started_at, ?), last_model = COALESCE(?, last_model), not_before = ?,
    error_kind = ?, error = ?, route = ?, owner = NULL, lease_until = NULL
WHERE job_id = ? AND item_id = ? AND state = 'running' AND owner = ? AND (? IS NULL OR fence = ?)
"""
_INSERT_ATTEMPT = """
INSERT INTO attempts (job_id, item_id, attempt, model, state, error_kind, error,
    input_tokens, output_tokens, cost_usd, started_at, finished_at, route, reserved_usd, unknown, fence)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_SENT = """
INSERT INTO attempts (job_id, item_id, attempt, model, state, started_at, finished_at, reserved_usd, unknown, fence)
VALUES (?, ?, ?, ?, 'sent', ?, ?, ?, 1, ?)
"""
# The newest 'sent' row of the attempt: an older one with the same number
# belongs to a worker that died, and stays outcome unknown.
_COMPLETE_SENT = """
UPDATE attempts SET model = ?, state = ?, error_kind = ?, error = ?, input_tokens = ?, output_tokens = ?,
    cost_usd = ?, started_at = ?, finished_at = ?, route = ?, reserved_usd = ?, unknown = ?
WHERE rowid = (SELECT MAX(rowid) FROM attempts INDEXED BY attempts_sent
               WHERE job_id = ? AND item_id = ? AND attempt = ? AND state = 'sent')
"""
# A finished attempt refused because its item was cancelled meanwhile: its
# sent row keeps the real cost rather than its worst case forever. Only a
# skipped item: one recovered elsewhere may have a newer row of the same number.
_SETTLE_REFUSED = """
UPDATE attempts SET state = 'skipped', model = ?, error_kind = ?, error = ?, input_tokens = ?, output_tokens = ?,
    cost_usd = ?, finished_at = ?, route = ?, unknown = ?
WHERE rowid = (SELECT MAX(rowid) FROM attempts INDEXED BY attempts_sent
               WHERE job_id = ? AND item_id = ? AND attempt = ? AND state = 'sent')
  AND EXISTS (SELECT 1 FROM items WHERE job_id = ? AND item_id = ? AND state = 'skipped')
"""
# A refused outcome under a fence: complete the row its start wrote (or that
# reap marked stale) for that very claim; a newer claim's rows are not touched.
_SETTLE_STALE = """
UPDATE attempts SET state = ?, model = ?, error_kind = ?, error = ?, input_tokens = ?, output_tokens = ?,
    cost_usd = ?, started_at = ?, finished_at = ?, route = ?, reserved_usd = ?, unknown = ?
WHERE rowid = (SELECT MAX(rowid) FROM attempts INDEXED BY attempts_item
               WHERE job_id = ? AND item_id = ? AND attempt = ? AND fence = ? AND state IN ('sent', 'stale'))
"""
# Expired leases back to pending; RETURNING the fence they were lost under. No
# lease at all (an item claimed by a version 4 worker) counts as expired.
_REAP = f"""
UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL, fence = fence + 1
WHERE rowid IN (
    SELECT rowid FROM items INDEXED BY items_lease
    WHERE state = 'running' AND (lease_until IS NULL OR lease_until < {_DB_NOW}) LIMIT ?
)
RETURNING job_id, item_id, fence - 1
"""
# NULL: sent by a version 4 worker, whose claims left the fence at 0.
_STALE_SENT = """
UPDATE attempts SET state = 'stale', error_kind = 'LEASE_LOST',
    error = 'its worker lost the lease (stopped, cut off or killed): outcome unknown'
WHERE job_id = ? AND item_id = ? AND COALESCE(fence, 0) = ? AND state = 'sent'
"""
_RENEW = f"""
UPDATE items SET lease_until = {_DB_NOW} + ?
WHERE job_id = ? AND item_id = ? AND state = 'running' AND owner = ? AND fence = ?
"""
# Shared rate limits: ``:now`` is this process's wall clock (time.time()),
# taken inside the write lock, so it is one clock for every process on the
# host and takes are serialised by the lock.
_TOKENS_ADJUSTED = """(CASE WHEN :adjust > 0 THEN MAX(tokens_tat, :now) + :adjust
    WHEN tokens_tat > :now THEN MAX(:now, tokens_tat + :adjust) ELSE tokens_tat END)"""
_SEND_AT = f"MAX(:now, cool_until, requests_tat - :request_slack, {_TOKENS_ADJUSTED} - :token_slack)"
_RATE_TAKE = f"""
UPDATE rate_limits SET
    requests_tat = MAX(requests_tat, {_SEND_AT}) + :request_cost,
    tokens_tat = MAX({_TOKENS_ADJUSTED}, {_SEND_AT}) + :token_cost,
    sent_at = {_SEND_AT}, taken_at = :now
WHERE model = :model
RETURNING taken_at, sent_at, requests_tat, tokens_tat, cool_until
"""
_RATE_COOL = """
INSERT INTO rate_limits (model, cool_until) VALUES (?, ?)
ON CONFLICT (model) DO UPDATE SET cool_until = MAX(cool_until, excluded.cool_until)
RETURNING cool_until
"""
_BUDGET_STATE = """
SELECT cap, spent, reserved, (SELECT COUNT(*) FROM budget_holds h WHERE h.job_id = b.job_id)
FROM budgets b WHERE job_id = ?
"""
# The holds of workers with no live heartbeat go to spent, whole.
_BUDGET_GONE = f"""
DELETE FROM budget_holds WHERE NOT EXISTS (
    SELECT 1 FROM workers w WHERE w.worker_id = budget_holds.owner AND w.beat_at + w.lease_s >= {_DB_NOW})
RETURNING job_id, amount
"""
# Float sums leave residue (0.1 + 0.2 - 0.3 != 0): what is left below a
# billionth of a cent once a hold is gone is none.
_BUDGET_CHARGE = """
UPDATE budgets SET spent = spent + :actual,
    reserved = CASE WHEN reserved - :amount < 1e-11 THEN 0 ELSE reserved - :amount END
WHERE job_id = :job_id
"""
_HEARTBEAT = f"""
INSERT INTO workers (worker_id, host, pid, started_at, beat_at, lease_s) VALUES (?, ?, ?, ?, {_DB_NOW}, ?)
ON CONFLICT (worker_id) DO UPDATE SET beat_at = excluded.beat_at, lease_s = excluded.lease_s
"""
_WORKERS = f"""
SELECT worker_id, host, pid, started_at, beat_at, lease_s, beat_at + lease_s >= {_DB_NOW}
FROM workers ORDER BY started_at, worker_id
"""
_REQUEUE_FAILED = """
UPDATE items SET state = 'pending', free_attempts = attempts, first_started_at = NULL, not_before = 0,
    owner = NULL, held = (held & 2) | ?
WHERE job_id = ? AND state = 'failed' AND (? IS NULL OR error_kind IN (SELECT value FROM json_each(?)))
"""
_INSERT_RESULT = """
INSERT OR REPLACE INTO results (job_id, item_id, text, data, created_at) VALUES (?, ?, ?, ?, ?)
"""
_INSERT_ITEM = """
INSERT INTO items (job_id, item_id, seq, level, state, definition, job_type, qseq, deadline, level_since, held)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# A follow-up: an id the job already holds is left alone.
_INSERT_FOLLOW_UP = _INSERT_ITEM.strip() + " ON CONFLICT (job_id, item_id) DO NOTHING"
# A dependency completed: its waiters have one fewer; at none, and no gate, they are unblocked.
_RELEASE_WAITERS = """
UPDATE items SET waiting = waiting - 1,
    held = CASE WHEN waiting = 1 AND gate IS NULL THEN held & 1 ELSE held END
WHERE job_id = ? AND state = 'pending' AND item_id IN (SELECT value FROM json_each(?))
"""
_INSERT_ARTIFACT = """
INSERT INTO artifacts (project_id, kind, key, version, content, job_id, item_id, attempt, model, created_at)
VALUES (?, ?, ?, (SELECT COALESCE(MAX(version), 0) + 1 FROM artifacts WHERE project_id = ? AND kind = ? AND key = ?),
        ?, ?, ?, ?, ?, ?)
"""
_JOB_COLUMNS = "job_id, job_type, state, definition, created_at, updated_at, reason, runner"


# One encoder for every call: json.dumps with options builds a new one each time.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _dumps(value: Any) -> str | None:
    return None if value is None else _encode(value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _job_row(row: tuple) -> JobRow:
    job_id, job_type, state, definition, created_at, updated_at, reason, runner = row
    return JobRow(job_id, job_type, state, json.loads(definition), created_at, updated_at, reason, runner)


class SQLiteStore:
    """A :class:`~storyloom.store.protocol.Store` on one SQLite file.

    Open it with :meth:`open`; close it with ``await store.aclose()`` (or
    :meth:`close`). Use it from the thread that opened it.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        #: The database file.
        self.path = path
        #: The state folder, as given (``Store.location``).
        self.location = str(path.parent)
        self._busy_timeout = BUSY_TIMEOUT_S  # for messages: how long a locked write waited

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], synchronous: str = "NORMAL",
             busy_timeout: float = BUSY_TIMEOUT_S) -> "SQLiteStore":
        """Open (creating if needed) ``state_dir/storyloom.db``.

        ``synchronous`` is ``NORMAL`` (durable across process crashes) or
        ``FULL`` (also across power loss); anything else is a ValueError.
        ``busy_timeout`` is how many seconds a write waits for another
        process's lock, 0 to ``MAX_BUSY_TIMEOUT_S`` (else a ValueError). Raises :class:`StoreVersionError` if the file has a
        newer schema, :class:`StoreUnavailable` if the folder or file cannot
        be used (so does every method later).
        """
        mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        if not 0 <= busy_timeout <= MAX_BUSY_TIMEOUT_S:
            raise ValueError(f"busy_timeout must be 0 to {MAX_BUSY_TIMEOUT_S:.0f} seconds, not {busy_timeout!r}")
        folder = Path(state_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _folder_unavailable(exc, folder) from None
        path = folder / DB_NAME
        try:
            return cls._connect(path, mode, busy_timeout)
        except sqlite3.Error as exc:
            raise _unavailable(exc, path, busy_timeout) or exc from None

    @classmethod
    def _connect(cls, path: Path, mode: str, busy_timeout: float) -> "SQLiteStore":
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            _check_version(conn, path)
            journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if journal.lower() != "wal":
                raise RuntimeError(f"{path}: cannot use WAL journal mode (got {journal!r})")
            conn.execute(f"PRAGMA synchronous = {mode}")
            conn.execute("PRAGMA foreign_keys = ON")
            _create_schema(conn, path)
        except BaseException:
            conn.close()
            raise
        store = cls(conn, path)
        store._busy_timeout = busy_timeout
        return store

    # -- transactions

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction; rolled back if anything raises."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # a failed disk may refuse this too; SQLite rolls back on close
                    pass
            raise

    # -- jobs

    async def add_job(self, job: JobRow, items: Sequence[NewItem]) -> None:
        """Insert the job and its items (``seq`` = position in ``items``) in
        one transaction, queued after every item already submitted. Raises
        JobExists, or ValueError for a duplicate item_id or a bad item state;
        either way nothing is written."""
        if job.state not in JOB_STATES:
            raise ValueError(f"unknown job state {job.state!r}")
        check_new_items(items)
        job_id = job.job_id
        with self._write() as cur:
            if cur.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone():
                raise JobExists(job_id)
            cur.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, job.job_type, job.state, _dumps(job.definition),
                 job.created_at, job.updated_at, job.reason, job.runner if job.state == "running" else None),
            )
            # Read under the write lock, so two submitters cannot share a qseq.
            (last,) = cur.execute("SELECT COALESCE(MAX(qseq), 0) FROM items").fetchone()
            held = int(job.state in HELD_JOB_STATES)
            now = time.time()
            rows = (
                (job_id, item.item_id, seq, int(item.level), item.state, _dumps(item.definition),
                 item.job_type or job.job_type, last + 1 + seq, item.deadline, now, held)
                for seq, item in enumerate(items)
            )
            try:
                cur.executemany(_INSERT_ITEM, rows)
            except sqlite3.IntegrityError as exc:
                what = "duplicate item_id" if "UNIQUE" in str(exc) else "bad item"
                raise ValueError(f"job {job_id!r}: {what} ({exc})") from None
            _link(cur, job_id, items, held)

    async def get_job(self, job_id: str) -> JobRow | None:
        row = self._conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job_row(row) if row else None

    async def list_jobs(self) -> list[JobRow]:
        """Every job, oldest first."""
        rows = self._conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at, job_id")
        return [_job_row(row) for row in rows]

    async def set_job_state(self, job_id: str, state: str, reason: str | None = None,
                            runner: str | None = None) -> None:
        """Set the state (one of JOB_STATES), reason and runner (kept only
        with ``running``), holding the items of a paused or cancelled job;
        KeyError for an unknown job."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with self._write() as cur:
            _set_job_state(cur, job_id, state, reason, runner)

    async def cancel(self, job_id: str, reason: str) -> int:
        """Cancel the job and skip its pending and running items; returns how
        many were skipped. KeyError for an unknown job."""
        with self._write() as cur:
            # error_kind goes too: the reason is now why the item stopped, and
            # a kind left from an earlier attempt would say otherwise.
            cur.execute(
                "UPDATE items SET state = 'skipped', error_kind = NULL, error = ?, owner = NULL "
                "WHERE job_id = ? AND state IN ('pending', 'running')",
                (reason, job_id),
            )
            skipped = cur.rowcount
            # After the skip, so that no item is left for it to hold.
            _set_job_state(cur, job_id, "cancelled", reason)
        return skipped

    async def delete_job(self, job_id: str) -> bool:
        """Remove the job, its items, attempts, results and dependency rows in one transaction."""
        with self._write() as cur:
            for table in ("budget_holds", "budgets", "results", "attempts", "deps", "items"):
                cur.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            cur.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            return cur.rowcount == 1

    async def set_job_definition(self, job_id: str, definition: dict[str, Any]) -> None:
        """Replace the stored definition (a resume that raised the budget, say)."""
        with self._write() as cur:
            cur.execute("UPDATE jobs SET definition = ?, updated_at = ? WHERE job_id = ?",
                        (_dumps(definition), time.time(), job_id))
            if cur.rowcount != 1:
                raise KeyError(job_id)

    # -- claiming and recording

    async def recover(self, job_id: str, owner_alive: Callable[[str], bool]) -> int:
        """Put items ``running`` for owners that ``owner_alive`` calls dead back to pending."""
        owners = [
            owner
            for (owner,) in self._conn.execute(
                "SELECT DISTINCT owner FROM items WHERE job_id = ? AND state = 'running'", (job_id,)
            )
        ]
        dead = [owner for owner in owners if not owner_alive(owner)]
        if not dead:
            return 0
        return self._release(job_id, dead, fence_up=True)

    async def release(self, job_id: str, owner: str, item_ids: Sequence[str] | None = None,
                      fences: Sequence[int] | None = None) -> int:
        """Put the items ``owner`` holds running (all, or only ``item_ids``,
        each only under its fence if ``fences`` is given) back to pending."""
        if item_ids is None:
            return self._release(job_id, [owner])
        if fences is not None and len(fences) != len(item_ids):
            raise ValueError("release: one fence per item id")
        with self._write() as cur:
            cur.executemany(
                "UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL "
                "WHERE job_id = ? AND item_id = ? AND state = 'running' AND owner = ? AND (? IS NULL OR fence = ?)",
                [(job_id, item_id, owner, fence, fence)
                 for item_id, fence in zip(item_ids, fences if fences is not None else [None] * len(item_ids))],
            )
            return cur.rowcount

    def _release(self, job_id: str, owners: list[str], fence_up: bool = False) -> int:
        count = 0
        bump = ", fence = fence + 1" if fence_up else ""
        with self._write() as cur:
            for owner in owners:
                cur.execute(
                    f"UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL{bump} "
                    "WHERE job_id = ? AND state = 'running' AND owner = ?",
                    (job_id, owner),
                )
                count += cur.rowcount
        return count

    async def renew(self, owner: str, held: Sequence[tuple[str, str, int]],
                    lease_s: float = DEFAULT_LEASE_S) -> set[tuple[str, str, int]]:
        """Extend the leases of the (job_id, item_id, fence) triples ``owner``
        still holds; returns those."""
        kept: set[tuple[str, str, int]] = set()
        if not held:
            return kept
        with self._write() as cur:
            for job_id, item_id, fence in held:
                cur.execute(_RENEW, (lease_s, job_id, item_id, owner, fence))
                if cur.rowcount == 1:
                    kept.add((job_id, item_id, fence))
        return kept

    async def reap(self, limit: int = REAP_BATCH) -> int:
        """Expired leases back to pending (fence + 1); their sent attempts become stale."""
        if limit <= 0:
            return 0
        with self._write() as cur:
            lost = cur.execute(_REAP, (limit,)).fetchall()
            if lost:
                cur.executemany(_STALE_SENT, lost)
            cur.execute(f"DELETE FROM workers WHERE beat_at < {_DB_NOW} - ?", (WORKER_FORGET_S,))
            _reclaim_holds(cur)
        return len(lost)

    # -- shared rate limits and budgets (SharedLimits); the clock is the host's

    async def rate_take(self, take: RateTake) -> RateTaken:
        params = {"model": take.model, "request_cost": float(take.request_cost),
                  "request_slack": float(take.request_slack), "token_cost": float(take.token_cost),
                  "token_slack": float(take.token_slack), "adjust": float(take.token_adjust)}
        with self._write() as cur:
            params["now"] = time.time()  # inside the lock: takes are in clock order
            row = cur.execute(_RATE_TAKE, params).fetchone()
            if row is None:  # the model's first take
                cur.execute("INSERT OR IGNORE INTO rate_limits (model) VALUES (?)", (take.model,))
                row = cur.execute(_RATE_TAKE, params).fetchone()
        return RateTaken(*row)

    async def rate_cool_down(self, model: str, seconds: float) -> float:
        with self._write() as cur:
            return cur.execute(_RATE_COOL, (model, time.time() + float(seconds))).fetchone()[0]

    async def budget_open(self, job_id: str, cap: float, spent: float) -> BudgetState:
        with self._write() as cur:
            cur.execute("INSERT INTO budgets (job_id, cap, spent) VALUES (?, ?, ?) "
                        "ON CONFLICT (job_id) DO UPDATE SET cap = excluded.cap", (job_id, float(cap), float(spent)))
            return BudgetState(*cur.execute(_BUDGET_STATE, (job_id,)).fetchone())

    async def budget_state(self, job_id: str) -> BudgetState | None:
        row = self._conn.execute(_BUDGET_STATE, (job_id,)).fetchone()
        return None if row is None else BudgetState(*row)

    async def budget_reserve(self, job_id: str, owner: str, amount: float) -> int | None:
        with self._write() as cur:
            cur.execute("UPDATE budgets SET reserved = reserved + ? WHERE job_id = ? AND spent + reserved + ? <= cap",
                        (float(amount), job_id, float(amount)))
            if cur.rowcount != 1:
                if cur.execute("SELECT 1 FROM budgets WHERE job_id = ?", (job_id,)).fetchone() is None:
                    raise KeyError(job_id)
                return None
            cur.execute("INSERT INTO budget_holds (job_id, owner, amount) VALUES (?, ?, ?)",
                        (job_id, owner, float(amount)))
            return cur.lastrowid

    async def budget_settle(self, hold_id: int, actual: float) -> bool:
        with self._write() as cur:
            row = cur.execute("DELETE FROM budget_holds WHERE hold_id = ? RETURNING job_id, amount",
                              (hold_id,)).fetchone()
            if row is None:
                return False
            cur.execute(_BUDGET_CHARGE, {"actual": float(actual), "amount": row[1], "job_id": row[0]})
            return True

    async def heartbeat(self, worker: WorkerInfo) -> None:
        with self._write() as cur:
            cur.execute(_HEARTBEAT, (worker.worker_id, worker.host, worker.pid, worker.started_at, worker.lease_s))

    async def forget_worker(self, worker_id: str) -> None:
        with self._write() as cur:
            cur.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
            _reclaim_holds(cur)

    async def workers(self) -> list[WorkerRow]:
        holding: dict[str, dict[str, int]] = {}
        for owner, job_id, n in self._conn.execute(
                "SELECT owner, job_id, COUNT(*) FROM items WHERE state = 'running' GROUP BY owner, job_id"):
            holding.setdefault(owner, {})[job_id] = n
        return [WorkerRow(wid, host, pid, started, beat, lease, bool(alive), holding.get(wid, {}))
                for wid, host, pid, started, beat, lease, alive in self._conn.execute(_WORKERS)]

    async def claim(self, job_id: str, limit: int, now: float, owner: str,
                    only: Collection[str] | None = None, job_type: str | None = None,
                    lease_s: float = DEFAULT_LEASE_S) -> list[ClaimedItem]:
        """Claim up to ``limit`` ready pending items (of stage ``job_type``,
        if given) for ``owner``: lowest level first, then insertion order.
        ``now`` is wall-clock time (it becomes the items' ``started_at``).
        ``only``: among these ids. Each gets a lease of ``lease_s`` and a new fence."""
        if limit <= 0:
            return []
        with self._write() as cur:
            ids = None if only is None else json.dumps(list(only))
            if job_type is None:
                rows = cur.execute(_CLAIM, (owner, now, lease_s, job_id, now, limit)).fetchall() if ids is None \
                    else cur.execute(_CLAIM_ONLY, (owner, now, lease_s, job_id, now, ids, limit)).fetchall()
            elif ids is None:
                rows = cur.execute(_CLAIM_STAGE, (owner, now, lease_s, job_id, job_type, now, limit)).fetchall()
            else:
                rows = cur.execute(_CLAIM_STAGE_ONLY, (owner, now, lease_s, job_id, job_type, now, ids,
                                                       limit)).fetchall()
        # RETURNING gives rows in no particular order.
        rows.sort()
        loads = json.loads
        return [
            ClaimedItem(item_id, loads(definition), attempts, last_model, free, first, error_kind, job_id, fence)
            for _level, _seq, item_id, definition, attempts, last_model, free, first, error_kind, fence in rows
        ]

    async def claim_next(
        self, job_type: str, limit: int, now: float, owner: str, exclude: Collection[str] = (),
        lease_s: float = DEFAULT_LEASE_S,
    ) -> list[ClaimedItem]:
        """Claim up to ``limit`` ready pending items of any job of
        ``job_type`` (but those in ``exclude``) for ``owner``, in queue order:
        lowest level first, then submission order across jobs."""
        if limit <= 0:
            return []
        with self._write() as cur:
            rows = cur.execute(_CLAIM_NEXT, (owner, now, lease_s, job_type, now, _encode(list(exclude)),
                                             limit)).fetchall()
        rows.sort()  # by level, qseq
        loads = json.loads
        return [
            ClaimedItem(item_id, loads(definition), attempts, last_model, free, first, error_kind, job_id, fence)
            for _level, _qseq, job_id, item_id, definition, attempts, last_model, free, first, error_kind, fence
            in rows
        ]

    async def next_ready_at(self, job_id: str, job_type: str | None = None) -> float | None:
        if job_type is not None:
            return self._conn.execute(_NEXT_STAGE_READY_AT, (job_id, job_type)).fetchone()[0]
        return self._conn.execute(_NEXT_READY_AT, (job_id,)).fetchone()[0]

    async def next_queued_at(self, job_type: str) -> float | None:
        return self._conn.execute(_NEXT_QUEUED_AT, (job_type,)).fetchone()[0]

    async def promote(self, now: float, aging: float | None) -> int:
        """Promote pending items whose deadline nears, then (with ``aging``)
        low and normal items that kept their level ``aging`` seconds. An item
        changes at most once per pass; returns how many did."""
        changed = 0
        with self._write() as cur:
            cur.execute(_PROMOTE_CRITICAL, (now, now + CRITICAL_WITHIN_S))
            changed += cur.rowcount
            cur.execute(_PROMOTE_HIGH, (now, now + HIGH_WITHIN_S))
            changed += cur.rowcount
            if aging is not None:
                cur.execute(_AGE, (now, now - aging))
                changed += cur.rowcount
        return changed

    async def position(self, job_id: str, item_id: str) -> int:
        row = self._conn.execute(_POSITION, (job_id, item_id)).fetchone()
        if row is None:
            raise KeyError(item_id)
        return row[0]

    async def queue_counts(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for level, job_id, n in self._conn.execute(_QUEUE_COUNTS):
            out.setdefault(level, {})[job_id] = n
        return out

    async def queued(self, limit: int) -> list[QueuedRow]:
        if limit <= 0:  # SQLite reads a negative LIMIT as no limit
            return []
        return [QueuedRow(*row) for row in self._conn.execute(_QUEUED, (limit,))]

    async def record(
        self, records: Sequence[AttemptRecord], owner: str, started: Sequence[StartRecord] = ()
    ) -> list[bool]:
        """Commit started attempts' models and finished attempts in one
        transaction. A record or start applies only if its item is running
        for ``owner``; the result says which did (records, then starts). ValueError for a record whose
        state is not in RECORD_STATES (nothing is written)."""
        contents: dict[int, list[str]] = {}  # index of a record -> its artifacts' JSON
        for index, rec in enumerate(records):
            if rec.state not in RECORD_STATES:
                raise ValueError(f"item {rec.item_id!r}: cannot record state {rec.state!r}")
            if (rec.follow_ups or rec.artifacts) and rec.state != "completed":
                raise ValueError(f"item {rec.item_id!r}: follow-ups and artifacts come only with a completion")
            check_new_items(rec.follow_ups)
            if rec.artifacts:
                contents[index] = [item_artifact_json(rec.item_id, a) for a in rec.artifacts]
        applied: list[bool] = []
        starts_applied: list[bool] = []
        attempt_rows = []
        result_rows = []
        now = time.time()
        with self._write() as cur:
            sent_rows = []
            for s in started:
                cur.execute(_START, (s.model, s.started_at, s.job_id, s.item_id, owner, s.fence, s.fence))
                starts_applied.append(cur.rowcount == 1)
                if cur.rowcount == 1 and s.attempt:
                    sent_rows.append((s.job_id, s.item_id, s.attempt, s.model, s.started_at, s.started_at,
                                      s.reserved_usd, s.fence))
            if sent_rows:
                cur.executemany(_INSERT_SENT, sent_rows)
            for index, rec in enumerate(records):
                route = _dumps(rec.route)
                cur.execute(
                    _FINISH,
                    (rec.state, rec.attempt, int(rec.free), rec.started_at, rec.model, rec.not_before,
                     rec.error_kind, rec.error, route, rec.job_id, rec.item_id, owner, rec.fence, rec.fence),
                )
                ok = cur.rowcount == 1
                applied.append(ok)
                if not ok and rec.fence is not None:
                    _settle_refused(cur, rec, route)
                    continue
                if not ok:
                    if rec.sent:
                        cur.execute(_SETTLE_REFUSED, (
                            rec.model, rec.error_kind, rec.error, rec.input_tokens, rec.output_tokens, rec.cost_usd,
                            rec.finished_at, route, int(rec.outcome_unknown), rec.job_id, rec.item_id, rec.attempt,
                            rec.job_id, rec.item_id))
                    continue
                if rec.sent:
                    cur.execute(_COMPLETE_SENT, (
                        rec.model, rec.state, rec.error_kind, rec.error, rec.input_tokens, rec.output_tokens,
                        rec.cost_usd, rec.started_at, rec.finished_at, route, rec.reserved_usd,
                        int(rec.outcome_unknown), rec.job_id, rec.item_id, rec.attempt))
                if not rec.sent or cur.rowcount != 1:
                    attempt_rows.append(
                        (rec.job_id, rec.item_id, rec.attempt, rec.model, rec.state, rec.error_kind, rec.error,
                         rec.input_tokens, rec.output_tokens, rec.cost_usd, rec.started_at, rec.finished_at,
                         route, rec.reserved_usd, int(rec.outcome_unknown), rec.fence)
                    )
                if rec.state == "completed":
                    text = rec.result_text if rec.result_text is not None else ""
                    result_rows.append((rec.job_id, rec.item_id, text, _dumps(rec.result_data), now))
                    # Follow-ups first: one taking this item over must catch its
                    # waiters before the completion releases them.
                    if rec.follow_ups:
                        _add_follow_ups(cur, rec.job_id, rec.follow_ups, now)
                    for artifact, content in zip(rec.artifacts, contents.get(index, ())):
                        cur.execute(_INSERT_ARTIFACT, (
                            artifact.project_id, artifact.kind, artifact.key, artifact.project_id, artifact.kind,
                            artifact.key, content, rec.job_id, rec.item_id, rec.attempt, rec.model, rec.finished_at))
                    _completed(cur, rec.job_id, rec.item_id)
                elif rec.state in ("failed", "skipped"):
                    _cascade(cur, rec.job_id, rec.item_id, f"blocked: {rec.item_id} {rec.state}")
            if attempt_rows:
                cur.executemany(_INSERT_ATTEMPT, attempt_rows)
            if result_rows:
                cur.executemany(_INSERT_RESULT, result_rows)
        return applied + starts_applied

    # -- reading

    async def counts(self, job_id: str) -> dict[str, int]:
        out = dict.fromkeys(ITEM_STATES, 0)
        for state, n in self._conn.execute(
            "SELECT state, COUNT(*) FROM items WHERE job_id = ? GROUP BY state", (job_id,)
        ):
            out[state] = n
        return out

    async def running(self, job_id: str) -> list[RunningRow]:
        """Items running now, longest-running first."""
        rows = self._conn.execute(
            f"SELECT item_id, last_model, started_at, attempts, owner, lease_until - {_DB_NOW}, fence "
            "FROM items INDEXED BY items_running WHERE job_id = ? AND state = 'running' ORDER BY started_at, seq",
            (job_id,),
        )
        return [RunningRow(*row) for row in rows]

    async def items(self, job_id: str, state: str | None = None) -> list[ItemRow]:
        """The job's items in insertion order, optionally only those in ``state``."""
        sql = ("SELECT item_id, state, attempts, last_model, error_kind, error, definition, level, route, "
               "free_attempts FROM items WHERE job_id = ?")
        params: tuple = (job_id,)
        if state is not None:
            sql += " AND state = ?"
            params = (job_id, state)
        rows = self._conn.execute(sql + " ORDER BY seq", params)
        return [ItemRow(i, s, a, m, ek, e, json.loads(d), lv, _loads(r), fa)
                for i, s, a, m, ek, e, d, lv, r, fa in rows]

    async def result(self, job_id: str, item_id: str) -> tuple[str, dict[str, Any] | None] | None:
        row = self._conn.execute(
            "SELECT text, data FROM results WHERE job_id = ? AND item_id = ?", (job_id, item_id)
        ).fetchone()
        return (row[0], _loads(row[1])) if row else None

    async def costs(self, job_id: str) -> CostTotals:
        """Totals over every finished attempt, failed ones included, and over
        those whose outcome is unknown. ``by_model`` leaves out attempts that
        never reached a model (their tokens still count)."""
        totals = CostTotals()
        rows = self._conn.execute(
            "SELECT model, SUM(cost_usd), SUM(input_tokens), SUM(output_tokens), SUM(state != 'sent'), "
            "SUM(state = 'completed'), SUM(unknown), SUM(reserved_usd * unknown) "
            "FROM attempts WHERE job_id = ? GROUP BY model",
            (job_id,),
        )
        for model, cost, tokens_in, tokens_out, attempts, completed, unknown, unknown_usd in rows:
            totals.unknown_attempts += unknown
            totals.unknown_usd += unknown_usd
            if not attempts:
                continue  # only sent, nothing finished on this model yet
            totals.cost_usd += cost
            totals.input_tokens += tokens_in
            totals.output_tokens += tokens_out
            totals.attempts += attempts
            if model is not None:
                totals.by_model[model] = {
                    "cost_usd": cost,
                    "input_tokens": tokens_in,
                    "output_tokens": tokens_out,
                    "attempts": attempts,
                    "completed": completed,
                }
        return totals

    async def spend_by_model(self) -> dict[str, float]:
        rows = self._conn.execute(
            "SELECT model, SUM(cost_usd + reserved_usd * unknown) FROM attempts WHERE model IS NOT NULL GROUP BY model")
        return dict(rows.fetchall())

    async def attempts(self, job_id: str) -> list[AttemptRow]:
        """Every finished attempt, by finish time (then insertion order)."""
        rows = self._conn.execute(
            "SELECT item_id, attempt, state, model, started_at, finished_at, error_kind, error, "
            "input_tokens, output_tokens, cost_usd FROM attempts WHERE job_id = ? AND state != 'sent' "
            "ORDER BY finished_at, rowid",
            (job_id,),
        )
        return list(map(AttemptRow._make, rows))

    async def requeue_failed(self, job_id: str, kinds: Collection[str] | None = None) -> int:
        """Failed items (of ``kinds``, if given) back to pending with a fresh
        max_retries allowance; their attempt rows stay. KeyError for an unknown job."""
        chosen = None if kinds is None else _encode(list(kinds))
        with self._write() as cur:
            row = cur.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            held = int(row[0] in HELD_JOB_STATES)
            requeued = [r[0] for r in cur.execute(_REQUEUE_FAILED + " RETURNING item_id",
                                                  (held, job_id, chosen, chosen))]
            if requeued:
                _unblock_cascaded(cur, job_id, requeued, held)
            return len(requeued)

    # -- pipelines

    async def open_gate(self, name: str) -> int:
        """Open the gate (created open if unknown) and unblock its pending
        items that wait on nothing else; returns how many it blocked."""
        with self._write() as cur:
            cur.execute("INSERT INTO gates (name, opened_at) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET opened_at = COALESCE(opened_at, excluded.opened_at)",
                        (name, time.time()))
            cur.execute("UPDATE items INDEXED BY items_gate SET gate = NULL, "
                        "held = CASE WHEN waiting = 0 THEN held & 1 ELSE held END "
                        "WHERE gate = ? AND state = 'pending'", (name,))
            return cur.rowcount

    async def gates(self) -> list[GateRow]:
        rows = self._conn.execute(
            "SELECT name, opened_at, (SELECT COUNT(*) FROM items INDEXED BY items_gate "
            "WHERE items.gate = gates.name AND items.state = 'pending') FROM gates ORDER BY name")
        return [GateRow(*row) for row in rows]

    async def artifacts(self, project_id: str, kinds: Collection[str] | None = None) -> list[Artifact]:
        """Every version, in the order committed."""
        sql = ("SELECT project_id, kind, key, content, version, job_id, item_id, attempt, model, created_at "
               "FROM artifacts WHERE project_id = ?")
        params: tuple = (project_id,)
        if kinds is not None:
            sql += " AND kind IN (SELECT value FROM json_each(?))"
            params = (project_id, _encode(list(kinds)))
        return [Artifact(pid, kind, key, json.loads(content), version=version, job_id=job_id, item_id=item_id,
                         attempt=attempt, model=model, created_at=created_at)
                for pid, kind, key, content, version, job_id, item_id, attempt, model, created_at
                in self._conn.execute(sql + " ORDER BY rowid", params)]

    async def wait_for_change(self, timeout: float) -> bool:
        """SQLite has no notices: sleep the poll interval."""
        await trio.sleep(timeout)
        return False

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()


def _translating(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` with the SQLite errors that mean "this store cannot be used"
    raised as :class:`StoreUnavailable`; other errors (bugs) pass unchanged."""

    @functools.wraps(method)
    async def translated(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path, self._busy_timeout) or exc from None

    return translated


# Every Store method, so that core meets StoreUnavailable, never sqlite3.
for _name, _method in list(vars(SQLiteStore).items()):
    if not _name.startswith("_") and inspect.iscoroutinefunction(_method):
        setattr(SQLiteStore, _name, _translating(_method))
del _name, _method


_RESTORE = "restore it from a backup, or move it away and use another --state-dir"
_FREE = ("free space there (or raise the file size limit), then run the command again; "
         "`storyloom resume JOB_ID` continues a stopped job")
#: SQLite's primary result codes for a store that cannot be used: what happened; what to do.
_FAULTS = {
    sqlite3.SQLITE_BUSY: ("the database is locked by another process (waited {timeout:g}s)",
                          "wait for that process to finish or stop it, then run the command again"),
    sqlite3.SQLITE_LOCKED: ("the database is locked (waited {timeout:g}s)",
                            "wait for the other process to finish or stop it, then run the command again"),
    sqlite3.SQLITE_READONLY: ("the database cannot be written (read-only file or folder)",
                              "make the state folder writable, or use another --state-dir"),
    sqlite3.SQLITE_FULL: ("the disk is full", _FREE),
    sqlite3.SQLITE_IOERR: ("reading or writing the database failed (disk full or failing?)", _FREE),
    sqlite3.SQLITE_CORRUPT: ("the database is damaged (truncated or corrupt)", _RESTORE),
    sqlite3.SQLITE_NOTADB: ("the file is not a storyloom database (garbage or another format)", _RESTORE),
    sqlite3.SQLITE_CANTOPEN: ("cannot open the database file",
                              "check that the state folder exists and is writable, or use another --state-dir"),
    sqlite3.SQLITE_PROTOCOL: ("the database's lock files cannot be used",
                              "check the state folder is on a local, writable disk, then run the command again"),
    sqlite3.SQLITE_NOMEM: ("SQLite ran out of memory", "free memory, then run the command again"),
}


def _unavailable(exc: sqlite3.Error, path: Path, timeout: float) -> StoreUnavailable | None:
    """The StoreUnavailable an SQLite error means, or None if it means a bug."""
    code = getattr(exc, "sqlite_errorcode", None)
    fault = _FAULTS.get(code & 0xFF) if isinstance(code, int) else None
    if fault is None:
        return None
    reason, hint = fault
    if _read_only(path.parent) and code & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
                                                   sqlite3.SQLITE_IOERR):
        reason, hint = _FOLDER_FAULTS[errno.EROFS]
    return StoreUnavailable(str(path), reason.format(timeout=timeout), hint)


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False


_FOLDER_FAULTS = {
    errno.EROFS: ("the file system is read-only", "remount it writable, or use another --state-dir"),
    errno.EACCES: ("permission denied", "make the state folder writable, or use another --state-dir"),
    errno.EPERM: ("permission denied", "make the state folder writable, or use another --state-dir"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "use another --state-dir"),
    errno.EEXIST: ("a file is in the way of the folder", "use another --state-dir"),
    errno.ENOSPC: ("the disk is full", _FREE),
    errno.EDQUOT: ("the disk quota is exceeded", _FREE),
}


def _folder_unavailable(exc: OSError, folder: Path) -> StoreUnavailable:
    reason, hint = _FOLDER_FAULTS.get(exc.errno, (exc.strerror or str(exc), "use another --state-dir"))
    return StoreUnavailable(str(folder), f"cannot create the state folder: {reason}", hint)


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"{path} has state schema version {version}, but this storyloom only knows "
            f"version {SCHEMA_VERSION}: upgrade storyloom (or use another state directory)"
        )


def _settle_refused(cur: sqlite3.Cursor, rec: AttemptRecord, route: str | None) -> None:
    """Store a refused record that carries a fence: ``skipped`` if a cancel
    took the item under that fence, else ``stale``; either way with its cost."""
    row = cur.execute("SELECT state, fence FROM items WHERE job_id = ? AND item_id = ?",
                      (rec.job_id, rec.item_id)).fetchone()
    cancelled = row is not None and row[0] == "skipped" and row[1] == rec.fence
    state = "skipped" if cancelled else "stale"
    cur.execute(_SETTLE_STALE, (
        state, rec.model, rec.error_kind, rec.error, rec.input_tokens, rec.output_tokens, rec.cost_usd,
        rec.started_at, rec.finished_at, route, rec.reserved_usd, int(rec.outcome_unknown),
        rec.job_id, rec.item_id, rec.attempt, rec.fence))
    if cur.rowcount == 0 and not cancelled and row is not None:
        cur.execute(_INSERT_ATTEMPT, (
            rec.job_id, rec.item_id, rec.attempt, rec.model, "stale", rec.error_kind, rec.error,
            rec.input_tokens, rec.output_tokens, rec.cost_usd, rec.started_at, rec.finished_at,
            route, rec.reserved_usd, int(rec.outcome_unknown), rec.fence))


def _set_job_state(cur: sqlite3.Cursor, job_id: str, state: str, reason: str | None,
                   runner: str | None = None) -> None:
    """Set a job's state, its runner (only a running job has one) and its
    items' ``held`` to match, in the caller's transaction."""
    row = cur.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise KeyError(job_id)
    cur.execute("UPDATE jobs SET state = ?, reason = ?, updated_at = ?, runner = ? WHERE job_id = ?",
                (state, reason, time.time(), runner if state == "running" else None, job_id))
    held = state in HELD_JOB_STATES
    if held != (row[0] in HELD_JOB_STATES):
        # Running items too, since they may come back to pending (a retry,
        # release, recover); a terminal item never does, so its flag is
        # never read and not worth rewriting.
        cur.execute("UPDATE items SET held = (held & 2) | ? WHERE job_id = ? AND state IN ('pending', 'running')",
                    (int(held), job_id))


def _create_schema(conn: sqlite3.Connection, path: Path) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created or migrated it while we waited for the lock.
        _check_version(conn, path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in _TABLES + _INDEXES + _INDEXES_3 + _TABLES_5 + _INDEXES_5 + _TABLES_6 + _INDEXES_6 + _TABLES_7:
                conn.execute(statement)
        elif version < SCHEMA_VERSION:  # not if another process got there first
            if version == 1:
                _migrate_1_to_2(conn)
            if version <= 2:
                _migrate_2_to_3(conn)
            if version <= 3:
                _migrate_3_to_4(conn)
            if version <= 4:
                _migrate_4_to_5_pipelines(conn)
            if version <= 5:
                _migrate_5_to_6_leases(conn)
            _migrate_6_to_7_shared_limits(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Make a version 1 file the queue: the new item columns, filled in from
    the jobs and the stored item definitions, and the new indexes."""
    for column in _ITEM_COLUMNS_2:
        conn.execute(f"ALTER TABLE items ADD COLUMN {column}")
    # Version 1 inserted items in submission order, so rowid is that order.
    conn.execute(
        "UPDATE items SET job_type = jobs.job_type, qseq = items.rowid, level_since = jobs.created_at, "
        "held = jobs.state IN (?, ?) FROM jobs WHERE jobs.job_id = items.job_id",
        HELD_JOB_STATES,
    )
    deadlines = conn.execute(
        "SELECT rowid, json_extract(definition, '$.deadline') FROM items "
        "WHERE json_extract(definition, '$.deadline') IS NOT NULL"
    ).fetchall()
    conn.executemany("UPDATE items SET deadline = ? WHERE rowid = ?",
                     [(_epoch(text), rowid) for rowid, text in deadlines])
    # Version 1's full indexes become version 2's partial ones.
    conn.execute("DROP INDEX items_claim")
    conn.execute("DROP INDEX items_ready")
    for statement in _INDEXES:
        conn.execute(statement)


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Attempts recorded when sent: every stored attempt is a finished one,
    with nothing reserved and its usage known."""
    for column in _ATTEMPT_COLUMNS_3:
        conn.execute(f"ALTER TABLE attempts ADD COLUMN {column}")
    for statement in _INDEXES_3:
        conn.execute(statement)


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    """Jobs name their runner: none is known for a stored job (version 3
    did not record it), so a running one reads as it did before."""
    for column in _JOB_COLUMNS_4:
        conn.execute(f"ALTER TABLE jobs ADD COLUMN {column}")


def _migrate_4_to_5_pipelines(conn: sqlite3.Connection) -> None:
    """Pipelines: items may wait on others and on gates, and projects keep
    artifacts. Purely additive: no stored item waits, so every ``held``
    (0 or 1) already means what it does in version 5."""
    for column in _ITEM_COLUMNS_5:
        conn.execute(f"ALTER TABLE items ADD COLUMN {column}")
    for statement in _TABLES_5 + _INDEXES_5:
        conn.execute(statement)


def _migrate_5_to_6_leases(conn: sqlite3.Connection) -> None:
    """Leases and fences: purely additive. An item left running by an older
    worker has no lease (NULL), which reap reads as expired: it comes back."""
    for column in _ITEM_COLUMNS_6:
        conn.execute(f"ALTER TABLE items ADD COLUMN {column}")
    for column in _ATTEMPT_COLUMNS_6:
        conn.execute(f"ALTER TABLE attempts ADD COLUMN {column}")
    for statement in _TABLES_6 + _INDEXES_6:
        conn.execute(statement)


def _migrate_6_to_7_shared_limits(conn: sqlite3.Connection) -> None:
    """Shared rate limits and budgets: new tables only."""
    for statement in _TABLES_7:
        conn.execute(statement)


# -- pipelines, inside the caller's transaction


def _reclaim_holds(cur: sqlite3.Cursor) -> None:
    """Move the budget holds of workers with no live heartbeat to spent, whole."""
    gone: dict[str, float] = {}
    for job_id, amount in cur.execute(_BUDGET_GONE).fetchall():
        gone[job_id] = gone.get(job_id, 0.0) + amount
    for job_id, amount in gone.items():
        cur.execute(_BUDGET_CHARGE, {"actual": amount, "amount": amount, "job_id": job_id})


def _link(cur: sqlite3.Cursor, job_id: str, items: Sequence[NewItem], job_held: int) -> None:
    """Store the dependencies and gates of items just inserted, and skip
    those that wait on an item already failed or skipped."""
    ended: list[tuple[str, str]] = []  # (item, why it is skipped)
    for item in items:
        if item.state != "pending" or not (item.after or item.gate is not None):
            continue
        after = list(dict.fromkeys(item.after))
        found = cur.execute(
            "SELECT item_id, state, error FROM items WHERE job_id = ? AND item_id IN (SELECT value FROM json_each(?))",
            (job_id, _encode(after))).fetchall()
        states = {found_id: state for found_id, state, _error in found}
        waits_on = [a for a in after if states.get(a) != "completed"]
        cur.executemany("INSERT OR IGNORE INTO deps (job_id, after_id, item_id) VALUES (?, ?, ?)",
                        [(job_id, a, item.item_id) for a in waits_on])
        gate = None
        if item.gate is not None:
            cur.execute("INSERT OR IGNORE INTO gates (name, opened_at) VALUES (?, NULL)", (item.gate,))
            (opened,) = cur.execute("SELECT opened_at FROM gates WHERE name = ?", (item.gate,)).fetchone()
            gate = item.gate if opened is None else None
        blocked = HELD_BLOCKED if waits_on or gate is not None else 0
        cur.execute("UPDATE items SET waiting = ?, gate = ?, held = ? WHERE job_id = ? AND item_id = ?",
                    (len(waits_on), gate, job_held | blocked, job_id, item.item_id))
        dead = next(((a, state, error) for a, state, error in found if state in ("failed", "skipped")), None)
        if dead is not None:
            # Behind an item a cascade skipped: the same reason, naming the first to end.
            name, state, error = dead
            cascaded = state == "skipped" and error is not None and error.startswith("blocked: ")
            ended.append((item.item_id, error if cascaded else f"blocked: {name} {state}"))
    for item_id, reason in ended:
        _skip(cur, job_id, item_id, reason)


def _skip(cur: sqlite3.Cursor, job_id: str, item_id: str, reason: str) -> None:
    """Skip a pending item that can never run, and what waits on it."""
    cur.execute("UPDATE items SET state = 'skipped', error = ?, error_kind = NULL, owner = NULL "
                "WHERE job_id = ? AND item_id = ? AND state = 'pending'", (reason, job_id, item_id))
    if cur.rowcount:
        _cascade(cur, job_id, item_id, reason)


def _cascade(cur: sqlite3.Cursor, job_id: str, item_id: str, reason: str) -> None:
    """``item_id`` ended failed or skipped: every pending item waiting on it,
    transitively, is skipped with ``reason`` (naming the first to end)."""
    frontier = [item_id]
    while frontier:
        frontier = [row[0] for row in cur.execute(
            "UPDATE items SET state = 'skipped', error = ?, error_kind = NULL, owner = NULL "
            "WHERE job_id = ? AND state = 'pending' AND item_id IN "
            "(SELECT item_id FROM deps WHERE job_id = ? AND after_id IN (SELECT value FROM json_each(?))) "
            "RETURNING item_id", (reason, job_id, job_id, _encode(frontier)))]


def _completed(cur: sqlite3.Cursor, job_id: str, item_id: str) -> None:
    """``item_id`` completed: its waiters have one dependency fewer."""
    # One statement when nothing waits on it, the common case.
    waiters = [row[0] for row in cur.execute(
        "DELETE FROM deps WHERE job_id = ? AND after_id = ? RETURNING item_id", (job_id, item_id))]
    if waiters:
        cur.execute(_RELEASE_WAITERS, (job_id, _encode(waiters)))


def _add_follow_ups(cur: sqlite3.Cursor, job_id: str, items: Sequence[NewItem], now: float) -> None:
    """Insert the follow-ups the job does not hold yet, link them, and move
    the waiters of the items they take over onto them."""
    job_type, state, seq, qseq = cur.execute(
        "SELECT job_type, state, (SELECT COALESCE(MAX(seq), -1) FROM items WHERE job_id = jobs.job_id), "
        "(SELECT COALESCE(MAX(qseq), 0) FROM items) FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    held = HELD_JOB if state in HELD_JOB_STATES else 0
    inserted = []
    for item in items:
        seq += 1
        qseq += 1
        cur.execute(_INSERT_FOLLOW_UP, (job_id, item.item_id, seq, int(item.level), item.state,
                                        _dumps(item.definition), item.job_type or job_type, qseq, item.deadline,
                                        now, held))
        if cur.rowcount == 1:
            inserted.append(item)
    _link(cur, job_id, inserted, held)
    for item in inserted:
        if item.takes_over is not None and item.takes_over != item.item_id:
            _take_over(cur, job_id, item.item_id, item.takes_over)


def _take_over(cur: sqlite3.Cursor, job_id: str, new_id: str, old_id: str) -> None:
    """Every pending item waiting on ``old_id`` waits on ``new_id`` instead."""
    waiters = [row[0] for row in cur.execute(
        "SELECT item_id FROM deps WHERE job_id = ? AND after_id = ? AND item_id != ?", (job_id, old_id, new_id))]
    for waiter in waiters:
        cur.execute("DELETE FROM deps WHERE job_id = ? AND after_id = ? AND item_id = ?", (job_id, old_id, waiter))
        cur.execute("INSERT OR IGNORE INTO deps (job_id, after_id, item_id) VALUES (?, ?, ?)",
                    (job_id, new_id, waiter))
        if not cur.rowcount:  # it waited on both: now on one
            cur.execute("UPDATE items SET waiting = waiting - 1, "
                        "held = CASE WHEN waiting = 1 AND gate IS NULL THEN held & 1 ELSE held END "
                        "WHERE job_id = ? AND item_id = ? AND state = 'pending'", (job_id, waiter))
    (state, error) = cur.execute("SELECT state, error FROM items WHERE job_id = ? AND item_id = ?",
                                 (job_id, new_id)).fetchone()
    if state == "skipped":  # the new item can never run: neither can they
        _cascade(cur, job_id, new_id, error or f"blocked: {new_id} skipped")


def _unblock_cascaded(cur: sqlite3.Cursor, job_id: str, requeued: list[str], job_held: int) -> None:
    """Items skipped because a requeued item failed are pending again, waiting as before."""
    reasons = _encode([f"blocked: {item_id} failed" for item_id in requeued])
    back = [row[0] for row in cur.execute(
        "UPDATE items SET state = 'pending', error = NULL, owner = NULL, not_before = 0, "
        "waiting = (SELECT COUNT(*) FROM deps WHERE deps.job_id = items.job_id AND deps.item_id = items.item_id), "
        "gate = CASE WHEN gate IN (SELECT name FROM gates WHERE opened_at IS NOT NULL) THEN NULL ELSE gate END "
        "WHERE job_id = ? AND state = 'skipped' AND error IN (SELECT value FROM json_each(?)) RETURNING item_id",
        (job_id, reasons))]
    cur.execute("UPDATE items SET held = ? | CASE WHEN waiting > 0 OR gate IS NOT NULL THEN 2 ELSE 0 END "
                "WHERE job_id = ? AND item_id IN (SELECT value FROM json_each(?))", (job_held, job_id, _encode(back)))


def _epoch(text: str) -> float:
    """An ISO 8601 deadline as ``storyloom.job.item_to_dict`` wrote it; naive means UTC, as in job files."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


# -- the plugin: scheme ``sqlite``


def folder_of(url: str, state_dir: Path) -> Path:
    """The state folder a ``sqlite`` URL names (the folder that holds ``storyloom.db``).

    ``sqlite`` or ``sqlite:``: ``state_dir``. ``sqlite:///abs/folder`` (or
    ``sqlite:/abs/folder``): an absolute folder. ``sqlite:relative/folder``:
    relative to the working folder. ``~`` is expanded and ``%xx`` decoded. A
    host (``sqlite://host/...``), a query or a fragment is a UsageError.
    """
    rest = url.partition(":")[2]
    if "?" in rest or "#" in rest:
        raise UsageError(f"store URL {mask_url(url)!r}: a sqlite URL takes no query or fragment")
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host:
            raise UsageError(f"store URL {mask_url(url)!r} names a host ({host!r}); a sqlite URL names a folder: "
                             "sqlite:///abs/folder or sqlite:relative/folder")
        rest = slash + path
    if not rest:
        return Path(state_dir)
    return Path(unquote(rest)).expanduser()


async def open_sqlite(url: str, *, state_dir: Path, settings: Any, create: bool) -> SQLiteStore:
    """The :class:`~storyloom.store.StoreOpener` for ``sqlite`` URLs."""
    folder = folder_of(url, state_dir)
    busy_timeout = _busy_timeout()
    if not create and not (folder / DB_NAME).is_file():
        raise StoreNotFound(f"no store in {folder} (run a job first, or pass --state-dir or --store)", str(folder))
    return SQLiteStore.open(folder, getattr(settings, "synchronous", "NORMAL"), busy_timeout)


def _busy_timeout() -> float:
    text = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if not text:
        return BUSY_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_BUSY_TIMEOUT_S:  # also refuses nan and inf
        raise UsageError(f"${BUSY_TIMEOUT_ENV} must be a number of seconds >= 0 and "
                         f"<= {MAX_BUSY_TIMEOUT_S:.0f}, not {text!r}")
    return value


@hookimpl
def loom_register_stores(register):
    register("sqlite", open_sqlite)
