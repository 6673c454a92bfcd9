"""Task functions that take their time, for tests that act on a map while it runs.

Kept apart from ``helpers`` (same role: importable, so workers find them by reference).
"""
import os
import sys
import time


def slow_pid(_, seconds=0.3):
    """Long enough that a map over a few dozen items is still running when a test acts on it."""
    time.sleep(seconds)
    return os.getpid()


def slow_identity(x, seconds=0.05):
    time.sleep(seconds)
    return x


def talk(x):
    """One line on stdout and one on stderr, through print()."""
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x


def talk_then_sleep(x, seconds=2.0):
    """Print (with the wall-clock time), then keep running: the line must not wait for the end."""
    print(f"early {x} at {time.time():.3f}")
    time.sleep(seconds)
    return x


def flood(x, lines=60_000):
    """Print a few MB as fast as a loop can: each line is one print() of one string."""
    for n in range(lines):
        print(f"flood {x} line {n:06d} " + "x" * 60)
    return x


FLOOD_BLOCKS = 3
FLOOD_BLOCK_LINES = 11_000   # ~890 kB a block: one fits a worker's 1 MB buffer, two do not


def _flood_block(x, first, count):
    return "\n".join(f"flood {x} line {n:06d} " + "x" * 60 for n in range(first, first + count))


def flood_blocks(x):
    """Blocks of flood lines printed back to back, each in one print()."""
    blocks = [_flood_block(x, b * FLOOD_BLOCK_LINES, FLOOD_BLOCK_LINES) for b in range(FLOOD_BLOCKS)]
    for block in blocks:
        print(block)
    return x


def one_huge_print(x, lines=15_000):
    """One print() of ~1.2 MB: more than a worker buffers in one interval."""
    print(_flood_block(x, 0, lines))
    return x


def newline_at_the_limit(x):
    """Fill a worker's output buffer to the byte with a print()'s text, so its newline does not fit."""
    from mpkit.engine.process._worker import OUTPUT_BUFFER_LIMIT

    print("a" * (OUTPUT_BUFFER_LIMIT - 82))   # one long line: LIMIT - 81 characters with its newline
    print("b" * 81)                            # the buffer is full after these 81; "\n" is over
    time.sleep(0.25)                           # the next flush interval (OUTPUT_INTERVAL = 0.1 s)
    print("after")
    return x


def steady_fail_on(x, bad=20, seconds=0.02):
    """Short items that keep every worker busy, and one that raises: the map fails mid-run."""
    time.sleep(seconds)
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x
