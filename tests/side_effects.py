"""Task functions with side effects, importable so workers find them by reference: each call
appends its item to a log file, so a test can count how often every item really ran."""
import os
import signal
import time


def record(log: str, x) -> None:
    with open(log, "a") as f:  # one short write per line: appends from several workers do not mix
        f.write(f"{x}\n")


def runs(log: str) -> dict:
    """item -> how many times it ran."""
    counts: dict = {}
    if os.path.exists(log):
        with open(log) as f:
            for line in f:
                counts[int(line)] = counts.get(int(line), 0) + 1
    return counts


def record_then_crash(x, log, bad=(), seconds=0.0):
    record(log, x)
    if seconds:
        time.sleep(seconds)
    if x in bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def record_batch_then_crash(batch, log, bad=()):
    for x in batch:
        record(log, x)
    if any(x in bad for x in batch):
        os.kill(os.getpid(), signal.SIGKILL)
    return [x * 10 for x in batch]


def init_fails_while(flag: str) -> None:
    if os.path.exists(flag):
        raise RuntimeError(f"init cannot start while {flag} exists")


def init_hangs() -> None:
    time.sleep(600)


def noop_init() -> None:
    pass


def init_fails_with_a_cause() -> None:
    try:
        open("/nonexistent/mpkit-config.toml")
    except OSError as exc:
        raise RuntimeError("could not read the model's config") from exc


def init_sleeps_a_second() -> None:
    time.sleep(1.0)


def record_print_or_hang(x, log, hang=(), seconds=600.0):
    """Notes that x ran, prints it, then hangs (a stuck call: a lock, a network read) if x is in
    hang, after noting its process in ``log.hung`` (``hung_in``)."""
    record(log, x)
    print(f"item {x}")
    if x in hang:
        record(f"{log}.hung", os.getpid())
        time.sleep(seconds)
    return x * 10


def hung_in(log: str) -> set:
    """The processes where record_print_or_hang hung."""
    return set(runs(f"{log}.hung"))
