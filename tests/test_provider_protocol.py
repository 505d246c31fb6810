"""The Provider protocol: what the kernel asks of a provider, checked once when
it builds one, and how it hands the provider its model's rate-limit feedback."""

from __future__ import annotations

import pytest
import trio
from fakeprovider import fake_provider  # noqa: F401

import storyloom
from storyloom import UsageError
from storyloom.config import Options, make_config
from storyloom.kernel import Worker
from storyloom.plugins.providers import anthropic, gemini, openai
from storyloom.plugins.simulated import SimulatedProvider
from storyloom.provider import BaseProvider, Provider, ProviderFactory, Request, Response
from storyloom.settings import ModelSpec, Price

JOB = "job_id: p\njob_type: qc_processing\nmodels: [m]\nitems:\n  - {item_id: a}\n"


def plugin_with(factory, name="custom"):
    class Plugin:
        @storyloom.hookimpl
        def loom_register_providers(self, register):
            register(name, factory)

    return Plugin()


class Minimal(BaseProvider):
    """A third-party provider in a few lines: the base class has the rest."""

    async def complete(self, request):
        return Response(text="ok", input_tokens=1, output_tokens=1)


class Legacy:
    """The old duck-typed shape: complete and aclose only."""

    @classmethod
    def default_price(cls, model_id):
        return None

    def __init__(self, spec):
        self.spec = spec

    async def complete(self, request):
        return Response(text="ok", input_tokens=1, output_tokens=1)

    async def aclose(self):
        pass


class Refunding(Minimal):
    refunds_unused_tokens = True


class Vague(Minimal):
    refunds_unused_tokens = "yes"


@pytest.mark.parametrize("factory", [Minimal, SimulatedProvider, openai.OpenAIProvider,
                                     anthropic.AnthropicProvider, gemini.GeminiProvider])
def test_bundled_and_base_providers_conform(factory):
    assert isinstance(factory, ProviderFactory)
    instance = factory(ModelSpec(name="x", provider="p", model="m1"))
    assert isinstance(instance, Provider)
    assert isinstance(instance.refunds_unused_tokens, bool)
    assert factory.default_price("no-such-model") is None


def test_the_base_class_defaults():
    instance = Minimal(ModelSpec(name="x", provider="p", model="m1"))
    assert instance.refunds_unused_tokens is False
    assert instance.rate_limits is None
    feedback = object()
    instance.bind_rate_limits(feedback)
    assert instance.rate_limits is feedback
    assert Minimal.default_price("anything") is None
    trio.run(instance.aclose)
    assert trio.run(instance.complete, Request(messages=())).text == "ok"


def test_a_minimal_provider_runs_a_job(loom):
    loom.write("storyloom.yaml", "models:\n  m: {provider: custom}\n")
    result = loom.run(JOB, plugins=(plugin_with(Minimal),))
    result.assert_outcomes(completed=1)
    assert result.summary.cost_usd == 0


def test_a_provider_lacking_protocol_members_is_a_clear_error(loom):
    loom.write("storyloom.yaml", "models:\n  m: {provider: legacy}\n")
    with pytest.raises(UsageError, match=r"provider 'legacy' .*built a Legacy for model 'm' that lacks "
                                         r"refunds_unused_tokens, bind_rate_limits; subclass "
                                         r"storyloom.provider.BaseProvider"):
        loom.run(JOB, plugins=(plugin_with(Legacy, "legacy"),))


def test_refunds_unused_tokens_must_be_a_bool(loom):
    loom.write("storyloom.yaml", "models:\n  m: {provider: vague}\n")
    with pytest.raises(UsageError, match=r"provider 'vague'.*refunds_unused_tokens must be True or False"):
        loom.run(JOB, plugins=(plugin_with(Vague, "vague"),))


def build_worker(tmp_path, settings: str, models: tuple[str, ...], plugins=()):
    (tmp_path / "storyloom.yaml").write_text(settings)
    (tmp_path / "job.yaml").write_text(
        f"job_id: w\njob_type: qc_processing\nmodels: [{', '.join(models)}]\nitems:\n  - {{item_id: a}}\n")
    config = make_config(Options(autoload=False), job_file=tmp_path / "job.yaml", extra_plugins=plugins)
    return config, Worker(config, only=config.plan(config.load_job(tmp_path / "job.yaml")))


def test_the_kernel_binds_each_models_limiter_and_follows_its_refunds(tmp_path):
    settings = "models:\n  r: {provider: refunding, tpm: 1000}\n  n: {provider: minimal, tpm: 1000}\n"
    plugins = (plugin_with(Refunding, "refunding"), plugin_with(Minimal, "minimal"))
    config, worker = build_worker(tmp_path, settings, ("r", "n"), plugins)
    with config:
        for name, refunds in (("r", True), ("n", False)):
            limiter = worker.pool[name].limiter
            assert worker.providers[name].rate_limits is limiter
            assert limiter.refund_unused is refunds


def test_rate_limit_headers_from_the_server_cool_the_kernels_limiter(tmp_path, fake_provider):  # noqa: F811
    fake_provider.configure("gpt-4o", headers={"x-ratelimit-remaining-requests": "0",
                                               "x-ratelimit-reset-requests": "30s"})
    settings = ("models:\n"
                f"  gpt: {{provider: openai, model: gpt-4o, base_url: '{fake_provider.base_url('openai')}', "
                f"api_key_env: {fake_provider.key_env('openai')}}}\n")
    config, worker = build_worker(tmp_path, settings, ("gpt",))

    async def main():
        provider = worker.providers["gpt"]
        try:
            await provider.complete(Request(messages=({"role": "user", "content": "hello"},), max_tokens=100))
        finally:
            await provider.aclose()
        return worker.pool["gpt"].limiter.cooling_until - trio.current_time()

    with config:
        assert config.settings.models["gpt"].price == Price(2.50, 10.00)  # the openai plugin's list price
        assert trio.run(main) == pytest.approx(30, abs=1.5)
