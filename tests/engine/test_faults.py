"""Every fault the pool promises to survive, with real processes and real signals.

Each case checks three things: the map never hangs; the item at fault is reported with its index
while every other item comes back (``len(results) + len(results.failures) == len(items)``); and
afterwards the pool still works, with no worker left holding an item and dead workers replaced.

The crash matrix follows CPython's ``test_concurrent_futures/test_deadlock.py`` and loky's
reusable-executor tests: arguments and results that fail or kill a process while being pickled
or unpickled, on either side of the pipe.

Every wait in this file is bounded: maps run in a helper thread with a deadline (a hang fails
the test and shuts the pool down instead of blocking the session), polls use ``wait_for``.
"""
from __future__ import annotations

import functools
import os
import re
import signal
import threading
import time
import traceback

import psutil
import pytest

import mpkit
from mpkit.engine._errors import raised_in_worker
from tests.proctree import wait_until
from tests import helpers

pytestmark = pytest.mark.timeout(90)

#: Seconds a map in these tests may take before it counts as a hang. The work in each is well
#: under a second; the rest is room for starting replacement workers on a busy 2-core machine.
MAP_DEADLINE = 30.0
MODES = ["raise", "collect"]


# ---- bounded waiting ---------------------------------------------------------------------------

wait_for = wait_until


class Bounded:
    """Run ``call()`` (a map on ``pool``) in a thread, so the test can act while it runs and can
    stop waiting for it: :meth:`result` fails the test on a hang rather than blocking forever."""

    def __init__(self, pool: mpkit.Pool, call):
        self.pool = pool
        self._box: dict = {}
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True, name="map-under-test")
        self._thread.start()

    def _run(self, call) -> None:
        try:
            self._box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread by result()
            self._box["error"] = exc

    def result(self, timeout: float = MAP_DEADLINE, give_up=None):
        """The map's return value or exception. ``give_up()`` may return a reason to stop early."""
        deadline = time.monotonic() + timeout
        reason = None
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.05)
            if give_up is not None and self._thread.is_alive():
                reason = give_up()
                if reason:
                    break
        if self._thread.is_alive():
            self.pool.shutdown(wait=False)  # cancels the map, so its thread and workers end
            self._thread.join(10)
            pytest.fail(f"the map hung: {reason or f'no result within {timeout:g} s'}")
        if "error" in self._box:
            raise self._box.pop("error")
        return self._box["value"]


def map_within(pool: mpkit.Pool, fn, items, deadline: float = MAP_DEADLINE, **kwargs):
    """``pool.map(fn, items, **kwargs)``, failing the test if it takes more than ``deadline`` s."""
    return Bounded(pool, lambda: pool.map(fn, items, **kwargs)).result(deadline)


# ---- pool health -------------------------------------------------------------------------------

def busy_workers(pool: mpkit.Pool) -> list[int]:
    """Pids of workers that hold items. The manager's own record: there is no public view of it."""
    return [w.pid for w in list(pool._manager.workers.values()) if w.in_flight]


def process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def warm_pids(pool: mpkit.Pool) -> set[int]:
    """Start the pool's workers (a small map) and return their pids."""
    assert map_within(pool, helpers.square, range(8)) == [x * x for x in range(8)]
    pids = wait_for(lambda: len(pool.pids()) == pool.size and pool.pids(), timeout=10)
    assert pids, f"the pool did not start {pool.size} workers: {pool.pids()}"
    return set(pids)


def assert_recovers(pool: mpkit.Pool, gone=(), warm: set[int] | None = None) -> None:
    """After a failure: no worker still busy, the ``gone`` workers ended and were replaced, and
    the next map works on a full pool."""
    assert wait_for(lambda: not busy_workers(pool), timeout=5), \
        f"workers still hold items after the map returned: {busy_workers(pool)}"
    for pid in gone:
        assert wait_for(lambda pid=pid: not process_alive(pid), timeout=5), f"worker {pid} is still running"
    assert map_within(pool, helpers.square, range(30)) == [x * x for x in range(30)]
    pids = wait_for(lambda: len(pool.pids()) == pool.size and pool.pids(), timeout=10)
    assert pids, f"the pool did not get back to {pool.size} workers: {pool.pids()}"
    assert not set(gone) & set(pids), "a dead worker is still listed"
    if warm is not None and gone:
        assert set(pids) != warm, "pids did not change although a worker died"
    assert not busy_workers(pool)


def shown(exc: BaseException) -> str:
    """The traceback Python prints for ``exc``: its chain, the worker's frames, its notes."""
    return "".join(traceback.format_exception(exc))


def report_text(exc: BaseException) -> str:
    """Everything a user sees of an error: message, notes, and the chained remote traceback."""
    parts = [str(exc), *getattr(exc, "__notes__", [])]
    if exc.__cause__ is not None:
        parts.append(str(exc.__cause__))
    return "\n".join(parts)


def check_collected(out, items, bad: int):
    """A collect-mode result: every other item, in order, and exactly one failure at ``bad``."""
    assert isinstance(out, mpkit.ResultList)
    assert out == [x for i, x in enumerate(items) if i != bad]
    assert len(out) + len(out.failures) == len(items)
    assert [f.index for f in out.failures] == [bad], out.failures
    return out.failures[0]


# ---- workers that die mid-task -----------------------------------------------------------------

DEATHS = [
    pytest.param(helpers.kill_self_on, -signal.SIGKILL, "killed by SIGKILL", id="sigkill"),
    pytest.param(functools.partial(helpers.segfault_on, bad=3), -signal.SIGSEGV, "killed by SIGSEGV",
                 id="segfault"),
    pytest.param(helpers.exit_on, 7, "exit code 7", id="os._exit(7)"),
]


@pytest.mark.parametrize("fn, exitcode, how", DEATHS)
def test_dead_worker_raises_worker_died(pool, fn, exitcode, how):
    warm = warm_pids(pool)
    with pytest.raises(mpkit.WorkerDied) as info:
        map_within(pool, fn, range(8))
    err = info.value
    assert err.exitcode == exitcode
    assert err.pid in warm
    assert "item 3 (3)" in str(err) and how in str(err), str(err)
    assert "tried 1 time" in str(err)
    assert_recovers(pool, gone=[err.pid], warm=warm)


@pytest.mark.parametrize("fn, exitcode, how", DEATHS)
def test_dead_worker_collect_returns_every_other_item(pool, fn, exitcode, how):
    warm = warm_pids(pool)
    items = list(range(8))
    out = map_within(pool, fn, items, on_error="collect")
    failure = check_collected(out, items, bad=3)
    assert failure.item == 3
    assert isinstance(failure.exception, mpkit.WorkerDied)
    assert failure.exception.exitcode == exitcode
    assert how in str(failure.exception)
    assert failure.exception.pid in warm
    assert_recovers(pool, gone=[failure.exception.pid], warm=warm)


@pytest.mark.parametrize("on_error", MODES)
def test_worker_killed_from_outside_while_running_a_slow_item(pool, tmp_path, on_error):
    warm = warm_pids(pool)
    path = tmp_path / "pid"
    items = [("slow", 2.0)] + [(f"fast{i}", 0.01) for i in range(6)]
    job = Bounded(pool, lambda: pool.map(functools.partial(helpers.sleep_and_record, path=str(path)),
                                         items, on_error=on_error, chunksize=1))
    marker = tmp_path / "pid.slow"
    assert wait_for(marker.exists, timeout=15), "the slow item never started"
    victim = int(marker.read_text())
    assert victim in pool.pids()
    os.kill(victim, signal.SIGKILL)
    if on_error == "raise":
        with pytest.raises(mpkit.WorkerDied) as info:
            job.result()
        err = info.value
        assert "item 0 (('slow', 2.0))" in str(err), str(err)
    else:
        out = job.result()
        failure = check_collected(out, [name for name, _ in items], bad=0)
        assert failure.item == ("slow", 2.0)
        err = failure.exception
        assert isinstance(err, mpkit.WorkerDied)
    assert err.pid == victim and err.exitcode == -signal.SIGKILL
    assert "killed by SIGKILL" in str(err)
    assert_recovers(pool, gone=[victim], warm=warm)


def test_idle_worker_killed_between_maps(pool):
    warm = warm_pids(pool)
    victim = min(warm)
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: victim not in pool.pids(), timeout=5)
    out = map_within(pool, helpers.identity, range(50), on_error="collect")
    assert out == list(range(50)) and not out.failures
    assert_recovers(pool, gone=[victim], warm=warm)


@pytest.mark.parametrize("code", [7, 0, 3])
def test_task_calling_os_exit_is_blamed_once(pool, tmp_path, code):
    """A task that ends its worker with os._exit(code), any code, is a dead worker: reported, not
    run again and again (retries=0: each item runs once)."""
    path = tmp_path / "attempts"
    fn = functools.partial(helpers.fail_every_time, path=str(path), how=str(code))
    job = Bounded(pool, lambda: pool.map(fn, range(6), on_error="collect", chunksize=1))

    def runaway():
        n = helpers.attempts(path, 3)
        return n > 3 and f"item 3 was started {n} times with retries=0 (requeued after each death)"

    out = job.result(timeout=20, give_up=runaway)
    failure = check_collected(out, list(range(6)), bad=3)
    assert isinstance(failure.exception, mpkit.WorkerDied)
    assert failure.exception.exitcode == code
    assert f"exit code {code}" in str(failure.exception)
    assert helpers.attempts(path, 3) == 1
    assert_recovers(pool, gone=[failure.exception.pid])


def test_imap_collect_yields_the_failure_in_place_of_a_dead_item(pool):
    out = Bounded(pool, lambda: list(pool.imap(helpers.exit_on, range(8), on_error="collect"))).result()
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5, 6, 7]
    assert isinstance(out[3], mpkit.Failure) and out[3].index == 3
    assert isinstance(out[3].exception, mpkit.WorkerDied) and out[3].exception.exitcode == 7
    assert_recovers(pool, gone=[out[3].exception.pid])


def test_raise_stops_the_workers_busy_with_other_items(pool, tmp_path):
    """The first error ends the map at once; the worker still running a slow item is stopped,
    not left busy with work nobody waits for."""
    warm = warm_pids(pool)
    path = tmp_path / "pid"
    items = [("slow", 2.0), ("bad", "after:slow")]  # "bad" fails once "slow" runs in the other worker
    job = Bounded(pool, lambda: pool.map(functools.partial(helpers.sleep_or_fail, path=str(path)), items,
                                         chunksize=1))
    with pytest.raises(ValueError, match="bad fails"):
        job.result()
    victim = int((tmp_path / "pid.slow").read_text())
    assert victim in warm
    assert wait_for(lambda: not busy_workers(pool), timeout=5), busy_workers(pool)
    assert_recovers(pool, gone=[victim], warm=warm)


# ---- retries -----------------------------------------------------------------------------------

@pytest.mark.parametrize("on_error", MODES)
def test_exception_only_on_first_attempt_succeeds_with_a_retry(pool, tmp_path, on_error):
    fn = functools.partial(helpers.flaky_file, path=str(tmp_path / "flaky"))
    out = map_within(pool, fn, range(6), retries=1, on_error=on_error)
    assert out == list(range(6)) and not out.failures
    # the same function without a retry fails: the retry is what made it pass
    again = functools.partial(helpers.flaky_file, path=str(tmp_path / "fresh"))
    if on_error == "raise":
        with pytest.raises(RuntimeError, match="first attempt at"):
            map_within(pool, again, range(6), retries=0)
    else:
        out = map_within(pool, again, range(6), retries=0, on_error="collect")
        assert out == [] and [f.index for f in out.failures] == list(range(6))
    assert_recovers(pool)


@pytest.mark.parametrize("on_error", MODES)
def test_crash_only_on_first_attempt_succeeds_with_a_retry(pool, tmp_path, on_error):
    path = tmp_path / "crash"
    fn = functools.partial(helpers.crash_first_time, path=str(path))
    out = map_within(pool, fn, range(6), retries=1, chunksize=1, on_error=on_error)
    assert out == list(range(6)) and not out.failures
    assert helpers.attempts(path, 3) == 2
    assert_recovers(pool)


@pytest.mark.parametrize("how, exc_type", [
    ("raise", ValueError),
    ("crash", mpkit.WorkerDied),
    ("7", mpkit.WorkerDied),
])
def test_item_that_always_fails_is_reported_after_retries_plus_one_attempts(pool, tmp_path, how, exc_type):
    path = tmp_path / "always"
    fn = functools.partial(helpers.fail_every_time, path=str(path), how=how)
    out = map_within(pool, fn, range(6), retries=2, chunksize=1, on_error="collect")
    failure = check_collected(out, list(range(6)), bad=3)
    assert isinstance(failure.exception, exc_type)
    assert helpers.attempts(path, 3) == 3
    if exc_type is mpkit.WorkerDied:
        assert "tried 3 times" in str(failure.exception)
    assert_recovers(pool)


@pytest.mark.parametrize("how", ["crash", "7"])
def test_retried_crash_raises_saying_how_many_tries(pool, tmp_path, how):
    fn = functools.partial(helpers.fail_every_time, path=str(tmp_path / "always"), how=how)
    with pytest.raises(mpkit.WorkerDied, match=r"item 3 \(3\).*tried 3 times"):
        map_within(pool, fn, range(6), retries=2, chunksize=1)
    assert helpers.attempts(tmp_path / "always", 3) == 3
    assert_recovers(pool)


def test_retried_exception_raises_saying_how_many_tries(pool, tmp_path):
    fn = functools.partial(helpers.fail_every_time, path=str(tmp_path / "always"), how="raise")
    with pytest.raises(ValueError, match="item 3 always fails") as info:
        map_within(pool, fn, range(6), retries=2, chunksize=1)
    assert helpers.attempts(tmp_path / "always", 3) == 3
    assert re.search(r"tried 3 times|3 attempts|3 tries", report_text(info.value)), report_text(info.value)


# ---- timeouts ----------------------------------------------------------------------------------

TIMED_ITEMS = [("a", 0.01), ("b", 0.01), ("slow", 2.0), ("c", 0.01), ("d", 0.01)]


@pytest.mark.parametrize("on_error", MODES)
def test_item_past_timeout_is_reported_and_its_worker_replaced(pool, tmp_path, on_error):
    warm = warm_pids(pool)
    fn = functools.partial(helpers.sleep_and_record, path=str(tmp_path / "pid"))
    if on_error == "raise":
        with pytest.raises(mpkit.TaskTimeout) as info:
            map_within(pool, fn, TIMED_ITEMS, timeout=0.75)
        err = info.value
        assert "item 2 (('slow', 2.0))" in str(err), str(err)
    else:
        out = map_within(pool, fn, TIMED_ITEMS, timeout=0.75, on_error="collect")
        failure = check_collected(out, [name for name, _ in TIMED_ITEMS], bad=2)
        err = failure.exception
        assert isinstance(err, mpkit.TaskTimeout)
    assert isinstance(err, TimeoutError) and err.timeout == 0.75
    assert "timeout=0.75" in str(err) and "tried 1 time" in str(err)
    victim = int((tmp_path / "pid.slow").read_text())
    assert_recovers(pool, gone=[victim], warm=warm)


def test_timed_out_item_is_retried_and_reported_after_all_tries(pool, tmp_path):
    fn = functools.partial(helpers.sleep_and_record, path=str(tmp_path / "pid"))
    with pytest.raises(mpkit.TaskTimeout, match=r"item 2 .*tried 2 times"):
        map_within(pool, fn, TIMED_ITEMS, timeout=0.5, retries=1)
    assert_recovers(pool)


def test_timeout_counts_from_the_item_not_the_workers_init(start_method, tmp_path):
    """init takes longer than timeout=: only the item that runs past the limit is blamed, not
    the first item of each new worker (the one started to replace the killed worker too)."""
    fn = functools.partial(helpers.sleep_and_record, path=str(tmp_path / "pid"))
    items = [("a", 0.01), ("slow", 2.0), ("b", 0.01)]
    with mpkit.Pool(1, start_method=start_method, init=functools.partial(helpers.slow_init, 1.0)) as p:
        out = map_within(p, fn, items, timeout=0.6, on_error="collect")
        failure = check_collected(out, ["a", "slow", "b"], bad=1)
        assert isinstance(failure.exception, mpkit.TaskTimeout)
        assert_recovers(p)


@pytest.mark.parametrize("chunksize", [2, 50])
def test_timeout_with_chunksize_above_one_is_refused(pool, chunksize):
    for call in (pool.map, pool.imap):
        with pytest.raises(ValueError) as info:
            call(helpers.square, range(10), chunksize=chunksize, timeout=1.0)
        message = str(info.value)
        assert "timeout=" in message and f"chunksize={chunksize}" in message, message
    assert pool.pids() == []  # refused before any work started
    assert map_within(pool, helpers.square, range(10), chunksize=1, timeout=5.0) == [x * x for x in range(10)]


# ---- the crash matrix --------------------------------------------------------------------------

def _replace(n: int, bad: int, obj) -> list:
    items = list(range(n))
    items[bad] = obj
    return items


#: name -> (fn(bad), items(n, bad), accepted error types, words in the report, worker exit code)
CRASHES = {
    "arg-raises-when-pickled-in-parent": (
        lambda bad: helpers.identity, lambda n, bad: _replace(n, bad, helpers.Unpicklable()),
        (mpkit.SerializationError,), ["cannot be pickled", "refuses to be pickled"], None),
    "arg-sys-exits-when-pickled-in-parent": (
        lambda bad: helpers.identity, lambda n, bad: _replace(n, bad, helpers.SysExitWhenPickled()),
        (mpkit.SerializationError,), ["cannot be pickled", "SystemExit: exit while pickling"], None),
    "arg-kills-worker-when-unpickled": (
        lambda bad: helpers.identity, lambda n, bad: _replace(n, bad, helpers.ExitAtUnpickle()),
        (mpkit.WorkerDied,), ["exit code 9"], 9),
    "arg-raises-when-unpickled-in-worker": (
        lambda bad: helpers.identity, lambda n, bad: _replace(n, bad, helpers.RaiseAtUnpickle()),
        (mpkit.SerializationError,), ["unpickled in the worker", "cannot rebuild this object"], None),
    "arg-sys-exits-when-unpickled-in-worker": (
        lambda bad: helpers.identity, lambda n, bad: _replace(n, bad, helpers.SysExitAtUnpickle()),
        (mpkit.SerializationError,), ["unpickled in the worker", "SystemExit: exit while unpickling"], None),
    # the error type for this one is checked on its own below
    "result-raises-when-pickled-in-worker": (
        lambda bad: functools.partial(helpers.return_unpicklable, bad=bad), lambda n, bad: list(range(n)),
        (mpkit.SerializationError, mpkit.RemoteError), ["could not be pickled", "_thread.lock"], None),
    "result-sys-exits-when-pickled-in-worker": (
        lambda bad: functools.partial(helpers.return_on, bad=bad, make=helpers.SysExitWhenPickled),
        lambda n, bad: list(range(n)),
        (mpkit.SerializationError, mpkit.RemoteError), ["could not be pickled", "exit while pickling"], None),
    "result-kills-worker-when-pickled": (
        lambda bad: functools.partial(helpers.crash_when_pickled, bad=bad), lambda n, bad: list(range(n)),
        (mpkit.WorkerDied,), ["exit code 11"], 11),
    "result-raises-when-unpickled-in-parent": (
        lambda bad: functools.partial(helpers.return_raise_at_unpickle, bad=bad), lambda n, bad: list(range(n)),
        (mpkit.SerializationError,), ["unpickled in this process", "cannot rebuild this object"], None),
    "result-sys-exits-when-unpickled-in-parent": (
        lambda bad: functools.partial(helpers.return_on, bad=bad, make=helpers.SysExitAtUnpickle),
        lambda n, bad: list(range(n)),
        (mpkit.SerializationError,), ["unpickled in this process", "SystemExit: exit while unpickling"], None),
}
SIZES = {
    "8-items-auto-chunks": (8, 3, "auto"),
    "200-items-chunksize-50": (200, 137, 50),
}


@pytest.mark.parametrize("on_error", MODES)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("case", list(CRASHES))
def test_crash_matrix(pool, case, size, on_error):
    make_fn, make_items, types, words, exitcode = CRASHES[case]
    n, bad, chunksize = SIZES[size]
    fn, items = make_fn(bad), make_items(n, bad)
    expected = [i for i in range(n) if i != bad]
    if on_error == "raise":
        with pytest.raises(types) as info:
            map_within(pool, fn, items, chunksize=chunksize)
        err = info.value
    else:
        out = map_within(pool, fn, items, chunksize=chunksize, on_error="collect")
        assert out == expected
        assert len(out) + len(out.failures) == n
        (failure,) = out.failures
        assert failure.index == bad and failure.item == items[bad]
        err = failure.exception
        assert isinstance(err, types)
    text = report_text(err)
    assert re.search(rf"\bitem {bad}\b", text), text
    for word in words:
        assert word in text, text
    if exitcode is not None:
        assert err.exitcode == exitcode
    assert_recovers(pool, gone=[err.pid] if exitcode is not None else ())


def test_crash_in_a_big_chunk_of_an_unordered_map(pool):
    items = _replace(200, 61, helpers.ExitAtUnpickle())
    out = map_within(pool, helpers.identity, items, chunksize=50, ordered=False, on_error="collect")
    assert sorted(out) == [i for i in range(200) if i != 61]
    (failure,) = out.failures
    assert failure.index == 61 and failure.exception.exitcode == 9
    assert_recovers(pool, gone=[failure.exception.pid])


def test_result_that_cannot_be_pickled_is_a_serialization_error(pool):
    out = map_within(pool, helpers.return_unpicklable, range(4), on_error="collect")
    (failure,) = out.failures
    assert failure.index == 2
    assert isinstance(failure.exception, mpkit.SerializationError), repr(failure.exception)


# ---- exceptions --------------------------------------------------------------------------------

@pytest.mark.parametrize("on_error", MODES)
def test_exception_keeps_its_type_and_the_worker_traceback(pool, on_error):
    if on_error == "raise":
        with pytest.raises(ValueError, match="bad item 3") as info:
            map_within(pool, helpers.fail_on, range(8))
        err = info.value
    else:
        out = map_within(pool, helpers.fail_on, range(8), on_error="collect")
        err = check_collected(out, list(range(8)), bad=3).exception
    assert type(err) is ValueError and str(err) == "bad item 3"
    assert raised_in_worker(err)  # its traceback holds the worker's frames
    text = shown(err)
    assert re.search(r"\bworker \d+\b", text), text
    assert re.search(r"\bitem 3\b", text), text
    assert 'raise ValueError(f"bad item {x}")' in text, text
    assert "helpers.py" in text and "in fail_on" in text, text
    assert "ValueError: bad item 3" in text, text
    assert_recovers(pool)


@pytest.mark.parametrize("kind, type_name, arrives_as", [
    ("needs_two_args", "NeedsTwoArgs", helpers.NeedsTwoArgs),   # rebuilt without its __init__
    ("carries_a_lock", "CarriesALock", mpkit.RemoteError),      # cannot cross at all
])
@pytest.mark.parametrize("on_error", MODES)
def test_exception_that_cannot_be_pickled_back_arrives_as_its_type_or_remote_error(pool, on_error, kind, type_name,
                                                                                   arrives_as):
    fn = functools.partial(helpers.raise_unpicklable_exception, kind=kind)
    warm = warm_pids(pool)
    if on_error == "raise":
        with pytest.raises(arrives_as) as info:
            map_within(pool, fn, range(6))
        err = info.value
    else:
        out = map_within(pool, fn, range(6), on_error="collect")
        err = check_collected(out, list(range(6)), bad=2).exception
        assert set(pool.pids()) == warm, "an exception must not cost a worker"
    assert type(err) is arrives_as
    assert type_name in shown(err) and "the widget is jammed" in str(err), str(err)
    assert re.search(r"\bitem 2\b", shown(err)) and f"raise {type_name}(" in shown(err)
    assert_recovers(pool)


@pytest.mark.parametrize("code", ["stopped by the task", 0, 4])
@pytest.mark.parametrize("on_error", MODES)
def test_system_exit_in_a_task_is_a_failed_item_not_a_dead_worker(pool, on_error, code):
    warm = warm_pids(pool)
    fn = functools.partial(helpers.raise_exit, code=code)
    if on_error == "raise":
        with pytest.raises(SystemExit) as info:
            map_within(pool, fn, range(6))
        err = info.value
    else:
        out = map_within(pool, fn, range(6), on_error="collect")
        assert len(out) == 5 and set(out) <= warm, "items ran outside the warm workers"
        (failure,) = out.failures
        assert failure.index == 2
        err = failure.exception
        assert set(pool.pids()) == warm, "SystemExit in a task ended its worker"
    assert type(err) is SystemExit and err.code == code
    assert not isinstance(err, mpkit.WorkerDied)
    assert "sys.exit(code)" in shown(err)
    assert_recovers(pool)


def test_keyboard_interrupt_in_a_task_is_a_failed_item_in_collect_mode(pool):
    warm = warm_pids(pool)
    out = map_within(pool, helpers.raise_keyboard_interrupt, range(6), on_error="collect")
    failure = check_collected(out, list(range(6)), bad=2)
    assert type(failure.exception) is KeyboardInterrupt
    assert set(pool.pids()) == warm
    assert_recovers(pool)


def test_keyboard_interrupt_in_a_task_raises_as_the_tasks_error(pool):
    with pytest.raises(KeyboardInterrupt) as info:
        map_within(pool, helpers.raise_keyboard_interrupt, range(6))
    err = info.value
    assert not isinstance(err, mpkit.MapInterrupted), str(err)
    assert raised_in_worker(err)
    assert "raised by the task on item 2" in str(err)


# ---- on_error="skip" ---------------------------------------------------------------------------

def test_skip_warns_how_many_items_were_skipped(pool):
    with pytest.warns(mpkit.MpkitWarning, match=r"\b2 of 10 items failed and were skipped") as record:
        out = map_within(pool, helpers.fail_on_each, range(10), on_error="skip")
    assert len(record) == 1
    # it names one failed item as an example (the first to fail, which need not be the lowest index)
    assert re.search(r"first: item [37], ValueError: bad item [37]", str(record[0].message)), record[0].message
    assert out == [0, 1, 2, 4, 5, 6, 8, 9]
    assert [f.index for f in out.failures] == [3, 7]
    assert len(out) + len(out.failures) == 10
    assert_recovers(pool)


def test_skip_counts_a_dead_worker_as_a_skipped_item(pool):
    with pytest.warns(mpkit.MpkitWarning, match=r"\b1 of 8 items failed and were skipped.*WorkerDied"):
        out = map_within(pool, helpers.kill_self_on, range(8), on_error="skip")
    assert out == [0, 1, 2, 4, 5, 6, 7]
    (failure,) = out.failures
    assert failure.index == 3 and isinstance(failure.exception, mpkit.WorkerDied)
    assert_recovers(pool, gone=[failure.exception.pid])


def test_skip_without_failures_does_not_warn(pool):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", mpkit.MpkitWarning)
        assert map_within(pool, helpers.identity, range(10), on_error="skip") == list(range(10))
