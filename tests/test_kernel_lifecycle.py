"""mpkit in a real Jupyter kernel around a running map: interrupt, restart, shutdown, kill -9.

Each test starts its own kernel (jupyter_client, kernel "python3", which inherits
MPKIT_START_METHOD) and shuts it down in a ``finally``. Items write a line to a file when they
finish, so the test knows the map is under way without reading the cell's output.
"""
from __future__ import annotations

import json
import os
import signal
import time

import psutil

from tests.kernels import KernelSession
from tests.proctree import descendants, describe, survivors, wait_until, workers_of

ITEMS = 40

SETUP = '''
import json, sys, time
import mpkit

MARKER = {marker!r}

def slow(i):
    time.sleep(0.5)
    with open(MARKER, "a") as f:
        f.write(f"{{i}}\\n")
    return i * 10
'''


def _finished(marker) -> set[int]:
    try:
        return {int(x) for x in marker.read_text().split()}
    except FileNotFoundError:
        return set()


def _wait_for_items(marker, count: int, timeout: float = 60.0) -> set[int]:
    done = wait_until(lambda: len(_finished(marker)) >= count and _finished(marker), timeout)
    assert done, f"fewer than {count} items finished within {timeout} s"
    return done


def test_interrupt_stops_map_keeps_results_and_kernel(start_method, tmp_path):
    marker = tmp_path / "finished"
    kernel = KernelSession()
    try:
        kernel.run(SETUP.format(marker=str(marker)))
        msg_id = kernel.start(f"results = mpkit.map(slow, range({ITEMS}), workers=2)")  # with its progress bar
        _wait_for_items(marker, 6)
        busy = workers_of(kernel.pid)
        assert len(busy) == 2, describe(descendants(kernel.pid))

        started = time.monotonic()
        kernel.km.interrupt_kernel()  # SIGINT to the kernel's process group, as Jupyter does
        cell = kernel.collect(msg_id, timeout=30)
        elapsed = time.monotonic() - started
        assert cell.status == "error", cell
        assert cell.error["ename"] == "MapInterrupted", cell.error
        assert elapsed < 5.0, f"the cell took {elapsed:.1f} s to end after the interrupt"

        out = kernel.run("e = sys.last_value\n"
                         "print(json.dumps({'keyboard': isinstance(e, KeyboardInterrupt), "
                         "'results': list(e.results), 'pending': e.pending}))")
        info = json.loads(out.text().strip().splitlines()[-1])
        assert info["keyboard"]
        finished = [r // 10 for r in info["results"]]
        assert finished == sorted(set(finished)) and all(r % 10 == 0 for r in info["results"])
        assert 2 <= len(finished) < ITEMS and set(finished) <= _finished(marker)
        assert sorted(finished + info["pending"]) == list(range(ITEMS))

        # no item of the interrupted map runs any more (the cell ends once no worker holds one):
        # nothing is added to the marker file after the cell ended
        ended = _finished(marker)
        time.sleep(1.5)  # three items' time: a worker still running items would have written
        assert _finished(marker) == ended, "workers kept running items of the interrupted map"

        # the kernel is still usable, and so is mpkit in it, on a full warm pool (workers that got
        # to the end of their item within the cancel grace are kept, the others were replaced)
        again = kernel.run("print(json.dumps(mpkit.map(abs, range(-5, 5), workers=2, progress=False)))\n"
                           "print(json.dumps(sorted(mpkit.engine.default_pool().pids())))")
        lines = again.text().strip().splitlines()
        assert json.loads(lines[-2]) == [abs(x) for x in range(-5, 5)]
        assert len(json.loads(lines[-1])) == 2, lines

        tree = [psutil.Process(kernel.pid), *descendants(kernel.pid)]
        kernel.km.shutdown_kernel()  # a polite shutdown, as closing the notebook does
        left = survivors(tree, timeout=15.0)
        assert not left, "processes outlived the kernel's shutdown:\n" + describe(left)
    finally:
        kernel.close()


def test_restart_leaves_no_worker_of_the_old_kernel(start_method):
    kernel = KernelSession()
    try:
        kernel.run("import mpkit\nfrom tests import helpers\n"
                   "pids = set(mpkit.map(helpers.pid_of, range(20), workers=2, progress=False))")
        old_pid = kernel.pid
        old_workers = workers_of(old_pid)
        assert len(old_workers) == 2, describe(descendants(old_pid))  # a warm pool, idle
        old_tree = [psutil.Process(old_pid), *descendants(old_pid)]

        kernel.km.restart_kernel()
        kernel.reconnect()
        assert kernel.pid != old_pid
        left = survivors(old_tree, timeout=10.0)
        assert not left, "processes of the old kernel outlived its restart:\n" + describe(left)

        cell = kernel.run("import mpkit, json\nfrom tests import helpers\n"
                          "print(json.dumps(sorted(set(mpkit.map(helpers.pid_of, range(20), workers=2, "
                          "progress=False)))))")
        new_pids = set(json.loads(cell.text().strip().splitlines()[-1]))
        assert new_pids and not new_pids & {p.pid for p in old_workers}
    finally:
        kernel.close()


def test_sigkill_of_kernel_alone_ends_its_workers(start_method, tmp_path):
    marker = tmp_path / "finished"
    kernel = KernelSession()
    try:
        kernel.run(SETUP.format(marker=str(marker)))
        kernel.start(f"mpkit.map(slow, range({ITEMS}), workers=2, progress=False)")
        _wait_for_items(marker, 2)
        workers = workers_of(kernel.pid)
        tree = descendants(kernel.pid)
        assert len(workers) == 2, describe(tree)

        os.kill(kernel.pid, signal.SIGKILL)  # the kernel alone, as the OOM killer does
        left = survivors(workers, timeout=5.0)
        assert not left, "workers outlived their killed kernel (orphans):\n" + describe(left)
        left = survivors(tree, timeout=10.0)
        assert not left, "multiprocessing helpers outlived the killed kernel:\n" + describe(left)
    finally:
        kernel.close()


PIPELINE_SETUP = '''
import json, sys, time
from mpkit import Pipeline
from tests import helpers

pipe = Pipeline("interrupted").stage(helpers.identity, workers=2).stage(helpers.sleep_then, workers=2)
'''


def test_interrupt_stops_a_pipeline_run_and_its_processes(start_method):
    """A blocking Pipeline.run() in a real kernel: Jupyter's interrupt stops every stage."""
    kernel = KernelSession()
    try:
        kernel.run(PIPELINE_SETUP)
        msg_id = kernel.start("out = pipe.run([0.3] * 200)")  # with its dashboard
        assert wait_until(lambda: len(workers_of(kernel.pid)) >= 3, timeout=60), describe(descendants(kernel.pid))
        time.sleep(1.0)
        workers = workers_of(kernel.pid)

        started = time.monotonic()
        kernel.km.interrupt_kernel()
        cell = kernel.collect(msg_id, timeout=30)
        elapsed = time.monotonic() - started
        assert cell.status == "error" and cell.error["ename"] == "MapInterrupted", cell
        assert elapsed < 5.0, f"the cell took {elapsed:.1f} s to end after the interrupt"
        left = survivors(workers, timeout=2.0)
        assert not left, "stage workers outlived the interrupt:\n" + describe(left)

        out = kernel.run("s = pipe.stats()\n"
                         "print(json.dumps([s.state, s.submitted, len(sys.last_value.results)]))")
        state, submitted, finished = json.loads(out.text().strip().splitlines()[-1])
        assert state == "stopped" and submitted > 0 and 0 < finished < 200

        tree = [psutil.Process(kernel.pid), *descendants(kernel.pid)]
        kernel.km.shutdown_kernel()
        left = survivors(tree, timeout=15.0)
        assert not left, "processes outlived the kernel's shutdown:\n" + describe(left)
    finally:
        kernel.close()
