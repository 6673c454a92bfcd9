"""A real JupyterLab on loopback and Debian's Chromium driven by Playwright, for browser tests.

``LabServer`` starts ``python -m jupyter lab`` in its own process group with throw-away Jupyter
directories and a random token, and waits for ``/api/status`` to answer. ``LabServer.close()``
shuts it down through its API (which also stops its kernels), then kills whatever of its process
tree is left. ``LabBrowser`` opens a notebook in headless Chromium and runs it through JupyterLab's
own command registry (``window.jupyterapp``, exposed by ``LabApp.expose_app_in_browser``).

Every wait has a timeout; every ``close()`` belongs in a ``finally``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from tests.proctree import REPO, alive, child_env, descendants, kill_all

#: Debian's Chromium (package ``chromium``, installed by .ci/install-browser). Playwright only drives it.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = REPO / "tests" / "artifacts"

SERVER_START_TIMEOUT = 90.0    # a busy 2-core machine: jupyter lab imports a lot
SERVER_STOP_TIMEOUT = 15.0
PAGE_TIMEOUT = 90.0            # JupyterLab's page: bundles, extensions, restoring the layout
KERNEL_TIMEOUT = 90.0          # the notebook's kernel up and idle


def missing_requirement() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (Debian's chromium package; run .ci/install-browser)"
    for module, extra in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab"),
                          ("ipywidgets", "ipywidgets"), ("ipykernel", "ipykernel")):
        try:
            __import__(module)
        except ImportError:
            return f"{extra} is not installed (pip install -e '.[browser]')"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> Path:
    """A notebook of code cells for the python3 kernel (so JupyterLab asks no kernel question)."""
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "execution_count": None,
             "outputs": [], "source": src}
            for i, src in enumerate(cells)
        ],
    }
    path.write_text(json.dumps(nb, indent=1))
    return path


class LabServer:
    """``jupyter lab`` (or, with ``app="notebook"``, Notebook 7's ``jupyter notebook``) on
    127.0.0.1 serving ``root`` (a temporary directory the caller owns)."""

    def __init__(self, root: Path, work: Path, app: str = "lab"):
        self.app = app
        self.root = root
        self.token = secrets.token_hex(24)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._tree: list[psutil.Process] = []
        self._work = work
        self.log_path = work / "jupyter-lab.log"
        self._log = None
        jupyter = {name: work / name for name in ("config", "data", "runtime", "ipython",
                                                   "settings", "workspaces")}
        for d in jupyter.values():
            d.mkdir(parents=True, exist_ok=True)
        self._dirs = jupyter
        # No request leaves the machine: no news feed, no update check, no extension index,
        # and no toast asking about them.
        settings = {
            "news_url": None,
            "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
            "extension_manager": "readonly",   # no index queries for extensions
            "expose_app_in_browser": True,
            "user_settings_dir": str(jupyter["settings"]),
            "workspaces_dir": str(jupyter["workspaces"]),
        }
        (jupyter["config"] / "jupyter_lab_config.json").write_text(json.dumps({"LabApp": settings}))
        if app == "notebook":   # Notebook 7 has fewer of these settings, and refuses unknown ones
            (jupyter["config"] / "jupyter_notebook_config.json").write_text(json.dumps(
                {"JupyterNotebookApp": {k: settings[k] for k in
                                        ("expose_app_in_browser", "user_settings_dir", "workspaces_dir")}}))
        notification = jupyter["settings"] / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True, exist_ok=True)
        (notification / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, name: str) -> str:
        """Where the app opens a notebook: JupyterLab's tree, or Notebook 7's notebook page."""
        # ?reset: a workspace of its own, so the notebooks of earlier tests are not open too
        return self.url(f"/lab/tree/{name}?reset" if self.app == "lab" else f"/notebooks/{name}")

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def _env(self) -> dict[str, str]:
        d = self._dirs
        return child_env(
            JUPYTER_CONFIG_DIR=str(d["config"]),
            JUPYTER_DATA_DIR=str(d["data"]),
            JUPYTER_RUNTIME_DIR=str(d["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(d["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(d["workspaces"]),
            IPYTHONDIR=str(d["ipython"]),
            NO_PROXY="127.0.0.1,localhost",
        )

    def start(self, attempts: int = 3) -> LabServer:
        """Start the server and wait until ``/api/status`` answers (another port if one was taken)."""
        last = ""
        for _ in range(attempts):
            self.port = _free_port()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - held by the server; closed in close()
            cmd = [
                sys.executable, "-m", "jupyter", self.app,
                "--no-browser",
                "--ServerApp.open_browser=False",
                # ServerApp.token's current name (the old one still works, with a warning)
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.root_dir={self.root}",
                f"--ServerApp.allow_root={os.geteuid() == 0}",
            ]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=self._env(), cwd=str(self.root),
                                         start_new_session=True)
            if self._wait_ready(SERVER_START_TIMEOUT):
                return self
            last = self.log_tail()
            self.close()
        raise RuntimeError(f"jupyter lab did not answer /api/status within {SERVER_START_TIMEOUT} s;"
                           f" its log:\n{last}")

    def _request(self, method: str, path: str, timeout: float = 5.0):
        req = urllib.request.Request(f"{self.base_url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"},
                                     data=b"" if method == "POST" else None)
        # a direct connection: loopback only, whatever proxy the environment names
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=timeout) as resp:
            body = resp.read()
            return resp.status, (json.loads(body) if body else None)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, _ = self._request("GET", "/api/status", timeout=2.0)
                if status == 200:
                    self._remember_tree()
                    return True
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.25)
        return False

    def _remember_tree(self) -> None:
        if self.proc is not None:
            seen = {p.pid for p in self._tree}
            self._tree += [p for p in descendants(self.proc.pid) if p.pid not in seen]

    def kernels(self) -> list[dict]:
        _, body = self._request("GET", "/api/kernels")
        return body or []

    def shutdown_kernels(self) -> None:
        """Shut down every kernel of the server (a test's notebook leaves its kernel running)."""
        for kernel in self.kernels():
            try:
                self._request("DELETE", f"/api/kernels/{kernel['id']}", timeout=30.0)
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        """Shut the server down (its kernels too), then kill what is left of its process tree."""
        proc, self.proc = self.proc, None
        try:
            if proc is None:
                return
            self._tree += [p for p in descendants(proc.pid) if p.pid not in {q.pid for q in self._tree}]
            if proc.poll() is None:
                try:
                    self._request("POST", "/api/shutdown", timeout=5.0)
                except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                    pass
                try:
                    proc.wait(timeout=SERVER_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)   # its own session: its group is its pid
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            # kernels run in sessions of their own: not in the server's group
            kill_all(self._tree)
            deadline = time.monotonic() + 10
            while any(alive(p) for p in self._tree) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


class LabBrowser:
    """Headless Chromium (Debian's) under Playwright, with one page, allowed to reach loopback only."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        self._pw_cm = sync_playwright()
        self._pw = None
        self.browser = None
        self.context = None
        self.page = None
        self.console: list[str] = []
        self.blocked: list[str] = []
        try:
            self._pw = self._pw_cm.start()
            # Playwright gives the browser a fresh --user-data-dir of its own (a temporary
            # directory it deletes on close); it refuses one passed in args.
            self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                    headless=True, timeout=60_000,
                                                    handle_sigint=False, handle_sigterm=False,
                                                    handle_sighup=False)
            self.context = self.browser.new_context(viewport={"width": 1400, "height": 900},
                                                    service_workers="block")
            self.context.set_default_timeout(30_000)
            self.context.route("**/*", self._loopback_only)
            self.page = self.context.new_page()
            self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
            self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        except BaseException:
            self.close()
            raise

    def _loopback_only(self, route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    # -- JupyterLab ---------------------------------------------------------------------------

    def open_notebook(self, lab: LabServer, name: str) -> None:
        """Open ``name`` (relative to the server's root) and wait for its kernel to be idle."""
        page = self.page
        page.goto(lab.notebook_url(name), wait_until="domcontentloaded",
                  timeout=PAGE_TIMEOUT * 1000)
        page.wait_for_function("() => window.jupyterapp !== undefined && window.jupyterapp.shell",
                               timeout=PAGE_TIMEOUT * 1000)
        page.wait_for_function(
            """(name) => {
                const w = window.jupyterapp.shell.currentWidget;
                return !!(w && w.context && w.context.path === name && w.content
                          && w.content.widgets && w.content.widgets.length > 0);
            }""", arg=name, timeout=PAGE_TIMEOUT * 1000)
        self.wait_kernel_idle(KERNEL_TIMEOUT)

    def wait_kernel_idle(self, timeout: float) -> None:
        self.page.wait_for_function(
            """() => {
                const w = window.jupyterapp.shell.currentWidget;
                const s = w && w.sessionContext;
                const k = s && s.session && s.session.kernel;
                if (!(s && s.isReady && k && k.status === 'idle' && k.connectionStatus === 'connected')) {
                    return false;
                }
                // the notebook toolbar's indicator follows the cells' executions
                const ind = w.node.querySelector('.jp-Notebook-ExecutionIndicator');
                return !ind || !ind.dataset.status || ind.dataset.status === 'idle';
            }""", timeout=timeout * 1000, polling=250)

    def kernel_status(self) -> str:
        return self.page.evaluate(
            """() => {
                const w = window.jupyterapp.shell.currentWidget;
                const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                return k ? k.status : 'none';
            }""")

    def run_all(self) -> None:
        """Start JupyterLab's own "Run All Cells" command on the open notebook; do not wait for it.

        The command's promise settles only when the last cell has run, so it is not awaited
        here (the test reads the page meanwhile); :meth:`run_all_result` reports how it ended.
        """
        self.page.evaluate(
            """() => {
                window.__mpkitRunAll = 'running';
                window.jupyterapp.commands.execute('notebook:run-all-cells').then(
                    (ok) => { window.__mpkitRunAll = ok ? 'ok' : 'failed'; },
                    (err) => { window.__mpkitRunAll = 'error: ' + err; });
                return true;
            }""")

    def run_all_result(self) -> str:
        """'running', then 'ok' (every cell ran without error), 'failed' or 'error: ...'."""
        return self.page.evaluate("() => String(window.__mpkitRunAll)")

    def wait_run_all(self, timeout: float) -> str:
        self.page.wait_for_function("() => window.__mpkitRunAll !== 'running'",
                                    timeout=timeout * 1000, polling=250)
        return self.run_all_result()

    def run_cell(self, index: int, wait: float | None = KERNEL_TIMEOUT) -> None:
        """Run one cell with the app's own command (as Shift+Enter would); with ``wait``, until
        the kernel is idle again."""
        self.page.evaluate(
            """(i) => {
                const w = window.jupyterapp.shell.currentWidget;
                w.content.activeCellIndex = i;
                window.jupyterapp.commands.execute('notebook:run-cell');
                return true;
            }""", index)
        if wait:
            time.sleep(0.5)   # the execute request on its way: the kernel turns busy
            self.wait_kernel_idle(wait)

    def command(self, name: str) -> None:
        """Run one of the app's commands (``notebook:interrupt-kernel``, ``docmanager:save``...)."""
        self.page.evaluate("(name) => window.jupyterapp.commands.execute(name).then(() => true)", name)

    def texts(self, selector: str) -> list[str]:
        """The text of every element matching ``selector`` now (empty if none)."""
        return self.page.locator(selector).all_inner_texts()

    def screenshot(self, name: str, selector: str | None = None) -> Path:
        """A screenshot under tests/artifacts: the page, or only the element ``selector`` finds."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        if selector is None:
            self.page.screenshot(path=str(path), full_page=False, timeout=30_000)
        else:
            self.page.locator(selector).screenshot(path=str(path), timeout=30_000)
        return path

    def close(self) -> None:
        for step in (lambda: self.context and self.context.close(),
                     lambda: self.browser and self.browser.close(),
                     lambda: self._pw and self._pw.stop()):
            try:
                step()
            except Exception:  # noqa: BLE001, S110 - clean-up goes on; the leak check reports leftovers
                pass
        self.context = self.browser = self._pw = None


def copy_into(root: Path, source: Path, name: str | None = None) -> str:
    """Copy a file into the server's root; return its name there."""
    target = root / (name or source.name)
    shutil.copyfile(source, target)
    return target.name
