"""Pipelines on a real Dask LocalCluster (2 single-threaded worker processes on 127.0.0.1, shared
by this module): class stages built once per worker, stages on their own workers, a worker
SIGKILLed mid-run, services, scale(). The behaviour shared with local stages runs on both backends
in test_pipeline.py (its ``any_backend`` tests)."""
import functools
import os
import signal
import threading

import pytest

pytest.importorskip("distributed")

import mpkit  # noqa: E402
from mpkit import Pipeline  # noqa: E402
from tests import dask_tasks, helpers  # noqa: E402
from tests.proctree import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid, on_error="ignore").values())


def builds_of(log) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def model_class(log):
    """A stage class as a notebook defines it (in a cell, sent by value), noting each build."""
    class Model:
        def __init__(self):
            with open(log, "a") as f:  # a model loading: it must happen once per worker
                f.write(f"{os.getpid()}\n")
            self.pid = os.getpid()

        def __call__(self, item):
            return (item, self.pid)

    return Model


@pytest.fixture
def on_cluster(dask_client):
    yield dask_client
    mpkit.shutdown()


def test_a_class_stage_is_built_once_per_dask_worker_and_reused_across_tasks(on_cluster, tmp_path):
    from distributed import get_task_stream

    log = tmp_path / "builds"
    pipe = Pipeline("models").stage(helpers.identity).stage(model_class(log), workers=2)
    with get_task_stream(on_cluster) as stream:
        out = pipe.run(iter(range(3000)), ordered=True, cluster=on_cluster)
    assert [x for x, _ in out] == list(range(3000))
    builds = builds_of(log)
    assert sorted(builds) == sorted(set(builds)), f"a worker built the model twice: {builds}"
    assert {pid for _, pid in out} == set(builds) <= worker_pids(on_cluster)
    model_tasks = [t for t in stream.data if "Model" in str(t["key"])]
    assert len(model_tasks) > len(builds), "each build served one task only: nothing was reused"
    # a second run builds its own (as a local run does), once per worker again
    pipe.run(range(10), cluster=on_cluster)
    assert len(builds_of(log)) > len(builds) and len(set(builds_of(log)[len(builds):])) == len(builds_of(log)) - len(builds)


def test_stages_of_one_worker_each_run_on_two_workers(on_cluster):
    """As two local stages of one process each: the second does not wait behind the first."""
    pipe = Pipeline().stage(dask_tasks.with_pid).stage(dask_tasks.with_pid, name="tag")
    out = pipe.run(range(200), cluster=on_cluster)
    first = {pid for (_, pid), _ in out}
    last = {pid for _, pid in out}
    assert len(first) == 1 and len(last) == 1 and first != last, (first, last)


def test_a_dask_worker_sigkilled_mid_pipeline_loses_and_duplicates_nothing(on_cluster, tmp_path):
    log = tmp_path / "builds"
    pipe = (Pipeline("fragile")
            .stage(functools.partial(dask_tasks.with_pid, seconds=0.01), workers=2)
            .batch(8, 0.2).stage(helpers.identity)
            .stage(model_class(log), workers=2))
    pids = sorted(worker_pids(on_cluster))
    killed = []

    def kill_soon():  # a worker dies while every stage holds items
        if wait_until(lambda: pipe.stats().completed >= 100, timeout=120):
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
    killer = threading.Thread(target=kill_soon, daemon=True)
    killer.start()
    out = pipe.run(range(600), ordered=True, cluster=on_cluster)
    killer.join(10)
    assert killed, "the run ended before a worker could be killed"
    assert [x for (x, _), _ in out] == list(range(600))  # every item once, in order
    stats = pipe.stats()
    assert stats.accounted and stats.completed == 600 and stats.failed == 0
    builds = builds_of(log)
    assert len(builds) == len(set(builds)), f"a worker built the model twice: {builds}"
    assert wait_until(lambda: len(worker_pids(on_cluster)) == 2, timeout=60)
    # the nanny's replacement builds the model too, once, when the stage's chunks reach it
    replacement = worker_pids(on_cluster) - set(pids)
    before = len(builds_of(log))
    out = Pipeline().stage(model_class(log), workers=2).run(range(2000), cluster=on_cluster)
    assert {pid for _, pid in out} == worker_pids(on_cluster)
    assert [builds_of(log)[before:].count(pid) for pid in replacement] == [1] * len(replacement) != []


def test_a_service_on_dask_returns_futures(on_cluster):
    pipe = Pipeline("svc").stage(helpers.double).batch(4, 0.1).stage(helpers.BatchSizes)
    svc = pipe.start(cluster=on_cluster)
    try:
        futures = [svc.submit(i) for i in range(30)]
        results = [f.result(timeout=60) for f in futures]
        assert [x for x, _, _ in results] == [2 * i for i in range(30)]
        assert all(1 <= size <= 4 for _, size, _ in results)
        assert {pid for _, _, pid in results} <= worker_pids(on_cluster)
        # what %mp_ps and the dashboard list: each stage's own Dask worker, by pid
        listed = pipe.workers()
        assert [pid for _, pid, _ in listed["BatchSizes"]] == [results[0][2]]
        assert len(listed["double"]) == 1 and listed["double"][0][1] in worker_pids(on_cluster)
    finally:
        stats = svc.stop()
    assert stats.completed == 30


def test_scale_changes_the_workers_a_dask_stage_runs_on(on_cluster):
    pipe = Pipeline().stage(functools.partial(dask_tasks.with_pid, seconds=0.05), name="slow")
    svc = pipe.start(cluster=on_cluster)
    try:
        before = {pid for _, pid in (f.result(timeout=60) for f in [svc.submit(i) for i in range(20)])}
        assert len(before) == 1
        pipe.scale("slow", 2)
        after = {pid for _, pid in (f.result(timeout=60) for f in [svc.submit(i) for i in range(40)])}
        assert len(after) == 2 and svc.stats().stage("slow").target_workers == 2
    finally:
        svc.stop()


def test_local_only_options_are_refused_on_dask_with_a_fix(on_cluster):
    pipe = Pipeline().stage(helpers.double, max_tasks_per_child=10)
    with pytest.raises(ValueError, match="max_tasks_per_child=10.*Fix"):
        pipe.run(range(3), cluster=on_cluster)
    with pytest.raises(ValueError, match="start_method"):
        Pipeline().stage(helpers.double).run(range(3), cluster=on_cluster, start_method="spawn")
    mpkit.use(on_cluster)  # the notebook moved to the cluster; a pipeline given a start method stays local
    try:
        out = Pipeline().stage(dask_tasks.with_pid).run(range(3), start_method="spawn")
        assert sorted(x for x, _ in out) == [0, 1, 2]
        assert not {pid for _, pid in out} & worker_pids(on_cluster)
    finally:
        mpkit.use(None)


def test_on_a_cluster_that_reschedules_a_dead_workers_tasks_none_waits_forever(tmp_path):
    """`dask scheduler` + two `dask worker`s as a user starts them: Dask reschedules the tasks of
    a dead worker itself (allowed-failures 3), so the chunks pinned to it would wait for its
    address for ever; they go to the stage's workers left, none lost, none twice in the output."""
    from distributed import Client

    from tests.dask_cluster import command_line_cluster

    with command_line_cluster(2) as address:
        client = Client(address, timeout=60)
        try:
            assert wait_until(lambda: len(worker_pids(client)) == 2, timeout=60)
            pipe = Pipeline("fragile").stage(functools.partial(dask_tasks.with_pid, seconds=0.02), name="one")
            killed = []

            def kill_soon():  # the stage's only worker
                if wait_until(lambda: pipe.stats().completed >= 40, timeout=120):
                    victim = pipe.workers()["one"][0][1]
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
            killer = threading.Thread(target=kill_soon, daemon=True)
            killer.start()
            out = pipe.run(range(300), ordered=True, cluster=client)
            killer.join(10)
            assert killed and [x for x, _ in out] == list(range(300))
            assert killed[0] in {pid for _, pid in out} and len({pid for _, pid in out}) == 2
            assert pipe.stats().accounted
        finally:
            mpkit.shutdown()
            client.close()


def test_a_pipeline_on_a_cluster_keeps_the_notebooks_pools(on_cluster):
    """A notebook mapping locally, then running one pipeline on a cluster: its local pool stays
    warm. With mpkit.use(cluster), maps and pipelines share one connection (one warm cluster)."""
    from mpkit.engine import dask as dask_backend

    assert mpkit.map(helpers.square, range(10)) == [x * x for x in range(10)]
    local = mpkit.engine.default_pool()
    assert Pipeline().stage(helpers.double).run(range(10), ordered=True, cluster=on_cluster) == list(range(0, 20, 2))
    assert mpkit.engine.default_pool() is local and not local.closed
    mpkit.use(on_cluster)
    try:
        assert mpkit.map(helpers.square, range(10)) == [x * x for x in range(10)]
        shared = mpkit.engine.default_pool()
        assert isinstance(shared, dask_backend.Pool)
        assert Pipeline().stage(helpers.double).run(range(10), ordered=True) == list(range(0, 20, 2))
        assert mpkit.engine.default_pool() is shared and not shared.closed
    finally:
        mpkit.use(None)


def test_a_dask_stages_prints_reach_the_cell_with_its_name(on_cluster, capsys):
    Pipeline().stage(helpers.chatty, name="talker").run(range(4), cluster=on_cluster)
    out, err = capsys.readouterr()
    for x in range(4):
        assert any(line.startswith("[talker w") and line.endswith(f"] item {x}") for line in out.splitlines()), out
        assert any(line.startswith("[talker w") and line.endswith(f"] warn {x}") for line in err.splitlines()), err


def test_a_pipeline_whose_scheduler_goes_away_keeps_the_results_so_far(tmp_path):
    """The scheduler of a cluster the user started is killed under a running pipeline: run()
    ends with ClusterLost, and the results that came out of the last stage before are in its
    .results (as a map's are), not lost with the cluster."""
    from distributed import Client

    from mpkit.engine import dask as dask_backend
    from tests.dask_cluster import command_line_cluster

    with command_line_cluster(2) as address:
        client = Client(address, timeout=60)
        try:
            assert wait_until(lambda: len(worker_pids(client)) == 2, timeout=60)
            scheduler_pid = client.run_on_scheduler(os.getpid)
            pipe = (Pipeline("lost").stage(functools.partial(dask_tasks.with_pid, seconds=0.02), name="one")
                    .stage(dask_tasks.first_of, name="two"))

            def kill_soon():
                if wait_until(lambda: pipe.stats().completed >= 40, timeout=120):
                    os.kill(scheduler_pid, signal.SIGKILL)
            killer = threading.Thread(target=kill_soon, daemon=True)
            killer.start()
            with pytest.raises(dask_backend.ClusterLost) as info:
                pipe.run(range(100_000), ordered=True, cluster=client)
            killer.join(10)
            kept = info.value.results
            assert kept is not None, "the finished results of the pipeline were dropped with the cluster"
            assert len(kept) >= 40 and kept == sorted(set(kept)), "the results so far, in input order"
        finally:
            mpkit.shutdown()
            client.close(timeout=10)


def test_a_one_worker_stage_hands_items_on_in_the_order_they_came(on_cluster):
    """A stage of one worker passes its items on in the order it got them, as a local one does:
    so a keyed stage after it (a conversation's messages, counted per conversation) sees each
    key's items in input order. The results of its chunks were fetched at once and arrived in
    any order, so the keyed stage's state saw a key's later items first."""
    class CountPerKey:  # a notebook's stateful stage: the n-th message of each conversation
        def __init__(self):
            self.seen = {}

        def __call__(self, item):
            conversation, message = item
            self.seen[conversation] = self.seen.get(conversation, 0) + 1
            return conversation, message, self.seen[conversation]

    items = [(i % 5, i) for i in range(1500)]
    pipe = (Pipeline("chat").stage(functools.partial(dask_tasks.with_pid, seconds=0.001), name="parse")
            .stage(dask_tasks.first_of, name="unwrap")
            .stage(CountPerKey, workers=2, key=lambda item: item[0]))
    out = pipe.run(items, ordered=True, cluster=on_cluster)
    for conversation in range(5):
        counts = [n for c, _, n in out if c == conversation]
        assert counts == list(range(1, 301)), f"conversation {conversation}'s messages were counted out of order"
    streamed = list(Pipeline("fifo").stage(helpers.identity).imap(range(3000), cluster=on_cluster))
    assert streamed == list(range(3000)), "a one-worker stage's items came out of order"


def test_a_service_whose_client_is_closed_fails_its_futures_with_cluster_lost(dask_client):
    """The notebook closes the Client a running service uses: each waiting future fails with
    ClusterLost (what happened and the fix), not "a bug in mpkit" from its manager thread."""
    from distributed import Client

    from mpkit.engine import dask as dask_backend

    client = Client(dask_client.scheduler.address, timeout=60, set_as_default=False)
    svc = Pipeline("svc").stage(functools.partial(dask_tasks.with_pid, seconds=0.05)).start(cluster=client)
    try:
        futures = [svc.submit(i) for i in range(200)]
        assert futures[3].result(timeout=60)[0] == 3
        client.close(timeout=10)
        errors = []
        for future in futures:
            try:
                future.result(timeout=60)
            except Exception as exc:
                errors.append(exc)
        assert errors and all(isinstance(e, dask_backend.ClusterLost) for e in errors), \
            {type(e).__name__: str(e)[:200] for e in errors}
    finally:
        svc.stop()
        mpkit.shutdown()
        client.close(timeout=10)


def test_an_interrupted_pipeline_restarts_the_worker_stuck_in_its_item(on_cluster, tmp_path):
    """The kernel's interrupt stops a pipeline whose stage is in a ten-minute call: the Dask
    thread cannot be stopped, so past a short grace its worker is restarted, as an interrupted
    map's are; it was left running the call, and the next run on that worker waited for it."""
    marker = tmp_path / "started"

    def source():  # a notebook's interrupt, once the long call has begun
        yield ("long", 600)
        assert wait_until(lambda: os.path.exists(f"{marker}.long"), timeout=60)
        raise KeyboardInterrupt

    pipe = Pipeline("stuck").stage(functools.partial(helpers.sleep_and_record, path=str(marker)))
    with pytest.raises(mpkit.MapInterrupted):
        pipe.run(source(), cluster=on_cluster)
    stuck = int(open(f"{marker}.long").read())
    assert wait_until(lambda: stuck not in worker_pids(on_cluster) and len(worker_pids(on_cluster)) == 2,
                      timeout=60), "the worker running the interrupted pipeline's call was left running it"


def test_a_batched_stages_timeout_bounds_the_whole_call(on_cluster):
    """``timeout`` after .batch() bounds one call on the whole batch, as locally: on Dask it was
    multiplied by the batch's size, so a model call of 6 s on a batch of 8 with timeout=2 ran to
    its end (its limit was 16 s)."""
    def slow_model(batch):  # a notebook's model call, stuck for longer than its timeout
        import time
        time.sleep(6)
        return batch

    out = (Pipeline("model").batch(8, max_wait=0.5).stage(slow_model, timeout=2)
           .run(range(8), on_error="collect", cluster=on_cluster))
    assert list(out) == [] and len(out.failures) == 8, out
    assert all(isinstance(f.exception, mpkit.TaskTimeout) for f in out.failures), out.failures
