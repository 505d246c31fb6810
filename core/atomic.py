"""Writing files so that a reader never sees half of one.

A temporary is created beside the target by :func:`tempfile.mkstemp`
(``O_CREAT | O_EXCL``, a random name): a link planted in the folder, at any
name, is never followed. A target that is itself a symlink is replaced by the
new file, not written through, so a write stays in its folder. (The folder
itself is the caller's: an output folder that is a link is taken as meant.)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

#: In every temporary's name (``.<file>.storyloom-tmp-<random>``), so leftovers can be found.
#: The leading dot keeps them apart from outputs: an item id cannot start with one.
TMP_MARK = ".storyloom-tmp-"
#: A temporary younger than this may be another process's write in flight: left alone.
TMP_MIN_AGE_S = 60.0

# mkstemp makes 0600 files; outputs get the usual 0666 less the umask, read once here
# (os.umask can only be read by setting it, which is not safe once threads write).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a new temporary file beside ``path``, then rename it over ``path``."""
    write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a new temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporary(folder: Path, *, min_age: float = TMP_MIN_AGE_S) -> int:
    """Remove temporary files left in ``folder`` (by a killed process, say)
    that are at least ``min_age`` seconds old; the number removed.

    Only hidden ``.<file>.storyloom-tmp-*`` names are temporaries: a visible
    name holding the mark is an output (item ids may contain it). A link there
    is removed itself, never what it points at.
    """
    removed = 0
    if folder.is_dir():
        now = time.time()
        for tmp in folder.glob(f".*{TMP_MARK}*"):
            try:
                if now - tmp.lstat().st_mtime < min_age:
                    continue  # perhaps another writer's, about to be renamed
                tmp.unlink()
            except FileNotFoundError:
                continue  # renamed or removed meanwhile
            removed += 1
    return removed
