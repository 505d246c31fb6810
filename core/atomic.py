"""Writing files so that a reader never sees half of one.

A temporary is created beside the target with ``O_CREAT | O_EXCL`` (and
``O_NOFOLLOW``) at a name no one else picks (``.<file>.storyloom-tmp-`` with
this process's random tag and a counter; :func:`tempfile.mkstemp`'s random
names if that one is taken): a link planted in the folder, at any name, is
never followed, and a name already taken is never written into. A target that
is itself a symlink is replaced by the new file, not written through, so a
write stays in its folder. (The folder itself is the caller's: an output
folder that is a link is taken as meant.)

One result file per item is the commonest write, so a write costs four
system calls: open, write, close, rename. Folders already made are
remembered (made again if one disappears), the mode comes from ``open``'s
``0o666`` less the umask rather than a separate ``fchmod``, and the bytes go
out with ``os.write`` rather than through a text file object (whose
``isatty``, ``fstat`` and ``lseek`` calls cost as much as the write).
"""

from __future__ import annotations

import itertools
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

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
#: Folders this process has made (or found): no mkdir per write.
_made: set[str] = set()
_counter = itertools.count()
_tag: str | None = None  # this process's random part of every temporary's name


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a new temporary file beside ``path``, then rename it over ``path``."""
    write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a new temporary file beside ``path``, then rename it over ``path``."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    if folder not in _made:
        os.makedirs(folder or ".", exist_ok=True)
        _made.add(folder)
    try:
        fd, tmp = _create(folder, name)
    except FileNotFoundError:  # the folder went away since: make it again
        os.makedirs(folder or ".", exist_ok=True)
        fd, tmp = _create(folder, name)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _create(folder: str, name: str) -> tuple[int, str]:
    """A new temporary beside ``folder/name``, opened for writing: (fd, path)."""
    global _tag
    if _tag is None:
        _tag = os.urandom(6).hex()
    tmp = os.path.join(folder, f".{name}{TMP_MARK}{_tag}{next(_counter):x}")
    try:
        return os.open(tmp, _FLAGS, 0o666), tmp  # the umask applies: 0666 less it, as for any new file
    except FileExistsError:
        # Something is at our name (a planted link, say): never touch it;
        # take one of mkstemp's random names instead.
        fd, tmp = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}{TMP_MARK}")
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        return fd, tmp


def _forget_tag() -> None:
    global _tag
    _tag = None  # a forked child draws its own, so parent and child never pick the same name


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_tag)


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
