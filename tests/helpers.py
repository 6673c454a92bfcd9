"""Task functions for tests, in an importable module so workers find them by reference."""
import os
import signal
import sys
import time


def square(x):
    return x * x


def identity(x):
    return x


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def sleep_then(x):
    time.sleep(x)
    return x


def kill_self_on(x, bad=3, sig=signal.SIGKILL):
    if x == bad:
        os.kill(os.getpid(), sig)
    return x


def exit_on(x, bad=3):
    if x == bad:
        os._exit(7)
    return x


def chatty(x):
    print(f"item {x}")
    print(f"warn {x}", file=sys.stderr)
    return x


def pid_of(_):
    time.sleep(0.01)
    return os.getpid()


def cwd_of(_):
    return os.getcwd()


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def return_unpicklable(x, bad=2):
    if x == bad:
        import threading
        return threading.Lock()  # cannot be pickled, not even by cloudpickle
    return x


class ExitAtUnpickle:
    """Kills the process that unpickles it (a worker receiving it as an argument)."""

    def __reduce__(self):
        return os._exit, (9,)


class RaiseAtUnpickle:
    def __reduce__(self):
        return _raise, ("cannot rebuild this object",)


def _raise(msg):
    raise RuntimeError(msg)


def return_exit_at_unpickle(x):
    return ExitAtUnpickle() if x == 1 else x


def return_raise_at_unpickle(x, bad=1):
    return RaiseAtUnpickle() if x == bad else x


def crash_when_pickled(x, bad=1):
    """A result whose pickling kills the worker."""
    return _CrashOnPickle() if x == bad else x


class _CrashOnPickle:
    def __reduce__(self):
        os._exit(11)


def segfault_on(x, bad=2):
    if x == bad:
        import ctypes
        ctypes.string_at(0)
    return x


def flaky_file(x, path):
    """Fails the first time it sees x (records attempts in a file), then succeeds."""
    marker = f"{path}.{x}"
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"first attempt at {x}")
    return x


# ---- fault injection (tests/engine/test_faults.py) ---------------------------------------------

def exit_code_on(x, bad=3, code=7):
    """Ends the worker with os._exit(code) on the bad item, like a C library calling exit()."""
    if x == bad:
        os._exit(code)
    return x


def _record(path):
    """Atomically write this process's pid to path (a reader never sees a half-written file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)


def sleep_and_record(item, path):
    """item is (name, seconds): writes the worker's pid to ``path.name``, sleeps, returns name."""
    name, seconds = item
    _record(f"{path}.{name}")
    time.sleep(seconds)
    return name


def _attempt(path, x):
    """Count one attempt at x in ``path.x``; return how many attempts there were before it."""
    marker = f"{path}.{x}"
    try:
        with open(marker) as f:
            before = len(f.read().split())
    except FileNotFoundError:
        before = 0
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    return before


def attempts(path, x):
    """How many times an item was started, as recorded by the helpers that call _attempt."""
    try:
        with open(f"{path}.{x}") as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def crash_first_time(x, path, bad=3, code=5):
    """Kills its worker the first time it runs the bad item, then succeeds."""
    if x == bad and _attempt(path, x) == 0:
        os._exit(code)
    return x


def fail_every_time(x, path, bad=3, how="raise"):
    """Counts each attempt at the bad item, then fails it: an exception, a crash or os._exit(code)."""
    if x != bad:
        return x
    _attempt(path, x)
    if how == "raise":
        raise ValueError(f"item {x} always fails")
    if how == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(int(how))


def fail_on_each(x, bad=(3, 7)):
    if x in bad:
        raise ValueError(f"bad item {x}")
    return x


def raise_exit(x, bad=2, code="stopped by the task"):
    """Raises SystemExit inside the task (sys.exit), which must not end the worker."""
    if x == bad:
        sys.exit(code)
    return os.getpid()


def raise_keyboard_interrupt(x, bad=2):
    if x == bad:
        raise KeyboardInterrupt(f"raised by the task on item {x}")
    return x


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt: unpickling calls NeedsTwoArgs(message) with one argument."""

    def __init__(self, what, why):
        super().__init__(f"{what} failed: {why}")


class CarriesALock(Exception):
    """Cannot be pickled at all: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        import threading
        self.lock = threading.Lock()


def raise_unpicklable_exception(x, bad=2, kind="needs_two_args"):
    if x == bad:
        if kind == "needs_two_args":
            raise NeedsTwoArgs(f"item {x}", "the widget is jammed")
        raise CarriesALock(f"item {x}: the widget is jammed")
    return x


def slow_init(seconds=1.0):
    time.sleep(seconds)


class SysExitAtUnpickle:
    """Raises SystemExit in whichever process unpickles it (CPython's test_deadlock ExitAtUnpickle)."""

    def __reduce__(self):
        return sys.exit, ("exit while unpickling",)


class SysExitWhenPickled:
    """Raises SystemExit in whichever process pickles it."""

    def __reduce__(self):
        sys.exit("exit while pickling")


def return_on(x, bad, make):
    """``make()`` in place of the bad item's result: a result that misbehaves crossing back."""
    return make() if x == bad else x


def sleep_or_fail(item, path):
    """item is (name, seconds) as for sleep_and_record, or (name, "after:other"): wait until the
    item named other has started (at most 10 s), then raise."""
    name, what = item
    if str(what).startswith("after:"):
        other = f"{path}.{what[len('after:'):]}"
        deadline = time.monotonic() + 10
        while not os.path.exists(other) and time.monotonic() < deadline:
            time.sleep(0.01)
        raise ValueError(f"{name} fails")
    return sleep_and_record(item, path)


# ---- pipeline stages ---------------------------------------------------------------------------

def double(x):
    return 2 * x


def drop_odd(x):
    return None if x % 2 else x


def explode(x):
    return range(x % 3)  # 0, 1 or 2 results


class BatchSizes:
    """A batched stage: returns (item, size of the batch it came in, pid of the builder)."""

    def __init__(self):
        self.pid = os.getpid()
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        return [(x, len(batch), self.pid) for x in batch]


class CountBuilds:
    """Records each build in a file named by the environment variable MPKIT_TEST_BUILDS."""

    def __init__(self):
        with open(os.environ["MPKIT_TEST_BUILDS"], "a") as f:
            f.write(f"{os.getpid()}\n")

    def __call__(self, x):
        return x


def make_adder():
    return lambda x: x + 1000


def wrong_length(batch):
    return batch[:-1]


def slow_stage(x):
    time.sleep(0.002)
    return x


def kill_once_in_stage(x, path):
    """Kills its worker the first time it sees 5 (marker file), then passes items through."""
    marker = f"{path}.{x}"
    if x == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def tag_pid(item):
    """(key, position, pid): which worker saw the item."""
    time.sleep(0.001)
    return (item[0], item[1], os.getpid())


def first(item):
    return item[0]


class BrokenInit:
    def __init__(self):
        raise OSError("model weights not found")

    def __call__(self, x):
        return x


def batch_square(batch):
    """A batched stage: one call for the list, one result per item."""
    return [x * x for x in batch]
