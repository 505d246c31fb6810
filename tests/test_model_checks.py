"""What a job's models need is checked before anything is stored: their
provider options (each provider's ``check_spec``) and the environment
variables their providers need (``required_env``: the API key), with errors
that name the settings file, line and column."""

from __future__ import annotations

import pytest

from storyloom import ConfigError, hookimpl
from storyloom.api import validate_job
from storyloom.cli import main
from storyloom.plugins.providers.openai import OpenAIProvider
from storyloom.plugins.simulated import SimulatedProvider
from storyloom.provider import BaseProvider
from storyloom.settings import ModelSpec

KEY = "LOOM_TEST_MODEL_KEY"
SETTINGS = f"""\
models:
  sim: {{provider: simulated, latency_ms: 0}}
  gpt:
    provider: openai
    model: gpt-4o-mini
    api_key_env: {KEY}
"""
JOB = "job_id: j\njob_type: qc_processing\nmodels: [{model}]\nitems:\n  - {{item_id: a}}\n"


def nothing_written(loom) -> bool:
    return not loom.state_dir.exists() and not loom.out_dir.exists()


@pytest.mark.parametrize("command", ["validate", "submit", "run"])
@pytest.mark.parametrize("value", [None, ""])
def test_an_unset_or_empty_key_is_reported_before_anything_is_stored(loom, capsys, monkeypatch, command, value):
    if value is None:
        monkeypatch.delenv(KEY, raising=False)
    else:
        monkeypatch.setenv(KEY, value)
    loom.write("storyloom.yaml", SETTINGS)
    loom.write("job.yaml", JOB.format(model="gpt"))
    code, err = main_args(loom, capsys, command)
    assert code == 2
    settings = loom.path / "storyloom.yaml"
    assert f"{settings}:6:18: at models.gpt.api_key_env: model 'gpt' needs the environment variable {KEY}" in err
    assert ("which is not set" if value is None else "which is empty") in err
    assert len(err.strip().splitlines()) == 1
    assert nothing_written(loom)


def main_args(loom, capsys, command: str) -> tuple[int, str]:
    args = [command, str(loom.path / "job.yaml"), "--state-dir", str(loom.state_dir)]
    if command == "run":
        args += ["--out-dir", str(loom.out_dir), "-q"]
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_only_the_models_the_job_uses_need_their_keys(loom, capsys, monkeypatch):
    monkeypatch.delenv(KEY, raising=False)
    loom.write("storyloom.yaml", SETTINGS)
    loom.write("job.yaml", JOB.format(model="sim"))
    assert main_args(loom, capsys, "validate")[0] == 0  # gpt is not used: its key may be missing
    loom.write("storyloom.yaml", SETTINGS + "default_models: [gpt]\n")
    loom.write("job.yaml", "job_id: j\njob_type: qc_processing\nitems:\n  - {item_id: a}\n")
    code, err = main_args(loom, capsys, "validate")  # no models: in the job: the default ones
    assert code == 2 and f"needs the environment variable {KEY}" in err


def test_a_model_with_the_providers_default_variable_points_at_its_entry(loom, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    loom.write("storyloom.yaml", "models:\n  gpt: {provider: openai}\n")
    loom.write("job.yaml", JOB.format(model="gpt"))
    code, err = main_args(loom, capsys, "validate")
    assert code == 2
    assert f"{loom.path / 'storyloom.yaml'}:2:8: at models.gpt: model 'gpt' needs the environment variable " \
           "OPENAI_API_KEY (its API key), which is not set" in err


def test_the_keys_value_is_never_printed(loom, capsys, monkeypatch):
    monkeypatch.setenv(KEY, "sk-loomsecret-not-for-eyes")
    loom.write("storyloom.yaml", SETTINGS + "    connect_timeout: -1\n")
    loom.write("job.yaml", JOB.format(model="gpt"))
    code, err = main_args(loom, capsys, "validate")
    assert code == 2 and "connect_timeout" in err and "sk-loomsecret" not in err


def test_providers_say_which_variables_they_need():
    assert OpenAIProvider.required_env(ModelSpec("g", "openai", "gpt-4o")) == ("OPENAI_API_KEY",)
    assert OpenAIProvider.required_env(ModelSpec("g", "openai", "gpt-4o", api_key_env="MINE")) == ("MINE",)
    assert SimulatedProvider.required_env(ModelSpec("s", "simulated", "s")) == ()
    assert BaseProvider.required_env(ModelSpec("x", "x", "x")) == ()


@pytest.mark.parametrize("entry,line_col,path,words", [
    ("  sim: {provider: simulated, errors: {TIMOUT: 0.1}}\n", "2:39", "models.sim.errors.TIMOUT",
     "unknown error kind 'TIMOUT'"),
    ("  sim: {provider: simulated, errors: {TIMEOUT: 2}}\n", "2:48", "models.sim.errors.TIMEOUT",
     "expected a probability from 0 to 1, got 2"),
    ("  sim: {provider: simulated, latency: 5}\n", "2:30", "models.sim.latency",
     "unknown option 'latency' for the simulated provider; did you mean 'latency_ms'?"),
    ("  sim: {provider: simulated, latency_ms: -5}\n", "2:42", "models.sim.latency_ms", "expected a number >= 0"),
    ("  sim:\n    provider: openai\n    max_tokens_param: tokens\n", "4:23", "models.sim.max_tokens_param",
     "expected one of"),
    ("  sim:\n    provider: openai\n    read_timeout: 0\n", "4:19", "models.sim.read_timeout",
     "expected a positive number of seconds, got 0"),
    ("  sim:\n    provider: openai\n    base_url: ftp://example.org\n", "4:15", "models.sim.base_url",
     "expected an http(s) URL"),
    ("  sim: {provider: anthropic, anthropic_version: ''}\n", "2:49", "models.sim.anthropic_version",
     "expected a version string"),
    ("  sim: {provider: gemini, thinking_budget: -2}\n", "2:44", "models.sim.thinking_budget",
     "expected a number of tokens"),
])
def test_provider_option_errors_name_the_settings_file_line_and_column_at_validate(
        loom, capsys, monkeypatch, entry, line_col, path, words):
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(variable, "k")
    loom.write("storyloom.yaml", "models:\n" + entry)
    loom.write("job.yaml", JOB.format(model="sim"))
    code, err = main_args(loom, capsys, "validate")
    assert code == 2, err
    assert f"{loom.path / 'storyloom.yaml'}:{line_col}: at {path}: " in err and words in err, err
    assert nothing_written(loom)


def test_an_unused_models_bad_options_are_a_settings_error_too(loom, capsys):
    loom.write("storyloom.yaml", "models:\n  sim: {provider: simulated}\n  other: {provider: simulated, sed: 3}\n")
    loom.write("job.yaml", JOB.format(model="sim"))
    code, err = main_args(loom, capsys, "validate")
    assert code == 2 and f"{loom.path / 'storyloom.yaml'}:3:32: at models.other.sed: unknown option 'sed'" in err


def test_a_provider_built_in_code_says_its_settings_are_built_in():
    with pytest.raises(ConfigError, match=r"^<built-in settings>: at models.s.errors.NOPE: unknown error kind"):
        SimulatedProvider(ModelSpec("s", "simulated", "s", options={"errors": {"NOPE": 1}}))


class Plain:
    """A third-party factory with neither check_spec nor required_env: nothing is asked of it."""

    def __init__(self, spec):
        self.spec = spec

    @staticmethod
    def default_price(model_id):
        return None


class PlainPlugin:
    @hookimpl
    def loom_register_providers(self, register):
        register("plain", Plain)


def test_a_factory_without_the_optional_checks_still_validates(loom):
    loom.write("storyloom.yaml", "models:\n  p: {provider: plain, anything: 1}\n")
    path = loom.write("job.yaml", JOB.format(model="p"))
    assert validate_job(path, options=loom.options(), plugins=(PlainPlugin(),)).job_id == "j"


@pytest.mark.parametrize("base_url", ["ftp://user:s3cret@host/v1", "http://user:s3cret@host:bad/v1"])
def test_a_base_url_with_a_password_is_refused_without_showing_the_password(loom, capsys, monkeypatch, base_url):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    loom.write("storyloom.yaml", f"models:\n  sim:\n    provider: openai\n    base_url: {base_url}\n")
    loom.write("job.yaml", JOB.format(model="sim"))
    code, err = main_args(loom, capsys, "validate")
    assert code == 2 and "at models.sim.base_url: expected an http(s) URL" in err, err
    assert "s3cret" not in err, err
