"""Rate limits end to end: jobs through the kernel against the fake provider,
which enforces RPM and TPM per model over real HTTP (one second's bucket,
like the providers), and a model whose 429s cool it down alone."""

from __future__ import annotations

import json
import time

import pytest

from storyloom import hookimpl

LATENCY = 0.05


def settings(fake, models: dict[str, str], extra: str = "") -> str:
    """``models``: name -> extra keys for the entry (``"rpm: 1200"``)."""
    lines = "".join(
        f"  {name}: {{provider: openai, model: {name}, base_url: '{fake.base_url('openai')}', "
        f"api_key_env: {fake.key_env('openai')}{', ' + keys if keys else ''}}}\n" for name, keys in models.items())
    return (f"models:\n{lines}default_models: [{', '.join(models)}]\nprogress: []\nreports: []\n"
            "retry_config: {max_retries: 3, retry_delay: {initial: 0.05s, max: 0.2s}}\n" + extra)


def requests_file(loom, n: int, text: str = "Line {i}: fix the grammar.", max_tokens: int = 32) -> None:
    loom.write("requests.jsonl", "".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"max_tokens": max_tokens, "messages": [{"role": "user", "content": text.format(i=i)}]}},
        ensure_ascii=False) + "\n" for i in range(n)))


def run(loom, job_id: str, parallel: int = 16, plugins: tuple = ()):
    start = time.monotonic()
    result = loom.run(f"job_id: {job_id}\njob_type: prompts\ninput: requests.jsonl\n"
                      f"config: {{max_parallel: {parallel}}}\n", plugins=plugins)
    return result, time.monotonic() - start


@pytest.mark.slow
def test_a_job_stays_under_the_rpm_with_no_429s(loom, fake_provider):
    # 1,200 RPM is 20 a second in a bucket of 20: 60 requests need at least (60 - 20) / 20 = 2 s.
    fake_provider.configure("m1", rpm=1200, latency=LATENCY)
    requests_file(loom, 60)
    loom.write("storyloom.yaml", settings(fake_provider, {"m1": "rpm: 1200"}))
    result, elapsed = run(loom, "rpm")
    result.assert_outcomes(completed=60)
    stats = fake_provider.stats("m1")
    # A request overtaking the first burst's handshakes, or a few sent late and
    # bunched when a loaded CI machine stalls the client for more than the 0.1 s
    # headroom (seen: 4 under a full suite at load 2-3). No limiter draws about 40.
    assert stats.rate_limited <= 5
    assert stats.ok == 60
    assert elapsed >= 2.0  # the limit was kept by storyloom, not by luck
    admitted = stats.admitted_at
    for i, t in enumerate(admitted):  # any second holds at most a bucket and a second's refill
        assert sum(1 for u in admitted[i:] if u < t + 1.0) <= 40

    # Without the rpm in the settings the same job is refused again and again.
    fake_provider.reset_stats()
    fake_provider.configure("m1", rpm=1200, latency=LATENCY)  # a full bucket again
    loom.write("storyloom.yaml", settings(fake_provider, {"m1": ""}))
    blind, _ = run(loom, "rpm-blind", parallel=60)
    blind.assert_outcomes(completed=60)
    assert fake_provider.stats("m1").rate_limited >= 20


@pytest.mark.slow
def test_thai_prompts_stay_under_the_tpm(loom, fake_provider):
    # Each request costs about 100 tokens (a Thai prompt is ~1 token a character)
    # plus max_tokens 32, of which the fake replies with 20: OpenAI keeps the
    # unused 12 counted, and so must storyloom.
    fake_provider.configure("m1", tpm=60_000, latency=LATENCY)
    thai = "บรรทัดที่ {i}: ฝนตกทั้งคืนจนถึงเช้าและลมพัดแรงมากจนต้นไม้ล้มหลายต้นในหมู่บ้านริมแม่น้ำ"
    requests_file(loom, 40, text=thai)
    loom.write("storyloom.yaml", settings(fake_provider, {"m1": "tpm: 60000"}))
    result, elapsed = run(loom, "tpm")
    result.assert_outcomes(completed=40)
    stats = fake_provider.stats("m1")
    assert stats.rate_limited <= 1
    assert stats.completion_tokens == 40 * 20
    assert elapsed >= 2.0  # 40 x ~130 tokens at 1,000 a second, less the first second's bucket


class Finished:
    """When each item's attempts finished, by model (monotonic clock)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.times: list[tuple[str, str, str, float]] = []

    @hookimpl
    def loom_item_finished(self, item, outcome):
        self.times.append((item.item_id, outcome.model, outcome.state, time.monotonic() - self.start))


def test_a_rate_limited_model_cools_down_alone(loom, fake_provider):
    # "slow" allows 30 requests a minute: one in its bucket, then one every 2 s,
    # and the settings do not say so: it learns from its 429s. "fast" has no limit.
    fake_provider.configure("slow", rpm=30, latency=LATENCY)
    fake_provider.configure("fast", latency=LATENCY)
    requests_file(loom, 40)
    loom.write("storyloom.yaml", settings(fake_provider, {"slow": "", "fast": ""},
                                          "routing: {strategy: round_robin}\n"))
    finished = Finished()
    result, elapsed = run(loom, "cool", parallel=4, plugins=(finished,))
    result.assert_outcomes(completed=40)

    slow, fast = fake_provider.stats("slow"), fake_provider.stats("fast")
    assert slow.rate_limited >= 1  # slow did refuse, and cooled down
    assert slow.ok <= 3  # ... and was left alone while it cooled (about 2 s)
    assert fast.rate_limited == 0 and fast.ok >= 37
    # fast kept its own pace while slow cooled down: four at a time, 50 ms each,
    # it finishes some 80 a second. Held by slow's 2 s cool-down, it would finish
    # only the few it already had in flight in the 1.5 s after slow's first 429.
    first_429 = min(t for (_item, model, state, t) in finished.times if model == "slow" and state == "retrying")
    during = [t for (_item, model, state, t) in finished.times
              if model == "fast" and state == "completed" and first_429 <= t < first_429 + 1.5]
    assert len(during) >= 20


def test_the_limiter_refunds_unused_tokens_only_for_providers_that_do(tmp_path, monkeypatch):
    from storyloom.config import Options, make_config
    from storyloom.kernel import Worker

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")  # planning a job checks its models' keys are set
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")

    (tmp_path / "storyloom.yaml").write_text(
        "models:\n  claude: {provider: anthropic, tpm: 1000}\n  gpt: {provider: openai, tpm: 1000}\n")
    (tmp_path / "job.yaml").write_text(
        "job_id: r\njob_type: qc_processing\nmodels: [claude, gpt]\nitems:\n  - {item_id: a}\n")
    with make_config(Options(autoload=False), job_file=tmp_path / "job.yaml") as config:
        worker = Worker(config, only=config.plan(config.load_job(tmp_path / "job.yaml")))
        assert worker.pool["claude"].limiter.refund_unused is True
        assert worker.pool["gpt"].limiter.refund_unused is False
