"""The webhook sink against a real local HTTP server: delivery, retries on 500,
a hanging server that must not hold the batch, secrets in URLs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio

import storyloom
from sample_plugins import scripted
from storyloom.events import Event
from storyloom.plugins import webhook
from storyloom.plugins.webhook import message_text, scrubbed, where


class Hook:
    """A local webhook endpoint. ``answers`` is consumed one per request
    (the last one repeats): an HTTP status, or "hang" (never answer)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: list[int | str] = [200]
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append({"path": self.path, "type": self.headers["Content-Type"],
                                      "json": json.loads(body), "at": time.monotonic()})
                answer = hook.answers.pop(0) if len(hook.answers) > 1 else hook.answers[0]
                if answer == "hang":
                    hook.release.wait(30)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/s3cr3t"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    scripted.reset()
    monkeypatch.setattr(webhook, "BACKOFF", 0.01)


class Notifier:
    """Sends one notify and one escalate as the batch starts."""

    @storyloom.hookimpl
    def loom_batch_started(self, control):
        self.started = trio.current_time()
        control.notify("chapter <b>7</b> needs a look", chapter=7)
        control.escalate("the model is down")


SETTINGS = """
models:
  s1: {{provider: scripted, latency: 0.01}}
default_models: [s1]
webhooks:
  - {{url: '{url}', timeout: {timeout}, retries: {retries}}}
"""


def job(n: int = 20) -> str:
    items = "".join(f"  - {{item_id: it-{i}}}\n" for i in range(n))
    return f"job_id: wh\njob_type: qc_processing\nconfig: {{max_parallel: 2}}\nitems:\n{items}"


def test_notify_escalate_and_the_end_are_posted_with_slack_text(loom, hook):
    loom.write("storyloom.yaml", SETTINGS.format(url=hook.url, timeout="2s", retries=1))
    result = loom.run(job(), plugins=(scripted, Notifier()))
    result.assert_outcomes(completed=20)
    kinds = [r["json"]["storyloom"]["kind"] for r in hook.requests]
    assert kinds == ["notify", "escalate", "batch_finished"]  # item events are not sent by default
    first = hook.requests[0]
    assert first["path"] == "/services/T000/B000/s3cr3t" and first["type"] == "application/json"
    assert first["json"]["text"] == "storyloom - job wh: chapter <b>7</b> needs a look"
    assert first["json"]["storyloom"]["data"] == {"message": "chapter <b>7</b> needs a look", "chapter": 7}
    assert hook.requests[1]["json"]["text"].startswith("storyloom ESCALATION - job wh: the model is down")
    end = hook.requests[2]["json"]["text"]
    assert end.startswith("storyloom - job wh completed after ") and "20/20 completed, 0 failed" in end


def test_a_500_is_retried_then_given_up_without_failing_the_batch(loom, hook, capsys):
    hook.answers = [500]
    loom.write("storyloom.yaml", SETTINGS.format(url=hook.url, timeout="2s", retries=2))
    result = loom.run(job(40), plugins=(scripted, Notifier()))  # long enough for the retries
    result.assert_outcomes(completed=40)
    assert result.summary.exit_code == 0
    per_kind = {}
    for r in hook.requests:
        kind = r["json"]["storyloom"]["kind"]
        per_kind[kind] = per_kind.get(kind, 0) + 1
    assert per_kind["notify"] == 3 and per_kind["escalate"] == 3  # the first try and two retries each
    err = capsys.readouterr().err
    assert "storyloom: webhook http://127.0.0.1:" in err and "gave up after 3 attempt(s): HTTP 500" in err
    assert "s3cr3t" not in err  # webhook paths are secrets


def test_a_500_then_success_is_delivered_once(loom, hook):
    hook.answers = [500, 200]
    loom.write("storyloom.yaml", SETTINGS.format(url=hook.url, timeout="2s", retries=3))
    loom.run(job(40), plugins=(scripted, Notifier()))  # long enough that the retry is not cut short
    kinds = [r["json"]["storyloom"]["kind"] for r in hook.requests]
    assert kinds == ["notify", "notify", "escalate", "batch_finished"]


def test_a_4xx_is_not_retried(loom, hook, capsys):
    hook.answers = [404]
    loom.write("storyloom.yaml", SETTINGS.format(url=hook.url, timeout="2s", retries=3))
    loom.run(job(), plugins=(scripted, Notifier()))
    assert [r["json"]["storyloom"]["kind"] for r in hook.requests] == ["notify", "escalate", "batch_finished"]
    assert "gave up after 1 attempt(s): HTTP 404" in capsys.readouterr().err


@pytest.mark.slow
def test_a_hanging_server_holds_neither_the_items_nor_the_end(loom, hook, capsys, monkeypatch):
    from storyloom import kernel

    monkeypatch.setattr(kernel, "SINK_GRACE", 0.5)  # the 2 s default would only make the wait longer
    hook.answers = ["hang"]
    loom.write("storyloom.yaml", SETTINGS.format(url=hook.url, timeout="2s", retries=3))
    notifier = Notifier()
    started = time.monotonic()
    result = loom.run(job(20), plugins=(scripted, notifier))
    took = time.monotonic() - started
    result.assert_outcomes(completed=20)
    # Ten rounds of 10 ms at max_parallel 2: every item ran long before the first
    # POST could time out (2 s), so nothing waited for the webhook.
    last_call = max(t for (*_rest, t) in scripted.STATS["calls"])
    assert last_call - notifier.started < 1.5
    # Sinks get SINK_GRACE to drain after the batch ends, then retries are cut
    # short; the last try is bounded by the webhook's timeout (2 s).
    assert took < kernel.SINK_GRACE + 2 + 1.5
    err = capsys.readouterr().err
    assert "undelivered when the batch ended" in err
    assert hook.requests  # it did try


def test_url_env_reads_the_url_from_the_environment(loom, hook, monkeypatch, capsys):
    monkeypatch.setenv("STUDIO_SLACK_URL", hook.url)
    loom.write("storyloom.yaml", SETTINGS.format(url=hook.url, timeout="2s", retries=0)
               .replace(f"url: '{hook.url}'", "url_env: STUDIO_SLACK_URL"))
    loom.run(job(), plugins=(scripted, Notifier()))
    assert len(hook.requests) == 3
    monkeypatch.delenv("STUDIO_SLACK_URL")
    hook.requests.clear()
    loom.run(job().replace("job_id: wh", "job_id: wh2"), plugins=(scripted, Notifier()))
    assert hook.requests == []
    assert "$STUDIO_SLACK_URL is not set" in capsys.readouterr().err


def test_events_can_be_chosen(loom, hook):
    loom.write("storyloom.yaml", SETTINGS.format(url=hook.url, timeout="2s", retries=0)
               .replace("retries: 0", "retries: 0, events: [batch_started, escalate]"))
    loom.run(job(), plugins=(scripted, Notifier()))
    # The hook runs before the kernel emits batch_started.
    assert [r["json"]["storyloom"]["kind"] for r in hook.requests] == ["escalate", "batch_started"]


def test_settings_need_exactly_one_of_url_and_url_env(tmp_path):
    from storyloom.errors import ConfigError
    from storyloom.loader import load_settings

    path = tmp_path / "storyloom.yaml"
    path.write_text("webhooks:\n  - {url: 'https://x.example/h', url_env: X}\n")
    with pytest.raises(ConfigError, match=r":2:5: at webhooks\[0\]: give either url or url_env"):
        load_settings(path)
    path.write_text("webhooks:\n  - {url: 'ftp://x'}\n")
    with pytest.raises(ConfigError, match="expected an http:// or https:// URL"):
        load_settings(path)
    path.write_text("webhooks:\n  - {url_env: SLACK, events: [escalate], timeout: 2s, retries: 1}\n")
    (spec,) = load_settings(path).webhooks
    assert (spec.url, spec.url_env, spec.events, spec.timeout, spec.retries) == (None, "SLACK", ("escalate",), 2.0, 1)


def test_text_of_a_paused_batch_says_how_to_continue():
    event = Event("batch_finished", "j1", data={"status": "paused", "duration": 61.2, "cost_usd": 0.5,
                                                "reason": "budget reached", "counts": {
                                                    "pending": 3, "running": 0, "completed": 7, "failed": 0,
                                                    "skipped": 0}})
    assert message_text(event) == ("storyloom - job j1 paused after 61s: 7/10 completed, 0 failed, 0 skipped; "
                                   "cost $0.5000. budget reached. Continue with: storyloom resume j1")
    assert where("https://hooks.slack.com/services/T0/B0/XYZ?x=1") == "https://hooks.slack.com"


# -- secrets in webhook URLs never reach stderr, errors or logs --------------


def test_a_password_or_token_in_the_url_never_reaches_stderr(loom, hook, capsys):
    hook.answers = [500]
    secret_url = hook.url.replace("http://", "http://bob:hunter2@") + "?token=t0ps3cret"
    loom.write("storyloom.yaml", SETTINGS.format(url=secret_url, timeout="2s", retries=0))
    result = loom.run(job(), plugins=(scripted, Notifier()))
    result.assert_outcomes(completed=20)
    assert hook.requests  # it did post, with the URL as given
    err = capsys.readouterr().err
    assert "gave up after 1 attempt(s): HTTP 500" in err
    for secret in ("hunter2", "t0ps3cret", "s3cr3t", "bob"):
        assert secret not in err
    assert "storyloom: webhook http://127.0.0.1:" in err


def test_a_connection_error_names_the_host_only(loom, capsys):
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"http://bob:hunter2@127.0.0.1:{port}/hooks/s3cr3t?token=t0ps3cret"
    loom.write("storyloom.yaml", SETTINGS.format(url=url, timeout="2s", retries=0))
    loom.run(job(2), plugins=(scripted, Notifier())).assert_outcomes(completed=2)
    err = capsys.readouterr().err
    assert f"storyloom: webhook http://127.0.0.1:{port}: gave up after 1 attempt(s)" in err
    for secret in ("hunter2", "t0ps3cret", "s3cr3t", "bob"):
        assert secret not in err


@pytest.mark.parametrize("url", ["ftp://bob:hunter2@x.example/h", "https://bob:hunter2@x.example:99999/h",
                                 "https://[bob:hunter2@x.example/h"])
def test_a_bad_webhook_url_in_settings_is_refused_without_quoting_it(tmp_path, url):
    from storyloom.errors import ConfigError
    from storyloom.loader import load_settings

    path = tmp_path / "storyloom.yaml"
    path.write_text(f"webhooks:\n  - {{url: '{url}'}}\n")
    with pytest.raises(ConfigError, match=r"storyloom.yaml:2:.*webhooks\[0\]\.url: .*URL") as caught:
        load_settings(path)
    assert "hunter2" not in str(caught.value) and "bob" not in str(caught.value)


def test_where_shows_scheme_host_and_port_only():
    assert where("https://bob:hunter2@Hooks.Example:8443/services/x?token=t") == "https://hooks.example:8443"
    assert "hunter2" not in where("https://bob:hunter2@[::1/x")


def test_scrubbed_masks_a_password_that_contains_the_username():
    url = "https://bob:bob123@hooks.example/services/x"
    text = scrubbed("failed: password bob123 for user bob", url)
    assert "123" not in text and "bob" not in text, text


def test_scrubbed_masks_the_decoded_form_of_a_percent_encoded_password():
    url = "https://bob:p%40ss@hooks.example/services/x"
    text = scrubbed("auth failed with p@ss (raw p%40ss)", url)
    assert "p@ss" not in text and "p%40ss" not in text, text
