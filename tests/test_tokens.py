"""Script-aware token estimates and the per-model calibrator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storyloom.provider import Request
from storyloom.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_OVERHEAD,
    TokenCalibrator,
    estimate_request_tokens,
    estimate_tokens,
    estimate_tpm_cost,
)

ENGLISH = "The rain kept on all night, and the river rose over the old stone steps. " * 20
THAI = "ฝนตกพรำ ๆ ทั้งคืน แม่น้ำเอ่อล้นขึ้นมาถึงบันไดหินเก่า " * 20
CHINESE = "雨下了一整夜，河水漫过了古老的石阶。" * 20


def test_empty_text_is_free():
    assert estimate_tokens("") == 0


def test_english_is_about_four_characters_a_token():
    assert estimate_tokens(ENGLISH) == pytest.approx(len(ENGLISH) / 4, rel=0.01)
    assert estimate_tokens("Hi") == 1


def test_thai_costs_about_a_token_per_one_and_a_quarter_characters():
    thai_chars = sum(1 for ch in THAI if "\u0e00" <= ch <= "\u0e7f")
    spaces = len(THAI) - thai_chars
    assert estimate_tokens(THAI) == pytest.approx(thai_chars / 1.25 + spaces / 4, rel=0.01)
    # Per character, Thai costs more than three times English.
    assert estimate_tokens(THAI) / len(THAI) > 3 * estimate_tokens(ENGLISH) / len(ENGLISH)


def test_cjk_is_about_a_token_a_character():
    assert estimate_tokens(CHINESE) == len(CHINESE)


def test_other_scripts_sit_between():
    russian = "Дождь шёл всю ночь, и река поднялась до старых каменных ступеней. " * 10
    per_char = estimate_tokens(russian) / len(russian)
    assert estimate_tokens(ENGLISH) / len(ENGLISH) < per_char < estimate_tokens(THAI) / len(THAI)


def test_accented_latin_costs_a_little_more_than_ascii():
    assert estimate_tokens("é" * 300) == 100
    assert estimate_tokens("e" * 300) == 75


def test_mixed_text_adds_up():
    assert estimate_tokens(ENGLISH + THAI) in (estimate_tokens(ENGLISH) + estimate_tokens(THAI) - 1,
                                               estimate_tokens(ENGLISH) + estimate_tokens(THAI))


@given(st.text(), st.text())
def test_estimates_are_additive_within_rounding(a, b):
    joined, parts = estimate_tokens(a + b), estimate_tokens(a) + estimate_tokens(b)
    assert parts - 1 <= joined <= parts


@given(st.text(min_size=1))
def test_estimates_are_at_least_one_and_at_most_a_token_a_character(text):
    assert 1 <= estimate_tokens(text) <= len(text)


def test_request_estimate_adds_message_overhead():
    request = Request(messages=({"role": "system", "content": "Translate to Thai."},
                                {"role": "user", "content": ENGLISH}), max_tokens=500)
    content = estimate_tokens("Translate to Thai.") + estimate_tokens(ENGLISH)
    assert estimate_request_tokens(request) == content + 2 * MESSAGE_OVERHEAD + REPLY_OVERHEAD
    assert estimate_tpm_cost(request) == estimate_request_tokens(request) + 500


def test_tpm_cost_uses_the_calibration():
    request = Request(messages=({"role": "user", "content": THAI},), max_tokens=100)
    calibrator = TokenCalibrator()
    for _ in range(20):
        calibrator.observe(100, 150)
    assert estimate_tpm_cost(request, calibrator) == calibrator.apply(estimate_request_tokens(request)) + 100
    assert estimate_tpm_cost(request, calibrator) > estimate_tpm_cost(request)


def test_calibrator_starts_neutral():
    calibrator = TokenCalibrator()
    assert calibrator.factor == 1.0
    assert calibrator.apply(123) == 123
    assert calibrator.apply(0) == 0


def test_calibrator_converges_to_the_observed_ratio():
    calibrator = TokenCalibrator()
    for _ in range(50):
        calibrator.observe(1000, 600)
    assert calibrator.factor == pytest.approx(0.6)
    assert calibrator.apply(1000) == 600


def test_calibrator_is_bounded():
    high, low = TokenCalibrator(), TokenCalibrator()
    for _ in range(10):
        high.observe(10, 10_000)
        low.observe(10_000, 10)
    assert high.factor == 3.0
    assert low.factor == 0.5


def test_calibrator_follows_change_and_weighs_big_prompts_more():
    calibrator = TokenCalibrator()
    for _ in range(30):
        calibrator.observe(1000, 2000)
    for _ in range(30):
        calibrator.observe(1000, 1000)
    assert calibrator.factor == pytest.approx(1.0, abs=0.01)  # old observations fade
    weighted = TokenCalibrator(decay=0.5)
    weighted.observe(10_000, 20_000)
    weighted.observe(10, 5)
    assert weighted.factor > 1.9  # one tiny prompt barely moves it


def test_calibrator_ignores_empty_observations():
    calibrator = TokenCalibrator()
    calibrator.observe(0, 100)
    calibrator.observe(100, 0)
    assert calibrator.factor == 1.0 and calibrator.observations == 0


def test_calibrator_arguments():
    with pytest.raises(ValueError):
        TokenCalibrator(low=2.0)
    with pytest.raises(ValueError):
        TokenCalibrator(decay=1.0)
