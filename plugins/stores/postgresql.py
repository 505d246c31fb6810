"""The bundled ``postgresql`` store backend: the store's tables in one schema of a PostgreSQL database.

Chosen by a ``postgresql://`` (or ``postgres://``) store URL; see
:func:`parse_url` and docs/store.md "PostgreSQL".

The driver is psycopg 3 in sync mode with a ``psycopg_pool.ConnectionPool``:
psycopg's async mode and asyncpg both drive the asyncio loop, and the kernel
runs on trio. So every method runs one transaction in a worker thread
(``trio.to_thread.run_sync``) under a ``trio.CapacityLimiter`` the size of
the pool: no task ever waits for a connection while holding a thread.

Each method's transaction is a plain function of a cursor (``_op_*``), and
each statement a module constant, so that a protocol change touches one
function here. psycopg is imported only when a store is opened: the CLI of
a SQLite user does not pay for loading it.
"""

from __future__ import annotations

import functools
import json
import re
import select
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Collection, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

import trio

from storyloom import hookimpl
from storyloom.artifacts import Artifact
from storyloom.errors import UsageError
from storyloom.job import CRITICAL_WITHIN_S, HIGH_WITHIN_S
from storyloom.store.opening import mask_url
from storyloom.plugins.stores.pg_listen import NOTIFY_SQL, Listener
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

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql", "postgres")
#: The newest version of this backend's schema; one row per applied version
#: sits in the schema's ``storyloom_schema`` table. Bump it with a new entry in
#: :data:`MIGRATIONS`. Independent of the SQLite backend's numbers.
SCHEMA_VERSION = 4
#: Where the tables go when the URL names no ``schema``.
DEFAULT_SCHEMA = "storyloom"
DEFAULT_POOL_SIZE = 4
MAX_POOL_SIZE = 64
#: Seconds to wait for a connection (libpq ``connect_timeout``, unless the URL sets one).
CONNECT_TIMEOUT_S = 10
#: Seconds a call waits for a free pooled connection (or a lost one to come back).
POOL_TIMEOUT_S = 30.0
#: Times a transaction is run again after PostgreSQL aborted it for a deadlock,
#: a serialization failure or sitting idle too long: nothing of it was
#: written, so again is safe.
RETRIES = 5
#: The shortest ``idle_in_transaction_session_timeout`` a store sets (see
#: :func:`idle_timeout`): well above any pause between two statements of one
#: of its transactions, which are back to back in a thread.
MIN_IDLE_IN_TRANSACTION_S = 1.0
#: Seconds to wait for a new connection to run again a transaction whose
#: connection was lost before its COMMIT.
LOST_RETRY_WAIT_S = 5.0
RECORD_STATES = ("completed", "failed", "pending", "skipped")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: Query keys this backend reads itself; every other one goes to libpq.
_OWN_KEYS = ("schema", "pool_size", "listen", "pool_mode")
#: ``listen=`` values: wake workers with LISTEN/NOTIFY (default), or only poll.
_LISTEN_VALUES = {"on": True, "off": False}
#: ``pool_mode=`` values: what sits between the workers and the server.
#: ``session``: the server itself, or a pooler that gives each client one
#: server connection (session settings hold). ``transaction``: a pooler that
#: shares server connections per transaction (PgBouncer's transaction mode).
POOL_MODES = ("session", "transaction")

# -- the schema, version 1

# job_id and item_id sort by bytes ("C"), as SQLite's do, whatever the
# database's collation: list orders and the queue's ties are the same on both.
# items leaves a fifth of each page free, so that a start's update (model,
# time: no indexed column) can stay on its page (a HOT update, no index writes).
_TABLES_1 = (
    """CREATE TABLE jobs (
        job_id text COLLATE "C" PRIMARY KEY,
        job_type text NOT NULL,
        state text NOT NULL,
        definition text NOT NULL,
        reason text,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        runner text
    )""",
    """CREATE TABLE items (
        job_id text COLLATE "C" NOT NULL REFERENCES jobs (job_id),
        item_id text COLLATE "C" NOT NULL,
        seq integer NOT NULL,
        level integer NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        free_attempts integer NOT NULL DEFAULT 0,
        first_started_at double precision,
        last_model text,
        owner text,
        started_at double precision,
        not_before double precision NOT NULL DEFAULT 0,
        error_kind text,
        error text,
        definition text NOT NULL,
        route text,
        job_type text NOT NULL,
        qseq bigint NOT NULL,
        deadline double precision,
        level_since double precision NOT NULL,
        held boolean NOT NULL DEFAULT false,
        PRIMARY KEY (job_id, item_id)
    ) WITH (fillfactor = 80)""",
    """CREATE TABLE attempts (
        attempt_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id text COLLATE "C" NOT NULL,
        item_id text COLLATE "C" NOT NULL,
        attempt integer NOT NULL,
        model text,
        state text NOT NULL,
        error_kind text,
        error text,
        input_tokens bigint NOT NULL DEFAULT 0,
        output_tokens bigint NOT NULL DEFAULT 0,
        cost_usd double precision NOT NULL DEFAULT 0,
        started_at double precision NOT NULL,
        finished_at double precision NOT NULL,
        route text,
        reserved_usd double precision NOT NULL DEFAULT 0,
        unknown integer NOT NULL DEFAULT 0,
        FOREIGN KEY (job_id, item_id) REFERENCES items (job_id, item_id)
    )""",
    """CREATE TABLE results (
        job_id text COLLATE "C" NOT NULL,
        item_id text COLLATE "C" NOT NULL,
        text text NOT NULL,
        data text,
        created_at double precision NOT NULL,
        PRIMARY KEY (job_id, item_id),
        FOREIGN KEY (job_id, item_id) REFERENCES items (job_id, item_id)
    )""",
)
# Partial indexes, as in the SQLite backend: each holds only the rows it
# serves (pending and unheld items for the queue), so finished items, most of
# a big store, are in none of them and a claim costs the same on any size.
_INDEXES_1 = (
    # claim_next: an ordered walk for one job type; the claim's other tests
    # (not_before, exclude) read the included columns.
    "CREATE INDEX items_queue ON items (job_type, level, qseq) INCLUDE (not_before, job_id) "
    "WHERE state = 'pending' AND NOT held",
    # claim: the same for one job.
    "CREATE INDEX items_claim ON items (job_id, level, seq) INCLUDE (not_before) "
    "WHERE state = 'pending' AND NOT held",
    "CREATE INDEX items_queue_ready ON items (job_type, not_before) WHERE state = 'pending' AND NOT held",
    "CREATE INDEX items_ready ON items (job_id, not_before) WHERE state = 'pending'",
    "CREATE INDEX items_running ON items (job_id, owner) WHERE state = 'running'",
    # position, queued, queue_counts: the whole queue in order.
    "CREATE INDEX items_position ON items (level, qseq) INCLUDE (job_id) WHERE state = 'pending' AND NOT held",
    "CREATE INDEX items_deadline ON items (level, deadline) WHERE state = 'pending' AND deadline IS NOT NULL",
    "CREATE INDEX items_aging ON items (level, level_since) WHERE state = 'pending'",
    # add_job's MAX(qseq) is one step down this; unique because it is an order.
    "CREATE UNIQUE INDEX items_qseq ON items (qseq)",
    "CREATE INDEX attempts_item ON attempts (job_id, item_id, attempt)",
    "CREATE INDEX attempts_sent ON attempts (job_id, item_id, attempt) WHERE state = 'sent'",
    "CREATE INDEX attempts_finished ON attempts (job_id, finished_at, attempt_id)",
    "CREATE INDEX attempts_model ON attempts (model)",
)

# -- version 2: pipelines (dependencies, gates, artifacts; issue 10)

# An item is *blocked* while ``waiting`` (its dependencies not completed yet:
# rows of deps naming it) is above 0 or ``gate`` (a closed gate's name) is
# set. Blocked is kept apart from ``held`` (which stays "the job is paused or
# cancelled", set only with the job's state): the two change in different
# transactions under different locks, so one flag made of both could race.
_CLAIMABLE = "state = 'pending' AND NOT held AND waiting = 0 AND gate IS NULL"
_UNBLOCKED = "state = 'pending' AND waiting = 0 AND gate IS NULL"
_COLUMNS_2 = (
    "ALTER TABLE items ADD COLUMN waiting integer NOT NULL DEFAULT 0",
    "ALTER TABLE items ADD COLUMN gate text",
)
_TABLES_2 = (
    # One row per open dependency: item_id waits on after_id (of the same
    # job). Deleted when after_id completes; kept when it fails, so that a
    # requeued item can bring back what it blocked.
    """CREATE TABLE deps (
        job_id text COLLATE "C" NOT NULL,
        after_id text COLLATE "C" NOT NULL,
        item_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (job_id, after_id, item_id)
    )""",
    """CREATE TABLE gates (
        name text COLLATE "C" PRIMARY KEY,
        opened_at double precision
    )""",
    # artifact_id: the order they were committed in.
    """CREATE TABLE artifacts (
        artifact_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        project_id text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        version integer NOT NULL,
        content text NOT NULL,
        job_id text NOT NULL,
        item_id text NOT NULL,
        attempt integer NOT NULL,
        model text,
        created_at double precision NOT NULL,
        UNIQUE (project_id, kind, key, version)
    )""",
)
# The queue's partial indexes again, now without blocked items: a claim
# never meets one, however many wait. Same names, so the statements and
# tests that name them are unchanged.
_INDEXES_2 = tuple(f"DROP INDEX {name}" for name in (
    "items_queue", "items_claim", "items_queue_ready", "items_position")) + (
    f"CREATE INDEX items_queue ON items (job_type, level, qseq) INCLUDE (not_before, job_id) WHERE {_CLAIMABLE}",
    f"CREATE INDEX items_claim ON items (job_id, level, seq) INCLUDE (not_before) WHERE {_CLAIMABLE}",
    # claim of one stage of one job (storyloom run of a pipeline).
    f"CREATE INDEX items_claim_stage ON items (job_id, job_type, level, seq) INCLUDE (not_before) "
    f"WHERE {_CLAIMABLE}",
    f"CREATE INDEX items_queue_ready ON items (job_type, not_before) WHERE {_CLAIMABLE}",
    f"CREATE INDEX items_position ON items (level, qseq) INCLUDE (job_id) WHERE {_CLAIMABLE}",
    # next_ready_at: as items_ready, without blocked items.
    f"CREATE INDEX items_unblocked ON items (job_id, not_before) WHERE {_UNBLOCKED}",
    "CREATE INDEX items_gate ON items (gate) WHERE gate IS NOT NULL AND state = 'pending'",
    "CREATE INDEX deps_item ON deps (job_id, item_id)",
    "CREATE INDEX artifacts_project ON artifacts (project_id, kind, artifact_id)",
)

# -- version 3: leases and fences, purely additive. The lease is on the
# database's clock (_DB_NOW); the fence only ever grows. An item left running
# by a version 1 or 2 worker has no lease (NULL), which reap reads as expired.
_LEASES_3 = (
    "ALTER TABLE items ADD COLUMN lease_until double precision, ADD COLUMN fence integer NOT NULL DEFAULT 0",
    # The claim's fence an attempt ran under (NULL: written before version 3).
    "ALTER TABLE attempts ADD COLUMN fence integer",
    # For operators only: who works on this store, and since when.
    """CREATE TABLE workers (
        worker_id text COLLATE "C" PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at double precision NOT NULL,
        beat_at double precision NOT NULL,
        lease_s double precision NOT NULL
    )""",
    # reap: running items by lease end.
    "CREATE INDEX items_lease ON items (lease_until) WHERE state = 'running'",
)

# -- version 4: rate limits and budgets shared by every worker (issue 11).
_SHARED_4 = (
    # One row per model: both GCRAs (requests, tokens) and the cool-down, so
    # that a take computes one send time for both in one single-row UPDATE.
    """CREATE TABLE rate_limits (
        model text COLLATE "C" PRIMARY KEY,
        requests_tat double precision NOT NULL DEFAULT 0,
        tokens_tat double precision NOT NULL DEFAULT 0,
        cool_until double precision NOT NULL DEFAULT 0,
        sent_at double precision NOT NULL DEFAULT 0,
        taken_at double precision NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE budgets (
        job_id text COLLATE "C" PRIMARY KEY,
        cap double precision NOT NULL,
        spent double precision NOT NULL DEFAULT 0,
        reserved double precision NOT NULL DEFAULT 0
    )""",
    # A reservation not settled yet, and the worker that holds it.
    """CREATE TABLE budget_holds (
        hold_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id text COLLATE "C" NOT NULL,
        owner text COLLATE "C" NOT NULL,
        amount double precision NOT NULL
    )""",
    "CREATE INDEX budget_holds_job ON budget_holds (job_id)",
    "CREATE INDEX budget_holds_owner ON budget_holds (owner)",
)

#: version -> the statements that bring a store from the version before to it,
#: run in one transaction. Only ever append.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: _TABLES_1 + _INDEXES_1,
    2: _COLUMNS_2 + _TABLES_2 + _INDEXES_2,
    3: _LEASES_3,
    4: _SHARED_4,
}

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS storyloom_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)"""

# -- statements

#: The database's clock, in epoch seconds: clock_timestamp(), not now() (the
#: transaction's start), so a lease counts from the statement that sets it.
#: Every lease is computed and compared on it, never on a worker's clock.
_DB_NOW = "extract(epoch FROM clock_timestamp())::float8"

_JOB_COLUMNS = "job_id, job_type, state, definition, created_at, updated_at, reason, runner"
_CLAIMED_COLUMNS = ("items.level, items.qseq, items.job_id, items.item_id, items.definition, items.attempts, "
                    "items.last_model, items.free_attempts, items.first_started_at, items.error_kind, items.fence")
# SKIP LOCKED: two workers claiming at once each take the next rows the other
# has not locked, never waiting and never sharing one. Read committed
# re-checks each locked row, so an item claimed and committed meanwhile drops out.
_CLAIM = f"""
WITH picked AS (
    SELECT job_id, item_id FROM items
    WHERE job_id = %(job_id)s AND {_CLAIMABLE} AND not_before <= %(now)s
        AND (%(only)s::text[] IS NULL OR item_id = ANY (%(only)s::text[]))
    ORDER BY level, seq LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE items SET state = 'running', owner = %(owner)s, started_at = %(now)s, fence = items.fence + 1,
    lease_until = {_DB_NOW} + %(lease_s)s
FROM picked WHERE items.job_id = picked.job_id AND items.item_id = picked.item_id
RETURNING {_CLAIMED_COLUMNS}
"""
_CLAIM_NEXT = f"""
WITH picked AS (
    SELECT job_id, item_id FROM items
    WHERE job_type = %(job_type)s AND {_CLAIMABLE} AND not_before <= %(now)s
        AND job_id <> ALL (%(exclude)s::text[])
    ORDER BY level, qseq LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE items SET state = 'running', owner = %(owner)s, started_at = %(now)s, fence = items.fence + 1,
    lease_until = {_DB_NOW} + %(lease_s)s
FROM picked WHERE items.job_id = picked.job_id AND items.item_id = picked.item_id
RETURNING {_CLAIMED_COLUMNS}
"""
# The claim of one stage of one job (storyloom run of a pipeline).
_CLAIM_STAGE = _CLAIM.replace("job_id = %(job_id)s AND", "job_id = %(job_id)s AND job_type = %(job_type)s AND")
# ORDER BY ... LIMIT 1 rather than MIN(): one step into the index even
# before the table has statistics (the planner's MIN rewrite needs them).
_NEXT_READY_AT = f"""
SELECT not_before FROM items WHERE job_id = %s AND {_UNBLOCKED} ORDER BY not_before LIMIT 1
"""
_NEXT_STAGE_READY_AT = f"""
SELECT not_before FROM items WHERE job_id = %s AND job_type = %s AND {_CLAIMABLE} ORDER BY not_before LIMIT 1
"""
_NEXT_QUEUED_AT = f"""
SELECT not_before FROM items WHERE job_type = %s AND {_CLAIMABLE} ORDER BY not_before LIMIT 1
"""
_PROMOTE_CRITICAL = """
UPDATE items SET level = 0, level_since = %s WHERE state = 'pending' AND level IN (1, 2, 3) AND deadline < %s
"""
_PROMOTE_HIGH = """
UPDATE items SET level = 1, level_since = %s WHERE state = 'pending' AND level IN (2, 3) AND deadline < %s
"""
_AGE = """
UPDATE items SET level = level - 1, level_since = %s WHERE state = 'pending' AND level IN (2, 3) AND level_since <= %s
"""
_POSITION = """
SELECT CASE WHEN item.state = 'pending' AND NOT item.held AND item.waiting = 0 AND item.gate IS NULL THEN 1 + (
    SELECT COUNT(*) FROM items AS ahead
    WHERE ahead.state = 'pending' AND NOT ahead.held AND ahead.waiting = 0 AND ahead.gate IS NULL AND (ahead.level, ahead.qseq) < (item.level, item.qseq)
) ELSE -1 END
FROM items AS item WHERE item.job_id = %s AND item.item_id = %s
"""
_QUEUED = f"""
SELECT job_id, item_id, job_type, level, not_before, deadline FROM items
WHERE {_CLAIMABLE} ORDER BY level, qseq LIMIT %s
"""
_QUEUE_COUNTS = f"""
SELECT level, job_id, COUNT(*) FROM items WHERE {_CLAIMABLE} GROUP BY level, job_id
"""
_LOCK_JOB = "SELECT state FROM jobs WHERE job_id = %s FOR UPDATE"
_SET_JOB_STATE = "UPDATE jobs SET state = %s, reason = %s, updated_at = %s, runner = %s WHERE job_id = %s"
_HOLD_ITEMS = "UPDATE items SET held = %s WHERE job_id = %s AND state IN ('pending', 'running')"
_CANCEL_ITEMS = """
UPDATE items SET state = 'skipped', error_kind = NULL, error = %s, owner = NULL
WHERE job_id = %s AND state IN ('pending', 'running')
"""
# Children first, for the foreign keys; jobs last, so its rowcount says whether there was one.
_DELETE_JOB = tuple(f"DELETE FROM {table} WHERE job_id = %s" for table in (
    "budget_holds", "budgets", "results", "attempts", "deps", "items", "jobs"))
_SET_DEFINITION = "UPDATE jobs SET definition = %s, updated_at = %s WHERE job_id = %s"
_RUNNING_OWNERS = "SELECT DISTINCT owner FROM items WHERE job_id = %s AND state = 'running'"
_RELEASE_OWNER = """
UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL
WHERE job_id = %s AND state = 'running' AND owner = %s
"""
# recover: the owner is gone, so its late outcomes must no longer match.
_RECOVER_OWNER = """
UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL, fence = fence + 1
WHERE job_id = %s AND state = 'running' AND owner = %s
"""
# A NULL fence: an old caller's release, by owner only.
_RELEASE_ITEMS = """
UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL
FROM unnest(%s::text[], %s::integer[]) AS given (item_id, fence)
WHERE items.job_id = %s AND items.item_id = given.item_id AND items.state = 'running' AND items.owner = %s
    AND (given.fence IS NULL OR items.fence = given.fence)
"""
# Every transaction that may wait for several item rows takes them in one
# order first (renew, record, release): two taking them in the order their
# statements meet them can each wait for the other, a deadlock PostgreSQL
# breaks only after deadlock_timeout (1 s) by aborting one. ORDER BY runs
# before FOR UPDATE, so the rows are locked in that order.
_LOCK_ITEMS = """
SELECT 1 FROM items JOIN unnest(%s::text[], %s::text[]) AS k (job_id, item_id) USING (job_id, item_id)
ORDER BY items.job_id, items.item_id FOR UPDATE OF items
"""
_RENEW = f"""
UPDATE items SET lease_until = {_DB_NOW} + %(lease_s)s
FROM unnest(%(job_id)s::text[], %(item_id)s::text[], %(fence)s::integer[]) AS held (job_id, item_id, fence)
WHERE items.job_id = held.job_id AND items.item_id = held.item_id AND items.state = 'running'
    AND items.owner = %(owner)s AND items.fence = held.fence
RETURNING items.job_id, items.item_id, items.fence
"""
# Expired leases back to pending, fence + 1, in one batch; SKIP LOCKED so
# that concurrent reapers (and a worker recording meanwhile) never collide,
# and read committed re-checks each locked row. No lease at all (an item
# claimed by a version 1 worker) counts as expired. The attempts still 'sent'
# under the lost fence become stale: outcome unknown, their worst case counts.
_REAP = f"""
WITH lost AS (
    SELECT job_id, item_id FROM items
    WHERE state = 'running' AND (lease_until IS NULL OR lease_until < {_DB_NOW})
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), reaped AS (
    UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL, fence = items.fence + 1
    FROM lost WHERE items.job_id = lost.job_id AND items.item_id = lost.item_id
    RETURNING items.job_id, items.item_id, items.fence - 1 AS fence
), staled AS (
    UPDATE attempts SET state = 'stale', error_kind = 'LEASE_LOST',
        error = 'its worker lost the lease (stopped, cut off or killed): outcome unknown'
    FROM reaped
    WHERE attempts.job_id = reaped.job_id AND attempts.item_id = reaped.item_id
        AND COALESCE(attempts.fence, 0) = reaped.fence AND attempts.state = 'sent'
)
SELECT COUNT(*) FROM reaped
"""
# -- shared rate limits and budgets. A take locks its model's row first
# (_RATE_LOCK), then reads the database's clock once (``n.now``), so the
# clock it computes with is read while it holds the row: never earlier than
# the take before it, and one reading for every value it writes.
_RATE_LOCK = "SELECT 1 FROM rate_limits WHERE model = %s FOR UPDATE"
_TOKENS_ADJUSTED = """(CASE WHEN %(adjust)s > 0 THEN GREATEST(tokens_tat, n.now) + %(adjust)s
    WHEN tokens_tat > n.now THEN GREATEST(n.now, tokens_tat + %(adjust)s) ELSE tokens_tat END)"""
_SEND_AT = (f"GREATEST(n.now, cool_until, requests_tat - %(request_slack)s, "
            f"{_TOKENS_ADJUSTED} - %(token_slack)s)")
_RATE_TAKE = f"""
UPDATE rate_limits SET
    requests_tat = GREATEST(requests_tat, {_SEND_AT}) + %(request_cost)s,
    tokens_tat = GREATEST({_TOKENS_ADJUSTED}, {_SEND_AT}) + %(token_cost)s,
    sent_at = {_SEND_AT}, taken_at = n.now
FROM (SELECT {_DB_NOW} AS now) n
WHERE model = %(model)s
RETURNING n.now, sent_at, requests_tat, tokens_tat, cool_until
"""
# A take lost in a crash costs nothing (the request it timed was not sent
# either): its commit need not wait for the disk, nor hold the row that long.
_NO_FLUSH = "SET LOCAL synchronous_commit TO off"
_RATE_ROW = "INSERT INTO rate_limits (model) VALUES (%s) ON CONFLICT (model) DO NOTHING"
_RATE_COOL = f"""
INSERT INTO rate_limits (model, cool_until) VALUES (%s, {_DB_NOW} + %s)
ON CONFLICT (model) DO UPDATE SET cool_until = GREATEST(rate_limits.cool_until, EXCLUDED.cool_until)
RETURNING cool_until
"""
_BUDGET_OPEN = """
INSERT INTO budgets (job_id, cap, spent) VALUES (%s, %s, %s)
ON CONFLICT (job_id) DO UPDATE SET cap = EXCLUDED.cap
"""
_BUDGET_STATE = """
SELECT cap, spent, reserved, (SELECT COUNT(*) FROM budget_holds h WHERE h.job_id = b.job_id)
FROM budgets b WHERE job_id = %s
"""
_BUDGET_RESERVE = """
WITH b AS (
    UPDATE budgets SET reserved = reserved + %(amount)s
    WHERE job_id = %(job_id)s AND spent + reserved + %(amount)s <= cap
    RETURNING job_id
)
INSERT INTO budget_holds (job_id, owner, amount) SELECT job_id, %(owner)s, %(amount)s FROM b
RETURNING hold_id
"""
# Float sums leave residue (0.1 + 0.2 - 0.3 != 0): what is left below a
# billionth of a cent once a hold is gone is none.
_LESS = "CASE WHEN reserved - {amount} < 1e-11 THEN 0 ELSE reserved - {amount} END"
_BUDGET_SETTLE = f"""
WITH h AS (DELETE FROM budget_holds WHERE hold_id = %(hold_id)s RETURNING job_id, amount)
UPDATE budgets SET spent = spent + %(actual)s, reserved = {_LESS.format(amount="h.amount")}
FROM h WHERE budgets.job_id = h.job_id
RETURNING budgets.job_id
"""
# The holds of workers with no live heartbeat go to spent, whole.
_BUDGET_RECLAIM = f"""
WITH gone AS (
    DELETE FROM budget_holds h WHERE NOT EXISTS (
        SELECT 1 FROM workers w WHERE w.worker_id = h.owner AND w.beat_at + w.lease_s >= {_DB_NOW})
    RETURNING job_id, amount
), per_job AS (SELECT job_id, SUM(amount) AS amount FROM gone GROUP BY job_id)
UPDATE budgets SET spent = spent + per_job.amount, reserved = {_LESS.format(amount="per_job.amount")}
FROM per_job WHERE budgets.job_id = per_job.job_id
"""
_FORGET_OLD_WORKERS = f"DELETE FROM workers WHERE beat_at < {_DB_NOW} - %s"
_HEARTBEAT = f"""
INSERT INTO workers (worker_id, host, pid, started_at, beat_at, lease_s) VALUES (%s, %s, %s, %s, {_DB_NOW}, %s)
ON CONFLICT (worker_id) DO UPDATE SET beat_at = EXCLUDED.beat_at, lease_s = EXCLUDED.lease_s
"""
_FORGET_WORKER = "DELETE FROM workers WHERE worker_id = %s"
_WORKERS = f"""
SELECT worker_id, host, pid, started_at, beat_at, lease_s, beat_at + lease_s >= {_DB_NOW}
FROM workers ORDER BY started_at, worker_id
"""
_HOLDING = "SELECT owner, job_id, COUNT(*) FROM items WHERE state = 'running' GROUP BY owner, job_id"
# The per-row statements of record(): one per start and one per outcome, for
# a single row or a batch naming an item twice (see _applied). Each statement
# does every step of its start or outcome in data-modifying CTEs, which see
# the table as it was before the statement but each other's RETURNING; the
# next statement sees this one's changes, so two outcomes of one item in a
# batch apply in order (the second is refused). Each returns how many items
# it applied to: 1 or 0.
_RECORD_START = """
WITH started AS (
    UPDATE items SET last_model = %(model)s, started_at = %(started_at)s
    WHERE job_id = %(job_id)s AND item_id = %(item_id)s AND state = 'running' AND owner = %(owner)s
        AND (%(fence)s::integer IS NULL OR fence = %(fence)s::integer)
    RETURNING 1
), sent AS (
    INSERT INTO attempts (job_id, item_id, attempt, model, state, started_at, finished_at, reserved_usd, unknown,
        fence)
    SELECT %(job_id)s, %(item_id)s, %(attempt)s::integer, %(model)s, 'sent', %(started_at)s::float8,
        %(started_at)s::float8, %(reserved_usd)s::float8, 1, %(fence)s::integer
    FROM started WHERE %(attempt)s::integer <> 0
)
SELECT COUNT(*) FROM started
"""
# An outcome: the item's state change (only while it is running for this
# owner), then the attempt row (completing the newest 'sent' row of its
# number, else a new row: an older 'sent' one belongs to a worker that died
# and stays outcome unknown) and the result. Refused, a 'sent' attempt of an
# item that a cancel skipped still settles with its real cost (only a
# skipped item: one recovered elsewhere may have a newer row of that number).
_RECORD_OUTCOME = """
WITH finished AS (
    UPDATE items SET state = %(state)s, attempts = %(attempt)s, free_attempts = free_attempts + %(free)s,
        first_started_at = COALESCE(first_started_at, %(started_at)s), last_model = COALESCE(%(model)s, last_model),
        not_before = %(not_before)s, error_kind = %(error_kind)s, error = %(error)s, route = %(route)s, owner = NULL,
        lease_until = NULL
    WHERE job_id = %(job_id)s AND item_id = %(item_id)s AND state = 'running' AND owner = %(owner)s
        AND (%(fence)s::integer IS NULL OR fence = %(fence)s::integer)
    RETURNING 1
), newest_sent AS (
    SELECT MAX(attempt_id) AS attempt_id FROM attempts
    WHERE %(sent)s AND job_id = %(job_id)s AND item_id = %(item_id)s AND attempt = %(attempt)s AND state = 'sent'
), completed_sent AS (
    UPDATE attempts SET model = %(model)s, state = %(state)s, error_kind = %(error_kind)s, error = %(error)s,
        input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s, cost_usd = %(cost_usd)s,
        started_at = %(started_at)s, finished_at = %(finished_at)s, route = %(route)s,
        reserved_usd = %(reserved_usd)s, unknown = %(unknown)s
    WHERE attempt_id = (SELECT attempt_id FROM newest_sent) AND EXISTS (SELECT 1 FROM finished)
    RETURNING 1
), added AS (
    INSERT INTO attempts (job_id, item_id, attempt, model, state, error_kind, error, input_tokens, output_tokens,
        cost_usd, started_at, finished_at, route, reserved_usd, unknown, fence)
    SELECT %(job_id)s, %(item_id)s, %(attempt)s::integer, %(model)s::text, %(state)s::text, %(error_kind)s::text,
        %(error)s::text, %(input_tokens)s::bigint, %(output_tokens)s::bigint, %(cost_usd)s::float8,
        %(started_at)s::float8, %(finished_at)s::float8, %(route)s::text, %(reserved_usd)s::float8,
        %(unknown)s::integer, %(fence)s::integer
    WHERE EXISTS (SELECT 1 FROM finished) AND NOT EXISTS (SELECT 1 FROM completed_sent)
), stored AS (
    INSERT INTO results (job_id, item_id, text, data, created_at)
    SELECT %(job_id)s, %(item_id)s, %(result_text)s::text, %(result_data)s::text, %(now)s::float8
    WHERE EXISTS (SELECT 1 FROM finished) AND %(state)s::text = 'completed'
    ON CONFLICT (job_id, item_id) DO UPDATE SET text = EXCLUDED.text, data = EXCLUDED.data,
        created_at = EXCLUDED.created_at
), settled AS (
    UPDATE attempts SET state = 'skipped', model = %(model)s, error_kind = %(error_kind)s, error = %(error)s,
        input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s, cost_usd = %(cost_usd)s,
        finished_at = %(finished_at)s, route = %(route)s, unknown = %(unknown)s
    WHERE attempt_id = (SELECT attempt_id FROM newest_sent) AND NOT EXISTS (SELECT 1 FROM finished)
        AND %(fence)s::integer IS NULL AND EXISTS (SELECT 1 FROM items WHERE job_id = %(job_id)s AND item_id = %(item_id)s AND state = 'skipped')
)
SELECT COUNT(*) FROM finished
"""
# The same two steps for a whole batch at once, its rows as arrays (unnest
# WITH ORDINALITY keeps their order): two statements per group commit, however
# large. Only for a batch that names each item once: the CTEs see the tables
# as they were before the statement, so two outcomes of one item must be two
# statements (then record() takes the per-row ones above).
_BATCH_START = """
WITH input AS (
    SELECT * FROM unnest(%(job_id)s::text[], %(item_id)s::text[], %(model)s::text[], %(started_at)s::float8[],
                         %(attempt)s::integer[], %(reserved_usd)s::float8[], %(fence)s::integer[])
        WITH ORDINALITY AS t (job_id, item_id, model, started_at, attempt, reserved_usd, fence, ord)
), started AS (
    UPDATE items SET last_model = input.model, started_at = input.started_at FROM input
    WHERE items.job_id = input.job_id AND items.item_id = input.item_id AND items.state = 'running'
        AND items.owner = %(owner)s AND (input.fence IS NULL OR items.fence = input.fence)
    RETURNING input.*
), sent AS (
    INSERT INTO attempts (job_id, item_id, attempt, model, state, started_at, finished_at, reserved_usd, unknown,
        fence)
    SELECT job_id, item_id, attempt, model, 'sent', started_at, started_at, reserved_usd, 1, fence
    FROM started WHERE attempt <> 0 ORDER BY ord
)
SELECT ord FROM started
"""
_BATCH_OUTCOME = """
WITH input AS (
    SELECT * FROM unnest(%(job_id)s::text[], %(item_id)s::text[], %(state)s::text[], %(attempt)s::integer[],
                         %(free)s::integer[], %(started_at)s::float8[], %(finished_at)s::float8[],
                         %(model)s::text[], %(not_before)s::float8[], %(error_kind)s::text[], %(error)s::text[],
                         %(route)s::text[], %(sent)s::boolean[], %(input_tokens)s::bigint[],
                         %(output_tokens)s::bigint[], %(cost_usd)s::float8[], %(reserved_usd)s::float8[],
                         %(unknown)s::integer[], %(result_text)s::text[], %(result_data)s::text[],
                         %(fence)s::integer[])
        WITH ORDINALITY AS t (job_id, item_id, state, attempt, free, started_at, finished_at, model, not_before,
                              error_kind, error, route, sent, input_tokens, output_tokens, cost_usd, reserved_usd,
                              unknown, result_text, result_data, fence, ord)
), finished AS (
    UPDATE items SET state = input.state, attempts = input.attempt, free_attempts = items.free_attempts + input.free,
        first_started_at = COALESCE(items.first_started_at, input.started_at),
        last_model = COALESCE(input.model, items.last_model), not_before = input.not_before,
        error_kind = input.error_kind, error = input.error, route = input.route, owner = NULL, lease_until = NULL
    FROM input
    WHERE items.job_id = input.job_id AND items.item_id = input.item_id AND items.state = 'running'
        AND items.owner = %(owner)s AND (input.fence IS NULL OR items.fence = input.fence)
    RETURNING input.*
), newest_sent AS (
    SELECT input.ord, (SELECT MAX(attempt_id) FROM attempts
                       WHERE attempts.job_id = input.job_id AND attempts.item_id = input.item_id
                           AND attempts.attempt = input.attempt AND attempts.state = 'sent') AS attempt_id
    FROM input WHERE input.sent
), completed_sent AS (
    UPDATE attempts SET model = f.model, state = f.state, error_kind = f.error_kind, error = f.error,
        input_tokens = f.input_tokens, output_tokens = f.output_tokens, cost_usd = f.cost_usd,
        started_at = f.started_at, finished_at = f.finished_at, route = f.route, reserved_usd = f.reserved_usd,
        unknown = f.unknown
    FROM finished AS f JOIN newest_sent AS n ON n.ord = f.ord
    WHERE attempts.attempt_id = n.attempt_id
    RETURNING f.ord
), added AS (
    INSERT INTO attempts (job_id, item_id, attempt, model, state, error_kind, error, input_tokens, output_tokens,
        cost_usd, started_at, finished_at, route, reserved_usd, unknown, fence)
    SELECT job_id, item_id, attempt, model, state, error_kind, error, input_tokens, output_tokens, cost_usd,
        started_at, finished_at, route, reserved_usd, unknown, fence
    FROM finished WHERE ord NOT IN (SELECT ord FROM completed_sent) ORDER BY ord
), stored AS (
    INSERT INTO results (job_id, item_id, text, data, created_at)
    SELECT job_id, item_id, result_text, result_data, %(now)s::float8 FROM finished WHERE state = 'completed'
    ON CONFLICT (job_id, item_id) DO UPDATE SET text = EXCLUDED.text, data = EXCLUDED.data,
        created_at = EXCLUDED.created_at
), settled AS (
    UPDATE attempts SET state = 'skipped', model = i.model, error_kind = i.error_kind, error = i.error,
        input_tokens = i.input_tokens, output_tokens = i.output_tokens, cost_usd = i.cost_usd,
        finished_at = i.finished_at, route = i.route, unknown = i.unknown
    FROM input AS i JOIN newest_sent AS n ON n.ord = i.ord
    WHERE attempts.attempt_id = n.attempt_id AND i.ord NOT IN (SELECT ord FROM finished) AND i.fence IS NULL
        AND EXISTS (SELECT 1 FROM items WHERE items.job_id = i.job_id AND items.item_id = i.item_id
                    AND items.state = 'skipped')
)
SELECT ord FROM finished
"""
# A refused outcome under a fence (see _settle_refused): complete the row its
# start wrote (or that reap marked stale) for that very claim; a newer
# claim's rows are not touched. Else a new 'stale' row.
_SETTLE_STALE = """
UPDATE attempts SET state = %(state)s, model = %(model)s, error_kind = %(error_kind)s, error = %(error)s,
    input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s, cost_usd = %(cost_usd)s,
    started_at = %(started_at)s, finished_at = %(finished_at)s, route = %(route)s,
    reserved_usd = %(reserved_usd)s, unknown = %(unknown)s
WHERE attempt_id = (SELECT MAX(attempt_id) FROM attempts
                    WHERE job_id = %(job_id)s AND item_id = %(item_id)s AND attempt = %(attempt)s
                        AND fence = %(fence)s AND state IN ('sent', 'stale'))
"""
_INSERT_STALE = """
INSERT INTO attempts (job_id, item_id, attempt, model, state, error_kind, error, input_tokens, output_tokens,
    cost_usd, started_at, finished_at, route, reserved_usd, unknown, fence)
VALUES (%(job_id)s, %(item_id)s, %(attempt)s, %(model)s, 'stale', %(error_kind)s, %(error)s, %(input_tokens)s,
    %(output_tokens)s, %(cost_usd)s, %(started_at)s, %(finished_at)s, %(route)s, %(reserved_usd)s, %(unknown)s,
    %(fence)s)
"""
_ITEM_STATE_FENCE = "SELECT state, fence FROM items WHERE job_id = %s AND item_id = %s"
_REQUEUE_FAILED = """
UPDATE items SET state = 'pending', free_attempts = attempts, first_started_at = NULL, not_before = 0,
    owner = NULL, held = %s
WHERE job_id = %s AND state = 'failed' AND (%s::text[] IS NULL OR error_kind = ANY (%s::text[]))
"""
# -- pipelines
_DEPENDENCIES = """
SELECT item_id, state, error FROM items WHERE job_id = %s AND item_id = ANY (%s::text[]) ORDER BY item_id FOR SHARE
"""
_INSERT_DEPS = """
INSERT INTO deps (job_id, after_id, item_id) SELECT %s, after_id, %s FROM unnest(%s::text[]) AS t (after_id)
ON CONFLICT DO NOTHING
"""
_ADD_GATE = "INSERT INTO gates (name, opened_at) VALUES (%s, NULL) ON CONFLICT DO NOTHING"
_GATE_OPENED = "SELECT opened_at FROM gates WHERE name = %s FOR SHARE"
_BLOCK = "UPDATE items SET waiting = %s, gate = %s WHERE job_id = %s AND item_id = %s"
_SKIP_ONE = """
UPDATE items SET state = 'skipped', error = %s, error_kind = NULL, owner = NULL
WHERE job_id = %s AND item_id = %s AND state = 'pending'
"""
_SKIP_WAITERS = """
UPDATE items SET state = 'skipped', error = %s, error_kind = NULL, owner = NULL
WHERE job_id = %s AND state = 'pending'
    AND item_id IN (SELECT item_id FROM deps WHERE job_id = %s AND after_id = ANY (%s::text[]))
RETURNING item_id
"""
# Items completed: their deps rows go, and each waiter has that many fewer
# (one that waited on two of them, two fewer).
_RELEASE_WAITERS = """
WITH done AS (
    DELETE FROM deps USING unnest(%s::text[], %s::text[]) AS d (job_id, after_id)
    WHERE deps.job_id = d.job_id AND deps.after_id = d.after_id
    RETURNING deps.job_id, deps.item_id
), released AS (
    SELECT job_id, item_id, COUNT(*) AS n FROM done GROUP BY job_id, item_id
)
UPDATE items SET waiting = items.waiting - released.n FROM released
WHERE items.job_id = released.job_id AND items.item_id = released.item_id AND items.state = 'pending'
"""
# Every item waiting on old waits on new instead; one that waited on both,
# on new once (one fewer). old's deps rows go; new's stay or are added.
_MOVE_DEPS = """
WITH moved AS (
    DELETE FROM deps WHERE job_id = %(job_id)s AND after_id = %(old)s AND item_id <> %(new)s
    RETURNING item_id
), added AS (
    INSERT INTO deps (job_id, after_id, item_id) SELECT %(job_id)s, %(new)s, item_id FROM moved
    ON CONFLICT DO NOTHING RETURNING item_id
)
UPDATE items SET waiting = waiting - 1
WHERE job_id = %(job_id)s AND state = 'pending'
    AND item_id IN (SELECT item_id FROM moved) AND item_id NOT IN (SELECT item_id FROM added)
"""
_FOLLOW_UP_START = """
SELECT job_type, state, (SELECT COALESCE(MAX(seq), -1) FROM items WHERE job_id = jobs.job_id),
    (SELECT COALESCE(MAX(qseq), 0) FROM items) FROM jobs WHERE job_id = %s
"""
_INSERT_FOLLOW_UP = """
INSERT INTO items (job_id, item_id, seq, level, state, definition, job_type, qseq, deadline, level_since, held)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, item_id) DO NOTHING
"""
_INSERT_ARTIFACT = """
INSERT INTO artifacts (project_id, kind, key, version, content, job_id, item_id, attempt, model, created_at)
SELECT %(project_id)s, %(kind)s, %(key)s, COALESCE(MAX(version), 0) + 1, %(content)s, %(job_id)s, %(item_id)s,
    %(attempt)s, %(model)s, %(created_at)s
FROM artifacts WHERE project_id = %(project_id)s AND kind = %(kind)s AND key = %(key)s
"""
_OPEN_GATE = """
INSERT INTO gates (name, opened_at) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET opened_at = COALESCE(gates.opened_at, EXCLUDED.opened_at)
"""
_UNGATE = "UPDATE items SET gate = NULL WHERE gate = %s AND state = 'pending'"
_GATES = """
SELECT name, opened_at, (SELECT COUNT(*) FROM items WHERE items.gate = gates.name AND items.state = 'pending')
FROM gates ORDER BY name
"""
_ARTIFACTS = """
SELECT project_id, kind, key, content, version, job_id, item_id, attempt, model, created_at FROM artifacts
WHERE project_id = %s AND (%s::text[] IS NULL OR kind = ANY (%s::text[])) ORDER BY artifact_id
"""
_UNBLOCK_CASCADED = """
WITH back AS (
    SELECT item_id FROM items WHERE job_id = %(job_id)s AND state = 'skipped' AND error = ANY (%(reasons)s::text[])
)
UPDATE items SET state = 'pending', error = NULL, owner = NULL, not_before = 0, held = %(held)s,
    waiting = (SELECT COUNT(*) FROM deps WHERE deps.job_id = items.job_id AND deps.item_id = items.item_id),
    gate = CASE WHEN gate IN (SELECT name FROM gates WHERE opened_at IS NOT NULL) THEN NULL ELSE gate END
WHERE job_id = %(job_id)s AND item_id IN (SELECT item_id FROM back)
"""
_COPY_ITEMS = """
COPY items (job_id, item_id, seq, level, state, definition, job_type, qseq, deadline, level_since, held)
FROM STDIN (FORMAT BINARY)
"""
_COPY_TYPES = ("text", "text", "int4", "int4", "text", "text", "text", "int8", "float8", "float8", "bool")
_COUNTS = "SELECT state, COUNT(*) FROM items WHERE job_id = %s GROUP BY state"
_RUNNING = f"""
SELECT item_id, last_model, started_at, attempts, owner, lease_until - {_DB_NOW}, fence FROM items
WHERE job_id = %s AND state = 'running' ORDER BY started_at, seq
"""
_ITEMS = """
SELECT item_id, state, attempts, last_model, error_kind, error, definition, level, route, free_attempts
FROM items WHERE job_id = %s AND (%s::text IS NULL OR state = %s) ORDER BY seq
"""
_RESULT = "SELECT text, data FROM results WHERE job_id = %s AND item_id = %s"
_COSTS = """
SELECT model, SUM(cost_usd), SUM(input_tokens), SUM(output_tokens), COUNT(*) FILTER (WHERE state <> 'sent'),
    COUNT(*) FILTER (WHERE state = 'completed'), SUM(unknown), SUM(reserved_usd * unknown)
FROM attempts WHERE job_id = %s GROUP BY model
"""
_SPEND_BY_MODEL = """
SELECT model, SUM(cost_usd + reserved_usd * unknown) FROM attempts WHERE model IS NOT NULL GROUP BY model
"""
_ATTEMPTS = """
SELECT item_id, attempt, state, model, started_at, finished_at, error_kind, error,
    input_tokens, output_tokens, cost_usd
FROM attempts WHERE job_id = %s AND state <> 'sent' ORDER BY finished_at, attempt_id
"""

# One encoder for every call: json.dumps with options builds a new one each time.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _dumps(value: Any) -> str | None:
    return None if value is None else _encode(value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _text(value: str | None) -> str | None:
    """``value`` fit for a PostgreSQL text column, which cannot hold NUL: a
    NUL becomes U+FFFD (JSON columns never meet this: JSON escapes it)."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _job_row(row: tuple) -> JobRow:
    job_id, job_type, state, definition, created_at, updated_at, reason, runner = row
    return JobRow(job_id, job_type, state, json.loads(definition), created_at, updated_at, reason, runner)


def _claimed(rows: list[tuple]) -> list[ClaimedItem]:
    rows.sort()  # RETURNING gives rows in no particular order: by level, then seq or qseq
    loads = json.loads
    return [
        ClaimedItem(item_id, loads(definition), attempts, last_model, free, first, error_kind, job_id, fence)
        for _level, _order, job_id, item_id, definition, attempts, last_model, free, first, error_kind, fence
        in rows
    ]


# -- transactions: each a function of a cursor, run in a worker thread


def _op_add_job(cur: "psycopg.Cursor", job: JobRow, items: Sequence[NewItem]) -> None:
    # One submitter at a time, so that a job's qseq run is unbroken and after
    # every item already stored (read committed: MAX sees the last one's commit).
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SUBMIT_LOCK,))
    cur.execute("SELECT 1 FROM jobs WHERE job_id = %s", (job.job_id,))
    if cur.fetchone():
        raise JobExists(job.job_id)
    cur.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (job.job_id, job.job_type, job.state, _dumps(job.definition), job.created_at, job.updated_at,
                 _text(job.reason), job.runner if job.state == "running" else None))
    cur.execute("SELECT COALESCE(MAX(qseq), 0) FROM items")
    (last,) = cur.fetchone()
    held = job.state in HELD_JOB_STATES
    now = time.time()
    with cur.copy(_COPY_ITEMS) as copy:
        copy.set_types(_COPY_TYPES)  # binary: no text parsing on either side
        for seq, item in enumerate(items):
            copy.write_row((job.job_id, item.item_id, seq, int(item.level), item.state, _dumps(item.definition),
                            item.job_type or job.job_type, last + 1 + seq, item.deadline, now, held))
    _link(cur, job.job_id, items)
    cur.execute(NOTIFY_SQL, ("submit",))


def _op_get_job(cur: "psycopg.Cursor", job_id: str) -> JobRow | None:
    cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = %s", (job_id,))
    row = cur.fetchone()
    return _job_row(row) if row else None


def _op_list_jobs(cur: "psycopg.Cursor") -> list[JobRow]:
    cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at, job_id")
    return [_job_row(row) for row in cur.fetchall()]


def _set_job_state(cur: "psycopg.Cursor", job_id: str, state: str, reason: str | None,
                   runner: str | None = None) -> None:
    """Set a job's state, its runner (only a running job has one) and its
    items' ``held`` to match, in the caller's transaction. The job's row is
    locked first, as every transaction that changes a job does, so two of
    them queue up rather than deadlock."""
    cur.execute(_LOCK_JOB, (job_id,))
    row = cur.fetchone()
    if row is None:
        raise KeyError(job_id)
    cur.execute(_SET_JOB_STATE, (state, _text(reason), time.time(), runner if state == "running" else None, job_id))
    held = state in HELD_JOB_STATES
    if held != (row[0] in HELD_JOB_STATES):
        # Running items too, since they may come back to pending; a terminal
        # item never does, so its flag is never read.
        cur.execute(_HOLD_ITEMS, (held, job_id))
    if state == "cancelled" or held != (row[0] in HELD_JOB_STATES):
        # Wake-ups: a pause or cancel for the workers that run the job; a
        # resume puts its items back in the queue, as a submit does.
        cur.execute(NOTIFY_SQL, ("cancel" if state == "cancelled" else "pause" if held else "submit",))


def _op_set_job_state(cur: "psycopg.Cursor", job_id: str, state: str, reason: str | None,
                      runner: str | None) -> None:
    _set_job_state(cur, job_id, state, reason, runner)


def _op_cancel(cur: "psycopg.Cursor", job_id: str, reason: str) -> int:
    cur.execute(_LOCK_JOB, (job_id,))
    if cur.fetchone() is None:
        raise KeyError(job_id)
    cur.execute(_CANCEL_ITEMS, (_text(reason), job_id))
    skipped = cur.rowcount
    _set_job_state(cur, job_id, "cancelled", reason)
    return skipped


def _op_delete_job(cur: "psycopg.Cursor", job_id: str) -> bool:
    cur.execute(_LOCK_JOB, (job_id,))  # as every change of a job: queue up behind the others
    for statement in _DELETE_JOB:
        cur.execute(statement, (job_id,))
    return cur.rowcount == 1


def _op_set_job_definition(cur: "psycopg.Cursor", job_id: str, definition: dict[str, Any]) -> None:
    cur.execute(_SET_DEFINITION, (_dumps(definition), time.time(), job_id))
    if cur.rowcount != 1:
        raise KeyError(job_id)


def _op_running_owners(cur: "psycopg.Cursor", job_id: str) -> list[str]:
    cur.execute(_RUNNING_OWNERS, (job_id,))
    return [owner for (owner,) in cur.fetchall()]


def _op_release_owners(cur: "psycopg.Cursor", job_id: str, owners: Sequence[str], fence_up: bool = False) -> int:
    count = 0
    for owner in owners:
        cur.execute(_RECOVER_OWNER if fence_up else _RELEASE_OWNER, (job_id, owner))
        count += cur.rowcount
    return count


def _lock_items(cur: "psycopg.Cursor", keys: Collection[tuple[str, str]]) -> None:
    """Lock the item rows ``keys`` (job_id, item_id) in the one order (see _LOCK_ITEMS)."""
    if len(keys) > 1:  # one row: no order to keep
        cur.execute(_LOCK_ITEMS, ([job_id for job_id, _ in keys], [item_id for _, item_id in keys]))


def _op_release_items(cur: "psycopg.Cursor", job_id: str, owner: str, item_ids: Sequence[str],
                      fences: Sequence[int | None]) -> int:
    _lock_items(cur, {(job_id, item_id) for item_id in item_ids})
    cur.execute(_RELEASE_ITEMS, (list(item_ids), list(fences), job_id, owner))
    return cur.rowcount


def _op_renew(cur: "psycopg.Cursor", owner: str, held: Sequence[tuple[str, str, int]],
              lease_s: float) -> set[tuple[str, str, int]]:
    _lock_items(cur, {(job_id, item_id) for job_id, item_id, _ in held})
    cur.execute(_RENEW, {"owner": owner, "lease_s": lease_s, "job_id": [h[0] for h in held],
                         "item_id": [h[1] for h in held], "fence": [h[2] for h in held]})
    return {(job_id, item_id, fence) for job_id, item_id, fence in cur.fetchall()}


def _op_reap(cur: "psycopg.Cursor", limit: int) -> int:
    cur.execute(_REAP, {"limit": limit})
    (reaped,) = cur.fetchone()
    cur.execute(_FORGET_OLD_WORKERS, (WORKER_FORGET_S,))
    cur.execute(_BUDGET_RECLAIM)
    return reaped


def _op_rate_take(cur: "psycopg.Cursor", take: RateTake) -> RateTaken:
    cur.execute(_NO_FLUSH)
    cur.execute(_RATE_LOCK, (take.model,))
    if cur.fetchone() is None:  # the model's first take
        cur.execute(_RATE_ROW, (take.model,))
        cur.execute(_RATE_LOCK, (take.model,))
    cur.execute(_RATE_TAKE, {
        "model": take.model, "request_cost": float(take.request_cost), "request_slack": float(take.request_slack),
        "token_cost": float(take.token_cost), "token_slack": float(take.token_slack),
        "adjust": float(take.token_adjust)})
    return RateTaken(*cur.fetchone())


def _op_rate_cool_down(cur: "psycopg.Cursor", model: str, seconds: float) -> float:
    cur.execute(_RATE_COOL, (model, float(seconds)))
    return cur.fetchone()[0]


def _op_budget_state(cur: "psycopg.Cursor", job_id: str) -> BudgetState | None:
    cur.execute(_BUDGET_STATE, (job_id,))
    row = cur.fetchone()
    return None if row is None else BudgetState(*row)


def _op_budget_open(cur: "psycopg.Cursor", job_id: str, cap: float, spent: float) -> BudgetState:
    cur.execute(_BUDGET_OPEN, (job_id, float(cap), float(spent)))
    return _op_budget_state(cur, job_id)


def _op_budget_reserve(cur: "psycopg.Cursor", job_id: str, owner: str, amount: float) -> int | None:
    cur.execute(_BUDGET_RESERVE, {"job_id": job_id, "owner": owner, "amount": float(amount)})
    row = cur.fetchone()
    if row is not None:
        return row[0]
    cur.execute("SELECT 1 FROM budgets WHERE job_id = %s", (job_id,))
    if cur.fetchone() is None:
        raise KeyError(job_id)
    return None


def _op_budget_settle(cur: "psycopg.Cursor", hold_id: int, actual: float) -> bool:
    cur.execute(_BUDGET_SETTLE, {"hold_id": hold_id, "actual": float(actual)})
    return cur.fetchone() is not None


def _op_heartbeat(cur: "psycopg.Cursor", worker: WorkerInfo) -> None:
    cur.execute(_HEARTBEAT, (worker.worker_id, worker.host, worker.pid, worker.started_at, worker.lease_s))


def _op_forget_worker(cur: "psycopg.Cursor", worker_id: str) -> None:
    cur.execute(_FORGET_WORKER, (worker_id,))
    cur.execute(_BUDGET_RECLAIM)


def _op_workers(cur: "psycopg.Cursor") -> list[WorkerRow]:
    holding: dict[str, dict[str, int]] = {}
    cur.execute(_HOLDING)
    for owner, job_id, n in cur.fetchall():
        holding.setdefault(owner, {})[job_id] = n
    cur.execute(_WORKERS)
    return [WorkerRow(wid, host, pid, started, beat, lease, bool(alive), holding.get(wid, {}))
            for wid, host, pid, started, beat, lease, alive in cur.fetchall()]


def _op_claim(cur: "psycopg.Cursor", job_id: str, limit: int, now: float, owner: str,
              only: list[str] | None, job_type: str | None = None,
              lease_s: float = DEFAULT_LEASE_S) -> list[ClaimedItem]:
    cur.execute(_CLAIM if job_type is None else _CLAIM_STAGE,
                {"job_id": job_id, "now": now, "limit": limit, "owner": owner, "only": only, "job_type": job_type,
                 "lease_s": lease_s})
    return _claimed(cur.fetchall())


def _op_claim_next(cur: "psycopg.Cursor", job_type: str, limit: int, now: float, owner: str,
                   exclude: list[str], lease_s: float = DEFAULT_LEASE_S) -> list[ClaimedItem]:
    cur.execute(_CLAIM_NEXT, {"job_type": job_type, "now": now, "limit": limit, "owner": owner,
                              "exclude": exclude, "lease_s": lease_s})
    return _claimed(cur.fetchall())


def _op_scalar(cur: "psycopg.Cursor", sql: str, params: tuple) -> Any:
    cur.execute(sql, params)
    row = cur.fetchone()
    return row[0] if row else None


def _op_promote(cur: "psycopg.Cursor", now: float, aging: float | None) -> int:
    changed = 0
    cur.execute(_PROMOTE_CRITICAL, (now, now + CRITICAL_WITHIN_S))
    changed += cur.rowcount
    cur.execute(_PROMOTE_HIGH, (now, now + HIGH_WITHIN_S))
    changed += cur.rowcount
    if aging is not None:
        cur.execute(_AGE, (now, now - aging))
        changed += cur.rowcount
    return changed


def _op_position(cur: "psycopg.Cursor", job_id: str, item_id: str) -> int:
    cur.execute(_POSITION, (job_id, item_id))
    row = cur.fetchone()
    if row is None:
        raise KeyError(item_id)
    return row[0]


def _op_queue_counts(cur: "psycopg.Cursor") -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    cur.execute(_QUEUE_COUNTS)
    for level, job_id, n in cur.fetchall():
        out.setdefault(level, {})[job_id] = n
    return out


def _op_queued(cur: "psycopg.Cursor", limit: int) -> list[QueuedRow]:
    cur.execute(_QUEUED, (limit,))
    return [QueuedRow(*row) for row in cur.fetchall()]


def _op_record(cur: "psycopg.Cursor", records: Sequence[AttemptRecord], owner: str,
               started: Sequence[StartRecord]) -> list[bool]:
    starts = [{"model": s.model, "started_at": s.started_at, "job_id": s.job_id, "item_id": s.item_id,
               "owner": owner, "attempt": s.attempt, "reserved_usd": s.reserved_usd, "fence": s.fence}
              for s in started]
    now = time.time()
    outcomes = [{
        "state": rec.state, "attempt": rec.attempt, "free": int(rec.free), "started_at": rec.started_at,
        "finished_at": rec.finished_at, "model": rec.model, "not_before": rec.not_before,
        "error_kind": rec.error_kind, "error": _text(rec.error), "route": _dumps(rec.route),
        "job_id": rec.job_id, "item_id": rec.item_id, "owner": owner, "sent": rec.sent,
        "input_tokens": rec.input_tokens, "output_tokens": rec.output_tokens, "cost_usd": float(rec.cost_usd),
        "reserved_usd": float(rec.reserved_usd), "unknown": int(rec.outcome_unknown),
        "result_text": _text(rec.result_text if rec.result_text is not None else ""),
        "result_data": _dumps(rec.result_data), "now": now, "fence": rec.fence,
    } for rec in records]
    _lock_items(cur, {(row["job_id"], row["item_id"]) for row in starts + outcomes})
    # Starts first, as one group: an outcome in the same batch is a later moment.
    starts_applied = _applied(cur, _RECORD_START, _BATCH_START, starts, owner)
    applied = _applied(cur, _RECORD_OUTCOME, _BATCH_OUTCOME, outcomes, owner)
    for ok, outcome in zip(applied, outcomes):
        if not ok and outcome["fence"] is not None:
            _settle_refused(cur, outcome)
    _pipeline_steps(cur, [rec for rec, ok in zip(records, applied) if ok])
    return applied + starts_applied


def _settle_refused(cur: "psycopg.Cursor", outcome: dict[str, Any]) -> None:
    """Store a refused outcome that carries a fence, in the record's
    transaction: ``skipped`` if a cancel took the item under that fence, else
    ``stale``; either way with its tokens and cost (rare: one statement each)."""
    cur.execute(_ITEM_STATE_FENCE, (outcome["job_id"], outcome["item_id"]))
    row = cur.fetchone()
    cancelled = row is not None and row[0] == "skipped" and row[1] == outcome["fence"]
    cur.execute(_SETTLE_STALE, {**outcome, "state": "skipped" if cancelled else "stale"})
    if cur.rowcount == 0 and not cancelled and row is not None:
        cur.execute(_INSERT_STALE, outcome)


#: A batch at least this long goes as arrays in one statement; a single row
#: (and a batch naming an item twice) by the per-row statements, one by one.
BATCH_MIN = 2


def _applied(cur: "psycopg.Cursor", per_row: str, batch: str, rows: list[dict[str, Any]], owner: str) -> list[bool]:
    """Apply ``rows`` (starts or outcomes) in order; whether each applied."""
    if not rows:
        return []
    if len(rows) >= BATCH_MIN and len({(row["job_id"], row["item_id"]) for row in rows}) == len(rows):
        columns = {key: [row[key] for row in rows] for key in rows[0] if key not in ("owner", "now")}
        cur.execute(batch, {**columns, "owner": owner, "now": rows[0].get("now")})
        done = {ord_ for (ord_,) in cur.fetchall()}
        return [n in done for n in range(1, len(rows) + 1)]
    # One at a time, not executemany: its pipeline leaves the server waiting
    # for the client's Sync in state "active", where a client frozen there
    # keeps its locks (idle_in_transaction_session_timeout does not apply).
    applied = []
    for row in rows:
        cur.execute(per_row, row)
        applied.append(cur.fetchone()[0] == 1)
    return applied


def _op_counts(cur: "psycopg.Cursor", job_id: str) -> dict[str, int]:
    out = dict.fromkeys(ITEM_STATES, 0)
    cur.execute(_COUNTS, (job_id,))
    for state, n in cur.fetchall():
        out[state] = n
    return out


def _op_running(cur: "psycopg.Cursor", job_id: str) -> list[RunningRow]:
    cur.execute(_RUNNING, (job_id,))
    return [RunningRow(*row) for row in cur.fetchall()]


def _op_items(cur: "psycopg.Cursor", job_id: str, state: str | None) -> list[ItemRow]:
    cur.execute(_ITEMS, (job_id, state, state))
    return [ItemRow(i, s, a, m, ek, e, json.loads(d), lv, _loads(r), fa)
            for i, s, a, m, ek, e, d, lv, r, fa in cur.fetchall()]


def _op_result(cur: "psycopg.Cursor", job_id: str, item_id: str) -> tuple[str, dict[str, Any] | None] | None:
    cur.execute(_RESULT, (job_id, item_id))
    row = cur.fetchone()
    return (row[0], _loads(row[1])) if row else None


def _op_costs(cur: "psycopg.Cursor", job_id: str) -> CostTotals:
    totals = CostTotals()
    cur.execute(_COSTS, (job_id,))
    for model, cost, tokens_in, tokens_out, attempts, completed, unknown, unknown_usd in cur.fetchall():
        totals.unknown_attempts += int(unknown)
        totals.unknown_usd += unknown_usd
        if not attempts:
            continue  # only sent, nothing finished on this model yet
        totals.cost_usd += cost
        totals.input_tokens += int(tokens_in)
        totals.output_tokens += int(tokens_out)
        totals.attempts += attempts
        if model is not None:
            totals.by_model[model] = {"cost_usd": cost, "input_tokens": int(tokens_in),
                                      "output_tokens": int(tokens_out), "attempts": attempts,
                                      "completed": completed}
    return totals


def _op_spend_by_model(cur: "psycopg.Cursor") -> dict[str, float]:
    cur.execute(_SPEND_BY_MODEL)
    return dict(cur.fetchall())


def _op_attempts(cur: "psycopg.Cursor", job_id: str) -> list[AttemptRow]:
    cur.execute(_ATTEMPTS, (job_id,))
    return [AttemptRow(i, a, s, m, st, fin, ek, e, int(ti), int(to), c)
            for i, a, s, m, st, fin, ek, e, ti, to, c in cur.fetchall()]


def _op_requeue_failed(cur: "psycopg.Cursor", job_id: str, kinds: list[str] | None) -> int:
    cur.execute(_LOCK_JOB, (job_id,))
    row = cur.fetchone()
    if row is None:
        raise KeyError(job_id)
    held = row[0] in HELD_JOB_STATES
    cur.execute(_REQUEUE_FAILED + " RETURNING item_id", (held, job_id, kinds, kinds))
    requeued = [item_id for (item_id,) in cur.fetchall()]
    if requeued:
        _unblock_cascaded(cur, job_id, requeued, held)
    return len(requeued)


def _op_open_gate(cur: "psycopg.Cursor", name: str, now: float) -> int:
    # The upsert locks the gate's row: a transaction linking an item to it
    # (_link, FOR SHARE) either saw it open or committed before this update.
    cur.execute(_OPEN_GATE, (name, now))
    cur.execute(_UNGATE, (name,))
    return cur.rowcount


def _op_gates(cur: "psycopg.Cursor") -> list[GateRow]:
    cur.execute(_GATES)
    return [GateRow(*row) for row in cur.fetchall()]


def _op_artifacts(cur: "psycopg.Cursor", project_id: str, kinds: list[str] | None) -> list[Artifact]:
    cur.execute(_ARTIFACTS, (project_id, kinds, kinds))
    return [Artifact(pid, kind, key, json.loads(content), version=version, job_id=job_id, item_id=item_id,
                     attempt=attempt, model=model, created_at=created_at)
            for pid, kind, key, content, version, job_id, item_id, attempt, model, created_at in cur.fetchall()]


# -- pipelines, inside the caller's transaction


def _link(cur: "psycopg.Cursor", job_id: str, items: Sequence[NewItem]) -> None:
    """Store the dependencies and gates of items just inserted, and skip
    those that wait on an item already failed or skipped.

    The items waited on are read FOR SHARE: one completing or failing in
    another transaction either did so before (and this sees it) or waits
    for this one, and then its release or cascade meets the new deps rows."""
    ended: list[tuple[str, str]] = []  # (item, why it is skipped)
    for item in items:
        if item.state != "pending" or not (item.after or item.gate is not None):
            continue
        after = list(dict.fromkeys(item.after))
        found: list[tuple] = []
        if after:
            cur.execute(_DEPENDENCIES, (job_id, after))
            found = cur.fetchall()
        states = {found_id: state for found_id, state, _error in found}
        waits_on = [a for a in after if states.get(a) != "completed"]
        if waits_on:
            cur.execute(_INSERT_DEPS, (job_id, item.item_id, waits_on))
        gate = None
        if item.gate is not None:
            cur.execute(_ADD_GATE, (item.gate,))
            cur.execute(_GATE_OPENED, (item.gate,))
            (opened,) = cur.fetchone()
            gate = item.gate if opened is None else None
        cur.execute(_BLOCK, (len(waits_on), gate, job_id, item.item_id))
        dead = next(((a, state, error) for a in after for found_id, state, error in found
                     if found_id == a and state in ("failed", "skipped")), None)
        if dead is not None:
            # Behind an item a cascade skipped: the same reason, naming the first to end.
            name, state, error = dead
            cascaded = state == "skipped" and error is not None and error.startswith("blocked: ")
            ended.append((item.item_id, error if cascaded else f"blocked: {name} {state}"))
    for item_id, reason in ended:
        _skip(cur, job_id, item_id, reason)


def _skip(cur: "psycopg.Cursor", job_id: str, item_id: str, reason: str) -> None:
    """Skip a pending item that can never run, and what waits on it."""
    cur.execute(_SKIP_ONE, (_text(reason), job_id, item_id))
    if cur.rowcount:
        _cascade(cur, job_id, item_id, reason)


def _cascade(cur: "psycopg.Cursor", job_id: str, item_id: str, reason: str) -> None:
    """``item_id`` ended failed or skipped: every pending item waiting on it,
    transitively, is skipped with ``reason`` (naming the first to end)."""
    frontier = [item_id]
    while frontier:
        cur.execute(_SKIP_WAITERS, (_text(reason), job_id, job_id, frontier))
        frontier = [waiter for (waiter,) in cur.fetchall()]


def _pipeline_steps(cur: "psycopg.Cursor", records: Sequence[AttemptRecord]) -> None:
    """What the applied ``records`` do to their jobs' pipelines, in order:
    follow-ups (before any release, so that one taking its item over
    catches the waiters) and artifacts, the cascades of failed and skipped
    items, then one statement that releases the waiters of every completed one."""
    completed = []
    for rec in records:
        if rec.state == "completed":
            if rec.follow_ups:
                _add_follow_ups(cur, rec.job_id, rec.follow_ups)
            for artifact in rec.artifacts:
                # Versions of one key are numbered one at a time, in any process.
                cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                            (_ARTIFACT_LOCK, _encode([artifact.project_id, artifact.kind, artifact.key])))
                cur.execute(_INSERT_ARTIFACT, {
                    "project_id": artifact.project_id, "kind": artifact.kind, "key": artifact.key,
                    "content": item_artifact_json(rec.item_id, artifact), "job_id": rec.job_id,
                    "item_id": rec.item_id, "attempt": rec.attempt, "model": rec.model,
                    "created_at": rec.finished_at})
            completed.append(rec)
        elif rec.state in ("failed", "skipped"):
            _cascade(cur, rec.job_id, rec.item_id, f"blocked: {rec.item_id} {rec.state}")
    if completed:
        cur.execute(_RELEASE_WAITERS, ([rec.job_id for rec in completed], [rec.item_id for rec in completed]))


def _add_follow_ups(cur: "psycopg.Cursor", job_id: str, items: Sequence[NewItem]) -> None:
    """Insert the follow-ups the job does not hold yet, link them, and move
    the waiters of the items they take over onto them."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SUBMIT_LOCK,))  # qseq: after everything submitted
    cur.execute(_FOLLOW_UP_START, (job_id,))
    job_type, state, seq, qseq = cur.fetchone()
    held = state in HELD_JOB_STATES
    now = time.time()
    inserted = []
    for item in items:
        seq += 1
        qseq += 1
        cur.execute(_INSERT_FOLLOW_UP, (job_id, item.item_id, seq, int(item.level), item.state,
                                        _dumps(item.definition), item.job_type or job_type, qseq, item.deadline,
                                        now, held))
        if cur.rowcount == 1:
            inserted.append(item)
    _link(cur, job_id, inserted)
    for item in inserted:
        if item.takes_over is not None and item.takes_over != item.item_id:
            _take_over(cur, job_id, item.item_id, item.takes_over)


def _take_over(cur: "psycopg.Cursor", job_id: str, new_id: str, old_id: str) -> None:
    """Every pending item waiting on ``old_id`` waits on ``new_id`` instead."""
    cur.execute(_MOVE_DEPS, {"job_id": job_id, "old": old_id, "new": new_id})
    cur.execute("SELECT state, error FROM items WHERE job_id = %s AND item_id = %s", (job_id, new_id))
    state, error = cur.fetchone()
    if state == "skipped":  # the new item can never run: neither can they
        _cascade(cur, job_id, new_id, error or f"blocked: {new_id} skipped")


def _unblock_cascaded(cur: "psycopg.Cursor", job_id: str, requeued: list[str], held: bool) -> None:
    """Items skipped because a requeued item failed are pending again, waiting as before."""
    cur.execute(_UNBLOCK_CASCADED, {"held": held, "job_id": job_id,
                                    "reasons": [f"blocked: {item_id} failed" for item_id in requeued]})


#: pg_advisory_xact_lock keys: one per purpose, the same in every process.
_SUBMIT_LOCK = 0x5354_4C4D_0001  # "STLM" 1: add_job's qseq
_MIGRATE_LOCK = 0x5354_4C4D_0002  # "STLM" 2: creating or migrating a schema
#: The first key of the two-key (int4, int4) locks of artifact versions, a space of its own.
_ARTIFACT_LOCK = 0x5354_4C4D


class _LostBeforeCommit(Exception):
    """A transaction's connection was lost before its COMMIT: run it again."""


def _server_spoke(conn: "psycopg.Connection") -> bool:
    """Whether the server sent anything unasked while ``conn`` sat inside a
    transaction with every result read: only a session it ended (idle too
    long: a FATAL, then EOF) does that. Read before the COMMIT is sent, for
    once the COMMIT meets the closed socket, the reset can lose that FATAL,
    and a COMMIT without an answer may have landed."""
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return bool(readable)


class PostgresStore:
    """A :class:`~storyloom.store.protocol.Store` in one schema of a PostgreSQL database.

    Open it with :func:`open_postgres`; close it with ``await store.aclose()``.
    Any trio task may call it; at most ``pool_size`` calls run at once.
    """

    def __init__(self, pool: Any, location: str, schema: str, pool_size: int, secret: str | None,
                 listener: Listener | None = None, begin: str | None = None) -> None:
        self._pool = pool
        #: Run first in every transaction (``pool_mode=transaction``: its SET LOCALs), else None.
        self._begin = begin
        #: Wake-ups (LISTEN/NOTIFY); None with ``listen=off``: polling only.
        self.listener = listener
        #: The URL, password masked (``Store.location``).
        self.location = location
        #: The PostgreSQL schema that holds the tables.
        self.schema = schema
        self.pool_size = pool_size
        self._limiter = trio.CapacityLimiter(pool_size)
        self._secret = secret
        self._closed = False

    async def _run(self, op: Callable[..., Any], *args: Any) -> Any:
        """``op(cursor, *args)`` in one transaction, in a worker thread."""
        return await trio.to_thread.run_sync(functools.partial(self._transaction, op, *args),
                                             limiter=self._limiter)

    def _transaction(self, op: Callable[..., Any], *args: Any) -> Any:
        import psycopg
        from psycopg import errors

        aborted = lost = 0  # times run again: aborted by the server; connection lost before its COMMIT
        while True:
            try:
                # After a lost connection, a short wait for a new one: a server
                # that is down is a StoreUnavailable soon, as it is at once.
                with self._pool.connection(timeout=LOST_RETRY_WAIT_S if lost else None) as conn:
                    try:
                        with conn.cursor() as cur:
                            if self._begin:
                                cur.execute(self._begin)
                            result = op(cur, *args)
                        if _server_spoke(conn):
                            raise _LostBeforeCommit  # rolled back here, if the server has not already
                    except psycopg.OperationalError as exc:
                        # Lost before the COMMIT was sent: nothing of it was
                        # written (a restart, or the server ended an idle
                        # transaction and the reset lost its message). Lost
                        # during the COMMIT is not this: it may have landed.
                        if conn.broken:
                            raise _LostBeforeCommit from exc
                        raise
                    return result  # the pool commits it
            except _LostBeforeCommit as exc:
                # Each time the pool drops the dead connection; a restart ends them all.
                lost += 1
                if lost > self.pool_size:
                    cause = exc.__cause__ or exc
                    raise _unavailable_from(cause, self.location, self._secret) or cause from None
            # Idle too long (the thread stalled mid-transaction): the server
            # rolled it back and closed the connection, which the pool replaces.
            except (errors.DeadlockDetected, errors.SerializationFailure,
                    errors.IdleInTransactionSessionTimeout) as exc:
                aborted += 1
                if aborted > RETRIES:
                    raise _unavailable_from(exc, self.location, self._secret) or exc from None
                time.sleep(0.01 * aborted)  # in the worker thread: the other transaction finishes
            except psycopg.Error as exc:  # psycopg_pool.PoolTimeout too
                raise _unavailable_from(exc, self.location, self._secret) or exc from None

    # -- jobs

    async def add_job(self, job: JobRow, items: Sequence[NewItem]) -> None:
        """Insert the job and its items (``seq`` = position in ``items``) in
        one transaction, queued after every item already submitted."""
        from psycopg import errors

        if job.state not in JOB_STATES:
            raise ValueError(f"unknown job state {job.state!r}")
        check_new_items(items)
        try:
            await self._run(_op_add_job, job, list(items))
        except errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "jobs_pkey":  # another submitter got there first
                raise JobExists(job.job_id) from None
            raise ValueError(f"job {job.job_id!r}: duplicate item_id ({exc.diag.message_detail})") from None

    async def get_job(self, job_id: str) -> JobRow | None:
        return await self._run(_op_get_job, job_id)

    async def list_jobs(self) -> list[JobRow]:
        """Every job, oldest first."""
        return await self._run(_op_list_jobs)

    async def set_job_state(self, job_id: str, state: str, reason: str | None = None,
                            runner: str | None = None) -> None:
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        await self._run(_op_set_job_state, job_id, state, reason, runner)

    async def cancel(self, job_id: str, reason: str) -> int:
        return await self._run(_op_cancel, job_id, reason)

    async def delete_job(self, job_id: str) -> bool:
        """Remove the job, its items, attempts and results in one transaction."""
        return await self._run(_op_delete_job, job_id)

    async def set_job_definition(self, job_id: str, definition: dict[str, Any]) -> None:
        await self._run(_op_set_job_definition, job_id, definition)

    # -- claiming and recording

    async def recover(self, job_id: str, owner_alive: Callable[[str], bool]) -> int:
        owners = await self._run(_op_running_owners, job_id)
        dead = [owner for owner in owners if not owner_alive(owner)]
        if not dead:
            return 0
        return await self._run(_op_release_owners, job_id, dead, True)

    async def release(self, job_id: str, owner: str, item_ids: Sequence[str] | None = None,
                      fences: Sequence[int] | None = None) -> int:
        """Each item only under its fence, if ``fences`` is given."""
        if item_ids is None:
            return await self._run(_op_release_owners, job_id, [owner])
        if fences is not None and len(fences) != len(item_ids):
            raise ValueError("release: one fence per item id")
        given = list(fences) if fences is not None else [None] * len(item_ids)
        return await self._run(_op_release_items, job_id, owner, list(item_ids), given)

    async def renew(self, owner: str, held: Sequence[tuple[str, str, int]],
                    lease_s: float = DEFAULT_LEASE_S) -> set[tuple[str, str, int]]:
        if not held:
            return set()
        return await self._run(_op_renew, owner, list(held), lease_s)

    async def reap(self, limit: int = REAP_BATCH) -> int:
        if limit <= 0:
            return 0
        return await self._run(_op_reap, limit)

    # -- shared rate limits and budgets (SharedLimits)

    async def rate_take(self, take: RateTake) -> RateTaken:
        return await self._run(_op_rate_take, take)

    async def rate_cool_down(self, model: str, seconds: float) -> float:
        return await self._run(_op_rate_cool_down, model, seconds)

    async def budget_open(self, job_id: str, cap: float, spent: float) -> BudgetState:
        return await self._run(_op_budget_open, job_id, cap, spent)

    async def budget_state(self, job_id: str) -> BudgetState | None:
        return await self._run(_op_budget_state, job_id)

    async def budget_reserve(self, job_id: str, owner: str, amount: float) -> int | None:
        return await self._run(_op_budget_reserve, job_id, owner, amount)

    async def budget_settle(self, hold_id: int, actual: float) -> bool:
        return await self._run(_op_budget_settle, hold_id, actual)

    async def heartbeat(self, worker: WorkerInfo) -> None:
        await self._run(_op_heartbeat, worker)

    async def forget_worker(self, worker_id: str) -> None:
        await self._run(_op_forget_worker, worker_id)

    async def workers(self) -> list[WorkerRow]:
        return await self._run(_op_workers)

    async def claim(self, job_id: str, limit: int, now: float, owner: str,
                    only: Collection[str] | None = None, job_type: str | None = None,
                    lease_s: float = DEFAULT_LEASE_S) -> list[ClaimedItem]:
        """``only``: among these item ids (a sample run's); ``job_type``: of that stage only."""
        if limit <= 0:
            return []
        return await self._run(_op_claim, job_id, limit, now, owner, None if only is None else list(only),
                               job_type, lease_s)

    async def claim_next(
        self, job_type: str, limit: int, now: float, owner: str, exclude: Collection[str] = (),
        lease_s: float = DEFAULT_LEASE_S,
    ) -> list[ClaimedItem]:
        if limit <= 0:
            return []
        return await self._run(_op_claim_next, job_type, limit, now, owner, list(exclude), lease_s)

    async def next_ready_at(self, job_id: str, job_type: str | None = None) -> float | None:
        if job_type is not None:
            return await self._run(_op_scalar, _NEXT_STAGE_READY_AT, (job_id, job_type))
        return await self._run(_op_scalar, _NEXT_READY_AT, (job_id,))

    async def next_queued_at(self, job_type: str) -> float | None:
        return await self._run(_op_scalar, _NEXT_QUEUED_AT, (job_type,))

    async def promote(self, now: float, aging: float | None) -> int:
        return await self._run(_op_promote, now, aging)

    async def position(self, job_id: str, item_id: str) -> int:
        return await self._run(_op_position, job_id, item_id)

    async def queue_counts(self) -> dict[int, dict[str, int]]:
        return await self._run(_op_queue_counts)

    async def queued(self, limit: int) -> list[QueuedRow]:
        if limit <= 0:
            return []
        return await self._run(_op_queued, limit)

    async def record(
        self, records: Sequence[AttemptRecord], owner: str, started: Sequence[StartRecord] = ()
    ) -> list[bool]:
        for rec in records:
            if rec.state not in RECORD_STATES:
                raise ValueError(f"item {rec.item_id!r}: cannot record state {rec.state!r}")
            if (rec.follow_ups or rec.artifacts) and rec.state != "completed":
                raise ValueError(f"item {rec.item_id!r}: follow-ups and artifacts come only with a completion")
            check_new_items(rec.follow_ups)
            for artifact in rec.artifacts:
                item_artifact_json(rec.item_id, artifact)  # a bad one: ValueError before anything is written
        return await self._run(_op_record, list(records), owner, list(started))

    # -- reading

    async def counts(self, job_id: str) -> dict[str, int]:
        return await self._run(_op_counts, job_id)

    async def running(self, job_id: str) -> list[RunningRow]:
        """Items running now, longest-running first."""
        return await self._run(_op_running, job_id)

    async def items(self, job_id: str, state: str | None = None) -> list[ItemRow]:
        return await self._run(_op_items, job_id, state)

    async def result(self, job_id: str, item_id: str) -> tuple[str, dict[str, Any] | None] | None:
        return await self._run(_op_result, job_id, item_id)

    async def costs(self, job_id: str) -> CostTotals:
        return await self._run(_op_costs, job_id)

    async def spend_by_model(self) -> dict[str, float]:
        return await self._run(_op_spend_by_model)

    async def attempts(self, job_id: str) -> list[AttemptRow]:
        return await self._run(_op_attempts, job_id)

    async def requeue_failed(self, job_id: str, kinds: Collection[str] | None = None) -> int:
        return await self._run(_op_requeue_failed, job_id, None if kinds is None else list(kinds))

    # -- pipelines

    async def open_gate(self, name: str) -> int:
        """Open the gate (created open if unknown) and unblock its pending
        items that wait on nothing else; returns how many it blocked."""
        return await self._run(_op_open_gate, name, time.time())

    async def gates(self) -> list[GateRow]:
        return await self._run(_op_gates)

    async def artifacts(self, project_id: str, kinds: Collection[str] | None = None) -> list[Artifact]:
        """Every version, in the order committed."""
        return await self._run(_op_artifacts, project_id, None if kinds is None else list(kinds))

    async def wait_for_change(self, timeout: float) -> bool:
        """A NOTIFY on this store's channel (see :mod:`.pg_listen`), or ``timeout``."""
        if self.listener is None:
            await trio.sleep(timeout)
            return False
        return await self.listener.wait(timeout)

    async def aclose(self) -> None:
        """Close the pool and the listener (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.listener is not None:
            self.listener.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._pool.close)


# -- errors: what "cannot use the store" looks like, never with a password

_RETRY_LATER = "check that the PostgreSQL server is up and reachable, then run the command again"
#: SQLSTATE classes and codes that mean the store cannot be used: reason; hint.
_FAULT_CODES = {
    "53100": ("the database server's disk is full", "free space on the server, then run the command again; "
              "`storyloom resume JOB_ID` continues a stopped job"),
    "53200": ("the database server is out of memory", "free memory on the server, then run the command again"),
    "53300": ("the database server has too many connections",
              "lower pool_size or raise the server's max_connections, then run the command again"),
    "25006": ("the database is read-only (a standby?)", "point the store URL at the primary server"),
    "42501": ("permission denied", "grant the user rights on the database and schema, or use another user"),
    "3D000": ("the database does not exist", "create it (createdb NAME), or fix the store URL"),
    "3F000": ("the store's schema is gone", "restore it from a backup, or use another schema"),
    "42P01": ("the store's tables are gone", "restore them from a backup, or use another schema"),
    "55P03": ("a lock could not be taken in time", "wait for the other process to finish, then run again"),
    "40P01": ("deadlocks kept aborting a transaction", "run the command again"),
    "40001": ("serialization failures kept aborting a transaction", "run the command again"),
}
_FAULT_CLASSES = {
    "08": ("the connection to the database failed", _RETRY_LATER),
    "28": ("the database refused the login", "check the user and password of the store URL"),
    "53": ("the database server is out of resources", "fix the server, then run the command again"),
    "57": ("the database server stopped the query (shutting down or restarting?)", _RETRY_LATER),
    "58": ("the database server had a system error", "check the server's log, then run the command again"),
    "XX": ("the database server reports internal damage", "check the server's log; restore from a backup"),
}


def _scrub(message: str, secret: str | None) -> str:
    line = " ".join(message.strip().split())
    return line.replace(secret, "***") if secret else line


def _unavailable_from(exc: BaseException, location: str, secret: str | None) -> StoreUnavailable | None:
    """The StoreUnavailable a psycopg error means, or None if it means a bug."""
    import psycopg

    code = getattr(exc, "sqlstate", None) or ""
    fault = _FAULT_CODES.get(code) or _FAULT_CLASSES.get(code[:2])
    if fault is None and isinstance(exc, psycopg.OperationalError):  # libpq: no SQLSTATE for a lost server
        fault = ("the connection to the database failed", _RETRY_LATER)
    if fault is None:
        return None
    reason, hint = fault
    detail = _scrub(str(exc), secret)
    if detail:
        reason = f"{reason} ({detail})"
    return StoreUnavailable(location, reason, hint)


# -- opening


class _Target:
    """What a store URL names: libpq's connection string, the schema, the pool size."""

    def __init__(self, conninfo: str, schema: str, pool_size: int, location: str, secret: str | None,
                 listen: bool = True, pool_mode: str = "session") -> None:
        self.conninfo, self.schema, self.pool_size = conninfo, schema, pool_size
        self.location, self.secret, self.listen, self.pool_mode = location, secret, listen, pool_mode


def parse_url(url: str) -> _Target:
    """Split a ``postgresql://`` or ``postgres://`` store URL into libpq's part and ours.

    ``postgresql://user:password@host:port/dbname?schema=NAME&pool_size=N&...``:
    ``schema`` (default ``storyloom``) is the PostgreSQL schema that holds the
    tables, created if missing; ``pool_size`` (default 4, 1 to 64) how many
    connections the store keeps; ``listen`` (``on``, the default, or ``off``)
    whether a waiting worker also holds a LISTEN connection for wake-ups
    (``off``: it only polls); ``pool_mode`` (``session``, the default, or
    ``transaction``, behind PgBouncer in transaction mode: no LISTEN, no
    prepared statements, and each transaction sets its own search path and
    idle timeout). Every other query parameter is libpq's
    (``sslmode``, ``connect_timeout``, ``application_name``, ...). A bare
    ``postgresql`` uses libpq's defaults (``PGHOST``, ``PGDATABASE``, ...).
    A malformed URL is a UsageError that shows no password.
    """
    from psycopg.conninfo import conninfo_to_dict

    shown = mask_url(url)
    scheme, _, rest = url.partition(":")
    if scheme.lower() not in SCHEMES:
        raise UsageError(f"store URL {shown!r} is not a postgresql:// URL")
    if rest and not rest.startswith("//"):
        raise UsageError(f"store URL {shown!r}: write postgresql://user@host:port/dbname")
    try:
        parts = urlsplit("postgresql:" + (rest or "//"))
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        secret = parts.password
    except ValueError as exc:
        raise UsageError(f"store URL {shown!r}: {exc}") from None
    if parts.fragment:
        raise UsageError(f"store URL {shown!r}: a postgresql URL takes no fragment")
    own = {key: value for key, value in pairs if key in _OWN_KEYS}
    schema = own.get("schema", DEFAULT_SCHEMA)
    if not _IDENTIFIER.match(schema):
        raise UsageError(f"store URL {shown!r}: schema must be letters, digits and _ (not starting with a "
                         f"digit, at most 63), not {schema!r}")
    pool_text = own.get("pool_size", str(DEFAULT_POOL_SIZE))
    if not pool_text.isdigit() or not 1 <= int(pool_text) <= MAX_POOL_SIZE:
        raise UsageError(f"store URL {shown!r}: pool_size must be a whole number from 1 to {MAX_POOL_SIZE}, "
                         f"not {pool_text!r}")
    pool_mode = own.get("pool_mode", "session")
    if pool_mode not in POOL_MODES:
        raise UsageError(f"store URL {shown!r}: pool_mode must be session or transaction, not {pool_mode!r}")
    # A pooler per transaction passes no LISTEN: wake-ups are off unless asked for (an error).
    listen_text = own.get("listen", "on" if pool_mode == "session" else "off")
    if listen_text not in _LISTEN_VALUES:
        raise UsageError(f"store URL {shown!r}: listen must be on or off, not {listen_text!r}")
    if pool_mode == "transaction" and _LISTEN_VALUES[listen_text]:
        raise UsageError(f"store URL {shown!r}: listen=on needs a session of its own, which pool_mode=transaction "
                         "does not keep; leave listen out (workers poll)")
    libpq = [(key, value) for key, value in pairs if key not in _OWN_KEYS]
    for key, default in (("connect_timeout", str(CONNECT_TIMEOUT_S)), ("application_name", "storyloom")):
        if not any(given == key for given, _ in libpq):
            libpq.append((key, default))  # application_name: what pg_stat_activity shows operators
    secret = secret or next((value for key, value in libpq if key == "password"), None)
    # By hand: urlunsplit drops the "//" of an empty host (libpq's defaults).
    conninfo = f"postgresql://{parts.netloc}{parts.path}?{urlencode(libpq)}"
    try:
        conninfo_to_dict(conninfo)  # libpq's own check of its parameters
    except Exception as exc:  # psycopg.ProgrammingError: an unknown parameter, say
        raise UsageError(f"store URL {shown!r}: {_scrub(str(exc), secret)}") from None
    return _Target(conninfo, schema, int(pool_text), shown, secret or None, _LISTEN_VALUES[listen_text],
                   pool_mode)


def _connect(target: _Target) -> "psycopg.Connection":
    import psycopg

    try:
        return psycopg.connect(target.conninfo)
    except psycopg.Error as exc:
        fault = _unavailable_from(exc, target.location, target.secret)
        reason = fault.reason if fault else _scrub(str(exc), target.secret)
        hint = fault.hint if fault else _RETRY_LATER
        if "does not exist" in str(exc) and "database" in str(exc):
            hint = _FAULT_CODES["3D000"][1]
        raise StoreUnavailable(target.location, f"cannot connect: {reason}", hint) from None


def stored_version(conn: "psycopg.Connection", schema: str) -> int | None:
    """The schema version of the store in ``schema``; None if there is none."""
    row = conn.execute("SELECT to_regclass(format('%%I.storyloom_schema', %s::text))", (schema,)).fetchone()
    if row[0] is None:
        return None
    (version,) = conn.execute(
        f"SELECT COALESCE(MAX(version), 0) FROM {_quote(schema)}.storyloom_schema").fetchone()
    return version


def _quote(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'


def _prepare(target: _Target, create: bool) -> None:
    """Check the store ``target`` names, creating or migrating its schema; in a thread."""
    import psycopg

    conn = _connect(target)
    try:
        with conn:
            version = stored_version(conn, target.schema)
            conn.commit()
            if version == SCHEMA_VERSION:
                return
            _check_version(version, target)
            if version is None and not create:
                raise StoreNotFound(f"no store in {target.location} (schema {target.schema!r}; run a job first, "
                                    "or pass --store)", target.location)
            with conn.transaction():
                # One migrator at a time; another may have done it while we waited.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(target.schema)}")
                conn.execute(f"SET LOCAL search_path TO {_quote(target.schema)}")
                conn.execute(_VERSION_TABLE)
                version = stored_version(conn, target.schema) or 0
                _check_version(version, target)
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step]:
                        conn.execute(statement)
                    conn.execute("INSERT INTO storyloom_schema (version) VALUES (%s)", (step,))
    except psycopg.Error as exc:
        raise _unavailable_from(exc, target.location, target.secret) or exc from None


def _check_version(version: int | None, target: _Target) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"{target.location} (schema {target.schema!r}) has state schema version {version}, but this "
            f"storyloom only knows version {SCHEMA_VERSION}: upgrade storyloom (or use another schema)")


def idle_timeout(lease_s: float) -> float:
    """Seconds a store connection may sit idle inside a transaction before the
    server ends it: lease/3 (the renewal interval), at least
    MIN_IDLE_IN_TRANSACTION_S. A worker frozen mid-transaction (SIGSTOP, a
    paused VM, a partition) would otherwise keep its item rows locked, and a
    reap skips locked rows: its items would stay lost for as long as it is
    frozen. Ended within lease/3, its locks are gone before its lease is."""
    return max(MIN_IDLE_IN_TRANSACTION_S, lease_s / 3.0)


def session_settings(schema: str, idle_s: float, *, local: bool = False) -> str:
    """The settings every store transaction runs under: its schema first on
    the search path, and idle_timeout (see there); ``local``: for this
    transaction only (SET LOCAL)."""
    set_ = "SET LOCAL" if local else "SET"
    return (f"{set_} search_path TO {_quote(schema)}; "
            f"{set_} idle_in_transaction_session_timeout = {round(idle_s * 1000)}")


def _make_pool(target: _Target, idle_s: float) -> Any:
    from psycopg_pool import ConnectionPool

    settings = session_settings(target.schema, idle_s)

    def configure(conn: "psycopg.Connection") -> None:
        if target.pool_mode == "transaction":
            # Each transaction sets them itself (SET LOCAL; a session SET here
            # would stay on a server connection other clients then share), and
            # nothing is prepared: two clients' "_pg3_0" clash on a shared one.
            conn.prepare_threshold = None
            return
        conn.execute(settings)
        conn.commit()

    pool = ConnectionPool(target.conninfo, min_size=1, max_size=target.pool_size, open=False,
                          configure=configure, timeout=POOL_TIMEOUT_S, name=f"storyloom-{target.schema}")
    try:
        pool.open(wait=True, timeout=float(CONNECT_TIMEOUT_S))
    except Exception:
        pool.close()
        raise StoreUnavailable(target.location, "cannot open a pool of connections", _RETRY_LATER) from None
    return pool


_quiet_lock = threading.Lock()


def _quiet_pool_logs() -> None:
    """psycopg_pool logs reconnection attempts as warnings; with no logging
    set up, Python's last-resort handler would print them on stderr (the
    error that matters reaches the caller as a StoreUnavailable). A
    NullHandler stops only that: an application's own logging still gets them."""
    import logging

    with _quiet_lock:
        logger = logging.getLogger("psycopg.pool")
        if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            logger.addHandler(logging.NullHandler())


async def open_postgres(url: str, *, state_dir: Any, settings: Any, create: bool) -> PostgresStore:
    """The :class:`~storyloom.store.StoreOpener` for ``postgresql`` and ``postgres`` URLs."""
    target = parse_url(url)
    _quiet_pool_logs()
    await trio.to_thread.run_sync(_prepare, target, create)
    lease_s = settings.lease if settings is not None else DEFAULT_LEASE_S  # None: a bare store, as in bench/
    pool = await trio.to_thread.run_sync(_make_pool, target, idle_timeout(lease_s))
    listener = Listener(target.conninfo, target.schema, target.location, target.secret) if target.listen else None
    begin = session_settings(target.schema, idle_timeout(lease_s), local=True) \
        if target.pool_mode == "transaction" else None
    return PostgresStore(pool, target.location, target.schema, target.pool_size, target.secret, listener, begin)


@hookimpl
def loom_register_stores(register):
    for scheme in SCHEMES:
        register(scheme, open_postgres)
