"""Benchmark: reading chat exports with calamine vs openpyxl, as mpkit.recipes.excel does.

    python benchmarks/bench_excel.py                 # 4 sample files x 10 copies, 3 rounds
    python benchmarks/bench_excel.py --copies 25 --rounds 5 --workers 2

The sample exports (mpkit/recipes/sample_data, 4 files, 11,739 rows) are copied COPIES times into
a temporary folder. Each engine then reads every file with the recipe's per-file function
(``excel._read_file``: every sheet with the columns, 消息内容 to text, drop notice rows), two ways:

  serial     one process, a plain loop, in a fresh Python process per round so that its peak
             memory (resource ru_maxrss) belongs to that engine alone
  mpkit.map  WORKERS worker processes (warm pool, chunksize=1: one file per task); peak memory is
             this process + its workers (psutil, sampled every 0.1 s)

Reported: the median of ROUNDS rounds (and their spread), files/s and rows/s from the median, and
the peak memory over the rounds. The engines take turns round by round. Printed as Markdown and
written to benchmarks/results/excel.md.

    python benchmarks/bench_excel.py --big 500000 [--rounds 3] [--against OTHER_CHECKOUT]

One export of ~ROWS rows (made by the shared make_dialogue_corpus.py tool from CrossWOZ val),
run end to end as ``python -m mpkit excel FILE --out DIR --format F -n WORKERS --no-progress``
for xlsx and csv in turns: wall time, and the peak RSS of the command's own process (the parent,
which writes) and of it with its workers, sampled every 0.1 s. ``--against`` times another mpkit
source tree (say, a checkout of an earlier commit) the same way, side by side, in the same rounds.
Written to benchmarks/results/excel_big.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
from benchmarks._results import save  # noqa: E402

ENGINES = ("calamine", "openpyxl")


def _child(engine: str, folder: str) -> None:
    """Serial read of every file in ``folder`` in this fresh process; prints one JSON line."""
    import resource

    from mpkit.recipes import excel

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    notices = tuple(map(excel.normalize, excel.DEFAULT_NOTICES))
    start = time.perf_counter()
    results = [excel._read_file((f, notices, engine)) for f in files]
    seconds = time.perf_counter() - start
    assert not any(r.reason for r in results), [r.reason for r in results if r.reason]
    print(json.dumps({"seconds": seconds, "files": len(files), "rows": sum(r.rows_read for r in results),
                      "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def _serial(engine: str, folder: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", engine, folder],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _parallel(engine: str, folder: str, workers: int) -> dict:
    import mpkit
    from benchmarks._rss import RssSampler
    from mpkit.recipes import excel

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    notices = tuple(map(excel.normalize, excel.DEFAULT_NOTICES))
    tasks = [(f, notices, engine) for f in files]
    with RssSampler() as sampler:
        start = time.perf_counter()
        results = mpkit.map(excel._read_file, tasks, workers=workers, chunksize=1, progress=False)
        seconds = time.perf_counter() - start
    assert not any(r.reason for r in results)
    return {"seconds": seconds, "files": len(files), "rows": sum(r.rows_read for r in results),
            "peak": sampler.peak}


def _cli_run(root: str, path: str, fmt: str, workers: int, out: str) -> dict:
    """One ``python -m mpkit excel`` run of the mpkit in ``root``: seconds, parent and total peak RSS."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=root)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mpkit", "excel", path, "--out", out, "--format", fmt,
                             "-n", str(workers), "--no-progress"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parent = psutil.Process(proc.pid)
    peak_parent = peak_total = 0
    while proc.poll() is None:
        try:
            rss = parent.memory_info().rss
            total = rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
        except psutil.Error:
            total = rss = 0
        peak_parent, peak_total = max(peak_parent, rss), max(peak_total, total)
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    output = proc.stdout.read()
    assert proc.returncode == 0, output
    return {"seconds": seconds, "parent": peak_parent, "total": peak_total, "report": output.splitlines()[0]}


def _big(args) -> int:
    """The 500,000-row single export, xlsx next to csv (see the module docstring)."""
    tool = os.path.join(os.path.dirname(ROOT), "shared", "tools", "make_dialogue_corpus.py")
    split = os.path.join(os.path.dirname(ROOT), "shared", "data", "crosswoz", "val.json.zip")
    folder = tempfile.mkdtemp(prefix="mpkit_bench_excel_big_")
    try:
        # the val split gives ~11,700 rows a copy
        subprocess.run([sys.executable, tool, split, os.path.join(folder, "in"), "--files", "1", "--repeat",
                        str(max(1, round(args.big / 11_716)))], check=True, capture_output=True)
        [name] = os.listdir(os.path.join(folder, "in"))
        path = os.path.join(folder, "in", name)
        trees = [("this tree", ROOT)] + ([("--against", os.path.abspath(args.against))] if args.against else [])
        runs: dict[tuple[str, str], list[dict]] = {}
        for r in range(args.rounds):
            for label, root in (trees if r % 2 == 0 else trees[::-1]):
                for fmt in (("xlsx", "csv") if r % 2 == 0 else ("csv", "xlsx")):
                    print(f"round {r + 1}/{args.rounds}: {label} {fmt}", file=sys.stderr, flush=True)
                    runs.setdefault((label, fmt), []).append(
                        _cli_run(root, path, fmt, args.workers, os.path.join(folder, "out")))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    first = next(iter(runs.values()))[0]
    lines = [f"One export, `python -m mpkit excel FILE --format F -n {args.workers}`: {first['report']}. "
             f"Median of {args.rounds} rounds; Python {platform.python_version()}, {os.cpu_count()} CPUs.", "",
             "| mpkit | format | median s (min-max) | xlsx / csv | peak RSS, parent | peak RSS, with workers |",
             "|---|---|---|---|---|---|"]
    for (label, fmt), rs in runs.items():
        secs = [x["seconds"] for x in rs]
        csv_med = statistics.median(x["seconds"] for x in runs[(label, "csv")])
        lines.append(f"| {label} | {fmt} | {statistics.median(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) | "
                     f"{statistics.median(secs) / csv_med:.2f} | {max(x['parent'] for x in rs) / 2**20:,.0f} MiB | "
                     f"{max(x['total'] for x in rs) / 2**20:,.0f} MiB |")
    table = "\n".join(lines)
    print(table)
    save("excel_big.md", "# Excel recipe: one large export, xlsx vs csv output\n\n" + table + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10, help="copies of the 4 sample files (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (default 3)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes for the mpkit.map rows (default: 2)")
    parser.add_argument("--big", type=int, metavar="ROWS", help="time one export of ~ROWS rows end to end, "
                                                                 "xlsx vs csv output (see above)")
    parser.add_argument("--against", metavar="DIR", help="with --big: another mpkit source tree, timed too")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    if args.big:
        return _big(args)

    import mpkit
    from mpkit.recipes import SAMPLE_DATA

    folder = tempfile.mkdtemp(prefix="mpkit_bench_excel_")
    try:
        for k in range(args.copies):
            for src in sorted(SAMPLE_DATA.glob("*.xlsx")):
                shutil.copy(src, os.path.join(folder, f"{k:03d}_{src.name}"))
        _parallel("calamine", folder, args.workers)  # warm the pool (workers started, pandas imported)
        runs: dict[tuple[str, str], list[dict]] = {}
        for r in range(args.rounds):
            for engine in (ENGINES if r % 2 == 0 else ENGINES[::-1]):
                print(f"round {r + 1}/{args.rounds}: {engine}", file=sys.stderr, flush=True)
                runs.setdefault((engine, "serial"), []).append(_serial(engine, folder))
                runs.setdefault((engine, f"mpkit.map, {args.workers} workers"), []).append(
                    _parallel(engine, folder, args.workers))
    finally:
        mpkit.shutdown()
        shutil.rmtree(folder, ignore_errors=True)

    first = next(iter(runs.values()))[0]
    lines = [(f"Reading {first['files']} chat exports ({first['rows']:,} rows; the 4 samples x {args.copies}) "
             f"with `excel._read_file`; median of {args.rounds} rounds. Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs."), "",
             "| engine | how | median s (min-max) | files/s | rows/s | peak memory |",
             "|---|---|---|---|---|---|"]
    for (engine, how), rs in runs.items():
        secs = [x["seconds"] for x in rs]
        med = statistics.median(secs)
        peak = max(x["peak"] for x in rs)
        lines.append(f"| {engine} | {how} | {med:.2f} ({min(secs):.2f}-{max(secs):.2f}) | "
                     f"{first['files'] / med:,.1f} | {first['rows'] / med:,.0f} | {peak / 2**20:,.0f} MiB |")
    serial = {e: statistics.median(x["seconds"] for x in runs[(e, "serial")]) for e in ENGINES}
    lines += ["", (f"calamine reads {serial['openpyxl'] / serial['calamine']:.1f}x as fast as openpyxl (serial). "
              "Peak memory: serial = the reading process's ru_maxrss; mpkit.map = this process + its workers "
              "(RSS summed, shared pages counted once per process).")]
    table = "\n".join(lines)
    print(table)
    save("excel.md", "# Excel reading: calamine vs openpyxl\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
