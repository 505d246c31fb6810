"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path

TMP_MARK = ".storyloom-tmp-"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temporary(folder: Path) -> int:
    """Remove temporary files left in ``folder`` (by a killed process, say)."""
    removed = 0
    if folder.is_dir():
        for tmp in folder.glob(f"*{TMP_MARK}*"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
