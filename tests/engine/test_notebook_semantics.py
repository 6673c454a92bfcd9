"""What a notebook's code means in the workers: globals, init, classes, the environment.

Every cell here runs in a real IPython shell, so what it defines lives in ``__main__`` as in a
Jupyter kernel, and can reach a worker only by value.
"""
from __future__ import annotations

import os
import sys

import pytest

import mpkit
from tests.shell import cell, ip, ipython  # noqa: F401  (fixtures)


def test_init_sets_a_global_the_function_reads(ip, start_method):
    out = cell(ip, """
        import mpkit
        SCALE = 1
        def setup():
            global SCALE
            SCALE = 100
        def work(x):
            return x * SCALE + 5
        mpkit.map(work, [1, 2, 3], init=setup, workers=2, progress=False)
    """)
    assert out == [105, 205, 305]  # as multiprocessing.Pool(initializer=setup) gives


def test_init_mutates_a_dict_the_function_reads(ip, start_method):
    out = cell(ip, """
        import mpkit
        STATE = {}
        def load():
            return {"model": "loaded"}
        def setup():
            STATE.update(load())
        def work(x):
            return f"{x}:{STATE.get('model', 'MISSING')}"
        mpkit.map(work, ["a", "b"], init=setup, workers=2, progress=False)
    """)
    assert out == ["a:loaded", "b:loaded"]


def test_init_state_survives_later_calls_and_other_functions(ip, start_method):
    cell(ip, """
        import mpkit
        model = None
        def setup():
            global model
            model = {"w": 3}
        def predict(x):
            return model["w"] * x
        def describe(x):
            return f"{x} with {model}"
    """)
    assert cell(ip, "mpkit.map(predict, [1, 2], init=setup, workers=1, progress=False)") == [3, 6]
    assert cell(ip, "mpkit.map(describe, [1], init=setup, workers=1, progress=False)") == ["1 with {'w': 3}"]
    assert cell(ip, "mpkit.map(predict, [5], init=setup, workers=1, progress=False)") == [15]


def test_a_global_changed_in_the_notebook_reaches_warm_workers(ip, start_method):
    cell(ip, """
        import mpkit
        OFFSET = 1
        def shift(x):
            return x + OFFSET
    """)
    assert cell(ip, "mpkit.map(shift, [1, 2], workers=2, progress=False)") == [2, 3]
    assert cell(ip, "OFFSET = 10\nmpkit.map(shift, [1, 2], workers=2, progress=False)") == [11, 12]


def test_functions_sent_by_value_share_one_namespace(ip, start_method):
    """A task that sets a global through one function is seen by another, as in the notebook."""
    out = cell(ip, """
        import mpkit
        seen = []
        def remember(x):
            seen.append(x)
            return len(seen)
        def count(_):
            return len(seen)
        mpkit.map(remember, [1, 2, 3], workers=1, progress=False)
        mpkit.map(count, [0], workers=1, progress=False)
    """)
    assert out == [3]


def test_dataclass_items_and_results_defined_in_a_cell(ip, start_method):
    out = cell(ip, """
        import mpkit
        from dataclasses import dataclass
        @dataclass
        class Job:
            n: int
            label: str = ""
        def double(job):
            return Job(job.n * 2, job.label + "!")
        res = mpkit.map(double, [Job(1, "a"), Job(2, "b")], workers=2, progress=False)
        (res, [type(r) is Job for r in res])
    """)
    res, same_class = out
    assert [(r.n, r.label) for r in res] == [(2, "a!"), (4, "b!")]
    assert same_class == [True, True]


def test_namedtuple_items_defined_in_a_cell(ip, start_method):
    out = cell(ip, """
        import mpkit
        from typing import NamedTuple
        class Point(NamedTuple):
            x: float
            y: float
        def norm(p):
            return (p.x ** 2 + p.y ** 2) ** 0.5
        def flip(p):
            return Point(p.y, p.x)
        (mpkit.map(norm, [Point(3, 4), Point(6, 8)], workers=2, progress=False),
         mpkit.map(flip, [Point(1, 2)], workers=1, progress=False)[0] == Point(2, 1))
    """)
    assert out == ([5.0, 10.0], True)


def test_imap_with_cell_classes(ip, start_method):
    out = cell(ip, """
        import mpkit
        class Box:
            def __init__(self, v):
                self.v = v
        def unbox(b):
            return b.v
        list(mpkit.imap(unbox, (Box(i) for i in range(5)), workers=2, progress=False))
    """)
    assert out == [0, 1, 2, 3, 4]


def test_many_functions_on_one_warm_pool(ip, start_method):
    """More distinct functions than a worker keeps: the first is still mapped correctly later."""
    out = cell(ip, """
        import mpkit
        def make(k):
            def add(x):
                return x + k
            return add
        adders = [make(k) for k in range(40)]
        firsts = [mpkit.map(f, [0], workers=1, progress=False)[0] for f in adders]
        (firsts, mpkit.map(adders[0], [1, 2], workers=1, progress=False))
    """)
    assert out == (list(range(40)), [1, 2])


# ---- the environment, as it is at each call --------------------------------------------------
def test_environment_cwd_and_path_follow_the_notebook_at_each_call(ip, start_method, tmp_path, monkeypatch):
    monkeypatch.setenv("MPKIT_TEST_VAR", "one")
    monkeypatch.chdir(tmp_path)
    cell(ip, """
        import mpkit, os, sys
        def where(_):
            return (os.environ.get("MPKIT_TEST_VAR"), os.getcwd(), sys.path[:2])
    """)
    first = cell(ip, "mpkit.map(where, [0], workers=1, progress=False)[0]")
    assert first[:2] == ("one", str(tmp_path))

    other = tmp_path / "sub"
    other.mkdir()
    os.chdir(other)
    os.environ["MPKIT_TEST_VAR"] = "two"
    sys.path.insert(0, str(tmp_path / "front"))
    try:
        second = cell(ip, "mpkit.map(where, [0], workers=1, progress=False)[0]")
        assert second == ("two", str(other), sys.path[:2])
        del os.environ["MPKIT_TEST_VAR"]
        third = cell(ip, "mpkit.map(where, [0], workers=1, progress=False)[0]")
        assert third[0] is None
    finally:
        sys.path.remove(str(tmp_path / "front"))


def test_mp_module_init_and_function_share_the_module_namespace(ip, start_method):
    ip.run_cell_magic("mp_module", "mp_sem_stages", (
        "STATE = {}\n"
        "def setup():\n"
        "    STATE['scale'] = 7\n"
        "def work(x):\n"
        "    return x * STATE.get('scale', 0)\n"))
    out = cell(ip, """
        import mpkit
        mpkit.map(mp_sem_stages.work, [1, 2], init=mp_sem_stages.setup, workers=2, progress=False)
    """)
    assert out == [7, 14]


def test_a_notebook_function_calling_a_cell_module_sees_its_init_state(ip, start_method):
    ip.run_cell_magic("mp_module", "mp_sem_models", (
        "model = None\n"
        "def load():\n"
        "    global model\n"
        "    model = 'big model'\n"))
    out = cell(ip, """
        import mpkit
        def predict(x):
            return f"{x} by {mp_sem_models.model}"
        mpkit.map(predict, ["a"], init=mp_sem_models.load, workers=1, progress=False)
    """)
    assert out == ["a by big model"]


def test_in_a_real_kernel_init_globals_and_cell_classes(start_method):
    """The user's cells, as typed in Jupyter: a global set by init, items of a cell dataclass."""
    import json

    from tests.kernels import KernelSession

    kernel = KernelSession()
    try:
        kernel.run("import json, mpkit\n"
                   "from dataclasses import dataclass\n"
                   "SCALE = 1\n"
                   "def setup():\n"
                   "    global SCALE\n"
                   "    SCALE = 100\n"
                   "@dataclass\n"
                   "class Job:\n"
                   "    n: int\n"
                   "def work(job):\n"
                   "    return Job(job.n * SCALE + 5)\n")
        out = kernel.run("res = mpkit.map(work, [Job(1), Job(2), Job(3)], init=setup, workers=2, progress=False)\n"
                         "print(json.dumps([[r.n for r in res], all(type(r) is Job for r in res)]))")
        assert json.loads(out.text().strip().splitlines()[-1]) == [[105, 205, 305], True]
    finally:
        kernel.close()


# ---- globals that change, go back, disappear ---------------------------------------------------
def test_a_global_set_back_to_an_earlier_value_reaches_warm_workers(ip, start_method):
    cell(ip, """
        import mpkit
        THRESH = 0.5
        def f(x):
            return (x, THRESH)
    """)
    assert cell(ip, "mpkit.map(f, [1], workers=1, progress=False)") == [(1, 0.5)]
    assert cell(ip, "THRESH = 0.7\nmpkit.map(f, [1], workers=1, progress=False)") == [(1, 0.7)]
    assert cell(ip, "THRESH = 0.5\nmpkit.map(f, [1, 2], workers=1, progress=False)") == [(1, 0.5), (2, 0.5)]


def test_an_array_changed_in_place_and_back(ip, start_method):
    cell(ip, """
        import mpkit, numpy as np
        arr = np.zeros(1000)
        def total(_):
            return float(arr.sum())
    """)
    assert cell(ip, "mpkit.map(total, [0], workers=1, progress=False)") == [0.0]
    assert cell(ip, "arr[:] = 1\nmpkit.map(total, [0], workers=1, progress=False)") == [1000.0]
    assert cell(ip, "arr[:] = 0\nmpkit.map(total, [0], workers=1, progress=False)") == [0.0]


def test_a_global_deleted_in_the_notebook_is_gone_in_the_workers(ip, start_method):
    cell(ip, """
        import mpkit
        GONE = 5
        len = lambda x: 42
        def uses(_):
            try:
                gone = GONE
            except NameError:
                gone = "deleted"
            return gone, len("ab")
    """)
    assert cell(ip, "mpkit.map(uses, [0], workers=1, progress=False)") == [(5, 42)]
    assert cell(ip, "del GONE, len\nmpkit.map(uses, [0], workers=1, progress=False)") == [("deleted", 2)]


def test_init_that_sets_a_global_through_globals_keeps_it(ip, start_method):
    out = cell(ip, """
        import mpkit
        model = None
        def init_model():
            globals()["model"] = "loaded"
        def use_model(_):
            return model
        mpkit.map(use_model, [0, 1], init=init_model, workers=2, progress=False)
    """)
    assert out == ["loaded", "loaded"]


def test_a_container_assigned_again_in_the_notebook_is_taken(ip, start_method):
    cell(ip, """
        import mpkit
        CACHE = {}
        def memo(key):
            CACHE.setdefault(key, len(CACHE) + 1)
            return CACHE[key]
    """)
    assert cell(ip, "mpkit.map(memo, ['a', 'b'], workers=1, progress=False)") == [1, 2]
    assert cell(ip, "CACHE = {}\nmpkit.map(memo, ['b'], workers=1, progress=False)") == [1]


def test_minus_zero_after_zero(ip, start_method):
    cell(ip, """
        import math, mpkit
        SIGN = 0.0
        def sign(_):
            return math.copysign(1, SIGN)
    """)
    assert cell(ip, "mpkit.map(sign, [0], workers=1, progress=False)") == [1.0]
    assert cell(ip, "SIGN = -0.0\nmpkit.map(sign, [0], workers=1, progress=False)") == [-1.0]


def test_old_objects_of_a_rerun_module_cell_keep_their_own_globals(ip, start_method):
    ip.run_cell_magic("mp_module", "mp_sem_versions", (
        "def helper():\n    return 'v1'\n"
        "class Item:\n    def score(self):\n        return helper()\n"
        "def run(item):\n    return (helper(), item.score())\n"))
    cell(ip, "old_items = [mp_sem_versions.Item()]")
    ip.run_cell_magic("mp_module", "mp_sem_versions", (
        "def helper():\n    return 'v2'\n"
        "class Item:\n    def score(self):\n        return helper()\n"
        "def run(item):\n    return (helper(), item.score())\n"))
    out = cell(ip, "import mpkit\nmpkit.map(mp_sem_versions.run, old_items, workers=1, progress=False)")
    assert out == [("v2", "v1")]  # as in the notebook: the new run, the old item's own method


def test_init_timeout_is_not_kept_for_the_next_call(start_method):
    from tests.helpers import square
    from tests.side_effects import init_sleeps_a_second

    with pytest.raises(mpkit.WorkerInitError):
        mpkit.map(square, [1], init=init_sleeps_a_second, init_timeout=0.3, workers=1, progress=False)
    assert mpkit.map(square, [2], init=init_sleeps_a_second, workers=1, progress=False) == [4]


def test_an_unpicklable_global_is_named(ip):
    with pytest.raises(TypeError, match="uses the global 'LOCK'"):
        cell(ip, """
            import mpkit, threading
            LOCK = threading.Lock()
            def locked(x):
                with LOCK:
                    return x
            mpkit.map(locked, [1], workers=1, progress=False)
        """)


def test_a_function_whose_global_kills_the_worker_when_loaded_fails_once(ip, start_method):
    with pytest.raises(mpkit.WorkerInitError, match="died while loading the function"):
        cell(ip, """
            import mpkit
            from tests.helpers import ExitAtUnpickle
            BOMB = ExitAtUnpickle()
            def uses_bomb(x):
                return (x, BOMB)
            mpkit.map(uses_bomb, range(300), workers=2, on_error="collect", progress=False)
        """)
