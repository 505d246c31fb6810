"""How error messages show a value and a path, shared by every loading stage."""

from __future__ import annotations

import re
from collections.abc import Iterable


def describe(value: object) -> str:
    """A value as an error message shows it: ``string 'five'``, ``integer 5``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}" if abs(value) < 10**30 else "a very large integer"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return "an empty string" if not value else f"string {shown!r}"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def format_path(path: Iterable[str | int]) -> str:
    """``("items", 2, "item_id")`` -> ``items[2].item_id``; odd keys are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out
