"""Fixtures for the browser tests: a JupyterLab server and a headless Chromium, per test.

Both are children of the test process, so both are gone before the leak check of
tests/conftest.py looks (it tears down after these fixtures).
"""
from __future__ import annotations

import os

import pytest

from tests.browser._lab import LabBrowser, LabServer, missing_requirement


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
