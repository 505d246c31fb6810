"""What ``bench/http.py`` runs: the clients, the fake provider in a child process, the table.

The entry point is ``bench/http.py`` (see its docstring); the code lives
here because a module named ``http`` in the script's folder stands in for
the standard library's package.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

import h11
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

MODEL = "m1"
#: Requests per client in the untimed round before the table.
WARMUP = 100
BODY = {"model": MODEL, "max_tokens": 32,
        "messages": [{"role": "system", "content": "You are a careful copy editor."},
                     {"role": "user", "content": "Fix the grammar: the rain fall all night."}]}


# ---------------------------------------------------------------------------
# The fake provider in a child process
# ---------------------------------------------------------------------------


def serve(kind: str) -> None:
    """Child process: start a fake, say where it is, run until stdin closes."""
    if kind == "fast":
        return trio.run(serve_fast)
    from fakeprovider import FakeProviderServer

    server = FakeProviderServer().start()
    server.configure(MODEL, latency=0.0)
    print(json.dumps({"base_url": server.base_url("openai"), "key": server.keys["openai"],
                      "key_env": server.key_env("openai"), "port": server.port}), flush=True)
    sys.stdin.read()
    server.close()


async def serve_fast() -> None:
    """The fake's OpenAI endpoint on one trio task per connection with h11:
    same path, key check and reply body (``fakeprovider._reply``), none of
    its rate limits or faults. Thousands of requests a second where the
    threaded fake manages a few hundred on this machine."""
    from fakeprovider import FakeProviderServer, _reply

    key = f"fake-openai-{os.urandom(12).hex()}"
    path = b"/openai/v1/chat/completions"
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                body, head = [], None
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        head = event
                    elif isinstance(event, h11.Data):
                        body.append(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # ConnectionClosed
                        return
                headers = dict(head.headers)
                if head.target != path or headers.get(b"authorization") != b"Bearer " + key.encode():
                    status, reply = 401, {"error": {"message": "bad key or path", "type": "invalid_request_error"}}
                else:
                    payload = json.loads(b"".join(body))
                    status, reply = 200, _reply("openai", payload["model"], "rain " * 19 + "rain", 20, 20, "stop")
                data = json.dumps(reply).encode()
                await stream.send_all(
                    conn.send(h11.Response(status_code=status, headers=[("content-type", "application/json"),
                                                                        ("content-length", str(len(data)))]))
                    + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            return

    print(json.dumps({"base_url": f"http://127.0.0.1:{port}/openai/v1", "key": key,
                      "key_env": FakeProviderServer.key_env("openai"), "port": port}), flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


class Server:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __enter__(self) -> "Server":
        self.proc = subprocess.Popen([sys.executable, str(HERE / "http.py"), "--serve", self.kind], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        info = json.loads(self.proc.stdout.readline())
        self.base_url, self.key, self.key_env, self.port = info["base_url"], info["key"], info["key_env"], info["port"]
        os.environ[self.key_env] = self.key
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------
# Clients: each returns an async function (task index) -> None that sends its share
# ---------------------------------------------------------------------------

Send = Callable[[int], Awaitable[None]]


def check(data: dict) -> None:
    if not data["choices"][0]["message"]["content"]:
        raise RuntimeError("empty reply")


async def bare(server: Server, n: int, conns: int) -> None:
    """Raw h11 on trio streams: a connection per task, kept alive."""
    payload = json.dumps(BODY).encode()
    headers = [("host", f"127.0.0.1:{server.port}"), ("content-type", "application/json"),
               ("authorization", f"Bearer {server.key}"), ("content-length", str(len(payload)))]
    path = server.base_url.split(str(server.port), 1)[1] + "/chat/completions"

    async def task(count: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        conn = h11.Connection(h11.CLIENT)
        async with stream:
            for _ in range(count):
                await stream.send_all(conn.send(h11.Request(method="POST", target=path, headers=headers))
                                      + conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
                body = []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Data):
                        body.append(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.Response) and event.status_code != 200:
                        raise RuntimeError(f"HTTP {event.status_code}")
                check(json.loads(b"".join(body)))
                conn.start_next_cycle()

    await run_tasks(n, conns, task)


async def run_tasks(n: int, conns: int, task: Callable[[int], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(conns):
            nursery.start_soon(task, n // conns + (i < n % conns))


def httpx_loop(module: str, shard: int | None, trio_transport: bool = False
               ) -> Callable[[Server, int, int], Awaitable[None]]:
    async def run(server: Server, n: int, conns: int) -> None:
        lib = __import__(module)
        size = shard or conns
        if trio_transport:
            from storyloom.plugins.providers.transport import TrioTransport
        clients = [lib.AsyncClient(headers={"authorization": f"Bearer {server.key}"},
                                   limits=lib.Limits(max_connections=size, max_keepalive_connections=size),
                                   transport=TrioTransport(max_connections=size) if trio_transport else None)
                   for _ in range(max(1, conns // size))]
        url = server.base_url + "/chat/completions"
        counter = iter(range(conns))

        async def task(count: int) -> None:
            client = clients[next(counter) % len(clients)]
            for _ in range(count):
                response = await client.post(url, json=BODY)
                response.raise_for_status()
                check(json.loads(response.content))

        try:
            await run_tasks(n, conns, task)
        finally:
            for client in clients:
                await client.aclose()
    return run


async def storyloom(server: Server, n: int, conns: int) -> None:
    """The real openai provider, as the kernel calls it for an attempt."""
    from storyloom.plugins.providers.openai import OpenAIProvider
    from storyloom.provider import Request
    from storyloom.settings import ModelSpec

    spec = ModelSpec(name=MODEL, provider="openai", model=MODEL, base_url=server.base_url,
                     api_key_env=server.key_env, max_parallel=conns)
    provider = OpenAIProvider(spec)
    request = Request(messages=tuple(BODY["messages"]), max_tokens=BODY["max_tokens"])

    async def task(count: int) -> None:
        for _ in range(count):
            response = await provider.complete(request)
            if not response.text:
                raise RuntimeError("empty reply")

    try:
        await run_tasks(n, conns, task)
    finally:
        await provider.aclose()


async def kernel(server: Server, n: int, conns: int) -> None:
    """A ``prompts`` job of n requests through ``storyloom.api.run_job`` (what
    ``storyloom run`` does): the provider plus the kernel, the SQLite store
    and the per-item result files, ``max_parallel`` conns."""
    import tempfile

    from storyloom.api import run_job
    from storyloom.config import Options

    folder = Path(tempfile.mkdtemp(prefix="storyloom-bench-http-"))
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": BODY})
             for i in range(n)]
    (folder / "requests.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "storyloom.yaml").write_text(
        f"models:\n  m1: {{provider: openai, model: {MODEL}, base_url: '{server.base_url}', "
        f"api_key_env: {server.key_env}, max_parallel: {conns}, price: {{input: 0.15, output: 0.6}}}}\n"
        "default_models: [m1]\nprogress: []\nreports: []\n", encoding="utf-8")
    (folder / "job.yaml").write_text(f"job_id: bench-http\njob_type: prompts\ninput: requests.jsonl\n"
                                     f"config: {{max_parallel: {conns}}}\n", encoding="utf-8")
    options = Options(state_dir=str(folder / "state"), out_dir=str(folder / "out"), quiet=True, autoload=False)
    summary = await run_job(folder / "job.yaml", options=options)
    if summary.counts["completed"] != n:
        raise RuntimeError(f"{summary.counts['completed']} of {n} completed")


def clients(options: bool) -> dict[str, Callable[[Server, int, int], Awaitable[None]]]:
    found: dict[str, Callable[[Server, int, int], Awaitable[None]]] = {"bare": bare, "storyloom": storyloom}
    if options:
        found["kernel"] = kernel
        found["httpx-trio"] = httpx_loop("httpx", None, trio_transport=True)
        found["httpx"] = httpx_loop("httpx", None)
        found["httpx-shards"] = httpx_loop("httpx", 8)
        try:
            import httpx2  # noqa: F401
        except ImportError:
            print("(httpx2 is not installed: its rows are left out)", file=sys.stderr)
        else:
            found["httpx2"] = httpx_loop("httpx2", None)
            found["httpx2-shards"] = httpx_loop("httpx2", 8)
    return found


def measure(client: Callable[[Server, int, int], Awaitable[None]], server: Server, n: int,
            conns: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    trio.run(client, server, n, conns)
    return time.perf_counter() - t0, time.process_time() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description="storyloom's HTTP path next to a bare client")
    parser.add_argument("-n", type=int, default=3000, help="requests per client and connection count")
    parser.add_argument("-c", "--connections", type=int, action="append", help="connection counts (8, 32, 64, 128)")
    parser.add_argument("--options", action="store_true", help="also the candidate clients of issue 14")
    parser.add_argument("--only", action="append", help="only these clients (bare, storyloom, httpx, ...)")
    parser.add_argument("--server", choices=("fast", "threaded"), default="fast",
                        help="fast: the fake's OpenAI endpoint on trio and h11 (default); "
                             "threaded: tests/fakeprovider.py itself, a thread per connection")
    parser.add_argument("--serve", choices=("fast", "threaded"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    counts = args.connections or [8, 32, 64, 128]
    chosen = clients(args.options or bool(args.only))
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only or k == "bare"}
    print(f"{args.n} zero-latency requests per row; {args.server} fake provider in a child process")
    print(f"{'client':<14} {'conns':>5} {'wall s':>7} {'req/s':>7} {'CPU ms/req':>10} {'x bare':>7}")
    cpu: dict[str, list[float]] = {}
    with Server(args.server) as server:
        # One short untimed round first: imports (httpx, the providers) and
        # first-call caches would otherwise land in the first row's CPU.
        for client in chosen.values():
            trio.run(client, server, WARMUP, counts[0])
        for conns in counts:
            walls: dict[str, float] = {}
            for name, client in chosen.items():
                wall, used = measure(client, server, args.n, conns)
                walls[name] = wall
                cpu.setdefault(name, []).append(used * 1000 / args.n)
                ratio = f"{wall / walls['bare']:.2f}" if name != "bare" else "-"
                print(f"{name:<14} {conns:>5} {wall:>7.2f} {args.n / wall:>7.0f} {used * 1000 / args.n:>10.3f} "
                      f"{ratio:>7}", flush=True)
    print(f"CPU ms/req at each connection count over the one at {counts[0]} (target for storyloom: 0.75-1.25):")
    for name, values in cpu.items():
        print(f"  {name:<14} " + " ".join(f"{v / values[0]:.2f}" for v in values))


if __name__ == "__main__":
    main()
