"""Bad arguments get one paragraph at the call (what was given, what is accepted, the fix), before
any process starts: map, imap, Pool and Pipeline alike."""
from __future__ import annotations

import functools
import re

import pytest

import mpkit
from mpkit import Pipeline
from mpkit.engine import _default
from tests import error_tasks, helpers
from tests.conftest import live_children

pytestmark = pytest.mark.timeout(120)

#: (keyword arguments, exception type, what the message must say besides the given value)
BAD_MAP = [
    pytest.param({"timeout": "5"}, TypeError, r"timeout='5' \(a str\) is not a number.*Fix: timeout=5 ", id="timeout-str"),
    pytest.param({"timeout": 0}, ValueError, r"timeout=0 is not greater than 0.*Fix: timeout=None", id="timeout-0"),
    pytest.param({"timeout": -2.5}, ValueError, r"timeout=-2.5", id="timeout-negative"),
    pytest.param({"timeout": float("nan")}, TypeError, r"timeout=nan", id="timeout-nan"),
    pytest.param({"workers": True}, TypeError, r"workers=True \(a bool\) is not a number of processes", id="workers-bool"),
    pytest.param({"workers": 0}, ValueError, r"workers=0 leaves no process", id="workers-0"),
    pytest.param({"workers": 2.0}, TypeError, r"workers=2.0 \(a float\) is not a whole number.*Fix: workers=int",
                 id="workers-float"),
    pytest.param({"retries": -1}, ValueError, r"retries=-1 is below 0.*Fix: retries=1", id="retries-negative"),
    pytest.param({"retries": 1.5}, TypeError, r"retries=1.5 \(a float\) is not a whole number", id="retries-float"),
    pytest.param({"retries": True}, TypeError, r"retries=True \(a bool\)", id="retries-bool"),
    pytest.param({"ordered": "no"}, TypeError, r"ordered='no' \(a str\) is not True or False \(Python would count it as "
                 r"true\).*Fix: ordered=True or ordered=False", id="ordered-str"),
    pytest.param({"chunksize": 0}, ValueError, r"chunksize=0 would send no items.*Fix: chunksize='auto'", id="chunksize-0"),
    pytest.param({"chunksize": "big"}, TypeError, r"chunksize='big' \(a str\) is neither 'auto' nor a whole number",
                 id="chunksize-str"),
    pytest.param({"chunksize": True}, TypeError, r"chunksize=True \(a bool\)", id="chunksize-bool"),
    pytest.param({"on_error": "ignore"}, ValueError, r"on_error must be one of 'raise', 'skip', 'collect', not "
                 r"'ignore'.*Fix: on_error='skip'", id="on-error"),
    pytest.param({"on_error": "colect"}, ValueError, r"Fix: on_error='collect'", id="on-error-typo"),
    pytest.param({"progress": "yes"}, TypeError, r"progress='yes' \(a str\).*Fix: progress=True", id="progress-str"),
    pytest.param({"timeout": 2, "chunksize": 10}, ValueError, r"timeout=2 bounds each item.*chunksize=10",
                 id="timeout-with-chunksize"),
]
BAD_API_ONLY = [
    pytest.param({"init": "setup"}, TypeError, r"init='setup' \(a str\) is not callable", id="init-str"),
    pytest.param({"init": error_tasks.fetch}, TypeError, r"init fetch is an async function", id="init-async"),
    pytest.param({"start_method": "fork-server"}, ValueError, r"start_method='fork-server'.*'forkserver'",
                 id="start-method"),
]
BAD_FUNCTIONS = [
    pytest.param(error_tasks.fetch, r"fetch is an async function \(async def\).*mpkit does not run coroutines.*"
                 r"asyncio\.run\(fetch\(item\)\)", id="async-def"),
    pytest.param(error_tasks.stream, r"stream is an async function", id="async-generator"),
    pytest.param(functools.partial(error_tasks.fetch), r"fetch is an async function", id="async-partial"),
    pytest.param(error_tasks.AsyncModel(), r"AsyncModel.*is an async function", id="async-call"),
    pytest.param(error_tasks.numbers, r"numbers is a generator function \(it yields\).*cannot be pickled.*"
                 r"Fix: return a list", id="generator"),
    pytest.param(42, r"fn must be callable.*not int 42", id="not-callable"),
]


def check_message(exc: BaseException, kind: type, pattern: str) -> None:
    text = str(exc)
    assert type(exc) is kind, f"{type(exc).__name__}: {text}"
    assert re.search(pattern, text), text
    assert "\n" not in text, f"not one paragraph: {text!r}"
    assert "Fix" in text, text


def nothing_started() -> None:
    assert _default._pool is None, "the default pool was started for a call that was refused"
    assert not live_children(), "a process was started for a call that was refused"


@pytest.mark.parametrize("kwargs, kind, pattern", BAD_MAP + BAD_API_ONLY)
@pytest.mark.parametrize("call", ["map", "imap"])
def test_mpkit_map_refuses_bad_arguments_at_the_call(call, kwargs, kind, pattern):
    with pytest.raises((TypeError, ValueError)) as info:
        getattr(mpkit, call)(helpers.square, range(3), **kwargs)  # imap: at the call, not at next()
    check_message(info.value, kind, pattern)
    nothing_started()


@pytest.mark.parametrize("kwargs, kind, pattern", BAD_MAP)
@pytest.mark.parametrize("call", ["map", "imap"])
def test_pool_map_refuses_bad_arguments_at_the_call(call, kwargs, kind, pattern):
    with mpkit.Pool(1, start_method="spawn") as pool:
        with pytest.raises((TypeError, ValueError)) as info:
            getattr(pool, call)(helpers.square, range(3), **kwargs)
        check_message(info.value, kind, pattern)
        assert pool.pids() == [], "a worker was started for a call that was refused"


@pytest.mark.parametrize("fn, pattern", BAD_FUNCTIONS)
@pytest.mark.parametrize("call", ["map", "imap"])
def test_functions_a_worker_cannot_run_are_refused_at_the_call(call, fn, pattern):
    with pytest.raises(TypeError) as info:
        getattr(mpkit, call)(fn, range(3))
    check_message(info.value, TypeError, pattern)
    nothing_started()


@pytest.mark.parametrize("kwargs, kind, pattern", [
    pytest.param({"workers": True}, TypeError, r"workers=True \(a bool\)", id="workers-bool"),
    pytest.param({"workers": 0}, ValueError, r"workers=0 leaves no process", id="workers-0"),
    pytest.param({"idle_timeout": 0}, ValueError, r"idle_timeout=0 is not greater than 0", id="idle-timeout-0"),
    pytest.param({"idle_timeout": "10"}, TypeError, r"idle_timeout='10' \(a str\)", id="idle-timeout-str"),
    pytest.param({"idle_timeout": float("inf")}, ValueError, r"idle_timeout=inf is more than this platform can wait",
                 id="idle-timeout-inf"),
    pytest.param({"init": "setup"}, TypeError, r"init='setup'", id="init-str"),
    pytest.param({"start_method": "threads"}, ValueError, r"start_method='threads'", id="start-method"),
])
def test_pool_refuses_bad_arguments(kwargs, kind, pattern):
    with pytest.raises((TypeError, ValueError)) as info:
        mpkit.Pool(**kwargs)
    check_message(info.value, kind, pattern)
    assert not live_children()


def test_resize_refuses_a_bool():
    with mpkit.Pool(1, start_method="spawn") as pool, pytest.raises(TypeError, match=r"workers=True \(a bool\)"):
        pool.resize(True)


# ---- pipelines ---------------------------------------------------------------------------------

@pytest.mark.parametrize("build, kind, pattern", [
    pytest.param(lambda: Pipeline().stage(helpers.double, workers=True), TypeError, r"workers=True \(a bool\)",
                 id="stage-workers-bool"),
    pytest.param(lambda: Pipeline().stage(helpers.double, timeout="5"), TypeError, r"timeout='5' \(a str\)",
                 id="stage-timeout-str"),
    pytest.param(lambda: Pipeline().stage(helpers.double, timeout=0), ValueError, r"timeout=0 is not greater",
                 id="stage-timeout-0"),
    pytest.param(lambda: Pipeline().stage(helpers.double, retries=-1), ValueError, r"retries=-1 is below 0",
                 id="stage-retries"),
    pytest.param(lambda: Pipeline().stage(helpers.double, maxsize=True), TypeError, r"maxsize=True \(a bool\)",
                 id="stage-maxsize-bool"),
    pytest.param(lambda: Pipeline().stage(helpers.double, many="yes"), TypeError, r"many='yes' \(a str\)",
                 id="stage-many-str"),
    pytest.param(lambda: Pipeline().stage(helpers.double, name=3), TypeError, r"name=3 \(a int\)", id="stage-name"),
    pytest.param(lambda: Pipeline().stage(error_tasks.fetch), TypeError, r"fetch is an async function",
                 id="stage-async"),
    pytest.param(lambda: Pipeline().stage(error_tasks.AsyncModel), TypeError, r"AsyncModel has an async __call__",
                 id="stage-async-class"),
    pytest.param(lambda: Pipeline().stage(error_tasks.numbers), TypeError,
                 r"numbers is a generator function.*many=True", id="stage-generator-without-many"),
    pytest.param(lambda: Pipeline().batch(True), TypeError, r"max_size=True \(a bool\)", id="batch-size-bool"),
    pytest.param(lambda: Pipeline().batch(8, max_wait="1"), TypeError, r"max_wait='1' \(a str\).*Fix: max_wait=1 ",
                 id="batch-wait-str"),
    pytest.param(lambda: Pipeline().batch(8, max_wait=-1), ValueError, r"max_wait=-1 is not >= 0", id="batch-wait"),
    pytest.param(lambda: Pipeline().stage(helpers.double).run([1], ordered="no"), TypeError,
                 r"ordered='no' \(a str\)", id="run-ordered"),
    pytest.param(lambda: Pipeline().stage(helpers.double).run([1], on_error="ignore"), ValueError,
                 r"on_error must be one of", id="run-on-error"),
    pytest.param(lambda: Pipeline().stage(helpers.double).run([1], progress="yes"), TypeError,
                 r"progress='yes'", id="run-progress"),
    pytest.param(lambda: Pipeline().stage(helpers.double).start(on_error="ignore"), ValueError,
                 r"on_error must be one of", id="start-on-error"),
    pytest.param(lambda: Pipeline().stage(helpers.double).start(start_method="threads"), ValueError,
                 r"start_method='threads'", id="start-start-method"),
])
def test_pipeline_refuses_bad_arguments(build, kind, pattern):
    with pytest.raises((TypeError, ValueError)) as info:
        build()
    check_message(info.value, kind, pattern)
    assert not live_children()


def test_scale_refuses_a_bool():
    pipe = Pipeline().stage(helpers.double)
    with pytest.raises(TypeError, match=r"workers=True \(a bool\)"):
        pipe.scale("double", True)


def test_a_generator_stage_is_fine_after_batch(start_method):
    """Its yields are the batch's results, in order (and with many=True they are the items)."""
    Pipeline().stage(error_tasks.numbers, many=True)  # accepted
    out = Pipeline().batch(4, max_wait=0.05).stage(error_tasks.batch_numbers).run(range(6), ordered=True,
                                                                                 progress=False)
    assert out == [0, 10, 20, 30, 40, 50]


def test_good_arguments_still_work(pool):
    import numpy as np

    assert pool.map(helpers.square, range(4), timeout=np.float64(5.0), retries=0, ordered=False,
                    chunksize=1, workers=1, progress=False) is not None
    assert list(pool.imap(helpers.square, range(4), timeout=float("inf"))) == [0, 1, 4, 9]


# ---- what only the worker can see ----------------------------------------------------------------

def test_a_function_that_returns_a_coroutine_is_told_to_run_it(pool):
    """A lambda (or a plain def) calling an async function without awaiting it: only the worker
    sees the coroutine; the failure says what it is and how to run it."""
    out = pool.map(lambda x: error_tasks.fetch(x), [1, 2], on_error="collect")
    assert len(out.failures) == 2
    text = str(out.failures[0].exception)
    assert isinstance(out.failures[0].exception, mpkit.SerializationError)
    assert "returned a coroutine" in text and "asyncio.run(" in text, text


def test_a_function_that_returns_a_generator_is_told_to_return_a_list(pool):
    out = pool.map(lambda x: (i for i in range(x)), [3], on_error="collect")
    text = str(out.failures[0].exception)
    assert "returned a generator" in text and "list(" in text, text
