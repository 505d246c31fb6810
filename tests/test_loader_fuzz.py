"""Property tests: a job file either loads or fails with a located ConfigError.

Valid job documents are generated, then mutated (a required key deleted, a
value's type changed, an unknown key inserted, an identifier broken, random
YAML text or bytes spliced in), dumped as YAML or JSON and loaded from a file.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storyloom.durations import DURATION_PATTERN, parse_duration
from storyloom.errors import ConfigError
from storyloom.job import Job
from storyloom.loader import KnownNames, load_job
from storyloom.plugins.jobtypes import JOB_TYPES
from storyloom.settings import Settings

NOW = datetime(2025, 1, 15, tzinfo=timezone.utc)
SETTINGS = Settings()
KNOWN = KnownNames(
    job_types={t.name: t for t in JOB_TYPES if t.name == "chapter_writing"},
    providers={"simulated"},
    strategies={"round_robin"},
    retry_policies={"exponential"},
    sinks={"plain", "terminal", "webhook"},  # the default progress: names these
    renderers={"md", "json", "html"},  # and the default reports: these
)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- valid documents

identifiers = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
texts = st.one_of(
    # No NEL (U+0085): PyYAML's own dumper writes it raw and its reader folds it into a space.
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x85"), max_size=30),
    st.sampled_from(["รักนี้ต้องมีเธอ", "ผีบ้าน ตอนที่ ๗", "The House on Soi 7", "yes", "no", "1:30", "~", "2025-01-15"]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False), texts)
free_vars = st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), scalars, max_size=3)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([None, timezone.utc, timezone(timedelta(hours=7))]),
).map(datetime.isoformat)
when = st.one_of(moments, st.dates(min_value=datetime(2000, 1, 1).date()).map(lambda d: d.isoformat()))
priorities = st.sampled_from(["critical", "high", "normal", "low"])
durations = st.one_of(
    st.integers(1, 3600), st.sampled_from(["120s", "250ms", "5m", "1h30m", "2m 30s", "0.5"]),
)
ITEM_FIELDS = {
    "project_id": identifiers,
    "status": st.sampled_from(["pending", "skipped", "completed", "running"]),
    "priority": priorities,
    "deadline": when,
    "genre": texts,
    "language": st.sampled_from(["th", "en"]),
    "title": texts,
    "prompt": texts,
    "vars": free_vars,
}


@st.composite
def items(draw: st.DrawFn, index: int) -> dict[str, Any]:
    # Ids are made unique by construction: "it<n>" never equals "rng<n>-ch<m>".
    item = draw(st.fixed_dictionaries({}, optional=ITEM_FIELDS))
    if draw(st.booleans()):
        item["item_id"] = f"it{index}"
        if draw(st.booleans()):
            item["chapter_num"] = draw(st.integers(0, 500))
    else:
        item["item_id"] = f"rng{index}"
        low = draw(st.integers(0, 50))
        item["chapters"] = draw(st.sampled_from([low, f"{low}-{low + 3}", f"{low},{low + 2}-{low + 4}"]))
    return item


@st.composite
def jobs(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(1, 4))
    job = {
        "job_id": draw(identifiers),
        "job_type": "chapter_writing",
        "items": [draw(items(i)) for i in range(count)],
    }
    optional = {
        "created_at": moments,
        "priority": priorities,
        "deadline": when,
        "config": st.fixed_dictionaries({}, optional={
            "max_parallel": st.integers(1, 50),
            "retry_on_failure": st.booleans(),
            "max_retries": st.integers(0, 5),
            "model_rotation": st.booleans(),
            "timeout_per_item": durations,
            "max_tokens": st.integers(1, 10_000),
        }),
        "models": st.just(["simulated"]),
        "routing": st.just({"strategy": "round_robin", "window": 3}),
        "budget_usd": st.floats(min_value=0.01, max_value=1e6),
        "language": st.sampled_from(["th", "en"]),
        "vars": free_vars,
        "description": texts,
        "then": st.just([]),
        "status": st.just("running"),
        "progress": st.just({"total": 20, "completed": 12, "failed": 1, "pending": 7}),
    }
    job.update(draw(st.fixed_dictionaries({}, optional=optional)))
    return job


def dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, ensure_ascii=False, indent=2)
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def expected_items(job: dict[str, Any]) -> int:
    total = 0
    for item in job["items"]:
        spec = item.get("chapters")
        if spec is None:
            total += 1
        elif isinstance(spec, int):
            total += 1
        else:
            total += sum(int(b) - int(a) + 1 if a else 1 for a, b in (
                (p.split("-") if "-" in p else ("", "")) for p in spec.split(",")
            ))
    return total


def load_or_located_error(path: Path) -> Job | None:
    """The property: a Job, or a ConfigError whose text starts ``file:line:col:``."""
    try:
        job = load_job(path, SETTINGS, KNOWN, now=NOW)
    except ConfigError as err:
        assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", str(err)), str(err)
        return None
    assert isinstance(job, Job)
    return job


# -- mutations


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``value`` (not the root)."""
    out = []
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return out
    for key, child in children:
        out.append(prefix + (key,))
        out.extend(paths(child, prefix + (key,)))
    return out


def container(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def item_entries(doc: dict) -> list[dict]:
    """The item mappings still there after earlier mutations."""
    entries = doc.get("items")
    return [item for item in entries if isinstance(item, dict)] if isinstance(entries, list) else []


def delete_required(doc: dict, draw: st.DrawFn) -> None:
    choices: list[tuple[dict, str]] = [(doc, "job_id"), (doc, "job_type"), (doc, "items")]
    choices += [(item, "item_id") for item in item_entries(doc)]
    target, key = draw(st.sampled_from(choices))
    target.pop(key, None)


def change_type(doc: dict, draw: st.DrawFn) -> None:
    if not paths(doc):
        return
    path = draw(st.sampled_from(paths(doc)))
    container(doc, path)[path[-1]] = draw(st.one_of(scalars, st.just([]), st.just({}), st.lists(st.integers(), max_size=2)))


def insert_unknown_key(doc: dict, draw: st.DrawFn) -> None:
    mappings = [()] + [p for p in paths(doc) if isinstance(container(doc, p)[p[-1]], dict)]
    path = draw(st.sampled_from(mappings))
    target = doc if not path else container(doc, path)[path[-1]]
    target[draw(st.sampled_from(["max_retires", "jobtype", "itemid", "ชื่อ", "x"]))] = draw(scalars)


def break_identifier(doc: dict, draw: st.DrawFn) -> None:
    bad = draw(st.sampled_from(["../etc", "a/b", "", ".", "..", "x" * 200, "a b", "ตอน", "-a", "a\n"]))
    target = draw(st.sampled_from([doc] + item_entries(doc)))
    target["job_id" if target is doc else "item_id"] = bad


MUTATIONS = [delete_required, change_type, insert_unknown_key, break_identifier]

# -- the properties


@pytest.mark.slow
@FUZZ
@given(job=jobs(), fmt=st.sampled_from(["yaml", "json"]))
def test_valid_jobs_load(tmp_path, job, fmt):
    path = tmp_path / f"job.{fmt}"
    path.write_text(dump(job, fmt), encoding="utf-8")
    loaded = load_job(path, SETTINGS, KNOWN, now=NOW)
    assert loaded.job_id == job["job_id"]
    assert len(loaded.items) == expected_items(job)
    titles = [item["title"] for item in job["items"] if "title" in item and "chapters" not in item]
    assert titles == [i.fields["title"] for i in loaded.items if "title" in i.fields and not i.item_id.startswith("rng")]


@pytest.mark.slow
@FUZZ
@given(job=jobs(), fmt=st.sampled_from(["yaml", "json"]), data=st.data())
def test_mutated_jobs_load_or_fail_with_a_location(tmp_path, job, fmt, data):
    mutated = copy.deepcopy(job)
    for mutate in data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        mutate(mutated, data.draw)
    path = tmp_path / f"job.{fmt}"
    path.write_text(dump(mutated, fmt), encoding="utf-8")
    load_or_located_error(path)


YAML_NOISE = st.text(st.sampled_from(list("-:[]{},&*!|>'\"%@`#?~ \t\nabc01.<=") + ["\u0e01", "\ufeff", "\x85"]), max_size=20)


@pytest.mark.slow
@FUZZ
@given(job=jobs(), fmt=st.sampled_from(["yaml", "json"]), noise=YAML_NOISE, data=st.data())
def test_yaml_noise_loads_or_fails_with_a_location(tmp_path, job, fmt, noise, data):
    text = dump(job, fmt)
    at = data.draw(st.integers(0, len(text)))
    path = tmp_path / f"job.{fmt}"
    path.write_text(text[:at] + noise + text[at:], encoding="utf-8")
    load_or_located_error(path)


@pytest.mark.slow
@FUZZ
@given(job=jobs(), fmt=st.sampled_from(["yaml", "json"]), noise=st.binary(min_size=1, max_size=8), data=st.data())
def test_random_bytes_load_or_fail_with_a_location(tmp_path, job, fmt, noise, data):
    raw = dump(job, fmt).encode("utf-8")
    at = data.draw(st.integers(0, len(raw)))
    path = tmp_path / f"job.{fmt}"
    path.write_bytes(raw[:at] + noise + raw[at:])
    load_or_located_error(path)


@FUZZ
@given(raw=st.binary(max_size=200), fmt=st.sampled_from(["yaml", "json"]))
def test_arbitrary_bytes_fail_with_a_location(tmp_path, raw, fmt):
    path = tmp_path / f"job.{fmt}"
    path.write_bytes(raw)
    assert load_or_located_error(path) is None


@FUZZ
@given(text=st.one_of(
    st.from_regex(r"\s?[0-9]{1,3}(\.[0-9])?\s?(d|h|m|s|ms)?( ?[0-9]{1,2}(h|m|s|ms))?\s?", fullmatch=True),
    st.text(st.sampled_from(list("0123456789.dhms -")), max_size=10),
))
def test_duration_schema_pattern_agrees_with_the_parser(text):
    """The schema's pattern and parse_duration accept exactly the same strings."""
    matches = re.fullmatch(DURATION_PATTERN, text) is not None
    try:
        parse_duration(text)
    except ConfigError as err:
        assert not matches or "longer than 365 days" in str(err)
    else:
        assert matches
