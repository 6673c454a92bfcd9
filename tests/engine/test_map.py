"""mpkit.map / imap / Pool: results, order, laziness, warm reuse, bad input (``any_pool``: the same
tests on local processes and on a Dask cluster)."""
import functools
import itertools
import os
import sys

import pytest

import mpkit
from tests import helpers, side_effects
from tests.proctree import wait_until


def test_map_matches_builtin_map(any_pool):
    assert any_pool.map(helpers.square, range(1000)) == [x * x for x in range(1000)]


def test_empty_input(any_pool):
    assert any_pool.map(helpers.square, []) == []
    assert list(any_pool.imap(helpers.square, iter([]))) == []


def test_notebook_style_function_is_sent_by_value(any_pool):
    offset = 10
    fn = lambda x: x + offset  # noqa: E731 - defined in __main__-like scope, not importable
    assert any_pool.map(fn, range(5)) == [10, 11, 12, 13, 14]


def test_unordered_map_has_same_multiset(any_pool):
    out = any_pool.map(helpers.square, range(500), ordered=False, chunksize=7)
    assert sorted(out) == [x * x for x in range(500)]


def test_imap_is_lazy_on_an_endless_generator(any_pool):
    taken = []

    def source():
        for i in itertools.count():
            taken.append(i)
            yield i

    out = list(itertools.islice(any_pool.imap(helpers.square, source()), 50))
    assert out == [x * x for x in range(50)]
    # bounded read-ahead (a few chunks per worker): it did not try to drain an endless input
    assert len(taken) < 100_000


def test_imap_unordered_yields_everything(any_pool):
    assert sorted(any_pool.imap(helpers.identity, range(300), ordered=False)) == list(range(300))


@pytest.mark.parametrize("chunksize", [1, 3, 1000])
def test_explicit_chunksize(any_pool, chunksize):
    assert any_pool.map(helpers.square, range(100), chunksize=chunksize) == [x * x for x in range(100)]


def test_warm_pool_reuses_processes(pool):
    first = set(pool.map(helpers.pid_of, range(20)))
    second = set(pool.map(helpers.pid_of, range(20)))
    assert first and first == second
    assert len(first) <= 2


def test_default_pool_is_warm_and_shutdown_stops_it(start_method):
    pids = set(mpkit.map(helpers.pid_of, range(10), workers=2))
    assert pids == set(mpkit.map(helpers.pid_of, range(10), workers=2))
    mpkit.shutdown()
    import psutil
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_workers_follow_the_notebook_cwd(pool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(pool.map(helpers.cwd_of, range(4))) == {str(tmp_path)}


def test_init_runs_once_per_worker(start_method, tmp_path):
    marker = tmp_path / "inits"

    def init():
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")

    with mpkit.Pool(2, start_method=start_method, init=init) as p:
        pids = set(p.map(helpers.pid_of, range(40)))
        pids |= set(p.map(helpers.pid_of, range(40)))
    lines = marker.read_text().split()
    assert sorted(lines) == sorted(set(lines)), "init ran twice in one worker"
    assert pids <= {int(x) for x in lines}


def test_init_failure_is_reported(start_method):
    def init():
        raise OSError("model file missing")

    with mpkit.Pool(1, start_method=start_method, init=init) as p:
        with pytest.raises(mpkit.WorkerInitError, match="model file missing"):
            p.map(helpers.square, range(3))


def test_redefined_function_runs_new_version(any_pool):
    ns = {}
    exec("def f(x):\n    return x + 1\n", ns)
    assert any_pool.map(ns["f"], [1]) == [2]
    exec("def f(x):\n    return x + 100\n", ns)
    assert any_pool.map(ns["f"], [1]) == [101]


@pytest.mark.parametrize("bad, message", [
    (5, "items must be iterable"),
    (None, "items must be iterable"),
])
def test_not_iterable(any_pool, bad, message):
    with pytest.raises(TypeError, match=message):
        any_pool.map(helpers.square, bad)


def test_bad_options(any_pool):
    with pytest.raises(ValueError, match="on_error must be one of"):
        any_pool.map(helpers.square, [1], on_error="ignore")
    with pytest.raises(ValueError, match="chunksize"):
        any_pool.map(helpers.square, [1], chunksize=0)
    with pytest.raises(ValueError, match="retries"):
        any_pool.map(helpers.square, [1], retries=-1)
    with pytest.raises(TypeError, match="must be callable"):
        any_pool.map(42, [1])


def test_unpicklable_function_is_named():
    import threading
    lock = threading.Lock()
    with mpkit.Pool(1) as p, pytest.raises(TypeError, match="cannot be pickled"):
        p.map(functools.partial(lambda lk, x: x, lock), [1])


def test_unpicklable_item_is_named_and_others_finish(any_pool):
    items = [1, 2, helpers.Unpicklable(), 4]
    with pytest.raises(mpkit.SerializationError, match="item 2"):
        any_pool.map(helpers.identity, items)
    out = any_pool.map(helpers.identity, items, on_error="collect")
    assert out == [1, 2, 4]
    assert [f.index for f in out.failures] == [2]


def test_unpicklable_result_is_named(any_pool):
    out = any_pool.map(helpers.return_unpicklable, range(4), on_error="collect")
    assert out == [0, 1, 3]
    (failure,) = out.failures
    assert failure.index == 2 and "could not be pickled" in str(failure.exception)


def test_public_surface_is_deliberate():
    assert sorted(mpkit.__all__) == sorted([
        "map", "imap", "shutdown", "use", "Pool", "MapStats", "Pipeline", "PipelineStats", "StageStats",
        "Service", "Failure", "ResultList", "RemoteTraceback",
        "RemoteError", "WorkerDied", "TaskTimeout", "SerializationError", "WorkerInitError",
        "MapInterrupted", "MpkitWarning"])
    for name in mpkit.__all__:
        assert getattr(mpkit, name) is not None


def test_import_is_light():
    import subprocess
    code = ("import sys, mpkit; heavy = [m for m in ('pandas', 'openpyxl', 'emoji', 'IPython', "
            "'ipywidgets', 'tqdm', 'dask', 'distributed') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_shutdown_stops_explicit_pools_too(start_method):
    pool = mpkit.Pool(1, start_method=start_method)
    pids = pool.map(helpers.pid_of, range(3))
    mpkit.shutdown()
    assert pool.closed
    import psutil
    for pid in set(pids):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(RuntimeError, match="shut down"):
        pool.map(helpers.square, [1])


class _Shown:
    """A progress front-end that keeps what it was shown: the last counts and the workers' lines."""

    def __init__(self):
        self.stats, self.lines = None, []

    def __call__(self, description, total):
        return self

    def update(self, stats):
        self.stats = stats

    def write(self, text, stream):
        self.lines += text.splitlines()

    def close(self, stats):
        self.stats = stats


def test_timeout_stops_only_the_hung_item_and_runs_every_other_item_once(any_pool, tmp_path):
    """A notebook map with timeout= whose item 150 of 300 hangs (a stuck network read): that item
    is a TaskTimeout naming it, every other item ran exactly once (none lost, none repeated, on
    Dask too, where items share a task), and the prints and counts are the map's."""
    log = str(tmp_path / "runs")
    fn = functools.partial(side_effects.record_print_or_hang, log=log, hang=(150,))
    shown = _Shown()
    out = any_pool.map(fn, range(300), timeout=2, on_error="collect", progress=shown)
    assert out == [x * 10 for x in range(300) if x != 150]
    assert [f.index for f in out.failures] == [150]
    err = out.failures[0].exception
    assert isinstance(err, mpkit.TaskTimeout) and "item 150 (150)" in str(err) and "timeout=2" in str(err)
    assert side_effects.runs(log) == {x: 1 for x in range(300)}
    assert sorted(line.split("] ", 1)[1] for line in shown.lines) == sorted(f"item {x}" for x in range(300))
    assert all(line.startswith("[w") for line in shown.lines), shown.lines[:5]
    assert (shown.stats.done, shown.stats.failed, shown.stats.retried) == (299, 1, 0)
    client = getattr(any_pool, "client", None)
    if client is not None:  # the next test gets the cluster back whole (its nanny restarts the worker)
        hung = side_effects.hung_in(log)

        def restarted():
            pids = set(client.run(os.getpid, on_error="ignore").values())
            return len(pids) == 2 and not hung & pids
        assert wait_until(restarted, timeout=60), "the worker stuck in item 150 was not restarted"
