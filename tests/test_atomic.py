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


def test_a_link_planted_at_the_very_next_temporary_name_is_not_followed(tmp_path: Path):
    from storyloom import atomic

    out, outside = tmp_path / "out", tmp_path / "outside.txt"
    write_atomic(out / "c0.md", "first")  # the folder exists and this process has its tag
    outside.write_text("precious", encoding="utf-8")
    upcoming = next(atomic._counter) + 1  # the name the next write would take
    (out / f".c1.md{TMP_MARK}{atomic._tag}{upcoming:x}").symlink_to(outside)
    write_atomic(out / "c1.md", "the chapter")
    assert outside.read_text(encoding="utf-8") == "precious"
    assert (out / "c1.md").read_text(encoding="utf-8") == "the chapter" and not (out / "c1.md").is_symlink()
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == ["c0.md", "c1.md"]


def test_a_folder_removed_after_a_write_is_made_again(tmp_path: Path):
    out = tmp_path / "job"
    write_atomic(out / "a.md", "one")
    (out / "a.md").unlink()
    out.rmdir()  # an operator cleaning up mid-run: the folder is remembered as made
    write_atomic(out / "b.md", "two")
    assert (out / "b.md").read_text(encoding="utf-8") == "two"


def test_text_is_written_whole_as_utf8(tmp_path: Path):
    text = "ฝนตก\n" * 50_000 + "\U0001F600 end"  # over 600 KB: more than one os.write may take
    write_atomic(tmp_path / "big.md", text)
    assert (tmp_path / "big.md").read_bytes() == text.encode("utf-8")


def test_a_forked_child_draws_its_own_temporary_names(tmp_path: Path):
    from storyloom import atomic

    write_atomic(tmp_path / "parent.md", "p")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one write, then report the tag it used
        try:
            write_atomic(tmp_path / "child.md", "c")
            os.write(write, (atomic._tag or "").encode())
        finally:
            os._exit(0)
    os.close(write)
    child_tag = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_tag and child_tag != atomic._tag
    assert (tmp_path / "child.md").read_text(encoding="utf-8") == "c"
