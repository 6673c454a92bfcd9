"""Benchmark: mpkit.map next to the standard pools, joblib and mpire, on this machine, in one run.

    python benchmarks/bench_pool.py            # full run (R=5 rounds), a few minutes
    python benchmarks/bench_pool.py --quick    # smoke run: R=2, smaller workloads

Tools, each with W = the usable cores worker processes:
  mpkit.map                        default pool and start method (forkserver on Linux), chunksize="auto"
  multiprocessing Pool.map         forkserver context, default chunksize ceil(n / (4*W))
  multiprocessing Pool.imap        same pool kind; given Pool.map's default chunksize (its own default, 1,
                                   sends one message per item: not a bulk setting)
  ProcessPoolExecutor.map          forkserver mp_context; given the same chunksize (its default is 1 too)
  joblib Parallel                  loky backend, batch_size="auto"
  mpire WorkerPool.map             start_method="forkserver", keep_alive=True (workers reused between
                                   maps), its default chunking (n_jobs * 64 chunks)

Workloads:
  (a) 200,000 calls of x + 1: no work at all, so the time is the tool's own cost per item
      (pickling, pipes, bookkeeping). Target for mpkit: at least as fast as Pool.map.
  (b) 20,000 calls of ~200 us of pure-Python arithmetic, the loop length calibrated at start-up.
      The serial time of the same workload is measured in the same run; ideal = serial / W and
      efficiency = ideal / elapsed: how much of the machine a tool turns into progress.
      Target for mpkit: at least 95% of ideal.
  (c) a map of 10 trivial items on a pool that is already warm: the latency a notebook user feels
      on every call. Target for mpkit: under 20 ms. Also the cold time (create the pool + first
      call) for reference; the forkserver process is already running then (it is shared by the
      forkserver tools and started once, at the first warm-up); loky starts its workers its own way.

Method: every pool is created and warmed (workers started, the task function run once) before any
timed call. The tools then take turns, one timed call each per round, the order rotated from round
to round, so that noise from other work on the machine falls on all of them alike. Reported: the
median of R rounds, its spread, and the ratio of medians to Pool.map (time; below 1 is faster).
A "serial (this process)" row runs the same items in a plain loop, for scale and for (b)'s ideal.
The table is printed and written to benchmarks/results/pool.md. Every pool is shut down at the end
and the script checks that no worker process is left.
"""
from __future__ import annotations

import argparse
import gc
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import PackageNotFoundError, version

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Children started by forkserver, spawn or loky import the task functions (and mpkit) by name:
# they must find the repo root. sys.path is for this process; PYTHONPATH for every child, set
# before any pool or the forkserver exists.
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

# Only the standard library at the top: forkserver and spawn children import this script again
# (as __mp_main__), and a heavy top level would slow every worker start of every tool. In a
# notebook there is no such script; the tools are imported where they are used.
from benchmarks import _tasks
from benchmarks._results import save

FULL = {"rounds": 5, "n_trivial": 200_000, "n_cpu": 20_000, "warm_calls": 20}
QUICK = {"rounds": 2, "n_trivial": 50_000, "n_cpu": 4_000, "warm_calls": 10}
TASK_SECONDS = 200e-6
WARM_ITEMS = 10
BASELINE = "Pool.map"
RESULTS = "pool.md"  # in benchmarks/results


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


W = usable_cores()


def pool_chunksize(n: int) -> int:
    """multiprocessing.Pool.map's default chunksize for n items on W workers."""
    return max(1, math.ceil(n / (4 * W)))


# ---- the tools: start() creates the pool, map() is what is timed, stop() shuts it down -------------
class Serial:
    name = "serial (this process)"

    def start(self): pass
    def stop(self): pass
    def map(self, fn, items): return [fn(x) for x in items]


class MpkitMap:
    name = "mpkit.map"

    def start(self):  # nothing to create: mpkit.map starts its default pool on first use
        import mpkit

        self.mpkit = mpkit

    def stop(self): self.mpkit.shutdown()
    def map(self, fn, items): return self.mpkit.map(fn, items)


class PoolMap:
    name = "Pool.map"

    def start(self): self.pool = mp.get_context("forkserver").Pool(W)
    def map(self, fn, items): return self.pool.map(fn, items)

    def stop(self):
        self.pool.close()
        self.pool.join()


class PoolImap(PoolMap):
    name = "Pool.imap"

    def map(self, fn, items): return list(self.pool.imap(fn, items, chunksize=pool_chunksize(len(items))))


class Executor:
    name = "ProcessPoolExecutor.map"

    def start(self): self.ex = ProcessPoolExecutor(W, mp_context=mp.get_context("forkserver"))
    def stop(self): self.ex.shutdown(wait=True)
    def map(self, fn, items): return list(self.ex.map(fn, items, chunksize=pool_chunksize(len(items))))


class Joblib:
    name = "joblib Parallel (loky)"

    def start(self):
        from joblib import Parallel, delayed

        self.delayed = delayed
        self.par = Parallel(n_jobs=W, backend="loky", batch_size="auto")
        self.par.__enter__()  # keep the backend (and its auto batch size) between calls

    def map(self, fn, items): return self.par(self.delayed(fn)(x) for x in items)

    def stop(self):
        from joblib.externals.loky import get_reusable_executor

        self.par.__exit__(None, None, None)
        get_reusable_executor().shutdown(wait=True)  # loky keeps its workers otherwise


class Mpire:
    name = "mpire WorkerPool.map"

    def start(self):
        from mpire import WorkerPool

        self.pool = WorkerPool(n_jobs=W, start_method="forkserver", keep_alive=True)

    def stop(self): self.pool.stop_and_join(keep_alive=False)
    def map(self, fn, items): return self.pool.map(fn, items)


# ---- measuring ------------------------------------------------------------------------------------
def timed(tool, fn, items, expected) -> float:
    gc.collect()
    start = time.perf_counter()
    out = tool.map(fn, items)
    seconds = time.perf_counter() - start
    if list(out) != expected:
        raise AssertionError(f"{tool.name} returned wrong results for {fn.__name__}")
    return seconds


def rounds(tools, rounds_n, measure, label):
    """measure(tool) -> list of seconds, for each tool once per round, order rotated per round."""
    samples = {t.name: [] for t in tools}
    for r in range(rounds_n):
        print(f"  {label}: round {r + 1}/{rounds_n}", file=sys.stderr, flush=True)
        k = r % len(tools)
        for tool in tools[k:] + tools[:k]:
            samples[tool.name].extend(measure(tool))
    return samples


def calibrate_spin(target: float) -> int:
    """Loop length for which _tasks.spin takes ~target seconds here (best of 5, to skip noise)."""
    n = 20_000
    best = min(_time_once(_tasks.spin, n) for _ in range(5))
    n = max(1, round(n * target / best))
    best = min(_time_once(_tasks.spin, n) for _ in range(5))
    return max(1, round(n * target / best))


def _time_once(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def bench_bulk(tools, fn, items, rounds_n, label):
    expected = [fn(x) for x in items]
    sample = items[: max(100, len(items) // 20)]
    for tool in tools:  # warm-up: this function, untimed
        timed(tool, fn, sample, expected[: len(sample)])
    return rounds(tools, rounds_n, lambda t: [timed(t, fn, items, expected)], label)


def cold_call(tool, items, expected) -> list[float]:
    tool.stop()
    gc.collect()
    start = time.perf_counter()
    tool.start()
    out = tool.map(_tasks.inc, items)
    seconds = time.perf_counter() - start
    assert list(out) == expected, tool.name
    return [seconds]


# ---- reporting ------------------------------------------------------------------------------------
def facts(cfg, n_iter) -> list[str]:
    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return getattr(sys.modules.get(name), "__version__", "?")

    from joblib.externals import loky

    import mpkit
    from mpkit.engine.process import default_start_method

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}",
        f"- cores: {os.cpu_count()} logical, {W} usable by this process -> W = {W} workers per tool",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        (f"- mpkit {mpkit.__version__} (start method {default_start_method()}), joblib {ver('joblib')} "
         f"(loky {loky.__version__}), mpire {ver('mpire')}, cloudpickle {ver('cloudpickle')}"),
        (f"- rounds R = {cfg['rounds']}; (a) {cfg['n_trivial']:,} items; (b) {cfg['n_cpu']:,} items, "
         f"spin({n_iter:,}) calibrated to {TASK_SECONDS * 1e6:.0f} us; (c) {WARM_ITEMS} items, "
         f"{cfg['warm_calls']} warm calls per tool per round"),
        f"- load average at start (1, 5, 15 min): {load}",
    ]


def table(results, serial_b) -> list[str]:
    ideal = serial_b / W
    lines = ["| tool | case | median s | min-max s | items/s | time vs Pool.map | efficiency vs ideal |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key, (case, n, samples) in results.items():
        base = statistics.median(samples[BASELINE])
        for name, secs in samples.items():
            med = statistics.median(secs)
            eff = f"{ideal / med:.1%}" if key == "b" and name != Serial.name else ""
            lines.append(f"| {name} | {case} | {med:.4f} | {min(secs):.4f}-{max(secs):.4f} | "
                         f"{n / med:,.0f} | {med / base:.2f}x | {eff} |")
    return lines


def targets(results, serial_b) -> list[str]:
    med = {key: {name: statistics.median(s) for name, s in samples.items()}
           for key, (_, _, samples) in results.items()}
    a = med["a"][MpkitMap.name] / med["a"][BASELINE]
    b = (serial_b / W) / med["b"][MpkitMap.name]
    c = med["c"][MpkitMap.name]
    rows = [("(a) time vs Pool.map", f"{a:.2f}x", "<= 1.00x", a <= 1.0),
            ("(b) efficiency vs ideal", f"{b:.1%}", ">= 95%", b >= 0.95),
            ("(c) warm call, 10 items", f"{c * 1e3:.1f} ms", "< 20 ms", c < 0.020)]
    return ["| mpkit target | measured | needed | result |", "|---|---:|---:|---|"] + [
        f"| {what} | {got} | {need} | {'PASS' if ok else 'MISS'} |" for what, got, need, ok in rows]


def notes(cfg, serial_b) -> list[str]:
    quick = [("- --quick run: smaller workloads than the targets are set for (200,000 and 20,000 items) "
              "and only 2 rounds; fixed per-call costs weigh more, so PASS/MISS here is only indicative.")]
    return (quick if cfg is QUICK else []) + [
        (f"- Medians of {cfg['rounds']} rounds (c warm: of {cfg['rounds'] * cfg['warm_calls']} calls); "
         "\"time vs Pool.map\" = median / Pool.map's median for the same case, below 1 is faster."),
        (f"- (b) ideal = serial median / W = {serial_b:.3f} s / {W} = {serial_b / W:.3f} s "
         f"({serial_b / cfg['n_cpu'] * 1e6:.0f} us per item measured serially in this run)."),
        (f"- Pool.imap and ProcessPoolExecutor.map get chunksize = ceil(n / (4*W)), the value Pool.map "
         f"computes by default ({pool_chunksize(cfg['n_trivial']):,} for (a), "
         f"{pool_chunksize(cfg['n_cpu']):,} for (b)): their own default of 1 item per message is not a "
         "fair bulk setting. joblib uses batch_size=\"auto\", mpire its default chunking "
         "(n_jobs * 64 chunks), mpkit chunksize=\"auto\" (chunks sized to ~20 ms of measured work)."),
        ("- Cold = create the pool + first call of 10 items, with the forkserver process already running; "
         "for mpkit.map: mpkit.shutdown(), then the call that starts a new default pool."),
        (f"- Load average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}. "
         "Other processes shared the machine: compare ratios, not absolute times."),
    ]


# ---- no process left behind -----------------------------------------------------------------------
_HELPERS = ("multiprocessing.forkserver", "resource_tracker")  # exit together with this process


def leftover_children(timeout: float = 10.0) -> list:
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        left = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and not any(
                        h in " ".join(proc.cmdline()) for h in _HELPERS):
                    left.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: R=2 and smaller workloads")
    cfg = QUICK if parser.parse_args().quick else FULL
    n_iter = calibrate_spin(TASK_SECONDS)
    head = ["## Machine", ""] + facts(cfg, n_iter)
    print("\n".join(head), flush=True)

    serial = Serial()
    # mpkit first: its pool sets up the forkserver the way mpkit does on its own (its preload).
    tools = [MpkitMap(), PoolMap(), PoolImap(), Executor(), Joblib(), Mpire()]
    started = []
    try:
        for tool in tools:
            tool.start()
            started.append(tool)
            tool.map(_tasks.nap, [0.05] * (2 * W))  # every worker started and busy once
        a, b = cfg["n_trivial"], cfg["n_cpu"]
        res_a = bench_bulk([serial] + tools, _tasks.inc, list(range(a)), cfg["rounds"], "(a)")
        res_b = bench_bulk([serial] + tools, _tasks.spin, [n_iter] * b, cfg["rounds"], "(b)")
        small = list(range(WARM_ITEMS))
        expected = [x + 1 for x in small]
        res_c = rounds(tools, cfg["rounds"], lambda t: [timed(t, _tasks.inc, small, expected)
                                                        for _ in range(cfg["warm_calls"])], "(c) warm")
        res_cold = rounds(tools, cfg["rounds"], lambda t: cold_call(t, small, expected), "(c) cold")
    finally:
        for tool in started:
            try:
                tool.stop()
            except Exception as exc:  # noqa: BLE001 - keep shutting the others down
                print(f"error stopping {tool.name}: {exc!r}", file=sys.stderr)
    results = {"a": (f"(a) {a:,} x (x+1)", a, res_a),
               "b": (f"(b) {b:,} x {TASK_SECONDS * 1e6:.0f} us", b, res_b),
               "c": (f"(c) warm call, {WARM_ITEMS} items", WARM_ITEMS, res_c),
               "cold": (f"(c) cold: new pool + call, {WARM_ITEMS} items", WARM_ITEMS, res_cold)}
    serial_b = statistics.median(res_b[serial.name])
    body = (["", "## Results", ""] + table(results, serial_b) + ["", "## mpkit targets", ""]
            + targets(results, serial_b) + ["", "## Notes", ""] + notes(cfg, serial_b))
    print("\n".join(body))
    path = save(RESULTS, "# Pool benchmark\n\n`python benchmarks/bench_pool.py" + (" --quick" if cfg is QUICK else "")
                + "`\n\n" + "\n".join(head + body) + "\n")
    print(f"\nwritten to {os.path.relpath(path, ROOT)}")

    left = leftover_children()
    for proc in left:
        print(f"LEAK: child process {proc.pid} still alive: {' '.join(proc.cmdline())}", file=sys.stderr)
        proc.kill()
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
