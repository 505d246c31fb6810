"""An httpx transport on trio streams and h11, with a fair connection pool.

The HTTP providers keep httpx's API (``httpx.AsyncClient``, ``post``,
``stream``, httpx's exceptions); this transport replaces what httpcore did
under it, for two measured reasons (docs/performance.md, "HTTP path"):

* **Late replies.** httpcore 1.0.9's pool hands the first idle connection to
  every request that enters in the same scheduler tick; all but one then fail
  to start on it (``ConnectionNotAvailable``), go back to the queue and are
  handed, again, the connection the next newcomer is also given, which that
  newcomer, scheduled first, takes. Under load a request lost that race for
  seconds, on a pool far from full, and its wait counted in the kernel's
  ``timeout_per_item``: answered requests became TIMEOUT attempts.
  Here taking a connection is one synchronous step (pop an idle one, or
  open a new one), and a request that must wait for a slot queues in FIFO
  order (``trio.Semaphore`` is fair): nobody overtakes a waiting request.
* **CPU per request.** httpcore's pool rebuilds its view of every
  connection on each request and each response close (quadratic in the pool
  size); here a request costs O(1) pool work at any size. Per request it
  also enters one cancel scope, not one per operation (entering a scope
  costs several times moving its deadline), and a reply whose body came in
  the same read as its head is returned as bytes, its connection back in
  the pool before the caller reads it.

HTTP/1.1 only (what the three providers' APIs serve to HTTP/1.1 clients),
``http`` and ``https`` (``trio.SSLStream`` with httpx's default SSL
context). Timeouts follow ``request.extensions["timeout"]`` the way httpcore
does: ``connect`` (TCP and TLS), ``write`` and ``read`` per operation,
``pool`` for the wait for a slot. An idle connection the server has closed
is noticed before reuse (its socket is readable) and replaced.
"""

from __future__ import annotations

import logging
import select
import ssl
import time
from collections import defaultdict
from typing import AsyncIterator

import h11
import httpx
import trio

log = logging.getLogger("storyloom.providers.transport")

#: Bytes read per receive.
READ_SIZE = 64 * 1024
#: Idle connections older than this are closed instead of reused (httpx's default).
KEEPALIVE_EXPIRY = 5.0

_Origin = tuple[bytes, bytes, int]  # scheme, host, port


def _timeout(value: float | None) -> float:
    return float("inf") if value is None else value


class _Connection:
    """One HTTP/1.1 connection: a trio stream and its h11 state."""

    def __init__(self, origin: _Origin, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.origin = origin
        self.stream = stream
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def reusable_now(self, now: float) -> bool:
        """Idle, not expired, and the server has not closed it: an idle
        socket that is readable is at EOF (or sent junk), either way unusable."""
        if now - self.idle_since > KEEPALIVE_EXPIRY:
            return False
        try:
            if not hasattr(select, "poll"):  # Windows
                return not select.select([self.sock.fileno()], [], [], 0)[0]
            poller = select.poll()  # not select.select: no limit on the descriptor's number
            poller.register(self.sock.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    async def send(self, request: httpx.Request) -> None:
        """Send the request; the caller's cancel scope holds the write timeout."""
        target = request.url.raw_path
        head = h11.Request(method=request.method, target=target, headers=request.headers.raw)
        data = [self.h11.send(head)]
        try:
            chunks: list[bytes] = [request.content]  # a body in memory, as providers send (no generator to run)
        except httpx.RequestNotRead:
            chunks = [chunk async for chunk in request.stream]  # type: ignore[union-attr]
        for chunk in chunks:
            if chunk:
                data.append(self.h11.send(h11.Data(data=chunk)))
        data.append(self.h11.send(h11.EndOfMessage()))
        await self.stream.send_all(b"".join(data))

    async def next_event(self, scope: trio.CancelScope | None, timeout: float) -> h11.Event:
        """The next h11 event, receiving as needed; each receive gets
        ``timeout`` seconds, on ``scope``'s deadline if given (one scope for a
        request's phases costs a third of one per operation), else on its own."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if scope is not None:
                scope.deadline = trio.current_time() + timeout
                data = await self.stream.receive_some(READ_SIZE)
            else:
                with trio.fail_after(timeout):
                    data = await self.stream.receive_some(READ_SIZE)
            if not data and self.h11.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            self.h11.receive_data(data)

    def buffered_body(self) -> tuple[list[bytes], bool]:
        """The body h11 already holds, without receiving, and whether that is
        all of it (a small reply arrives in the same read as its head)."""
        chunks = []
        while True:
            event = self.h11.next_event()
            if type(event) is h11.Data:
                chunks.append(bytes(event.data))
            elif type(event) is h11.EndOfMessage:
                return chunks, True
            elif event is h11.NEED_DATA:
                return chunks, False
            else:  # ConnectionClosed
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def done(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def close(self) -> None:
        """Close at once, without I/O: cleanup must not wait (it runs under
        cancellation); a TLS stream is dropped without its goodbye, which
        servers take as they take any dropped connection."""
        try:
            self.sock.close()
        except OSError:
            pass


class _Body(httpx.AsyncByteStream):
    """The response body: read on demand; the connection goes back to the
    pool when the body has been read to its end, else it is closed."""

    def __init__(self, transport: "TrioTransport", conn: _Connection, request: httpx.Request,
                 read_timeout: float, first: list[bytes]) -> None:
        self._transport, self._conn, self._request, self._timeout = transport, conn, request, read_timeout
        self._first = first  # what arrived with the head
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            first, self._first = self._first, []
            for chunk in first:
                yield chunk
            while True:
                with _mapped(self._request, read=True):
                    event = await conn.next_event(None, self._timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.PAUSED)):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body",
                                                    request=self._request)
        except BaseException:  # GeneratorExit too: a reader that stops early
            self._release(reuse=False)
            raise

    async def aclose(self) -> None:
        self._release(reuse=self._conn.done())

    def _release(self, reuse: bool) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._conn, reuse)


class _mapped:
    """Turn trio and h11 failures into httpx's exceptions."""

    def __init__(self, request: httpx.Request, *, read: bool = False, connect: bool = False) -> None:
        self.request, self.read, self.connect = request, read, connect

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, (httpx.HTTPError, trio.Cancelled)):
            if isinstance(exc, httpx.RequestError) and exc._request is None:
                exc.request = self.request
            return False
        if isinstance(exc, trio.TooSlowError):
            self.timed_out(exc)
        elif isinstance(exc, h11.RemoteProtocolError):
            cls = httpx.RemoteProtocolError
        elif isinstance(exc, h11.LocalProtocolError):
            cls = httpx.LocalProtocolError
        elif isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError)):
            cls = httpx.ConnectError if self.connect else httpx.ReadError if self.read else httpx.WriteError
        else:
            return False
        raise cls(str(exc) or type(exc).__name__, request=self.request) from exc

    def timed_out(self, cause: BaseException | None = None) -> None:
        cls = httpx.ConnectTimeout if self.connect else httpx.ReadTimeout if self.read else httpx.WriteTimeout
        raise cls("timed out", request=self.request) from cause


class TrioTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=TrioTransport(max_connections=N))``.

    At most ``max_connections`` requests are in flight at once, each on its
    own connection; more wait, first come first served. Idle connections
    are kept per origin and the most recently used is reused first.
    """

    def __init__(self, max_connections: int = 100, ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self._slots = trio.Semaphore(max_connections)
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = defaultdict(list)
        self._active: set[_Connection] = set()
        self.opened = 0  # connections opened, for tests and benches
        self._closed = False

    # -- pool ------------------------------------------------------------------

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        now = time.monotonic()
        stale = []
        found = None
        while stack:
            conn = stack.pop()
            if conn.reusable_now(now):
                found = conn
                break
            stale.append(conn)
        for conn in stale:
            log.debug("closed an idle connection the server ended or that expired")
            conn.close()
        return found

    async def _open(self, origin: _Origin) -> _Connection:
        """A new connection; the caller's cancel scope holds the connect timeout."""
        scheme, host, port = origin
        tcp = await trio.open_tcp_stream(host.decode("ascii"), port)
        stream: trio.abc.Stream = tcp
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()  # certifi's CAs, as httpx's own transport
            context = self._ssl_context
            stream = trio.SSLStream(tcp, context, server_hostname=host.decode("ascii"), https_compatible=True)
            try:
                await stream.do_handshake()
            except BaseException:
                tcp.socket.close()
                raise
        log.debug("opened a connection to %s://%s:%d (%d open)", scheme.decode(), host.decode("ascii"), port,
                  len(self._active) + 1 + sum(len(s) for s in self._idle.values()))
        return _Connection(origin, stream, tcp.socket)

    def _release(self, conn: _Connection, reuse: bool) -> None:
        self._active.discard(conn)
        try:
            if reuse and not self._closed:
                conn.h11.start_next_cycle()
                conn.idle_since = time.monotonic()
                self._idle[conn.origin].append(conn)
                self._trim()
            else:
                log.debug("closed a connection that cannot be reused")
                conn.close()
        finally:
            self._slots.release()

    def _trim(self) -> None:
        """Keep at most max_connections open: close the oldest idle ones."""
        idle = sum(len(stack) for stack in self._idle.values())
        extra = idle + len(self._active) - self.max_connections
        for stack in self._idle.values():
            while extra > 0 and stack:
                stack.pop(0).close()
                extra -= 1

    # -- the transport -----------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        scheme = request.url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme.decode()}://'.",
                                            request=request)
        port = request.url.port or (443 if scheme == b"https" else 80)
        origin = (scheme, request.url.raw_host, port)
        timeouts = request.extensions.get("timeout", {})
        pool = timeouts.get("pool")
        if pool is None:  # the providers' case: the kernel's timeout bounds the wait
            await self._slots.acquire()
        else:
            with trio.move_on_after(pool) as waited:
                await self._slots.acquire()
            if waited.cancelled_caught:
                raise httpx.PoolTimeout("no connection became free within the pool timeout", request=request)
        conn: _Connection | None = None
        event: h11.Event | None = None
        read = _timeout(timeouts.get("read"))
        phase = _mapped(request, connect=True)
        try:
            # One cancel scope for connect, write and the reply's head, its
            # deadline set afresh for each operation (httpx's per-operation
            # timeouts): entering a scope costs more than moving its deadline.
            with trio.CancelScope() as scope:
                with phase:
                    conn = self._take_idle(origin)
                    if conn is None:
                        self._trim_for_new()
                        scope.deadline = trio.current_time() + _timeout(timeouts.get("connect"))
                        conn = await self._open(origin)
                        self.opened += 1
                self._active.add(conn)
                phase = _mapped(request)
                with phase:
                    scope.deadline = trio.current_time() + _timeout(timeouts.get("write"))
                    await conn.send(request)
                phase = _mapped(request, read=True)
                with phase:
                    event = await conn.next_event(scope, read)
                    while isinstance(event, h11.InformationalResponse):
                        event = await conn.next_event(scope, read)
            if scope.cancelled_caught:
                phase.timed_out()
            if not isinstance(event, h11.Response):
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} from the server", request=request)
            with phase:
                chunks, complete = conn.buffered_body()
        except BaseException:
            if conn is not None:
                self._active.discard(conn)
                conn.close()
            self._slots.release()
            raise
        extensions = {"http_version": b"HTTP/1.1", "reason_phrase": event.reason}
        if complete:
            # The whole reply is here: the connection goes back now, and the
            # body is bytes in memory, not a stream to run.
            self._release(conn, conn.done())
            return httpx.Response(status_code=event.status_code, headers=event.headers,
                                  stream=httpx.ByteStream(b"".join(chunks)), extensions=extensions)
        return httpx.Response(status_code=event.status_code, headers=event.headers,
                              stream=_Body(self, conn, request, read, chunks), extensions=extensions)

    def _trim_for_new(self) -> None:
        """Make room for a new connection by closing an idle one of another origin."""
        idle = sum(len(stack) for stack in self._idle.values())
        if idle + len(self._active) < self.max_connections:
            return
        for stack in self._idle.values():
            if stack:
                stack.pop(0).close()
                return

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            while stack:
                stack.pop().close()
        for conn in list(self._active):
            conn.close()
