"""Task functions that write below Python's print(): to the file descriptors, from C, from a
subprocess. Importable, so workers find them by reference."""
import ctypes
import os
import subprocess
import sys


def write_everywhere(x):
    os.write(1, f"raw out {x}\n".encode())
    os.write(2, f"raw err {x}\n".encode())
    subprocess.run(["echo", f"child out {x}"], check=True)
    subprocess.run([sys.executable, "-c", f"import sys; print('child err {x}', file=sys.stderr)"], check=True)
    libc = ctypes.CDLL(None)
    libc.printf(b"from C %d\n", ctypes.c_int(x))  # buffered in C's stdio until mpkit flushes it
    return x


def huge_write(x, size=100_000_000):
    """One write of ``size`` bytes without a newline, then a short line."""
    os.write(1, b"z" * size)
    os.write(1, f"\nafter {x}\n".encode())
    return x


def subprocess_flood(x, size=20_000_000):
    """A subprocess that writes ``size`` bytes of short lines to the worker's stdout."""
    subprocess.run([sys.executable, "-c", f"import sys\nfor n in range({size} // 20):\n"
                    "    sys.stdout.write(f'line {n:014d}\\n')"], check=True)
    return x
