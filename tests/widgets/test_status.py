"""The text status: one rewritten line on a terminal, throttled lines elsewhere, a final table."""
from __future__ import annotations

import io
from dataclasses import replace

import pytest

from mpkit.widgets import _status
from mpkit.widgets._status import TextStatus
from tests.widgets.pipeline_snapshots import three_stages


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(_status, "monotonic", lambda: now[0])
    return now


def test_terminal_line_is_rewritten_in_place(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = Terminal()
    status = TextStatus("demo", stream=out)
    status.update(three_stages(1))
    first = out.getvalue()
    assert first.startswith("\r") and "\n" not in first
    line = first[1:]
    assert line.startswith("demo running 2.0s | 6/15 done, 1 dropped, 8 pending")
    assert "parse 1/2 q1/8 5.0/s" in line
    assert "batch:embed batch q2/64 4.0/s" in line
    assert "!embed 4/4 q8/8 2.5/s" in line              # the bottleneck
    status.update(three_stages(2))
    second = out.getvalue()[len(first):]
    assert second.startswith("\r") and "\n" not in second
    assert len(second) - 1 >= len(line)                # pads over the longer previous line


def test_terminal_line_fits_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    out = Terminal()
    status = TextStatus("demo", stream=out)
    status.update(three_stages(3))
    status.update(three_stages(3))
    for line in out.getvalue().split("\r")[1:]:
        assert len(line) == 39 and line.endswith("\u2026")


def test_non_terminal_prints_a_line_every_two_seconds(clock):
    out = io.StringIO()
    status = TextStatus("demo", stream=out)
    status.update(three_stages(1))
    for step in (2, 3, 4):
        clock[0] += 0.5
        status.update(three_stages(step))             # within 2 s: throttled
    clock[0] += 0.6
    status.update(three_stages(5))                    # 2.1 s after the first line
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2
    assert lines[0].startswith("demo running 2.0s") and lines[1].startswith("demo running 6.0s")
    clock[0] += 0.1
    status.update(replace(three_stages(5), state="stopping"))
    assert out.getvalue().splitlines()[-1].startswith("demo stopping")   # a new state is not held back


def test_close_prints_a_summary_table():
    out = io.StringIO()
    status = TextStatus("demo", stream=out)
    status.update(three_stages(2))
    status.close(three_stages(2))
    status.close(three_stages(3))                      # once only
    status.update(three_stages(3))
    lines = out.getvalue().splitlines()[1:]
    assert lines[0] == ("pipeline 'demo' running after 3.0s: submitted 25, completed 12, "
                        "failed 1, dropped 1, pending 11")
    assert lines[1].split() == ["stage", "workers", "queued", "in", "out", "failed", "dropped",
                                "items/s", "mean", "ms"]
    assert lines[2].split() == ["parse", "1/2", "2/8", "20", "20", "0", "0", "10.0", "12.3"]
    assert lines[3].split() == ["batch:embed", "batch", "2/64", "20", "2", "0", "0", "8.0", "0.0"]
    assert lines[4].split() == ["embed", "4/4", "8/8", "16", "12", "1", "1", "2.5", "80.0",
                                "<-", "bottleneck"]
    assert len(lines) == 5
    assert len({len(line) for line in lines[1:4]}) == 1          # aligned columns


def test_close_clears_the_terminal_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = Terminal()
    status = TextStatus("demo", stream=out)
    status.update(three_stages(1))
    status.close(three_stages(1))
    shown, clear, summary = out.getvalue().split("\r")[1:]
    assert clear == " " * len(shown)                   # blanks the status line, then the table
    assert summary.startswith("pipeline 'demo' running after 2.0s: submitted 15, completed 6")
    assert summary.endswith("<- bottleneck\n")


def test_default_stream_is_stderr(capsys):
    status = TextStatus("demo")
    status.close(three_stages(0))
    assert capsys.readouterr().err.startswith("pipeline 'demo' running after 1.0s")
