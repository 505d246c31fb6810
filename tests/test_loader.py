"""Loading job files and settings: one test per kind of error, and what loads."""

from __future__ import annotations

import importlib.resources
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from storyloom import document, loader
from storyloom.durations import DURATION_PATTERN, parse_duration
from storyloom.errors import ConfigError, ErrorKind, Location, UsageError
from storyloom.job import Priority
from storyloom.jobtype import GENERIC_ITEM_KEYS
from storyloom.loader import (
    KnownNames,
    check_settings,
    find_settings,
    load_job,
    load_settings,
    parse_document,
    peek_plugins,
)
from storyloom.plugins.jobtypes import CHAPTERS_PATTERN, JOB_TYPES, expand_chapters
from storyloom.settings import BatchLimit, Price, Settings

DATA = Path(__file__).parent / "data"
NOW = datetime(2025, 1, 15, tzinfo=timezone.utc)
KNOWN = KnownNames(
    job_types={t.name: t for t in JOB_TYPES if t.name in ("chapter_writing", "qc_processing")},
    providers={"simulated", "openai"},
    strategies={"round_robin", "genre"},
    retry_policies={"exponential"},
    sinks={"plain", "terminal", "webhook"},  # the default progress: names these
    renderers={"markdown", "md", "json", "html"},  # and the default reports: these
)
BASE = """\
job_id: j1
job_type: chapter_writing
items:
  - item_id: a
    chapter_num: 1
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def job_error(path: Path, settings: Settings | None = None, known: KnownNames = KNOWN) -> str:
    with pytest.raises(ConfigError) as info:
        load_job(path, settings or Settings(), known, now=NOW)
    return str(info.value)


# -- errors: each names the file, line:column, the path and what was expected


def test_malformed_yaml_reports_the_parsers_position(tmp_path):
    path = write(tmp_path, "job_id: j1\njob_type: [chapter_writing\nitems: 3\n")
    assert job_error(path) == (
        f"{path}:3:6: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at line 2)"
    )


def test_wrong_type_names_expected_and_got(tmp_path):
    path = write(tmp_path, BASE + "  - item_id: b\n    chapter_num: five\n")
    assert job_error(path) == f"{path}:7:18: at items[1].chapter_num: expected integer, got string 'five'"


def test_unquoted_yaml_word_suggests_quoting(tmp_path):
    path = write(tmp_path, BASE + "language: no\n")
    assert job_error(path) == (
        f"{path}:6:11: at language: expected string, got boolean false "
        '(YAML reads an unquoted no as false; quote it: "no")'
    )


def test_bad_enum_lists_the_choices(tmp_path):
    path = write(tmp_path, BASE + "priority: hgh\n")
    assert job_error(path) == (
        f"{path}:6:11: at priority: expected one of critical, high, normal, low, got string 'hgh'; did you mean 'high'?"
    )


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "job_id: j1\nitems:\n  - item_id: a\n")
    assert job_error(path) == f"{path}:1:1: missing required key 'job_type'"


def test_unknown_job_type_suggests_the_close_one(tmp_path):
    path = write(tmp_path, BASE.replace("chapter_writing", "chapter_writng"))
    assert job_error(path) == (
        f"{path}:2:11: at job_type: unknown job_type 'chapter_writng'; did you mean 'chapter_writing'? "
        "(known: chapter_writing, qc_processing)"
    )


def test_unknown_provider_points_into_the_settings_file(tmp_path):
    settings_path = write(tmp_path, "models:\n  gemini:\n    provider: opnai\n", "storyloom.yaml")
    job = write(tmp_path, BASE)
    message = job_error(job, load_settings(settings_path))
    assert message == (
        f"{settings_path}:3:15: at models.gemini.provider: unknown provider 'opnai'; did you mean 'openai'? "
        "(known: openai, simulated)"
    )


def test_unknown_strategy_suggests_the_close_one(tmp_path):
    path = write(tmp_path, BASE + "routing: {strategy: round_robn}\n")
    assert job_error(path) == (
        f"{path}:6:21: at routing.strategy: unknown routing strategy 'round_robn'; did you mean 'round_robin'? "
        "(known: genre, round_robin)"
    )


def test_unknown_model_suggests_the_close_one(tmp_path):
    path = write(tmp_path, BASE + "models: [simulated, simulatd]\n")
    assert job_error(path) == (
        f"{path}:6:21: at models[1]: unknown model 'simulatd'; did you mean 'simulated'? (known: simulated)"
    )


def test_item_model_must_be_one_of_the_jobs_models(tmp_path):
    settings = load_settings(DATA / "settings_full.yaml")
    path = write(tmp_path, BASE.replace("chapter_num: 1", "chapter_num: 1\n    model: gpt-4") + "models: [gemini]\n")
    assert job_error(path, settings) == (
        f"{path}:6:12: at items[0].model: unknown model 'gpt-4' (the job's models: gemini)"
    )


def test_duplicate_item_id_names_the_first(tmp_path):
    path = write(tmp_path, BASE + "  - item_id: b\n  - item_id: a\n")
    assert job_error(path) == f"{path}:7:14: at items[2].item_id: duplicate item_id 'a' (first used at items[0], line 4)"


def test_duplicate_item_id_after_chapter_expansion(tmp_path):
    path = write(tmp_path, BASE.replace("item_id: a", "item_id: p-ch3") + "  - project_id: p\n    chapters: 1-5\n")
    assert job_error(path) == (
        f"{path}:7:15: at items[1].chapters: duplicate item_id 'p-ch3' (first used at items[0], line 4)"
    )


def test_bad_duration_in_a_job(tmp_path):
    path = write(tmp_path, BASE + "config:\n  timeout_per_item: 5 minutes\n")
    assert job_error(path) == (
        f"{path}:7:21: at config.timeout_per_item: expected a duration like 120s, 250ms, 5m or 1h30m, "
        "or a number of seconds; got string '5 minutes'"
    )


def test_zero_timeout_is_refused(tmp_path):
    path = write(tmp_path, BASE + "timeout_per_item: 0s\n")
    assert job_error(path) == f"{path}:6:19: at timeout_per_item: expected a duration greater than zero; got '0s'"


def test_bad_duration_in_settings(tmp_path):
    path = write(tmp_path, "retry_config:\n  retry_delay:\n    initial: soon\n", "storyloom.yaml")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == (
        f"{path}:3:14: at retry_config.retry_delay.initial: expected a duration like 120s, 250ms, 5m or 1h30m, "
        "or a number of seconds; got string 'soon'"
    )


@pytest.mark.parametrize("value", ["tomorrow", "2025-13-45", "2025-01-15T25:00:00Z"])
def test_bad_date(tmp_path, value):
    path = write(tmp_path, BASE + f"deadline: {value}\n")
    assert job_error(path) == (
        f"{path}:6:11: at deadline: expected a date-time like 2025-01-15T09:00:00Z or a date like 2025-01-15; "
        f"got string '{value}'"
    )


@pytest.mark.parametrize("bad", ["../etc", "a/b", ".", "..", "-a", "a b", "x" * 129, '"a\\n"'])
def test_unsafe_identifier(tmp_path, bad):
    path = write(tmp_path, BASE.replace("item_id: a", f"item_id: {bad}"))
    message = job_error(path)
    assert message.startswith(f"{path}:4:14: at items[0].item_id: expected a safe name (letters, digits")
    assert "it becomes a file name" in message


def test_unsafe_job_id(tmp_path):
    path = write(tmp_path, BASE.replace("job_id: j1", "job_id: ../etc"))
    assert job_error(path).startswith(f"{path}:1:9: at job_id: expected a safe name")


def test_expanded_item_id_too_long(tmp_path):
    path = write(tmp_path, BASE + f"  - project_id: {'p' * 126}\n    chapters: 1\n")
    assert job_error(path).startswith(f"{path}:7:15: at items[1].chapters: the expanded item_id: expected a safe name")


def test_empty_item_list(tmp_path):
    path = write(tmp_path, "job_id: j1\njob_type: chapter_writing\nitems: []\n")
    assert job_error(path) == f"{path}:3:8: at items: expected a non-empty list, got an empty list"


def test_unknown_key_points_at_the_key_and_suggests(tmp_path):
    path = write(tmp_path, BASE + "config:\n  max_parallel: 2\n  max_retires: 3\n")
    assert job_error(path) == (
        f"{path}:8:3: at config.max_retires: unknown key 'max_retires'; did you mean 'max_retries'? "
        "(known: max_parallel, max_retries, max_tokens, model_rotation, retry_on_failure, stream, timeout_per_item)"
    )


def test_unknown_key_wins_over_the_missing_key_it_explains(tmp_path):
    path = write(tmp_path, BASE.replace("job_type:", "jobtype:"))
    assert job_error(path).startswith(f"{path}:2:1: at jobtype: unknown key 'jobtype'; did you mean 'job_type'?")


def test_alias_bomb_fails_fast(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = write(tmp_path, "\n".join(lines) + "\n")
    started = time.monotonic()
    message = job_error(path)
    assert time.monotonic() - started < 5
    assert message.startswith(f"{path}:")
    assert "the document expands to more than 100,000 values" in message


def test_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path, "job_id: &a [*a]\n")
    message = job_error(path)
    assert message.startswith(f"{path}:1:9: at job_id[0]")
    assert "nested deeper than 64 levels" in message


def test_duplicate_key(tmp_path):
    path = write(tmp_path, BASE + "job_id: j2\n")
    assert job_error(path) == f"{path}:6:1: at job_id: duplicate key 'job_id' (first given on line 1)"


def test_non_string_key(tmp_path):
    path = write(tmp_path, BASE + "1: x\n")
    assert job_error(path) == f'{path}:6:1: mapping keys must be strings; quote the key "1"'


def test_unsupported_tag(tmp_path):
    path = write(tmp_path, BASE + "vars: !!python/object:os.system {}\n")
    assert job_error(path) == f"{path}:6:7: at vars: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'"


def test_not_a_number(tmp_path):
    path = write(tmp_path, BASE + "budget_usd: .nan\n")
    assert job_error(path) == f"{path}:6:13: at budget_usd: expected a finite number, got '.nan'"


def test_chapter_num_and_chapters_together(tmp_path):
    path = write(tmp_path, BASE.replace("chapter_num: 1", "chapter_num: 1\n    chapters: 2-3"))
    assert job_error(path) == f"{path}:4:5: at items[0]: give either chapter_num or chapters, not both"


def test_chapters_need_an_id(tmp_path):
    path = write(tmp_path, "job_id: j1\njob_type: chapter_writing\nitems:\n  - chapters: 1-3\n")
    assert job_error(path).startswith(f"{path}:4:5: at items[0]: an item with chapters needs an item_id or a project_id")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("12-5", "reversed chapter range '12-5'; did you mean '5-12'?"),
        ("1-20000", "chapter range '1-20000' has more than 10,000 chapters"),
        ("1,3,1", "chapter 1 is listed twice in '1,3,1'"),
    ],
)
def test_bad_chapter_ranges(tmp_path, spec, message):
    path = write(tmp_path, f"job_id: j1\njob_type: chapter_writing\nitems:\n  - project_id: p\n    chapters: '{spec}'\n")
    assert job_error(path) == f"{path}:5:15: at items[0].chapters: {message}"


def test_timeout_given_twice(tmp_path):
    path = write(tmp_path, BASE + "timeout_per_item: 5s\nconfig: {timeout_per_item: 6s}\n")
    assert job_error(path) == (
        f"{path}:6:19: at timeout_per_item: timeout_per_item is given twice: here and under config; keep one"
    )


def test_empty_document(tmp_path):
    path = write(tmp_path, "# nothing here\n")
    assert job_error(path) == f"{path}:1:1: the file is empty; expected a mapping such as 'job_id: ...'"


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- job_id: j1\n")
    assert job_error(path) == f"{path}:1:1: expected a mapping of keys at the top level, got a list"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert job_error(path) == f"{path}: file not found"


def test_not_utf8(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(BASE.encode() + "title: caf\xe9\n".encode("latin-1"))
    assert job_error(path) == f"{path}:6:11: the file is not valid UTF-8 (byte 0xe9); save it as UTF-8"


def test_control_character(tmp_path):
    path = write(tmp_path, BASE + "title: a\x01b\n")
    assert job_error(path) == f"{path}:6:9: invalid YAML: control character #x0001 is not allowed"


def test_file_size_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(document, "MAX_FILE_BYTES", 10)
    path = write(tmp_path, BASE)
    assert job_error(path) == f"{path}: the file is larger than 10 bytes"


def test_json_job_errors_carry_line_and_column(tmp_path):
    text = '{\n  "job_id": "j1",\n  "job_type": "chapter_writing",\n  "items": [\n    {"item_id": "a", "chapter_num": "five"}\n  ]\n}\n'
    path = write(tmp_path, text, "job.json")
    assert job_error(path) == f"{path}:5:37: at items[0].chapter_num: expected integer, got string 'five'"


def test_json_syntax_errors_carry_line_and_column(tmp_path):
    path = write(tmp_path, '{\n  "job_id": "j1",\n  "job_type": "chapter_writing"\n  "items": []\n}\n', "job.json")
    message = job_error(path)
    assert message.startswith(f"{path}:4:3: invalid JSON: expected ',' or '}}'")


def test_json_rejects_yaml_only_values(tmp_path):
    path = write(tmp_path, '{"job_id": j1}', "job.json")
    assert job_error(path) == f"{path}:1:12: at job_id: invalid JSON value 'j1' (strings need double quotes)"


def test_config_error_is_a_usage_error():
    err = ConfigError(Location("jobs/x.yaml", 12, 5), "items[3].chapter_num", "expected integer, got string 'five'")
    assert isinstance(err, UsageError)
    assert str(err) == "jobs/x.yaml:12:5: at items[3].chapter_num: expected integer, got string 'five'"


# -- what loads


def test_seed_job_loads_as_it_stands():
    job = load_job(DATA / "seed_job.json", Settings(), KnownNames(job_types={"chapter_writing": KNOWN.job_types["chapter_writing"]}), now=NOW)
    assert job.job_id == "batch-2025-01-15-001"
    assert job.job_type == "chapter_writing"
    assert job.created_at == datetime(2025, 1, 15, tzinfo=timezone.utc)
    assert job.priority is Priority.NORMAL
    assert [(i.item_id, i.project_id, i.fields["chapter_num"], i.status) for i in job.items] == [
        ("item-001", "proj-123", 5, "pending"),
        ("item-002", "proj-456", 8, "pending"),
    ]
    assert job.config.max_parallel == 5 and job.config.max_retries == 2
    assert job.config.retry_on_failure is True and job.config.model_rotation is True
    assert job.source == str(DATA / "seed_job.json")


def test_thai_job_loads():
    job = load_job(DATA / "thai_job.yaml", Settings(), KNOWN, now=NOW)
    assert [i.item_id for i in job.items] == [
        "rak-nee-ch5", "rak-nee-ch6", "rak-nee-ch7", "rak-nee-ch8", "pee-baan-ch1",
    ]
    first = job.items[0]
    assert first.fields["title"] == "รักนี้ต้องมีเธอ"
    assert first.fields["vars"] == {"pov": "นางเอก"}
    assert first.fields["language"] == "th"  # inherited from the job
    assert job.items[-1].fields["language"] == "en"
    assert job.vars == {"tone": "อบอุ่น ตลก"}
    assert job.language == "th"


def test_thai_text_in_errors_counts_characters(tmp_path):
    line = "  - {item_id: b, title: รักนี้ต้องมีเธอ, chapter_num: five}"
    path = write(tmp_path, BASE + line + "\n")
    column = line.index("five") + 1  # characters, not UTF-8 bytes
    assert job_error(path) == f"{path}:6:{column}: at items[1].chapter_num: expected integer, got string 'five'"
    path = write(tmp_path, BASE + "ชื่อเรื่อง: ก\n")
    assert job_error(path).startswith(f"{path}:6:1: at ['ชื่อเรื่อง']: unknown key 'ชื่อเรื่อง'")


def test_json_with_tabs_and_escapes_loads(tmp_path):
    text = '{\n\t"job_id": "j1",\n\t"job_type": "chapter_writing",\n\t"items": [\n\t\t{"item_id": "a",'
    text += ' "chapter_num": 1e2, "title": "\\ud83d\\ude00 \u2028\\u0e01 \\/"}\n\t]\n}\n'
    job = load_job(write(tmp_path, text, "job.json"), Settings(), KNOWN, now=NOW)
    assert job.items[0].fields["chapter_num"] == 100
    assert job.items[0].fields["title"] == "\U0001F600 \u2028ก /"


def test_full_job_builds_every_field():
    settings = load_settings(DATA / "settings_full.yaml")
    job = load_job(DATA / "job_full.yaml", settings, KNOWN, now=NOW)
    assert job.models == ("gemini", "gpt-4o")
    assert job.routing == {"strategy": "genre", "table": {"fantasy": "gpt-4o", "romantic-comedy": "gemini"}}
    assert job.budget_usd == 12.5
    assert job.config.timeout_per_item == 300.0
    assert job.config.max_tokens == 4096
    assert job.vars == {"house_style": "third person, past tense"}
    assert job.deadline == datetime(2025, 1, 20, tzinfo=timezone.utc)
    assert job.priority is Priority.LOW  # five days left: the explicit level stands
    ids = [i.item_id for i in job.items]
    assert ids == ["dragon-ch1", "dragon-ch2", "coffee-ch1", "coffee-ch3", "coffee-ch5", "coffee-ch6"]
    assert job.items[0].model == "gpt-4o"
    assert job.items[1].status == "skipped"
    coffee = job.items[2]
    assert (coffee.project_id, coffee.fields["chapter_num"], coffee.fields["vars"]) == ("coffee", 1, {"pov": "barista"})
    assert coffee.priority is Priority.CRITICAL  # its own deadline is hours away
    assert all(i.deadline.tzinfo is not None for i in job.items)


def test_timestamps_stay_strings_in_documents(tmp_path):
    doc = parse_document(write(tmp_path, "created_at: 2025-01-15T00:00:00Z\nday: 2025-01-15\n"))
    assert doc.data == {"created_at": "2025-01-15T00:00:00Z", "day": "2025-01-15"}


def test_merge_keys_and_aliases(tmp_path):
    text = BASE + "  - &base {item_id: b, genre: fantasy, title: T}\n  - <<: *base\n    item_id: c\n"
    job = load_job(write(tmp_path, text), Settings(), KNOWN, now=NOW)
    assert [(i.item_id, i.fields.get("genre")) for i in job.items] == [("a", None), ("b", "fantasy"), ("c", "fantasy")]


def test_document_locations_fall_back_to_the_parent(tmp_path):
    doc = parse_document(write(tmp_path, BASE))
    assert doc.location(("items", 0, "chapter_num")) == Location(doc.file, 5, 18)
    assert doc.location(("items", 0, "nope", 3)) == Location(doc.file, 4, 5)
    assert doc.key_location(("items",)) == Location(doc.file, 3, 1)


def test_known_names_left_as_none_are_not_checked(tmp_path):
    path = write(tmp_path, BASE.replace("chapter_writing", "anything") + "routing: {strategy: whatever}\n")
    assert load_job(path, Settings(), KnownNames(), now=NOW).job_type == "anything"


def test_peek_plugins(tmp_path):
    doc = parse_document(write(tmp_path, "plugins:\n  - studio.genres\n  - other\n"))
    assert peek_plugins(doc) == [
        ("studio.genres", Location(doc.file, 2, 5)),
        ("other", Location(doc.file, 3, 5)),
    ]
    assert peek_plugins(parse_document(write(tmp_path, BASE))) == []
    bad = parse_document(write(tmp_path, "plugins: [ok, ../evil]\n"))
    with pytest.raises(ConfigError) as info:
        peek_plugins(bad)
    assert str(info.value) == (
        f"{bad.file}:1:15: at plugins[1]: expected an importable module name like studio_plugins.genres; "
        "got string '../evil'"
    )


# -- chapters, durations, priorities


def test_expand_chapters():
    assert expand_chapters(7) == [7]
    assert expand_chapters("5-12") == list(range(5, 13))
    assert expand_chapters("1,3,5-7") == [1, 3, 5, 6, 7]
    assert expand_chapters(" 2 - 3 , 9 ") == [2, 3, 9]
    assert len(expand_chapters("1-10000")) == 10_000
    for bad in ["", " ", "12-5", "1,,2", "a", "1-20000", "1,1", -1, True, "9999999999"]:
        with pytest.raises(ValueError):
            expand_chapters(bad)


def test_chapter_range_expands_into_items(tmp_path):
    path = write(tmp_path, BASE + "  - item_id: arc2\n    project_id: p\n    chapters: '10-12'\n    title: T\n")
    job = load_job(path, Settings(), KNOWN, now=NOW)
    assert [(i.item_id, i.project_id, i.fields) for i in job.items[1:]] == [
        ("arc2-ch10", "p", {"title": "T", "chapter_num": 10}),
        ("arc2-ch11", "p", {"title": "T", "chapter_num": 11}),
        ("arc2-ch12", "p", {"title": "T", "chapter_num": 12}),
    ]


@pytest.mark.parametrize(
    "value, seconds",
    [(120, 120.0), (0.5, 0.5), ("120s", 120.0), ("250ms", 0.25), ("5m", 300.0), ("1h30m", 5400.0),
     ("1h 30m", 5400.0), ("90", 90.0), ("1.5h", 5400.0), ("1d2h3m4s5ms", 93784.005)],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["5 minutes", "m", "30m1h", "", "-5", "5ms5s", True, -1, "1e3", None, "400d"])
def test_parse_duration_refuses(value):
    with pytest.raises(ConfigError) as info:
        parse_duration(value, Location("s.yaml", 3, 4), "grace_period")
    assert str(info.value).startswith("s.yaml:3:4: at grace_period: ")


@pytest.mark.parametrize(
    "deadline, priority, expected",
    [
        ("2025-01-15T12:00:00Z", "normal", Priority.CRITICAL),  # 12 hours left
        ("2025-01-16T06:00:00+07:00", "low", Priority.CRITICAL),  # 23 hours left
        ("2025-01-17T00:00:00", "normal", Priority.HIGH),  # 2 days, naive = UTC
        ("2025-01-18", "low", Priority.LOW),  # exactly 3 days: the default stands
        ("2025-02-01", "high", Priority.HIGH),  # far away: never lowered
        ("2025-01-10", "low", Priority.CRITICAL),  # already late
    ],
)
def test_deadline_raises_priority(tmp_path, deadline, priority, expected):
    path = write(tmp_path, BASE + f"priority: {priority}\ndeadline: '{deadline}'\n")
    job = load_job(path, Settings(), KNOWN, now=NOW)
    assert job.priority is expected
    assert job.items[0].priority is expected
    assert job.deadline.tzinfo is not None


def test_item_priority_and_deadline_of_its_own(tmp_path):
    text = """\
job_id: j1
job_type: chapter_writing
priority: low
items:
  - item_id: inherits
  - item_id: own-level
    priority: high
  - item_id: own-deadline
    deadline: 2025-01-15T20:00:00Z
"""
    job = load_job(write(tmp_path, text), Settings(), KNOWN, now=NOW)
    assert [i.priority for i in job.items] == [Priority.LOW, Priority.HIGH, Priority.CRITICAL]
    assert job.items[2].deadline == datetime(2025, 1, 15, 20, tzinfo=timezone.utc)


def test_naive_now_is_utc(tmp_path):
    path = write(tmp_path, BASE + "deadline: '2025-01-15T12:00:00Z'\n")
    job = load_job(path, Settings(), KNOWN, now=datetime(2025, 1, 10))
    assert job.priority is Priority.NORMAL


def test_status_skipped_or_completed_means_do_not_run(tmp_path):
    text = BASE + "".join(f"  - item_id: {s}\n    status: {s}\n" for s in ["pending", "skipped", "completed", "failed"])
    job = load_job(write(tmp_path, text), Settings(), KNOWN, now=NOW)
    assert [i.status for i in job.items] == ["pending", "pending", "skipped", "skipped", "pending"]


# -- settings


def test_find_settings_walks_up(tmp_path):
    deep = tmp_path / "studio" / "jobs" / "2025" / "jan"
    deep.mkdir(parents=True)
    (tmp_path / "storyloom.yaml").write_text("synchronous: FULL\n")
    assert find_settings(deep) == tmp_path / "storyloom.yaml"
    (tmp_path / "studio" / "storyloom.yaml").write_text("synchronous: FULL\n")
    assert find_settings(deep) == tmp_path / "studio" / "storyloom.yaml"  # the nearest wins
    (deep / "storyloom.yaml").mkdir()  # a folder of that name is not a settings file
    assert find_settings(deep) == tmp_path / "studio" / "storyloom.yaml"


def test_find_settings_none_when_absent(tmp_path):
    if any((parent / "storyloom.yaml").is_file() for parent in tmp_path.parents):
        pytest.skip("a storyloom.yaml above the temporary folder")
    assert find_settings(tmp_path) is None


def test_no_settings_file_gives_defaults():
    assert load_settings(None) == Settings()


def test_settings_overrides_are_parsed():
    settings = load_settings(DATA / "settings_full.yaml")
    check_settings(settings, KNOWN)
    assert settings.path == str(DATA / "settings_full.yaml")
    assert settings.batch_limits["chapter_writing"] == BatchLimit(max_parallel=5, timeout_per_item=300.0)
    assert settings.batch_limits["qc_processing"] == BatchLimit(max_parallel=20, timeout_per_item=60.0)
    retry = settings.retry_config
    assert (retry.max_retries, retry.retry_delay.initial, retry.retry_delay.multiplier, retry.retry_delay.max) == (
        3, 10.0, 2.0, 120.0,
    )
    assert retry.retryable_errors == {ErrorKind.API_RATE_LIMIT, ErrorKind.TIMEOUT, ErrorKind.TEMPORARY_ERROR}
    # The seed's list has no INTERNAL_ERROR: a kind listed nowhere is not retried.
    assert ErrorKind.INTERNAL_ERROR in retry.non_retryable_errors
    assert settings.grace_period == 90.0
    assert settings.synchronous == "FULL"
    assert settings.default_models == ("gemini", "gpt-4o")
    assert settings.routing["strategy"] == "genre"
    assert settings.plugins == ("studio_plugins.genres",)
    assert settings.reports == ("markdown",)


def test_settings_models(tmp_path):
    settings = load_settings(DATA / "settings_full.yaml")
    gemini = settings.models["gemini"]
    assert (gemini.provider, gemini.model, gemini.api_key_env, gemini.rpm) == (
        "openai", "gemini-2.0-flash", "GEMINI_API_KEY", 60,
    )
    assert gemini.price == Price(input=0.10, output=0.40)
    assert settings.models["gpt-4o"].model == "gpt-4o"  # defaults to the key
    simulated = settings.models["simulated"]  # redefined: provider kept, the rest are options
    assert simulated.provider == "simulated"
    assert simulated.options == {"latency_ms": 5, "errors": {"API_RATE_LIMIT": 0.1}, "seed": 42}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("retry_config:\n  retryable_errors: [TIMEOUT]\n  non_retryable_errors: [AUTH_ERROR, TIMEOUT]\n",
         "3:38: at retry_config.non_retryable_errors[1]: TIMEOUT is listed in both retryable_errors and non_retryable_errors"),
        ("default_models: [gpt]\n", "1:18: at default_models[0]: unknown model 'gpt' (known: simulated)"),
        ("models:\n  g:\n    model: x\n", "3:5: at models.g: missing required key 'provider' (which provider calls this model?)"),
        ("synchronous: normal\n", "1:14: at synchronous: expected one of NORMAL, FULL, got string 'normal'"),
        ("modles: {}\n", "1:1: at modles: unknown key 'modles'; did you mean 'models'?"),
        ("retry_config:\n  retry_delay: {initial: 5m, max: 1m}\n",
         "2:26: at retry_config.retry_delay.initial: the initial delay (300s) is longer than max (60s)"),
        ("models:\n  g: {provider: openai, api_key_env: sk-live-123}\n",
         "2:38: at models.g.api_key_env: expected the name of an environment variable like OPENAI_API_KEY, not the key itself"),
    ],
)
def test_settings_errors(tmp_path, text, expected):
    path = write(tmp_path, text, "storyloom.yaml")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}:{expected}")


def test_settings_names_checked_against_plugins(tmp_path):
    path = write(tmp_path, "progress: [plian]\nretry_config: {policy: exponential}\n", "storyloom.yaml")
    with pytest.raises(ConfigError) as info:
        check_settings(load_settings(path), KNOWN)
    assert str(info.value) == f"{path}:1:12: at progress[0]: unknown progress sink 'plian'; did you mean 'plain'? (known: plain, terminal, webhook)"


def test_only_retryable_given_moves_kinds_out_of_the_default(tmp_path):
    path = write(tmp_path, "retry_config:\n  retryable_errors: [TIMEOUT, INVALID_INPUT]\n", "storyloom.yaml")
    retry = load_settings(path).retry_config
    assert retry.retryable_errors == {ErrorKind.TIMEOUT, ErrorKind.INVALID_INPUT}
    assert retry.non_retryable_errors == set(ErrorKind) - retry.retryable_errors


# -- the schemas themselves


@pytest.mark.parametrize("name", ["job.schema.json", "settings.schema.json", "story-item.schema.json",
                                  "prompts-item.schema.json"])
def test_schemas_are_valid_and_documented(name):
    schema = loader.schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(name)
    undocumented = [path for path, sub in _properties(schema, "") if "description" not in sub]
    assert undocumented == []


def _properties(schema, where):
    """Every (path, subschema) under a "properties" keyword, recursively."""
    if isinstance(schema, dict):
        for key, sub in schema.get("properties", {}).items():
            yield f"{where}.{key}", sub
        for key, sub in schema.items():
            yield from _properties(sub, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            yield from _properties(sub, f"{where}[{i}]")


def test_schemas_repeat_the_python_patterns_and_error_kinds():
    job, settings = loader.schema("job.schema.json"), loader.schema("settings.schema.json")
    assert job["$defs"]["duration"] == settings["$defs"]["duration"]
    assert job["$defs"]["positiveDuration"] == settings["$defs"]["positiveDuration"]
    assert job["$defs"]["moduleList"] == settings["$defs"]["moduleList"]
    assert job["$defs"]["duration"]["pattern"] == DURATION_PATTERN
    assert loader.schema("story-item.schema.json")["properties"]["chapters"]["pattern"] == CHAPTERS_PATTERN
    assert tuple(job["$defs"]["item"]["properties"]) == GENERIC_ITEM_KEYS
    shipped = json.loads(
        importlib.resources.files("storyloom.schemas").joinpath("settings.schema.json").read_text("utf-8")
    )
    assert shipped["$defs"]["errorKinds"]["items"]["enum"] == [kind.value for kind in ErrorKind]


def test_schemas_are_package_data():
    names = {entry.name for entry in importlib.resources.files("storyloom.schemas").iterdir()}
    assert {"job.schema.json", "settings.schema.json"} <= names
    json.loads(importlib.resources.files("storyloom.schemas").joinpath("job.schema.json").read_text("utf-8"))


def test_aware_datetimes_everywhere():
    job = load_job(DATA / "job_full.yaml", load_settings(DATA / "settings_full.yaml"), KNOWN, now=NOW)
    assert job.created_at.utcoffset() == timedelta(0)


def test_rate_limit_timeout_is_a_positive_duration(tmp_path):
    path = tmp_path / "storyloom.yaml"
    path.write_text("retry_config: {rate_limit_timeout: 5m}\n")
    assert load_settings(path).retry_config.rate_limit_timeout == 300.0
    path.write_text("retry_config: {rate_limit_timeout: 0s}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}:1:36: at retry_config.rate_limit_timeout: expected a duration greater")
