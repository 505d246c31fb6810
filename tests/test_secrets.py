"""API keys never leave the environment: not into the store (database and
WAL), results, reports, events, logs, or anything printed.

A job runs against the fake provider with openai, anthropic and gemini
models, one of them refused as a bad key (the fake echoes the key back in
its error, as some APIs do), one with the wrong key, and server errors and
truncated replies so that the error paths run too. Then every file written
under the test's folder, the captured output and the log records are
searched for the keys.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

from storyloom import hookimpl

KINDS = ("openai", "anthropic", "gemini")


class Spy:
    """Records every event to a file, renders a report, and snapshots every
    file while the store is still open (its WAL not yet checkpointed away),
    and everything the store holds for the job, read through the Store
    protocol (a backend that keeps no files here is searched too)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.events = folder / "events.jsonl"
        self.snapshot: dict[str, bytes] = {}
        self.stored = b""

    @hookimpl
    def loom_register_sinks(self, register):
        register("spy", lambda config, plan: self)

    @hookimpl
    def loom_register_renderers(self, register):
        register("spy-report", lambda report: ("report.json", json.dumps(report, default=str)))

    async def run(self, events):
        with self.events.open("a", encoding="utf-8") as out:
            async for event in events:
                out.write(json.dumps(event.as_dict(), default=str) + "\n")

    @hookimpl
    def loom_batch_finished(self, job, summary, store):
        async def snapshot():
            self.snapshot = files(self.folder)
            items = await store.items(job.job_id)
            rows = [await store.get_job(job.job_id), *items, *await store.attempts(job.job_id),
                    *[await store.result(job.job_id, item.item_id) for item in items]]
            self.stored = "\n".join(map(repr, rows)).encode()
        return snapshot


def files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def leaks(keys: list[str], blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    return [(name, key) for name, blob in blobs.items() for key in keys if key.encode() in blob]


def test_the_search_finds_a_planted_key(tmp_path):
    key = f"sk-loomsecret-{secrets.token_hex(8)}"
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "x.db-wal").write_bytes(b"\x00\x01" + key.encode() + b"\xff")
    assert leaks([key], files(tmp_path)) == [(str(tmp_path / "deep" / "er" / "x.db-wal"), key)]


def test_no_key_appears_in_anything_written(loom, fake_provider, monkeypatch, capfd, caplog):
    caplog.set_level(logging.DEBUG)  # httpx, httpcore and storyloom's own debug lines included
    keys = {kind: f"sk-loomsecret-{kind}-{secrets.token_hex(12)}" for kind in KINDS}
    for kind, key in keys.items():
        fake_provider.keys[kind] = key
        monkeypatch.setenv(fake_provider.key_env(kind), key)
    wrong = f"sk-loomsecret-wrong-{secrets.token_hex(12)}"
    monkeypatch.setenv("LOOM_TEST_WRONG_KEY", wrong)
    fake_provider.configure("oa", error_rate=0.2, seed=3)
    fake_provider.configure("an-refused", auth_fail=True)  # echoes the (right) anthropic key back
    fake_provider.configure("ge", error_rate=0.2, seed=4)
    fake_provider.configure("ge-short", output_tokens=500)  # truncated, then retried with more room

    def model(name: str, kind: str, env: str | None = None) -> str:
        return (f"  {name}: {{provider: {kind}, model: {name}, base_url: '{fake_provider.base_url(kind)}', "
                f"api_key_env: {env or fake_provider.key_env(kind)}, price: {{input: 1, output: 2}}}}\n")

    loom.write("storyloom.yaml", "models:\n" + model("oa", "openai") + model("an", "anthropic")
               + model("an-refused", "anthropic") + model("ge", "gemini") + model("ge-short", "gemini")
               + model("oa-wrong", "openai", "LOOM_TEST_WRONG_KEY")
               + "retry_config: {max_retries: 4, retry_delay: {initial: 0.01s, max: 0.05s}}\n"
               + "progress: [plain, spy]\nreports: [spy-report]\n")
    loom.write("requests.jsonl", "".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"max_tokens": 300, "messages": [{"role": "system", "content": "Write one line."},
                                                 {"role": "user", "content": f"Line {i}, ฝนตก"}]}}) + "\n"
        for i in range(24)))
    spy = Spy(loom.path)
    result = loom.run("""
        job_id: secrets
        job_type: prompts
        input: requests.jsonl
        models: [oa, an, an-refused, ge, ge-short, oa-wrong]
        config: {max_parallel: 6, model_rotation: true}
    """, plugins=(spy,), quiet=False)
    result.assert_outcomes(completed=24)

    # The error paths ran: both refused models were taken out with their errors stored.
    assert fake_provider.stats("an-refused").auth_failures >= 1
    assert fake_provider.stats("oa-wrong").auth_failures >= 1
    assert fake_provider.stats("oa").errors + fake_provider.stats("ge").errors >= 1
    written = files(loom.path)
    assert any(b"[redacted]" in blob for blob in written.values())  # the echoed keys were there to leak
    assert spy.events.exists() and spy.snapshot
    assert (loom.out_dir / "secrets" / "report.json").exists() and (loom.out_dir / "secrets" / "results.jsonl").exists()
    assert b"[redacted]" in spy.stored  # the store kept the (redacted) echoed errors
    assert any(name.endswith("storyloom.db-wal") for name in spy.snapshot)  # the default sqlite store's files

    out, err = capfd.readouterr()
    everything = {**spy.snapshot, **written, "<store>": spy.stored, "<stdout>": out.encode(),
                  "<stderr>": err.encode(),
                  "<logs>": "\n".join(r.getMessage() for r in caplog.records).encode()}
    assert "escalate" in err  # the plain sink printed the models taken out
    # Debug logging was on, the HTTP stack's too (the providers' transport; httpcore behind a proxy).
    assert any(r.name.startswith(("httpcore", "storyloom.providers.transport")) and r.levelno == logging.DEBUG
               for r in caplog.records)
    assert leaks([*keys.values(), wrong], everything) == []

