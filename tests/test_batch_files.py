"""OpenAI Batch API files move to storyloom and back unchanged: any custom_id,
each line's own model and cap, and output lines in OpenAI's exact format
(checked against a schema written from OpenAI's documentation), end to end
against the fake provider over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from storyloom import ConfigError
from storyloom.plugins.prompts import item_id_for
from storyloom.jobtype import identifier_problem

from fakeprovider import _error_body
from test_prompts import write_jsonl

SCHEMA = json.loads((Path(__file__).parent / "data" / "openai-batch-output-line.schema.json")
                    .read_text(encoding="utf-8"))
LINE = Draft202012Validator(SCHEMA)
CHAT_COMPLETION = Draft202012Validator({**SCHEMA["$defs"]["chatCompletion"], "$defs": SCHEMA["$defs"]})
ERROR_BODY = Draft202012Validator(SCHEMA["$defs"]["errorBody"])

#: Settings entry name -> the provider model id a Batch line names.
MODELS = {"mini": "gpt-4o-mini", "big": "gpt-4o", "refuses": "bad-request", "down": "server-down", "slow": "slow"}


def settings(fake) -> str:
    entries = "".join(f"  {name}: {{provider: openai, model: {model}, base_url: '{fake.base_url('openai')}', "
                      f"api_key_env: {fake.key_env('openai')}}}\n" for name, model in MODELS.items())
    return ("models:\n" + entries + f"default_models: [{', '.join(MODELS)}]\nprogress: []\nreports: []\n"
            "retry_config: {max_retries: 0}\n")


def request(custom_id: str, model: str, content: str, **fields) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], **fields}}


#: Custom ids as people write them: spaces, slashes, Thai, a colon.
INPUT = [
    request("chapter 1/intro", "gpt-4o-mini", "Open the book.", max_tokens=50, temperature=0.7),
    request("บทที่ 2", "gpt-4o", "เขียนต่อ", seed=7, top_p=0.5),  # no cap: none is sent
    request("req:refused", "bad-request", "Refused."),
    request("req:down", "server-down", "Down."),
    request("slow one", "slow", "Hang."),
]
JOB = "job_id: nightly\njob_type: prompts\ninput: requests.jsonl\ntimeout_per_item: 1s\n"


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def ran(loom, fake_provider):
    fake_provider.configure("gpt-4o-mini", text="Once upon a time.", output_tokens=5)
    fake_provider.configure("gpt-4o", text="กาลครั้งหนึ่ง", output_tokens=4)
    fake_provider.configure("bad-request", fail_status=400)
    fake_provider.configure("server-down", fail_status=503)
    fake_provider.configure("slow", hang_rate=1.0, hang_seconds=30)
    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, INPUT)
    result = loom.run(JOB)
    result.assert_outcomes(completed=2, failed=3)
    folder = loom.out_dir / "nightly"
    return (read_lines(folder / "results.jsonl"), read_lines(folder / "errors.jsonl"),
            {r.model: r for r in fake_provider.requests}, folder)


@pytest.mark.slow
def test_every_output_line_is_in_openais_format(ran):
    lines, errors, _sent, _folder = ran
    for line in lines + errors:
        problems = [e.message for e in LINE.iter_errors(line)]
        assert problems == [], (line, problems)
    by_id = {line["custom_id"]: line for line in lines}
    for custom_id in ("chapter 1/intro", "บทที่ 2"):
        response = by_id[custom_id]["response"]
        assert response["status_code"] == 200 and by_id[custom_id]["error"] is None
        assert list(CHAT_COMPLETION.iter_errors(response["body"])) == []
    for custom_id, status in (("req:refused", 400), ("req:down", 503)):
        line = by_id[custom_id]
        assert line["error"] is None and line["response"]["status_code"] == status  # an HTTP reply: kept
        assert list(ERROR_BODY.iter_errors(line["response"]["body"])) == []
    slow = by_id["slow one"]
    assert slow["response"] is None and slow["error"]["code"] == "request_timeout"
    assert "timeout_per_item" in slow["error"]["message"]


@pytest.mark.slow
def test_bodies_and_request_ids_are_the_servers_own(ran):
    lines, _errors, sent, _folder = ran
    by_id = {line["custom_id"]: line for line in lines}
    for custom_id, model in (("chapter 1/intro", "gpt-4o-mini"), ("บทที่ 2", "gpt-4o"),
                             ("req:refused", "bad-request"), ("req:down", "server-down")):
        response = by_id[custom_id]["response"]
        assert response["request_id"] == sent[model].request_id  # the x-request-id header
        assert response["request_id"].startswith("req_")
    assert by_id["chapter 1/intro"]["response"]["body"]["choices"][0]["message"]["content"] == "Once upon a time."
    assert by_id["บทที่ 2"]["response"]["body"]["model"] == "gpt-4o"
    # Error bodies exactly as the server sent them, with their status.
    assert by_id["req:refused"]["response"]["body"] == _error_body("openai", 400, "bad",
                                                                   "Fake failure 400 for bad-request.")
    assert by_id["req:down"]["response"]["body"] == _error_body("openai", 503, "error",
                                                                "Fake failure 503 for server-down.")


@pytest.mark.slow
def test_failed_lines_also_go_to_errors_jsonl(ran):
    lines, errors, _sent, _folder = ran
    assert sorted(line["custom_id"] for line in errors) == ["req:down", "req:refused", "slow one"]
    by_id = {line["custom_id"]: line for line in lines}
    assert all(line == by_id[line["custom_id"]] for line in errors)  # the same lines as in results.jsonl


@pytest.mark.slow
def test_a_batch_file_round_trips_joined_on_custom_id(ran):
    lines, _errors, sent, folder = ran
    assert sorted(line["custom_id"] for line in lines) == sorted(entry["custom_id"] for entry in INPUT)
    assert len({line["id"] for line in lines}) == len(lines)
    for entry in INPUT:
        # Sent as written: the line's own model, cap (or none), and every other field.
        assert sent[entry["body"]["model"]].body == entry["body"], entry["custom_id"]
    assert "max_tokens" not in sent["gpt-4o"].body and "max_completion_tokens" not in sent["gpt-4o"].body
    # Each reply's own file is named by a safe id derived from the custom_id.
    assert (folder / f"{item_id_for('chapter 1/intro')}.txt").read_text(encoding="utf-8") == "Once upon a time."


def test_derived_item_ids_are_safe_deterministic_and_distinct():
    ids = ["chapter 1/intro", "chapter 1-intro", "บทที่ 2", "บทที่ 3", "../etc", "a" * 300, " ", "ok-1"]
    derived = [item_id_for(custom_id) for custom_id in ids]
    assert all(identifier_problem(item_id) == "" for item_id in derived), derived
    assert len(set(derived)) == len(ids)
    assert item_id_for("ok-1") == "ok-1"  # a safe custom_id is its own id
    assert item_id_for("chapter 1/intro") == item_id_for("chapter 1/intro")
    assert item_id_for("chapter 1/intro").startswith("chapter-1-intro-")


def test_a_custom_id_written_as_another_ones_derived_id_is_refused_at_its_line(loom):
    write_jsonl(loom, [request("a b", "simulated", "x"), request(item_id_for("a b"), "simulated", "y")])
    with pytest.raises(ConfigError) as info:
        loom.run("job_id: j\njob_type: prompts\ninput: requests.jsonl\n")
    assert str(info.value).startswith(f"{loom.path / 'requests.jsonl'}:2:1: at custom_id: ")
    assert "would both be item" in str(info.value)
    assert loom.stored_jobs() == []


def test_a_model_no_configured_entry_has_is_refused_at_its_line_and_column(loom, fake_provider):
    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, [INPUT[0], INPUT[1], request("r3", "gpt-5", "x")])
    with pytest.raises(ConfigError) as info:
        loom.run(JOB)
    text = str(info.value)
    column = (loom.path / "requests.jsonl").read_text(encoding="utf-8").splitlines()[2].index('"gpt-5"') + 1
    assert text.startswith(f"{loom.path / 'requests.jsonl'}:3:{column}: at body.model: model \"gpt-5\""), text
    assert "input_model: job" in text  # says how to override on purpose
    assert fake_provider.requests == [] and loom.stored_jobs() == []


def test_input_model_job_lets_the_jobs_models_answer_every_line(loom, fake_provider):
    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, [request("r1", "gpt-5", "x", max_completion_tokens=20), request("r2", "o3", "y")])
    loom.run(JOB + "input_model: job\nmodels: [mini]\n").assert_outcomes(completed=2)
    assert [r.body["model"] for r in fake_provider.requests] == ["gpt-4o-mini"] * 2
    assert sorted(r.body.get("max_completion_tokens") for r in fake_provider.requests
                  if "max_completion_tokens" in r.body) == [20]  # still each line's own cap, or none


def test_a_line_is_pinned_to_the_first_of_the_jobs_models_with_its_id(loom, fake_provider):
    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, [request("r1", "gpt-4o-mini", "x"), request("r2", "gpt-4o", "y")])
    result = loom.run(JOB)
    result.assert_outcomes(completed=2)
    assert {item_id: row.last_model for item_id, row in result.items.items()} == {"r1": "mini", "r2": "big"}


def test_a_cancelled_jobs_unsent_requests_are_batch_cancelled_lines(loom, fake_provider):
    import trio

    from storyloom.api import cancel_job

    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, INPUT[:2])
    job_id = loom.submit(JOB)
    trio.run(lambda: cancel_job(job_id, options=loom.options()))
    states = loom.outputs(job_id, rebuild=True)
    assert states["results.jsonl"] == "rebuilt" and states["errors.jsonl"] == "rebuilt"
    folder = loom.out_dir / job_id
    lines = read_lines(folder / "results.jsonl")
    assert [line["custom_id"] for line in lines] == ["chapter 1/intro", "บทที่ 2"]
    for line in lines:
        assert list(LINE.iter_errors(line)) == [] and line["response"] is None
        assert line["error"]["code"] == "batch_cancelled"
    assert read_lines(folder / "errors.jsonl") == lines
    assert fake_provider.requests == []


def test_models_on_the_command_line_that_leave_a_lines_model_out_are_refused(loom, fake_provider):
    from storyloom import UsageError

    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, INPUT[:2])
    with pytest.raises(UsageError, match=r"the request \"บทที่ 2\" names the provider model of 'big'"):
        loom.run(JOB, models=("mini",))
    assert fake_provider.requests == [] and loom.stored_jobs() == []
    loom.run(JOB + "input_model: job\n", models=("mini",)).assert_outcomes(completed=2)
    assert {r.body["model"] for r in fake_provider.requests} == {"gpt-4o-mini"}
