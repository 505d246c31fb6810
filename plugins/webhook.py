"""The ``webhook`` progress sink: notify, escalate and batch_finished POSTed as JSON.

Configured in ``storyloom.yaml``; with no ``webhooks:`` the sink sits the
batch out, which is why it can be on by default::

    webhooks:
      - url_env: SLACK_WEBHOOK_URL      # or url: https://...
        events: [notify, escalate, batch_finished]   # the default
        timeout: 5s                     # per request, connecting included
        retries: 3                      # after timeouts, connection errors, 429 and 5xx

The body is ``{"text": ..., "storyloom": <the event>}``: ``text`` is what
Slack (and Mattermost, Discord's /slack endpoint, ...) shows.

The kernel hands events over with ``send_nowait`` and drops them for a sink
that falls behind, so this sink only queues them and POSTs from its own tasks,
one per URL. A slow, hanging or failing server delays nothing and fails
nothing: after its retries a message is given up with one line on stderr.
When the batch ends, messages still queued get one last try, bounded by the
webhook's timeout. Delivery is at least once: a POST cut off by the end of
the batch is tried again, so a server may see it twice.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import trio

from storyloom import hookimpl
from storyloom.events import Event
from storyloom.settings import Webhook
from storyloom.sinks import buffered

#: Seconds before the first retry; doubled for each further one.
BACKOFF = 0.5
#: Messages queued per URL; when a server is down the oldest are dropped.
QUEUE_LIMIT = 100


def message_text(event: Event) -> str:
    """The one-line ``text`` a chat shows for ``event``."""
    data = event.data
    if event.kind in ("notify", "escalate"):
        prefix = "storyloom" if event.kind == "notify" else "storyloom ESCALATION"
        return f"{prefix} - job {event.job_id}: {data.get('message', '')}"
    if event.kind == "batch_finished":
        counts = data.get("counts", {})
        total = sum(counts.values())
        text = (f"storyloom - job {event.job_id} {data.get('status')} after {data.get('duration', 0):.0f}s: "
                f"{counts.get('completed', 0)}/{total} completed, {counts.get('failed', 0)} failed, "
                f"{counts.get('skipped', 0)} skipped; cost ${data.get('cost_usd', 0):.4f}")
        if data.get("status") in ("paused", "interrupted"):
            text += f". {data.get('reason') or ''}. Continue with: storyloom resume {event.job_id}"
        return text
    if event.kind == "batch_started":
        return f"storyloom - job {event.job_id} ({data.get('job_type')}) started: {data.get('total')} items"
    item = f" {event.item_id}" if event.item_id else ""
    return f"storyloom - job {event.job_id}{item}: {event.kind} {data.get('state', '')}".rstrip()


def where(url: str) -> str:
    """``scheme://host[:port]`` of a URL: webhook paths, queries and any
    ``user:password@`` are secrets, so messages show only this."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(an invalid URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def scrubbed(text: str, url: str) -> str:
    """``text`` (an httpx error, say) with the URL and each secret part of it masked."""
    text = text.replace(url, where(url))
    try:
        parts = urlsplit(url)
        secrets = (parts.username, parts.password, parts.query, parts.path if len(parts.path) > 1 else None)
    except ValueError:
        return where(url) if url in text or "@" in text else text
    # Longest first, so a username inside the password cannot leave part of it.
    found = {s for s in secrets if s}
    for secret in sorted(found | {unquote(s) for s in found}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class _Target:
    def __init__(self, spec: Webhook, url: str) -> None:
        self.spec = spec
        self.url = url
        self.queue: deque[dict[str, Any]] = deque()
        self.wake = trio.Event()
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if event.kind not in self.spec.events:
            return
        if len(self.queue) >= QUEUE_LIMIT:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append({"text": message_text(event), "storyloom": event.as_dict()})
        self.wake.set()


class WebhookSink:
    def __init__(self, targets: list[_Target], stream=None) -> None:
        self.targets = targets
        self.stream = stream or sys.stderr
        self._closed = False
        #: What happened to each message: (url, "delivered" | "failed", detail); for tests and debugging.
        self.log: list[tuple[str, str, str]] = []

    async def run(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        client = httpx.AsyncClient(follow_redirects=False)
        try:
            async with trio.open_nursery() as nursery:
                for target in self.targets:
                    nursery.start_soon(self._deliver, client, target)
                async for event in events:
                    self._offer(event)
                self._closed = True  # the channel ended: deliver what is queued, then stop
                for target in self.targets:
                    target.wake.set()
        finally:
            # Cancelled because the batch is over (the kernel does not wait for
            # sinks): what is still queued, the last events included, gets one
            # try each, within the longest timeout in all.
            for event in buffered(events):
                self._offer(event)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + max(t.spec.timeout for t in self.targets)
                async with trio.open_nursery() as flush:
                    for target in self.targets:
                        flush.start_soon(self._flush, client, target)
            with trio.CancelScope(shield=True):
                await client.aclose()
            for target in self.targets:
                if target.queue:
                    self._warn(target, f"{len(target.queue)} message(s) undelivered when the batch ended")
                if target.dropped:
                    self._warn(target, f"{target.dropped} message(s) dropped while the server was not answering")

    def _offer(self, event: Event) -> None:
        for target in self.targets:
            target.offer(event)

    async def _deliver(self, client: httpx.AsyncClient, target: _Target) -> None:
        while True:
            while target.queue:
                # Taken off the queue only once handled: if the batch ends
                # mid-retry, the final flush tries it again.
                await self._post(client, target, target.queue[0], target.spec.retries)
                target.queue.popleft()
            if self._closed:
                return
            target.wake = trio.Event()
            await target.wake.wait()

    async def _flush(self, client: httpx.AsyncClient, target: _Target) -> None:
        while target.queue:
            await self._post(client, target, target.queue[0], 0)
            target.queue.popleft()

    async def _post(self, client: httpx.AsyncClient, target: _Target, body: dict[str, Any], retries: int) -> None:
        """POST ``body``, retrying transient failures; gives up with a warning, never raises."""
        delay = BACKOFF
        for attempt in range(retries + 1):
            problem = await self._post_once(client, target, body)
            if problem is None:
                self.log.append((target.url, "delivered", ""))
                return
            retryable, detail = problem
            if not retryable or attempt == retries:
                self.log.append((target.url, "failed", detail))
                self._warn(target, f"gave up after {attempt + 1} attempt(s): {detail}")
                return
            await trio.sleep(delay)
            delay *= 2

    @staticmethod
    async def _post_once(client: httpx.AsyncClient, target: _Target, body: dict[str, Any]) -> tuple[bool, str] | None:
        """None when delivered, else (worth retrying, what went wrong)."""
        timeout = target.spec.timeout
        # The caller owns the timeout (trio's rule); httpx's own is a backstop per phase.
        with trio.move_on_after(timeout):
            try:
                response = await client.post(target.url, json=body, timeout=timeout)
            except httpx.InvalidURL:
                return False, "the URL is not valid"
            except httpx.HTTPError as exc:
                return True, f"{type(exc).__name__}: {scrubbed(str(exc), target.url)}" if str(exc) \
                    else type(exc).__name__
            if response.is_success:
                return None
            status = response.status_code
            return status == 429 or status >= 500, f"HTTP {status}"
        return True, f"no answer within {timeout:g}s"

    def _warn(self, target: _Target, message: str) -> None:
        print(f"storyloom: webhook {where(target.url)}: {message}", file=self.stream, flush=True)


def make_sink(config, plan, stream=None) -> WebhookSink | None:
    """A sink for the settings' ``webhooks:``, or None when there are none."""
    stream = stream or sys.stderr
    targets = []
    for spec in config.settings.webhooks:
        url = spec.url or os.environ.get(spec.url_env or "", "")
        if not url:
            print(f"storyloom: webhook: ${spec.url_env} is not set; its messages are not sent", file=stream)
            continue
        targets.append(_Target(spec, url))
    return WebhookSink(targets, stream) if targets else None


@hookimpl
def loom_register_sinks(register):
    register("webhook", make_sink)
