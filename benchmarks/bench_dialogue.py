"""Benchmark: ``mpkit.recipes.dialogue`` next to the article's dialogue cleaner, end to end.

    python benchmarks/bench_dialogue.py            # ~10,000 conversations (CrossWOZ val x 20)
    python benchmarks/bench_dialogue.py --quick    # ~1,000 conversations (x 2)
    python benchmarks/bench_dialogue.py --runs 3   # three rounds of the three runs: medians

The corpus is generated at start into a temporary folder by ``shared/tools/make_dialogue_corpus.py``
(beside this repository) from CrossWOZ's validation split, ``--repeat 20``: 10 .xlsx files, ~234,000
rows with the noise of real exports. Without ``../shared`` the benchmark says so and exits.

Three runs on it, each timed from the call to the files written, with its peak resident memory
(this process + every process it started, sampled every 0.1 s):
  article   benchmarks/article_dialogue.py: the article's code, one process reading every file with
            openpyxl, a second process per split writing the MMI file (unbounded Queue).
  seed      clean_dialogues(compat="seed"): the same output byte for byte (checked), files read in
            parallel by mpkit.map workers. Target: >= 4x the article's speed on 2 cores.
  default   clean_dialogues(time_column="发送时间"): the fixed cleaning (calamine, joined across
            files, notices as substrings, ...). Target: >= 10x the article's speed on 2 cores, with
            a peak memory no higher than the article's.
Validation: 1,000 conversations (the article's count rule), 100 with --quick. mpkit's pool is shut
down after each run, so its start-up is in the time. The report is printed and written to
benchmarks/results/dialogue.md.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
TOOL = SHARED / "tools" / "make_dialogue_corpus.py"
SPLIT = SHARED / "data" / "crosswoz" / "val.json.zip"
# Workers started by forkserver or spawn import mpkit and the port by name.
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

WORKERS = 2
FILES = [("std", "finetune_std_data"), ("mmi", "finetune_mmi_data")]


def _timed(fn):
    from benchmarks._rss import RssSampler

    with RssSampler(0.1) as sampler:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
    return seconds, sampler.peak, result


def _same(ours: Path, port: Path) -> bool:
    return all((ours / a / f"{s}.txt").read_bytes() == (port / b / f"{s}.txt").read_bytes()
               for a, b in FILES for s in ("train", "val"))


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    rounds = int(argv[argv.index("--runs") + 1]) if "--runs" in argv else 1
    if not (TOOL.is_file() and SPLIT.is_file()):
        print(f"bench_dialogue: skipped: {TOOL.relative_to(SHARED.parent)} or "
              f"{SPLIT.relative_to(SHARED.parent)} is missing (the shared folder beside the repository). "
              "Fix: run from a checkout with ../shared present.")
        return 0
    import mpkit
    from benchmarks.article_dialogue import get_funtine_data
    from mpkit.recipes.dialogue import clean_dialogues

    repeat, val = (2, 100) if quick else (20, 1000)
    with tempfile.TemporaryDirectory(prefix="mpkit-bench-dialogue-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        made = subprocess.run([sys.executable, str(TOOL), str(SPLIT), str(tmp / "corpus"), "--repeat", str(repeat)],
                              check=True, capture_output=True, text=True).stdout.strip()
        made = made.split(" in ")[0]  # the temporary folder's path is no part of the report
        print(f"corpus: {made} ({time.perf_counter() - started:.1f} s to generate)", flush=True)
        paths = sorted(str(p) for p in (tmp / "corpus").glob("*.xlsx"))

        def ours(out, **kw):
            try:
                return clean_dialogues(paths, tmp / out, val_size=val, workers=WORKERS, progress=False, **kw)
            finally:
                mpkit.shutdown()

        # Each round runs the three one after the other, so that a round's ratios compare runs
        # made under the same load (the VM is shared); the table gives each run's median.
        runs: dict[str, list] = {"article": [], "seed": [], "default": []}
        same = True
        for round_ in range(rounds):
            t, m, (n_train, n_val) = _timed(lambda: get_funtine_data(paths, str(tmp / "port"), val_size=val))
            runs["article"].append((t, m))
            t, m, r_seed = _timed(lambda: ours("seed", compat="seed"))
            runs["seed"].append((t, m))
            same = same and _same(tmp / "seed", tmp / "port")
            t, m, r_def = _timed(lambda: ours("default", time_column="发送时间"))
            runs["default"].append((t, m))
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in runs.items())
                  + f"; seed identical: {same}", flush=True)
        med = {k: (statistics.median(t for t, _ in v), max(m for _, m in v)) for k, v in runs.items()}
        t_port = med["article"][0]
        ratios = {k: [a[0] / o[0] for a, o in zip(runs["article"], runs[k])] for k in ("seed", "default")}
        rows = [("article (port)", *med["article"], f"{n_train + n_val:,}", "reference"),
                ("mpkit --compat seed", *med["seed"], f"{r_seed.conversations:,}",
                 "identical to the article" if same else "DIFFERS from the article"),
                ("mpkit default", *med["default"], f"{r_def.conversations:,}",
                 f"{r_def.rows_kept:,} rows kept of {r_def.rows_read:,}")]

    lines = [f"# Dialogue cleaning: mpkit vs the article ({'quick' if quick else 'full'} run)", "",
             (f"Corpus: {made}. Validation: {val:,} conversations. {WORKERS} workers; "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}."), "",
             f"Rounds: {rounds} (seconds: the median; peak memory: the highest). Each round's speed-ups, side "
             "by side: seed " + ", ".join(f"{r:.1f}x" for r in ratios["seed"]) + "; default "
             + ", ".join(f"{r:.1f}x" for r in ratios["default"]) + ".", "",
             "| run | seconds | speed-up | peak memory (MB) | conversations | output |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, seconds, peak, convs, note in rows:
        lines.append(f"| {name} | {seconds:.1f} | {t_port / seconds:.1f}x | {peak / 2**20:.0f} | {convs} | {note} |")
    dropped = ", ".join(f"{n:,} {why}" for why, n in sorted(r_def.rows_dropped.items()))
    lines += ["", f"Default mode: rows dropped: {dropped}; written: "
                  + ", ".join(f"{name} {n:,}" for name, n in r_def.written.items()) + ".", "",
              ("Targets: default mode >= 10x the article's speed with a peak memory at most the article's; "
               "--compat seed >= 4x. Peak memory: this process + all it started, sampled every 0.1 s. "
               "Other work on the machine shares its cores: compare ratios.")]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    if not quick:
        from benchmarks._results import save

        save("dialogue.md", report)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
