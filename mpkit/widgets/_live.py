"""Which front-end fits where mpkit runs: the defaults behind ``progress=True`` / ``None``.

    mpkit.map / mpkit.Pool   progress=None ─► a bar under IPython (tqdm: a widget in Jupyter), none in a script
    mpkit.Pipeline.run       progress=None ─► a Dashboard in Jupyter, a TextStatus under IPython in a
                                              terminal, nothing in a script; True shows one anyway

The engine asks for these through its ``front_end`` hooks (``mpkit.engine.MapFrontEnd`` and
``PipelineFrontEnd``); it never imports this module. ipywidgets, tqdm and IPython are imported
only when a front-end is made.
"""
from __future__ import annotations

import sys

from ..engine import MapObserverFactory, PipelineObserver
from . import _progress


def map_front_end(progress: bool | None) -> MapObserverFactory | None:
    """The bar for ``progress=`` of a map: by default only under IPython."""
    return _progress.progress_factory(progress)


def pipeline_front_end(progress: bool | None, title: str) -> PipelineObserver | None:
    """The live view of a blocking pipeline run: a dashboard in Jupyter, a text status elsewhere."""
    if progress is False or (progress is None and not _progress.in_ipython()):
        return None
    if _progress.in_kernel():
        from IPython.display import display

        from ._dashboard import Dashboard

        dash = Dashboard(title)
        display(dash)
        return dash
    from ._status import TextStatus

    return TextStatus(title, stream=sys.stderr)


def dashboard_for(pipe):
    """A live :class:`Dashboard` attached to ``pipe`` (``pipe.observe``): its Stop button stops the
    running service without waiting, or ends a running ``run()`` as an interrupt does (its results
    so far in MapInterrupted); its worker counts call ``pipe.scale``. Made before the first run it
    follows that run. Made after a run or service ended, it is that end's summary, for good: it
    does not take over the next run, which shows its own dashboard in its own cell."""
    from ._dashboard import Dashboard

    if pipe.state not in ("ready", "running"):
        return Dashboard.of_ended(pipe.name, pipe.history(), pipe.stats())

    def stop() -> None:  # a click handler must return at once: what is inside is cancelled
        service = pipe.service
        if service is not None and service.running:
            service.stop(drain=False, timeout=0)
        else:  # a blocking run(): it ends as the kernel's interrupt ends it (MapInterrupted)
            pipe._interrupt_run()

    scalable = {spec.name: spec.workers for spec in pipe.specs if spec.key is None}
    dash = pipe.observe(Dashboard(pipe.name, on_stop=stop, on_scale=pipe.scale, workers=scalable))
    if pipe.state not in ("ready", "running") and not dash.closed:
        dash.close(pipe.stats())   # the run ended while it was attached: it showed that end
    return dash
