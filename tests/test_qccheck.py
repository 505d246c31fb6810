"""QC code checks on fixtures (tests/data/qc/): Thai and English chapters,
wrong script, repetition, leftovers, length; Thai length in grapheme clusters."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyloom.plugins.support.qccheck import Finding, check_chapter, grapheme_count, graphemes, script_share

FIXTURES = Path(__file__).parent / "data" / "qc"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


@pytest.mark.parametrize("name,language,target", [("thai_good.txt", "th", 2500), ("english_good.txt", "en", 1800),
                                                  ("english_good.txt", "en-GB", 1800)])
def test_a_good_chapter_passes(name, language, target):
    assert check_chapter(fixture(name), language, target) == []


def test_a_thai_chapter_in_latin_letters_fails_the_script_check():
    findings = check_chapter(fixture("thai_in_latin.txt"), "th", 2500)
    (script,) = [f for f in findings if f.code == "script"]
    assert script.detail["share"] < 0.1
    assert "Thai script" in script.message
    # the same text is fine for an English book's script check
    assert "script" not in codes(check_chapter(fixture("thai_in_latin.txt"), "en"))


def test_an_english_chapter_in_thai_fails_the_script_check():
    assert "script" in codes(check_chapter(fixture("thai_good.txt"), "en"))


def test_one_thai_phrase_repeated_44_times_fails_repetition():
    (rep,) = [f for f in check_chapter(fixture("thai_repeated.txt"), "th") if f.code == "repetition"]
    assert rep.detail["share"] == 1.0
    assert rep.detail["count"] >= 40
    assert "ฝนตก" in rep.detail["ngram"]


def test_an_english_loop_fails_repetition():
    good = fixture("english_good.txt")
    looped = good[:3000] + (" She opened the door and the rain came in again." * 40)
    assert "repetition" in codes(check_chapter(looped, "en"))
    assert "repetition" not in codes(check_chapter(good, "en"))


def test_leftovers_are_found_one_finding_each():
    findings = [f for f in check_chapter(fixture("english_leftovers.txt"), "en", 600) if f.code == "leftover"]
    kinds = {f.detail["kind"]: f.detail["text"] for f in findings}
    assert kinds == {"template braces": "{{ beat.title }}", "TODO": "TODO",
                     "a bracketed placeholder": "[Insert character name here]", "an assistant's aside": "As an AI",
                     "a reply's preamble": "Here is the chapter"}


@pytest.mark.parametrize("text", ["บทนี้ [ใส่ชื่อตัวละคร] เดินไป", "ในฐานะปัญญาประดิษฐ์ ฉันไม่สามารถ", "นี่คือบทที่สาม",
                                  "Then {name} left.", "[To be determined]", "Sure! The rain fell.",
                                  "Rain.\n\nHere is the revised chapter:\nRain again."])
def test_more_leftovers(text):
    assert "leftover" in codes(check_chapter(text, "th" if "ใ" in text or "นี่" in text else "en"))


@pytest.mark.parametrize("text", ["She wrote [sic] in the margin.", "The set {1, 2} was small.",
                                  "A todo list lay on the table.", "Rain fell.\nSure, she thought, it will stop."])
def test_ordinary_text_is_no_leftover(text):
    assert "leftover" not in codes(check_chapter(text, "en"))


def test_length_in_words_for_english_with_a_tolerance():
    text = fixture("english_good.txt")
    words = len(text.split())
    assert check_chapter(text, "en", words) == []
    assert check_chapter(text, "en", int(words / 1.3)) == []  # 30% long: within 35%
    (long,) = check_chapter(text, "en", words // 2)
    assert long.code == "length" and "too long" in long.message and long.detail["unit"] == "words"
    (short,) = check_chapter(text, "en", words * 2)
    assert "too short" in short.message


def test_length_in_grapheme_clusters_for_thai():
    text = fixture("thai_good.txt")
    clusters = grapheme_count(text)
    assert clusters < len(text.replace(" ", "").replace("\n", ""))  # marks do not count on their own
    assert check_chapter(text, "th", clusters) == []
    (short,) = check_chapter(text, "th", clusters * 2)
    assert short.detail == {"length": clusters, "target": clusters * 2, "unit": "characters"}


@pytest.mark.parametrize("text,count", [
    ("น้ำ", 1),            # consonant + tone mark + sara am: one cluster (sara am is a SpacingMark in UAX #29)
    ("น\u0e49\u0e4d\u0e32", 2),  # the decomposed spelling of sara am: nikhahit joins, sara aa stands alone
    ("เกี่ยว", 4),          # leading vowel, consonant + two marks, two consonants
    ("ไม้", 2),
    ("กำ", 1),
    ("ก\u200bข", 2),        # a zero-width space is not counted
    ("e\u0301a", 2),        # a general combining mark (unicodedata.combining)
    ("हिन्दी", 3),           # Devanagari: a spacing vowel sign (Mc) and a virama join their consonant
    ("ab c", 3),            # whitespace is not counted
])
def test_grapheme_count(text, count):
    assert grapheme_count(text) == count


def test_graphemes_keep_the_text_byte_exact():
    text = "น้ำใจ\r\nเด็ก\u200bดี"
    assert "".join(graphemes(text)) == text.replace("\u200b", "")
    assert "\r\n" in graphemes(text)


def test_script_share():
    assert script_share("ฝนตก rain", "th") == 0.5
    assert script_share("ฝนตก rains", "th") == pytest.approx(4 / 9)
    assert script_share("1234 !!", "th") == 1.0  # no letters: nothing to judge
    assert script_share("Café déjà vu", "fr") == 1.0
    assert script_share("Lorem ipsum", "ja") == 1.0  # a script not checked: no finding
    assert script_share("ฝนตก", "en-GB") == 0.0


def test_an_empty_chapter():
    assert codes(check_chapter(" \n ", "th", 100)) == ["empty"]
