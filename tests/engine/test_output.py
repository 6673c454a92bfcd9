"""Worker print() output: prefixed with the worker's id, on the right stream, live, and capped.

In this process (``progress=False``: the text goes to sys.stdout / sys.stderr, captured by capsys)
and in a real Jupyter kernel, where it must be a stream output of the cell that started the work.
"""
from __future__ import annotations

import re
import time


import mpkit
from tests import timed_tasks

LINE = re.compile(r"\[w(\d+)\] (out|err) (\d+)")
FLOOD_LINE = re.compile(r"\[w\d+\] flood \d+ line \d{6} x{60}")
#: The notes mpkit writes when it cut output: the pool's ("N lines ... were not shown") and a
#: worker's ("N lines of output dropped").
NOTE = re.compile(r"([\d,]+) lines of (?:worker )?output (?:were not shown|dropped)")


def _tagged(text: str) -> list[tuple[str, str, int]]:
    """(worker id, kind, item) for each prefixed line; fails on any line that is not one."""
    out = []
    for line in text.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"unexpected output line {line!r} in:\n{text}"
        out.append((match[1], match[2], int(match[3])))
    return out


def _claimed(text: str) -> int:
    return sum(int(m.group(1).replace(",", "")) for m in NOTE.finditer(text))


def test_worker_print_reaches_parent_streams_prefixed(start_method, capsys):
    assert mpkit.map(timed_tasks.talk, range(6), workers=2, progress=False) == list(range(6))
    captured = capsys.readouterr()
    out, err = _tagged(captured.out), _tagged(captured.err)
    assert sorted(item for _, kind, item in out if kind == "out") == list(range(6))
    assert sorted(item for _, kind, item in err if kind == "err") == list(range(6))
    assert {kind for _, kind, _ in out} == {"out"} and {kind for _, kind, _ in err} == {"err"}
    assert {wid for wid, _, _ in out + err} <= {str(n) for n in range(1, 10)}


def test_chatty_worker_is_capped_with_a_note(start_method, capsys):
    started = time.monotonic()
    assert mpkit.map(timed_tasks.flood, [0, 1], workers=2, progress=False) == [0, 1]
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    printed = 2 * 60_000  # lines, about 10 MB
    shown = [line for line in captured.out.splitlines() if FLOOD_LINE.fullmatch(line)]
    assert elapsed < 60, f"a chatty map took {elapsed:.0f} s"
    assert 0 < len(shown) < printed / 4
    assert len(captured.out) + len(captured.err) < 2_000_000, "the output was not capped"
    notes = NOTE.findall(captured.err)
    assert notes and _claimed(captured.err) > 0, "no note says that output was cut:\n" + captured.err[-2000:]
    # the pool still relays output normally once the flood is over
    mpkit.map(timed_tasks.talk, range(2), workers=2, progress=False)
    assert len(_tagged(capsys.readouterr().out)) == 2


def test_chatty_note_accounts_for_every_line_not_shown(start_method, capsys):
    """Three back-to-back prints of ~900 kB: whatever the flush timing, a worker drops one block."""
    assert mpkit.map(timed_tasks.flood_blocks, [0], workers=1, progress=False) == [0]
    captured = capsys.readouterr()
    printed = timed_tasks.FLOOD_BLOCKS * timed_tasks.FLOOD_BLOCK_LINES
    shown = sum(1 for line in captured.out.splitlines() if FLOOD_LINE.fullmatch(line))
    claimed = _claimed(captured.err)
    assert shown + claimed == printed, (
        f"{printed} lines printed, {shown} shown, but the notes account for {claimed} more:\n"
        + captured.err)


def test_dropped_output_leaves_no_blank_line(start_method, capsys):
    """One print() bigger than a worker's buffer: its text is dropped, and its newline with it."""
    assert mpkit.map(timed_tasks.one_huge_print, [0], workers=1, progress=False) == [0]
    captured = capsys.readouterr()
    assert NOTE.search(captured.err), captured.err
    assert not re.search(r"^\[w\d+\] $", captured.out, re.MULTILINE), f"blank line in {captured.out!r}"


# ---- in a real kernel ----------------------------------------------------------------------------

def test_worker_output_in_a_kernel_is_live_prefixed_and_capped(start_method):
    from tests.kernels import KernelSession

    kernel = KernelSession()
    try:
        kernel.run("import mpkit\nfrom tests import timed_tasks")

        # prefixed, on its stream, as outputs of the cell that ran the map (its progress bar on)
        cell = kernel.run("r = mpkit.map(timed_tasks.talk, range(6), workers=2)")
        out, err = _tagged(cell.text("stdout")), _tagged(cell.text("stderr"))
        assert sorted(item for _, _, item in out) == list(range(6)) and {k for _, k, _ in out} == {"out"}
        assert sorted(item for _, _, item in err) == list(range(6)) and {k for _, k, _ in err} == {"err"}

        # flushed while the task still runs: the line leaves the kernel about when it was printed,
        # well before the task (2 s more) ends
        cell = kernel.run("r = mpkit.map(timed_tasks.talk_then_sleep, [0], workers=1)")
        (early,) = [s for s in cell.streams if "early 0" in s.text]
        printed_at = float(re.search(r"early 0 at ([\d.]+)", early.text)[1])
        assert early.text.startswith("[w") and early.name == "stdout"
        assert early.sent - printed_at < 1.0, f"the line reached the notebook {early.sent - printed_at:.2f} s late"
        assert cell.ended - early.sent > 1.0, "the line was held until the task ended"

        # a flood is capped, with a note, and the kernel carries on
        started = time.monotonic()
        cell = kernel.run("r = mpkit.map(timed_tasks.flood, [0, 1], workers=2)")
        assert time.monotonic() - started < 60
        text = cell.text("stdout") + cell.text("stderr")
        assert len(text) < 2_000_000, "the output was not capped"
        assert 0 < sum(1 for line in text.splitlines() if FLOOD_LINE.fullmatch(line)) < 2 * 60_000 / 4
        assert NOTE.search(text) and _claimed(text) > 0, text[-2000:]
        cell = kernel.run("print(r)")
        assert cell.text().strip() == "[0, 1]"
    finally:
        kernel.close()


def test_line_cut_at_the_buffer_limit_is_not_glued_to_the_next(start_method, capsys):
    assert mpkit.map(timed_tasks.newline_at_the_limit, [0], workers=1, progress=False) == [0]
    out = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"\[w\d+\] after", line) for line in out), [line[-100:] for line in out]
