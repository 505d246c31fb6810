"""Opening a job's ``input:`` file, once, for every job type's reader.

An input is a regular file under the job file's folder, or under a folder
the settings list in ``input_roots`` (relative to ``storyloom.yaml``).
Symlinks are resolved before that check, so ``..``, an absolute path or a
link that leads elsewhere is refused unread. The file is opened without
blocking (a FIFO never hangs ``validate``), its type and size are checked on
the open descriptor before a byte is read, and no error quotes a refused
file's content. :func:`read_regular_file` is that open-check-read, shared
with the loading of job and settings files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["MAX_INPUT_BYTES", "FileTooLarge", "InputFile", "NotRegularFile", "open_input", "read_regular_file"]

#: The largest ``input:`` file: 200 MB, the size limit of a batch input file at the best-known batch API.
MAX_INPUT_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class InputFile:
    """A checked ``input:`` file, read: what a job type's ``read_input`` gets."""

    #: The file as the job file names it (its folder joined with ``input:``), for messages.
    name: str
    #: The real path, symlinks resolved.
    path: Path
    data: bytes


def open_input(given: str, job_file: str, roots: Sequence[str], fail: Callable[[str], ConfigError]) -> InputFile:
    """Check and read ``given`` (``input:`` as written, relative to ``job_file``'s folder).

    ``roots`` are further allowed folders (absolute). ``fail(message)`` makes
    the error, located at ``input:`` in the job file.

    :raises ConfigError: the file is outside the allowed folders, missing, not
        a regular file (a FIFO, a device, a folder), unreadable, or larger than
        :data:`MAX_INPUT_BYTES`.
    """
    folder = Path(job_file).parent
    name = str(folder / given)
    real = (folder / given).resolve()
    allowed = [folder.resolve(), *(Path(root).resolve() for root in roots)]
    if not any(real.is_relative_to(root) for root in allowed):
        raise fail(f"{given!r} is outside the job file's folder ({folder.resolve()}); put the file there, "
                   "or list its folder under input_roots in storyloom.yaml")
    try:
        # O_NOFOLLOW: the name resolved above stays a file.
        data = read_regular_file(real, MAX_INPUT_BYTES, follow_links=False)
    except FileNotFoundError:
        raise fail(f"cannot read {name}: file not found") from None
    except NotRegularFile as err:
        raise fail(f"{name} is not a regular file ({err.kind}); give a file of requests") from None
    except FileTooLarge:
        raise fail(f"{name} is larger than the {_size(MAX_INPUT_BYTES)} limit") from None
    except OSError as err:
        raise fail(f"cannot read {name}: {err.strerror or type(err).__name__}") from None
    return InputFile(name=name, path=real, data=data)


class NotRegularFile(Exception):
    """:func:`read_regular_file` refused a FIFO, a device, a folder or a socket."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        #: What the file is instead: ``"a FIFO"``, ``"a device"``, ``"a folder"``, ...
        self.kind = kind


class FileTooLarge(Exception):
    """:func:`read_regular_file` refused a file larger than its limit."""


def read_regular_file(path: Path, limit: int, *, follow_links: bool) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    The file is opened without blocking (a FIFO never hangs) and its type
    and size are checked on the open descriptor before a byte is read.
    ``follow_links=False`` refuses a symlink as the last part of ``path``.

    :raises NotRegularFile: a FIFO, a device, a folder or a socket.
    :raises FileTooLarge: larger than ``limit`` (also if it grew while read).
    :raises OSError: missing (``FileNotFoundError``) or unreadable.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(_kind(info.st_mode))
        if info.st_size > limit:
            raise FileTooLarge()
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(limit + 1 - total, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise FileTooLarge()
    return b"".join(chunks)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def _size(limit: int) -> str:
    mb, rest = divmod(limit, 1024 * 1024)
    return f"{mb} MB" if mb and not rest else f"{limit:,}-byte"
