"""mpkit.map / imap / Pool on a real Dask cluster: a LocalCluster on 127.0.0.1 (shared by this
module), and a `dask scheduler` with two `dask worker` processes started from the command line."""
import functools
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed")

import mpkit  # noqa: E402
from mpkit.engine import dask as dask_backend  # noqa: E402
from mpkit.engine.dask._manager import CANCEL_GRACE  # noqa: E402
from tests import dask_tasks, helpers, side_effects, timed_tasks  # noqa: E402
from tests.dask_cluster import command_line_cluster  # noqa: E402
from tests.engine.test_interrupt import _InterruptWhen  # noqa: E402
from tests.proctree import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def dpool(dask_client):
    with mpkit.Pool(cluster=dask_client) as pool:
        yield pool


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid, on_error="ignore")


def test_map_on_a_cluster_matches_builtin_map(dask_client):
    offset = 7
    fn = lambda x: x * x + offset  # noqa: E731 - a notebook's function: sent by value
    assert mpkit.map(fn, range(3000), cluster=dask_client) == [x * x + offset for x in range(3000)]
    assert isinstance(mpkit.engine.default_pool(), dask_backend.Pool)


def test_pool_with_cluster_is_a_dask_pool(dpool, dask_client):
    assert isinstance(dpool, dask_backend.Pool) and dpool.size == 2
    assert isinstance(dpool, mpkit.Pool), "a pool made by mpkit.Pool(cluster=...) is an mpkit.Pool"
    assert not isinstance(dpool, type("MyPool", (mpkit.Pool,), {})), "not one of a subclass of it, though"
    pids = set(dpool.map(dask_tasks.slow_pid, range(20), chunksize=1))
    assert pids <= set(worker_pids(dask_client).values())
    assert sorted(dpool.imap(helpers.identity, iter(range(500)), ordered=False)) == list(range(500))


def test_workers_caps_the_items_running_at_once_on_the_cluster(dpool):
    """map(workers=1) on a cluster of two: one item at a time, never two (a rate-limited API, a
    memory-hungry step), although the cluster has a free thread."""
    spans = sorted(dpool.map(dask_tasks.span, range(12), workers=1, chunksize=1))
    overlaps = [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    assert not overlaps, overlaps


def test_each_chunk_is_one_task(dpool, dask_client):
    from distributed import get_task_stream

    with get_task_stream(dask_client) as stream:
        assert dpool.map(helpers.square, range(10_000), chunksize=2500) == [x * x for x in range(10_000)]
    assert len([t for t in stream.data if t["key"].startswith("mpkit-")]) == 4


def test_errors_keep_their_item_and_traceback(dpool):
    with pytest.raises(ValueError, match="bad item 3") as info:
        dpool.map(helpers.fail_on, range(10))
    assert any("item 3" in note for note in getattr(info.value, "__notes__", []))
    out = dpool.map(helpers.fail_on, range(10), on_error="collect")
    assert out == [x for x in range(10) if x != 3]
    assert [f.index for f in out.failures] == [3]


def test_failed_maps_keep_the_workers_warm(dpool, dask_client):
    """A map that raises at once cancels its other chunks; those that had run already (their start
    heard after the cancel) must not cost their worker a restart: the pool stays warm."""
    before = worker_pids(dask_client)
    for _ in range(5):
        with pytest.raises(ValueError, match="bad item 3"):
            dpool.map(helpers.fail_on, range(40), chunksize=1)
    time.sleep(2 * CANCEL_GRACE + 1.0)  # past the grace after which a worker still in a task is restarted
    assert worker_pids(dask_client) == before, "a failed map restarted Dask workers"


def test_a_pool_made_while_a_worker_restarts_connects(dask_client):
    """A notebook makes a new Pool just after a worker died (or a timeout had it restarted): the
    check of the workers' Python must not fail on the one leaving (CommClosedError)."""
    os.kill(next(iter(worker_pids(dask_client).values())), signal.SIGKILL)
    with mpkit.Pool(cluster=dask_client) as pool:
        assert pool.map(helpers.square, range(20)) == [x * x for x in range(20)]


def test_a_failed_map_leaves_no_results_on_the_cluster(dpool, dask_client):
    """Results of a map that raised stay in no worker's memory (a held future keeps them there)."""
    def held():
        return dask_client.run_on_scheduler(lambda dask_scheduler: sorted(
            str(k) for k in dask_scheduler.tasks if str(k).startswith("mpkit-")))

    for _ in range(3):
        with pytest.raises(ValueError):
            dpool.map(helpers.fail_on, range(100), chunksize=5)
    assert wait_until(lambda: not held(), timeout=30), held()


def test_a_large_closure_reaches_each_worker_once(dpool, dask_client):
    """A notebook function over a big global (a lookup table, weights) is not sent with every chunk:
    Dask warns of each "large graph" it is given, and the scheduler forgets it after the map."""
    import warnings

    np = pytest.importorskip("numpy")
    table = np.arange(2_000_000, dtype=np.float64)  # 16 MB, past Dask's large-graph warning (10 MB)
    fn = lambda i: float(table[i])  # noqa: E731 - a notebook's closure: sent by value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dpool.map(fn, range(40), chunksize=1) == [float(i) for i in range(40)]
    assert not [w for w in caught if "large graph" in str(w.message)]
    assert wait_until(lambda: not dask_client.run_on_scheduler(
        lambda dask_scheduler: [k for k in dask_scheduler.tasks if not str(k).startswith("mpkit-")]),
        timeout=30)


def test_retries_count_exceptions(dpool, tmp_path):
    assert dpool.map(functools.partial(helpers.flaky_file, path=str(tmp_path / "m")), range(6),
                     retries=1) == list(range(6))


def test_progress_and_stats_come_from_the_run(dpool):
    seen = []

    class Bar(_InterruptWhen):
        def update(self, stats):
            seen.append(stats)

        def close(self, stats):
            seen.append(stats)

    dpool.map(timed_tasks.slow_identity, range(40), chunksize=2, progress=Bar(None))
    assert seen[-1].done == 40 and seen[-1].total == 40 and seen[-1].workers == 2


def test_use_and_environment_set_the_default_cluster(dask_client, monkeypatch):
    mpkit.use(dask_client)
    try:
        assert mpkit.map(helpers.square, range(10)) == [x * x for x in range(10)]
        assert isinstance(mpkit.engine.default_pool(), dask_backend.Pool)
        assert isinstance(mpkit.Pool(), dask_backend.Pool)
    finally:
        mpkit.use(None)
    monkeypatch.setenv("MPKIT_CLUSTER", dask_client.scheduler.address)
    assert list(mpkit.imap(helpers.square, range(10))) == [x * x for x in range(10)]
    pool = mpkit.engine.default_pool()
    assert isinstance(pool, dask_backend.Pool) and pool.client is not dask_client
    mpkit.shutdown()  # closes the client mpkit opened to the address, not the cluster
    assert pool.client.status == "closed" and dask_client.status == "running"
    monkeypatch.delenv("MPKIT_CLUSTER")
    assert not isinstance(mpkit.Pool(1), dask_backend.Pool)


def test_bad_cluster_values_are_explained(dask_client, monkeypatch):
    with pytest.raises(TypeError, match="cluster= takes a distributed.Client"):
        mpkit.map(helpers.square, range(3), cluster=8786)
    with pytest.raises(ValueError, match="start_method"):
        mpkit.map(helpers.square, range(3), cluster=dask_client, start_method="spawn")
    with pytest.raises(TypeError, match="idle_timeout is about local worker processes"):
        mpkit.Pool(cluster=dask_client, idle_timeout=5)
    monkeypatch.setattr(dask_backend._cluster, "CONNECT_TIMEOUT", 2.0)
    with pytest.raises(ConnectionError, match="could not reach a Dask scheduler at 'tcp://127.0.0.1:9'"):
        mpkit.Pool(cluster="tcp://127.0.0.1:9")


def test_local_only_options_are_refused_on_dask_not_ignored(dask_client):
    with pytest.raises(ValueError, match=r"max_tasks_per_child=5 .*Fix"):
        mpkit.map(helpers.square, range(10), max_tasks_per_child=5, cluster=dask_client)
    with pytest.raises(ValueError, match=r"init_timeout=30 .*Fix"):
        mpkit.map(helpers.square, range(10), init=side_effects.noop_init, init_timeout=30, cluster=dask_client)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        list(mpkit.imap(helpers.square, range(10), max_tasks_per_child=5, cluster=dask_client))
    assert mpkit.map(helpers.square, range(10), cluster=dask_client) == [x * x for x in range(10)]


def test_a_worker_on_another_python_is_refused(dask_client):
    """The task itself checks the notebook's Python version (a worker that joined after the pool
    connected is not in the first check)."""
    import pickle

    from mpkit.engine.dask import _task

    _, out = pickle.loads(dask_client.submit(_task.run_chunk, "t", "f", b"", b"", None, (3, 0), pure=False)
                          .result(timeout=60))
    assert out[0] == _task.PYTHON and out[1] == sys.version.split()[0]


def test_connecting_to_workers_on_another_python_is_refused(dask_client, monkeypatch):
    """The check made when a pool connects (here the notebook pretends to run another Python: the
    workers are real, on this machine's only Python)."""
    monkeypatch.setattr(sys, "version", "3.99.0 (pretend)")
    with pytest.raises(RuntimeError, match=r"runs Python 3\.\d+\.\d+ .* this notebook Python 3\.99\.0") as info:
        mpkit.Pool(cluster=dask_client)
    assert "same Python minor version" in str(info.value) and "Fix:" in str(info.value)


def test_mpkit_does_not_take_over_the_default_client(dask_client):
    from distributed import default_client

    before = default_client()
    with mpkit.Pool(cluster=dask_client.scheduler.address) as pool:
        assert pool.map(helpers.square, range(3)) == [0, 1, 4]
        assert default_client() is before


def test_cluster_without_dask_installed_says_how_to_install_it():
    code = ("import sys; sys.modules['distributed'] = None\nimport mpkit\ntry:\n    mpkit.map(abs, [1], cluster='local')\n"
            "except ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 'pip install "mpkit[dask]"' in out.stdout, out.stdout + out.stderr


def test_import_mpkit_does_not_import_dask():
    code = "import sys, mpkit; print([m for m in ('dask', 'distributed') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# ---- worker output ----------------------------------------------------------------------------

def test_worker_prints_reach_the_cell_with_a_prefix(dpool, capsys):
    dpool.map(helpers.chatty, range(6), chunksize=1, progress=False)
    out, err = capsys.readouterr()
    for x in range(6):
        assert any(line.endswith(f"] item {x}") and line.startswith("[w") for line in out.splitlines()), out
        assert any(line.endswith(f"] warn {x}") for line in err.splitlines()), err


def test_the_last_prints_of_a_map_reach_its_own_cell(dpool, capsys):
    """Output printed just before a task returns comes with its results, not in a later cell."""
    for _ in range(3):
        dpool.map(helpers.chatty, range(4), chunksize=1, progress=False)
        out, _ = capsys.readouterr()
        assert sorted(line.split("] ", 1)[1] for line in out.splitlines()) == [f"item {x}" for x in range(4)]


# ---- init= ------------------------------------------------------------------------------------

def test_init_runs_once_per_worker_and_on_a_replacement(dask_client, tmp_path):
    marker = str(tmp_path / "inits")
    with mpkit.Pool(cluster=dask_client, init=functools.partial(dask_tasks.record_init, marker)) as pool:
        pids = set(pool.map(dask_tasks.slow_pid, range(40), chunksize=1))
        assert sorted(dask_tasks.inits(marker)) == sorted(pids) and len(pids) == 2
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: len(set(worker_pids(dask_client).values()) - pids) == 1, timeout=60)
        again = set(pool.map(dask_tasks.slow_pid, range(40), chunksize=1))
        fresh = again - pids
        assert fresh and all(dask_tasks.inits(marker).count(p) == 1 for p in again)


def test_init_failure_is_reported(dask_client):
    def init():
        raise RuntimeError("no model file")

    with mpkit.Pool(cluster=dask_client, init=init) as pool:
        with pytest.raises(mpkit.WorkerInitError, match="no model file"):
            pool.map(helpers.square, range(4))


# ---- faults -----------------------------------------------------------------------------------

def test_sigkill_of_a_dask_worker_mid_map_loses_nothing(dpool, dask_client):
    pids = list(worker_pids(dask_client).values())
    killed = []

    class KillAWorker(_InterruptWhen):
        def update(self, stats):
            if not killed and stats.done >= 20:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    out = dpool.map(timed_tasks.slow_identity, range(200), chunksize=5, progress=KillAWorker(None))
    assert killed and out == list(range(200))
    assert wait_until(lambda: len(worker_pids(dask_client)) == 2, timeout=60)


def test_a_segfault_is_blamed_on_its_item(dpool, dask_client):
    out = dpool.map(helpers.segfault_on, range(8), on_error="collect")
    assert out == [x for x in range(8) if x != 2]
    assert [f.index for f in out.failures] == [2]
    assert isinstance(out.failures[0].exception, mpkit.WorkerDied)
    assert wait_until(lambda: len(worker_pids(dask_client)) == 2, timeout=60)


def test_retries_count_worker_deaths(dpool, dask_client, tmp_path):
    """An item that kills its worker every time: retries=1 tries it twice once it is pinned on
    it (Dask cannot say which task of a dying worker ran: the first death is only a suspicion)."""
    path = str(tmp_path / "tries")
    out = dpool.map(functools.partial(helpers.fail_every_time, path=path, how="crash"), range(8),
                    retries=1, on_error="collect")
    assert out == [x for x in range(8) if x != 3]
    assert [f.index for f in out.failures] == [3] and isinstance(out.failures[0].exception, mpkit.WorkerDied)
    assert "tried 2 times" in str(out.failures[0].exception)
    assert helpers.attempts(path, 3) == 3
    assert wait_until(lambda: len(worker_pids(dask_client)) == 2, timeout=60)


def test_timeout_restarts_the_hung_worker(dpool, dask_client):
    before = set(worker_pids(dask_client).values())
    out = dpool.map(dask_tasks.hang_on, range(5), timeout=3, on_error="collect")
    assert out == [0, 1, 3, 4]
    assert [f.index for f in out.failures] == [2] and isinstance(out.failures[0].exception, mpkit.TaskTimeout)
    assert wait_until(lambda: len(set(worker_pids(dask_client).values()) - before) == 1, timeout=60), \
        "the worker running the hung item was not restarted"


def mpkit_tasks(stream) -> list:
    return [t for t in stream.data if t["key"].startswith("mpkit-")]


def test_timeout_keeps_items_in_chunks(dpool, dask_client):
    """timeout= does not cost one Dask task per item (each task costs milliseconds of round trips:
    2,000 trivial items took ~16 s that way): the items travel in chunks as without it."""
    from distributed import get_task_stream

    with get_task_stream(dask_client) as stream:
        assert dpool.map(helpers.square, range(2000), timeout=30) == [x * x for x in range(2000)]
    assert len(mpkit_tasks(stream)) < 100, len(mpkit_tasks(stream))


def test_a_hung_item_inside_a_chunk_times_out_alone(dpool, dask_client, tmp_path):
    """Item 150 hangs in the middle of a chunk: the items before it in that chunk are kept (not run
    again), those after it run once (on the other worker, or on the restarted one), the hung
    one is a TaskTimeout naming it, and its worker is restarted (its stuck thread cannot stop)."""
    from distributed import get_task_stream

    before = set(worker_pids(dask_client).values())
    log = str(tmp_path / "runs")
    fn = functools.partial(side_effects.record_print_or_hang, log=log, hang=(150,))
    with get_task_stream(dask_client) as stream:
        out = dpool.map(fn, range(300), timeout=2, on_error="collect", progress=False)
    assert out == [x * 10 for x in range(300) if x != 150]
    assert [f.index for f in out.failures] == [150] and isinstance(out.failures[0].exception, mpkit.TaskTimeout)
    assert "item 150 (150)" in str(out.failures[0].exception)
    assert side_effects.runs(log) == {x: 1 for x in range(300)}
    assert len(mpkit_tasks(stream)) < 100, len(mpkit_tasks(stream))
    hung = side_effects.hung_in(log)
    assert len(hung) == 1 and hung <= before
    assert wait_until(lambda: not hung & set(worker_pids(dask_client).values())
                      and len(worker_pids(dask_client)) == 2, timeout=60), \
        "the worker running the hung item was not restarted"


def test_retries_with_a_timeout_run_only_the_late_item_again(dpool, dask_client, tmp_path):
    log = str(tmp_path / "runs")
    fn = functools.partial(side_effects.record_print_or_hang, log=log, hang=(40,))
    with pytest.raises(mpkit.TaskTimeout, match=r"item 40 \(40\).*tried 2 times"):
        dpool.map(fn, range(100), timeout=1.5, retries=1, progress=False)
    runs = side_effects.runs(log)
    assert runs[40] == 2 and all(n == 1 for x, n in runs.items() if x != 40), runs
    hung = side_effects.hung_in(log)
    assert wait_until(lambda: not hung & set(worker_pids(dask_client).values())
                      and len(worker_pids(dask_client)) == 2, timeout=60), "a worker stuck in item 40 was not restarted"


def test_interrupt_keeps_finished_results_and_cancels_the_rest(dpool, dask_client):
    bar = _InterruptWhen(lambda stats: stats.done >= 4)
    with pytest.raises(mpkit.MapInterrupted) as info:
        dpool.map(timed_tasks.slow_identity, range(400), chunksize=1, progress=bar)
    exc = info.value
    assert 4 <= len(exc.results) < 400 and exc.results == sorted(set(exc.results))
    assert sorted(exc.results + exc.pending) == list(range(400))
    assert wait_until(lambda: not dask_client.processing() or not any(dask_client.processing().values()),
                      timeout=30), "tasks of the interrupted map still run"


def test_interrupt_restarts_workers_stuck_in_its_items(dpool, dask_client):
    """A long item of an interrupted map would hold its Dask thread for a minute: past a short
    grace its worker is restarted; the short ones that finished are kept."""
    assert wait_until(lambda: len(worker_pids(dask_client)) == 2, timeout=60), "the cluster is not back at 2 workers"
    before = worker_pids(dask_client)
    bar = _InterruptWhen(lambda stats: stats.done >= 2)
    with pytest.raises(mpkit.MapInterrupted) as info:
        dpool.map(helpers.sleep_then, [0.01, 0.01, 60, 60, 60, 60], chunksize=1, progress=bar)
    assert info.value.results == [0.01, 0.01]
    assert wait_until(lambda: not set(worker_pids(dask_client).values()) & set(before.values())
                      and len(worker_pids(dask_client)) == 2, timeout=60), "workers running 60 s items were not restarted"


def test_a_start_heard_after_the_cancel_still_restarts_its_worker(dpool, dask_client):
    """The notebook hears that the 60 s items started only after it cancelled them (interrupted at
    once, their start events held up on the workers): their threads run all the same, so their
    workers are restarted, not left holding them for a minute."""
    assert wait_until(lambda: len(worker_pids(dask_client)) == 2, timeout=60)
    before = set(worker_pids(dask_client).values())
    bar = _InterruptWhen(lambda stats: stats.submitted >= 2)
    with pytest.raises(mpkit.MapInterrupted):
        dpool.map(dask_tasks.sleep_with_a_late_start, range(2), chunksize=1, progress=bar)
    assert wait_until(lambda: not set(worker_pids(dask_client).values()) & before
                      and len(worker_pids(dask_client)) == 2, timeout=40), "workers running 60 s items were not restarted"


# ---- a cluster started from the command line ---------------------------------------------------

def test_command_line_cluster_map_worker_death_and_scheduler_loss():
    from distributed import Client

    with command_line_cluster(workers=2) as address:
        with Client(address, timeout=60) as probe:
            probe.wait_for_workers(2, timeout=60)
            pids = list(probe.run(os.getpid).values())
            scheduler_pid = probe.run_on_scheduler(os.getpid)
        with mpkit.Pool(cluster=address) as pool:
            assert pool.map(helpers.square, range(1000)) == [x * x for x in range(1000)]
            killed = []

            class KillAWorker(_InterruptWhen):
                def update(self, stats):
                    if not killed and stats.done >= 10:
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append(pids[0])

            assert pool.map(timed_tasks.slow_identity, range(100), chunksize=2,
                            progress=KillAWorker(None)) == list(range(100))
            got = []

            class KillTheScheduler(_InterruptWhen):
                def update(self, stats):
                    if stats.done >= 20 and not got:
                        got.append(stats.done)
                        os.kill(scheduler_pid, signal.SIGKILL)

            with pytest.raises(dask_backend.ClusterLost, match="went away") as info:
                pool.map(timed_tasks.slow_identity, range(100_000), chunksize=1, progress=KillTheScheduler(None))
            kept = info.value.results
            assert len(kept) >= 20 and kept == sorted(set(kept)) and kept[-1] < 100_000, \
                "the results that arrived before are kept, in input order"


def test_local_cluster_is_started_and_closed_by_mpkit():
    """cluster="local": a LocalCluster of this machine's size, owned by mpkit: shutdown() ends its
    processes (the autouse leak check would see them)."""
    out = mpkit.map(helpers.segfault_on, range(6), cluster="local", on_error="collect")
    assert out == [0, 1, 3, 4, 5]
    err = out.failures[0].exception
    assert isinstance(err, mpkit.WorkerDied) and "None" not in str(err), str(err)
    pool = mpkit.engine.default_pool()
    assert pool.client.cluster is not None and "127.0.0.1" in pool.client.scheduler.address
    mpkit.shutdown()
    assert pool.client.status == "closed"


# ---- a real Jupyter kernel ---------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_kernel_interrupt_keeps_results_and_the_cluster(tmp_path):
    """Jupyter's interrupt (SIGINT to the kernel's process group, the LocalCluster's workers in it
    too) stops a map on cluster="local": the finished results are in sys.last_value, nothing of
    the map keeps running, and the next map runs on the same cluster."""
    import json

    from tests.kernels import KernelSession

    kernel = KernelSession()
    try:
        kernel.run("import functools, json, sys, os\nimport mpkit\nfrom tests import error_tasks\n"
                   "mpkit.use('local')\nmpkit.map(abs, [-1, -2], progress=False)\n"
                   "pids = sorted(mpkit.engine.default_pool().client.run(os.getpid).values())",
                   timeout=120)
        marker = tmp_path / "done"
        msg_id = kernel.start(f"out = mpkit.map(functools.partial(error_tasks.mark_done, path={str(marker)!r}), "
                              "range(400), chunksize=1)")
        assert wait_until(lambda: marker.exists() and len(marker.read_text().split()) >= 5, timeout=60)
        kernel.km.interrupt_kernel()
        cell = kernel.collect(msg_id, timeout=60)
        assert cell.error and cell.error["ename"] == "MapInterrupted", cell.error
        seen = kernel.run("e = sys.last_value\nagain = mpkit.map(abs, range(-5, 0), progress=False)\n"
                          "now = sorted(mpkit.engine.default_pool().client.run(os.getpid).values())\n"
                          "print(json.dumps({'results': len(e.results), 'pending': len(e.pending), "
                          "'again': again, 'same_workers': now == pids}))", timeout=120)
        report = json.loads(seen.text().strip().splitlines()[-1])
        assert report["results"] >= 1 and report["results"] + report["pending"] == 400, report
        assert report["again"] == [5, 4, 3, 2, 1], report
        finished = len(marker.read_text().split())
        assert not wait_until(lambda: len(marker.read_text().split()) > finished + 2, timeout=3), \
            "items of the interrupted map kept running"
    finally:
        kernel.close()


def test_a_client_closed_under_a_running_map_ends_it_with_cluster_lost(dask_client):
    """A notebook closes its own Client (another cell, a `with Client(...)` block ending) while a
    map on it runs: the map ends with ClusterLost, its results so far kept, not with "a bug in
    mpkit" from the manager thread (ClosedClientError on the next submit)."""
    from distributed import Client

    client = Client(dask_client.scheduler.address, timeout=60, set_as_default=False)
    closed = []

    class CloseTheClient(_InterruptWhen):
        def update(self, stats):
            if stats.done >= 10 and not closed:
                closed.append(stats.done)
                client.close(timeout=10)

    try:
        with mpkit.Pool(cluster=client) as pool:
            with pytest.raises(dask_backend.ClusterLost, match="closed") as info:
                pool.map(timed_tasks.slow_identity, range(10_000), chunksize=1, progress=CloseTheClient(None))
            kept = info.value.results
            assert closed and len(kept) >= 10 and kept == sorted(set(kept)), "the results so far are kept"
    finally:
        client.close(timeout=10)
