"""Output below print(): ``os.write(1, ...)``, a C library's printf, a task's subprocess. It reaches
the cell like print() output does: prefixed with the worker's id, on its stream, and capped, with
the size of what was cut (a 100 MB write without a newline is 100 MB, not "a line").
"""
from __future__ import annotations

import re

import pytest

import mpkit
from tests import capture_tasks

pytestmark = pytest.mark.timeout(120)

TAGGED = re.compile(r"^\[w\d+\] (.*)$", re.MULTILINE)
SIZE_NOTE = re.compile(r"\[mpkit\] (?:([\d,]+) lines of worker output were not shown \(([\d.]+) (kB|MB)\)"
                       r"|([\d.]+) (kB|MB) of worker output were not shown)")


def _not_shown_bytes(err: str) -> float:
    total = 0.0
    for m in SIZE_NOTE.finditer(err):
        number, unit = (m[2], m[3]) if m[2] else (m[4], m[5])
        total += float(number) * (1e6 if unit == "MB" else 1e3)
    return total


def test_fd_writes_c_printf_and_subprocess_output_are_relayed(start_method, capsys):
    assert mpkit.map(capture_tasks.write_everywhere, range(3), workers=2, progress=False) == [0, 1, 2]
    captured = capsys.readouterr()
    out, err = TAGGED.findall(captured.out), TAGGED.findall(captured.err)
    for x in range(3):
        assert f"raw out {x}" in out and f"child out {x}" in out and f"from C {x}" in out, captured.out
        assert f"raw err {x}" in err and f"child err {x}" in err, captured.err
    untagged = [line for line in captured.out.splitlines() + captured.err.splitlines()
                if line and not TAGGED.match(line)]
    assert not untagged, untagged


def test_a_100_mb_write_without_newline_is_capped_and_counted_in_bytes(start_method, capsys):
    assert mpkit.map(capture_tasks.huge_write, [0], workers=1, progress=False) == [0]
    captured = capsys.readouterr()
    assert len(captured.out) + len(captured.err) < 2_000_000, "the output was not capped"
    not_shown = _not_shown_bytes(captured.err)
    assert 95e6 <= not_shown <= 100e6, f"the notes account for {not_shown:,.0f} bytes:\n{captured.err}"
    # and the pool relays normal output again afterwards
    mpkit.map(capture_tasks.write_everywhere, [7], workers=1, progress=False)
    assert "raw out 7" in TAGGED.findall(capsys.readouterr().out)


def test_a_flooding_subprocess_is_capped_with_a_note(start_method, capsys):
    assert mpkit.map(capture_tasks.subprocess_flood, [0], workers=1, progress=False) == [0]
    captured = capsys.readouterr()
    assert len(captured.out) + len(captured.err) < 2_000_000, "the output was not capped"
    assert _not_shown_bytes(captured.err) > 10e6, captured.err
