"""Fixtures for the browser tests: a JupyterLab server and a headless Chromium, per test, or a
server per module (``app_server``: JupyterLab, then Notebook 7) for tests that share one.

A per-test server and the browser are children of the test process, gone before the leak check
of tests/conftest.py looks (it tears down after these fixtures). A module's server is kept out of
that check while it runs (tests/dask_cluster.py's KEPT), and checked gone at the module's end.
"""
from __future__ import annotations

import os

import pytest

from tests.browser._lab import LabBrowser, LabServer, missing_requirement
from tests.dask_cluster import KEPT
from tests.proctree import alive, descendants


@pytest.fixture
def browser_requirements():
    """Skip where the browser tools are missing; in CI (CI=true), where .ci/run installs them, fail."""
    reason = missing_requirement()
    if reason and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser test in CI: {reason}")
    if reason:
        pytest.skip(f"browser test: {reason}")


@pytest.fixture
def lab(browser_requirements, tmp_path):
    """A running ``jupyter lab`` on 127.0.0.1 whose root is an empty temporary directory."""
    root = tmp_path / "root"
    root.mkdir()
    server = LabServer(root, tmp_path / "jupyter")
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def browser(browser_requirements):
    """Headless Chromium with one page (``browser.page``); requests leave for loopback only."""
    b = LabBrowser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module", params=["lab", "notebook"])
def app_server(request, tmp_path_factory):
    """One ``jupyter lab`` (then one Notebook 7 ``jupyter notebook``) for a whole test module; each
    test opens its own notebook, and its kernel is shut down when the test ends."""
    reason = missing_requirement()
    if request.param == "notebook":
        try:
            import notebook  # noqa: F401
        except ImportError:
            reason = reason or "notebook>=7 is not installed (pip install -e '.[browser]')"
    if reason and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser test in CI: {reason}")
    if reason:
        pytest.skip(f"browser test: {reason}")
    work = tmp_path_factory.mktemp(f"jupyter-{request.param}")
    root = work / "root"
    root.mkdir()
    server = LabServer(root, work / "jupyter", app=request.param)
    tree = []
    try:
        server.start()
        KEPT.add(server.proc.pid)
        yield server
    finally:
        if server.proc is not None:
            KEPT.discard(server.proc.pid)
            tree = descendants(server.proc.pid)
        server.close()
        left = [p for p in tree if alive(p)]
        assert not left, f"the {request.param} server left processes: {[p.pid for p in left]}"
