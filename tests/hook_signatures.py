"""Each hook's signature line in docs/hooks.md, computed from core/hookspecs.py.

``tests/test_hooks.py`` fails when a section's line differs from this;
``python tests/hook_signatures.py`` writes them into docs/hooks.md (each
right under its ``### loom_...`` heading).
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from storyloom import hookspecs

DOC = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"
MARK = "Signature: "


def _shown(annotation: object) -> str:
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # "'Job'": a string under __future__
        text = text[1:-1]
    return text


def signature_line(name: str) -> str:
    """``Signature: `loom_x(a: A) -> R` `` plus what pluggy does with its results."""
    spec = getattr(hookspecs, name)
    sig = inspect.signature(spec)
    params = ", ".join(p.name if p.annotation is p.empty else f"{p.name}: {_shown(p.annotation)}"
                       for p in sig.parameters.values())
    line = f"{MARK}`{name}({params}) -> {_shown(sig.return_annotation)}`"
    opts = getattr(spec, "storyloom_spec", {}) or {}
    if opts.get("firstresult"):
        line += " (firstresult: the first non-None answer wins)"
    if opts.get("historic"):
        line += " (historic)"
    return line


def hook_names() -> list[str]:
    return sorted(n for n, fn in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("loom_"))


def documented_lines(text: str) -> dict[str, str | None]:
    """The signature line under each ``### loom_`` heading (None: the section has none)."""
    found: dict[str, str | None] = {}
    for match in re.finditer(r"^### (loom_\w+)\n\n(.*)$", text, re.M):
        line = match.group(2)
        found[match.group(1)] = line if line.startswith(MARK) else None
    return found


def rewrite(text: str) -> str:
    def fix(match: re.Match) -> str:
        name, rest = match.group(1), match.group(2)
        if name not in hook_names():
            return match.group(0)
        if rest.startswith(MARK):  # replace the line
            return f"### {name}\n\n{signature_line(name)}"
        return f"### {name}\n\n{signature_line(name)}\n\n{rest}"  # add one above the section's text

    return re.sub(r"^### (loom_\w+)\n\n(.*)$", fix, text, flags=re.M)


if __name__ == "__main__":
    new = rewrite(DOC.read_text(encoding="utf-8"))
    DOC.write_text(new, encoding="utf-8")
    sys.stdout.write(f"{DOC}: {len(hook_names())} hook signatures written\n")
