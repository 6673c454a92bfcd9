"""Chat exports built for the recipes' tests (a workbook of named sheets, written by openpyxl), and a
recipe's command line interrupted as Ctrl-C interrupts it."""
from __future__ import annotations


def book(path, sheets: dict[str, list[list]]):
    """An .xlsx at ``path`` with one sheet per entry of ``sheets`` ({name: rows}, header first)."""
    import openpyxl

    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
    wb.save(path)
    return path


def interrupted_cli(args: list[str], ready, timeout: float = 240.0) -> tuple[int, str, str]:
    """``python -m mpkit ARGS`` from the repository root, sent SIGINT (Ctrl-C) once ``ready()``
    holds: its exit code, stdout and stderr. Fails if it ended before it could be interrupted."""
    import os
    import signal
    import subprocess
    import sys

    from tests.proctree import REPO, wait_until

    proc = subprocess.Popen([sys.executable, "-m", "mpkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.fspath(REPO))
    try:
        assert wait_until(lambda: proc.poll() is not None or ready(), timeout)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, stderr
