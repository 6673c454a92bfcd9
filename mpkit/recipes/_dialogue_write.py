"""Writing the dialogue files: std here, MMI in a second process fed through a bounded queue.

    main process                                   MMI writer process
    for each conversation (train, then val):
        write it to std/<split>.txt
        reverse its utterances ──► Queue(maxsize=QUEUE_SIZE) ──► write to mmi/<split>.txt
    None (the end) ───────────────────────────────────────────► close the files, exit 0

As in the article, only one copy of the conversations is held; the reversed copies exist only a
bounded number at a time. They travel in chunks of ``CHUNK`` conversations, to keep the queue's
per-message cost (a pickle and a pipe write) small next to the text.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Iterable
from pathlib import Path

#: Conversations per message to the MMI writer: 200 short dialogues are ~100 KB of text.
CHUNK = 200
#: Messages the queue holds: at most ~QUEUE_SIZE * CHUNK reversed conversations in flight. A full
#: queue only makes the main process wait for the writer.
QUEUE_SIZE = 8
#: Seconds to wait on the writer before checking that it is still alive.
POLL = 1.0


def _mmi_writer(channel, paths: dict[str, str]) -> None:
    # both files stay open for the whole stream; closed in the finally below
    files = {name: open(path, "w", encoding="utf-8", newline="") for name, path in paths.items()}  # noqa: SIM115
    try:
        while (message := channel.get()) is not None:
            name, text = message
            files[name].write(text)
    finally:
        for f in files.values():
            f.close()


class MMIWriter:
    """The second process; ``send(name, text)`` blocks while the queue is full."""

    def __init__(self, paths: dict[str, Path], start_method: str):
        ctx = mp.get_context(start_method)
        self._channel = ctx.Queue(maxsize=QUEUE_SIZE)
        self._process = ctx.Process(target=_mmi_writer, name="mpkit-dialogue-mmi",
                                    args=(self._channel, {k: str(v) for k, v in paths.items()}), daemon=True)
        self._process.start()

    def send(self, message) -> None:
        while True:
            try:
                self._channel.put(message, timeout=POLL)
                return
            except queue.Full:
                self._check()

    def _check(self) -> None:
        if not self._process.is_alive():
            raise RuntimeError(
                f"the MMI writer process stopped (exit code {self._process.exitcode}) before all "
                "conversations were written. Cause: it could not write the mmi files (disk full, "
                "permissions) or was killed. Fix: check the output folder, then run again.")

    def close(self) -> None:
        self.send(None)
        self._process.join()
        self._check_exit()

    def _check_exit(self) -> None:
        if self._process.exitcode:
            raise RuntimeError(f"the MMI writer process failed (exit code {self._process.exitcode}); "
                               "its traceback is above. Fix: check the output folder, then run again.")

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._channel.close()


def write_splits(splits: dict[str, list[list[str]]], out_dir: Path, start_method: str, *,
                 seed: bool) -> dict[str, int]:
    """Write ``{"train": conversations, "val": ...}`` to ``std/`` and, reversed, to ``mmi/``.

    Seed: a blank line after every conversation (the article's layout, an empty conversation
    included). Default: a blank line between conversations, none at the end.
    """
    std_dir, mmi_dir = out_dir / "std", out_dir / "mmi"
    std_dir.mkdir(parents=True, exist_ok=True)
    mmi_dir.mkdir(parents=True, exist_ok=True)
    writer = MMIWriter({name: mmi_dir / f"{name}.txt" for name in splits}, start_method)
    written = {}
    try:
        for name, conversations in splits.items():
            with open(std_dir / f"{name}.txt", "w", encoding="utf-8", newline="") as std:
                for chunk_start in range(0, len(conversations), CHUNK):
                    chunk = conversations[chunk_start:chunk_start + CHUNK]
                    std.write(_blocks(chunk, chunk_start == 0, seed, reverse=False))
                    writer.send((name, _blocks(chunk, chunk_start == 0, seed, reverse=True)))
            written[f"std/{name}.txt"] = written[f"mmi/{name}.txt"] = len(conversations)
        writer.close()
    except BaseException:
        writer.kill()
        raise
    return written


def _blocks(chunk: Iterable[list[str]], first: bool, seed: bool, *, reverse: bool) -> str:
    parts = []
    for index, lines in enumerate(chunk):
        block = "".join(line + "\n" for line in (reversed(lines) if reverse else lines))
        if seed:
            parts.append(block + "\n")
        else:
            parts.append(block if first and index == 0 else "\n" + block)
    return "".join(parts)
