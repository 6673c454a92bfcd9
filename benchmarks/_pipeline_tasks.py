"""Stage functions, the model and the workloads for bench_pipeline.py and article_reference.py.

They live in a module, not in a script, because processes started by forkserver or spawn import
them by name: the harness puts the repo root on sys.path and PYTHONPATH so that
``benchmarks._pipeline_tasks`` imports in every child. Only the standard library here.

Both systems run the same code per item and per batch:

- ``preprocess(x, iters)``: ``iters`` iterations of pure-Python arithmetic (the GIL held, like the
  article's CPU-heavy data processing), then the article's ``'component_' + str(info)``;
- ``Model(base_iters, item_iters)``: built once inside the process that predicts; called with a
  batch (a list), it spins ``base_iters + item_iters * len(batch)`` iterations and returns one
  result per input, ``'modelpredict_' + s``, as the article's predict step does.

The loop lengths are calibrated once in the main process (``iterations_per_second``, ``cpu_work``)
and travel to the workers inside a :class:`Work` (the reference) or inside picklable callables
(mpkit's stages).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks._tasks import spin


@dataclass(frozen=True)
class Work:
    """What each item and each batch costs, as loop lengths of :func:`spin` (0: no work at all)."""

    pre_iters: int = 0         #: per item, in preprocessing (module B / mpkit's "preprocess" stage)
    model_base_iters: int = 0  #: per batch, in the model (module C's predict / mpkit's "model" stage)
    model_item_iters: int = 0  #: per item of a batch, in the model
    label: str = "no work"


def preprocess(x, iters: int = 0):
    """Module B's per-item work: CPU first (if any), then the article's string."""
    if iters:
        spin(iters)
    return "component_" + str(x)


class Model:
    """A model whose cost is CPU: ``base_iters`` per call plus ``item_iters`` per item of the batch."""

    def __init__(self, base_iters: int = 0, item_iters: int = 0):
        self.base_iters = base_iters
        self.item_iters = item_iters

    def __call__(self, batch: list) -> list:
        iters = self.base_iters + self.item_iters * len(batch)
        if iters:
            spin(iters)
        return ["modelpredict_" + str(s) for s in batch]


# ---- picklable callables for mpkit's stages (module-level classes: importable by name) ------------
class Preprocess:
    """``preprocess`` with its loop length bound: a per-item stage function."""

    def __init__(self, iters: int = 0):
        self.iters = iters

    def __call__(self, x):
        return preprocess(x, self.iters)


class ModelFactory:
    """A zero-argument factory: called inside the model worker, it builds the :class:`Model`."""

    def __init__(self, base_iters: int = 0, item_iters: int = 0):
        self.base_iters = base_iters
        self.item_iters = item_iters

    def __call__(self) -> Model:
        return Model(self.base_iters, self.item_iters)


# ---- memory-flatness workload --------------------------------------------------------------------
def payload(n_items: int, size: int):
    """The fast producer: a generator of ``n_items`` bytes objects of ``size`` bytes, as fast as it can."""
    for i in range(n_items):
        yield i.to_bytes(8, "little") * (size // 8)


class SlowStage:
    """A slow consumer: ``iters`` of CPU per item (calibrated to ~1 ms), returns a small result."""

    def __init__(self, iters: int):
        self.iters = iters

    def __call__(self, data: bytes) -> int:
        spin(self.iters)
        return len(data)


# ---- calibration ---------------------------------------------------------------------------------
def _time_once(n: int) -> float:
    start = time.thread_time()
    spin(n)
    return time.thread_time() - start


def iterations_per_second() -> float:
    """How many ``spin`` iterations this machine runs per CPU second (best of 5 runs of ~50 ms).

    CPU time of this thread, not wall time: on a machine shared with other work, the wall time of
    a loop includes the time the thread waited for a core, which would make the loops too short."""
    n = 100_000
    n = max(1, round(n * 0.05 / min(_time_once(n) for _ in range(5))))
    return n / min(_time_once(n) for _ in range(5))


def cpu_work(pre_seconds: float, model_base_seconds: float, model_item_seconds: float, label: str) -> Work:
    """A :class:`Work` whose loop lengths are calibrated to the given seconds on this machine."""
    per_second = iterations_per_second()
    return Work(pre_iters=round(pre_seconds * per_second),
                model_base_iters=round(model_base_seconds * per_second),
                model_item_iters=round(model_item_seconds * per_second), label=label)
