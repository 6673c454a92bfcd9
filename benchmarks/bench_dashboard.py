"""Benchmark: what one dashboard update costs in a real Jupyter kernel (issue 10's target: 4 comm
messages, 3.1 KB, 0.7 ms of kernel time per update).

    python benchmarks/bench_dashboard.py                   # this checkout, R=3 rounds
    python benchmarks/bench_dashboard.py --against DIR     # and the mpkit of checkout DIR, in turns

The demo's service (preprocess x2 -> batch of 16 -> model x1, 200 items) runs in a fresh kernel
with ``pipe.dashboard()`` shown; this process reads every IOPub message as a page would, and
counts the comm messages that update the dashboard's models:

    kernel: router ─snapshot─► Dashboard.update ─► ipywidgets ─comm_msg─► IOPub ─► this process
            (update timed)                                                          (sizes summed)

Per update (``Dashboard.update`` calls): comm messages, wire bytes (header, parent header,
metadata and content as the kernel packs them, signature included), content bytes (the JSON of
the models' changed state, what the page draws) and the kernel's time inside ``update``: wall
time, and the CPU time of the thread calling it (the wall time also counts waits for the GIL
while the kernel's other threads and the stage workers share 2 cores). With
``--against`` the two checkouts take turns, round by round, each in a fresh kernel, and the
table shows both and their ratio (medians over the rounds). Only ``mpkit`` is taken from DIR (a
checkout, or ``git archive <commit> | tar -x -C DIR``); the stage functions come from this one.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jupyter_client

REPO = Path(__file__).resolve().parent.parent
ITEMS = 200
TIMEOUT = 180.0

SETUP = """
import time
from mpkit import Pipeline
from mpkit.widgets._dashboard import Dashboard
from tests.pipeline_tasks import slow, batch_identity

_spent, _cpu = [], []
_update = Dashboard.update
def _timed(self, stats):
    t, c = time.perf_counter(), time.thread_time()
    _update(self, stats)
    _spent.append(time.perf_counter() - t)
    _cpu.append(time.thread_time() - c)
Dashboard.update = _timed

def _models(widget):
    found = [widget.model_id]
    for part in ("layout", "style"):
        model = getattr(widget, part, None)
        if model is not None and getattr(model, "model_id", None):
            found.append(model.model_id)
    for child in getattr(widget, "children", ()):
        found += _models(child)
    return found

pipe = (Pipeline("inference").stage(slow, workers=2, name="preprocess")
        .batch(max_size=16, max_wait=0.2).stage(batch_identity, workers=1, name="model"))
"""

RUN = f"""
futures = [svc.submit(i) for i in range({ITEMS})]
results = [f.result(timeout=120) for f in futures]
time.sleep(0.5)
"""


def _linked(mpkit_dir: Path) -> Path:
    """A folder holding only ``mpkit`` (a link to DIR's) and ``tests`` (this checkout's)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    (folder / "mpkit").symlink_to(mpkit_dir.resolve() / "mpkit")
    (folder / "tests").symlink_to(REPO / "tests")
    return folder


class Kernel:
    def __init__(self, path: Path):
        env = dict(os.environ, PYTHONPATH=str(path), PYTHONUNBUFFERED="1")
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(path))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.seen: list[dict] = []

    def run(self, code: str) -> str:
        """Execute a cell; its stdout. Every IOPub message read meanwhile is kept in ``seen``."""
        msg_id = self.kc.execute(code)
        out, deadline = [], time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            self.seen.append(msg)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
        raise RuntimeError(f"a cell did not finish within {TIMEOUT} s")

    def wire_bytes(self, msg: dict) -> int:
        pack = self.kc.session.pack
        parts = [pack(msg[key]) for key in ("header", "parent_header", "metadata", "content")]
        return sum(len(p) for p in parts) + 64 + len(b"<IDS|MSG>")   # + hmac-sha256 hex, delimiter

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def one_run(path: Path) -> dict[str, float]:
    kernel = Kernel(path)
    try:
        kernel.run("%load_ext mpkit\n" + SETUP)
        kernel.run("svc = pipe.start()\ndash = pipe.dashboard()\ndisplay(dash)")
        ids = set(json.loads(kernel.run("import json; print(json.dumps(_models(dash.widget)))")))
        start = len(kernel.seen)
        kernel.run(RUN)
        end = len(kernel.seen)
        updates = int(kernel.run("print(len(_spent))"))
        spent = float(kernel.run("print(sum(_spent))"))
        cpu = float(kernel.run("print(sum(_cpu))"))
        kernel.run("svc.stop(timeout=60)")
    finally:
        kernel.close()
    msgs = [m for m in kernel.seen[start:end] if m["msg_type"] == "comm_msg"
            and m["content"].get("comm_id") in ids and m["content"]["data"].get("method") == "update"]
    wire = sum(kernel.wire_bytes(m) for m in msgs)
    content = sum(len(json.dumps(m["content"]["data"]["state"], ensure_ascii=False).encode()) for m in msgs)
    return {"updates": updates, "messages": len(msgs) / updates, "wire KB": wire / updates / 1000,
            "content KB": content / updates / 1000, "kernel ms": spent / updates * 1000,
            "kernel CPU ms": cpu / updates * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout whose mpkit runs in turns with this one")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    systems = {"this": _linked(REPO)}
    if args.against is not None:
        systems = {"against": _linked(args.against), **systems}
    rows: dict[str, list[dict]] = {name: [] for name in systems}
    names = list(systems)
    try:
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:   # the order rotates
                rows[name].append(one_run(systems[name]))
                print(f"round {r + 1} {name}: {rows[name][-1]}", file=sys.stderr)
    finally:
        for folder in systems.values():
            shutil.rmtree(folder, ignore_errors=True)   # the links only, never what they point at
    keys = ("messages", "wire KB", "content KB", "kernel ms", "kernel CPU ms")
    print("| per update | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |"))
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for key in keys:
        medians = [statistics.median(run[key] for run in rows[name]) for name in names]
        cells = [f"{m:.2f}" for m in medians]
        if len(names) == 2:
            cells.append(f"{medians[1] / medians[0]:.2f}x" if medians[0] else "-")
        print(f"| {key} | " + " | ".join(cells) + " |")
    print(f"(medians of {args.repeats} rounds; updates per run: "
          + ", ".join(f"{n} {statistics.median(run['updates'] for run in rows[n]):.0f}" for n in names) + ")")


if __name__ == "__main__":
    main()
