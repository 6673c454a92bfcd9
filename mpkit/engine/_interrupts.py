"""Interrupts (Ctrl-C, Jupyter's interrupt button: SIGINT) that arrive while a map is stopping.

    1st SIGINT ─► KeyboardInterrupt in the waiting map ─► held_interrupts(): clean-up (workers of
                                                          the map killed, progress bar closed) and
                                                          MapInterrupted built with the results
    2nd SIGINT ─► held: it cannot break the clean-up ──► MapInterrupted raised ─► IPython shows it:
                  or the results                         hold_while_shown() until the cell ends

Stopping takes a moment (busy workers are killed and waited for), so users press interrupt again.
Python raises each SIGINT as a new KeyboardInterrupt wherever the main thread is, and one that
lands in the clean-up, or while IPython formats the first one's traceback (IPython then puts the
plain KeyboardInterrupt in ``sys.last_value``), would lose the results. While a map stops, and
while its ``MapInterrupted`` is shown, a further interrupt is held instead: the work is already
stopping, which is what it asks for. Only the main thread receives signals; elsewhere these
helpers do nothing.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


def _can_hold() -> bool:
    return (threading.current_thread() is threading.main_thread()
            and callable(signal.getsignal(signal.SIGINT)))  # not SIG_IGN, SIG_DFL or a C handler


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Run the body with SIGINT held. If one came and nothing was being handled when the body
    began (a clean-up after normal work), it is raised after the body as a KeyboardInterrupt;
    during the handling of an interrupt (or of another error) it merges into that one."""
    if not _can_hold():
        yield
        return
    handling = sys.exc_info()[1] is not None
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and not handling:
        raise KeyboardInterrupt


def _ignore_while_shown(signum, frame) -> None:
    """The SIGINT handler while a MapInterrupted is shown: the map has stopped already."""


def hold_while_shown() -> None:
    """Hold SIGINT until the running IPython cell ends: called when IPython starts showing a
    ``MapInterrupted``, so that a second interrupt cannot take its place in ``sys.last_value``.
    Outside IPython (or when there is no cell to wait for) nothing is held."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not _can_hold() or signal.getsignal(signal.SIGINT) is _ignore_while_shown:
        return  # (IPython may render an exception twice: hold once, give back once)
    previous = signal.signal(signal.SIGINT, _ignore_while_shown)

    def restore(*_) -> None:
        shell.events.unregister("post_run_cell", restore)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)

    shell.events.register("post_run_cell", restore)
