"""Routing strategies: unit tests per strategy, property tests, and jobs run
end to end with the simulated provider."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import trio
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import storyloom
from sample_plugins import scripted
from storyloom import UsageError, hookimpl
from storyloom.job import Item, Job, Plan
from storyloom.plugins import routing
from storyloom.plugins.stores.sqlite import DB_NAME
from storyloom.plugins.routing import SEED_GENRE_TABLE, Cheapest, Genre, LeastLoaded, RoundRobin
from storyloom.provider import BaseProvider, Response
from storyloom.registry import Registries
from storyloom.pool import ModelState
from storyloom.ratelimit import RateLimiter
from storyloom.routing import RouteContext
from storyloom.settings import ModelSpec, Price, RetryConfig

DOCS = Path(__file__).resolve().parent.parent / "docs" / "routing.md"
MODELS = ("gemini", "gpt-4o", "claude-haiku")


def plan(models=MODELS, max_parallel: int = 4) -> Plan:
    job = Job(job_id="j", job_type="qc_processing", items=())
    return Plan(job=job, max_parallel=max_parallel, timeout_per_item=60, max_retries=3, retry=RetryConfig(),
                models=tuple(models), routing={})


def item(item_id: str = "i", genre: str | None = None, project_id: str | None = None) -> Item:
    return Item(item_id=item_id, project_id=project_id, fields={"genre": genre} if genre is not None else {})


def bundled_strategies() -> dict:
    found = Registries().strategies
    routing.loom_register_strategies(lambda name, factory: found.__setitem__(name, factory))
    return found


# -- round_robin --------------------------------------------------------------


def test_round_robin_is_i_mod_n_while_every_model_is_usable():
    rr = RoundRobin({}, plan())
    ctx = RouteContext(usable=MODELS)
    chosen = [rr.choose(item(f"i{i}"), ctx).model for i in range(7)]
    assert chosen == [MODELS[i % 3] for i in range(7)]


def test_round_robin_counts_retries():
    rr = RoundRobin({}, plan())
    first = rr.choose(item("a"), RouteContext(usable=MODELS)).model
    retry = rr.choose(item("a"), RouteContext(usable=MODELS, attempt=1, previous_model=first)).model
    following = rr.choose(item("b"), RouteContext(usable=MODELS)).model
    assert (first, retry, following) == ("gemini", "gpt-4o", "claude-haiku")


def test_round_robin_evens_out_when_a_model_comes_back():
    rr = RoundRobin({}, plan())
    for _ in range(4):
        rr.choose(item(), RouteContext(usable=("gemini", "gpt-4o")))
    back = [rr.choose(item(), RouteContext(usable=MODELS)).model for _ in range(2)]
    assert back == ["claude-haiku", "claude-haiku"]
    assert rr.counts == {"gemini": 2, "gpt-4o": 2, "claude-haiku": 2}


# -- genre ----------------------------------------------------------------------


def seed_genre(**extra) -> Genre:
    return Genre({"table": dict(SEED_GENRE_TABLE), "default": "gemini", **extra}, plan())


@pytest.mark.parametrize("genre, model", sorted(SEED_GENRE_TABLE.items()))
def test_genre_follows_the_seed_table(genre, model):
    choice = seed_genre().choose(item(genre=genre), RouteContext(usable=MODELS))
    assert choice.model == model
    assert choice.reason == {"strategy": "genre", "genre": genre, "from": "item", "table": model}


def test_genre_matches_ignoring_case_and_spaces():
    assert seed_genre().choose(item(genre=" Fantasy "), RouteContext(usable=MODELS)).model == "gpt-4o"


def test_genre_comes_from_the_project_when_the_item_has_none():
    strategy = seed_genre(projects={"rain": "horror", "sun": "fantasy"})
    choice = strategy.choose(item(project_id="rain"), RouteContext(usable=MODELS))
    assert choice.model == "claude-haiku"
    assert choice.reason["from"] == "project" and choice.reason["genre"] == "horror"
    # The item's own genre wins over its project's.
    assert strategy.choose(item(genre="fantasy", project_id="rain"), RouteContext(usable=MODELS)).model == "gpt-4o"


def test_genre_falls_back_to_the_default_and_says_why():
    strategy = seed_genre()
    unusable = strategy.choose(item(genre="fantasy"), RouteContext(usable=("gemini", "claude-haiku")))
    assert unusable.model == "gemini"
    assert unusable.reason == {"strategy": "genre", "genre": "fantasy", "from": "item", "table": "gpt-4o",
                               "fallback": "default", "why": "gpt-4o not usable"}
    unknown = strategy.choose(item(genre="western"), RouteContext(usable=MODELS))
    assert (unknown.model, unknown.reason["why"]) == ("gemini", "genre not in table")
    none = strategy.choose(item(), RouteContext(usable=MODELS))
    assert (none.model, none.reason["why"], none.reason["genre"]) == ("gemini", "no genre", None)


def test_genre_falls_back_to_the_first_usable_when_the_default_is_not_usable():
    choice = seed_genre().choose(item(genre="fantasy"), RouteContext(usable=("claude-haiku",)))
    assert choice.model == "claude-haiku"
    assert choice.reason["fallback"] == "first usable"
    assert choice.reason["why"] == "gpt-4o not usable; default gemini not usable"


def test_genre_without_a_default_uses_the_first_usable():
    strategy = Genre({"table": {"fantasy": "gpt-4o"}}, plan())
    choice = strategy.choose(item(genre="horror"), RouteContext(usable=("claude-haiku", "gemini")))
    assert (choice.model, choice.reason["fallback"]) == ("claude-haiku", "first usable")


@pytest.mark.parametrize("options, message", [
    ({"table": {"fantasy": "gpt-5"}}, "'gpt-5' is not one of the job's models (gemini, gpt-4o, claude-haiku)"),
    ({"table": {"fantasy": "gpt-4o"}, "default": "llama"}, "default: 'llama' is not one of the job's models"),
    ({}, "genre routing needs a table"),
    ({"table": ["fantasy", "gpt-4o"]}, "'table' must be a mapping"),
    ({"table": {"fantasy": 4}}, "the value for 'fantasy' must be a name"),
    ({"table": {"Fantasy": "gpt-4o", "fantasy": "gemini"}}, "maps 'fantasy' to both 'gpt-4o' and 'gemini'"),
    ({"table": {"fantasy": "gpt-4o"}, "projects": {"rain": ["horror"]}}, "'projects': the value for 'rain'"),
])
def test_genre_rejects_bad_options_when_built(options, message):
    with pytest.raises(UsageError) as info:
        Genre(options, plan())
    assert message in str(info.value)


def test_genre_reads_project_ids_that_yaml_made_numbers():
    strategy = Genre({"table": {"horror": "claude-haiku"}, "projects": {456: "horror"}}, plan())
    assert strategy.choose(item(project_id="456"), RouteContext(usable=MODELS)).model == "claude-haiku"


# -- least_loaded ---------------------------------------------------------------


def test_least_loaded_takes_the_lowest_load_relative_to_capacity():
    strategy = LeastLoaded({}, plan())
    ctx = RouteContext(usable=MODELS, in_flight={"gemini": 1, "gpt-4o": 2, "claude-haiku": 1},
                       capacity={"gemini": 1, "gpt-4o": 8, "claude-haiku": 2})
    choice = strategy.choose(item(), ctx)
    assert choice.model == "gpt-4o"
    assert choice.reason["loads"] == {"gemini": 1.0, "gpt-4o": 0.25, "claude-haiku": 0.5}
    assert choice.reason["capacity"] == {"gemini": 1, "gpt-4o": 8, "claude-haiku": 2}


def test_least_loaded_counts_reserved_attempts():
    strategy = LeastLoaded({}, plan())
    ctx = RouteContext(usable=("gemini", "gpt-4o"), in_flight={"gemini": 0, "gpt-4o": 1},
                       reserved={"gemini": 3}, capacity={"gemini": 4, "gpt-4o": 4})
    choice = strategy.choose(item(), ctx)
    assert choice.model == "gpt-4o"
    assert choice.reason["busy"] == {"gemini": 3, "gpt-4o": 1}


def test_least_loaded_uses_the_jobs_max_parallel_for_a_model_without_its_own():
    strategy = LeastLoaded({}, plan(max_parallel=10))
    ctx = RouteContext(usable=("gemini", "gpt-4o"), in_flight={"gemini": 3, "gpt-4o": 1},
                       capacity={"gemini": 0, "gpt-4o": 2})
    choice = strategy.choose(item(), ctx)
    assert choice.model == "gemini"  # 3/10 beats 1/2
    assert choice.reason["capacity"] == {"gemini": 10, "gpt-4o": 2}


def test_least_loaded_counts_a_rate_held_model_as_more_loaded():
    strategy = LeastLoaded({}, plan())
    ctx = RouteContext(usable=("gemini", "gpt-4o"), capacity={"gemini": 4, "gpt-4o": 4},
                       in_flight={"gemini": 1, "gpt-4o": 1}, rate_wait={"gemini": 0.5})
    choice = strategy.choose(item(), ctx)
    assert choice.model == "gpt-4o"
    assert choice.reason["rate_wait"] == {"gemini": 0.5}
    assert choice.reason["loads"] == {"gemini": 0.5, "gpt-4o": 0.25}


def test_least_loaded_prefers_a_free_slot_over_a_full_model_even_when_rate_held():
    strategy = LeastLoaded({}, plan())
    # gemini: 1 of 2 busy and held (load (1+1)/2 = 1); gpt-4o: 1 of 1 busy (load 1), no free slot.
    ctx = RouteContext(usable=("gpt-4o", "gemini"), capacity={"gemini": 2, "gpt-4o": 1},
                       in_flight={"gemini": 1, "gpt-4o": 1}, rate_wait={"gemini": 3.0})
    assert strategy.choose(item(), ctx).model == "gemini"


def test_least_loaded_prefers_the_sooner_free_among_equal_loads():
    strategy = LeastLoaded({}, plan())
    ctx = RouteContext(usable=MODELS, capacity=dict.fromkeys(MODELS, 2),
                       rate_wait={"gemini": 2.0, "gpt-4o": 0.5, "claude-haiku": 1.0})
    assert strategy.choose(item(), ctx).model == "gpt-4o"


def test_least_loaded_ties_rotate():
    strategy = LeastLoaded({}, plan())
    ctx = RouteContext(usable=MODELS, capacity=dict.fromkeys(MODELS, 2))
    chosen = [strategy.choose(item(), ctx) for _ in range(6)]
    assert [c.model for c in chosen] == list(MODELS) * 2
    assert chosen[0].reason["tied"] == list(MODELS)


def test_least_loaded_never_reads_a_negative_counter_as_spare_room():
    strategy = LeastLoaded({}, plan())
    ctx = RouteContext(usable=("gemini", "gpt-4o"), in_flight={"gemini": -3, "gpt-4o": 0},
                       reserved={"gemini": -1}, capacity={"gemini": 2, "gpt-4o": 2})
    chosen = [strategy.choose(item(), ctx) for _ in range(4)]
    assert [c.model for c in chosen] == ["gemini", "gpt-4o"] * 2  # a tie, not a magnet
    assert chosen[0].reason["busy"] == {"gemini": 0, "gpt-4o": 0}


# -- least_loaded by drain time ---------------------------------------------------


def limited(rpm=None, tpm=None, now=(0.0,), reserved=0, reserved_tokens=0, sent=0, in_flight=0):
    """A model's state as the kernel keeps it, on a clock stopped at ``now[0]``:
    ``sent`` requests already through its limiter, ``reserved`` routed and not sent."""
    state = ModelState(ModelSpec(name="m", provider="x", model="m", rpm=rpm, tpm=tpm),
                       RateLimiter(rpm, tpm, clock=lambda: now[0]))
    for _ in range(sent):
        state.limiter._take(0)
    state.reserved, state.reserved_tokens, state.in_flight = reserved, reserved_tokens, in_flight
    return state


def kernel_context(states: dict, tokens: int = 0, **fields) -> RouteContext:
    """The drain-time inputs as the kernel computes them from each model's state."""
    return RouteContext(usable=tuple(states), in_flight={m: s.in_flight for m, s in states.items()},
                        reserved={m: s.reserved for m, s in states.items()},
                        rate_wait={m: s.limiter.wait_time(tokens) for m, s in states.items()},
                        queue_wait={m: s.queue_wait(tokens) for m, s in states.items()},
                        rate={m: s.limiter.requests_per_second(tokens) for m, s in states.items()}, **fields)


def test_least_loaded_sends_to_the_model_that_drains_first_not_the_shortest_queue():
    # The three models, each bucket just emptied: a queue of 12 on the
    # 2,400 RPM model drains sooner than a queue of 4 on the 600 RPM one.
    states = {"slow": limited(rpm=600, sent=10, reserved=4),
              "mid": limited(rpm=1200, sent=20, reserved=7),
              "fast": limited(rpm=2400, sent=40, reserved=12)}
    choice = LeastLoaded({}, plan(tuple(states), max_parallel=64)).choose(item(), kernel_context(states))
    assert choice.model == "fast"
    # slow: its bucket is due full again at 1.0 s, 4 ahead take 0.4 s more, 0.9 s of burst
    # (a bucket less the 0.1 s headroom) comes off: it could send at 0.6 s, plus its own 0.1 s.
    assert choice.reason["drain"] == pytest.approx({"slow": 0.7, "mid": 0.55, "fast": 0.45})
    assert choice.reason["busy"] == {"slow": 4, "mid": 7, "fast": 12}


def test_least_loaded_takes_the_binding_budget_tokens_when_tpm_binds():
    # Same RPM; "big" lets 6,000 tokens a minute through (one of these requests
    # every 30 s), "wide" 600,000: TPM decides although both queues are empty.
    states = {"big": limited(rpm=600, tpm=6_000), "wide": limited(rpm=600, tpm=600_000)}
    ctx = kernel_context(states, tokens=3000)
    assert ctx.rate["big"] == pytest.approx(6000 / 60 / 3000)
    choice = LeastLoaded({}, plan(tuple(states))).choose(item(), ctx)
    assert choice.model == "wide"
    assert choice.reason["drain"] == pytest.approx({"big": 30.0, "wide": 0.3})


def test_least_loaded_counts_replies_due_as_the_models_reply_time():
    # Equal rates and full buckets: the model with fewer replies due drains first.
    states = {"a": limited(rpm=1200, in_flight=6), "b": limited(rpm=1200, in_flight=2)}
    choice = LeastLoaded({}, plan(("a", "b"), max_parallel=64)).choose(item(), kernel_context(states))
    assert choice.model == "b"
    assert choice.reason["drain"] == pytest.approx({"a": 0.35, "b": 0.15})


def test_least_loaded_routes_round_a_cool_down_like_any_other_wait():
    states = {"cooling": limited(rpm=2400), "steady": limited(rpm=600, reserved=5)}
    states["cooling"].limiter.cool_down(1.0)
    choice = LeastLoaded({}, plan(("cooling", "steady"), max_parallel=64)).choose(item(), kernel_context(states))
    assert choice.model == "steady"  # five ahead still fit its bucket: 0.1 s beats 1.025 s
    assert choice.reason["rate_wait"] == {"cooling": 1.0}


def test_least_loaded_still_puts_a_free_slot_first():
    states = {"full": limited(rpm=6000, in_flight=1), "room": limited(rpm=60, reserved=1)}
    choice = LeastLoaded({}, plan(("full", "room"))).choose(
        item(), kernel_context(states, capacity={"full": 1, "room": 4}))
    assert choice.model == "room"  # drains in 2 s against 0.02 s, but "full" has no slot
    assert choice.reason["drain"] == pytest.approx({"full": 0.02, "room": 2.0})


def test_least_loaded_moves_a_waiting_attempt_only_to_a_model_draining_sooner_with_room():
    strategy = LeastLoaded({}, plan(("slow", "fast")))
    states = {"slow": limited(rpm=60, reserved=3), "fast": limited(rpm=600, reserved=30)}
    ctx = kernel_context(states, capacity={"slow": 40, "fast": 40})
    # fast: 30 ahead take 3 s, less 0.8 s of burst, plus its own 0.1 s: 2.3 s.
    moved = strategy.reconsider(item(), ctx, "slow", 2.0)  # slow: 2 s more, plus its own 1 s
    assert moved.model == "fast"
    assert moved.reason["moved"] == "slow"
    assert moved.reason["drain"] == pytest.approx({"slow": 3.0, "fast": 2.3})
    assert strategy.reconsider(item(), ctx, "slow", 1.28) is None  # 2.28 s: not sooner by the margin
    full = kernel_context(states, capacity={"slow": 40, "fast": 30})
    assert strategy.reconsider(item(), full, "slow", 10.0) is None  # no slot free on fast


@settings(max_examples=300, deadline=None)
@given(ctx=st.builds(
    RouteContext,
    usable=st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
    in_flight=st.dictionaries(st.sampled_from(MODELS), st.integers(-2, 40)),
    capacity=st.dictionaries(st.sampled_from(MODELS), st.integers(0, 64)),
    reserved=st.dictionaries(st.sampled_from(MODELS), st.integers(-2, 40)),
    rate_wait=st.dictionaries(st.sampled_from(MODELS), st.floats(0, 60)),
    queue_wait=st.dictionaries(st.sampled_from(MODELS), st.floats(0, 60)),
    rate=st.dictionaries(st.sampled_from(MODELS), st.floats(0.01, 1000) | st.just(float("inf"))),
))
def test_least_loaded_chooses_a_model_of_least_drain_time(ctx):
    """Among the models with a free slot (or all, if none has one), the
    choice drains no later than any other: drain = wait + (replies due + 1) / rate."""
    strategy = LeastLoaded({}, plan(max_parallel=16))

    def drain(m):
        wait = ctx.queue_wait.get(m, ctx.rate_wait.get(m, 0.0))
        rate = ctx.rate.get(m, float("inf"))
        return wait if rate == float("inf") else wait + (max(0, ctx.in_flight.get(m, 0)) + 1) / rate

    def has_room(m):
        busy = max(0, ctx.in_flight.get(m, 0)) + max(0, ctx.reserved.get(m, 0))
        return busy < (ctx.capacity.get(m, 0) or 16)

    choice = strategy.choose(item(), ctx)
    rivals = [m for m in ctx.usable if has_room(m)] or list(ctx.usable)
    assert choice.model in rivals
    assert drain(choice.model) == pytest.approx(min(drain(m) for m in rivals), rel=1e-9, abs=1e-12)
    json.dumps(choice.reason, allow_nan=False)


# -- cheapest -------------------------------------------------------------------

SEED_PRICES = {"gemini": Price(0.10, 0.40), "gpt-4o": Price(2.5, 10.0), "claude-haiku": Price(1.0, 5.0)}


def priced(usable=MODELS, prompt: int = 1000, output: int = 500, prices=None) -> RouteContext:
    return RouteContext(usable=usable, prices=prices or SEED_PRICES, prompt_tokens=dict.fromkeys(usable, prompt),
                        output_tokens=dict.fromkeys(usable, output))


def test_cheapest_takes_the_lowest_expected_cost_and_shows_the_costs():
    choice = Cheapest({}, plan()).choose(item(), priced())
    assert choice.model == "gemini"
    assert choice.reason == {"strategy": "cheapest",
                             "costs": {"gemini": 0.0003, "gpt-4o": 0.0075, "claude-haiku": 0.0035}}


def test_cheapest_only_among_the_usable():
    assert Cheapest({}, plan()).choose(item(), priced(usable=("gpt-4o", "claude-haiku"))).model == "claude-haiku"


def test_cheapest_weighs_prompt_and_reply_tokens():
    prices = {"gemini": Price(1.0, 20.0), "gpt-4o": Price(5.0, 2.0)}
    strategy = Cheapest({}, plan())
    long_prompt = priced(usable=("gemini", "gpt-4o"), prompt=10_000, output=100, prices=prices)
    long_reply = priced(usable=("gemini", "gpt-4o"), prompt=100, output=10_000, prices=prices)
    assert strategy.choose(item(), long_prompt).model == "gemini"
    assert strategy.choose(item(), long_reply).model == "gpt-4o"


def test_cheapest_output_tokens_option_overrides_the_kernels_expectation():
    prices = {"gemini": Price(1.0, 20.0), "gpt-4o": Price(5.0, 2.0)}
    ctx = priced(usable=("gemini", "gpt-4o"), prompt=1000, output=10, prices=prices)
    assert Cheapest({}, plan()).choose(item(), ctx).model == "gemini"
    assert Cheapest({"output_tokens": 4000}, plan()).choose(item(), ctx).model == "gpt-4o"


def test_cheapest_counts_a_model_without_a_price_as_free_and_rotates_ties():
    strategy = Cheapest({}, plan())
    ctx = priced(prices={"gpt-4o": Price(2.5, 10.0)})  # gemini and claude-haiku have no price
    assert [strategy.choose(item(), ctx).model for _ in range(4)] == ["gemini", "claude-haiku"] * 2


@pytest.mark.parametrize("bad", [0, -5, 2.5, "many", True])
def test_cheapest_rejects_a_bad_output_tokens_option(bad):
    with pytest.raises(UsageError, match="output_tokens must be a positive whole number"):
        Cheapest({"output_tokens": bad}, plan())


# -- properties -----------------------------------------------------------------

#: Options that build each bundled strategy; a new bundled strategy must be added here.
PROPERTY_OPTIONS = {
    "round_robin": {},
    "genre": {"table": dict(SEED_GENRE_TABLE), "default": "gpt-4o", "projects": {"p0": "horror"}},
    "least_loaded": {},
    "cheapest": {},
}

counts = st.dictionaries(st.sampled_from(MODELS), st.integers(-2, 12))
contexts = st.builds(
    RouteContext,
    usable=st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
    attempt=st.integers(0, 5),
    previous_model=st.none() | st.sampled_from(MODELS),
    in_flight=counts,
    capacity=st.dictionaries(st.sampled_from(MODELS), st.integers(0, 8)),
    reserved=counts,
    rate_wait=st.dictionaries(st.sampled_from(MODELS), st.floats(0, 60)),
    prices=st.dictionaries(st.sampled_from(MODELS), st.builds(Price, st.floats(0, 100), st.floats(0, 100))),
    prompt_tokens=st.dictionaries(st.sampled_from(MODELS), st.integers(0, 200_000)),
    output_tokens=st.dictionaries(st.sampled_from(MODELS), st.integers(0, 64_000)),
)
items = st.builds(item, item_id=st.text(min_size=1, max_size=5),
                  genre=st.none() | st.sampled_from([*SEED_GENRE_TABLE, "FANTASY", "western", ""]),
                  project_id=st.none() | st.sampled_from(["p0", "p1"]))


def test_every_bundled_strategy_is_property_tested():
    assert set(bundled_strategies()) == set(PROPERTY_OPTIONS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROPERTY_OPTIONS))
@settings(max_examples=150, deadline=None)
@given(calls=st.lists(st.tuples(items, contexts), min_size=1, max_size=20))
def test_no_strategy_returns_an_unusable_model(name, calls):
    strategy = bundled_strategies()[name](dict(PROPERTY_OPTIONS[name]), plan())
    for it, ctx in calls:
        choice = strategy.choose(it, ctx)
        assert choice.model in ctx.usable
        assert choice.reason["strategy"] == name
        json.dumps(choice.reason, allow_nan=False)  # stored with the attempt


@settings(max_examples=200, deadline=None)
@given(n_models=st.integers(1, 5), attempts=st.lists(st.integers(0, 3), max_size=60))
def test_round_robin_shares_differ_by_at_most_one(n_models, attempts):
    models = [f"m{i}" for i in range(n_models)]
    rr = RoundRobin({}, plan(models))
    shares = Counter({m: 0 for m in models})
    previous = None
    for i, attempt in enumerate(attempts):  # first attempts and retries alike
        previous = rr.choose(item(f"i{i}"), RouteContext(usable=models, attempt=attempt,
                                                         previous_model=previous)).model
        shares[previous] += 1
        assert max(shares.values()) - min(shares.values()) <= 1


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(data=st.data(), capacities=st.lists(st.integers(0, 4), min_size=1, max_size=4), max_parallel=st.integers(1, 6))
def test_least_loaded_never_queues_past_capacity_while_a_usable_model_has_room(data, capacities, max_parallel):
    """A scheduler loop: items arrive and finish at random; a model runs up
    to its capacity and queues the rest. Whenever an item is routed to a
    model with no free slot, no usable model had one."""
    models = [f"m{i}" for i in range(len(capacities))]
    cap = {m: c or max_parallel for m, c in zip(models, capacities)}
    strategy = LeastLoaded({}, plan(models, max_parallel))
    running = dict.fromkeys(models, 0)
    queued = dict.fromkeys(models, 0)
    for _ in range(data.draw(st.integers(1, 50), label="steps")):
        busy_models = [m for m in models if running[m]]
        if busy_models and data.draw(st.booleans(), label="finish one"):
            m = data.draw(st.sampled_from(busy_models), label="finishes")
            running[m] -= 1
            if queued[m]:
                queued[m] -= 1
                running[m] += 1
            continue
        usable = data.draw(st.lists(st.sampled_from(models), min_size=1, unique=True), label="usable")
        usable.sort(key=models.index)
        wait = data.draw(st.dictionaries(st.sampled_from(models), st.floats(0, 5)), label="rate wait")
        ctx = RouteContext(usable=usable, in_flight=running, reserved=queued,
                           capacity=dict(zip(models, capacities)), rate_wait=wait)
        chosen = strategy.choose(item(), ctx).model
        had_room = [m for m in usable if running[m] + queued[m] < cap[m]]
        if running[chosen] + queued[chosen] >= cap[chosen]:
            assert not had_room, f"{chosen} queued past its capacity while {had_room} had room"
        if running[chosen] < cap[chosen]:
            running[chosen] += 1
        else:
            queued[chosen] += 1


@settings(max_examples=200, deadline=None)
@given(rounds=st.integers(1, 5), usable=st.lists(st.sampled_from(MODELS), min_size=1, unique=True))
def test_least_loaded_ties_starve_no_model(rounds, usable):
    strategy = LeastLoaded({}, plan())
    ctx = RouteContext(usable=usable, capacity=dict.fromkeys(MODELS, 3))
    chosen = Counter(strategy.choose(item(), ctx).model for _ in range(rounds * len(usable)))
    assert chosen == Counter(dict.fromkeys(usable, rounds))


@settings(max_examples=300, deadline=None)
@given(ctx=contexts, option=st.none() | st.integers(1, 10_000))
def test_cheapest_picks_a_minimum_expected_cost(ctx, option):
    strategy = Cheapest({} if option is None else {"output_tokens": option}, plan())
    choice = strategy.choose(item(), ctx)

    def cost(m):
        price = ctx.prices.get(m, Price())
        output = option if option is not None else ctx.output_tokens.get(m, 0)
        return (ctx.prompt_tokens.get(m, 0) * price.input + output * price.output) / 1_000_000

    assert cost(choice.model) == pytest.approx(min(cost(m) for m in ctx.usable), rel=1e-12, abs=0)


# -- docs -----------------------------------------------------------------------


def test_docs_describe_every_bundled_strategy():
    text = DOCS.read_text(encoding="utf-8")
    for name in bundled_strategies():
        assert f"## `{name}`" in text, name


def test_docs_least_loaded_example_is_what_the_strategy_does():
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## `least_loaded`"):text.index("## `cheapest`")]
    examples = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S)]
    example = next(e for e in examples if "drain" in e and "models" in e)
    # "buckets just emptied": each model has sent a full bucket at time 0.
    states = {name: limited(rpm=m["rpm"], sent=m["rpm"] // 60, reserved=m["reserved"])
              for name, m in example["models"].items()}
    choice = LeastLoaded({}, plan(tuple(states), max_parallel=64)).choose(item(), kernel_context(states))
    assert choice.model == example["chosen"]
    assert choice.reason["drain"] == pytest.approx(example["drain"])


def test_docs_show_the_seed_genre_table():
    text = DOCS.read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    routings = [b["routing"] for b in blocks if isinstance(b, dict) and "routing" in b]
    tables = [r["table"] for r in routings if r.get("strategy") == "genre"]
    assert SEED_GENRE_TABLE in tables


# -- end to end -----------------------------------------------------------------

PRICED_MODELS = """\
models:
  gemini: {provider: simulated, latency_ms: 5, price: {input: 0.10, output: 0.40}}
  gpt-4o: {provider: simulated, latency_ms: 5, price: {input: 2.50, output: 10.00}}
  claude-haiku: {provider: simulated, latency_ms: 5, price: {input: 1.00, output: 5.00}}
default_models: [gemini, gpt-4o, claude-haiku]
"""


def routes(result) -> list[tuple[str, str, dict]]:
    """(item_id, model, route) of every attempt, in the order they finished."""
    return [(c["item"].item_id, c["outcome"].model, c["outcome"].route)
            for c in result.recorder.calls["loom_item_finished"]]


def test_genre_routing_end_to_end(loom):
    loom.write("storyloom.yaml", PRICED_MODELS)
    genres = ["fantasy", "romantic-comedy", "horror", "mystery", "bl-gl", "western"]
    items = "".join(f"  - {{item_id: g{i}, genre: {g}}}\n" for i, g in enumerate(genres))
    result = loom.run(
        "job_id: by-genre\njob_type: qc_processing\n"
        "routing:\n  strategy: genre\n  default: gemini\n  projects: {rain: horror}\n"
        f"  table: {json.dumps(SEED_GENRE_TABLE)}\n"
        f"items:\n{items}  - {{item_id: rain-1, project_id: rain}}\n"
    )
    result.assert_outcomes(completed=7)
    expected = {f"g{i}": SEED_GENRE_TABLE.get(g, "gemini") for i, g in enumerate(genres)} | {"rain-1": "claude-haiku"}
    assert {item_id: row.last_model for item_id, row in result.items.items()} == expected
    by_item = {item_id: route for item_id, _model, route in routes(result)}
    assert by_item["g0"]["strategy"] == "genre" and by_item["g0"]["table"] == "gpt-4o"
    assert by_item["g5"]["fallback"] == "default" and by_item["g5"]["why"] == "genre not in table"
    assert by_item["rain-1"]["from"] == "project"
    assert by_item["g0"]["usable"] == list(MODELS)  # the kernel adds what was usable


def test_a_genre_table_naming_a_model_the_job_does_not_use_is_a_usage_error(loom):
    loom.write("storyloom.yaml", PRICED_MODELS)
    with pytest.raises(UsageError, match="'claude-haiku' is not one of the job's models"):
        loom.run("job_id: narrow\njob_type: qc_processing\nmodels: [gemini, gpt-4o]\n"
                 "routing: {strategy: genre, table: {horror: claude-haiku}}\nitems:\n  - {item_id: a}\n")


def test_round_robin_end_to_end_counts_retries(loom):
    loom.write("storyloom.yaml", "models:\n" + "".join(
        f"  s{i}: {{provider: scripted, latency: 0.001, script: {{it-0: [TEMPORARY_ERROR, ok]}}}}\n" for i in (1, 2, 3)
    ) + "retry_config: {max_retries: 2, retry_delay: {initial: 0.01s, max: 0.01s}}\n")
    scripted.reset()
    result = loom.run(
        "job_id: rr\njob_type: qc_processing\nmodels: [s1, s2, s3]\nrouting: {strategy: round_robin}\n"
        "config: {max_parallel: 1}\nitems:\n" + "".join(f"  - {{item_id: it-{i}}}\n" for i in range(6)),
        plugins=(scripted,),
    )
    result.assert_outcomes(completed=6)
    models = [model for (_item, _attempt, model, _t) in scripted.STATS["calls"]]
    assert len(models) == 7  # it-0 retried once
    assert models[:3] == ["s1", "s2", "s3"]
    shares = Counter(models)
    assert max(shares.values()) - min(shares.values()) <= 1
    assert all(route["strategy"] == "round_robin" for _i, _m, route in routes(result))


class PauseAfter:
    """Pauses the batch once, after ``n`` items finished."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.control = n, 0, None

    @hookimpl
    def loom_batch_started(self, job, plan, control):
        self.control = control

    @hookimpl
    def loom_item_finished(self, job, item, outcome):
        self.seen += 1
        if self.seen == self.n:
            self.control.pause("a break")


def test_round_robin_shares_stay_within_one_across_a_resume(loom):
    loom.write("storyloom.yaml", "models:\n" + "".join(
        f"  s{i}: {{provider: scripted, latency: 0.001}}\n" for i in (1, 2, 3)))
    scripted.reset()
    first = loom.run(
        "job_id: rr2\njob_type: qc_processing\nmodels: [s1, s2, s3]\nrouting: {strategy: round_robin}\n"
        "config: {max_parallel: 1}\nitems:\n" + "".join(f"  - {{item_id: it-{i}}}\n" for i in range(7)),
        plugins=(scripted, PauseAfter(2)),
    )
    # (The item claimed while the second one committed may finish too.)
    assert first.summary.status == "paused" and first.counts["completed"] in (2, 3)
    loom.resume("rr2", plugins=(scripted,)).assert_outcomes(completed=7)
    models = [model for (_item, _attempt, model, _t) in scripted.STATS["calls"]]
    assert models == ["s1", "s2", "s3", "s1", "s2", "s3", "s1"]  # the resume carried on the count


class Counting:
    """A provider plugin that records each model's most requests at once."""

    def __init__(self) -> None:
        self.now: Counter = Counter()
        self.most: Counter = Counter()
        plugin = self

        class Provider(BaseProvider):
            def __init__(self, spec):
                super().__init__(spec)
                self.name = spec.name

            async def complete(self, request):
                plugin.now[self.name] += 1
                plugin.most[self.name] = max(plugin.most[self.name], plugin.now[self.name])
                try:
                    await trio.sleep(0.01)
                finally:
                    plugin.now[self.name] -= 1
                return Response(text="ok", input_tokens=10, output_tokens=5, model=self.name)

        self.provider = Provider

    @storyloom.hookimpl
    def loom_register_providers(self, register):
        register("counting", self.provider)


LOADED_MODELS = """\
models:
  one: {provider: counting, max_parallel: 1}
  two: {provider: counting, max_parallel: 2}
  three: {provider: counting, max_parallel: 3}
"""
LOADED_JOB = ("job_id: load\njob_type: qc_processing\nmodels: [one, two, three]\nrouting: {strategy: least_loaded}\n"
              "config: {max_parallel: 6}\nitems:\n" + "".join(f"  - {{item_id: it-{i}}}\n" for i in range(60)))


def test_least_loaded_end_to_end_shares_follow_capacity(loom):
    loom.write("storyloom.yaml", LOADED_MODELS)
    result = loom.run(LOADED_JOB, plugins=(Counting(),))
    result.assert_outcomes(completed=60)
    shares = Counter(model for _i, model, _r in routes(result))
    assert shares["one"] < shares["two"] < shares["three"]
    assert all(route["strategy"] == "least_loaded" and route["capacity"] == {"one": 1, "two": 2, "three": 3}
               for _i, _m, route in routes(result))


def test_least_loaded_end_to_end_never_sends_past_a_models_capacity(loom):
    loom.write("storyloom.yaml", LOADED_MODELS)
    counting = Counting()
    loom.run(LOADED_JOB, plugins=(counting,))
    assert counting.most == {"one": 1, "two": 2, "three": 3}


def test_least_loaded_end_to_end_rotates_among_idle_unlimited_models(loom):
    # Zero latency and no limits: every model is always idle, so every choice
    # is a tie, and ties take turns. No route reports a wait that is not there.
    loom.write("storyloom.yaml", "models:\n" + "".join(
        f"  m{i}: {{provider: simulated, latency_ms: 0}}\n" for i in range(4)))
    result = loom.run("job_id: idle\njob_type: qc_processing\nmodels: [m0, m1, m2, m3]\n"
                      "routing: {strategy: least_loaded}\nconfig: {max_parallel: 1}\nitems:\n"
                      + "".join(f"  - {{item_id: it-{i}}}\n" for i in range(8)))
    result.assert_outcomes(completed=8)
    assert Counter(model for _i, model, _r in routes(result)) == {"m0": 2, "m1": 2, "m2": 2, "m3": 2}
    assert not any("rate_wait" in route for _i, _m, route in routes(result))
    assert {route["loads"]["m1"] for _i, _m, route in routes(result)} == {0.0}


def test_a_model_spend_cap_holds_over_jobs_and_the_rest_goes_elsewhere(loom):
    # scripted replies cost (100 + 50) tokens at $1,000 per million: $0.15 an attempt.
    loom.write("storyloom.yaml", "models:\n"
               "  capped: {provider: scripted, latency: 0.001, max_spend_usd: 0.8, price: {input: 1000, output: 1000}}\n"
               "  open: {provider: scripted, latency: 0.001, price: {input: 1000, output: 1000}}\n")
    scripted.reset()
    spent_on = {}
    for job_id in ("first", "second"):
        result = loom.run(
            f"job_id: {job_id}\njob_type: qc_processing\nmodels: [capped, open]\n"
            "routing: {strategy: round_robin}\nconfig: {max_parallel: 1, max_tokens: 100}\nitems:\n"
            + "".join(f"  - {{item_id: it-{i}}}\n" for i in range(10)), name=f"{job_id}.yaml", plugins=(scripted,))
        result.assert_outcomes(completed=10)
        spent_on[job_id] = sum(1 for _i, model, _r in routes(result) if model == "capped")
    calls = Counter(model for (_item, _attempt, model, _t) in scripted.STATS["calls"])
    assert calls["capped"] * 0.15 <= 0.8  # the cap held over both jobs (worst cases reserved ahead)
    assert spent_on["first"] >= 2 and calls["open"] >= 10  # capped took its share until its cap, open the rest
    assert spent_on["second"] < spent_on["first"]  # the second job started from what the first had spent

    assert loom.read(lambda store: store.spend_by_model())["capped"] <= 0.8


def test_cheapest_end_to_end(loom):
    loom.write("storyloom.yaml", PRICED_MODELS)
    result = loom.run("job_id: cheap\njob_type: qc_processing\nrouting: {strategy: cheapest}\nitems:\n"
                      "  - {item_id: a}\n  - {item_id: b}\n  - {item_id: pinned, model: gpt-4o}\n")
    result.assert_outcomes(completed=3)
    assert {i: row.last_model for i, row in result.items.items()} == {"a": "gemini", "b": "gemini",
                                                                      "pinned": "gpt-4o"}
    route = next(r for i, _m, r in routes(result) if i == "a")
    assert set(route["costs"]) == set(MODELS)
    assert min(route["costs"], key=route["costs"].get) == "gemini" and route["costs"]["gemini"] > 0


@pytest.mark.slow
def test_an_attempt_waiting_for_a_slow_models_limiter_moves_when_another_model_frees_up(loom):
    # "fast" has no rate limit but its first reply is a 429: it cools down for
    # 1 s, and meanwhile the items route to "slow" (one request a second).
    # They wait for their turn outside slow's limiter; once fast is back, the
    # ones with long waits move to it rather than hold their slots for seconds.
    loom.write("storyloom.yaml", "models:\n"
               "  slow: {provider: scripted, latency: 0.01, rpm: 60}\n"
               "  fast: {provider: scripted, latency: 0.01, script: {it-0: [API_RATE_LIMIT]}}\n")
    scripted.reset()
    result = loom.run("job_id: move\njob_type: qc_processing\nmodels: [slow, fast]\n"
                      "routing: {strategy: least_loaded}\nconfig: {max_parallel: 4}\nitems:\n"
                      + "".join(f"  - {{item_id: it-{i}}}\n" for i in range(8)), plugins=(scripted,))
    result.assert_outcomes(completed=8)
    finished = routes(result)
    moved = [(i, m, r) for i, m, r in finished if r.get("moved_from")]
    assert moved, "no attempt moved off the slow model"
    assert all(m == "fast" and r["moved_from"] == ["slow"] and r["moved"] == "slow" for _i, m, r in moved)
    # Without moving, slow would send the five routed to it during the cool-down, one a second.
    assert Counter(model for _i, model, _r in finished)["slow"] <= 3
    # Moving sends nothing and records nothing: one attempt per item (two for the 429'd one),
    # every one finished, none left "sent".
    assert {i: row.attempts for i, row in result.items.items()} == {f"it-{i}": 2 if i == 0 else 1 for i in range(8)}
    calls = Counter(item_id for (item_id, _attempt, _model, _t) in scripted.STATS["calls"])
    assert calls == {f"it-{i}": 2 if i == 0 else 1 for i in range(8)}
    raw = sqlite3.connect(loom.state_dir / DB_NAME)
    try:
        assert raw.execute("SELECT COUNT(*) FROM attempts WHERE state = 'sent'").fetchone() == (0,)
        assert raw.execute("SELECT COUNT(*) FROM attempts").fetchone() == (9,)
    finally:
        raw.close()


STAGE_WITHOUT_THE_TABLES_MODEL = """
job_id: staged
job_type: qc_processing
models: [a, b]
routing: {strategy: genre, table: {fantasy: a}}
then:
  - {job_type: export, models: [b]}   # inherits the job's routing: its table names a, which this stage lacks
items: [{item_id: x, genre: fantasy}]
"""


def test_validate_and_submit_refuse_a_stage_whose_routing_names_a_model_it_lacks(loom):
    # Found by storyloom.testing.strategies: validate said yes, and the worker refused it once stored.
    loom.write("storyloom.yaml", "models: {a: {provider: simulated}, b: {provider: simulated}}\n")
    with pytest.raises(UsageError, match="genre routing: table: fantasy: 'a' is not one of the job's models"):
        loom.validate(STAGE_WITHOUT_THE_TABLES_MODEL)
    with pytest.raises(UsageError, match="genre routing"):
        loom.submit(STAGE_WITHOUT_THE_TABLES_MODEL)
    assert loom.stored_jobs() == []
