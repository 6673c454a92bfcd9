"""Errors that cross from a worker: chained exceptions keep their links and frames, and mpkit's
own exceptions and results with failures survive pickling (caches, nesting, other backends)."""
from __future__ import annotations

import pickle
import re
import traceback

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpkit
from tests import error_tasks, helpers

pytestmark = pytest.mark.timeout(120)


def shown(exc: BaseException) -> str:
    """The traceback a plain Python prompt prints for ``exc``."""
    return "".join(traceback.format_exception(exc))


def raised(pool, fn, items, **kwargs) -> BaseException:
    with pytest.raises(BaseException) as info:
        pool.map(fn, items, **kwargs)
    return info.value


def failure_of(pool, fn, items) -> BaseException:
    out = pool.map(fn, items, on_error="collect")
    (failure,) = out.failures
    return failure.exception


def in_order(text: str, *parts: str) -> None:
    """Each part appears in ``text``, after the previous one."""
    at = 0
    for part in parts:
        found = text.find(part, at)
        assert found >= 0, f"{part!r} missing (or out of order) after position {at} in:\n{text}"
        at = found + len(part)


# ---- chained exceptions ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["raise", "collect"])
def test_explicit_cause_is_the_rebuilt_inner_exception_with_its_frames(pool, mode):
    err = raised(pool, error_tasks.lookup, [1, 3, 2]) if mode == "raise" \
        else failure_of(pool, error_tasks.lookup, [1, 3, 2])
    assert type(err) is error_tasks.LookupFailed and str(err) == "no entry for 3"
    inner = err.__cause__
    assert type(inner) is KeyError and inner.args == (3,), repr(inner)
    assert err.__suppress_context__
    text = shown(err)
    in_order(text,
             "error_tasks.py", "in lookup", "return TABLE[x]", "KeyError: 3",
             "The above exception was the direct cause of the following exception:",
             "error_tasks.py", "in lookup", 'raise LookupFailed(f"no entry for {x}") from err',
             "LookupFailed: no entry for 3")
    assert re.search(r"raised in mpkit worker \d+ on item 1: 3", text), text
    # the inner exception's own traceback is its worker frames, as Python would have kept them
    assert [f.name for f in traceback.extract_tb(inner.__traceback__)] == ["lookup"]


def test_implicit_context_is_rebuilt_and_shown_as_during_handling(pool):
    err = raised(pool, error_tasks.parse_then_cleanup, [7])
    assert type(err) is RuntimeError and err.__cause__ is None and not err.__suppress_context__
    inner = err.__context__
    assert type(inner) is ValueError and "item-7" in str(inner)
    text = shown(err)
    in_order(text,
             "in parse_then_cleanup", 'int(f"item-{x}")', "ValueError: invalid literal",
             "During handling of the above exception, another exception occurred:",
             "in parse_then_cleanup", "cleanup(x)", "in cleanup", "raise RuntimeError",
             "RuntimeError: cleanup after item 7 failed")


def test_from_none_keeps_the_context_hidden(pool):
    err = raised(pool, error_tasks.from_none, [5])
    assert type(err) is LookupError and err.__suppress_context__ and err.__cause__ is None
    assert type(err.__context__) is KeyError  # kept, as Python keeps it, but not shown
    text = shown(err)
    assert "KeyError" not in text and "During handling" not in text and "direct cause" not in text, text
    assert "raise LookupError" in text


def test_a_cause_that_cannot_be_pickled_arrives_as_remote_error_with_its_frames(pool):
    err = raised(pool, error_tasks.inner_cannot_be_pickled, [4])
    assert type(err) is ValueError and str(err) == "outer failure on 4"
    inner = err.__cause__
    assert type(inner) is mpkit.RemoteError
    assert "CarriesALock" in str(inner) and "inner failure on 4" in str(inner)
    in_order(shown(err), 'raise CarriesALock(f"inner failure on {x}")', "inner failure on 4",
             "The above exception was the direct cause",
             'raise ValueError(f"outer failure on {x}") from err', "ValueError: outer failure on 4")


def test_an_outer_error_that_cannot_be_rebuilt_still_has_its_rebuilt_cause(pool):
    err = raised(pool, error_tasks.outer_cannot_be_rebuilt, [9])
    assert type(err) is mpkit.RemoteError and "NeedsTwoArgs" in str(err), str(err)
    assert type(err.__cause__) is KeyError and err.__cause__.args == (9,)
    in_order(shown(err), "return TABLE[x]", "KeyError: 9", "direct cause", "raise NeedsTwoArgs(")


def test_a_chain_of_three_keeps_every_link_and_its_frames(pool):
    err = raised(pool, error_tasks.three_deep, [3])
    middle = err.__cause__
    inner = middle.__cause__
    assert (type(err), type(middle), type(inner)) == (RuntimeError, error_tasks.LookupFailed, KeyError)
    assert [f.name for f in traceback.extract_tb(middle.__traceback__)] == ["three_deep", "lookup"]
    in_order(shown(err), "KeyError: 3", "direct cause", "in three_deep", "lookup(x)", "in lookup",
             "LookupFailed: no entry for 3", "direct cause", 'raise RuntimeError(f"giving up on {x}")')


def test_a_cyclic_chain_arrives_without_looping(pool):
    err = raised(pool, error_tasks.cyclic, [1])
    assert type(err) is RuntimeError and type(err.__cause__) is ValueError
    assert "second 1" in shown(err) and "first 1" in shown(err)


def test_the_notebook_frames_come_before_the_worker_frames(pool):
    def notebook_cell():
        pool.map(error_tasks.lookup, [3])

    with pytest.raises(error_tasks.LookupFailed) as info:
        notebook_cell()
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert names.index("notebook_cell") < names.index("lookup"), names
