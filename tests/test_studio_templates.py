"""The studio's bundled templates (English and Thai), the templates/ folder
beside storyloom.yaml overriding them by name, rendered in the sandbox."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest

from storyloom import ConfigError
from storyloom.config import Options, make_config
from storyloom.plugins.support.templatefiles import STUDIO_VARIABLES, render_template, template_candidates

THAI = re.compile(r"[\u0e00-\u0e7f]")
TEMPLATES = Path(__file__).parent.parent / "plugins" / "templates"
STUDIO = ("character_generation", "plot_outlining", "chapter_writing", "chapter_summary", "qc_processing", "export")

FULL = {
    "project": {"title": "The Lantern Road", "genre": "fantasy", "chapters": 12, "language": "en"},
    "premise": "PREMISE-MARK a girl looks for the lost lantern",
    "style": {"tone": "TONE-MARK", "pov": "POV-MARK", "tense": "past", "voice": "VOICE-MARK"},
    "characters": [{"name": "CHAR-MALI", "role": "lead", "goals": "find the lantern", "traits": ["brave", "stubborn"],
                    "voice": "short sentences", "arc": "learns to ask for help"},
                   {"name": "CHAR-TON", "role": "friend"}],
    "outline": [{"chapter": 1, "title": "OUTLINE-MARK", "events": "they leave"}],
    "beat": {"chapter": 2, "title": "BEAT-TITLE", "pov": "Mali", "events": "BEAT-EVENTS", "hook": "BEAT-HOOK"},
    "chapter_num": 2,
    "chapter_length": 1800,
    "previous_summary": "SUMMARY-MARK they crossed the river",
    "last_paragraphs": "LAST-PARAGRAPHS-MARK the bell rang",
    "character_state": "STATE-MARK Mali is at the bridge",
    "feedback": ["FEEDBACK-ONE too short", "FEEDBACK-TWO Ton sounds like Mali"],
    "chapter_text": "CHAPTER-TEXT-MARK Mali ran.",
    "rubric": [{"name": "continuity", "description": "RUBRIC-MARK consistent with the bible"},
               {"name": "voice", "description": "each character sounds like themselves"}],
    "notes": "NOTES-MARK keep it gentle",
}
#: What each template must carry into its prompt (the marks above).
CARRIES = {
    "character_generation": ["PREMISE-MARK", "TONE-MARK", "CHAR-MALI", "NOTES-MARK"],
    "plot_outlining": ["PREMISE-MARK", "POV-MARK", "CHAR-MALI", "OUTLINE-MARK", "NOTES-MARK"],
    "chapter_writing": ["PREMISE-MARK", "TONE-MARK", "POV-MARK", "VOICE-MARK", "CHAR-MALI", "CHAR-TON", "brave",
                        "BEAT-TITLE", "BEAT-EVENTS", "BEAT-HOOK", "SUMMARY-MARK", "LAST-PARAGRAPHS-MARK",
                        "STATE-MARK", "FEEDBACK-ONE", "FEEDBACK-TWO", "1800", "NOTES-MARK"],
    "chapter_summary": ["CHAPTER-TEXT-MARK", "STATE-MARK"],
    "qc_processing": ["PREMISE-MARK", "CHAR-MALI", "BEAT-EVENTS", "SUMMARY-MARK", "CHAPTER-TEXT-MARK", "RUBRIC-MARK",
                      "continuity", "FEEDBACK-ONE"],
    "export": ["The Lantern Road", "PREMISE-MARK"],
}


def test_every_studio_template_exists_in_english_and_thai():
    for name in STUDIO:
        for language in ("en", "th"):
            assert (TEMPLATES / f"{name}.{language}.j2").is_file(), (name, language)


@pytest.mark.parametrize("language", ["en", "th"])
@pytest.mark.parametrize("name", STUDIO)
def test_a_template_carries_what_it_is_given(name, language):
    text = render_template(name, language, FULL)
    missing = [mark for mark in CARRIES[name] if mark not in text]
    assert missing == [], text
    thai_letters = len(THAI.findall(text))
    if language == "th":
        assert thai_letters > 15, text
    else:
        assert thai_letters == 0, text
    assert "\n\n\n" not in text  # the blocks leave no holes


@pytest.mark.parametrize("language", ["en", "th"])
@pytest.mark.parametrize("name", STUDIO)
def test_a_template_renders_with_only_the_project(name, language):
    text = render_template(name, language, {"project": {"title": "ถนนโคมไฟ"}, "chapter_num": 1})
    assert "ถนนโคมไฟ" in text
    assert "None" not in text


def test_only_the_rewrite_asks_for_a_rewrite():
    first = render_template("chapter_writing", "en", {**FULL, "feedback": []})
    assert "rewrite" not in first and "FEEDBACK" not in first
    assert "rewrite" in render_template("chapter_writing", "en", FULL)


def test_the_language_picks_the_template():
    assert template_candidates("qc_processing", "th-TH") == ["qc_processing.th-th.j2", "qc_processing.th.j2",
                                                             "qc_processing.en.j2"]
    assert template_candidates("qc_processing", None) == ["qc_processing.en.j2"]
    assert template_candidates("qc_processing.j2", "th") == ["qc_processing.j2"]
    assert THAI.search(render_template("chapter_writing", "th-TH", FULL))
    lao = render_template("chapter_writing", "lo", FULL)  # no Lao bundle: English
    assert "Write chapter 2" in lao


def test_text_given_is_data_not_template():
    text = render_template("chapter_writing", "en", {**FULL, "premise": "{{ 7 * 7 }} {% if true %}x{% endif %}"})
    assert "{{ 7 * 7 }} {% if true %}x{% endif %}" in text and "49" not in text


def test_the_old_single_language_templates_still_render():
    text = render_template("chapter_writing.j2", "th", {"chapter_num": 3, "project_id": "p", "title": None,
                                                        "genre": None, "prompt": None})
    assert text.startswith("Write chapter 3 of the project p.")


def studio(tmp_path: Path, files: dict[str, str]):
    (tmp_path / "storyloom.yaml").write_text("default_models: [simulated]\n")
    (tmp_path / "templates").mkdir()
    for name, text in files.items():
        (tmp_path / "templates" / name).write_text(text, encoding="utf-8")
    return make_config(Options(autoload=False), start_dir=tmp_path)


def test_a_studio_template_overrides_the_bundled_one_by_name(tmp_path):
    with studio(tmp_path, {"chapter_writing.th.j2": "บทที่ {{ chapter_num }}: {{ beat.title }} {{ premise }}"}) as config:
        assert render_template("chapter_writing", "th", FULL, config) == "บทที่ 2: BEAT-TITLE " + FULL["premise"]
        # the English one was not overridden
        assert render_template("chapter_writing", "en", FULL, config).startswith("Write chapter 2 of the book")
        # and without the config, the bundle
        assert "เขียนบทที่ 2" in render_template("chapter_writing", "th", FULL)


def test_a_studio_folder_may_add_a_language_and_override_an_old_name(tmp_path):
    with studio(tmp_path, {"chapter_writing.lo.j2": "LAO {{ chapter_num }}",
                           "qc_processing.j2": "OLD QC {{ chapter_num }}"}) as config:
        assert render_template("chapter_writing", "lo", FULL, config) == "LAO 2"
        assert render_template("qc_processing.j2", "en", FULL, config) == "OLD QC 2"


def test_a_studio_template_still_renders_in_the_sandbox(tmp_path):
    with studio(tmp_path, {"export.en.j2": "{{ project.__class__ }}"}) as config:
        with pytest.raises(jinja2.exceptions.SecurityError):
            render_template("export", "en", FULL, config)


def test_a_studio_template_with_a_syntax_error_names_its_file_and_line(tmp_path):
    with studio(tmp_path, {"export.en.j2": "line one\n{% if project %}\nunclosed\n"}) as config:
        with pytest.raises(ConfigError) as err:
            render_template("export", "en", FULL, config)
    assert str(err.value.location).endswith("templates/export.en.j2:3:1")
    assert "template syntax error" in str(err.value)


def test_an_unknown_template_is_a_clear_error():
    with pytest.raises(ConfigError, match="no template nothing.en.j2"):
        render_template("nothing", "en", {})


def test_the_variables_are_documented_in_one_place():
    assert set(FULL) <= set(STUDIO_VARIABLES)
