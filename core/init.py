"""``storyloom init [DIR]``: a new studio folder from the bundled template.

The template is package data (``storyloom/studio_template/``), so an
installed wheel has it. Nothing is overwritten: every file the template would
write is checked first, and if one exists the command refuses, naming them
all, before writing anything. A write that fails half-way (a full disk)
removes what this call created, so a folder is either initialised or left as
it was.
"""

from __future__ import annotations

import os
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from .errors import UsageError

__all__ = ["TEMPLATE", "init_studio", "template_files"]

#: The template's package folder, inside ``storyloom``.
TEMPLATE = "studio_template"


def template_files() -> dict[str, bytes]:
    """The template's files, by their path relative to the studio folder (``/``-separated)."""
    found: dict[str, bytes] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name.startswith((".", "__")):  # no __pycache__ or editor leftovers
                continue
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                found[prefix + child.name] = child.read_bytes()

    walk(files("storyloom").joinpath(TEMPLATE), "")
    if "storyloom.yaml" not in found:  # an install without its package data
        raise UsageError(f"storyloom's studio template is missing from {files('storyloom')}; reinstall storyloom")
    return found


def init_studio(folder: str | os.PathLike) -> list[Path]:
    """Write the template into ``folder`` (made if missing); return the paths written.

    Raises UsageError, writing nothing, if ``folder`` is a file or any file the
    template holds is already there.
    """
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise UsageError(f"init {root}: exists and is not a folder")
    wanted = template_files()
    taken = [name for name in wanted if os.path.lexists(root / name)]
    if taken:
        raise UsageError(f"init {root}: would overwrite {', '.join(taken)}; nothing was written "
                         "(move them away, or init another folder)")
    made_dirs: list[Path] = []
    written: list[Path] = []
    try:
        for name, data in wanted.items():
            path = root / name
            for parent in reversed(path.parents):  # the folders it needs, outermost first, DIR's own included
                if not parent.exists():
                    parent.mkdir()
                    made_dirs.append(parent)
            with open(path, "xb") as f:  # exclusive: never write into a file that appeared meanwhile
                written.append(path)
                f.write(data)
    except OSError as exc:
        for path in reversed(written):
            path.unlink(missing_ok=True)
        for parent in reversed(made_dirs):
            try:
                parent.rmdir()
            except OSError:
                pass
        raise UsageError(f"init {root}: cannot write {exc.filename or root}: {exc.strerror or exc}; "
                         "nothing was kept") from None
    return written
