"""QC checks in code, before any model reads a chapter.

:func:`check_chapter` returns :class:`Finding` s, each with a stable
``code``: ``script`` (too little of the project's script: a Thai chapter in
Latin letters; checked for Thai and the Latin-script languages), ``repetition`` (the same run of words, or of characters in a
script without spaces, over and over), ``leftover`` (template braces,
``TODO``, bracketed placeholders, "As an AI", "Here is the chapter"),
``length`` (outside the tolerance around ``chapter_length``) and ``empty``.
No finding means the chapter passes the code checks.

Lengths: Thai (and other scripts written without spaces between words) in
grapheme clusters, :func:`grapheme_count`; other languages in words.

Grapheme clusters, enough for Thai without a dependency: a cluster is a base
character and the marks after it -- Thai above and below vowels and tone
marks (U+0E31, U+0E34-U+0E3A, U+0E47-U+0E4E), any character
``unicodedata.combining`` says combines, spacing marks (category Mc), zero-
width joiners and variation selectors. Sara am (U+0E33, and Lao's U+0EB3)
joins the cluster before it: Unicode's extended grapheme clusters (UAX #29)
give it Grapheme_Cluster_Break=SpacingMark, which never starts a cluster, so
น้ำ ("water": consonant, tone mark, sara am) is one cluster, as a reader
sees it, and the two spellings of sara am (U+0E33, or U+0E4D U+0E32) count
1 and 2 -- the text is kept byte-exact, never normalised. Leading vowels
(U+0E40-U+0E44) are clusters of their own, as in UAX #29 since Unicode 9.
CR LF is one cluster. Zero-width spaces (U+200B) and BOMs are not counted:
Thai text uses them as invisible word breaks.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Finding", "LENGTH_TOLERANCE", "check_chapter", "grapheme_count", "graphemes", "script_share",
           "spaceless"]

#: A chapter within this share of chapter_length (either way) has the right length.
LENGTH_TOLERANCE = 0.35
#: At least this share of the letters must be in the project's script.
MIN_SCRIPT_SHARE = 0.8
#: Repetition: n-grams of this many words (or grapheme clusters for Thai) ...
NGRAM_WORDS = 10
NGRAM_CLUSTERS = 30
#: ... flagged when more than this share of the text lies in n-grams seen at least REPEATS times.
MAX_REPEATED_SHARE = 0.25
REPEATS = 3

_THAI_MARKS = frozenset({0x0E31, *range(0x0E34, 0x0E3B), *range(0x0E47, 0x0E4F)})
_SARA_AM = frozenset({0x0E33, 0x0EB3})
_JOINERS = frozenset({0x200C, 0x200D, *range(0xFE00, 0xFE10)})
_INVISIBLE = frozenset({0x200B, 0xFEFF})
#: Scripts written without spaces between words: length in grapheme clusters.
_SPACELESS = {"th", "lo", "km", "my", "ja", "zh", "bo"}
#: The letters of each script we check (code point ranges).
_THAI = ((0x0E00, 0x0E7F),)
_LATIN = ((0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F), (0x1E00, 0x1EFF))
#: Languages written in Latin letters; a language in neither list gets no script check.
_LATIN_LANGUAGES = frozenset("en fr de es it pt nl da sv no nb nn fi is et lv lt pl cs sk sl hr bs sq ro hu tr "
                             "id ms tl vi sw ca eu gl ga cy mt af".split())

_LEFTOVERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("template braces", re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{[A-Za-z_][A-Za-z0-9_.]*\}")),
    ("TODO", re.compile(r"\b(?:TODO|TBD|FIXME|XXX)\b")),
    ("a bracketed placeholder", re.compile(
        r"\[(?:[^\[\]\n]{0,40}?(?:insert|name|placeholder|to be determined|tbd|todo|chapter|character|"
        r"ใส่|ชื่อ)[^\[\]\n]{0,40}?)\]", re.IGNORECASE)),
    ("an assistant's aside", re.compile(
        r"\bas an ai\b|\bas a language model\b|\bi(?:'m| am) (?:an ai|sorry)\b|ในฐานะ(?:ที่เป็น)?(?:ปัญญาประดิษฐ์|เอไอ|AI)",
        re.IGNORECASE)),
    ("a reply's preamble", re.compile(
        r"^\s*(?:here(?:'s| is) (?:the |your )?(?:generated |revised |rewritten )?(?:chapter|story|text)|"
        r"นี่คือ(?:บท|เนื้อหา))|\A\s*(?:sure|certainly|of course)[,!]", re.IGNORECASE | re.MULTILINE)),
)


@dataclass(frozen=True)
class Finding:
    """One problem: ``code`` (script, repetition, leftover, length, empty), a
    sentence for the writer (fed back into a rewrite), and figures."""

    code: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


def _base(language: str | None) -> str:
    return (language or "").lower().split("-")[0]


def spaceless(language: str | None) -> bool:
    """Whether the language's script has no spaces between words (Thai): lengths in clusters."""
    return _base(language) in _SPACELESS


def _extends(cp: int) -> bool:
    return (cp in _THAI_MARKS or cp in _SARA_AM or cp in _JOINERS or unicodedata.combining(chr(cp)) != 0
            or unicodedata.category(chr(cp)) == "Mc")


def graphemes(text: str) -> list[str]:
    """``text`` cut into grapheme clusters (see the module docstring); zero-width spaces dropped."""
    clusters: list[str] = []
    for ch in text:
        cp = ord(ch)
        if cp in _INVISIBLE:
            continue
        if clusters and (_extends(cp) or (ch == "\n" and clusters[-1] == "\r")):
            clusters[-1] += ch
        else:
            clusters.append(ch)
    return clusters


def grapheme_count(text: str) -> int:
    """How many grapheme clusters ``text`` has, not counting whitespace."""
    return sum(1 for c in graphemes(text) if not c.isspace())


def _in(cp: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def _script(language: str | None) -> tuple[str, tuple[tuple[int, int], ...]] | None:
    base = _base(language)
    if base == "th":
        return "Thai", _THAI
    if base in _LATIN_LANGUAGES:
        return "Latin", _LATIN
    return None


def script_share(text: str, language: str | None) -> float:
    """The share of ``text``'s letters in the language's script (Thai for
    ``th``, Latin for English and the other Latin-script languages); 1.0 for
    text without letters, or a language whose script is not checked."""
    script = _script(language)
    if script is None:
        return 1.0
    ranges = script[1]
    letters = [ord(ch) for ch in text if ch.isalpha() or 0x0E00 <= ord(ch) <= 0x0E7F]
    if not letters:
        return 1.0
    return sum(1 for cp in letters if _in(cp, ranges)) / len(letters)


def _tokens(text: str, language: str | None) -> list[str]:
    if spaceless(language):
        return [c for c in graphemes(text) if not c.isspace()]
    return re.findall(r"\w+", text.lower())


def _repeated_share(tokens: list[str], n: int) -> tuple[float, str, int]:
    """(share of tokens covered by n-grams seen REPEATS+ times, the commonest n-gram, its count)."""
    if len(tokens) < n * REPEATS:
        return 0.0, "", 0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(tokens)
    for i, gram in enumerate(grams):
        if counts[gram] >= REPEATS:
            for j in range(i, i + n):
                covered[j] = True
    top, times = counts.most_common(1)[0]
    return sum(covered) / len(tokens), "".join(top) if n == NGRAM_CLUSTERS else " ".join(top), times


def length_of(text: str, language: str | None) -> int:
    """A chapter's length as chapter_length counts it: clusters for Thai, words otherwise."""
    return grapheme_count(text) if spaceless(language) else len(re.findall(r"\w+", text))


def check_chapter(text: str, language: str | None, target_length: int | None = None, *,
                  tolerance: float = LENGTH_TOLERANCE) -> list[Finding]:
    """The code checks of one chapter (see the module docstring); [] passes."""
    if not text.strip():
        return [Finding("empty", "The chapter is empty.")]
    findings: list[Finding] = []
    share = script_share(text, language)
    if share < MIN_SCRIPT_SHARE:
        script = _script(language)[0]  # type: ignore[index]  # a share below 1 means a checked script
        findings.append(Finding("script", f"Only {share:.0%} of the letters are in {script} script; the book is "
                                          f"in {language!r}: write the chapter in that language.",
                                {"share": round(share, 3), "minimum": MIN_SCRIPT_SHARE}))
    n = NGRAM_CLUSTERS if spaceless(language) else NGRAM_WORDS
    repeated, top, times = _repeated_share(_tokens(text, language), n)
    if repeated > MAX_REPEATED_SHARE:
        findings.append(Finding("repetition", f"{repeated:.0%} of the text repeats itself; the passage "
                                              f"{top[:60]!r} occurs {times} times: vary it.",
                                {"share": round(repeated, 3), "ngram": top, "count": times}))
    for what, pattern in _LEFTOVERS:
        match = pattern.search(text)
        if match:
            findings.append(Finding("leftover", f"Remove {what}: {match.group(0).strip()[:60]!r}.",
                                    {"kind": what, "text": match.group(0).strip()[:200], "at": match.start()}))
    if target_length:
        length = length_of(text, language)
        unit = "characters" if spaceless(language) else "words"
        low, high = target_length * (1 - tolerance), target_length * (1 + tolerance)
        if not low <= length <= high:
            side = "short" if length < low else "long"
            findings.append(Finding("length", f"The chapter is too {side}: {length} {unit}, the target is "
                                              f"{target_length} (from {low:.0f} to {high:.0f}).",
                                    {"length": length, "target": target_length, "unit": unit}))
    return findings
