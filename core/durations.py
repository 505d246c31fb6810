"""Durations (``120s``, ``1h30m``) as users write them.

A small language of its own, so it lives here rather than in the loader; the
JSON Schemas repeat :data:`DURATION_PATTERN` (a test keeps them identical).
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
