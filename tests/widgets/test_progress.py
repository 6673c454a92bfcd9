"""The progress front-end: a text bar outside notebooks, fed only by MapStats snapshots."""
import mpkit
from tests import helpers


def test_text_bar_shows_final_counts_and_worker_output(pool, capsys):
    pool.map(helpers.chatty, range(5), progress=True)
    err = capsys.readouterr()
    assert "5/5" in err.err                 # the bar ends at the true total
    assert "workers=" in err.err
    for i in range(5):
        assert f"item {i}" in err.out        # worker prints reach stdout through tqdm.write


def test_failed_items_show_in_the_bar(pool, capsys):
    out = pool.map(helpers.fail_on, range(6), on_error="collect", progress=True)
    assert len(out) == 5 and len(out.failures) == 1
    assert "errors=1" in capsys.readouterr().err


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
    read ``workers=1/2`` when the workers' last chunks had just come back."""
    for _ in range(5):  # several maps: the stale count showed in some of them, not every one
        pool.map(helpers.square, range(200), chunksize=1, progress=True)
        last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert "200/200" in last and f"workers=0/{pool.size}" in last, last
