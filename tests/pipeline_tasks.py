"""Stage functions for the pipeline semantics tests, importable so workers find them by reference."""
import os
import signal
import threading
import time


def hang_on(batch, bad=3):
    """A batched stage that hangs (like a stuck model call) on the batch holding ``bad``."""
    if bad in batch:
        time.sleep(3600)
    return [x * 10 for x in batch]


def count_up(x):
    """A generator function for a many=True stage: x results."""
    for i in range(x):
        yield (x, i)


def not_iterable_on(x, bad=3):
    """A many=True stage that returns a number (not an iterable of results) for ``bad``."""
    return 42 if x == bad else [x, x]


def fan_out(x, n=20_000):
    """A many=True stage fanning one item out to ``n`` results."""
    return [x * n + i for i in range(n)]


class BrokenModel:
    def __init__(self):
        raise OSError("model weights not found in ./weights")

    def __call__(self, batch):
        return batch


def fail_odd(x):
    if x % 2:
        raise ValueError(f"odd item {x}")
    return x


def log_key_order(item, path, kill_at=None):
    """(key, position): appends the position to the key's log file before returning it; kills its
    worker once (marker file) when it sees ``kill_at``."""
    key, position = item
    if item == kill_at:
        marker = f"{path}.killed"
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    with open(f"{path}.{key}", "a") as f:
        f.write(f"{position}\n")
    time.sleep(0.002)
    return item


def batch_sizes(batch):
    """A batched stage: (item, size of its batch)."""
    return [(x, len(batch)) for x in batch]


def touch(x, path):
    """Records that ``x`` went through (a file per item), then passes it on."""
    open(f"{path}.{x}", "w").close()
    return x


def batch_touch(batch, path):
    for x in batch:
        open(f"{path}.{x}", "w").close()
    return [(x, len(batch)) for x in batch]


def slow(x, seconds=0.02):
    time.sleep(seconds)
    return x


# ---- the random pipelines of the accounting property test ---------------------------------------
# A stage's behaviour is a plain dict, so the test computes what must come out without processes.

def behave(x, rule):
    """Apply one stage rule to an int: fail, drop, kill the worker once (marker file), fan out
    (x % 3 results), or add."""
    if x in rule["fail"]:
        raise ValueError(f"stage {rule['name']} fails on {x}")
    if x in rule["drop"]:
        return None
    if x in rule["kill"]:
        marker = os.path.join(rule["dir"], f"{rule['name']}.{x}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    if rule["many"]:
        return (x + rule["add"] for _ in range(x % 3))
    return x + rule["add"]


def behave_batch(batch, rule):
    return [behave(x, rule) for x in batch]


def parity(x):
    return x % 2


# ---- for the tests themselves ---------------------------------------------------------------------
def finishes(fn, timeout=60):
    """Run fn in a thread; its result, or fail if it did not return within ``timeout`` s."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not return within {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def key_or_fail(x):
    """A key= function that cannot handle one item."""
    if x == 3:
        raise KeyError(f"no key for {x}")
    return x % 2


def crash_on_batch_with(batch, bad=3):
    """A batched stage whose call kills its worker (a segfault in a model) on the batch holding ``bad``."""
    if bad in batch:
        os.kill(os.getpid(), signal.SIGKILL)
    return [(x, len(batch)) for x in batch]


def batch_with_a_number_for(batch, bad=3):
    """A batched many=True stage: a list of results per item, but a number for ``bad``."""
    return [7 if x == bad else [x] * 2 for x in batch]


def drop(x):
    """A last stage that keeps nothing: what the notebook holds is only what is on its way."""
    return None


def megabytes(n, counter=None):
    """A source of ``n`` distinct 1 MB items, made one by one; ``counter`` counts the reads."""
    for i in range(n):
        if counter is not None:
            counter.append(i)
        yield bytes([i % 256]) * (1 << 20)


def lock_for(x, bad=3):
    """A stage whose result for ``bad`` cannot be pickled (a lock)."""
    return threading.Lock() if x == bad else x


def batch_touch_free(batch):
    """A batched stage whose results do not depend on how the items were batched."""
    return [(x, x * x) for x in batch]


def batch_lock_for(batch, bad=3):
    """A batched stage whose result for ``bad`` cannot be pickled (a lock)."""
    return [lock_for(x, bad) for x in batch]


class Snapshots:
    """A front-end of the test's own: it keeps every snapshot it is given, the last one too."""

    def __init__(self):
        self.seen: list = []

    def update(self, stats):
        self.seen.append(stats)

    def close(self, stats):
        self.seen.append(stats)


def batch_identity(batch):
    """A batched stage that gives each item back as it came."""
    return list(batch)


def kind_key(x):
    """A key= function for items of any type: items of one type go to one worker."""
    return type(x).__name__


def pid_for_large(x, seconds=0.2):
    """(the worker's pid, or None for a small item): a stage whose large items take a while."""
    if isinstance(x, bytes) and len(x) >= 1 << 20:
        time.sleep(seconds)
        return os.getpid()
    return None


def large_below(x, n=10, nbytes=2 << 20):
    """Items under ``n`` become ``nbytes`` of bytes (an image loaded from its path), others stay."""
    return bytes([x % 256]) * nbytes if x < n else x


def spin(x, seconds=0.2):
    """Busy CPU for ``seconds`` (a worker whose CPU a snapshot should see)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return x
