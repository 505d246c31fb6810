"""Book project files: projects/<project_id>.yaml beside storyloom.yaml, loaded
through the document and validation stages (malformed ones are in the
malformed corpus, tests/data/malformed/project_*)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyloom import ConfigError
from storyloom.config import Options, make_config
from storyloom.projects import find_projects_dir, load_project, project_path

THAI = """\
project_id: lantern-th
title: "ถนนโคมไฟ <ภาคหนึ่ง>"
language: th
genre: fantasy
premise: เด็กสาวคนหนึ่งตามหาโคมไฟที่หายไปของหมู่บ้าน
style: {tone: อบอุ่น, pov: บุรุษที่สาม, tense: อดีต, voice: เรียบง่าย}
chapters: 3
chapter_length: 2500
characters:
  - name: มะลิ
    role: ตัวเอก
    traits: [กล้าหาญ, ดื้อ]
    relationships: {ต้น: เพื่อนสนิท}
outline:
  - {chapter: 1, title: ประตู, characters: [มะลิ], events: ออกเดินทาง, hook: เสียงกระดิ่ง}
review: [outline]
notes: ใช้ภาษาง่าย
"""

ENGLISH = """\
project_id: lantern-en
title: The Lantern Road
language: en-GB
premise: A girl looks for her village's lost lantern.
chapters: 12
chapter_length: 1800
"""


def write(folder: Path, name: str, text: str) -> Path:
    (folder / "projects").mkdir(exist_ok=True)
    path = folder / "projects" / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_thai_project_loads_as_written(tmp_path):
    data = load_project(write(tmp_path, "lantern-th.yaml", THAI))
    assert data["title"] == "ถนนโคมไฟ <ภาคหนึ่ง>"
    assert data["language"] == "th"
    assert data["style"]["pov"] == "บุรุษที่สาม"
    assert data["characters"][0]["relationships"] == {"ต้น": "เพื่อนสนิท"}
    assert data["outline"][0]["hook"] == "เสียงกระดิ่ง"
    assert data["review"] == ["outline"]


def test_a_project_id_must_be_the_file_name(tmp_path):
    path = write(tmp_path, "other.yaml", ENGLISH)
    with pytest.raises(ConfigError) as err:
        load_project(path)
    assert err.value.location.line == 1 and err.value.location.column == 13
    assert "'lantern-en' is not the file's name ('other')" in str(err.value)


def test_the_projects_folder_is_beside_the_settings_file(tmp_path):
    assert find_projects_dir(tmp_path) == tmp_path / "projects"
    assert find_projects_dir(None) == Path("projects")
    assert project_path(tmp_path / "projects", "../etc") is None
    assert project_path(tmp_path / "projects", "a/b") is None
    assert project_path(tmp_path / "projects", "x") == tmp_path / "projects" / "x.yaml"


def test_config_project_finds_caches_and_misses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storyloom.yaml").write_text("default_models: [simulated]\n")
    path = write(tmp_path, "lantern-en.yaml", ENGLISH)
    with make_config(Options(autoload=False), start_dir=tmp_path) as config:
        first = config.project("lantern-en")
        assert first is not None and first["chapters"] == 12
        path.write_text("not: [valid")  # cached: the config read it once
        assert config.project("lantern-en") is first
        assert config.project("no-such-book") is None
        assert config.project("../storyloom") is None


def test_config_project_reports_a_bad_file_at_its_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storyloom.yaml").write_text("default_models: [simulated]\n")
    write(tmp_path, "bad.yaml", "project_id: bad\ntitle: T\nlanguage: en\nchapters: 0\n")
    with make_config(Options(autoload=False), start_dir=tmp_path) as config:
        with pytest.raises(ConfigError) as err:
            config.project("bad")
    assert str(err.value).startswith("projects/bad.yaml:4:11: at chapters: expected integer >= 1, got")


def test_loading_a_job_checks_the_project_files_its_items_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storyloom.yaml").write_text("default_models: [simulated]\n")
    write(tmp_path, "lantern-en.yaml", ENGLISH)
    write(tmp_path, "broken.yaml", "project_id: broken\ntitle: T\nlanguage: en\nstyle: {tone: 3}\n")
    job = tmp_path / "job.yaml"
    job.write_text("job_id: j\njob_type: qc_processing\nitems:\n  - {item_id: a, project_id: lantern-en}\n"
                   "  - {item_id: b, project_id: unwritten}\n")
    with make_config(Options(autoload=False), job_file=job) as config:
        assert config.load_job(job).items[0].project_id == "lantern-en"
    job.write_text(job.read_text() + "  - {item_id: c, project_id: broken}\n")
    with make_config(Options(autoload=False), job_file=job) as config:
        with pytest.raises(ConfigError, match=r"^projects/broken.yaml:4:15: at style.tone: expected string"):
            config.load_job(job)
