"""Task functions that fail the ways user code fails: chained exceptions, unpicklable ones."""
from __future__ import annotations

from tests.helpers import CarriesALock, NeedsTwoArgs

TABLE = {1: "one", 2: "two"}


def lookup(x):
    """``raise ... from err``: the KeyError is the explicit cause of the LookupFailed."""
    try:
        return TABLE[x]
    except KeyError as err:
        raise LookupFailed(f"no entry for {x}") from err


class LookupFailed(Exception):
    pass


def parse_then_cleanup(x):
    """An error raised while handling another: the ValueError is the implicit context."""
    try:
        int(f"item-{x}")
    except ValueError:
        cleanup(x)


def cleanup(x):
    raise RuntimeError(f"cleanup after item {x} failed")


def from_none(x):
    """``raise ... from None``: the context is there but suppressed, as Python shows it."""
    try:
        return TABLE[x]
    except KeyError:
        raise LookupError(f"no entry for {x}") from None


def inner_cannot_be_pickled(x):
    """The cause cannot cross back (it holds a lock); the outer error can."""
    try:
        raise CarriesALock(f"inner failure on {x}")
    except CarriesALock as err:
        raise ValueError(f"outer failure on {x}") from err


def outer_cannot_be_rebuilt(x):
    """The outer error pickles but cannot be rebuilt; its cause is an ordinary KeyError."""
    try:
        return TABLE[x]
    except KeyError as err:
        raise NeedsTwoArgs(f"item {x}", "no entry") from err


def three_deep(x):
    """A chain of three, through two functions: each link keeps its own frames."""
    try:
        lookup(x)
    except LookupFailed as err:
        raise RuntimeError(f"giving up on {x}") from err


def cyclic(x):
    """A cause chain that loops back (a library that re-raises what it was handed)."""
    first = ValueError(f"first {x}")
    second = RuntimeError(f"second {x}")
    first.__cause__ = second
    second.__cause__ = first
    raise second


async def fetch(x):
    """A coroutine function: mapping it would only make coroutine objects."""
    return x


async def stream(x):
    yield x


def numbers(x):
    """A generator function: its results would be generator objects."""
    yield from range(x)


class AsyncModel:
    async def __call__(self, x):
        return x


def batch_numbers(batch):
    """A batched stage may yield its results, one per item, in order."""
    for x in batch:
        yield 10 * x


def _raise(exc):
    raise exc


def gather(x):
    """Several failures at once, as asyncio.TaskGroup or concurrent code reports them."""
    errors = []
    for job in (ValueError(f"job a of {x}"), KeyError(f"job b of {x}")):
        try:
            _raise(job)
        except Exception as err:
            errors.append(err)
    raise ExceptionGroup(f"2 jobs of {x} failed", errors)


def gather_unpicklable(x):
    """A group whose members include one that cannot cross back."""
    errors = []
    for job in (ValueError(f"job a of {x}"), CarriesALock(f"job b of {x}")):
        try:
            _raise(job)
        except Exception as err:
            errors.append(err)
    raise ExceptionGroup(f"2 jobs of {x} failed", errors)


def mark_done(x, path, seconds=0.05):
    """Takes a moment, then appends x to the file ``path``: a test waits for it before it acts."""
    import time

    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x
