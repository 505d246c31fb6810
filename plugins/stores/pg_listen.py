"""Wake-ups for the ``postgresql`` store: LISTEN/NOTIFY on submit, pause and cancel.

A transaction that submits a job, or pauses, resumes or cancels one, sends
``NOTIFY`` on the schema's channel (:data:`NOTIFY_SQL`; delivered at commit).
A worker's :class:`Listener` holds one dedicated connection, outside the
pool, in a thread of its own, blocked in ``LISTEN``; a notice sets a trio
event, so the worker's ``wait_for_change`` returns at once instead of at its
next poll.

Best effort, by design: a notice sent while the listener is reconnecting is
lost, and PgBouncer in transaction mode passes none; the worker's poll is the
fallback, so nothing but latency depends on a notice. ``listen=off`` in the
store URL turns the listener off.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import trio

#: Sent inside the transaction that makes the change (one argument: the kind).
#: The channel is the store's schema's, so two stores in one database do not
#: wake each other (``current_schema()`` is the store's: its search_path).
NOTIFY_SQL = "SELECT pg_notify(left('storyloom:' || current_schema(), 63), %s)"
#: How often the listening thread looks up from LISTEN to see whether the
#: store was closed (the longest a closed store's connection outlives it).
STOP_CHECK_S = 0.25


def channel(schema: str) -> str:
    """The channel of ``schema``'s store, as :data:`NOTIFY_SQL` names it
    (63 bytes: PostgreSQL's longest identifier)."""
    return ("storyloom:" + schema)[:63]


class Listener:
    """LISTEN on one store's channel in a thread, for one trio run.

    :meth:`wait` starts the thread the first time (so a CLI command that never
    waits opens no extra connection); :meth:`close` stops it.
    """

    def __init__(self, conninfo: str, schema: str, location: str, secret: str | None) -> None:
        self._conninfo = conninfo
        self._secret = secret
        self._channel = channel(schema)
        self._location = location
        self._notified = trio.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._warned = False
        #: How many notices arrived (for tests and operators).
        self.notices = 0

    async def wait(self, timeout: float) -> bool:
        """Up to ``timeout`` seconds for a notice; True if one came (or had come since the last call)."""
        if self._thread is None or not self._thread.is_alive():
            self._start()  # first call, or the connection was lost: listen again
        if not self._notified.is_set():
            with trio.move_on_after(timeout):
                await self._notified.wait()
        if self._notified.is_set():
            self._notified = trio.Event()
            return True
        return False

    def close(self) -> None:
        """Stop listening; the thread closes its connection within STOP_CHECK_S."""
        self._stop.set()

    def _start(self) -> None:
        if self._stop.is_set():
            return
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._listen, name=f"storyloom-listen-{self._channel}",
                                        daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        """In the thread: connect, LISTEN, and pass each notice to trio until closed."""
        import psycopg
        from psycopg import sql

        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            self._warn(exc)
            return
        try:
            with conn:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self._warned = False
                while not self._stop.is_set():
                    for _notice in conn.notifies(timeout=STOP_CHECK_S):
                        self._pass_on()
        except psycopg.Error as exc:
            self._warn(exc)

    def _pass_on(self) -> None:
        self.notices += 1
        try:
            assert self._token is not None
            self._token.run_sync_soon(self._fire)
        except trio.RunFinishedError:  # the trio run is over: nobody waits any more
            self._stop.set()

    def _fire(self) -> None:  # in trio's thread: the event of the wait that is current now
        self._notified.set()

    def _warn(self, exc: Any) -> None:
        if not self._warned and not self._stop.is_set():
            self._warned = True
            detail = " ".join(str(exc).split())
            if self._secret:
                detail = detail.replace(self._secret, "***")
            print(f"storyloom: {self._location}: no wake-ups (LISTEN failed: {detail}); "
                  "polling instead", file=sys.stderr)
