"""Opening a job's ``input:`` file, once, for every job type's reader.

An input is a regular file under the job file's folder, or under a folder
the settings list in ``input_roots`` (relative to ``storyloom.yaml``).
Symlinks are resolved before that check, so ``..``, an absolute path or a
link that leads elsewhere is refused unread. The file is opened without
blocking (a FIFO never hangs ``validate``), its type and size are checked on
the open descriptor before a byte is read, and no error quotes a refused
file's content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["MAX_INPUT_BYTES", "InputFile", "open_input"]

#: The largest ``input:`` file (the OpenAI Batch API's own limit for one file).
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
        # O_NONBLOCK: opening a FIFO returns at once; O_NOFOLLOW: the name resolved above stays a file.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise fail(f"cannot read {name}: file not found") from None
    except OSError as err:
        raise fail(f"cannot read {name}: {err.strerror or type(err).__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail(f"{name} is not a regular file ({_kind(info.st_mode)}); give a file of requests")
        if info.st_size > MAX_INPUT_BYTES:
            raise fail(f"{name} is larger than the {_size(MAX_INPUT_BYTES)} limit")
        data = _read(fd, MAX_INPUT_BYTES + 1)
    except OSError as err:
        raise fail(f"cannot read {name}: {err.strerror or type(err).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT_BYTES:  # it grew while we read
        raise fail(f"{name} is larger than the {_size(MAX_INPUT_BYTES)} limit")
    return InputFile(name=name, path=real, data=data)


def _read(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(limit - total, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
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
