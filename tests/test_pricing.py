"""Default prices: each provider declares its own vendor's list prices, the
settings resolve a model's price through the provider registry, and the core's
matching rule knows no vendor."""

from __future__ import annotations

import pytest

import storyloom
from storyloom import UsageError
from storyloom.config import Options, make_config
from storyloom.plugins.providers import anthropic, gemini, openai
from storyloom.pricing import lookup_price
from storyloom.provider import BaseProvider, Response
from storyloom.settings import Price


@pytest.fixture
def providers(tmp_path):
    """The provider registry as a run sees it (bundled plugins only)."""
    with make_config(Options(autoload=False), start_dir=tmp_path) as config:
        yield config.registries.providers


@pytest.mark.parametrize("provider,model_id,expected", [
    ("openai", "gpt-4o", Price(2.50, 10.00)),
    ("openai", "gpt-4o-2024-08-06", Price(2.50, 10.00)),
    ("openai", "gpt-4o-2024-05-13", Price(5.00, 15.00)),  # an exact id beats its family
    ("openai", "gpt-4o-mini-2024-07-18", Price(0.15, 0.60)),  # the longer family wins
    ("openai", "gpt-4.1-mini", Price(0.40, 1.60)),
    ("openai", "o3-mini-2025-01-31", Price(1.10, 4.40)),
    ("openai", "openai/gpt-4.1", Price(2.00, 8.00)),
    ("anthropic", "claude-3-5-haiku-20241022", Price(0.80, 4.00)),
    ("anthropic", "claude-3-5-haiku@20241022", Price(0.80, 4.00)),
    ("anthropic", "claude-haiku-4-5-20251001", Price(1.00, 5.00)),
    ("anthropic", "claude-sonnet-4-20250514", Price(3.00, 15.00)),
    ("anthropic", "claude-opus-4-5-20251101", Price(5.00, 25.00)),
    ("gemini", "models/gemini-2.5-flash", Price(0.30, 2.50)),
    ("gemini", "gemini-2.5-flash-lite", Price(0.10, 0.40)),
    ("gemini", "GEMINI-2.0-FLASH", Price(0.10, 0.40)),
])
def test_known_models(providers, provider, model_id, expected):
    assert providers[provider].default_price(model_id) == expected


@pytest.mark.parametrize("provider,model_id", [
    ("openai", "llama-3.1-8b"), ("openai", "gpt-4"), ("openai", "gpt-4oops"), ("openai", "o3x"), ("openai", ""),
    ("openai", "claude-sonnet-4"),  # each provider knows its own vendor's models only
    ("anthropic", "gpt-4o"), ("gemini", "claude-3-5-haiku"),
    ("simulated", "simulated"), ("simulated", "gpt-4o"),
])
def test_unknown_models(providers, provider, model_id):
    assert providers[provider].default_price(model_id) is None


@pytest.mark.parametrize("module", [openai, anthropic, gemini])
def test_prices_are_sane(module):
    assert module.PRICES
    for model, price in module.PRICES.items():
        assert model == model.lower(), model  # lookup_price lower-cases the id
        assert 0 < price.input <= price.output <= 100, model


def test_the_matching_rule_names_no_vendor():
    table = {"big": Price(2, 8), "big-mini": Price(1, 4), "big-2024-05-13": Price(5, 15)}
    assert lookup_price(table, "big") == Price(2, 8)
    assert lookup_price(table, "Big-2024-08-06") == Price(2, 8)
    assert lookup_price(table, "big-2024-05-13") == Price(5, 15)
    assert lookup_price(table, "big-mini-2024-07-18") == Price(1, 4)
    assert lookup_price(table, "big@20241022") == Price(2, 8)
    assert lookup_price(table, "vendor/big:latest") == Price(2, 8)
    for unknown in ("bigger", "small", ""):
        assert lookup_price(table, unknown) is None, unknown
    assert lookup_price({}, "big") is None


def settings_prices(tmp_path, models_yaml: str, plugins=()) -> dict[str, Price]:
    (tmp_path / "storyloom.yaml").write_text("models:\n" + models_yaml)
    with make_config(Options(autoload=False), start_dir=tmp_path, extra_plugins=plugins) as config:
        return {name: spec.price for name, spec in config.settings.models.items()}


def test_a_model_without_price_gets_its_providers_default(tmp_path):
    prices = settings_prices(tmp_path, (
        "  mini: {provider: openai, model: gpt-4o-mini-2024-07-18}\n"
        "  haiku: {provider: anthropic, model: claude-haiku-4-5}\n"
        "  flash: {provider: gemini, model: gemini-2.5-flash}\n"
        "  own: {provider: openai, model: gpt-4o, price: {input: 1, output: 2}}\n"  # price: always wins
        "  local: {provider: openai, model: llama-3.1-8b, base_url: 'http://gpu:8000/v1'}\n"
        # An OpenAI-compatible endpoint serving another vendor's model: the
        # openai provider knows only OpenAI's prices, so give price: there.
        "  proxied: {provider: openai, model: gemini-2.0-flash}\n"
        "  sim: {provider: simulated, model: gpt-4o}\n"))
    assert prices == {
        "simulated": Price(), "mini": Price(0.15, 0.60), "haiku": Price(1.00, 5.00),
        "flash": Price(0.30, 2.50), "own": Price(1.0, 2.0), "local": Price(), "proxied": Price(), "sim": Price(),
    }


def test_every_spec_the_kernel_sees_has_a_price(tmp_path):
    # No settings file at all: the built-in simulated model is resolved too.
    with make_config(Options(autoload=False), start_dir=tmp_path) as config:
        assert all(isinstance(spec.price, Price) for spec in config.settings.models.values())
        assert config.settings.models["simulated"].price == Price()


class Metered(BaseProvider):
    """A third-party provider: its own vendor's price table, a few lines."""

    default_prices = {"story-large": Price(input=1_000_000.0, output=2_000_000.0)}

    async def complete(self, request):
        return Response(text="once upon a time", input_tokens=3, output_tokens=5, model=self.spec.model)


class MeteredPlugin:
    @storyloom.hookimpl
    def loom_register_providers(self, register):
        register("metered", Metered)


def test_a_plugin_providers_default_price_is_the_models_cost(loom):
    loom.write("storyloom.yaml", "models:\n  big: {provider: metered, model: story-large-2025-01-01}\n"
                                 "  free: {provider: metered, model: story-small}\n")
    job = "job_id: m\njob_type: qc_processing\nmodels: [{}]\nitems:\n  - {{item_id: a}}\n  - {{item_id: b}}\n"
    result = loom.run(job.format("big"), plugins=(MeteredPlugin(),))
    result.assert_outcomes(completed=2)
    # (3 input tokens * $1 + 5 output tokens * $2) per item, two items.
    assert result.summary.cost_usd == pytest.approx(26.0)
    free = loom.run(job.format("free").replace("job_id: m", "job_id: f"), plugins=(MeteredPlugin(),))
    assert free.summary.cost_usd == 0


class PlainFactory:
    """Registered as a provider but with no default_price: not a ProviderFactory."""

    def __init__(self, spec):
        self.spec = spec


class PlainPlugin:
    @storyloom.hookimpl
    def loom_register_providers(self, register):
        register("plain", PlainFactory)


def test_a_factory_without_default_price_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match=r"provider 'plain' .*lacks default_price\(model_id\).*BaseProvider"):
        settings_prices(tmp_path, "  p: {provider: plain}\n", plugins=(PlainPlugin(),))


class BadPrice(BaseProvider):
    @classmethod
    def default_price(cls, model_id):
        return (1.0, 2.0)


class BadPricePlugin:
    @storyloom.hookimpl
    def loom_register_providers(self, register):
        register("badprice", BadPrice)


def test_a_default_price_that_is_not_a_price_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match=r"provider 'badprice': default_price\('m'\) returned \(1.0, 2.0\)"):
        settings_prices(tmp_path, "  b: {provider: badprice, model: m}\n", plugins=(BadPricePlugin(),))
