"""Task functions for the Dask backend's tests (importable by the workers: the repo is on their path)."""
import os
import time


def record_init(path: str) -> None:
    """An init= that notes each process it runs in (one line per run)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def inits(path: str) -> list[int]:
    try:
        with open(path) as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []


def slow_pid(x, seconds=0.05):
    time.sleep(seconds)
    return os.getpid()


def span(x, seconds=0.05):
    """When this item ran: (start, end) on the machine's clock."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def hang_on(x, bad=2, seconds=600.0):
    if x == bad:
        time.sleep(seconds)
    return x


def with_pid(x, seconds=0.0):
    """(item, pid of the worker that ran it): which Dask worker a pipeline stage ran on."""
    if seconds:
        time.sleep(seconds)
    return (x, os.getpid())


def first_of(pair):
    return pair[0]


def sleep_with_a_late_start(x, block=5.0, seconds=60.0):
    """Holds its Dask worker's event loop for ``block`` s as it starts, which delays the "start"
    event mpkit's task sent a moment before (what a loaded machine does), then sleeps ``seconds``."""
    from distributed import get_worker

    get_worker().loop.add_callback(time.sleep, block)
    time.sleep(seconds)
    return x
