"""Job types own their items: each declares its item fields (a JSON Schema),
how one entry expands into items, and optionally an input reader. The kernel
checks only the generic keys and knows no concrete job type."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import pytest

from storyloom import ConfigError, UsageError, hookimpl
from storyloom.config import Options, make_config
from storyloom.job import item_from_dict, item_to_dict, job_from_dict
from storyloom.jobtype import Result
from storyloom.plugins.jobtypes import JOB_TYPES
from storyloom.provider import Request

SCENE_SCHEMA = {
    "type": "object",
    "required": ["item_id"],
    "properties": {
        "beat": {"description": "The story beat, 1 to 10.", "type": "integer", "minimum": 1, "maximum": 10},
        "takes": {"description": "Write the scene this many times.", "type": "integer", "minimum": 1},
    },
}


@dataclass(frozen=True)
class SceneJobType:
    """A third party's job type: its own field (beat) and expansion (takes: 3)."""

    name: str = "scenes"
    max_parallel: int = 4
    timeout_per_item: float = 30.0
    item_schema: dict = field(default_factory=lambda: SCENE_SCHEMA, compare=False)
    event_fields: tuple[str, ...] = ("beat",)

    def expand_item(self, item, entry, where):
        takes = item.fields.pop("takes", 1)
        if takes > 5:
            raise where.error(("takes",), "at most 5 takes")
        return [(replace(item, item_id=f"{item.item_id}-take{n}", fields=dict(item.fields)), ("item_id",))
                for n in range(1, takes + 1)]

    def build_request(self, item, job):
        return Request(messages=({"role": "user", "content": f"Write beat {item.fields.get('beat')}."},),
                       max_tokens=50)

    def handle_result(self, item, job, response):
        return Result(text=response.text, file_name=f"{item.item_id}.txt")


class ScenesPlugin:
    @hookimpl
    def loom_register_job_types(self, register):
        register(SceneJobType())


def error_of(loom, job_yaml: str, plugins: tuple = (ScenesPlugin(),)) -> str:
    with pytest.raises(ConfigError) as info:
        loom.run(job_yaml, plugins=plugins)
    return str(info.value)


SCENES = "job_id: s\njob_type: scenes\nitems:\n  - {item_id: open, beat: 1, takes: 3}\n  - {item_id: close, beat: 9}\n"


def test_a_plugin_job_type_declares_and_expands_its_own_items(loom):
    result = loom.run(SCENES, plugins=(ScenesPlugin(),))
    result.assert_outcomes(completed=4)
    assert list(result.items) == ["open-take1", "open-take2", "open-take3", "close-take1"]
    started = result.recorder.calls["loom_item_started"]
    assert {call["item"].item_id: call["item"].fields for call in started}["open-take2"] == {"beat": 1}


def column(text: str, line: int, word: str) -> int:
    return text.splitlines()[line - 1].index(word) + 1


def test_a_plugin_job_types_bad_field_is_located(loom):
    text = SCENES.replace("beat: 9", "beat: 12")
    path, col = loom.path / "job.yaml", column(text, 5, "12")
    assert error_of(loom, text) == f"{path}:5:{col}: at items[1].beat: expected integer <= 10, got integer 12"


def test_a_plugin_job_types_expansion_errors_are_located(loom):
    text = SCENES.replace("takes: 3", "takes: 7")
    path, col = loom.path / "job.yaml", column(text, 4, "7}")
    assert error_of(loom, text) == f"{path}:4:{col}: at items[0].takes: at most 5 takes"


def test_fields_a_job_type_does_not_declare_are_unknown_keys(loom):
    text = SCENES.replace("beat: 9", "beat: 9, genre: noir")
    path, col = loom.path / "job.yaml", column(text, 5, "genre")
    assert error_of(loom, text) == (f"{path}:5:{col}: at items[1].genre: unknown key 'genre' "
                                    "(known: beat, deadline, item_id, model, priority, project_id, status, takes)")


def test_the_chapters_range_belongs_to_the_story_job_types(loom):
    path = loom.path / "job.yaml"
    message = error_of(loom, "job_id: s\njob_type: scenes\nitems:\n  - {item_id: a, chapters: 1-3}\n")
    assert message.startswith(f"{path}:4:18: at items[0].chapters: unknown key 'chapters'")
    message = error_of(loom, "job_id: p\njob_type: prompts\nitems:\n  - {item_id: a, prompt: x, chapters: 1-3}\n")
    assert message.startswith(f"{path}:4:29: at items[0].chapters: unknown key 'chapters'")
    result = loom.run("job_id: c\njob_type: chapter_writing\nitems:\n  - {project_id: p, chapters: 1-3}\n")
    assert list(result.items) == ["p-ch1", "p-ch2", "p-ch3"]


def test_generic_keys_are_still_the_kernels(loom):
    text = SCENES.replace("beat: 9", "beat: 9, priority: hgh")
    path, col = loom.path / "job.yaml", column(text, 5, "hgh")
    assert error_of(loom, text).startswith(f"{path}:5:{col}: at items[1].priority: expected one of critical, high")


def test_the_first_error_in_the_file_wins_across_both_schemas(loom):
    text = SCENES.replace("beat: 1,", "beat: 0,").replace("beat: 9", "beat: 9, priority: hgh")
    assert "at items[0].beat: expected integer >= 1, got integer 0" in error_of(loom, text)


def test_an_unknown_job_type_is_still_a_clear_error(loom):
    path = loom.path / "job.yaml"
    assert error_of(loom, SCENES, plugins=()).startswith(f"{path}:2:11: at job_type: unknown job_type 'scenes'")


def test_a_job_type_without_an_item_schema_is_a_usage_error(loom):
    @dataclass(frozen=True)
    class Bare:
        name: str = "bare"
        max_parallel: int = 1
        timeout_per_item: float = 1.0

    class Plugin:
        @hookimpl
        def loom_register_job_types(self, register):
            register(Bare())

    with pytest.raises(UsageError, match="job type 'bare' declares no item_schema"):
        loom.run("job_id: b\njob_type: bare\nitems:\n  - {item_id: a}\n", plugins=(Plugin(),))


def test_item_started_events_carry_the_fields_the_job_type_names(loom):
    loom.write("storyloom.yaml", "progress: [eventlog]\n")
    loom.run(SCENES, plugins=(ScenesPlugin(),), settings_file=str(loom.path / "storyloom.yaml"))
    events = [json.loads(line) for line in (loom.out_dir / "s" / "events.jsonl").read_text().splitlines()]
    started = [e for e in events if e["kind"] == "item_started"]
    assert started and all(set(e["data"]) == {"attempt", "model", "project_id", "beat"} for e in started)


# -- the story job types' fields, as templates and stores see them


def test_story_templates_still_see_chapter_num_genre_and_title(loom):
    loom.write("job.yaml", "job_id: c\njob_type: chapter_writing\nitems:\n"
                           "  - {project_id: rain, chapters: 5, genre: fantasy, title: Storm}\n"
                           "  - {item_id: x, project_id: rain}\n")
    with make_config(Options(autoload=False), job_file=loom.path / "job.yaml") as config:
        job = config.load_job(loom.path / "job.yaml")
    chapter_writing = next(t for t in JOB_TYPES if t.name == "chapter_writing")
    prompt = chapter_writing.build_request(job.items[0], job).messages[1]["content"]
    assert prompt.startswith('Write chapter 5 of the project rain ("Storm").')
    assert "fantasy" in prompt
    export = next(t for t in JOB_TYPES if t.name == "export")
    assert "chapter" not in export.build_request(job.items[1], job).messages[1]["content"]


def test_items_stored_with_a_top_level_chapter_num_still_load():
    old = {"item_id": "p-ch5", "project_id": "p", "chapter_num": 5, "status": "pending", "priority": "normal",
           "deadline": None, "model": None, "fields": {"title": "T"}}
    item = item_from_dict(old)
    assert item.fields == {"title": "T", "chapter_num": 5}
    assert "chapter_num" not in item_to_dict(item) and item_to_dict(item)["fields"]["chapter_num"] == 5
    job = job_from_dict({"job_id": "j", "job_type": "chapter_writing", "items": [old]})
    assert job.items[0].fields["chapter_num"] == 5


# -- input: files belong to the job type that reads them


BATCH_LINE = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": "hi"}]}}


def test_the_batch_input_reader_is_the_prompts_job_types(loom):
    loom.write("requests.jsonl", json.dumps(BATCH_LINE) + "\n")
    result = loom.run("job_id: n\njob_type: prompts\ninput: requests.jsonl\n")
    result.assert_outcomes(completed=1)
    assert list(result.items) == ["r1"]


def test_input_is_an_error_for_a_job_type_without_a_reader(loom):
    loom.write("requests.jsonl", json.dumps(BATCH_LINE) + "\n")
    path = loom.path / "job.yaml"
    assert error_of(loom, "job_id: n\njob_type: chapter_writing\ninput: requests.jsonl\n") == (
        f"{path}:3:8: at input: job type 'chapter_writing' reads no input: file; list its items under items instead"
    )


def test_without_the_prompts_plugin_input_names_the_missing_job_type(loom):
    loom.write("requests.jsonl", json.dumps(BATCH_LINE) + "\n")
    path = loom.write("job.yaml", "job_id: n\njob_type: prompts\ninput: requests.jsonl\n")
    with make_config(Options(plugins=("no:prompts",), autoload=False), job_file=path) as config:
        with pytest.raises(ConfigError) as info:
            config.load_job(path)
    assert str(info.value).startswith(f"{path}:2:11: at job_type: unknown job_type 'prompts'")
