"""A request leaves only once its start is recorded, and one that went out
with no usage back counts its worst case: the spend accounting of one
attempt, end to end against the fake HTTP provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from storyloom import hookimpl
from storyloom.routing import Choice


def settings(fake, extra: str = "") -> str:
    return (f"models:\n  m1: {{provider: openai, model: m1, base_url: '{fake.base_url('openai')}', "
            f"api_key_env: {fake.key_env('openai')}, price: {{input: 100.0, output: 400.0}}{extra}}}\n"
            "default_models: [m1]\nprogress: []\nreports: []\n")


def requests_file(loom, n: int) -> None:
    loom.write("requests.jsonl", "".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"max_tokens": 200, "messages": [{"role": "user", "content": f"Line {i}"}]}}) + "\n"
        for i in range(n)))


class CancelOnRoute:
    """Routes to the first model, but first cancels the job from another
    process, as an operator running ``storyloom cancel`` would."""

    def __init__(self, loom) -> None:
        self.loom = loom

    def choose(self, item, ctx):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
        done = subprocess.run([sys.executable, "-m", "storyloom.cli", "cancel", "sa1", "--state-dir",
                               str(self.loom.state_dir)], cwd=self.loom.path, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return Choice(ctx.usable[0], {"strategy": "cancel_on_route"})


@pytest.mark.slow
def test_no_request_is_sent_for_an_item_cancelled_before_its_start_is_recorded(loom, fake_provider):
    # The worker must not notice the cancel by polling first: only the store's refusal of the start is tested.
    loom.write("storyloom.yaml", settings(fake_provider) + "queue: {poll: 1h}\n")
    requests_file(loom, 1)

    class Strategy:
        @hookimpl
        def loom_register_strategies(self, register):
            register("cancel_on_route", lambda options, plan: CancelOnRoute(loom))

    result = loom.run("job_id: sa1\njob_type: prompts\ninput: requests.jsonl\n"
                      "routing: {strategy: cancel_on_route}\n", plugins=(Strategy(),))
    assert fake_provider.stats("m1").requests == 0  # nothing billed that no row records
    assert result.counts["skipped"] == 1
    costs = loom.read(lambda store: store.costs("sa1"))
    assert (costs.attempts, costs.unknown_attempts) == (0, 0)


def run_one(loom, fake, job_id: str, **options):
    opts = "".join(f", {k}: {v}" for k, v in options.items())
    loom.write("storyloom.yaml", settings(fake, opts))
    requests_file(loom, 1)
    result = loom.run(f"job_id: {job_id}\njob_type: prompts\ninput: requests.jsonl\n"
                      "config: {max_retries: 0, timeout_per_item: 10m}\n")
    return result, loom.read(lambda store: store.costs(job_id))


def test_a_provider_read_timeout_counts_the_worst_case(loom, fake_provider):
    # The provider's own read timeout fires long before timeout_per_item: sent, no usage back.
    fake_provider.configure("m1", hang_rate=1.0, hang_seconds=5)
    result, costs = run_one(loom, fake_provider, "rt", read_timeout=0.3)
    result.assert_outcomes(failed=1)
    [item] = result.items.values()
    assert item.error_kind == "TIMEOUT"
    assert (costs.attempts, costs.cost_usd, costs.unknown_attempts) == (1, 0.0, 1)
    assert 200 * 400 / 1e6 < costs.unknown_usd < 0.1  # its 200 max_tokens at $400/M, and its prompt


def test_a_refused_connection_is_not_counted_as_unknown(loom, fake_provider):
    fake_provider.close()  # nothing listens: the request never left
    result, costs = run_one(loom, fake_provider, "dc")
    result.assert_outcomes(failed=1)
    [item] = result.items.values()
    assert item.error_kind == "TEMPORARY_ERROR"
    assert (costs.attempts, costs.unknown_attempts) == (1, 0)


def test_a_rejected_request_is_not_counted_as_unknown(loom, fake_provider):
    fake_provider.configure("m1", auth_fail=True)  # HTTP 401: refused, surely not billed
    result, costs = run_one(loom, fake_provider, "rj")
    result.assert_outcomes(failed=1)
    # The 401 takes the model out, then the item fails with no model left: two attempts, one sent.
    assert (costs.attempts, costs.cost_usd, costs.unknown_attempts, costs.unknown_usd) == (2, 0.0, 0, 0.0)
