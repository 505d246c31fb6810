"""Small faults with a clean ending: a lone surrogate in input, a JSON job file
with a trailing comma, ``resume`` of a job that is not stored, and a reader
that closes the pipe early (``storyloom status | head -1``).

Each through the real command in a subprocess: exit code, one line on
stderr naming the file, line and column, no traceback, nothing stored.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from storyloom.api import validate_job
from storyloom.errors import ConfigError
from storyloom.loader import load_job
from storyloom.settings import Settings
from test_cli import cli, project
from test_loader import KNOWN
from test_prompts import BATCH_INPUT, write_jsonl
from test_prompts import settings as prompts_settings

PROMPTS_JOB = "job_id: lone\njob_type: prompts\ninput: requests.jsonl\n"
GOOD_LINE = ('{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", '
             '"body": {"messages": [{"role": "user", "content": "hello"}]}}')
# A JSON escape: the file itself is plain ASCII.
LONE_LINE = GOOD_LINE.replace("r1", "r2").replace("hello", "broken \\ud800 half")


def assert_usage_error(out: subprocess.CompletedProcess, where: str, *words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"storyloom: error: {where}"), out.stderr
    for word in words:
        assert word in lines[0], lines[0]


def settings(tmp_path: Path) -> None:
    project(tmp_path)  # storyloom.yaml with a simulated model
    (tmp_path / "jobs" / "cli-job.yaml").unlink()


# -- a lone surrogate


def test_a_lone_surrogate_in_an_input_line_fails_validate_with_its_place(tmp_path):
    settings(tmp_path)
    (tmp_path / "requests.jsonl").write_text(f"{GOOD_LINE}\n{LONE_LINE}\n", encoding="ascii")
    (tmp_path / "job.yaml").write_text(PROMPTS_JOB)
    out = cli("validate", "job.yaml", cwd=tmp_path)
    column = LONE_LINE.index("\\ud800") + 1
    assert_usage_error(out, f"requests.jsonl:2:{column}: ", "lone surrogate")


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_lone_surrogate_in_an_input_line_stores_nothing(loom, command):
    settings(loom.path)
    loom.write("requests.jsonl", f"{GOOD_LINE}\n{LONE_LINE}\n")
    with pytest.raises(ConfigError, match=r"requests.jsonl:2:\d+: a lone surrogate"):
        getattr(loom, command)(PROMPTS_JOB)
    assert not loom.state_dir.exists()  # not even an empty store


def test_a_surrogate_pair_in_an_input_line_is_one_character(loom):
    settings(loom.path)
    loom.write("requests.jsonl", GOOD_LINE.replace("hello", "\\ud83d\\ude00") + "\n")
    job = validate_job(loom.write("job.yaml", PROMPTS_JOB))
    assert job.items[0].fields["body"]["messages"][0]["content"] == "\U0001F600"


def validation_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        validate_job(path)
    return str(info.value)


@pytest.mark.parametrize("name,text,where", [
    ("job.yaml", 'job_id: j\njob_type: chapter_writing\nitems:\n  - {item_id: a, project_id: p, chapter_num: 1,'
                 ' title: "a \\ud800 b"}\n', "4:"),
    ("job.json", '{"job_id": "j", "job_type": "chapter_writing",\n "items": [{"item_id": "a", "project_id": "p",'
                 ' "chapter_num": 1, "title": "\\udc00"}]}\n', "2:"),
    ("job.json", '{"job_id": "j", "job_type": "chapter_writing", "\\ud800": 1,\n "items": []}\n', "1:"),
])
def test_a_lone_surrogate_in_a_job_file_is_refused_not_changed(loom, name, text, where):
    settings(loom.path)
    message = validation_error(loom.write(name, text))
    assert message.startswith(f"{loom.path / name}:{where}") and "lone surrogate" in message, message


def test_a_lone_surrogate_in_the_settings_file_names_it(loom):
    settings(loom.path)
    path = loom.path / "storyloom.yaml"
    path.write_text(path.read_text() + 'description: "\\udfff"\n')
    message = validation_error(loom.write("job.yaml", "job_id: j\njob_type: chapter_writing\nitems:\n"
                                                      "  - {item_id: a, project_id: p, chapter_num: 1}\n"))
    line = path.read_text().splitlines().index('description: "\\udfff"') + 1
    assert message.startswith(f"{path}:{line}:") and "lone surrogate" in message, message


def test_escaped_pairs_and_escaped_backslashes_are_kept(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"job_id": "j", "job_type": "chapter_writing", "items": [{"item_id": "a", "project_id": "p", '
                    '"chapter_num": 1, "title": "\\ud83d\\ude00 \\\\ud800"}]}')
    job = load_job(path, Settings(), KNOWN)
    assert job.items[0].fields["title"] == "\U0001F600 \\ud800"


def test_a_lone_surrogate_in_a_model_reply_is_stored_as_a_replacement_character(loom, fake_provider):
    """A provider's text is data: half a surrogate pair cannot be stored as
    UTF-8, so it becomes U+FFFD rather than crash the run."""
    fake_provider.configure("m1", text="broken \ud800 reply")
    loom.write("storyloom.yaml", prompts_settings(fake_provider))
    write_jsonl(loom, BATCH_INPUT[:2])
    result = loom.run("job_id: replies\njob_type: prompts\ninput: requests.jsonl\n")
    result.assert_outcomes(completed=2)
    stored = loom.read(lambda store: store.result("replies", "request-1"))
    assert stored[0] == "broken \ufffd reply"
    assert (loom.out_dir / "replies" / "request-1.txt").read_text(encoding="utf-8") == "broken \ufffd reply"


# -- strict JSON


@pytest.mark.parametrize("text,where,what", [
    ('{"job_id": "j", "job_type": "chapter_writing", "items": [],}\n', "1:60", "a trailing comma?"),
    ('{"job_id": "j",\n "job_type": "chapter_writing",\n "items": [1,]}\n', "3:14", "a trailing comma?"),
    ('{"job_id": "j",\n "job_type": "chapter_writing",\n "items": [],\n}\n', "4:1", "a trailing comma?"),
    ("{'job_id': 'j', 'job_type': 'chapter_writing', 'items': []}\n", "1:2", "Expecting property name"),
    ('{"job_id": "j", "job_type": "chapter_writing", "items": [], "title": \'x\'}\n', "1:70",
     "Expecting value"),
])
def test_a_json_job_file_must_be_strict_json(loom, text, where, what):
    settings(loom.path)
    message = validation_error(loom.write("job.json", text))
    assert message.startswith(f"{loom.path / 'job.json'}:{where}: invalid JSON: ") and what in message, message


def test_a_trailing_comma_is_exit_2_from_the_command(tmp_path):
    settings(tmp_path)
    (tmp_path / "job.json").write_text('{"job_id": "j", "job_type": "chapter_writing", "items": [],}\n')
    out = cli("validate", "job.json", cwd=tmp_path)
    assert_usage_error(out, "job.json:1:60: ", "invalid JSON", "a trailing comma?")


def test_strict_json_keeps_positions_of_later_errors(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"job_id": "j",\n "job_type": "chapter_writing",\n "items": [{"item_id": "a", "project_id": "p", '
                    '"chapter_num": "one"}]}\n')
    with pytest.raises(ConfigError) as info:
        load_job(path, Settings(), KNOWN)
    assert str(info.value).startswith(f"{path}:3:")


# -- resume of a job that is not stored


@pytest.mark.parametrize("args", [("resume", "nope"), ("resume", "nope", "--detach"), ("status", "nope"),
                                  ("pause", "nope"), ("cancel", "nope"), ("report", "nope")])
def test_commands_on_an_unknown_job_create_no_store(tmp_path, args):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "nope" in out.stderr or "no store" in out.stderr
    assert not (tmp_path / ".storyloom").exists()


# -- a reader that closes the pipe early


def piped(args: tuple[str, ...], cwd: Path, lines: int) -> tuple[int, str, str]:
    """Run the command into a pipe whose reader takes ``lines`` lines and closes it
    (``| head -1``; with 0, at once, like ``| true``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    read = "".join(proc.stdout.readline().decode() for _ in range(lines))
    proc.stdout.close()  # the writer's next write meets a closed pipe
    stderr = proc.stderr.read()
    proc.stderr.close()
    return proc.wait(timeout=60), read, stderr.decode()


@pytest.mark.parametrize("args,lines", [
    (("status", "big", "--items"), 1), (("status", "big", "--items", "--json"), 1),
    (("queue", "--limit", "3000"), 1), (("status",), 0), (("report", "big"), 0),
    (("report", "big", "--format", "json"), 0)])
def test_a_closed_pipe_ends_quietly(loom, args, lines):
    settings(loom.path)
    # Much more output than a pipe holds, so that the writer surely meets the closed pipe.
    loom.submit("job_id: big\njob_type: chapter_writing\nitems:\n  - {project_id: p, chapters: 1-3000}\n")
    code, read, stderr = piped(args, loom.path, lines)
    assert len(read.splitlines()) == lines
    assert stderr == "", stderr  # no BrokenPipeError traceback, no "Exception ignored"
    assert code == 141


# -- every exit code is documented


def exit_codes() -> set[int]:
    """What the CLI can return: each way a batch ends, and the CLI's own EXIT_* codes."""
    from storyloom import cli as cli_module
    from storyloom.summary import EXIT_CODES

    own = {value for name, value in vars(cli_module).items() if name.startswith("EXIT_") and isinstance(value, int)}
    return set(EXIT_CODES.values()) | own


def test_every_exit_code_is_in_the_readme_table_and_the_cli_docstring():
    from storyloom import cli as cli_module

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = {int(code) for code in re.findall(r"^\| (\d+) \|", readme, re.MULTILINE)}
    assert {0, 1, 2, 3, 4, 5, 130, 141} <= exit_codes()
    assert rows == exit_codes()
    for code in exit_codes():
        assert re.search(rf"\b{code}\b", cli_module.__doc__), code
