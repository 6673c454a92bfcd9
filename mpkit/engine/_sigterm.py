"""Clean-up that also runs when the process is stopped with SIGTERM.

Jupyter stops a kernel that does not answer a shutdown request with SIGTERM (then SIGKILL), and
so do ``kill``, systemd and container runtimes. Python's default for SIGTERM is to die at once,
without ``atexit``: the folder of cell modules stays in /tmp, and what workers' tasks started is
orphaned. ``chain(cleanup)`` runs ``cleanup`` first, then what SIGTERM did before: the handler
that was installed, or the default, so the process still ends by SIGTERM (exit status 143).

    SIGTERM ─► handler (main thread) ─► cleanup, at most CLEANUP_SECONDS ─► the previous handler,
                                                                           or die by SIGTERM

A handler can be installed only from the main thread; elsewhere ``chain`` does nothing (atexit
and the next start's sweep still clean up). SIGKILL cannot be caught: see each caller's sweep.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable

#: Longest a clean-up may hold up the exit. It runs in a helper thread, so one that waits for a
#: lock the interrupted main thread holds cannot hang the exit; Jupyter sends SIGKILL 5 s after
#: SIGTERM, so this leaves it room.
CLEANUP_SECONDS = 3.0


def _installed(handler) -> list:
    found = []
    while handler is not None and hasattr(handler, "mpkit_cleanup"):
        found.append(handler.mpkit_cleanup)
        handler = handler.mpkit_previous
    return found


def chain(cleanup: Callable[[], None]) -> bool:
    """Run ``cleanup()`` when SIGTERM arrives, before what SIGTERM did so far. True if installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None or previous == signal.SIG_IGN or cleanup in _installed(previous):
        return False  # a handler from C code, SIGTERM ignored on purpose, or already chained

    def on_sigterm(signum, frame):
        helper = threading.Thread(target=_quietly, args=(cleanup,), name="mpkit-sigterm", daemon=True)
        helper.start()
        helper.join(CLEANUP_SECONDS)
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    on_sigterm.mpkit_cleanup = cleanup
    on_sigterm.mpkit_previous = previous
    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):
        return False
    return True


def _quietly(cleanup: Callable[[], None]) -> None:
    try:
        cleanup()
    except Exception:
        pass  # the process is ending: a failed clean-up must not stop it
