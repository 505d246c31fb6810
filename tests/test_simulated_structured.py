"""The simulated provider's structured replies: a valid instance of any
(reasonable) schema, prose in the request's language, deterministic per item
and attempt, and QC failures injected per item."""

from __future__ import annotations

import random
import re

import jsonschema
import pytest
import trio

from storyloom import ConfigError
from storyloom.plugins.simulated import SimulatedProvider
from storyloom.plugins.support.prose import instance, prose
from storyloom.plugins.support.qccheck import grapheme_count, script_share
from storyloom.provider import Request
from storyloom.settings import ModelSpec

THAI = re.compile(r"[\u0e00-\u0e7f]")

OUTLINE = {
    "type": "object", "additionalProperties": False, "required": ["arcs", "beats"],
    "$defs": {"beat": {"type": "object", "additionalProperties": False,
                       "required": ["chapter", "title", "pov", "characters", "events", "hook"],
                       "properties": {"chapter": {"type": "integer", "minimum": 1, "maximum": 12},
                                      "title": {"type": "string", "minLength": 1, "maxLength": 80},
                                      "pov": {"enum": ["first", "third"]},
                                      "characters": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                      "events": {"type": "string"},
                                      "hook": {"type": ["string", "null"]}}}},
    "properties": {"arcs": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                   "beats": {"type": "array", "minItems": 12, "items": {"$ref": "#/$defs/beat"}}},
}
RUBRIC = {
    "type": "object", "additionalProperties": False, "required": ["scores", "passed", "fixes"],
    "properties": {
        "scores": {"type": "object", "additionalProperties": False,
                   "required": ["continuity", "voice", "pacing", "language"],
                   "properties": {k: {"type": "integer", "minimum": 1, "maximum": 10}
                                  for k in ("continuity", "voice", "pacing", "language")}},
        "passed": {"type": "boolean"},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "fixes": {"type": "array", "items": {"type": "string"}},
        "extra": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 3}]},
        "both": {"allOf": [{"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]},
                           {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
    },
}


def ask(request: Request, **options) -> object:
    spec = ModelSpec(name="sim", provider="simulated", model="sim", options={"latency_ms": 0, **options})

    async def go():
        return await SimulatedProvider(spec).complete(request)

    return trio.run(go)


def structured(schema, name="outline", language="th", item="b1", attempt=1) -> Request:
    return Request(messages=({"role": "user", "content": "x"},), response_schema=schema, schema_name=name,
                   language=language, metadata={"item_id": item, "attempt": attempt})


@pytest.mark.parametrize("schema", [OUTLINE, RUBRIC], ids=["outline", "rubric"])
@pytest.mark.parametrize("language", ["th", "en"])
def test_the_reply_is_a_valid_instance(schema, language):
    response = ask(structured(schema, language=language))
    jsonschema.validate(response.data, schema)
    assert response.output_tokens > 0


def test_instances_hold_to_min_items_enums_and_bounds():
    data = instance(OUTLINE, random.Random(1), "th")
    assert len(data["beats"]) >= 12 and len(data["arcs"]) == 2
    assert all(1 <= b["chapter"] <= 12 and b["pov"] in ("first", "third") for b in data["beats"])
    assert all(THAI.search(b["title"]) and len(b["title"]) <= 80 for b in data["beats"])
    assert not THAI.search(instance(OUTLINE, random.Random(1), "en")["beats"][0]["events"])


def test_thai_strings_are_thai_prose():
    data = ask(structured(OUTLINE, language="th")).data
    events = data["beats"][0]["events"]
    assert script_share(events, "th") > 0.9


def test_the_same_item_and_attempt_get_the_same_reply():
    assert ask(structured(OUTLINE)).text == ask(structured(OUTLINE)).text
    assert ask(structured(OUTLINE)).text != ask(structured(OUTLINE, item="b2")).text
    assert ask(structured(OUTLINE)).text != ask(structured(OUTLINE, attempt=2)).text


def test_fail_qc_rate_fails_some_qc_reports_per_item():
    def report(item, name="qc_report", rate=0.5):
        return ask(structured(RUBRIC, name=name, item=item), fail_qc_rate=rate).data

    reports = {f"ch{i}": report(f"ch{i}") for i in range(40)}
    failing = [i for i, r in reports.items() if not r["passed"]]
    assert 8 <= len(failing) <= 32
    assert all(set(reports[i]["scores"].values()) == {1} for i in failing)
    assert all(min(r["scores"].values()) >= 7 for i, r in reports.items() if i not in failing)
    # per item, not per attempt: the same item fails on every attempt
    again = ask(structured(RUBRIC, name="qc_report", item=failing[0], attempt=2), fail_qc_rate=0.5).data
    assert again["passed"] is False
    assert all(report(i, rate=0.0)["passed"] for i in failing)
    assert all(report(i, name="outline", rate=1.0)["passed"] for i in failing)  # only qc* schemas


def test_fail_qc_items_names_the_items_that_fail():
    def passed(item, **options):
        return ask(structured(RUBRIC, name="qc_report", item=item), **options).data["passed"]

    assert passed("book-ch2-qc") and passed("book-ch3-qc")
    assert not passed("book-ch2-qc", fail_qc_items=["*-ch2-qc"])
    assert passed("book-ch3-qc", fail_qc_items=["*-ch2-qc"])
    assert not passed("book-ch3-qc", fail_qc_items=["book-ch3-qc"])


def test_fail_qc_items_must_be_a_list_of_names():
    spec = ModelSpec(name="sim", provider="simulated", model="sim", options={"fail_qc_items": "ch2"})
    with pytest.raises(ConfigError, match="expected a list of item ids or patterns"):
        SimulatedProvider.check_spec(spec)


def test_plain_text_is_prose_in_the_language_and_target_length():
    thai = ask(Request(messages=({"role": "user", "content": "x"},),
                       metadata={"language": "th", "item_id": "a", "attempt": 1, "target_length": 2000}))
    assert thai.text.startswith("(ข้อความจำลอง")
    assert script_share(thai.text, "th") > 0.9
    assert 2000 <= grapheme_count(thai.text) <= 2200  # as QC measures it
    english = ask(Request(messages=({"role": "user", "content": "x"},), language="en",
                          metadata={"item_id": "a", "attempt": 1, "target_length": 500}))
    assert 500 <= len(english.text.split()) <= 530


def test_prose_is_varied():
    text = prose(random.Random(3), "en", 2000).split()
    grams = [" ".join(text[i:i + 6]) for i in range(len(text) - 5)]
    assert len(set(grams)) / len(grams) > 0.8
