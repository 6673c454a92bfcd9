"""The text status: one rewritten line on a terminal, throttled lines elsewhere, a final table."""
from __future__ import annotations

import io
import re
from dataclasses import replace

import pytest

from mpkit import Pipeline
from mpkit.widgets import _status
from mpkit.widgets._status import TextStatus
from tests.pipeline_tasks import slow
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
    monkeypatch.setenv("COLUMNS", "300")
    out = Terminal()
    status = TextStatus("demo", stream=out)
    status.update(three_stages(1))
    first = out.getvalue()
    assert first.startswith("\r") and "\n" not in first
    line = first[1:]
    assert line.startswith("demo running 2.0s | 6 of 15 done, 1 dropped, 8 pending")
    assert "parse: 1 of 2 workers busy, 1 of 8 queued, 5.0 items/s" in line
    assert "batch:embed: batching (1 item sent), 2 of 64 queued, 4.0 items/s" in line
    assert "embed (bottleneck): 4 of 4 workers busy, 8 of 8 queued, 2.5 items/s" in line
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
    assert lines[2].split() == ["parse", "1", "of", "2", "busy", "2", "of", "8", "20", "20", "0", "0",
                                "10.0", "12.3"]
    assert lines[3].split() == ["batch:embed", "batcher", "2", "of", "64", "20", "2", "0", "0", "8.0", "0.0"]
    assert lines[4].split() == ["embed", "4", "of", "4", "busy", "8", "of", "8", "16", "12", "1", "1", "2.5",
                                "80.0", "<-", "bottleneck"]
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


#: A worker or queue count written as figures only, ``1/2``, ``0/0->2``: what a newcomer reads
#: as nothing (issue: "busy 0/0->2 is cryptic").
BARE_FIGURES = re.compile(r"\d/\d|->\d")


def test_a_run_outside_a_notebook_says_in_words_what_its_workers_do(start_method, capsys):
    """``pipe.run(..., progress=True)`` in a script or a terminal prints its status lines and the
    final table: each says how many workers are busy, starting or scaling, in words."""
    pipe = Pipeline("words").stage(slow, workers=2, name="parse").stage(slow, workers=1, name="score")
    assert len(pipe.run(range(60), progress=True)) == 60
    err = capsys.readouterr().err
    lines = err.splitlines()
    live = [line for line in lines if line.startswith("words running")]
    assert live, err
    for line in live:
        assert not BARE_FIGURES.search(line), line
        assert re.search(r"parse: (\d+ of \d+ workers? busy|starting \d+ workers?|scaling \d+ \u2192 \d+ workers?)",
                         line), line
    table = lines[lines.index(next(line for line in lines if line.startswith("pipeline 'words' finished"))):]
    assert table[1].split()[:3] == ["stage", "workers", "queued"], table
    assert table[2].split()[:2] == ["parse", "2"] and table[3].split()[:2] == ["score", "1"], table
    assert not any(BARE_FIGURES.search(line) for line in table), table
