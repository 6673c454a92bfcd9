"""A progress bar over ``MapStats`` snapshots: tqdm's widget bar in Jupyter, its text bar elsewhere.

A ``mpkit.engine.MapObserver``: the engine calls ``update(stats)`` at most ten times a second
(from a thread of its own), ``write(text, stream)`` for worker output (from the thread running the
map), and ``close(stats)`` once at the end; this adapter never sees a queue or a process.
"""
from __future__ import annotations

import sys

from ..engine._run import MapStats


def in_ipython() -> bool:
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None


def in_kernel() -> bool:
    """Inside a Jupyter kernel (widgets can be shown), not a terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_factory(progress: bool | None):
    """:class:`TqdmProgress` (built once the map starts), or None: by default a bar only under IPython."""
    if progress is None:
        progress = in_ipython()
    return TqdmProgress if progress else None


class TqdmProgress:
    def __init__(self, desc: str, total: int | None):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.bar = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, leave=True)
        self._text_bar = not hasattr(self.bar, "container")  # tqdm.notebook bars hold a widget

    def update(self, stats: MapStats) -> None:
        bar = self.bar
        bar.n = stats.done + stats.failed
        if bar.total is None and stats.total is not None:
            bar.total = stats.total
        postfix = f"workers={stats.busy}/{stats.workers}"
        if stats.failed:
            postfix += f", errors={stats.failed}"
        if stats.retried:
            postfix += f", retried={stats.retried}"
        bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()

    def write(self, text: str, stream: str) -> None:
        file = sys.stderr if stream == "stderr" else sys.stdout
        if self._text_bar:
            self._tqdm.write(text.rstrip("\n"), file=file)
        else:
            file.write(text)
            file.flush()

    def close(self, stats: MapStats) -> None:
        self.update(stats)
        complete = stats.total is not None and stats.done + stats.failed == stats.total
        if not self._text_bar and (stats.failed or not complete):
            self.bar.colour = "#d9534f"  # tqdm.notebook shows a red bar for a failed run
        self.bar.close()
