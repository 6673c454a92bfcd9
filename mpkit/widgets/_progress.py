"""A progress bar over ``MapStats`` snapshots: tqdm's widget bar in Jupyter, its text bar elsewhere.

A ``mpkit.engine.MapObserver``: the engine calls ``update(stats)`` at most ten times a second
(from a thread of its own), ``write(text, stream)`` for worker output (from the thread running the
map), and ``close(stats)`` once at the end; this adapter never sees a queue or a process.

In Jupyter the bar has a Cancel button, which stops the map as the kernel's interrupt does
(``MapInterrupted``, with the results that finished):

    click ─comm_msg─► kernel's shell-channel thread: routes the message (the button's comm is asked
                      where to) ─► CancelButton notes the click (threading.Event)
    update(stats), the bar's thread ─► sees it ─► raises KeyboardInterrupt, which the engine raises
                                                  again in the thread running the map

A click cannot wait for the cell to end: the kernel's main thread, which handles widget messages,
is the one running the map. So the click is noted where the kernel routes messages, a thread
that runs while a cell does (ipykernel with subshells, 7 and later); where that is not so
(ipykernel 6, Colab), the bar has no Cancel button (the kernel's interrupt still works).

When the map ends, the output of the bar (and its button) becomes the final bar as static HTML
(``final_bar_html``: green when it finished, red with "failed", "interrupted" or "cancelled" and
no ETA otherwise), and every widget of it is closed, in every kernel: it stays in the saved
notebook and renders without a kernel. (Shown again as tqdm's own widget, the bar vanished in JupyterLab: its
output renderer is reused for the update and hides itself when the box it drew is closed.)
"""
from __future__ import annotations

import html
import sys
import threading

from ..engine._run import MapStats
from . import _format as fmt
from ._stage_card import ERROR_COLOR, close_tree


def _shell():
    """The running IPython shell, or None (IPython is not imported here if nothing else did)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def _routes_while_a_cell_runs() -> bool:
    """The kernel routes messages in a thread of its own (see the module docstring)."""
    return getattr(getattr(_shell(), "kernel", None), "shell_channel_thread", None) is not None


def in_ipython() -> bool:
    return _shell() is not None


def in_kernel() -> bool:
    """Inside a Jupyter kernel (widgets can be shown), not a terminal IPython."""
    shell = _shell()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_factory(progress: bool | None):
    """:class:`TqdmProgress` (built once the map starts), or None: by default a bar only under IPython."""
    if progress is None:
        progress = in_ipython()
    return TqdmProgress if progress else None


def _is_click(data) -> bool:
    """A Button's click as the front-end sends it (ipywidgets' protocol: a custom message)."""
    if not isinstance(data, dict) or data.get("method") != "custom":
        return False
    content = data.get("content")
    return isinstance(content, dict) and content.get("event") == "click"


def click_now(button, callback) -> bool:
    """Call ``callback()`` when ``button`` is clicked, even while a cell runs: in the kernel's
    shell-channel thread, which routes each message to the button's comm (see the module
    docstring). False where clicks can only arrive once the cell is over (no such thread)."""
    if not _routes_while_a_cell_runs():
        return False  # messages are routed by the main thread, which runs the cell
    route = getattr(getattr(button, "comm", None), "_reply_subshell_for", None)
    if not callable(route):
        return False

    def routed(data, default):  # the kernel's shell-channel thread, for each message to the button
        if _is_click(data):
            callback()
        return route(data, default)

    button.comm._reply_subshell_for = routed
    return True


class CancelButton:
    """A Cancel button whose click is noted while the cell runs (see the module docstring)."""

    def __init__(self, button, requested: threading.Event):
        self.button = button
        self.requested = requested

    @classmethod
    def make(cls) -> "CancelButton | None":
        """A button, or None where a click could not arrive before the cell ends."""
        import ipywidgets as w

        if not _routes_while_a_cell_runs():
            return None  # messages are routed by the main thread, which runs the map
        button = w.Button(description="Cancel", icon="stop", tooltip="Stop the map; the results that "
                          "finished are kept (like the kernel's interrupt)", layout=w.Layout(width="auto"))
        button.add_class("mpkit-cancel")
        requested = threading.Event()
        if not click_now(button, requested.set):
            button.close()
            return None
        return cls(button, requested)

    def cancelling(self) -> None:
        self.button.disabled = True
        self.button.description = "Cancelling"


#: The fill of a final bar per tqdm bar style (tqdm ends every bar as one of these two): green as
#: JupyterLab draws 'success', and the one red of mpkit's front-ends (the dashboard's errors).
BAR_COLORS = {"success": "#388e3c", "danger": ERROR_COLOR}
#: The final bar's track: a fixed width, because an untrusted notebook's sanitiser drops ``flex``
#: and ``gap`` (the track shrank to nothing); 300 px fits beside tqdm's texts in a narrow column.
TRACK_WIDTH = 300
#: The end of a bar that did not finish: tqdm's right side without the ETA, which would tell the
#: time left to a map that has stopped ("[00:03, 12.0item/s, interrupted, 2 workers]").
STOPPED_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def final_bar_html(container) -> str:
    """tqdm.notebook's bar (``container``: text, bar, text) as it ends, as static HTML, drawn
    with only what an untrusted notebook keeps of inline styles."""
    left, bar, right = container.children
    fill = 100.0 * bar.value / bar.max if bar.max else 100.0
    color = bar.style.bar_color or BAR_COLORS.get(bar.bar_style, BAR_COLORS["success"])
    # tqdm keeps both texts escaped, spaces as figure spaces (digits keep their places)
    return ('<div class="mpkit-map-bar" style="white-space:nowrap">'
            f'<span style="vertical-align:middle">{left.value}</span>'
            f'<span style="display:inline-block;vertical-align:middle;width:{TRACK_WIDTH}px;height:14px;'
            'margin:0 4px;background:#eeeeee">'
            f'<span style="display:block;height:14px;width:{fill:.0f}%;background:{html.escape(color)}"></span>'
            f'</span><span style="vertical-align:middle">{right.value}</span></div>')


class TqdmProgress:
    """One map's bar. In a notebook it owns its output (a display with an id): the live bar (and
    its Cancel button where clicks can arrive), which becomes the final bar as static HTML at the
    end, its models closed, whichever kernel runs it."""

    def __init__(self, desc: str, total: int | None):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.cancel = None
        self.view = None
        self.handle = None
        notebook = sys.modules.get("tqdm.notebook")
        in_notebook = notebook is not None and isinstance(tqdm, type) and issubclass(tqdm, notebook.tqdm_notebook)
        if in_notebook:
            self.cancel = CancelButton.make()
        extra = {"display": False} if in_notebook else {}
        self.bar = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, leave=True, **extra)
        self._text_bar = not hasattr(self.bar, "container")  # tqdm.notebook bars hold a widget
        if not self._text_bar:
            import ipywidgets as w
            from IPython.display import display

            self.view = self.bar.container
            if self.cancel is not None:
                self.view = w.HBox([self.bar.container, self.cancel.button], layout=w.Layout(align_items="center"))
            self.handle = display(self.view, display_id=True)

    def update(self, stats: MapStats) -> None:
        if self.cancel is not None and self.cancel.requested.is_set() and not self.cancel.button.disabled:
            self.cancel.cancelling()
            raise KeyboardInterrupt("Cancel clicked")  # raised again where the map runs: it stops as interrupted
        self._draw(stats)

    def _draw(self, stats: MapStats, outcome: str = "") -> None:
        bar = self.bar
        bar.n = stats.done + stats.failed
        if bar.total is None and stats.total is not None:
            bar.total = stats.total
        cap = min(stats.workers, stats.max_workers) if stats.max_workers else stats.workers
        postfix = fmt.pool_workers(stats.busy, cap, bool(outcome))
        if outcome and outcome != "finished":   # it stopped: no ETA, and it says why
            bar.bar_format = STOPPED_FORMAT
            postfix = f"{outcome}, {postfix}"
        if stats.failed:
            postfix += f", {stats.failed:,} failed"
        if stats.retried:
            postfix += f", {stats.retried:,} retried"
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
        outcome = stats.outcome or "finished"
        if outcome == "interrupted" and self.cancel is not None and self.cancel.button.disabled:
            outcome = "cancelled"      # the Cancel button stopped it (the engine saw an interrupt)
        # a click noted now comes too late: the map is over, nothing to cancel
        self._draw(stats, outcome)
        if not self._text_bar and (stats.failed or outcome != "finished"):
            self.bar.container.children[1].bar_style = "danger"   # tqdm's close keeps it red
        self.bar.close()
        if self.handle is not None:  # the map is over: the output becomes the final bar, static
            self.handle.update({"text/html": final_bar_html(self.bar.container),
                                "text/plain": str(self.bar)}, raw=True)
        if self.view is not None:
            close_tree(self.view)   # the box, the button and tqdm's bar inside it
