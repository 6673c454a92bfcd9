"""The progress front-end: a text bar outside notebooks, fed only by MapStats snapshots."""
import re

import mpkit
from mpkit.widgets._format import plural
from tests import helpers


def test_text_bar_shows_final_counts_and_worker_output(pool, capsys):
    pool.map(helpers.chatty, range(5), progress=True)
    err = capsys.readouterr()
    assert "5/5" in err.err                 # the bar ends at the true total
    assert "workers busy" in err.err or "workers starting" in err.err
    for i in range(5):
        assert f"item {i}" in err.out        # worker prints reach stdout through tqdm.write


def test_failed_items_show_in_the_bar(pool, capsys):
    out = pool.map(helpers.fail_on, range(6), on_error="collect", progress=True)
    assert len(out) == 5 and len(out.failures) == 1
    assert "1 failed" in capsys.readouterr().err


def test_no_bar_in_scripts_by_default(pool, capsys, monkeypatch):
    from mpkit.widgets import _progress
    monkeypatch.setattr(_progress, "in_ipython", lambda: False)  # other tests start a global shell
    pool.map(helpers.square, range(5))
    assert capsys.readouterr().err == ""


def test_custom_front_end_receives_snapshots(pool):
    seen = []

    class Recorder:
        def __init__(self, desc, total):
            self.desc, self.total = desc, total

        def update(self, stats):
            seen.append(stats)

        def write(self, text, stream):
            pass

        def close(self, stats):
            seen.append(stats)

    pool.map(helpers.square, range(100), progress=Recorder)
    final = seen[-1]
    assert isinstance(final, mpkit.MapStats)
    assert (final.total, final.done, final.failed) == (100, 100, 0)
    assert final.rate > 0


def test_the_final_bar_of_a_finished_map_shows_no_busy_worker(pool, capsys):
    """The last bar a map leaves (the one kept in the saved notebook) says no worker is busy: it
    read ``workers=1/2`` (now ``1 of 2 workers busy``) when the workers' last chunks had just come
    back. The last bar says how many workers the pool has, and none busy."""
    for _ in range(5):  # several maps: the stale count showed in some of them, not every one
        pool.map(helpers.square, range(200), chunksize=1, progress=True)
        last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert "200/200" in last and last.endswith(f", {plural(pool.size, 'worker')}]"), last


def test_the_bar_says_in_words_how_many_workers_are_busy(pool, capsys):
    """The bar's worker count reads as words (``2 of 2 workers busy``), not ``workers=2/2``; the
    last bar, the one a saved notebook keeps, names the pool's workers and no busy one."""
    pool.map(helpers.sleep_then, [0.01] * 40, chunksize=1, progress=True)
    bars = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert bars and not any("workers=" in bar or re.search(r", \d+/\d+", bar) for bar in bars), bars
    assert any(re.search(r"\d+ of \d+ workers? busy", bar) for bar in bars[:-1]), bars
    assert bars[-1].endswith(f", {plural(pool.size, 'worker')}]") and "busy" not in bars[-1], bars[-1]


def test_the_bar_counts_the_maps_own_workers(pool, capsys):
    """``workers=1`` on a pool of two: the bar says one worker, not "1 of 2 workers busy" (one
    of them was never going to be busy)."""
    assert pool.size == 2
    pool.map(helpers.sleep_then, [0.02] * 30, workers=1, chunksize=1, progress=True)
    bars = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert not any("of 2 workers" in bar for bar in bars), bars
    assert any("1 of 1 worker busy" in bar for bar in bars[:-1]), bars
    assert bars[-1].endswith(", 1 worker]"), bars[-1]


def test_a_loop_left_early_ends_its_bar_as_cancelled(pool, capsys):
    """``break`` out of a loop over imap: the last bar says the map was cancelled, without the
    ETA of a map that no longer runs."""
    for i, _ in enumerate(pool.imap(helpers.sleep_then, [0.02] * 200, chunksize=1, progress=True)):
        if i == 5:
            break
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "cancelled" in last and "/200" in last and "<" not in last, last
