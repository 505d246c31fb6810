"""Durations (``120s``, ``1h30m``) and chapter ranges (``1,3,5-7``) as users write them.

Both are small languages of their own, so they live here rather than in the
loader; the JSON Schemas repeat :data:`DURATION_PATTERN` and
:data:`CHAPTERS_PATTERN` (a test keeps them identical).
"""

from __future__ import annotations

import math
import re

from .errors import ConfigError, Location

_NUMBER = r"\d+(?:\.\d+)?"

#: A number of seconds (``"90"``, ``"0.5"``) or number+unit parts in the order
#: d, h, m, s, ms, each at most once (``"1h30m"``, ``"2m 30s"``, ``"250ms"``).
#: Written to mean the same in Python and ECMA-262, because JSON Schema uses it too.
DURATION_PATTERN = (
    rf"^\s*(?:{_NUMBER}|(?=\d)(?:({_NUMBER})\s*d\s*)?(?:({_NUMBER})\s*h\s*)?"
    rf"(?:({_NUMBER})\s*m(?!s)\s*)?(?:({_NUMBER})\s*s\s*)?(?:({_NUMBER})\s*ms)?)\s*$"
)
_DURATION_RE = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = (86_400.0, 3_600.0, 60.0, 1.0, 0.001)

#: Longer than this is certainly a typo (and overflows some timer arithmetic).
MAX_DURATION = 365 * 86_400.0

#: ``"5-12"``, ``"1,3,5-7"``; spaces allowed around ``,`` and ``-``.
CHAPTERS_PATTERN = r"^\s*\d+(?:\s*-\s*\d+)?(?:\s*,\s*\d+(?:\s*-\s*\d+)?)*\s*$"
_PART_RE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")

#: One ``chapters:`` entry expands to at most this many items.
MAX_CHAPTERS = 10_000
_MAX_DIGITS = 9  # beyond this int() itself may refuse, and no serial is that long

DURATION_HINT = "a duration like 120s, 250ms, 5m or 1h30m, or a number of seconds"


def parse_duration(
    value: object,
    location: Location | str = "<duration>",
    path: str = "",
    *,
    positive: bool = False,
) -> float:
    """Return ``value`` in seconds.

    ``value`` is a number of seconds (int or float) or a string matching
    :data:`DURATION_PATTERN`. ``location`` and ``path`` say where the value came
    from, for the error. With ``positive``, zero is refused too (timeouts).

    :raises ConfigError: not a duration, negative, not finite or over a year.
    """
    seconds = _seconds(value)
    if seconds is None:
        raise ConfigError(location, path, f"expected {DURATION_HINT}; got {value!r}")
    if seconds > MAX_DURATION:
        raise ConfigError(location, path, f"duration {value!r} is longer than 365 days")
    if positive and seconds == 0:
        raise ConfigError(location, path, f"expected a duration greater than zero; got {value!r}")
    return seconds


def _seconds(value: object) -> float | None:
    """Seconds for a well-formed, finite, non-negative duration, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _DURATION_RE.fullmatch(text)
        if match is None:
            return None
        if not any(match.groups()):  # a bare number
            seconds = float(text)
        else:
            seconds = sum(float(part) * unit for part, unit in zip(match.groups(), _UNIT_SECONDS) if part)
    else:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def expand_chapters(spec: int | str) -> list[int]:
    """The chapter numbers ``spec`` names, in the order written.

    ``spec`` is one chapter (``7``) or a string of numbers and inclusive ranges
    (``"5-12"``, ``"1,3,5-7"``).

    :raises ValueError: with a message for the user: malformed, empty,
        reversed (``"12-5"``), a chapter listed twice, or more than
        :data:`MAX_CHAPTERS` chapters.
    """
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise ValueError(f"expected a chapter number or a range like '5-12' or '1,3,5-7'; got {spec!r}")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"chapter numbers start at 0; got {spec}")
        return [spec]
    if not spec.strip():
        raise ValueError("empty chapter range; write it like '5-12' or '1,3,5-7'")
    chapters: list[int] = []
    seen: set[int] = set()
    for part in spec.split(","):
        low, high = _range_part(part)
        if len(chapters) + (high - low + 1) > MAX_CHAPTERS:
            raise ValueError(f"chapter range {spec!r} has more than {MAX_CHAPTERS:,} chapters")
        for number in range(low, high + 1):
            if number in seen:
                raise ValueError(f"chapter {number} is listed twice in {spec!r}")
            seen.add(number)
            chapters.append(number)
    return chapters


def _range_part(part: str) -> tuple[int, int]:
    match = _PART_RE.fullmatch(part)
    if match is None:
        raise ValueError(f"bad chapter range part {part.strip()!r}; write it like '5-12' or '1,3,5-7'")
    if any(len(digits) > _MAX_DIGITS for digits in match.groups() if digits):
        raise ValueError(f"chapter number in {part.strip()!r} is too large")
    low = int(match[1])
    high = int(match[2]) if match[2] is not None else low
    if high < low:
        raise ValueError(f"reversed chapter range '{low}-{high}'; did you mean '{high}-{low}'?")
    return low, high
