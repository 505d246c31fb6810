"""The providers' HTTP transport (trio streams, h11, a fair pool) against the fake server."""

from __future__ import annotations

import functools

import httpx
import pytest
import trio
import trio.testing
from fakeprovider import FakeProviderServer

from storyloom import ErrorKind, ProviderError
from storyloom.plugins.providers.openai import OpenAIProvider
from storyloom.plugins.providers.transport import TrioTransport
from storyloom.provider import Request


def trio_test(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def request(text: str = "Fix the grammar.") -> Request:
    return Request(messages=({"role": "user", "content": text},), max_tokens=32)


def order_seen(fake: FakeProviderServer) -> list[str]:
    return [r.body["messages"][0]["content"] for r in fake.requests]


@trio_test
async def test_waiting_requests_are_sent_in_the_order_they_came(fake_provider):
    # The late replies of issue 14: httpcore's pool gave a freed connection
    # to every waiting request at once; one took it and the rest queued
    # again behind newcomers, so a request could lose that race for seconds
    # while the server answered the others, and its wait counted in
    # timeout_per_item. A fair pool sends waiting requests first come, first
    # served: with one connection, the server sees them in the order they came.
    fake_provider.configure("m1", latency=0.1)  # long enough for all of them to queue behind the first
    instance = OpenAIProvider(fake_provider.model_spec("openai", "m1", max_parallel=1))
    sent: list[str] = []

    async def send(label: str) -> None:
        response = await instance.complete(request(label))
        assert response.text
        sent.append(label)

    labels = [f"request {i}" for i in range(12)]
    try:
        async with trio.open_nursery() as nursery:
            for label in labels:
                nursery.start_soon(send, label)
                await trio.testing.wait_all_tasks_blocked()  # it has queued before the next one starts
    finally:
        await instance.aclose()
    assert order_seen(fake_provider) == labels
    assert sent == labels
    assert fake_provider.connections == 1  # one kept-alive connection carried them all


@trio_test
async def test_requests_reuse_connections_and_open_no_more_than_max_parallel(fake_provider):
    instance = OpenAIProvider(fake_provider.model_spec("openai", "m1", max_parallel=4))
    try:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(instance.complete, request(f"r{i}"))
    finally:
        await instance.aclose()
    assert fake_provider.stats("m1").ok == 40
    assert 1 <= fake_provider.connections <= 4
    assert fake_provider.stats().max_concurrency <= 4


@trio_test
async def test_a_cancelled_request_gives_its_connection_back(fake_provider):
    # A request the kernel's timeout cancels mid-reply must not keep its
    # slot: with one connection, the next request still goes out.
    fake_provider.configure("m1", hang_rate=1.0, hang_seconds=30.0)
    instance = OpenAIProvider(fake_provider.model_spec("openai", "m1", max_parallel=1))
    try:
        with trio.move_on_after(0.3) as scope:
            await instance.complete(request("hangs"))
        assert scope.cancelled_caught
        fake_provider.configure("m1", hang_rate=0.0)
        with trio.fail_after(20):  # far above a reply's time: only a lost slot waits this long
            response = await instance.complete(request("after"))
    finally:
        await instance.aclose()
    assert response.text
    assert fake_provider.connections == 2  # the cancelled one was closed, not reused


@trio_test
async def test_an_idle_connection_the_server_closed_is_replaced(fake_provider):
    transport = TrioTransport(max_connections=2)
    async with httpx.AsyncClient(transport=transport) as client:
        url = fake_provider.base_url("openai") + "/chat/completions"
        headers = {"authorization": f"Bearer {fake_provider.keys['openai']}"}
        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
        first = await client.post(url, json=body, headers=headers)
        assert first.status_code == 200
        (conn,) = transport._idle[(b"http", b"127.0.0.1", fake_provider.port)]
        # The server side ends the kept-alive connection, as servers do after their idle timeout.
        fake_provider.close_idle_connections()
        with trio.fail_after(10):
            while not _readable(conn.sock):
                await trio.sleep(0.01)
        second = await client.post(url, json=body, headers=headers)
    assert second.status_code == 200
    assert transport.opened == 2
    assert fake_provider.stats("m1").ok == 2


def _readable(sock) -> bool:
    import select

    return bool(select.select([sock.fileno()], [], [], 0)[0])


@trio_test
async def test_read_timeout_and_refused_connection_are_httpx_errors(fake_provider):
    fake_provider.configure("m1", hang_rate=1.0, hang_seconds=30.0)
    instance = OpenAIProvider(fake_provider.model_spec("openai", "m1", read_timeout=0.2))
    try:
        with pytest.raises(ProviderError) as slow:
            await instance.complete(request())
    finally:
        await instance.aclose()
    assert slow.value.kind is ErrorKind.TIMEOUT
    assert isinstance(slow.value.__cause__, httpx.ReadTimeout)

    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        refused = OpenAIProvider(fake_provider.model_spec("openai", "m1", base_url=f"http://127.0.0.1:{port}/v1"))
        try:
            with pytest.raises(ProviderError) as failed:
                await refused.complete(request())
        finally:
            await refused.aclose()
    assert failed.value.kind is ErrorKind.TEMPORARY_ERROR
    assert failed.value.billed is False
    assert isinstance(failed.value.__cause__, httpx.ConnectError)


@trio_test
async def test_a_full_pool_waits_and_the_pool_timeout_applies(fake_provider):
    fake_provider.configure("m1", hang_rate=1.0, hang_seconds=30.0)
    transport = TrioTransport(max_connections=1)
    url = fake_provider.base_url("openai") + "/chat/completions"
    headers = {"authorization": f"Bearer {fake_provider.keys['openai']}"}
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30.0, pool=0.2)) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(client.post, url, json=body, headers=headers))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(httpx.PoolTimeout):
                await client.post(url, json=body, headers=headers)
            nursery.cancel_scope.cancel()


REPLY = b'{"text": "' + b"rain " * 1000 + b'"}'
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(REPLY)


async def _read_request(stream: trio.SocketStream, buffer: bytearray) -> bool:
    """Read one request with a Content-Length body off ``stream``; False at EOF."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return False
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    (length,) = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    buffer[:] = rest[length:]
    return True


@trio_test
async def test_a_reply_that_came_whole_and_one_that_came_in_pieces_read_the_same():
    # A reply whose body arrived with its head is handed over as bytes and
    # its connection goes back at once; one still arriving is streamed.
    go = trio.Event()

    async def serve(stream: trio.SocketStream) -> None:
        buffer = bytearray()
        await _read_request(stream, buffer)
        await stream.send_all(HEAD + REPLY)  # whole, in one write
        await _read_request(stream, buffer)
        await stream.send_all(HEAD + REPLY[:100])  # the head and a piece; the rest when the client has the head
        await go.wait()
        await stream.send_all(REPLY[100:])
        await _read_request(stream, buffer)
        await stream.send_all(HEAD + REPLY)

    transport = TrioTransport(max_connections=1)
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/v1/chat"
        bodies, streams = [], []
        for _ in range(3):
            response = await transport.handle_async_request(httpx.Request("POST", url, json={"hi": 1}))
            streams.append(type(response.stream).__name__)
            go.set()
            bodies.append(await response.aread())
            await response.aclose()
        nursery.cancel_scope.cancel()
    await transport.aclose()
    assert bodies == [REPLY] * 3
    assert streams == ["ByteStream", "_Body", "ByteStream"]
    assert transport.opened == 1  # both kinds gave the connection back for reuse


@pytest.fixture
def tls_fake(tmp_path, monkeypatch):
    """The fake provider over HTTPS with a certificate made here for 127.0.0.1,
    and a client context that trusts it."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = FakeProviderServer(ssl_context=server_context).start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield server, ssl.create_default_context(cafile=str(cert))
    finally:
        server.close()


@trio_test
async def test_https_with_a_trusted_certificate_and_kept_alive(tls_fake):
    fake, client_context = tls_fake
    transport = TrioTransport(max_connections=2, ssl_context=client_context)
    instance = OpenAIProvider(fake.model_spec("openai", "m1"), transport=transport)
    try:
        first = await instance.complete(request("one"))
        second = await instance.complete(request("two"))
    finally:
        await instance.aclose()
    assert fake.base_url("openai").startswith("https://")
    assert first.text and second.text
    assert transport.opened == 1 and fake.connections == 1


@trio_test
async def test_https_to_an_untrusted_certificate_is_refused(tls_fake):
    fake, _ = tls_fake
    instance = OpenAIProvider(fake.model_spec("openai", "m1"))  # the default context: certifi's CAs
    try:
        with pytest.raises(ProviderError) as failed:
            await instance.complete(request())
    finally:
        await instance.aclose()
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
    assert failed.value.billed is False
    assert fake.stats().requests == 0  # nothing reached the server


def test_the_transport_refuses_no_connections():
    with pytest.raises(ValueError):
        TrioTransport(max_connections=0)


def test_behind_a_proxy_from_the_environment_httpx_transport_is_used(monkeypatch):
    from storyloom.plugins.providers.http import _proxied
    from storyloom.settings import ModelSpec

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    spec = ModelSpec(name="m", provider="openai", model="m", base_url="https://api.example.test/v1")
    assert not _proxied("https://api.example.test/v1")
    assert isinstance(OpenAIProvider(spec)._client._transport, TrioTransport)

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    assert _proxied("https://api.example.test/v1")
    assert not _proxied("http://api.example.test/v1")  # only https goes through that proxy
    assert not isinstance(OpenAIProvider(spec)._client._transport, TrioTransport)

    monkeypatch.setenv("NO_PROXY", "api.example.test")
    assert not _proxied("https://api.example.test/v1")
