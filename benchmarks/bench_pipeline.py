"""Benchmark: mpkit's Pipeline next to the article's A -> B -> C multiprocessing system, in one run.

    python benchmarks/bench_pipeline.py            # full run (R=3 repeats), a few minutes on 2 cores
    python benchmarks/bench_pipeline.py --quick    # smoke run: R=1, small workloads

The two systems, on the same work (benchmarks/_pipeline_tasks.py):
  reference   benchmarks/article_reference.py: the article's system ported as is (global dict of
              named Queues, a sender, 2 B components, 6 C receivers, a cache that batches when it
              holds more than 128 items or 1 s has passed, one predict process, a receiver), bounded
              with sentinels, its sleeps replaced by the work below. One Queue put/get per item per hop.
  mpkit       Pipeline("inference").stage(preprocess, workers=2).batch(max_size=128, max_wait=1.0)
                                    .stage(Model, workers=1).run(items, progress=False)

Workloads:
  (a) no work per item: the time is the systems' own cost (processes, pickling, pipes, routing).
      Target: mpkit >= 3x the reference's items/s.
  (b) 0.5 ms of pure-Python CPU per item in preprocessing, and a model costing 5 ms + 0.05 ms per
      item per batch (CPU too), the loop lengths calibrated at start-up. Target: mpkit >= 1.3x.
  (c) 10 items, no work: what a run costs beyond its items (starting and stopping the processes).
  Dashboard cost: the same mpkit runs (in (a) 3R of each, as they are short) with a live observer
      attached: a TextStatus writing to an io.StringIO (run(progress=True) with stderr redirected:
      mpkit's terminal front-end) and a Dashboard (pipe.dashboard(): ipywidgets, no front-end
      connected). Target: < 3% of items/s. Also the time spent inside the observer's calls.
  Memory: a fast producer (a generator of 16 KiB bytes objects) into one stage of 1 worker spending
      ~1 ms of CPU per item; the total resident memory of this process and all its workers,
      sampled every 0.1 s over the run: start, max, end. Target: it grows by no more than one full
      input channel (plus slack), far less than the whole stream would take.

Every run of either system starts its processes and ends with all of them joined. Timed: for mpkit
the blocking pipe.run call (it starts its workers, returns every result, stops its workers); for
the reference, from starting its module processes to its receiver holding the last result (the
joining of its 15 processes after that is checked, not timed). In each round the systems (and
observer variants) take turns, the order rotated from round to round so that noise from other
work on the machine falls on all alike; reported are medians of R rounds, and targets are judged
on paired ratios (the median of the per-round ratios). Besides items/s, the CPU seconds a run
cost (this process + every process of the system) per item: a measure of overhead that other load
on the machine disturbs much less than wall time.
The report is printed and written to benchmarks/results/pipeline.md.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Children started by forkserver or spawn import the stage functions (and mpkit) by name: they
# must find the repo root. sys.path is for this process; PYTHONPATH for every child, set before
# any process or the forkserver exists.
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

# Only the standard library and the light task module at the top: forkserver and spawn children
# import this script again (as __mp_main__; mpkit preloads it in the forkserver).
from benchmarks import _pipeline_tasks as tasks
from benchmarks._results import save

FULL = {"repeats": 3, "n_a": 200_000, "n_b": 20_000, "n_mem": 10_000}
QUICK = {"repeats": 1, "n_a": 20_000, "n_b": 2_000, "n_mem": 2_000}
PRE_SECONDS, MODEL_BASE_SECONDS, MODEL_ITEM_SECONDS = 0.5e-3, 5e-3, 0.05e-3
BATCH, MAX_WAIT, B_WORKERS = 128, 1.0, 2
MEM_PAYLOAD, MEM_STAGE_SECONDS = 16 * 1024, 1e-3
MEM_SLACK = 8 * 2 ** 20  # allocator and pickling buffers, beyond one full channel of payload
N_FIXED = 10  # (c): a run of a few items costs what starting and stopping the processes costs
TARGETS = {"a": 3.0, "b": 1.3, "observer": 0.03}
RESULTS = "pipeline.md"  # in benchmarks/results
MIB = 2 ** 20


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---- CPU accounting and clean-up -------------------------------------------------------------------
def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def cpu_seconds() -> float:
    """CPU time of this process + of every worker that has exited and been reaped.

    Under forkserver every worker is a child of the forkserver, which reaps them: their CPU time
    adds up in the forkserver's children times (/proc/<pid>/stat cutime, cstime). Spawned workers
    are this process's children, reaped here."""
    import psutil

    me = psutil.Process().cpu_times()
    total = me.user + me.system + me.children_user + me.children_system
    pid = _forkserver_pid()
    if pid:
        fs = psutil.Process(pid).cpu_times()
        total += fs.children_user + fs.children_system
    return total


def wait_workers_gone(timeout: float = 10.0, zombies: bool = True) -> list:
    """Wait until no process but the shared helpers (forkserver, resource tracker) is left; with
    ``zombies``, until every one has been reaped too (its CPU time is then in its parent's counters)."""
    import psutil

    from benchmarks._rss import _helper_pids

    deadline = time.monotonic() + timeout
    while True:
        helpers = _helper_pids()
        left = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.pid not in helpers and (zombies or proc.status() != psutil.STATUS_ZOMBIE):
                    left.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


# ---- one run of each system -----------------------------------------------------------------------
class Sample:
    def __init__(self, seconds: float, count: int, peak_rss: int, cpu: float, observer=None, rss_samples: int = 0):
        self.seconds, self.count, self.peak_rss, self.cpu = seconds, count, peak_rss, cpu
        self.rss_samples = rss_samples
        self.observer_seconds = observer.seconds if observer else 0.0
        self.observer_calls = observer.calls if observer else 0
        self.observer_first = observer.first if observer else 0.0


def run_reference(n: int, work: tasks.Work) -> Sample:
    from benchmarks._rss import total_rss
    from benchmarks.article_reference import LAST_RUN
    from benchmarks.article_reference import run_reference as run

    wait_workers_gone()
    gc.collect()
    before = total_rss()[0]
    cpu0 = cpu_seconds()
    seconds, count, peak = run(n, work)
    wait_workers_gone()
    return Sample(seconds, count, peak - before, cpu_seconds() - cpu0 + LAST_RUN["unreaped_cpu"],
                  rss_samples=len(LAST_RUN["rss_samples"]))


def build_pipeline(work: tasks.Work, name: str = "inference"):
    from mpkit import Pipeline

    return (Pipeline(name)
            .stage(tasks.Preprocess(work.pre_iters), workers=B_WORKERS, name="preprocess")
            .batch(max_size=BATCH, max_wait=MAX_WAIT)
            .stage(tasks.ModelFactory(work.model_base_iters, work.model_item_iters), workers=1,
                   name="model", factory=True))


class ObserverTimer:
    """Counts the time the router thread spends in an observer class's update/close (this process)."""

    def __init__(self, cls):
        self.cls, self.seconds, self.calls, self.first = cls, 0.0, 0, 0.0

    def __enter__(self):
        self.saved = {name: getattr(self.cls, name) for name in ("update", "close")}
        for name, method in self.saved.items():
            def timed(obj, stats, _method=method):
                start = time.perf_counter()
                try:
                    return _method(obj, stats)
                finally:
                    took = time.perf_counter() - start
                    self.seconds += took
                    self.first = self.first or took
                    self.calls += 1
            setattr(self.cls, name, timed)
        return self

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(self.cls, name, method)


def run_mpkit(n: int, work: tasks.Work, observer: str = "none", pipes: dict | None = None) -> Sample:
    """One blocking pipe.run over range(n); observer "none", "text" (TextStatus) or "dashboard"."""
    from benchmarks._rss import RssSampler, total_rss

    pipe = pipes[observer]
    timer = contextlib.nullcontext(ObserverTimer(object))
    run_kwargs = {"progress": False}
    redirect = contextlib.nullcontext()
    if observer == "text":
        from mpkit.widgets._status import TextStatus

        timer = ObserverTimer(TextStatus)
        run_kwargs = {"progress": True}  # mpkit's terminal front-end, made on sys.stderr at run time
        redirect = contextlib.redirect_stderr(io.StringIO())
    elif observer == "dashboard":
        from mpkit.widgets._dashboard import Dashboard

        timer = ObserverTimer(Dashboard)
        # A fresh pipeline and Dashboard for every run: a Dashboard that saw a run end is closed and
        # ignores the snapshots of later runs of the same pipeline.
        pipe = build_pipeline(work, "inference+dashboard")
        dash = pipe.dashboard()
    wait_workers_gone()
    gc.collect()
    before = total_rss()[0]
    cpu0 = cpu_seconds()
    try:
        with RssSampler(0.1) as sampler, timer as t, redirect as out:
            start = time.perf_counter()
            results = pipe.run(range(n), **run_kwargs)
            seconds = time.perf_counter() - start
    finally:
        if observer == "dashboard":
            # Closed by hand: ipywidgets keeps every open widget in a global registry, and through
            # the Dashboard's callbacks the pipeline, its last run and all its results with it.
            from mpkit.widgets._stage_card import close_tree

            close_tree(dash.widget)
    wait_workers_gone()
    cpu = cpu_seconds() - cpu0 + sampler.unreaped_cpu
    if len(results) != n or sum(int(r.rsplit("_", 1)[1]) for r in results) != n * (n - 1) // 2:
        raise AssertionError(f"mpkit returned {len(results)} results for {n} items, or wrong ones")
    if observer == "text" and "pipeline 'inference" not in out.getvalue():
        raise AssertionError("the TextStatus observer wrote nothing")
    return Sample(seconds, len(results), sampler.peak - before, cpu, t, rss_samples=len(sampler.samples))


def make_pipes(work: tasks.Work) -> dict:
    pipes = {"none": build_pipeline(work), "text": build_pipeline(work, "inference+text")}
    try:
        import ipywidgets  # noqa: F401

        pipes["dashboard"] = None  # a new pipeline and Dashboard for each run (run_mpkit)
    except ImportError as exc:  # ipywidgets missing: no Dashboard variant
        print(f"(no Dashboard variant: {exc})", file=sys.stderr)
    return pipes


def compare(label: str, n: int, work: tasks.Work, repeats: int, observers: bool = True,
            mpkit_repeats: int | None = None) -> dict[str, list[Sample]]:
    """Reference and mpkit (with each observer variant) in turns, ``repeats`` times, order rotated;
    the mpkit variants ``mpkit_repeats`` times (more rounds, without the reference, if larger)."""
    pipes = make_pipes(work) if observers else {"none": build_pipeline(work)}
    runners = {"reference": lambda: run_reference(n, work)}
    for observer in pipes:
        runners[f"mpkit/{observer}"] = functools.partial(run_mpkit, n, work, observer, pipes)
    # warm-up, untimed: imports, page cache, the forkserver's preload
    run_reference(min(n, 2000), work)
    for observer in pipes:
        run_mpkit(min(n, 2000), work, observer, pipes)
    samples: dict[str, list[Sample]] = {name: [] for name in runners}
    rounds = max(repeats, mpkit_repeats or repeats)
    for r in range(rounds):
        names = [name for name in runners if r < repeats or name != "reference"]
        k = r % len(names)
        for name in names[k:] + names[:k]:
            print(f"  {label}: round {r + 1}/{rounds}, {name} ...", file=sys.stderr, end=" ", flush=True)
            s = runners[name]()
            print(f"{s.seconds:.2f} s, {s.count / s.seconds:,.0f} items/s, cpu {s.cpu:.1f} s", file=sys.stderr)
            samples[name].append(s)
    return samples


def serial_work_cpu(work: tasks.Work, n: int = 1024) -> float:
    """CPU seconds per item of the work alone, run here in one thread: preprocess, then the model
    per batch of 128. The machine's speed per core drifts with other load (shared caches, SMT
    siblings): measured next to the runs, it bounds them better than the calibration target."""
    pre, model = tasks.Preprocess(work.pre_iters), tasks.ModelFactory(work.model_base_iters, work.model_item_iters)()
    start = time.thread_time()
    out = [pre(i) for i in range(n)]
    for j in range(0, n, BATCH):
        model(out[j:j + BATCH])
    return (time.thread_time() - start) / n


# ---- memory flatness -----------------------------------------------------------------------------
def memory_run(n: int) -> dict:
    from benchmarks._rss import RssSampler, total_rss
    from mpkit import Pipeline

    iters = round(MEM_STAGE_SECONDS * tasks.iterations_per_second())
    start = time.perf_counter()
    produced = sum(1 for _ in tasks.payload(n, MEM_PAYLOAD))
    producer_rate = produced / (time.perf_counter() - start)
    pipe = Pipeline("memory").stage(tasks.SlowStage(iters), workers=1, name="slow")
    pipe.run(tasks.payload(50, MEM_PAYLOAD), progress=False)  # warm-up
    wait_workers_gone()
    gc.collect()
    baseline = total_rss()[0]
    with RssSampler(0.1) as sampler:
        t0 = time.perf_counter()
        results = pipe.run(tasks.payload(n, MEM_PAYLOAD), progress=False)
        seconds = time.perf_counter() - t0
    wait_workers_gone()
    if len(results) != n or set(results) != {MEM_PAYLOAD}:
        raise AssertionError("memory run: wrong results")
    samples = sampler.samples
    # The run proper: the samples taken while all the workers were up (not start-up, not shut-down).
    most = max(count for _, _, count in samples)
    steady = [(t, rss) for t, rss, count in samples if count == most]
    return {"n": n, "seconds": seconds, "consumer_rate": n / seconds, "producer_rate": producer_rate,
            "baseline": baseline, "start": steady[0][1], "max": max(r for _, r in steady),
            "end": steady[-1][1], "steady": steady, "processes": most,
            "capacity": pipe.stats().stage("slow").capacity}


# ---- reporting ------------------------------------------------------------------------------------
def med(samples: list[Sample], attr: str = "rate") -> float:
    if attr == "rate":
        return statistics.median(s.count / s.seconds for s in samples)
    return statistics.median(getattr(s, attr) for s in samples)


def facts(cfg, work_b: tasks.Work, per_second: float) -> list[str]:
    import mpkit
    from benchmarks.article_reference import START_METHOD
    from mpkit.engine.process import default_start_method

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}",
        f"- cores: {os.cpu_count()} logical, {usable_cores()} usable by this process",
        (f"- Python {platform.python_version()} ({platform.python_implementation()}), mpkit {mpkit.__version__} "
         f"(start method {default_start_method()}), reference start method {START_METHOD}"),
        (f"- repeats R = {cfg['repeats']}; (a) {cfg['n_a']:,} items; (b) {cfg['n_b']:,} items; "
         f"memory: {cfg['n_mem']:,} items of {MEM_PAYLOAD // 1024} KiB"),
        (f"- calibration: {per_second / 1e6:.1f} M loop iterations per CPU second; (b) preprocess "
         f"spin({work_b.pre_iters:,}) = {PRE_SECONDS * 1e3:g} ms, model spin({work_b.model_base_iters:,} + "
         f"{work_b.model_item_iters:,} per item) = {MODEL_BASE_SECONDS * 1e3:g} ms + "
         f"{MODEL_ITEM_SECONDS * 1e3:g} ms per item"),
        f"- load average at start (1, 5, 15 min): {load}",
    ]


def throughput_table(results: dict) -> list[str]:
    lines = [("| workload | system | items | median s | min-max s | items/s | vs reference | CPU ms/item "
              "| cores busy | peak RSS added MiB |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, n, samples in results.values():
        ref = med(samples["reference"])
        for name in ("reference", "mpkit/none"):
            s = samples[name]
            secs = [x.seconds for x in s]
            rss = f"{med(s, 'peak_rss') / MIB:.0f}" if med(s, "rss_samples") >= 4 else "n/a (run too short)"
            label = "article reference" if name == "reference" else "mpkit Pipeline"
            lines.append(f"| {case} | {label} | {n:,} | {statistics.median(secs):.2f} "
                         f"| {min(secs):.2f}-{max(secs):.2f} "
                         f"| {med(s):,.0f} | {med(s) / ref:.2f}x | {med(s, 'cpu') / n * 1e3:.3f} "
                         f"| {statistics.median(x.cpu / x.seconds for x in s):.2f} "
                         f"| {rss} |")
    return lines


def observer_table(results: dict) -> list[str]:
    lines = [("| workload | observer | items/s (median) | throughput cost vs none | observer time, % of run "
              "| calls per run | first call ms |"),
             "|---|---|---:|---:|---:|---:|---:|"]
    names = {"none": "none", "text": "TextStatus -> io.StringIO", "dashboard": "Dashboard (ipywidgets, no front-end)"}
    for key, (case, n, samples) in results.items():
        if key == "c":
            continue
        base = med(samples["mpkit/none"])
        for observer, label in names.items():
            s = samples.get(f"mpkit/{observer}")
            if not s:
                continue
            share = statistics.median(x.observer_seconds / x.seconds for x in s)
            cost = "" if observer == "none" else f"{1 - med(s) / base:+.1%}"
            calls = "" if observer == "none" else f"{statistics.median(x.observer_calls for x in s):.0f}"
            first = "" if observer == "none" else f"{statistics.median(x.observer_first for x in s) * 1e3:.1f}"
            share = "" if observer == "none" else f"{share:.2%}"
            lines.append(f"| {case} | {label} | {med(s):,.0f} | {cost} | {share} | {calls} | {first} |")
    return lines


def memory_table(mem: dict) -> list[str]:
    growth = mem["max"] - mem["start"]
    every = max(1, len(mem["steady"]) // 12)
    series = ", ".join(f"{rss / MIB:.0f}" for _, rss in mem["steady"][::every])
    return [
        ("| items | producer items/s | consumer items/s | processes | before run MiB | start MiB | max MiB "
         "| end MiB | max - start MiB | all items buffered would add MiB |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        (f"| {mem['n']:,} | {mem['producer_rate']:,.0f} | {mem['consumer_rate']:,.0f} | {mem['processes']} "
         f"| {mem['baseline'] / MIB:.0f} | {mem['start'] / MIB:.0f} | {mem['max'] / MIB:.0f} | {mem['end'] / MIB:.0f} "
         f"| {growth / MIB:.1f} | {mem['n'] * MEM_PAYLOAD / MIB:.0f} |"),
        "",
        f"Total RSS over the run (MiB, every {every * 0.1:.1f} s): {series}",
    ]


def paired(samples: dict, name: str, base: str) -> float:
    """Median over rounds of (items/s of ``name`` / items/s of ``base``) in the same round: the two
    ran one after the other, so a burst of other load on the machine hits both or neither."""
    pairs = zip(samples[name], samples[base])  # sample i of each = round i
    return statistics.median((a.count / a.seconds) / (b.count / b.seconds) for a, b in pairs)


def verdicts(results: dict, mem: dict) -> tuple[list[str], list[tuple]]:
    """Each target judged on the paired ratio (median of per-round ratios); the ratio of medians too."""
    rows = []
    for key in ("a", "b"):
        case, _, samples = results[key]
        ratio = med(samples["mpkit/none"]) / med(samples["reference"])
        pair = paired(samples, "mpkit/none", "reference")
        rows.append((f"{case}: mpkit items/s vs reference", f"{pair:.2f}x (medians: {ratio:.2f}x)",
                     f">= {TARGETS[key]:g}x", pair >= TARGETS[key]))
    for key in ("a", "b"):
        case, _, samples = results[key]
        base = med(samples["mpkit/none"])
        for observer in ("text", "dashboard"):
            if f"mpkit/{observer}" in samples:
                cost = 1 - med(samples[f"mpkit/{observer}"]) / base
                pair = 1 - paired(samples, f"mpkit/{observer}", "mpkit/none")
                rows.append((f"{case}: {observer} observer cost", f"{pair:+.1%} (medians: {cost:+.1%})",
                             f"< {TARGETS['observer']:.0%}", pair < TARGETS["observer"]))
    bound = mem["capacity"] * MEM_PAYLOAD + MEM_SLACK
    growth = mem["max"] - mem["start"]
    rows.append(("memory: max - start, fast producer", f"{growth / MIB:.1f} MiB",
                 (f"<= one channel + {MEM_SLACK // MIB} MiB = {bound / MIB:.0f} MiB (all items: "
                  f"{mem['n'] * MEM_PAYLOAD / MIB:.0f} MiB)"), growth <= bound))
    lines = ["| target | measured: paired (ratio of medians) | needed | result |", "|---|---:|---:|---|"]
    lines += [f"| {what} | {got} | {need} | {'PASS' if ok else 'MISS'} |" for what, got, need, ok in rows]
    return lines, rows


def notes(cfg, results: dict, work_cpu: float, mem: dict, ref_details: dict) -> list[str]:
    w = usable_cores()
    cpu_item = PRE_SECONDS + MODEL_BASE_SECONDS / BATCH + MODEL_ITEM_SECONDS
    ideal = w / work_cpu
    samples_b = results["b"][2]
    ref_cpu, mp_cpu = med(samples_b["reference"], "cpu"), med(samples_b["mpkit/none"], "cpu")
    out = []
    if cfg is QUICK:
        out.append("- --quick run: small workloads and R = 1; start-up and shut-down weigh more, so the "
                   "ratios and PASS/MISS are only indicative.")
    out += [
        (f"- (b) bound: the work itself is {cpu_item * 1e3:.3f} ms of CPU per item by design (0.5 + 5/128 + "
         f"0.05), {work_cpu * 1e3:.3f} ms as measured serially in this thread before and after (b), so "
         f"{w} cores finish at most {ideal:,.0f} items/s: the reference reached "
         f"{med(samples_b['reference']) / ideal:.0%} "
         f"of that, mpkit {med(samples_b['mpkit/none']) / ideal:.0%}; 1.3x the reference needs "
         f"{1.3 * med(samples_b['reference']) / ideal:.0%}. When both systems keep the cores busy, the most "
         f"mpkit can gain is the ratio of their CPU per item: {ref_cpu / mp_cpu:.2f}x here."),
        ("- CPU ms/item: CPU time of this process and of all the system's processes over the run, divided "
         "by the items. Workers' times are read, once they are reaped, from the reaped-children counters "
         "of their parent (this process or the forkserver); the reference's modules start their own "
         "children (through a forkserver each, under forkserver), whose times are summed as last sampled "
         f"(every 0.1 s: up to 0.1 s of each one's last CPU may be missed, a few % of (b)'s total). In (b) the work alone is {work_cpu * 1e3:.3f} ms. Cores busy = CPU s / wall s "
         f"(at most {w}): what is missing to {w} went idle or to other processes on the machine."),
        (f"- Reference: batches of up to 129 items (its rule is \"more than 128\"); in the last run "
         f"{ref_details.get('batches', 0)} batches, {ref_details.get('mean_batch', 0):.1f} items on average; "
         f"start-up (module processes started to first send) {ref_details.get('startup_seconds', 0):.2f} s."),
        ("- Times include starting the processes: mpkit = the pipe.run call (which also stops its "
         "workers); reference = from starting its modules to the receiver holding the last result "
         f"(joining its processes afterwards took {ref_details.get('teardown_seconds', 0):.2f} s in the last run, "
         "untimed). Peak RSS added: the peak of this process + all the system's processes (not the "
         "forkserver), sampled every 0.1 s, minus this process's RSS just before the run; RSS counts "
         "shared pages in each process; runs shorter than a few tenths of a second are barely sampled."),
        ("- Targets are judged on paired ratios: in each round the systems (or observer variants) run "
         "one after the other; the median over rounds of the per-round ratio is less exposed to bursts "
         "of other load than the ratio of the two medians (shown too)."),
        ("- Observer time: time the pipeline's router thread spent inside the observer's update/close "
         "calls (timed by wrapping them), as a share of the run: what the observer takes from routing."),
        (f"- Memory: one run. Producer = the generator alone; consumer = the slow stage in the pipeline. "
         f"start/max/end over the samples taken while the worker was up ({len(mem['steady'])} samples); "
         f"the stage's input channel holds at most {mem['capacity']:,} items "
         f"({mem['capacity'] * MEM_PAYLOAD / MIB:.0f} MiB of payload)."),
        (f"- Load average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}. "
         "Other processes shared the machine: compare ratios and CPU per item, not absolute times."),
    ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: R=1, small workloads")
    cfg = QUICK if parser.parse_args().quick else FULL

    from benchmarks import article_reference

    per_second = tasks.iterations_per_second()
    work_a = tasks.Work(label="no work")
    work_b = tasks.Work(pre_iters=round(PRE_SECONDS * per_second),
                        model_base_iters=round(MODEL_BASE_SECONDS * per_second),
                        model_item_iters=round(MODEL_ITEM_SECONDS * per_second), label="cpu")
    head = ["## Machine", ""] + facts(cfg, work_b, per_second)
    print("\n".join(head), flush=True)

    # mpkit first: its pools start the forkserver the way mpkit does on its own (its preload).
    build_pipeline(work_a, "warm-up").run(range(10), progress=False)
    res_a = compare("(a)", cfg["n_a"], work_a, cfg["repeats"], mpkit_repeats=3 * cfg["repeats"])
    serial_before = serial_work_cpu(work_b)
    res_b = compare("(b)", cfg["n_b"], work_b, cfg["repeats"])
    work_cpu = (serial_before + serial_work_cpu(work_b)) / 2
    ref_details = dict(article_reference.LAST_RUN)
    res_c = compare("(c)", N_FIXED, work_a, cfg["repeats"], observers=False)
    print("  memory run ...", file=sys.stderr, flush=True)
    mem = memory_run(cfg["n_mem"])
    results = {"a": ("(a) no work", cfg["n_a"], res_a),
               "b": ("(b) 0.5 ms/item + model 5 ms + 0.05 ms/item", cfg["n_b"], res_b),
               "c": (f"(c) start-up: {N_FIXED} items, no work", N_FIXED, res_c)}
    target_lines, _ = verdicts(results, mem)
    body = (["", "## Throughput", ""] + throughput_table(results)
            + ["", "## Dashboard cost (mpkit, observer attached vs not)", ""] + observer_table(results)
            + ["", "## Memory with a producer faster than the consumer (mpkit)", ""] + memory_table(mem)
            + ["", "## mpkit targets", ""] + target_lines
            + ["", "## Notes", ""] + notes(cfg, results, work_cpu, mem, ref_details))
    print("\n".join(body))
    path = save(RESULTS, "# Pipeline benchmark\n\n`python benchmarks/bench_pipeline.py"
                + (" --quick" if cfg is QUICK else "") + "`\n\n" + "\n".join(head + body) + "\n")
    print(f"\nwritten to {os.path.relpath(path, ROOT)}")

    left = wait_workers_gone(zombies=False)
    for proc in left:
        print(f"LEAK: child process {proc.pid} still alive: {' '.join(proc.cmdline())}", file=sys.stderr)
        proc.kill()
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
