"""core/atomic.py: a planted symlink can never redirect a write."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from storyloom.atomic import TMP_MARK, remove_temporary, write_atomic


def test_a_symlink_at_the_old_predictable_temporary_name_is_not_followed(tmp_path: Path):
    out, outside = tmp_path / "out", tmp_path / "outside.txt"
    out.mkdir()
    outside.write_text("precious", encoding="utf-8")
    target = out / "c1.md"
    (out / f"c1.md{TMP_MARK}{os.getpid()}").symlink_to(outside)
    write_atomic(target, "the chapter")
    assert outside.read_text(encoding="utf-8") == "precious"
    assert target.read_text(encoding="utf-8") == "the chapter" and not target.is_symlink()


def test_symlinks_planted_at_every_name_in_the_folder_do_not_redirect_a_write(tmp_path: Path):
    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    for i in range(50):  # whatever name a temporary might take, a link there points outside
        (out / f"c1.md{TMP_MARK}{i}").symlink_to(outside / f"victim{i}")
    write_atomic(out / "c1.md", "text")
    assert list(outside.iterdir()) == []
    assert (out / "c1.md").read_text(encoding="utf-8") == "text"


def test_a_target_that_is_a_symlink_is_replaced_not_written_through(tmp_path: Path):
    out, outside = tmp_path / "out", tmp_path / "outside.txt"
    out.mkdir()
    outside.write_text("precious", encoding="utf-8")
    (out / "report.md").symlink_to(outside)
    write_atomic(out / "report.md", "# Report")
    assert outside.read_text(encoding="utf-8") == "precious"
    assert not (out / "report.md").is_symlink()
    assert (out / "report.md").read_text(encoding="utf-8") == "# Report"


def test_written_files_keep_the_umask_permissions_not_mkstemps_0600(tmp_path: Path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_atomic(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_temporary_names_are_unpredictable_and_left_none_behind(tmp_path: Path):
    write_atomic(tmp_path / "a.txt", "one")
    write_atomic(tmp_path / "a.txt", "two")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def _aged(path: Path, seconds: float = 120) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def test_remove_temporary_removes_old_leftovers_and_a_link_not_what_it_points_at(tmp_path: Path):
    fd, leftover = tempfile.mkstemp(dir=tmp_path, prefix=f".a.txt{TMP_MARK}")
    os.close(fd)
    _aged(Path(leftover))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("precious", encoding="utf-8")
    link = tmp_path / f".c.txt{TMP_MARK}99"
    link.symlink_to(outside)
    _aged(link)
    (tmp_path / "keep.txt").write_text("kept", encoding="utf-8")
    assert remove_temporary(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert outside.read_text(encoding="utf-8") == "precious"  # the link went, not what it points at


def test_remove_temporary_keeps_files_that_only_look_like_temporaries(tmp_path: Path):
    for name in ("a.storyloom-tmp-1.md", f"b.txt{TMP_MARK}1234"):  # valid item ids, finished outputs
        (tmp_path / name).write_text("real", encoding="utf-8")
        _aged(tmp_path / name)
    assert remove_temporary(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.storyloom-tmp-1.md", f"b.txt{TMP_MARK}1234"]


def test_remove_temporary_leaves_another_writers_fresh_temporary(tmp_path: Path):
    fd, fresh = tempfile.mkstemp(dir=tmp_path, prefix=f".a.txt{TMP_MARK}")
    os.close(fd)
    assert remove_temporary(tmp_path) == 0
    assert Path(fresh).exists()
