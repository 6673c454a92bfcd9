"""A real Jupyter kernel for tests: started with jupyter_client as a notebook server starts it.

Every wait has a timeout. ``KernelSession.close()`` belongs in a ``finally``: it shuts the kernel
down (if a test has not) and kills whatever of its process tree is left.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from tests.proctree import REPO, alive, child_env, descendants, kill_all

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

STARTUP_TIMEOUT = 60.0   # a busy 2-core machine can take a while to start a kernel
CELL_TIMEOUT = 60.0


@dataclass
class Stream:
    name: str            # "stdout" or "stderr"
    text: str
    sent: float          # the kernel's timestamp of the message (epoch seconds)


@dataclass
class Cell:
    reply: dict = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)
    error: dict | None = None
    ended: float | None = None   # the kernel's timestamp of the "idle" status after the cell
    displays: list[dict] = field(default_factory=list)   # data of each display, result and display update

    def text(self, name: str = "stdout") -> str:
        return "".join(s.text for s in self.streams if s.name == name)

    @property
    def status(self) -> str:
        return self.reply.get("status", "")


def _epoch(date) -> float:
    if isinstance(date, str):
        date = datetime.fromisoformat(date.replace("Z", "+00:00"))
    if date.tzinfo is None:
        date = date.replace(tzinfo=timezone.utc)
    return date.timestamp()


class KernelSession:
    def __init__(self):
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        # env carries MPKIT_START_METHOD from the start_method fixture; cwd lets it import `tests`
        self.km.start_kernel(env=child_env(), cwd=str(REPO))
        self.kc = None
        try:
            self.kc = self.km.client()
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid

    def start(self, code: str) -> str:
        """Send a cell for execution; return its message id without waiting."""
        return self.kc.execute(code, store_history=True)

    def iopub(self, msg_id: str, timeout: float = CELL_TIMEOUT):
        """The IOPub messages of the cell ``msg_id``, as they arrive, for ``timeout`` seconds at
        most (then AssertionError): the caller stops reading when it has what it waits for."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the cell sent nothing more that the test waits for within {timeout} s")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                yield msg

    def collect(self, msg_id: str, timeout: float = CELL_TIMEOUT) -> Cell:
        """The outputs and reply of a cell sent with :meth:`start`, once the kernel is idle again."""
        cell = Cell()
        deadline = time.monotonic() + timeout
        try:
            for msg in self.iopub(msg_id, timeout):
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    cell.streams.append(Stream(content["name"], content["text"], _epoch(msg["header"]["date"])))
                elif kind == "error":
                    cell.error = content
                elif kind in ("display_data", "execute_result", "update_display_data"):
                    cell.displays.append(content["data"])
                elif kind == "status" and content["execution_state"] == "idle":
                    cell.ended = _epoch(msg["header"]["date"])
                    break
        except AssertionError:
            raise AssertionError(f"the cell did not finish within {timeout} s; so far: {cell}") from None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no execute_reply within {timeout} s")
            try:
                msg = self.kc.get_shell_msg(timeout=left)
            except queue.Empty:
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                cell.reply = msg["content"]
                return cell

    def run(self, code: str, timeout: float = CELL_TIMEOUT, ok: bool = True) -> Cell:
        """Execute a cell and wait for it; with ``ok``, fail the test if the cell raised."""
        cell = self.collect(self.start(code), timeout)
        if ok:
            assert cell.status == "ok", (f"cell failed: {cell.error and cell.error.get('ename')}: "
                                         f"{cell.error and cell.error.get('evalue')}\n"
                                         + "\n".join((cell.error or {}).get("traceback", [])))
        return cell

    def reconnect(self) -> None:
        """After a restart: wait until the new kernel answers."""
        self.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)

    def close(self) -> None:
        tree = []
        try:
            process = self.km.provisioner.process if self.km.provisioner else None
            if process is not None and process.poll() is None:
                tree = descendants(process.pid)
        except Exception:
            pass
        if self.kc is not None:
            self.kc.stop_channels()
        try:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
        except Exception:
            pass
        kill_all([p for p in tree if alive(p)])
        try:
            self.km.cleanup_resources()
        except Exception:
            pass
