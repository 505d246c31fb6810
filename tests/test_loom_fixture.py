"""The loom fixture's options: installed plugins, fresh folders under @given,
a store URL (a real PostgreSQL), and trio's MockClock (no real waiting)."""

from __future__ import annotations

import os
import sys
import time

import pytest
from fakedist import install_plugin
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from storyloom import ConfigError
from storyloom.testing import fresh_loom

PLUGIN = '''
import storyloom
from storyloom.routing import Choice

class Last:
    def choose(self, item, ctx):
        return Choice(sorted(ctx.usable)[-1], {"strategy": "last"})

@storyloom.hookimpl
def loom_register_strategies(register):
    register("kit-last", lambda options, plan: Last())
'''

TWO_MODELS = """
    models:
      a: {provider: simulated, latency_ms: 0}
      b: {provider: simulated, latency_ms: 0}
"""
ROUTED = """
    job_id: routed
    job_type: qc_processing
    models: [a, b]
    routing: {strategy: kit-last}
    items: [{item_id: one}, {item_id: two}]
"""


@pytest.fixture
def installed_plugin(tmp_path_factory, monkeypatch):
    """A distribution on sys.path that declares an entry point in group ``storyloom``."""
    site = tmp_path_factory.mktemp("site")
    install_plugin(site, monkeypatch, "loom_kit_last", PLUGIN, "kit-last")
    yield site
    sys.modules.pop("loom_kit_last", None)


def test_autoload_runs_with_the_installed_plugins(loom, installed_plugin):
    loom.write("storyloom.yaml", TWO_MODELS)
    with pytest.raises(ConfigError, match="kit-last"):  # the default: bundled plugins only
        loom.validate(ROUTED)
    loom.autoload = True
    result = loom.run(ROUTED)
    result.assert_outcomes(completed=2)
    assert {row.last_model for row in result.items.values()} == {"b"}


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 4))
def test_each_example_gets_a_fresh_folder(loom_factory, n):
    with loom_factory() as loom:
        assert loom.stored_jobs() == []
        loom.write("storyloom.yaml", "models: {sim: {provider: simulated, latency_ms: 0}}\n")
        items = "".join(f"  - {{item_id: i{i}}}\n" for i in range(n))
        result = loom.run(f"job_id: same\njob_type: qc_processing\nitems:\n{items}")  # the same id every time
        result.assert_outcomes(completed=n)
        assert loom.stored_jobs() == ["same"]


def test_fresh_loom_puts_the_working_folder_and_environment_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORYLOOM_STORE", "sqlite:///elsewhere")
    with fresh_loom(tmp_path) as loom:
        assert loom.path.parent == tmp_path and loom.path.samefile(".")
        assert "STORYLOOM_STORE" not in os.environ
    assert tmp_path.samefile(".")
    assert os.environ["STORYLOOM_STORE"] == "sqlite:///elsewhere"


def test_a_store_url_runs_the_test_on_postgresql(loom, pg_url):
    loom.store_url = pg_url
    result = loom.run("job_id: on-pg\njob_type: qc_processing\nitems: [{item_id: x}]\n")
    result.assert_outcomes(completed=1)
    assert loom.stored_jobs() == ["on-pg"]
    assert not (loom.state_dir / "storyloom.db").exists()


def test_fresh_looms_on_one_postgresql_store_start_alike(loom_factory, pg_url):
    for _ in range(2):
        with loom_factory(store_url=pg_url) as loom:
            loom.run("job_id: again\njob_type: qc_processing\nitems: [{item_id: x}]\n").assert_outcomes(completed=1)
    with loom_factory(store_url=pg_url) as loom:
        assert loom.stored_jobs() == []  # each one deleted the job it stored


def test_mock_clock_runs_latency_retries_and_rate_limits_without_waiting(loom):
    loom.clock = trio.testing.MockClock(autojump_threshold=0)
    loom.write("storyloom.yaml", """
        models:
          slow: {provider: simulated, latency_ms: 1000, output_tokens: 20, seed: 3, rpm: 60,
                 errors: {TEMPORARY_ERROR: 0.3, API_RATE_LIMIT: 0.2}, retry_after: 2}
        default_models: [slow]
        retry_config: {max_retries: 6, retry_delay: {initial: 2s, max: 8s}}
        failure_policy: {pause_above: 1}
    """)
    items = "".join(f"  - {{item_id: i{i}}}\n" for i in range(12))
    started = time.perf_counter()
    result = loom.run(f"job_id: slow\njob_type: qc_processing\nconfig: {{max_parallel: 3}}\nitems:\n{items}")
    real = time.perf_counter() - started
    result.assert_outcomes(completed=12)
    attempts = loom.read(lambda store: store.attempts("slow"))
    assert len(attempts) > 12  # some were retried, after their delays
    simulated = result.summary.finished_at - result.summary.started_at
    # More than 12 requests at 60 a minute, each a one-second reply, plus the
    # retries' delays: over 12 s on the run's clock (about 24 s with this seed)...
    assert simulated >= 12, simulated
    # ...none of it waited for: far less real time than simulated (not a speed target: a real clock would take it all).
    assert real < simulated / 3, (real, simulated)


def test_wall_time_follows_a_mock_clock_and_is_real_time_otherwise():
    from storyloom.clock import wall

    async def jumps() -> tuple[float, float]:
        before = wall()
        await trio.sleep(3600)  # an hour, jumped over at once
        return before, wall()

    async def real() -> float:
        return wall()

    start = time.time()
    assert start <= wall() <= time.time()  # outside trio
    before, after = trio.run(jumps, clock=trio.testing.MockClock(autojump_threshold=0))
    assert start - 1 <= before <= time.time() and after - before == pytest.approx(3600, abs=1e-6)
    assert start <= trio.run(real) <= time.time()  # trio's own clock: real time
