"""``%%mp_pool --share`` of a large numpy array: sent once, shared read-only, never left in /dev/shm.

Each test runs a notebook-like IPython shell in a child Python (its own session), so its memory
and its kill are its own. The child prints JSON lines; workers report their unique memory (USS:
what the process alone holds, shared pages excluded).
"""
from __future__ import annotations

import json
import os
import signal

import pytest

from tests.proctree import Script, wait_until

pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(180)

#: The shared array: large enough that a copy per worker stands out of any noise in USS.
MB = 200

SCRIPT = r'''
import json, os, sys
import numpy as np
from IPython.testing.globalipapp import start_ipython
start_ipython()
ip = get_ipython()
ip.run_line_magic("load_ext", "mpkit")
ip.user_ns["big"] = np.ones({mb} * 1_000_000 // 8)
ip.user_ns["small"] = np.ones(4)
CELL = """
import os, time, psutil
def probe(i):
    total = float(ARRAY.sum())  # touches every page
    try:
        ARRAY[0] = 5
        wrote = "wrote"
    except ValueError as exc:
        wrote = str(exc)
    if i == "hang":
        time.sleep(120)
    return os.getpid(), psutil.Process().memory_full_info().uss, total, wrote
"""
print("ready", flush=True)
for line in sys.stdin:
    what = line.strip()
    if what == "exit":
        break
    name, items = what.split(maxsplit=1)
    out = ip.run_cell_magic("mp_pool", f"{{items}} -n 2 --share {{name}} --no-progress",
                            CELL.replace("ARRAY", name))
    print("result", json.dumps(out), flush=True)
'''


def _segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm")} if os.path.isdir("/dev/shm") else set()


@pytest.fixture
def notebook(start_method):
    before = _segments()
    script = Script(SCRIPT.format(mb=MB))
    try:
        script.expect("ready", timeout=60)
        yield script
    finally:
        script.close()  # kills the resource tracker too, if it is still there: clean up after it
        for name in _segments() - before:
            if name.startswith("psm_"):
                try:
                    os.unlink(os.path.join("/dev/shm", name))
                except OSError:
                    pass


def _map(script: Script, name: str, items: str = "[0, 1, 2, 3]"):
    script.send(f"{name} {items}")
    return json.loads(script.expect("result ", timeout=120))


def test_a_large_share_costs_no_copy_per_worker_and_is_read_only(notebook):
    before = _segments()
    control = _map(notebook, "small")       # workers warm, with a tiny share: their base USS
    shared = _map(notebook, "big")
    base = max(uss for _, uss, _, _ in control)
    for pid, uss, total, wrote in shared:
        assert total == MB * 1_000_000 // 8
        assert uss - base < MB * 1_000_000 / 4, (
            f"worker {pid} holds {(uss - base) / 1e6:.0f} MB of its own for a {MB} MB share")
        assert "read-only" in wrote, wrote
    assert _segments() <= before, f"left in /dev/shm: {_segments() - before}"


def test_a_killed_notebook_leaves_no_shared_memory(notebook):
    before = _segments()
    notebook.send("big ['hang']")
    new = wait_until(lambda: _segments() - before, timeout=60)
    assert new, "the share did not go through shared memory"
    os.kill(notebook.pid, signal.SIGKILL)
    notebook.proc.wait(timeout=10)
    left = wait_until(lambda: not (_segments() & new), timeout=30) or (_segments() & new)
    assert left is True, f"shared memory outlived the killed notebook: {left}"


SMALL_SHM_SCRIPT = r'''
import json, warnings
import numpy as np
from IPython.testing.globalipapp import start_ipython
if __name__ == "__main__":
    ip = start_ipython()
    ip.run_line_magic("load_ext", "mpkit")
    ip.user_ns["big"] = np.arange(8 << 20, dtype=float)  # 64 MB: four times the /dev/shm below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ip.run_cell_magic("mp_pool", "range(4) -n 2 --share big --no-progress",
                                "def f(i):\n    return float(big[i * 1000])\n")
    print(json.dumps({"out": list(out), "warnings": [str(w.message) for w in caught]}), flush=True)
'''


def test_a_share_larger_than_dev_shm_goes_with_the_function_instead_of_killing_the_notebook(start_method,
                                                                                         tmp_path):
    """A container's /dev/shm is 64 MB by default; a larger --share used to kill the notebook with
    SIGBUS half-way through copying it there. Here a 16 MB /dev/shm (a tmpfs mounted in a mount
    namespace of the child's own, so the machine's is untouched)."""
    import shutil
    import subprocess
    import sys

    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to give the child a small /dev/shm of its own")
    script = tmp_path / "small_shm.py"
    script.write_text(SMALL_SHM_SCRIPT)
    command = f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {sys.executable} {script}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a new mount namespace here: {probe.stderr.decode()[-200:]}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=150,
                          env=dict(os.environ, MPKIT_START_METHOD=start_method), cwd=os.getcwd())
    assert done.returncode == 0, f"the notebook died (exit {done.returncode}): {done.stderr[-2000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["out"] == [0.0, 1000.0, 2000.0, 3000.0]
    said = [w for w in report["warnings"] if "/dev/shm" in w]
    assert said and "--share big" in said[0] and "--shm-size" in said[0], report["warnings"]
