"""The terminal view: drawn in a pseudo-terminal and read back from a small
screen emulator; plain lines when the output is a pipe; the view's content."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from datetime import datetime
from types import SimpleNamespace

import pytest
import trio
from rich.console import Console

from storyloom.events import Event
from storyloom.plugins.support.plain import PlainProgress
from storyloom.plugins.support.tracker import ProgressTracker
from storyloom.plugins.terminal import LiveProgress, make_sink, render, view

T0 = 1_700_000_000.0
SETTINGS = """
models:
  sim: {{provider: simulated, latency_ms: {latency}, output_tokens: 50, seed: 3, price: {{input: 1.0, output: 2.0}}}}
default_models: [sim]
"""
JOB = """
job_id: {job_id}
job_type: chapter_writing
budget_usd: 5
config: {{max_parallel: 3}}
items:
  - {{project_id: rain, chapters: 1-{n}}}
"""


class Screen:
    """Just enough of a VT100 to read back what rich draws: text, CR/LF, cursor
    up/down/column, erase line and display; colours and modes are ignored.
    ``frames`` counts redraws (a cursor-up that starts a new frame)."""

    CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
    REDRAW = "\r\x1b[2K\x1b[1A"

    def __init__(self) -> None:
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0
        self.frames = 0
        self.cleared_screen = False
        self.snapshots: list[str] = []

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            if text.startswith(self.REDRAW, i):  # rich climbs back over the last frame to draw the next
                self.frames += 1
                self.snapshots.append(self.text())
            match = self.CSI.match(text, i)
            if match:
                self._csi(match.group(1), match.group(2))
                i = match.end()
                continue
            ch = text[i]
            i += 1
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self.col = 0
            elif ch == "\x1b":  # another escape (OSC, charset): skip to its end
                end = text.find("\x07", i)
                i = end + 1 if end != -1 and text[i:i + 1] == "]" else i + 1
            elif ch >= " ":
                line = self._line()
                line.extend(" " * (self.col - len(line)))
                if self.col < len(line):
                    line[self.col] = ch
                else:
                    line.append(ch)
                self.col += 1

    def _line(self) -> list[str]:
        while len(self.lines) <= self.row:
            self.lines.append([])
        return self.lines[self.row]

    def _csi(self, params: str, final: str) -> None:
        n = int(params) if params.isdigit() else 1
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row += n
        elif final == "G":
            self.col = n - 1
        elif final == "K":
            line = self._line()
            if params == "2":
                line.clear()
            else:
                del line[self.col:]
        elif final == "J" and params in ("2", "3"):
            self.cleared_screen = True

    def text(self) -> str:
        return "\n".join("".join(line).rstrip() for line in self.lines)


def run_in_pty(args: list[str], cwd: Path, columns: int = 100, rows: int = 50) -> tuple[int, str]:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORYLOOM_", "COLUMNS", "LINES"))}
    env.update(STORYLOOM_DISABLE_PLUGIN_AUTOLOAD="1", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        code = proc.wait(timeout=30)
    return code, out.decode("utf-8", "replace")


def project(tmp_path: Path, n: int, latency: int, job_id: str = "tty-job") -> None:
    (tmp_path / "storyloom.yaml").write_text(SETTINGS.format(latency=latency))
    (tmp_path / "job.yaml").write_text(JOB.format(job_id=job_id, n=n))


def test_plain_lines_at_each_ten_percent_when_piped(tmp_path):
    project(tmp_path, n=10, latency=20, job_id="pipe-job")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    env["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    out = subprocess.run([sys.executable, "-m", "storyloom.cli", "run", "job.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert "\x1b[" not in out.stderr  # no escape codes in a log
    assert lines[0].startswith("[pipe-job] started 0/10 done: 0 completed")
    steps = [int(m.group(1)) for line in lines if (m := re.match(r"\[pipe-job\]\s+(\d+)% ", line))]
    assert steps == list(range(10, 101, 10))
    assert lines[-1].startswith("[pipe-job] 100% 10/10 done: 10 completed, 0 failed, 0 skipped, 0 retries, $")
    assert re.search(r"; \d running, ETA \d:\d\d:\d\d$", lines[5])  # mid-run lines say what is left


def test_quiet_silences_it(tmp_path):
    project(tmp_path, n=3, latency=0, job_id="quiet-job")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    env["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    out = subprocess.run([sys.executable, "-m", "storyloom.cli", "run", "job.yaml", "-q"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == ""


def test_plain_prints_every_interval_when_nothing_steps():
    stream = io.StringIO()
    sink = PlainProgress(stream, interval=0.05)

    async def main():
        send, receive = trio.open_memory_channel(10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.run, receive)
            send.send_nowait(Event("batch_started", "slow", data={
                "job_type": "export", "total": 100, "max_parallel": 2, "models": ["m"], "budget_usd": None,
                "counts": {"pending": 100, "running": 0, "completed": 0, "failed": 0, "skipped": 0}}))
            await trio.sleep(0.18)
            await send.aclose()

    trio.run(main)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[slow] started")
    assert len(lines) >= 3 and all(line.startswith("[slow]   0% 0/100 done") for line in lines[1:])


def test_make_sink_picks_by_terminal_and_quiet():
    config = SimpleNamespace(options=SimpleNamespace(quiet=False))
    assert isinstance(make_sink(config, None, stream=io.StringIO()), PlainProgress)
    tty = io.StringIO()
    tty.isatty = lambda: True
    assert isinstance(make_sink(config, None, stream=tty), LiveProgress)
    assert make_sink(SimpleNamespace(options=SimpleNamespace(quiet=True)), None, stream=tty) is None


def test_the_view_shows_what_the_issue_asks_for():
    tracker = ProgressTracker()
    tracker.apply(Event("batch_started", "batch-2025-01-15-001", data={
        "job_type": "chapter_writing", "total": 20, "max_parallel": 3, "models": ["gemini"], "budget_usd": 4.0,
        "counts": {"pending": 20, "running": 0, "completed": 0, "failed": 0, "skipped": 0}}, time=T0))
    for i in range(12):
        tracker.apply(Event("item_started", "b", f"i{i}", {"attempt": 1, "model": "gemini", "project_id": "p",
                                                           "chapter_num": i}, time=T0 + i))
        tracker.apply(Event("item_finished", "b", f"i{i}", {"state": "completed", "attempt": 1, "model": "gemini",
                                                            "elapsed": 3.0, "input_tokens": 100,
                                                            "output_tokens": 400, "cost_usd": 0.1}, time=T0 + i + 3))
    tracker.apply(Event("item_finished", "b", "i12", {"state": "failed", "attempt": 1, "model": "gemini",
                                                      "elapsed": 1.0, "input_tokens": 0, "output_tokens": 0,
                                                      "cost_usd": 0.0, "error_kind": "INVALID_INPUT", "error": "x"},
                        time=T0 + 15))
    tracker.apply(Event("item_finished", "b", "proj-456-ch9", {"state": "retrying", "attempt": 1, "model": "gpt-4o",
                                                               "elapsed": 2.0, "input_tokens": 900,
                                                               "output_tokens": 300, "cost_usd": 0.0,
                                                               "error_kind": "TIMEOUT", "error": "slow",
                                                               "retry_delay": 10}, time=T0 + 15))
    tracker.apply(Event("item_started", "b", "proj-456-ch9", {"attempt": 2, "model": "gpt-4o",
                                                              "project_id": "proj-456", "chapter_num": 9},
                        time=T0 + 16))
    tracker.apply(Event("notify", "b", data={"message": "elevated failure rate 25%"}, time=T0 + 16))
    text = "\n".join(line for line, _style in view(tracker, T0 + 20))
    for expected in ("Batch Job: batch-2025-01-15-001", "Type: Chapter Writing", "Elapsed: 0:00:20",
                     "Progress: [█████████████░░░░░░░] 65%", "13/20 finished (12 completed, 1 failed)",
                     "✅ Completed: 12",
                     "🔄 Running: 1", "⏳ Pending: 6", "🔁 Retrying: 0", "❌ Failed: 1",
                     "• proj-456/ch9 → gpt-4o (4s, attempt 2, 1,200 tokens so far)",
                     "Cost: $1.2000 of $4.00 budget (30%)", "tokens 2,100 in / 5,100 out",
                     "Estimated Completion: 0:00:", "⚠ notify: elevated failure rate 25%"):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    rate = tracker.throughput(T0 + 20)
    assert f"Throughput: {rate * 60:.1f} items/min" in text


def busy_tracker(running: int = 12, messages: int = 3) -> ProgressTracker:
    """A batch mid-way: some done, ``running`` in flight, a skipped item, messages."""
    tracker = ProgressTracker()
    tracker.apply(Event("batch_started", "busy", data={
        "job_type": "chapter_writing", "total": 60, "max_parallel": running, "models": ["gemini"],
        "budget_usd": 4.0, "counts": {"pending": 59, "running": 0, "completed": 0, "failed": 0, "skipped": 1}},
        time=T0))
    for i in range(running + 10):
        tracker.apply(Event("item_started", "busy", f"i{i}", {"attempt": 1, "model": "a-model-with-a-long-name",
                                                              "project_id": "a-long-project-name", "chapter_num": i},
                            time=T0 + i))
    for i in range(10):
        tracker.apply(Event("item_finished", "busy", f"i{i}", {
            "state": "failed" if i == 3 else "completed", "attempt": 1, "model": "m", "elapsed": 30.0,
            "input_tokens": 100, "output_tokens": 400, "cost_usd": 0.1}, time=T0 + 30 + i))
    for i in range(messages):
        tracker.apply(Event("escalate" if i == messages - 1 else "notify", "busy",
                            data={"message": f"message {i}: " + "a long explanation " * 8}, time=T0 + 41))
    return tracker


def on_screen(tracker: ProgressTracker, now: float, columns: int = 80, rows: int = 24) -> list[str]:
    """The rows rich draws of the view on a terminal of that size, as Live renders it."""
    console = Console(file=io.StringIO(), width=columns, height=rows, force_terminal=True, color_system=None)
    lines = console.render_lines(render(tracker, now, rows), console.options, pad=False)
    return ["".join(segment.text for segment in line) for line in lines]


def test_at_80_by_24_throughput_cost_and_eta_stay_on_screen():
    tracker = busy_tracker(messages=1)
    rows = on_screen(tracker, T0 + 45)
    assert len(rows) <= 24, "\n".join(rows)
    assert all(Console().measure(row).maximum <= 80 for row in rows)  # long lines cut, not wrapped
    text = "\n".join(rows)
    for expected in ("Batch Job: busy", "11/60 finished (9 completed, 1 failed, 1 skipped)", "Throughput: ",
                     "Cost: $1.0000 of $4.00 budget (25%)", "Estimated Completion: ", "‼ escalate: message 0"):
        assert expected in text, f"{expected!r} not on the 24 rows:\n{text}"
    assert rows[-1].startswith("‼ escalate: message 0: a long explanation") and rows[-1].endswith("…")
    listed = [row for row in rows if row.startswith("• ")]
    assert len(listed) == 1 and f"  +{12 - len(listed)} more" in rows
    # Three messages: the list gives way to a count; with room, the whole list (up to 8) and every message.
    tracker = busy_tracker(messages=3)
    rows = on_screen(tracker, T0 + 45)
    assert len(rows) <= 24 and "Current Processing: +12 more" in rows and "Estimated Completion" in rows[-4]
    tall = "\n".join(line for line, _style in view(tracker, T0 + 45, 60))
    assert tall.count("• ") == 8 and "+4 more" in tall and tall.count("notify: message") == 2


def test_a_short_terminal_gives_up_the_list_then_messages_then_blank_lines():
    tracker = busy_tracker()
    for rows in range(24, 4, -1):
        lines = [line for line, _style in view(tracker, T0 + 45, rows)]
        assert len(lines) <= rows, (rows, lines)
        text = "\n".join(lines)
        assert "Throughput: " in text and "Cost: $" in text and "Estimated Completion: " in text, (rows, text)
        assert "Progress: [" in text, (rows, text)
    assert not any(line.startswith("• ") for line, _ in view(tracker, T0 + 45, 20))
    assert "escalate" in "\n".join(line for line, _ in view(tracker, T0 + 45, 20))  # the newest message stays


def test_started_shows_the_date_when_it_was_not_today():
    tracker = busy_tracker(running=1, messages=0)
    started = datetime.fromtimestamp(T0)
    same_day = "\n".join(line for line, _ in view(tracker, T0 + 60))
    assert f"Started: {started:%H:%M:%S}\n" in same_day + "\n"
    two_days = "\n".join(line for line, _ in view(tracker, T0 + 2 * 86400))
    assert f"Started: {started:%Y-%m-%d %H:%M:%S}" in two_days


def frames(output: str) -> list[str]:
    """Each frame rich drew, read back on a screen of its own."""
    shown = []
    for piece in output.split(Screen.REDRAW):
        screen = Screen()
        screen.feed(piece)
        shown.append(screen.text())
    return shown


@pytest.mark.slow
def test_the_live_view_at_80_by_24_in_a_pseudo_terminal(tmp_path):
    # 40 chapters, 10 at a time, ~0.4 s each, a third refused: more running than
    # fit in 24 rows, failures counted with completions, several redraws.
    (tmp_path / "storyloom.yaml").write_text(
        "models:\n  sim: {provider: simulated, latency_ms: 400, output_tokens: 50, seed: 3, "
        "price: {input: 1.0, output: 2.0}, errors: {INVALID_INPUT: 0.3}}\ndefault_models: [sim]\n"
        "failure_policy: {pause_above: 1}\n")
    (tmp_path / "job.yaml").write_text(JOB.format(job_id="tty-job", n=40).replace("max_parallel: 3",
                                                                                  "max_parallel: 10"))
    code, output = run_in_pty(["run", "job.yaml"], tmp_path, columns=80, rows=24)
    assert code == 1, output[-2000:]  # some failed
    screen = Screen()
    screen.feed(output)
    final = screen.text()
    for expected in ("Batch Job: tty-job", "Type: Chapter Writing", "Started: ", "Elapsed: 0:00:0",
                     "[████████████████████] 100%", "Status Breakdown:", "🔄 Running: 0", "⏳ Pending: 0",
                     "🔁 Retrying: 0", "items/min", "of $5.00 budget", "Finished: failed", "tty-job: failed in"):
        assert expected in final, f"{expected!r} not on the final screen:\n{final}"
    assert re.search(r"40/40 finished \(\d+ completed, \d+ failed\)", final), final
    # Redrawn in place (no clearing the screen), at least twice a second: a 2 s run gives 4+ frames.
    assert not screen.cleared_screen
    assert screen.frames >= 4, screen.frames
    assert final.count("Batch Job: tty-job") == 1  # frames overwrite each other, not scroll
    drawn = [f for f in frames(output) if "Batch Job: tty-job" in f]
    for frame in drawn[:-1]:  # the last is followed by the run's closing lines
        rows = frame.split("\n")
        assert len(rows) <= 24 and max(len(row) for row in rows) <= 80, frame
        assert "Throughput: " in frame and "Cost: $" in frame, frame
        assert "Estimated Completion: " in frame or "Finished: failed" in frame, frame
    # While it ran, the view listed chapters in flight with their model, as many as fit.
    during = "\n".join(drawn)
    assert re.search(r"• rain/ch\d+ → sim \(\d+s\)", during), during[-1500:]
    assert re.search(r"\+\d+ more$", during, re.M) and "Estimated Completion: 0:00:0" in during, during[-1500:]
