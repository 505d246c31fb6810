"""The studio job types on their own: what each request carries, what each reply
becomes (artifacts, follow-ups), read from a real ProjectContext and rendered
through the real bundled templates. The pipeline end to end, against the fake
HTTP provider, is tests/test_studio_pipeline.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from storyloom import ErrorKind, ProviderError
from storyloom.artifacts import Artifact, ProjectContext
from storyloom.job import Item, Job, Stage
from storyloom.plugins.jobtypes import JOB_TYPES
from storyloom.plugins.studio import book
from storyloom.provider import Response

TYPES = {t.name: t for t in JOB_TYPES}
STAGES = ("character_generation", "plot_outlining", "chapter_writing", "qc_processing", "export")

PROJECT = {
    "project_id": "bk", "title": "Salt & Signal", "language": "en", "genre": "mystery",
    "premise": "A keeper hears Morse from a trawler that sank in 1974.",
    "style": {"tone": "brooding", "pov": "first person", "tense": "past"},
    "chapters": 3, "chapter_length": 40,
}
SHEETS = [
    {"name": "Ada", "role": "keeper", "goals": "find the sender", "traits": ["stubborn"], "voice": "clipped",
     "relationships": [{"name": "Tom", "relation": "brother"}], "arc": "believes herself"},
    {"name": "Tom", "role": "policeman", "goals": "keep the peace", "traits": ["kind"], "voice": "slow",
     "relationships": [], "arc": "doubts, then helps"},
    {"name": "Mrs Vell", "role": "widow", "goals": "silence", "traits": ["proud"], "voice": "formal",
     "relationships": [], "arc": "confesses"},
]
BEATS = [
    {"chapter": 1, "title": "Static", "pov": "Ada", "characters": ["Ada"], "events": "first message",
     "hook": "a name"},
    {"chapter": 2, "title": "The Harbour Ledger", "pov": "Ada", "characters": ["Ada", "Tom"],
     "events": "Ada shows Tom the log", "hook": "the ledger is missing a page"},
    {"chapter": 3, "title": "Low Water", "pov": "Ada", "characters": ["Mrs Vell"], "events": "the truth",
     "hook": "silence"},
]
GOOD_EN = ("The wind had teeth that night and the aerial sang over the roof while I sat by the set. "
           "Tom came in with the rain on his coat, and said nothing for a long time, then asked for tea.")


def job(**vars) -> Job:
    return Job(job_id="j", job_type="character_generation", items=(),
               stages=tuple(Stage(s) for s in STAGES), vars=vars)


def art(kind, key, content, *, version=1, item_id="", project="bk"):
    return Artifact(project, kind, key, content, version=version, item_id=item_id or f"{kind}-{key}-{version}")


def context(*artifacts, project=PROJECT):
    return ProjectContext(dict(project) if project is not None else None, list(artifacts))


def bible():
    return [art("characters", "", {"characters": SHEETS}), art("outline", "", {"arcs": [], "beats": BEATS})]


def reply(data) -> Response:
    return Response(text=json.dumps(data), input_tokens=10, output_tokens=10, model="m", data=data)


def prompt_of(request) -> str:
    return "\n".join(m["content"] for m in request.messages)


# -- chapter_writing ---------------------------------------------------------


def test_chapter_2_request_carries_premise_style_present_characters_beat_summary_and_state():
    ctx = context(*bible(),
                  art("chapter", "1", {"title": "Static", "text": "First para.\n\nSecond para.\n\nThe last lines of one."},
                      item_id="bk-ch1"),
                  art("summary", "1", "Ada hears a dead ship call her name."),
                  art("character_state", "1", {"Ada": "shaken, at the station", "Tom": "doubtful"}))
    item = Item("bk-ch2", project_id="bk", fields={"chapter_num": 2}, job_type="chapter_writing", context=ctx)
    request = TYPES["chapter_writing"].build_request(item, job())
    text = prompt_of(request)
    assert PROJECT["premise"] in text
    assert "brooding" in text and "first person" in text
    assert "The Harbour Ledger" in text and "the ledger is missing a page" in text
    assert "Tom" in text and "policeman" in text  # a present character's sheet
    assert "widow" not in text  # Mrs Vell is not in this beat
    assert "Ada hears a dead ship call her name." in text
    assert "The last lines of one." in text and "First para." not in text  # the last paragraphs only
    assert "shaken, at the station" in text
    assert request.response_schema is not None and request.schema_name == "chapter"
    assert request.language == "en"
    names = request.response_schema["properties"]["character_state"]["items"]["properties"]["name"]["enum"]
    assert names == ["Ada", "Tom", "Mrs Vell"]


def test_a_chapter_reply_becomes_chapter_summary_and_updated_state_artifacts():
    ctx = context(*bible(), art("character_state", "1", {"Ada": "shaken", "Tom": "doubtful"}))
    item = Item("bk-ch2", project_id="bk", fields={"chapter_num": 2}, context=ctx)
    result = TYPES["chapter_writing"].handle_result(item, job(), reply(
        {"title": "x", "text": GOOD_EN, "summary": "Tom listens.", "character_state": [{"name": "Tom", "state": "convinced"}]}))
    kinds = {a.kind: a for a in result.artifacts}
    assert kinds["chapter"].key == "2" and kinds["chapter"].content["text"] == GOOD_EN
    assert kinds["chapter"].content["title"] == "The Harbour Ledger"  # the beat's title wins
    assert kinds["summary"].content == "Tom listens."
    assert kinds["character_state"].content == {"Ada": "shaken", "Tom": "convinced"}
    assert result.follow_ups == ()


def test_a_chapter_reply_without_text_is_invalid_output():
    item = Item("bk-ch1", project_id="bk", fields={"chapter_num": 1}, context=context(*bible()))
    with pytest.raises(ProviderError) as err:
        TYPES["chapter_writing"].handle_result(item, job(), reply(
            {"title": "", "text": "  ", "summary": "s", "character_state": []}))
    assert err.value.kind is ErrorKind.INVALID_OUTPUT


def test_a_rewrite_request_carries_the_findings_and_the_version_it_rewrites():
    ctx = context(*bible(), art("chapter", "1", {"title": "Static", "text": "Old draft words."}, item_id="bk-ch1"))
    item = Item("bk-ch1-r1", project_id="bk", job_type="chapter_writing",
                fields={"chapter_num": 1, "rewrite": 1, "feedback": ["length: The chapter is too short", "Cut the fog."]},
                context=ctx)
    text = prompt_of(TYPES["chapter_writing"].build_request(item, job()))
    assert "The chapter is too short" in text and "Cut the fog." in text and "Old draft words." in text


# -- characters and outline --------------------------------------------------


def test_hand_written_characters_win_over_generated_ones():
    written = {**PROJECT, "characters": [{"name": "Ada", "role": "keeper by hand"}]}
    ctx = context(*bible(), project=written)
    assert [s["name"] for s in book.characters(ctx)] == ["Ada"]
    assert book.characters(ctx)[0]["role"] == "keeper by hand"
    request = TYPES["character_generation"].build_request(Item("bk", project_id="bk", context=ctx), job())
    assert "keeper by hand" in prompt_of(request)


def test_the_outline_makes_the_chapters_in_order_and_the_export_after_every_qc():
    ctx = context(art("characters", "", {"characters": SHEETS}), project={**PROJECT, "review": ["outline"]})
    item = Item("bk-outline", project_id="bk", job_type="plot_outlining", context=ctx)
    request = TYPES["plot_outlining"].build_request(item, job())
    beats_schema = request.response_schema["properties"]["beats"]
    assert beats_schema["minItems"] == beats_schema["maxItems"] == 3
    assert PROJECT["premise"] in prompt_of(request) and "Mrs Vell" in prompt_of(request)
    result = TYPES["plot_outlining"].handle_result(item, job(), reply(
        {"arcs": [{"name": "a", "summary": "s"}], "beats": [{k: v for k, v in b.items() if k != "chapter"} for b in BEATS]}))
    outline = result.artifacts[0]
    assert outline.kind == "outline" and [b["chapter"] for b in outline.content["beats"]] == [1, 2, 3]
    ids = {i.item_id: i for i in result.follow_ups}
    assert list(ids) == ["bk-ch1", "bk-ch2", "bk-ch3", "bk-export"]
    assert ids["bk-ch1"].after == () and ids["bk-ch2"].after == ("bk-ch1",) and ids["bk-ch3"].after == ("bk-ch2",)
    assert all(ids[f"bk-ch{n}"].gate == "bk:outline" for n in (1, 2, 3))
    assert ids["bk-export"].after == ("bk-ch1-qc", "bk-ch2-qc", "bk-ch3-qc") and ids["bk-export"].gate is None
    assert ids["bk-ch2"].fields["chapter_num"] == 2 and ids["bk-ch2"].job_type == "chapter_writing"


def test_an_outline_with_the_wrong_number_of_beats_is_invalid_output():
    item = Item("bk-outline", project_id="bk", context=context(art("characters", "", {"characters": SHEETS})))
    with pytest.raises(ProviderError) as err:
        TYPES["plot_outlining"].handle_result(item, job(), reply({"arcs": [], "beats": BEATS[:2]}))
    assert err.value.kind is ErrorKind.INVALID_OUTPUT and "3 chapter" in err.value.message


# -- qc_processing -----------------------------------------------------------


def qc_item(ctx, rewrite=0, source="bk-ch1"):
    item_id = "bk-ch1" + (f"-r{rewrite}" if rewrite else "") + "-qc"
    return Item(item_id, project_id="bk", job_type="qc_processing",
                fields={"chapter_num": 1, "source_item": source, "rewrite": rewrite}, context=ctx)


SCORES_HIGH = {"continuity": 9, "character_voice": 8, "pacing": 9, "language_quality": 9}
SCORES_LOW = {"continuity": 3, "character_voice": 4, "pacing": 5, "language_quality": 6}


def test_the_qc_request_carries_the_chapter_text_and_the_code_findings():
    ctx = context(*bible(), art("chapter", "1", {"title": "Static", "text": GOOD_EN}, item_id="bk-ch1"))
    request = TYPES["qc_processing"].build_request(qc_item(ctx), job())
    text = prompt_of(request)
    assert GOOD_EN in text
    assert request.schema_name.startswith("qc")
    assert set(request.response_schema["properties"]["scores"]["required"]) == {
        "continuity", "character_voice", "pacing", "language_quality"}


def test_a_passing_qc_makes_no_follow_ups():
    ctx = context(*bible(), art("chapter", "1", {"title": "Static", "text": GOOD_EN}, item_id="bk-ch1"))
    result = TYPES["qc_processing"].handle_result(qc_item(ctx), job(), reply(
        {"scores": SCORES_HIGH, "fixes": [], "comment": "good"}))
    report = result.artifacts[0]
    assert report.kind == "qc" and report.content["verdict"] == "passed" and report.content["score"] == 8.75
    assert result.follow_ups == ()


def test_a_failing_qc_makes_a_rewrite_carrying_the_findings_and_its_qc_takes_over():
    ctx = context(*bible(), art("chapter", "1", {"title": "Static", "text": GOOD_EN}, item_id="bk-ch1"))
    result = TYPES["qc_processing"].handle_result(qc_item(ctx), job(), reply(
        {"scores": SCORES_LOW, "fixes": ["Give Tom a line."], "comment": ""}))
    assert result.artifacts[0].content["verdict"] == "failed"
    rewrite, check = result.follow_ups
    assert (rewrite.item_id, rewrite.job_type) == ("bk-ch1-r1", "chapter_writing")
    assert rewrite.fields["rewrite"] == 1 and "Give Tom a line." in rewrite.fields["feedback"]
    assert any(f.startswith("continuity scored 3") for f in rewrite.fields["feedback"])
    assert (check.item_id, check.job_type, check.after, check.takes_over) == (
        "bk-ch1-r1-qc", "qc_processing", ("bk-ch1-r1",), "bk-ch1-qc")
    assert check.fields["source_item"] == "bk-ch1-r1"


def test_a_thai_chapter_in_latin_letters_fails_qc_whatever_the_scores():
    thai = {**PROJECT, "language": "th", "chapter_length": None}
    ctx = context(*bible(), art("chapter", "1", {"title": "x", "text": GOOD_EN}, item_id="bk-ch1"), project=thai)
    result = TYPES["qc_processing"].handle_result(qc_item(ctx), job(), reply(
        {"scores": SCORES_HIGH, "fixes": [], "comment": ""}))
    report = result.artifacts[0].content
    assert report["verdict"] == "failed" and [f["code"] for f in report["findings"]] == ["script"]
    assert result.follow_ups[0].fields["feedback"][0].startswith("script:")


def test_after_max_rewrites_a_failing_chapter_needs_review_behind_its_gate():
    ctx = context(*bible(), art("chapter", "1", {"title": "Static", "text": GOOD_EN}, item_id="bk-ch1-r2"))
    item = qc_item(ctx, rewrite=2, source="bk-ch1-r2")
    result = TYPES["qc_processing"].handle_result(item, job(max_rewrites=2), reply(
        {"scores": SCORES_LOW, "fixes": [], "comment": ""}))
    assert result.artifacts[0].content["verdict"] == "needs_review"
    (review,) = result.follow_ups
    assert (review.item_id, review.gate, review.takes_over) == ("bk-ch1-review", "bk:chapter-1", "bk-ch1-r2-qc")
    approval = TYPES["qc_processing"].perform(dataclasses.replace(review, context=ctx), job())
    assert approval.artifacts[0].kind == "approval" and approval.artifacts[0].content["chapter_item"] == "bk-ch1-r2"


def test_the_threshold_is_configurable():
    ctx = context(*bible(), art("chapter", "1", {"title": "Static", "text": GOOD_EN}, item_id="bk-ch1"))
    result = TYPES["qc_processing"].handle_result(qc_item(ctx), job(qc_threshold=4), reply(
        {"scores": SCORES_LOW, "fixes": [], "comment": ""}))
    assert result.artifacts[0].content["verdict"] == "passed"


# -- export and the book view ------------------------------------------------


def chapters_with_qc(verdicts):
    out = [*bible()]
    for n, verdict in enumerate(verdicts, 1):
        out.append(art("chapter", str(n), {"title": f"t{n}", "text": f"Chapter {n} <text> & more."}, item_id=f"bk-ch{n}"))
        out.append(art("qc", str(n), {"verdict": verdict, "score": 8.0, "chapter_item": f"bk-ch{n}", "findings": []}))
    return out


def test_export_is_blocked_naming_each_chapter_not_passed():
    ctx = context(*chapters_with_qc(["passed", "needs_review", "failed"]))
    with pytest.raises(ProviderError) as err:
        TYPES["export"].perform(Item("bk-export", project_id="bk", context=ctx), job())
    assert err.value.kind is ErrorKind.INVALID_INPUT
    assert "2 (needs_review)" in err.value.message and "3 (rewriting)" in err.value.message
    assert "1 (" not in err.value.message


def test_export_takes_the_newest_passed_versions_with_the_outline_titles():
    artifacts = chapters_with_qc(["passed", "passed", "passed"])
    artifacts.append(art("chapter", "2", {"title": "t2", "text": "Second version."}, version=2, item_id="bk-ch2-r1"))
    artifacts.append(art("qc", "2", {"verdict": "passed", "score": 9.0, "chapter_item": "bk-ch2-r1"}, version=2))
    result = TYPES["export"].perform(Item("bk-export", project_id="bk", context=context(*artifacts)), job())
    contents = result.data["book"]
    assert [c[0] for c in contents["chapters"]] == ["Static", "The Harbour Ledger", "Low Water"]
    assert contents["chapters"][1][1] == "Second version." and contents["language"] == "en"
    assert result.file_name == "bk.md" and result.text.startswith("# Salt & Signal\n")


def test_the_book_view_shows_each_chapters_state_version_verdict_and_score():
    artifacts = chapters_with_qc(["passed", "failed"])
    view = book.book_view(context(*artifacts), "bk")
    rows = {r["chapter"]: r for r in view["chapters"]}
    assert (rows[1]["state"], rows[1]["version"], rows[1]["qc_verdict"], rows[1]["qc_score"]) == ("passed", 1, "passed", 8.0)
    assert rows[2]["state"] == "rewriting" and rows[3]["state"] == "not written"
    assert view["characters_source"] == "generated" and view["outline"][1]["title"] == "The Harbour Ledger"
    text = "\n".join(book.view_text(view))
    assert "Salt & Signal" in text and "rewriting" in text


def test_a_hand_written_outline_wins_over_the_generated_one():
    written = {**PROJECT, "outline": [{"chapter": 1, "title": "By hand", "events": "HAND-EVENTS", "characters": ["Tom"]}]}
    ctx = context(*bible(), project=written)
    item = Item("bk-ch1", project_id="bk", fields={"chapter_num": 1}, context=ctx)
    text = prompt_of(TYPES["chapter_writing"].build_request(item, job()))
    assert "By hand" in text and "HAND-EVENTS" in text and "Static" not in text
    assert "policeman" in text and "Ada (keeper)" not in text  # the hand-written beat's cast
    assert book.book_view(ctx, "bk")["outline_source"] == "project file"
