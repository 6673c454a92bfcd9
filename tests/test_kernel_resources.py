"""What a kernel leaves behind when it is stopped the hard ways: SIGTERM (Jupyter's second try at
stopping a kernel, ``kill``, a container runtime) and SIGKILL (the OOM killer).

Each test starts a real kernel, uses ``%%mp_pool`` in it (which writes the cell as a module into
a folder of the temp dir) and a task that starts a process of its own, then stops the kernel.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil

from tests.kernels import KernelSession
from tests.proctree import describe, descendants, kill_all, survivors, wait_until

CELL = '''%%mp_pool range(4) -n 2 -o out --no-progress
import subprocess
def work(x):
    if x == 0:  # a helper process that outlives the item, as a server started by a task does
        subprocess.Popen(["sleep", "120"], start_new_session=True)
    return x
'''

FOLDER = ("import json\n"
          "print(json.dumps(get_ipython().magics_manager.registry['PoolMagics'].cells.path))")


def _kernel_with_a_cell_module(kernel: KernelSession) -> tuple[Path, list[psutil.Process]]:
    kernel.run("%load_ext mpkit")
    kernel.run(CELL)
    folder = Path(json.loads(kernel.run(FOLDER).text().strip().splitlines()[-1]))
    assert folder.is_dir() and list(folder.glob("mp_cell_*.py")), folder
    tree = descendants(kernel.pid)
    assert any(p.name() == "sleep" for p in tree), describe(tree)
    return folder, tree


def test_sigterm_of_the_kernel_removes_its_cell_folder_and_processes(start_method):
    kernel = KernelSession()
    tree: list[psutil.Process] = []
    try:
        folder, tree = _kernel_with_a_cell_module(kernel)
        os.kill(kernel.pid, signal.SIGTERM)
        process = kernel.km.provisioner.process
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGTERM, "the kernel must still end by SIGTERM"
        assert wait_until(lambda: not folder.exists(), timeout=10), f"{folder} was left behind"
        left = survivors(tree, timeout=15.0)
        assert not left, "processes outlived the kernel's SIGTERM:\n" + describe(left)
    finally:
        kernel.close()
        kill_all(tree)


def test_the_folder_of_a_killed_kernel_is_removed_at_the_next_start(start_method):
    kernel = KernelSession()
    tree: list[psutil.Process] = []
    try:
        folder, tree = _kernel_with_a_cell_module(kernel)
        os.kill(kernel.pid, signal.SIGKILL)  # nothing can run in the kernel: the next start sweeps
        kernel.km.provisioner.process.wait(timeout=30)
        assert folder.exists()
    finally:
        kernel.close()
        kill_all(tree)
    again = KernelSession()
    try:
        again.run("%load_ext mpkit")
        assert not folder.exists(), f"{folder} of the killed kernel is still there"
        mine = Path(json.loads(again.run(FOLDER).text().strip().splitlines()[-1]))
        assert mine.is_dir()
    finally:
        again.close()


def test_the_sweep_keeps_folders_of_kernels_that_run(tmp_path):
    from mpkit.magics._cellmodule import sweep_stale_folders

    alive = tmp_path / f"mpkit-cells-{os.getppid()}-abc"
    alive.mkdir()
    dead_pid = _a_dead_pid()
    dead = tmp_path / f"mpkit-cells-{dead_pid}-def"
    dead.mkdir()
    (dead / "mp_cell_1.py").write_text("x = 1\n")
    other = tmp_path / "mpkit-cells-notapid"
    other.mkdir()
    assert sweep_stale_folders(str(tmp_path)) == [str(dead)]
    assert alive.exists() and other.exists() and not dead.exists()


def _a_dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid
