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


def return_unpicklable(x):
    if x == 2:
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


def return_raise_at_unpickle(x):
    return RaiseAtUnpickle() if x == 1 else x


def crash_when_pickled(x):
    """A result whose pickling kills the worker."""
    return _CrashOnPickle() if x == 1 else x


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
