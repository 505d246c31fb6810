"""storyloom.testing.strategies: every document each strategy draws loads with
the kernel's own loaders (and the invalid ones fail with a located ConfigError)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storyloom import ConfigError
from storyloom.config import Options, make_config
from storyloom.projects import load_project
from storyloom.testing.strategies import (STORY_JOB_TYPES, batch_lines, invalid_job_documents, job_documents,
                                          project_documents, settings_documents, to_jsonl, to_yaml)

SETTINGS = """
models:
  house-a: {provider: simulated, latency_ms: 0, model: house-model-a}
  house-b: {provider: simulated, latency_ms: 0, model: house-model-b, price: {input: 1, output: 2}}
default_models: [house-a]
"""
MODELS = ["house-a", "house-b"]
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def house(tmp_path_factory):
    """One configured kernel (the bundled plugins, SETTINGS) for the module:
    building the plugin manager per example would be most of each example's time."""
    folder = tmp_path_factory.mktemp("house")
    (folder / "storyloom.yaml").write_text(SETTINGS, encoding="utf-8")
    with make_config(Options(autoload=False, settings_file=str(folder / "storyloom.yaml")),
                     start_dir=folder) as config:
        yield folder, config


def load(house, text, **files):
    """Check ``text`` as a job file as ``storyloom validate`` does (load, then plan),
    in a folder of its own beside ``files`` (``requests_jsonl=`` is requests.jsonl)."""
    base, config = house
    folder = Path(tempfile.mkdtemp(dir=base))
    for name, content in files.items():
        path = folder / (name if "/" in name else name.replace("_", "."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    path = folder / "job.yaml"
    path.write_text(text, encoding="utf-8")
    job = config.load_job(path)
    config.plan(job)
    return job


def expanded_ids(doc):
    out = []
    for entry in doc["items"]:
        chapters = entry.get("chapters")
        if chapters is None:
            out.append(entry["item_id"])
        else:
            first, _, last = str(chapters).partition("-")
            out += [f"{entry['item_id']}-ch{n}" for n in range(int(first), int(last or first) + 1)]
    return out


@FAST
@given(doc=job_documents(models=MODELS))
def test_job_documents_load_against_the_settings(house, doc):
    job = load(house, to_yaml(doc))
    assert job.job_id == doc["job_id"] and job.job_type == doc["job_type"]
    assert [item.item_id for item in job.items] == expanded_ids(doc)
    assert job.models == tuple(doc["models"])
    assert job.stage_types == (doc["job_type"], *(stage["job_type"] for stage in doc.get("then", ())))
    assert job.budget_usd == doc.get("budget_usd")
    assert job.config.max_parallel == doc.get("config", {}).get("max_parallel")
    pinned = {entry["item_id"]: entry["model"] for entry in doc["items"] if "model" in entry and "chapters" not in entry}
    assert {item.item_id: item.model for item in job.items if item.item_id in pinned} == pinned


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=job_documents(job_type="chapter_writing", models=MODELS))
def test_job_documents_of_one_job_type(house, doc):
    assert doc["job_type"] == "chapter_writing"
    assert all(stage["job_type"] in STORY_JOB_TYPES for stage in doc.get("then", ()))
    assert load(house, to_yaml(doc)).job_type == "chapter_writing"


@FAST
@given(doc=settings_documents(providers=("simulated", "openai", "anthropic", "gemini")))
def test_settings_documents_load(loom_factory, doc):
    with loom_factory() as loom:
        path = loom.write("storyloom.yaml", to_yaml(doc))
        with make_config(Options(settings_file=str(path), autoload=False), start_dir=loom.path) as config:
            loaded = config.settings
    assert set(doc["models"]) <= set(loaded.models)
    assert loaded.default_models == tuple(doc["default_models"])
    for name, entry in doc["models"].items():
        spec = loaded.models[name]
        assert (spec.provider, spec.model, spec.rpm, spec.tpm) == (
            entry["provider"], entry.get("model", name), entry.get("rpm"), entry.get("tpm"))
        if "price" in entry:
            assert (spec.price.input, spec.price.output) == (entry["price"].get("input", 0.0),
                                                             entry["price"].get("output", 0.0))
    if "retry_config" in doc and "max_retries" in doc["retry_config"]:
        assert loaded.retry_config.max_retries == doc["retry_config"]["max_retries"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_settings_documents_take_the_jobs_of_their_own_models(loom_factory, data):
    doc = data.draw(settings_documents())
    job = data.draw(job_documents(models=list(doc["models"]), max_items=3))
    with loom_factory() as loom:
        loom.write("storyloom.yaml", to_yaml(doc))
        assert loom.validate(to_yaml(job)).job_id == job["job_id"]


@FAST
@given(doc=project_documents())
def test_project_documents_load_as_written(loom_factory, doc):
    with loom_factory() as loom:
        path = loom.write(f"projects/{doc['project_id']}.yaml", to_yaml(doc))
        assert load_project(path) == doc


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_story_jobs_load_beside_their_projects(loom_factory, data):
    """With a project file for each project_id its items name (loading reads them), in Thai."""
    doc = data.draw(job_documents(job_type="chapter_writing", models=MODELS, max_items=3))
    names = sorted({entry["project_id"] for entry in doc["items"] if "project_id" in entry})
    with loom_factory() as loom:
        loom.write("storyloom.yaml", SETTINGS)
        for name in names:
            project = data.draw(project_documents(project_id=name, language="th"))
            loom.write(f"projects/{name}.yaml", to_yaml(project))
        job = loom.validate(to_yaml(doc))
        if names:  # a broken project file is refused as the job loads: they were read
            (loom.path / "projects" / f"{names[0]}.yaml").write_text("project_id: [\n", encoding="utf-8")
            with pytest.raises(ConfigError, match=f"{names[0]}.yaml"):
                loom.validate(to_yaml(doc))
    assert sorted({item.project_id for item in job.items} - {None}) == names


@FAST
@given(data=st.data())
def test_batch_lines_are_read_by_a_prompts_job_verbatim(house, data):
    """A job_documents(input=...) job and its file of batch_lines: every custom_id and body as written."""
    job = data.draw(job_documents(models=MODELS, input="requests.jsonl"))
    ids = {"house-a": "house-model-a", "house-b": "house-model-b"}
    matched = job.get("input_model", "match") == "match"
    lines = data.draw(batch_lines(model_ids=[ids[m] for m in job["models"]] if matched else ["any-model-id"]))
    loaded = load(house, to_yaml(job), requests_jsonl=to_jsonl(lines))
    assert [item.fields["custom_id"] for item in loaded.items] == [line["custom_id"] for line in lines]
    assert [item.fields["body"] for item in loaded.items] == [line["body"] for line in lines]
    if matched:  # each request runs on the job's model with its provider id
        assert [ids[item.model] for item in loaded.items] == [line["body"]["model"] for line in lines]
    else:
        assert all(item.model is None for item in loaded.items)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=batch_lines(model_ids=["house-model-a"], min_size=3, max_size=3))
def test_batch_lines_go_through_a_run_and_back(loom_factory, lines):
    with loom_factory() as loom:
        run_batch(loom, lines)


def run_batch(loom, lines):
    loom.write("storyloom.yaml", SETTINGS)
    (loom.path / "requests.jsonl").write_text(to_jsonl(lines), encoding="utf-8")
    loom.run("job_id: batch\njob_type: prompts\nmodels: [house-a]\ninput: requests.jsonl\n").assert_outcomes(
        completed=3)
    text = (loom.out_dir / "batch" / "results.jsonl").read_text("utf-8")
    # split, not splitlines: a custom_id may hold U+0085 or U+2028, written as itself
    out = [json.loads(line) for line in text.split("\n") if line]
    assert [line["custom_id"] for line in out] == [line["custom_id"] for line in lines]


@FAST
@given(text=invalid_job_documents(models=MODELS))
def test_invalid_job_documents_fail_cleanly(house, text):
    with pytest.raises(ConfigError) as caught:
        load(house, text)
    error = caught.value
    assert error.location.file.endswith("job.yaml"), error
    assert error.location.line is not None, error  # file:line:col
    assert error.message, error
