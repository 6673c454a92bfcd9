"""The default pool of mpkit.map: never shut down under a running map, never bricked by a failed start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from functools import partial

import pytest

import mpkit
from tests.helpers import square
from tests.proctree import child_env
from tests.side_effects import init_fails_while, init_hangs, noop_init
from tests.timed_tasks import slow_identity


def test_an_open_imap_survives_a_map_with_another_init(start_method):
    it = mpkit.imap(slow_identity, range(20), workers=1, progress=False)
    assert next(it) == 0
    assert mpkit.map(square, [1, 2], init=noop_init, workers=1, progress=False) == [1, 4]
    assert list(it) == list(range(1, 20))


def test_a_map_in_another_thread_survives_a_map_with_another_start_method(start_method):
    other = "spawn" if start_method == "forkserver" else "forkserver"
    out: dict = {}

    def long_map():
        try:
            out["value"] = mpkit.map(partial(slow_identity, seconds=0.1), range(20), workers=1, chunksize=1,
                                     progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            out["error"] = exc

    thread = threading.Thread(target=long_map)
    thread.start()
    try:
        assert mpkit.map(square, [3], start_method=other, workers=1, progress=False) == [9]
    finally:
        thread.join(timeout=60)
    assert "error" not in out, out.get("error")
    assert out["value"] == list(range(20))


def test_a_failed_init_does_not_brick_the_next_call(start_method, tmp_path):
    flag = tmp_path / "not-yet"
    flag.write_text("")
    init = partial(init_fails_while, str(flag))
    with pytest.raises(mpkit.WorkerInitError, match="cannot start"):
        mpkit.map(square, [1, 2], init=init, workers=2, progress=False)
    flag.unlink()                       # the cause is gone: the same call just works
    assert mpkit.map(square, [1, 2], init=init, workers=2, progress=False) == [1, 4]


def test_a_failed_init_does_not_brick_an_explicit_pool(start_method, tmp_path):
    flag = tmp_path / "not-yet"
    flag.write_text("")
    with mpkit.Pool(2, start_method=start_method, init=partial(init_fails_while, str(flag))) as pool:
        with pytest.raises(mpkit.WorkerInitError):
            pool.map(square, [1, 2], progress=False)
        flag.unlink()
        assert pool.map(square, [1, 2], progress=False) == [1, 4]


def test_an_init_that_never_returns_is_reported_after_init_timeout(start_method):
    with pytest.raises(mpkit.WorkerInitError, match="init_timeout=1 s"):
        mpkit.map(square, [1], init=init_hangs, init_timeout=1, workers=1, progress=False)
    assert mpkit.map(square, [2], workers=1, progress=False) == [4]


def test_init_timeout_is_checked(start_method):
    with pytest.raises(ValueError, match="init_timeout"):
        mpkit.map(square, [1], init=noop_init, init_timeout=0, progress=False)


SCRIPT = textwrap.dedent("""
    import sys, time
    import mpkit
    from tests.timed_tasks import slow_identity
    from tests.helpers import square
    print("ready", flush=True)
    try:
        mpkit.map(slow_identity, range(40), workers=4, chunksize=1, progress=False)
        print("not interrupted", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print(mpkit.map(square, range(6), workers=4, progress=False), flush=True)
""")


@pytest.mark.parametrize("delay", [0.02, 0.08])
def test_an_interrupt_while_workers_start_does_not_brick_the_pool(start_method, delay):
    """Jupyter interrupts a kernel with SIGINT to its whole process group: workers that are still
    starting get it too."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env(MPKIT_START_METHOD=start_method), start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        threading.Event().wait(delay)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert "[0, 1, 4, 9, 16, 25]" in out, (out, err[-3000:])


def test_a_failing_init_keeps_its_chain_and_frames(start_method):
    import traceback

    from tests.side_effects import init_fails_with_a_cause

    with pytest.raises(mpkit.WorkerInitError) as info:
        mpkit.map(square, [1], init=init_fails_with_a_cause, workers=1, progress=False)
    cause = info.value.__cause__
    assert type(cause) is RuntimeError and type(cause.__cause__) is FileNotFoundError
    shown = "".join(traceback.format_exception(info.value))
    assert "init_fails_with_a_cause" in shown and "FileNotFoundError" in shown, shown
