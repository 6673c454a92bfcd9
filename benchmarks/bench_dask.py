"""Benchmark: mpkit on a Dask LocalCluster next to plain Dask and local processes, in one run.

    python benchmarks/bench_dask.py            # R=3 rounds, ~3 min on 2 cores
    python benchmarks/bench_dask.py --quick    # R=1, small sizes

One LocalCluster of W single-threaded worker processes on 127.0.0.1 (W = usable cores), made once,
with the workers' statistical profiler off as on the LocalCluster of cluster="local" (it samples
every thread's stack every 10 ms for a dashboard no one opens here); every tool runs the same work
on it, rotating the order each round; medians of R rounds:

  (a) 200,000 trivial items (x + 1): mpkit.map(cluster=client), Dask client.map over chunks sent
      as one pickled bytes each (what mpkit does), dask.bag (W partitions), Dask client.map one task
      per item (on 2,000 items: its time per item times 200,000), mpkit's local pool, Pool.map.
      Target: mpkit on Dask within 2x of multiprocessing.Pool.map's time.
  (b) 20,000 items of 200 us CPU: the same tools but one task per item. Target: 85% of the ideal
      (serial time / W).
  (c) a warm call of 10 items. Target: under 30 ms.
  (d) the inference pipeline (mpkit.recipes.inference.BatchPredictor: a micro-batcher, batches of
      up to 128, then NumpyEmbedder on one worker): predict_many over N texts, each predictor
      started and its model built before the clock, on the cluster (mpkit.use(client) when it
      starts) and on local processes, taking turns; and plain Dask doing the batcher's work: the
      texts in batches of 128, one client.submit each, to the worker holding the model. Items/s;
      target: Dask >= 0.8x local.
  (e) 5,000 trivial items with timeout=30: on Dask (in chunks, each item timed by its task), next
      to the same map without a timeout and to local processes with it (one item per chunk there).
  start-up: a LocalCluster from nothing to its first result, next to mpkit's local pool.
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

from benchmarks import _tasks  # noqa: E402
from benchmarks._results import save  # noqa: E402
from benchmarks.bench_pool import calibrate_spin, usable_cores  # noqa: E402

FULL = {"rounds": 3, "n_trivial": 200_000, "n_per_item": 2_000, "n_cpu": 20_000, "warm_calls": 10,
        "n_inference": 6_000, "n_timed": 5_000}
QUICK = {"rounds": 1, "n_trivial": 50_000, "n_per_item": 500, "n_cpu": 4_000, "warm_calls": 5,
         "n_inference": 3_000, "n_timed": 5_000}
#: timeout= of case (e): far above a trivial item, so that only its cost is measured.
TIMED_TIMEOUT = 30.0
TASK_SECONDS = 200e-6
RESULTS = "dask.md"  # in benchmarks/results


W = usable_cores()


#: Case (d) on plain Dask: the same 6,000 texts cut into batches of 128, one task per batch, all
#: submitted at once to the one worker holding the model (the work the pipeline's batcher does).
PLAIN_D = "plain Dask, client.submit per batch of 128"

def chunks(items: list, count: int) -> list[bytes]:
    size = max(1, -(-len(items) // count))
    return [pickle.dumps(items[i:i + size], pickle.HIGHEST_PROTOCOL) for i in range(0, len(items), size)]


def unchunk(results: list[bytes]) -> list:
    return [x for data in results for x in pickle.loads(data)]


def timed(call, expected) -> float:
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    if list(out) != expected:
        raise AssertionError("wrong results")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="R=1, small sizes")
    opts = parser.parse_args()
    cfg = QUICK if opts.quick else FULL
    import multiprocessing as mp

    import dask
    import dask.bag as db
    import distributed

    import mpkit
    from benchmarks.bench_inference import texts
    from mpkit.recipes.inference import BatchPredictor, NumpyEmbedder

    n_iter = calibrate_spin(TASK_SECONDS)
    start = time.perf_counter()
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = distributed.LocalCluster(n_workers=W, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)
    client.submit(_tasks.inc, 1).result()
    cluster_start = time.perf_counter() - start
    start = time.perf_counter()
    local = mpkit.Pool(W)
    local.map(_tasks.inc, [1], progress=False)
    local_start = time.perf_counter() - start
    ctx = mp.get_context("forkserver")
    mp_pool = ctx.Pool(W)
    on_dask = mpkit.Pool(cluster=client)
    rows: dict[str, dict[str, list[float]]] = {}
    predictors = {}
    for name, cluster_ in (("BatchPredictor on Dask", client), ("BatchPredictor, local processes", None)):
        mpkit.use(cluster_)  # where its pipeline starts: start() below
        predictors[name] = BatchPredictor(NumpyEmbedder, max_batch=128, max_wait=0.05, name=name).start()
    mpkit.use(None)

    def record(case, tool, seconds):
        rows.setdefault(case, {}).setdefault(tool, []).append(seconds)

    try:
        trivial = list(range(cfg["n_trivial"]))
        expect_a = [x + 1 for x in trivial]
        few = trivial[:cfg["n_per_item"]]
        cpu = [n_iter] * cfg["n_cpu"]
        expect_b = [_tasks.spin(n_iter)] * cfg["n_cpu"]
        warm = list(range(10))
        queries = texts(cfg["n_inference"])
        query_batches = [queries[i:i + 128] for i in range(0, len(queries), 128)]
        model_worker = sorted(client.scheduler_info()["workers"])[0]
        client.submit(_tasks.embed_batch, query_batches[0], workers=[model_worker], pure=False).result()
        expect_c = [x + 1 for x in warm]
        with dask.config.set(scheduler=client.get):
            bag = lambda items, fn: db.from_sequence(items, npartitions=W).map(fn).compute()  # noqa: E731
            def bulk(fn, chunk_fn, items, n_chunks):
                """The tools of (a) and (b): the same work on each, Dask's chunks as bytes."""
                return {
                    "mpkit.map on Dask": lambda: on_dask.map(fn, items, progress=False),
                    "Dask client.map, chunks as bytes": lambda: unchunk(client.gather(client.map(
                        chunk_fn, chunks(items, n_chunks), pure=False))),
                    "dask.bag": lambda: bag(items, fn),
                    "mpkit.map, local processes": lambda: local.map(fn, items, progress=False),
                    "multiprocessing Pool.map": lambda: mp_pool.map(fn, items, max(1, len(items) // (4 * W))),
                }

            tools_a = bulk(_tasks.inc, _tasks.inc_chunk, trivial, 4 * W)
            tools_b = bulk(_tasks.spin, _tasks.spin_chunk, cpu, 8 * W)
            tools_c = {
                "mpkit.map on Dask": lambda: on_dask.map(_tasks.inc, warm, progress=False),
                "Dask client.map, one task per item": lambda: client.gather(client.map(_tasks.inc, warm, pure=False)),
                "mpkit.map, local processes": lambda: local.map(_tasks.inc, warm, progress=False),
                "multiprocessing Pool.map": lambda: mp_pool.map(_tasks.inc, warm),
            }
            timed_items = trivial[:cfg["n_timed"]]
            expect_e = [x + 1 for x in timed_items]
            tools_e = {
                "mpkit.map on Dask, timeout=": lambda: on_dask.map(_tasks.inc, timed_items, timeout=TIMED_TIMEOUT,
                                                                   progress=False),
                "mpkit.map on Dask, no timeout": lambda: on_dask.map(_tasks.inc, timed_items, progress=False),
                "mpkit.map, local processes, timeout=": lambda: local.map(_tasks.inc, timed_items,
                                                                          timeout=TIMED_TIMEOUT, progress=False),
            }
            for tools in (tools_a, tools_b, tools_c, tools_e):  # warm-up, untimed
                for call in tools.values():
                    call()
            serial = min(timed(lambda: [_tasks.spin(n) for n in cpu], expect_b) for _ in range(2))
            for r in range(cfg["rounds"]):
                order = list(tools_a)[r % len(tools_a):] + list(tools_a)[:r % len(tools_a)]
                for name in order:
                    record("a", name, timed(tools_a[name], expect_a))
                per_item = timed(lambda: client.gather(client.map(_tasks.inc, few, pure=False)), few and [x + 1 for x in few])
                record("a", "Dask client.map, one task per item (extrapolated)", per_item * len(trivial) / len(few))
                for name in order:
                    record("b", name, timed(tools_b[name], expect_b))
                for name in tools_c:
                    calls = [timed(tools_c[name], expect_c) for _ in range(cfg["warm_calls"])]
                    record("c", name, statistics.median(calls))
                for name in list(tools_e)[r % len(tools_e):] + list(tools_e)[:r % len(tools_e)]:
                    record("e", name, timed(tools_e[name], expect_e))
                for name in list(predictors)[r % 2:] + list(predictors)[:r % 2]:
                    t = time.perf_counter()
                    if len(predictors[name].predict_many(queries)) != len(queries):
                        raise AssertionError("wrong results")
                    record("d", name, time.perf_counter() - t)
                t = time.perf_counter()
                if sum(map(len, client.gather([client.submit(_tasks.embed_batch, b, workers=[model_worker], pure=False)
                                               for b in query_batches]))) != len(queries):
                    raise AssertionError("wrong results")
                record("d", PLAIN_D, time.perf_counter() - t)
                print(f"round {r + 1}/{cfg['rounds']} done", file=sys.stderr, flush=True)
    finally:
        for predictor in predictors.values():
            predictor.close()
        mpkit.shutdown()
        on_dask.shutdown()
        local.shutdown()
        mp_pool.terminate()
        client.close()
        cluster.close()

    base_a = statistics.median(rows["a"]["multiprocessing Pool.map"])
    lines = ["# mpkit on Dask (bench_dask.py)", "",
             f"- machine: {W} usable cores; Python {sys.version.split()[0]}; distributed {distributed.__version__}; "
             f"rounds R = {cfg['rounds']}; load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
             f"- LocalCluster of {W} single-threaded worker processes (profiler off): start to first result {cluster_start:.2f} s; "
             f"mpkit's local pool: {local_start:.2f} s", "",
             "| case | tool | median s | vs Pool.map's time | note |", "|---|---|---:|---:|---|"]
    for name, samples in rows["a"].items():
        med = statistics.median(samples)
        lines.append(f"| (a) {cfg['n_trivial']:,} trivial items | {name} | {med:.3f} | {med / base_a:.2f}x | |")
    for name, samples in rows["b"].items():
        med = statistics.median(samples)
        lines.append(f"| (b) {cfg['n_cpu']:,} x 200 us | {name} | {med:.2f} | | {serial / W / med:.0%} of ideal "
                     f"(serial {serial:.2f} s / {W}) |")
    for name, samples in rows["c"].items():
        lines.append(f"| (c) warm call, 10 items | {name} | {statistics.median(samples) * 1e3:.1f} ms | | |")
    rates = {name: cfg["n_inference"] / statistics.median(samples) for name, samples in rows["d"].items()}
    for name, rate in rates.items():
        lines.append(f"| (d) inference pipeline, {cfg['n_inference']:,} texts | {name} | "
                     f"{statistics.median(rows['d'][name]):.2f} | | {rate:,.0f} items/s |")
    for name, samples in rows["e"].items():
        lines.append(f"| (e) {cfg['n_timed']:,} trivial items, timeout={TIMED_TIMEOUT:g} | {name} | "
                     f"{statistics.median(samples):.3f} | | |")
    mp_d = rates["BatchPredictor on Dask"] / rates["BatchPredictor, local processes"]
    plain_d = rates[PLAIN_D] / rates["BatchPredictor, local processes"]
    mp_a = statistics.median(rows["a"]["mpkit.map on Dask"]) / base_a
    mp_b = serial / W / statistics.median(rows["b"]["mpkit.map on Dask"])
    mp_c = statistics.median(rows["c"]["mpkit.map on Dask"])
    lines += ["", f"- (a) target: mpkit on Dask within 2x of Pool.map's time: {mp_a:.2f}x ({'met' if mp_a <= 2 else 'NOT met'})",
              f"- (b) target: 85% of ideal: {mp_b:.0%} ({'met' if mp_b >= 0.85 else 'NOT met'})",
              f"- (c) target: a warm call under 30 ms: {mp_c * 1e3:.1f} ms ({'met' if mp_c < 0.03 else 'NOT met'})",
              f"- (d) target: the inference pipeline on Dask >= 0.8x local items/s: {mp_d:.2f}x "
              f"({'met' if mp_d >= 0.8 else 'NOT met'}; plain Dask, one task per batch: {plain_d:.2f}x)"]
    text = "\n".join(lines) + "\n"
    print(text)
    save(RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
