"""Benchmark: mpkit's data plane (issue 8) next to direct pipes and multiprocessing.Pool, in one run.

    python benchmarks/bench_dataplane.py                  # full run (R=3 rounds); ~10 min on 2 cores
                                                          # with the landed code, most of it in (b)
    python benchmarks/bench_dataplane.py --quick          # smoke run: R=1, small sizes, under a minute
    python benchmarks/bench_dataplane.py --cases a,d      # only some cases (--repeats R: other rounds)
    python benchmarks/bench_dataplane.py --mpkit DIR      # import mpkit from another checkout DIR

Landed version beside this one, in one run: make a checkout of the older commit and name it with
``--against``; every case then runs twice, each time in a fresh child process of this script, one
with the older mpkit and one with this checkout's (the order alternating from case to case), and
the table shows both side by side (twice the time of one run):

    git worktree add ../mpkit-landed <commit>            # from the repo root; any checkout will do
    python benchmarks/bench_dataplane.py --against ../mpkit-landed
    git worktree remove ../mpkit-landed                  # afterwards

Only ``mpkit`` is taken from DIR (its ``mpkit/`` folder); the benchmark's own modules always come
from this checkout (DIR may predate them): both are linked into a temporary folder that goes first
on sys.path and PYTHONPATH, for this process and every child. The header prints the commit and file
of the mpkit in use, and a worker reports which mpkit it imported (checked). Pointing PYTHONPATH at
the other checkout is not enough: the script puts its own folder first; use --mpkit or --against.

Cases (public API only: mpkit.map, mpkit.imap, Pipeline.run/imap/start):
  (a) Pipeline of 2 identity stages, 1 worker each, 1 KB bytes items from a generator: items/s,
      next to the direct-pipe baseline (benchmarks/_direct_pipes.py: feeder thread -> stage process
      -> stage process -> this process over multiprocessing Pipes, lists of 128 items per send).
      Target: >= 100k items/s or >= 0.7x direct.
  (b) the same with 1 MB items, as bytes and as numpy arrays (direct: one item per send, what a fair
      user sends when each item is 1 MB): items/s and this process's peak RSS growth (sampled at
      20 Hz). Targets: >= 0.8x direct, growth < 500 MB. The consumer drops each result: mpkit
      through Pipeline.imap when the checkout has it, else Pipeline.run (which keeps every result,
      n x 1 MB, by design: the mode is shown in the table; --pipeline-api forces one).
  (c) mpkit.map(np.mean, 400 arrays of 1 MB): chunksize="auto" vs chunksize=1 vs Pool.map (default
      chunksize), same start method, warm pools. Target: auto at least as fast as both.
  (d) a 100 MB float64 array as the argument (np.mean: returns a float) and as the result
      (build_array(nbytes): built in the worker): mpkit.map of one item vs Pool.apply, and one
      100 MB np.copyto in this process for scale. Target: >= 3x faster than Pool.
  (e) imap of 1,000 results of 1 MB (built in the worker) consumed lazily (the consumer sleeps
      5 ms per item): this process's peak RSS growth, mpkit.imap vs Pool.imap (chunksize 1).
  (f) a real Jupyter kernel: latency of a trivial cell (1+1, execute request to reply) while a
      pipeline service in that kernel runs flat out (a thread submitting 1 KB items as fast as
      submit() returns, 2 identity stages), vs the same kernel idle. Target: p50 < 20 ms, max < 100 ms.
      Controls in the same kernel, same cell count, to tell mpkit's part from the floor: with no
      mpkit, one thread spinning pure Python, and two threads passing the same 1 KB bytes through a
      bounded queue.Queue (any busy thread makes the kernel's own threads, which hand each cell's
      messages to each other, wait for the GIL: up to a switch interval, 5 ms, at each hand-over);
      the same service flat out in another process (the machine as busy, the kernel's GIL free);
      the service paced at a few rates (latency against load); and, as a trial only, the spinning
      thread and the flat-out service with the kernel's switch interval set to SWITCH_TRIAL.

Method: in each round the systems take turns, the order rotated from round to round, so that noise
from other work on the machine falls on all alike; reported are medians over R rounds, and ratios
are the median of the per-round ratios (paired). Pipelines start their workers inside each run and
the direct chain its processes inside the timing too; pools (mpkit's default pool, Pool) are warm.
Every system uses the same start method: --start-method, else MPKIT_START_METHOD, else mpkit's
default (forkserver where the platform has it, else spawn).
Results: printed as markdown, and written to benchmarks/results/dataplane.md and dataplane.json
(rows: case, what, value in seconds / bytes / items per second / ratio, shown, target, met). A case
that fails is reported as such and the others still run; the exit code is 1 then, or if a worker
process is left behind.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_MD = os.path.join(HERE, "results", "dataplane.md")
RESULTS_JSON = os.path.join(HERE, "results", "dataplane.json")
MB = 2 ** 20
KB = 2 ** 10

FULL = {"repeats": 3, "n_a": 200_000, "n_b": 1_000, "n_c": 400, "d_bytes": 100 * MB, "d_repeats": 5,
        "n_e": 1_000, "cells": 60}
QUICK = {"repeats": 1, "n_a": 20_000, "n_b": 100, "n_c": 80, "d_bytes": 20 * MB, "d_repeats": 2,
         "n_e": 150, "cells": 20}
CASES = "abcdef"
#: Items per send in the direct baseline: lists of up to 128 items, but no more than 256 KiB per
#: message (a 1 MB item goes alone). What a fair hand-written chain does; larger lists gain little
#: for 1 KB items and only add latency and memory.
DIRECT_BATCH, DIRECT_BATCH_BYTES = 128, 256 * KB
CONSUMER_SLEEP = 0.005  # (e): the lazy consumer's time per item; production is faster than this
RSS_INTERVAL = 0.05     # 20 Hz: a 1 MB item stream moves tens of MB between two samples at worst
KERNEL_TIMEOUT = 60.0   # a busy 2-core machine can take a while to start a kernel or answer a cell
CELL_GAP = 0.05         # between two timed cells: the kernel's other threads get the GIL meanwhile
WARM_SECONDS = 2.0      # (f): the service runs this long before the first timed cell
TARGETS = {"a_rate": 100_000, "a_ratio": 0.7, "b_ratio": 0.8, "b_rss": 500 * MB, "d_ratio": 3.0,
           "f_p50": 0.020, "f_max": 0.100}


# ---- which mpkit: the path set-up (this process only; children inherit sys.path and PYTHONPATH) ------
def path_dir(mpkit_dir: str | None) -> str:
    """The folder to put first on the paths: this repo, or a temporary folder linking DIR/mpkit and
    this checkout's benchmarks package."""
    if mpkit_dir is None:
        return ROOT
    mpkit_dir = os.path.abspath(mpkit_dir)
    if not os.path.isfile(os.path.join(mpkit_dir, "mpkit", "__init__.py")):
        sys.exit(f"--mpkit/--against {mpkit_dir}: no mpkit/__init__.py there; give the root of an "
                 "mpkit checkout (e.g. one made with `git worktree add ../mpkit-landed <commit>`)")
    links = tempfile.mkdtemp(prefix="mpkit-bench-")
    atexit.register(shutil.rmtree, links, True)
    os.symlink(os.path.join(mpkit_dir, "mpkit"), os.path.join(links, "mpkit"))
    os.symlink(HERE, os.path.join(links, "benchmarks"))
    return links


def set_paths(first: str) -> None:
    # Children started by forkserver or spawn import the task functions (and mpkit) by name: they
    # must find them. sys.path is for this process; PYTHONPATH for every child (and the kernel of (f)),
    # set before any process or the forkserver exists.
    # The forkserver (python -c) has the working directory first on its path, before PYTHONPATH, and
    # takes no sys.path from this process: it must be the same folder.
    sys.path[:] = [first] + [p for p in sys.path if os.path.abspath(p or ".") not in (first, ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (first, os.environ.get("PYTHONPATH")) if p)
    os.chdir(first)


def checkout_facts() -> dict:
    """Which mpkit this process imports: its file, and the commit of its checkout (if a git one)."""
    import mpkit

    here = os.path.dirname(os.path.realpath(mpkit.__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "log", "-1", "--format=%h %s"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return {"file": os.path.realpath(mpkit.__file__), "commit": commit[:90] or f"? (not a git checkout: {here})",
            "dirty": bool(dirty), "has_pipeline_imap": hasattr(mpkit.Pipeline, "imap")}


def check_worker_mpkit(start_method: str) -> None:
    """A worker must import the same mpkit as this process (the paths reached the children)."""
    import mpkit

    from benchmarks._dataplane_tasks import mpkit_file

    there = mpkit.map(mpkit_file, [0], start_method=start_method, progress=False)[0]
    if there != os.path.realpath(mpkit.__file__):
        sys.exit(f"a worker imported mpkit from {there}, this process from {mpkit.__file__}: the paths "
                 "did not reach the children; run the script by its path, not with -m from another folder")


# ---- measuring ----------------------------------------------------------------------------------------
def release_free_memory() -> None:
    """Give the allocator's free pages back to the system (glibc's malloc_trim) before a baseline.

    Without it, memory freed by an earlier round stays in this process and is reused by the next
    one, whose growth then reads near zero: the order of the rounds, not the system, would decide."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline keeps what the allocator holds
        pass


class ParentRss:
    """``with ParentRss() as r: ...`` then ``r.growth``: this process's peak RSS minus its RSS at entry."""

    def __init__(self, interval: float = RSS_INTERVAL):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.peak = self.base = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        gc.collect()
        release_free_memory()
        self.base = self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


def rotate_rounds(runners: dict, repeats: int, label: str) -> dict[str, list[dict]]:
    """Each runner once per round, the order rotated per round; runner() -> dict with "seconds"."""
    names = list(runners)
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            print(f"  {label}: round {r + 1}/{repeats}, {name} ...", file=sys.stderr, end=" ", flush=True)
            s = runners[name]()
            extra = f", peak RSS +{s['rss'] / MB:,.0f} MB" if "rss" in s else ""
            print(f"{s['seconds']:.3f} s{extra}", file=sys.stderr, flush=True)
            samples[name].append(s)
    return samples


def med(samples: list[dict], key: str = "seconds") -> float:
    return statistics.median(s[key] for s in samples)


def paired(samples: dict, num: str, den: str, key: str = "seconds") -> float:
    """Median over rounds of samples[num] / samples[den] (per round)."""
    return statistics.median(a[key] / b[key] for a, b in zip(samples[num], samples[den]))


def row(case: str, what: str, value: float | None, shown: str, target: str = "", met: bool | None = None) -> dict:
    """A line of the report; ``key`` matches it across checkouts (which may consume a Pipeline
    through run or imap)."""
    key = case + ":" + what.replace("Pipeline.imap", "Pipeline").replace("Pipeline.run", "Pipeline")
    return {"case": case, "key": key, "what": what, "value": value, "shown": shown, "target": target, "met": met}


# ---- (a) and (b): two identity stages, mpkit vs direct pipes -----------------------------------------
def pipeline_api(requested: str) -> str:
    from mpkit import Pipeline

    if requested == "auto":
        return "imap" if hasattr(Pipeline, "imap") else "run"
    if requested == "imap" and not hasattr(Pipeline, "imap"):
        sys.exit("--pipeline-api imap: this checkout's Pipeline has no imap(); use run or auto")
    return requested


def _supported(fn, **kwargs) -> dict:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def run_mpkit_stream(pipe, kind: str, n: int, size: int, api: str, start_method: str) -> dict:
    from benchmarks._dataplane_tasks import item_index, items

    total = count = 0
    with ParentRss() as rss:
        start = time.perf_counter()
        if api == "imap":
            stream = pipe.imap(items(kind, n, size), **_supported(pipe.imap, progress=False,
                                                                  start_method=start_method))
            try:
                for r in stream:
                    total += item_index(kind, r)
                    count += 1
                    del r
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        else:
            results = pipe.run(items(kind, n, size), progress=False, start_method=start_method)
            for r in results:
                total += item_index(kind, r)
                count += 1
        seconds = time.perf_counter() - start
    if api == "run":
        del results
    if count != n or total != n * (n - 1) // 2:
        raise AssertionError(f"mpkit pipeline: {count} results for {n} items, or wrong ones")
    return {"seconds": seconds, "rss": rss.growth}


def run_direct(kind: str, n: int, size: int, start_method: str) -> dict:
    from benchmarks._dataplane_tasks import identity, items
    from benchmarks._direct_pipes import run_chain

    batch = max(1, min(DIRECT_BATCH, DIRECT_BATCH_BYTES // size))
    with ParentRss() as rss:
        seconds, count = run_chain(items(kind, n, size), kind, identity, batch=batch, start_method=start_method)
    if count != n:
        raise AssertionError(f"direct pipes: {count} items for {n}")
    return {"seconds": seconds, "rss": rss.growth}


def two_stages(name: str):
    from mpkit import Pipeline

    from benchmarks._dataplane_tasks import identity

    return Pipeline(name).stage(identity, name="identity-1").stage(identity, name="identity-2")


def compare_stages(label: str, kind: str, n: int, size: int, cfg: dict, opts) -> dict[str, list[dict]]:
    api = pipeline_api(opts.pipeline_api)
    pipe = two_stages(f"dataplane-{label}")
    sm = opts.start_method
    # warm-up, untimed: imports, the forkserver, the page cache
    run_mpkit_stream(pipe, kind, min(n, 200), size, api, sm)
    run_direct(kind, min(n, 200), size, sm)
    return rotate_rounds({"direct pipes": lambda: run_direct(kind, n, size, sm),
                          f"mpkit Pipeline.{api}": lambda: run_mpkit_stream(pipe, kind, n, size, api, sm)},
                         cfg["repeats"], label)


def case_a(cfg, opts) -> list[dict]:
    n = cfg["n_a"]
    s = compare_stages("(a)", "bytes", n, KB, cfg, opts)
    mp_name = next(k for k in s if k.startswith("mpkit"))
    rate, direct = n / med(s[mp_name]), n / med(s["direct pipes"])
    ratio = paired(s, "direct pipes", mp_name)  # time direct / time mpkit = rate mpkit / rate direct
    met = rate >= TARGETS["a_rate"] or ratio >= TARGETS["a_ratio"]
    return [row("a", f"{mp_name}, 2 identity stages, {n:,} x 1 KB bytes: items/s", rate, f"{rate:,.0f}"),
            row("a", "direct pipes, same: items/s", direct, f"{direct:,.0f}"),
            row("a", "mpkit / direct (items/s, paired)", ratio, f"{ratio:.2f}x",
                f">= {TARGETS['a_rate']:,} items/s or >= {TARGETS['a_ratio']}x", met)]


def case_b(cfg, opts) -> list[dict]:
    n, rows = cfg["n_b"], []
    for kind in ("bytes", "numpy"):
        s = compare_stages(f"(b) {kind}", kind, n, MB, cfg, opts)
        mp_name = next(k for k in s if k.startswith("mpkit"))
        rate, direct = n / med(s[mp_name]), n / med(s["direct pipes"])
        ratio = paired(s, "direct pipes", mp_name)
        growth = max(x["rss"] for x in s[mp_name])
        direct_growth = max(x["rss"] for x in s["direct pipes"])
        rows += [row("b", f"{mp_name}, {n:,} x 1 MB {kind}: items/s", rate, f"{rate:,.1f}"),
                 row("b", f"direct pipes, {kind}: items/s", direct, f"{direct:,.1f}"),
                 row("b", f"mpkit / direct, {kind} (paired)", ratio, f"{ratio:.2f}x",
                     f">= {TARGETS['b_ratio']}x", ratio >= TARGETS["b_ratio"]),
                 row("b", f"mpkit parent peak RSS growth, {kind} (max of rounds)", growth,
                     f"{growth / MB:,.0f} MB", f"< {TARGETS['b_rss'] / MB:.0f} MB", growth < TARGETS["b_rss"]),
                 row("b", f"direct pipes parent peak RSS growth, {kind}", direct_growth,
                     f"{direct_growth / MB:,.0f} MB")]
        if mp_name.endswith(".run"):  # run() keeps every result by design: what grew beyond them
            beyond = growth - n * MB
            rows.insert(-1, row("b", f"mpkit growth beyond the {n:,} MB of results run() keeps, {kind}",
                                beyond, f"{beyond / MB:,.0f} MB"))
    return rows


# ---- (c), (d), (e): mpkit.map / mpkit.imap vs multiprocessing.Pool ------------------------------------
def workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class StdPool:
    """A warm multiprocessing.Pool of W workers, same start method as mpkit's."""

    def __init__(self, start_method: str):
        import multiprocessing as mp

        from benchmarks._dataplane_tasks import identity

        self.pool = mp.get_context(start_method).Pool(workers())
        self.pool.map(identity, range(4 * workers()), chunksize=1)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def warm_mpkit(start_method: str) -> None:
    import mpkit

    from benchmarks._dataplane_tasks import identity

    mpkit.map(identity, range(4 * workers()), chunksize=1, start_method=start_method, progress=False)


def timed(call, check) -> dict:
    gc.collect()
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    check(out)
    return {"seconds": seconds}


def case_c(cfg, opts) -> list[dict]:
    import numpy as np

    import mpkit
    from benchmarks._dataplane_tasks import make_array

    n, sm = cfg["n_c"], opts.start_method
    arrays = [make_array(i, MB) for i in range(n)]
    expected = [float(i) for i in range(n)]

    def check(out):
        if [float(x) for x in out] != expected:
            raise AssertionError("(c): wrong means")

    pool = StdPool(sm)
    try:
        warm_mpkit(sm)
        runners = {
            'mpkit.map chunksize="auto"': lambda: timed(lambda: mpkit.map(np.mean, arrays, start_method=sm,
                                                                         progress=False), check),
            "mpkit.map chunksize=1": lambda: timed(lambda: mpkit.map(np.mean, arrays, chunksize=1,
                                                                    start_method=sm, progress=False), check),
            "Pool.map": lambda: timed(lambda: pool.pool.map(np.mean, arrays), check),
        }
        for name, run in runners.items():  # warm-up: this function, untimed
            run()
        s = rotate_rounds(runners, max(cfg["repeats"], 3), "(c)")
    finally:
        pool.close()
    auto, one, std = 'mpkit.map chunksize="auto"', "mpkit.map chunksize=1", "Pool.map"
    r_one, r_std = paired(s, one, auto), paired(s, std, auto)
    rows = [row("c", f"{name}, {n} x 1 MB arrays, np.mean: items/s", n / med(s[name]), f"{n / med(s[name]):,.0f}")
            for name in s]
    return rows + [row("c", '"auto" vs chunksize=1 (speed, paired)', r_one, f"{r_one:.2f}x", ">= 1.00x", r_one >= 1.0),
                   row("c", '"auto" vs Pool.map (speed, paired)', r_std, f"{r_std:.2f}x", ">= 1.00x", r_std >= 1.0)]


def case_d(cfg, opts) -> list[dict]:
    import numpy as np

    import mpkit
    from benchmarks._dataplane_tasks import build_array

    nbytes, sm = cfg["d_bytes"], opts.start_method
    size = f"{nbytes / MB:.0f} MB"
    big = np.ones(nbytes // 8)
    dst = np.empty_like(big)
    dst.fill(0.0)  # its pages faulted in now, not inside the first timed copy
    copies = []
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, big)
        copies.append(time.perf_counter() - start)
    del dst
    memcpy = statistics.median(copies)
    start = time.perf_counter()
    build_array(nbytes)
    build_here = time.perf_counter() - start

    def check_mean(out):
        if float(out) != 1.0:
            raise AssertionError(f"(d): mean {out}")

    def check_array(out):
        if out.nbytes != nbytes or out[0] != 1.0 or out[-1] != 1.0:
            raise AssertionError("(d): wrong array")

    pool = StdPool(sm)
    try:
        warm_mpkit(sm)
        runners = {
            "mpkit.map, argument": lambda: timed(lambda: mpkit.map(np.mean, [big], start_method=sm,
                                                                 progress=False)[0], check_mean),
            "Pool.apply, argument": lambda: timed(lambda: pool.pool.apply(np.mean, (big,)), check_mean),
            "mpkit.map, result": lambda: timed(lambda: mpkit.map(build_array, [nbytes], start_method=sm,
                                                               progress=False)[0], check_array),
            "Pool.apply, result": lambda: timed(lambda: pool.pool.apply(build_array, (nbytes,)), check_array),
        }
        for name, run in runners.items():
            run()
        s = rotate_rounds(runners, cfg["d_repeats"], "(d)")
    finally:
        pool.close()
    rows = [row("d", f"one {size} np.copyto in this process (median of 5)", memcpy, f"{memcpy * 1e3:,.1f} ms"),
            row("d", f"build_array({size}) in this process (np.ones)", build_here, f"{build_here * 1e3:,.1f} ms")]
    for what in ("argument", "result"):
        m, p = s[f"mpkit.map, {what}"], s[f"Pool.apply, {what}"]
        ratio = paired(s, f"Pool.apply, {what}", f"mpkit.map, {what}")
        rows += [row("d", f"mpkit.map, {size} array as {what}", med(m), f"{med(m) * 1e3:,.0f} ms "
                      f"({med(m) / memcpy:.1f} memcpys)"),
                 row("d", f"Pool.apply, {size} array as {what}", med(p), f"{med(p) * 1e3:,.0f} ms "
                      f"({med(p) / memcpy:.1f} memcpys)"),
                 row("d", f"mpkit vs Pool, {what} (speed, paired)", ratio, f"{ratio:.2f}x",
                     f">= {TARGETS['d_ratio']:.0f}x", ratio >= TARGETS["d_ratio"])]
    return rows


def case_e(cfg, opts) -> list[dict]:
    import mpkit
    from benchmarks._dataplane_tasks import build_array

    n, sm = cfg["n_e"], opts.start_method

    def consume(results) -> dict:
        count = 0
        with ParentRss() as rss:
            start = time.perf_counter()
            try:
                for r in results():
                    if r.nbytes != MB:
                        raise AssertionError("(e): wrong result")
                    count += 1
                    del r
                    time.sleep(CONSUMER_SLEEP)
            finally:
                gc.collect()
            seconds = time.perf_counter() - start
        if count != n:
            raise AssertionError(f"(e): {count} results for {n} items")
        return {"seconds": seconds, "rss": rss.growth}

    pool = StdPool(sm)
    try:
        warm_mpkit(sm)
        runners = {"mpkit.imap": lambda: consume(lambda: mpkit.imap(build_array, [MB] * n, start_method=sm,
                                                                    progress=False)),
                   "Pool.imap": lambda: consume(lambda: pool.pool.imap(build_array, [MB] * n))}
        s = rotate_rounds(runners, cfg["repeats"], "(e)")
    finally:
        pool.close()
    rows = []
    for name in s:
        growth = max(x["rss"] for x in s[name])
        rows += [row("e", f"{name}, {n:,} x 1 MB results, consumer {CONSUMER_SLEEP * 1e3:.0f} ms/item: "
                          "parent peak RSS growth (max of rounds)", growth, f"{growth / MB:,.0f} MB",
                     "<= Pool.imap's (or < 64 MB)" if name.startswith("mpkit") else ""),
                 row("e", f"{name}: seconds (median)", med(s[name]), f"{med(s[name]):.2f} s")]
    m, p = (max(x["rss"] for x in s[k]) for k in ("mpkit.imap", "Pool.imap"))
    rows[0]["met"] = m <= max(p, 64 * MB)  # within Pool.imap's, or a few chunks' worth when both are flat
    return rows


# ---- (f): a trivial cell in a real kernel while a service runs flat out -------------------------------
# Each load is started by a cell in the kernel and stopped by STOP_CELL; they share the names of
# LOAD_HEAD. Controls first, with no mpkit in the kernel: any busy Python thread in a kernel costs a
# cell some GIL switch intervals (sys.getswitchinterval(), 5 ms by default) each time the kernel's
# threads hand the GIL back and forth, and worker processes busy on the same cores cost it CPU.
LOAD_HEAD = """
import threading, time
_bench_stop, _bench_count, _bench_threads = threading.Event(), [0], []
"""
SPIN_CELL = LOAD_HEAD + """
def _bench_spin():
    while not _bench_stop.is_set():
        for _ in range(1000):
            pass
        _bench_count[0] += 1000
_bench_threads.append(threading.Thread(target=_bench_spin, name="spin", daemon=True))
_bench_threads[-1].start()
"""
QUEUE_CELL = LOAD_HEAD + """
import queue
_bench_queue, _bench_item = queue.Queue(maxsize={maxsize}), (1).to_bytes(8, "little") * 128

def _bench_put():
    while not _bench_stop.is_set():
        try:
            _bench_queue.put(_bench_item, timeout=1.0)
        except queue.Full:
            continue

def _bench_get():
    while not _bench_stop.is_set():
        try:
            _bench_queue.get(timeout=1.0)
        except queue.Empty:
            continue
        _bench_count[0] += 1

for _f in (_bench_put, _bench_get):
    _bench_threads.append(threading.Thread(target=_f, name=_f.__name__, daemon=True))
    _bench_threads[-1].start()
"""
SERVICE = LOAD_HEAD + """
import mpkit
from benchmarks._dataplane_tasks import identity, make_bytes
_bench_pipe = mpkit.Pipeline("flood").stage(identity, name="identity-1").stage(identity, name="identity-2")
_bench_svc = _bench_pipe.start(start_method={sm!r})
_bench_item = make_bytes(1, 1024)
"""
FLAT_OUT = """
def _bench_flood():
    while not _bench_stop.is_set():
        try:
            _bench_svc.submit(_bench_item, timeout=1.0)  # blocks while the first stage is full
        except TimeoutError:
            continue
        _bench_count[0] += 1
"""
# A burst every PACE_TICK seconds, then a sleep (the GIL is free meanwhile); a flood that falls
# behind goes on from now rather than bursting to catch up.
PACED = """
def _bench_flood():
    burst, due = max(1, round({rate} * {tick})), time.perf_counter()
    while not _bench_stop.is_set():
        for _ in range(burst):
            try:
                _bench_svc.submit(_bench_item, timeout=1.0)
            except TimeoutError:
                break
            _bench_count[0] += 1
        due += {tick}
        ahead = due - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        else:
            due = time.perf_counter()
"""
START_FLOOD = """
_bench_threads.append(threading.Thread(target=_bench_flood, name="flood", daemon=True))
_bench_threads[-1].start()
"""
FLOOD_CELL = SERVICE + FLAT_OUT + START_FLOOD
STOP_CELL = """
_bench_stop.set()
for _t in _bench_threads:
    _t.join(30)
if "_bench_svc" in globals():
    _bench_svc.stop(drain=False, timeout=60)
    del _bench_svc
"""
# The same flat-out service in a plain Python process beside the kernel: the machine as busy, the
# kernel's GIL free. It prints its count for each line read, and stops at "stop".
ELSEWHERE = FLOOD_CELL + """
import sys
for _line in sys.stdin:
    if _line.strip() == "stop":
        break
    print(_bench_count[0], flush=True)
""" + STOP_CELL + """
mpkit.shutdown()
"""
#: (f)'s paced services, items/s: a notebook thread submitting at a rate, below what the flat-out
#: flood reaches (20k-37k/s on 2 cores, with other work on them), to show latency against load.
PACED_RATES = (5_000, 20_000)
PACE_TICK = 0.005       # one burst per 5 ms: finer sleeps are not kept on a loaded machine
QUEUE_MAXSIZE = 1_000   # the control's queue: bounded, as a stage's channel is
#: A trial switch interval for (f) (sys.setswitchinterval; CPython's default is 5 ms): a tenth of
#: it, to show how much of a cell's wait is GIL hand-overs. Shorter costs busy threads more switches.
SWITCH_TRIAL = 0.0005


class Kernel:
    """A real IPython kernel (jupyter_client, as a notebook server starts one); close() in a finally."""

    def __init__(self, cwd: str, start_method: str):
        import jupyter_client

        env = dict(os.environ, MPKIT_START_METHOD=start_method, PYTHONUNBUFFERED="1")
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=cwd)
        self.kc = None
        try:
            self.kc = self.km.client()
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=KERNEL_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def run(self, code: str, timeout: float = KERNEL_TIMEOUT) -> tuple[float, dict]:
        """Execute a cell: (seconds from request to reply, the reply's content)."""
        import queue

        start = time.perf_counter()
        msg_id = self.kc.execute(code, store_history=False)
        deadline = start + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"(f): no reply to the cell within {timeout:.0f} s: {code[:60]!r}")
            try:
                msg = self.kc.get_shell_msg(timeout=left)
            except queue.Empty:
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                seconds = time.perf_counter() - start
                content = msg["content"]
                if content.get("status") != "ok":
                    raise RuntimeError(f"(f): the cell failed: {content.get('ename')}: {content.get('evalue')}")
                self._drain_iopub()
                return seconds, content

    def value(self, expr: str):
        msg_id = self.kc.execute("", store_history=False, user_expressions={"v": expr})
        reply = self.kc.get_shell_msg(timeout=KERNEL_TIMEOUT)
        while reply.get("parent_header", {}).get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=KERNEL_TIMEOUT)
        return reply["content"]["user_expressions"]["v"]["data"]["text/plain"]

    def _drain_iopub(self) -> None:
        import queue

        while True:
            try:
                self.kc.get_iopub_msg(timeout=0)
            except queue.Empty:
                return

    def close(self) -> None:
        import psutil

        try:
            tree = psutil.Process(self.km.provisioner.process.pid).children(recursive=True)
        except Exception:  # noqa: BLE001 - the kernel is gone already
            tree = []
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            self.km.shutdown_kernel(now=False)
        finally:
            for proc in tree:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass


def latencies(kernel: Kernel, cells: int) -> list[float]:
    out = []
    for _ in range(cells):
        out.append(kernel.run("1+1")[0])
        time.sleep(CELL_GAP)
    return out


def under_load(kernel: Kernel, cell: str, cells: int, switch: float | None = None) -> tuple[list[float], float]:
    """Start a load in the kernel, let it run WARM_SECONDS, time the cells, stop it: (latencies, items/s).
    ``switch``: the kernel's GIL switch interval meanwhile (restored after)."""
    if switch is not None:
        kernel.run(f"import sys; _bench_switch = sys.getswitchinterval(); sys.setswitchinterval({switch!r})")
    try:
        kernel.run(cell, timeout=120)
        try:
            time.sleep(WARM_SECONDS)
            count0, t0 = int(kernel.value("_bench_count[0]")), time.perf_counter()
            got = latencies(kernel, cells)
            rate = (int(kernel.value("_bench_count[0]")) - count0) / (time.perf_counter() - t0)
        finally:
            kernel.run(STOP_CELL, timeout=120)
    finally:
        if switch is not None:
            kernel.run("sys.setswitchinterval(_bench_switch)")
    return got, rate


def beside(kernel: Kernel, cells: int, start_method: str) -> tuple[list[float], float]:
    """The flat-out service in another process while the (idle) kernel's cells are timed."""
    import psutil

    env = dict(os.environ, MPKIT_START_METHOD=start_method, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", ELSEWHERE.format(sm=start_method)], cwd=sys.path[0], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tree = []

    def count() -> int:
        proc.stdin.write("count\n")
        proc.stdin.flush()
        line = proc.stdout.readline()  # the service is up by the first answer (its cell ran first)
        if not line:
            raise RuntimeError(f"(f): the service beside the kernel ended (exit code {proc.wait(10)})")
        return int(line)

    try:
        count()
        tree = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(WARM_SECONDS)
        count0, t0 = count(), time.perf_counter()
        got = latencies(kernel, cells)
        rate = (count() - count0) / (time.perf_counter() - t0)
        proc.stdin.write("stop\n")
        proc.stdin.close()
        proc.wait(KERNEL_TIMEOUT)
    finally:  # what did not stop on its own in time (or at all, after a failure)
        if proc.poll() is None:
            proc.kill()
            proc.wait(KERNEL_TIMEOUT)
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    return got, rate


def lat_row(what: str, got: list[float]) -> dict:
    return row("f", f"{what}: p50 / max of {len(got)}", statistics.median(got),
               f"{statistics.median(got) * 1e3:.1f} / {max(got) * 1e3:.1f} ms")


def case_f(cfg, opts) -> list[dict]:
    cells, sm = cfg["cells"], opts.start_method
    kernel = Kernel(sys.path[0], opts.start_method)

    def say(what: str) -> None:
        print(f"  (f): {cells} cells, {what} ...", file=sys.stderr, flush=True)

    try:
        latencies(kernel, 5)  # warm-up
        switch = float(kernel.value("__import__('sys').getswitchinterval()"))
        say("kernel idle")
        idle = latencies(kernel, cells)
        say("controls with no mpkit in the kernel")
        spin, _ = under_load(kernel, SPIN_CELL, cells)
        queued, queue_rate = under_load(kernel, QUEUE_CELL.format(maxsize=QUEUE_MAXSIZE), cells)
        kernel.run("import mpkit, benchmarks._dataplane_tasks")
        say("service flat out in another process")
        away, away_rate = beside(kernel, cells, sm)
        paced = {}
        for rate in PACED_RATES:
            say(f"service paced at {rate:,} items/s")
            paced[rate] = under_load(kernel, SERVICE.format(sm=sm) + PACED.format(rate=rate, tick=PACE_TICK)
                                     + START_FLOOD, cells)
        say("service flat out")
        busy, rate = under_load(kernel, FLOOD_CELL.format(sm=sm), cells)
        say(f"switch interval {SWITCH_TRIAL * 1e3:.1f} ms: the spinning thread, then the service flat out")
        spin_short, _ = under_load(kernel, SPIN_CELL, cells, switch=SWITCH_TRIAL)
        busy_short, rate_short = under_load(kernel, FLOOD_CELL.format(sm=sm), cells, switch=SWITCH_TRIAL)
    finally:
        kernel.close()
    load = os.getloadavg()[0]  # it counts this case's own busy kernel and workers too
    p50, worst = statistics.median(busy), max(busy)
    gil = p50 - statistics.median(away)
    rows = [row("f", "the kernel's GIL switch interval (sys.getswitchinterval())", switch, f"{switch * 1e3:.1f} ms"),
            lat_row("trivial cell, kernel idle", idle),
            lat_row("control, no mpkit: 1 thread in the kernel spinning pure Python", spin),
            lat_row(f"control, no mpkit: 2 threads in the kernel passing 1 KB bytes through a "
                    f"queue.Queue({QUEUE_MAXSIZE:,})", queued),
            row("f", "control, no mpkit: items/s through that queue", queue_rate, f"{queue_rate:,.0f}"),
            lat_row("control: the same service flat out in another process (the machine as busy, "
                    "the kernel idle)", away),
            row("f", "control: items/s submitted by that process's flood thread", away_rate, f"{away_rate:,.0f}")]
    for target_rate, (got, achieved) in paced.items():
        r = lat_row(f"trivial cell, service paced at {target_rate:,} items/s", got)
        r["shown"] += f" ({achieved:,.0f} items/s reached)"
        rows.append(r)
    short = f"switch interval set to {SWITCH_TRIAL * 1e3:.1f} ms (trial, not a default)"
    rows += [row("f", "items/s submitted by the service's flood thread while the cells ran", rate, f"{rate:,.0f}"),
             row("f", f"trivial cell, service flat out: p50 of {cells}", p50, f"{p50 * 1e3:.1f} ms",
                 f"< {TARGETS['f_p50'] * 1e3:.0f} ms", p50 < TARGETS["f_p50"]),
             row("f", f"trivial cell, service flat out: max of {cells}", worst, f"{worst * 1e3:.1f} ms",
                 f"< {TARGETS['f_max'] * 1e3:.0f} ms", worst < TARGETS["f_max"]),
             row("f", "service flat out: p50 above the same service's in another process (the cost of "
                      "sharing the kernel's GIL)", gil, f"{gil * 1e3:+.1f} ms"),
             lat_row(f"control, no mpkit: 1 spinning thread, {short}", spin_short),
             lat_row(f"trivial cell, service flat out, {short}", busy_short),
             row("f", f"items/s submitted flat out, {short}", rate_short, f"{rate_short:,.0f}"),
             row("f", "load average (1 min) at the end of the case: other work on the machine", load,
                 f"{load:.2f}")]
    return rows


RUNNERS = {"a": case_a, "b": case_b, "c": case_c, "d": case_d, "e": case_e, "f": case_f}


# ---- reporting ----------------------------------------------------------------------------------------
def verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "NOT met")


def table(rows: list[dict]) -> list[str]:
    out = ["| case | measured | value | target | result |", "|---|---|---:|---:|---|"]
    out += [f"| ({r['case']}) | {r['what']} | {r['shown']} | {r['target']} | {verdict(r['met'])} |" for r in rows]
    return out


def side_by_side(runs: dict[str, dict]) -> list[str]:
    """One table for several checkouts, rows matched by key (Pipeline.run and Pipeline.imap rows
    are one row: the header says which API each checkout used); a dash where a checkout has no
    such row (its case failed, or the row is only for one API)."""
    labels = list(runs)
    out = ["| case | measured | target | " + " | ".join(labels) + " |",
           "|---|---|---:|" + "---:|" * len(labels)]
    by_key = {label: {r["key"]: r for r in runs[label]["rows"]} for label in labels}
    keys: dict[str, dict] = {}
    for case in CASES:
        for label in labels:
            for r in runs[label]["rows"]:
                if r["case"] == case:
                    keys.setdefault(r["key"], r)
    for key, first in keys.items():
        cells = []
        for label in labels:
            o = by_key[label].get(key)
            cells.append("—" if o is None else o["shown"] + (f" ({verdict(o['met'])})" if o["met"] is not None else ""))
        what = key.split(":", 1)[1]
        out.append(f"| ({first['case']}) | {what} | {first['target']} | " + " | ".join(cells) + " |")
    return out


def facts(cfg, opts, checkout: dict) -> list[str]:
    import numpy as np

    return [f"- machine: {platform.platform()}, {os.cpu_count()} logical cores, {workers()} usable "
            f"(W = {workers()} pool workers); Python {platform.python_version()}, numpy {np.__version__}",
            f"- mpkit: {checkout['commit']}{' (uncommitted changes)' if checkout['dirty'] else ''}; "
            f"Pipeline.imap: {'yes' if checkout['has_pipeline_imap'] else 'no'}; start method {opts.start_method}",
            (f"- rounds R = {cfg['repeats']}; (a) {cfg['n_a']:,} x 1 KB; (b) {cfg['n_b']:,} x 1 MB; "
             f"(c) {cfg['n_c']} x 1 MB; (d) {cfg['d_bytes'] / MB:.0f} MB, {cfg['d_repeats']} rounds; "
             f"(e) {cfg['n_e']:,} x 1 MB; (f) {cfg['cells']} cells per phase"),
            f"- load average at start (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]


NOTES = [
    "- Medians of R rounds; ratios are medians of per-round ratios (paired), speed ratios above 1 mean mpkit is faster.",
    "- Pipelines start their stage processes inside each timed run (Pipeline.run/imap does), and so does "
    "the direct chain (its time ends at its last item received; its processes exit right after, untimed); "
    "mpkit's default pool and multiprocessing.Pool are warm before any timed call.",
    "- Peak RSS growth: this process only (the notebook's), sampled every 50 ms, minus its RSS just "
    "before the run (after gc and malloc_trim, so that memory freed by an earlier round does not hide "
    "this one's); max over rounds. With Pipeline.run (no Pipeline.imap in the checkout) every result is kept until "
    "the end: n x 1 MB counts in (b)'s growth by design.",
    "- Other processes share the machine: compare ratios, not absolute times; --quick sizes are too "
    "small for the targets (fixed start-up costs weigh more, and (b)'s memory target is for 1,000 items): "
    "there met / NOT met is only indicative.",
    "- (f): a cell's request and reply pass through three of the kernel's threads (shell channel, main, "
    "IOPub), each of which needs the GIL at every hand-over; while another thread of the kernel keeps the "
    "GIL busy, each of these waits up to the switch interval (sys.getswitchinterval(), 5 ms). The controls "
    "put a number on it: with no mpkit at all, one spinning thread, or two threads passing bytes through "
    "a queue, already cost a cell more than 20 ms (how much varies from run to run with where the "
    "hand-overs fall); the same service in another process adds little to the p50 (the CPU is not the "
    "limit). A service fed flat out in the kernel is such a busy thread; the switch-interval rows are a "
    "trial of what a shorter interval does, not a setting mpkit makes. A busy phase's p50 may land at "
    "about 30-40 ms in one run and 100-170 ms in the next, the no-mpkit spinning thread's as much as "
    "the service's: compare the rows of one run with each other, not across runs.",
    "- (e) has no number in the issue: met when mpkit.imap's growth is at most Pool.imap's, or under "
    "64 MB (a few 1 MB chunks in flight) when both are flat.",
]


def leftover_children(timeout: float = 10.0) -> list:
    """Processes this benchmark left behind (bench_pool's check, imported late: after --mpkit)."""
    from benchmarks.bench_pool import leftover_children as left

    return left(timeout)


def run_cases(cfg, opts) -> dict:
    import mpkit

    checkout = checkout_facts()
    head = facts(cfg, opts, checkout)
    print("\n".join(["## Machine", ""] + head), file=sys.stderr, flush=True)
    check_worker_mpkit(opts.start_method)
    rows: list[dict] = []
    failed = []
    try:
        for case in opts.cases:
            try:
                rows += RUNNERS[case](cfg, opts)
            except Exception as exc:  # noqa: BLE001 - the other cases still run; the exit code says it
                traceback.print_exc()
                failed.append(case)
                rows.append(row(case, "the case failed", None, f"{type(exc).__name__}: {str(exc)[:120]}", "", False))
    finally:
        mpkit.shutdown()
    return {"checkout": checkout, "facts": head, "rows": rows, "failed": failed}


def write(report: dict, text: list[str]) -> None:
    os.makedirs(os.path.dirname(RESULTS_MD), exist_ok=True)
    with open(RESULTS_JSON, "w") as f:
        json.dump(report, f, indent=1)
    with open(RESULTS_MD, "w") as f:
        f.write("# Data-plane benchmark\n\n`python benchmarks/bench_dataplane.py " + " ".join(sys.argv[1:])
                + "`\n\n" + "\n".join(text) + "\n")
    print(f"\nwritten to {os.path.relpath(RESULTS_MD, ROOT)} and {os.path.relpath(RESULTS_JSON, ROOT)}")


def against(cfg, opts) -> int:
    """Each case in two child processes of this script: the other checkout's mpkit and this one's."""
    runs: dict[str, dict] = {opts.against_label: {"rows": []}, "this checkout": {"rows": []}}
    dirs = {opts.against_label: os.path.abspath(opts.against), "this checkout": None}
    order, failures = list(runs), 0
    with tempfile.TemporaryDirectory(prefix="mpkit-bench-") as tmp:
        for i, case in enumerate(opts.cases):
            for label in (order if i % 2 == 0 else order[::-1]):
                out = os.path.join(tmp, f"{case}-{len(runs[label]['rows'])}-{label[:4]}.json")
                cmd = [sys.executable, os.path.abspath(__file__), "--cases", case, "--json-out", out,
                       "--start-method", opts.start_method, "--pipeline-api", opts.pipeline_api]
                cmd += ["--quick"] if opts.quick else []
                cmd += ["--repeats", str(opts.repeats)] if opts.repeats else []
                cmd += ["--mpkit", dirs[label]] if dirs[label] else []
                print(f"== ({case}) with {label} mpkit", file=sys.stderr, flush=True)
                code = subprocess.run(cmd).returncode
                if not os.path.exists(out):
                    print(f"(case {case} with {label} mpkit: the child exited with {code} and wrote "
                          "nothing; its rows are missing)", file=sys.stderr)
                    failures += 1
                    continue
                failures += code != 0
                with open(out) as f:
                    got = json.load(f)
                runs[label]["rows"] += got["rows"]
                runs[label].update(checkout=got["checkout"], facts=got["facts"])
    text = ["## Machine and checkouts", ""]
    for label, run in runs.items():
        text += [f"### {label}", ""] + run.get("facts", ["- (no case ran)"]) + [""]
    text += ["## Results", ""] + side_by_side(runs) + ["", "## Notes", ""] + NOTES
    print("\n".join(text))
    write({"config": cfg, "runs": runs}, text)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: R=1, small sizes")
    parser.add_argument("--cases", default=CASES, help=f"which cases, e.g. a,c (default: all of {CASES})")
    parser.add_argument("--mpkit", metavar="DIR", help="import mpkit from the checkout DIR (default: this one)")
    parser.add_argument("--against", metavar="DIR", help="also run every case with the mpkit of checkout DIR")
    parser.add_argument("--against-label", default="landed", help="column name for --against (default: landed)")
    parser.add_argument("--start-method", default=None, help="forkserver or spawn (default: mpkit's default)")
    parser.add_argument("--pipeline-api", choices=("auto", "run", "imap"), default="auto",
                        help="how (a)/(b) consume a Pipeline (default: imap if the checkout has it, else run)")
    parser.add_argument("--repeats", type=int, metavar="R", help="rounds per case (default: 3, --quick 1)")
    parser.add_argument("--json-out", help=argparse.SUPPRESS)  # a child of --against: rows to this file
    opts = parser.parse_args()
    opts.cases = [c for c in opts.cases.replace(",", "") if c in CASES]
    cfg = dict(QUICK if opts.quick else FULL)
    if opts.repeats:
        cfg["repeats"] = cfg["d_repeats"] = opts.repeats
    if opts.start_method is None:
        import multiprocessing as mp

        opts.start_method = (os.environ.get("MPKIT_START_METHOD")  # mpkit's own override, if set
                             or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"))
    if opts.against:
        path_dir(opts.against)  # checks it now, before the first child
        return against(cfg, opts)
    set_paths(path_dir(opts.mpkit))
    report = run_cases(cfg, opts)
    report["config"] = cfg
    if opts.json_out:
        with open(opts.json_out, "w") as f:
            json.dump(report, f)
    else:
        text = (["## Machine", ""] + report["facts"] + ["", "## Results", ""] + table(report["rows"])
                + ["", "## Notes", ""] + NOTES)
        print("\n".join(text))
        write(report, text)
    left = leftover_children()
    for proc in left:
        print(f"LEAK: child process {proc.pid} still alive: {' '.join(proc.cmdline())}", file=sys.stderr)
        proc.kill()
    if report["failed"]:
        print(f"cases that failed: {', '.join(report['failed'])} (tracebacks above)", file=sys.stderr)
    return 1 if left or report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
