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
    assert line.startswith("demo 2.0s: 6 done, 1 dropped; bottleneck embed: 4/4 busy, 8/8 queued, 2.5/s; ")
    assert line.endswith("; parse 1/2 busy, batch:embed 2 queued")
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
    assert lines[0].startswith("demo 2.0s: ") and lines[1].startswith("demo 6.0s: ")
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
    assert lines[1].split() == ["stage", "workers", "queued", "in", "out", "failed", "dropped", "cancelled",
                                "items/s", "mean", "ms"]
    assert lines[2].split() == ["parse", "1", "of", "2", "busy", "2", "of", "8", "20", "20", "0", "0", "0",
                                "10.0", "12.3"]
    assert lines[3].split() == ["batch:embed", "batcher", "2", "of", "64", "20", "2", "0", "0", "0", "8.0", "0.0"]
    assert lines[4].split() == ["embed", "4", "of", "4", "busy", "8", "of", "8", "16", "12", "1", "1", "0", "2.5",
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


#: A worker or queue count written as figures only, ``0/0->2``, or ``1/2`` with no word saying
#: what it counts: what a newcomer reads as nothing (issue: "busy 0/0->2 is cryptic").
BARE_FIGURES = re.compile(r"->\d|\d/[\d,]+(?! (busy|queued|done)\b)(?![\d,])")


def test_a_run_outside_a_notebook_says_in_words_what_its_workers_do(start_method, capsys):
    """``pipe.run(..., progress=True)`` in a script or a terminal prints its status lines and the
    final table: each says how many workers are busy, starting or scaling, in words."""
    pipe = Pipeline("words").stage(slow, workers=2, name="parse").stage(slow, workers=1, name="score")
    assert len(pipe.run(range(60), progress=True)) == 60
    err = capsys.readouterr().err
    lines = err.splitlines()
    live = [line for line in lines if re.match(r"words [\d.]+s: ", line)]
    assert live, err
    for line in live:
        assert not BARE_FIGURES.search(line), line
        assert re.search(r"parse(: | )(\d+/\d+ busy|starting \d+|scaling \d+ \u2192 \d+)", line), line
    table = lines[lines.index(next(line for line in lines if line.startswith("pipeline 'words' finished"))):]
    assert table[1].split()[:3] == ["stage", "workers", "queued"], table
    assert table[2].split()[:2] == ["parse", "2"] and table[3].split()[:2] == ["score", "1"], table
    assert not any(BARE_FIGURES.search(line) for line in table), table


def test_a_three_stage_status_fits_120_columns_with_the_bottleneck_first():
    """A terminal cuts the status line at its width: the line of a three-stage pipeline (default
    channels of 1,024, a failure) fits 120 columns, and the stage holding the run back comes
    first, with its queue, in words; it was 190 columns for two stages, cut after the first."""
    from mpkit.engine._pipeline import DEFAULT_MAXSIZE
    from tests.widgets.pipeline_snapshots import pipeline, stage

    parse = stage("parse", workers=2, target_workers=2, busy=2, capacity=DEFAULT_MAXSIZE, queued=3,
                  received=400, done=398, emitted=398, rate=52.5)
    embed = stage("embed", workers=4, target_workers=4, busy=4, capacity=DEFAULT_MAXSIZE, queued=150,
                  received=398, done=251, emitted=250, failed=1, rate=45.2, bottleneck=True)
    write = stage("write", workers=1, target_workers=1, busy=1, capacity=DEFAULT_MAXSIZE, queued=0,
                  received=250, done=250, emitted=250, rate=45.0)
    stats = pipeline(parse, embed, write, elapsed=12.3, total=400, submitted=400, completed=250,
                     failed=1, pending=149, results=250)
    line = _status.status_line("demo", stats)
    assert len(line) <= 120, (len(line), line)
    assert line.split("; ")[1] == "bottleneck embed: 4/4 busy, 150/1,024 queued, 45.2/s", line
    assert "250/400 done" in line and "1 failed" in line, line
    assert line.endswith("; parse 2/2 busy, write 1/1 busy"), line
    assert not BARE_FIGURES.search(line), line


def test_the_final_table_shows_mean_rates_and_reconciles_the_cancelled():
    """The table printed at the end: a stage that did 400 items shows the run's mean rate, not
    the live rate that had decayed to 0.0 items/s; the head says "cancelled 392", and so does a
    column of the table, so its counts add up."""
    from tests.widgets.pipeline_snapshots import pipeline, stage

    one = stage("one", workers=2, target_workers=2, busy=0, received=400, done=400, emitted=400, rate=0.0,
                mean_seconds=0.03)
    two = stage("two", workers=1, target_workers=1, busy=0, received=400, done=8, emitted=8, rate=0.0,
                cancelled=392, mean_seconds=0.03)
    stats = pipeline(one, two, state="stopped", outcome="interrupted", elapsed=8.0, submitted=400,
                     completed=8, cancelled=392, results=8)
    text = _status.summary("demo", stats)
    head, columns, *rows = text.splitlines()
    assert "interrupted" in head and "cancelled 392" in head, head
    assert columns.split()[-4:] == ["cancelled", "items/s", "mean", "ms"], columns
    assert rows[0].split()[-3:] == ["0", "50.0", "30.0"], rows[0]      # 400 items in 8 s, none cancelled
    assert rows[1].split()[-3:] == ["392", "1.0", "30.0"], rows[1]
