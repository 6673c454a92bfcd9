"""Writing the dialogue files: two writer processes, the stages of a pipeline.

    main process                      "std writer" process              "mmi writer" process
    chunks of CHUNK conversations ──► append to std/<split>.txt ──► append to mmi/<split>.txt
    (train, then val)                 reverse each conversation's      (one chunk at a time)
                                      utterances, pass them on
                          bounded channels (MAXSIZE chunks): a full channel makes the sender wait

As in the article, the MMI file is written by a second process that receives each reversed
conversation through a bounded channel, so only a bounded number of copies exist at a time; and
because the writers are pipeline stages, ``pipe.dashboard()`` (in Jupyter, or a text status in a
terminal) shows both writers while they work. One worker per stage keeps every file in order.
The files are emptied here before the run and appended to by the writers, which flush after each
chunk: a writer replaced after a crash never truncates what was written.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: Conversations per message between the writers: 200 short dialogues are ~100 KB of text.
CHUNK = 200
#: Chunks a channel between the writers holds: at most ~MAXSIZE * CHUNK conversations in flight.
MAXSIZE = 8


class _Appender:
    """A writer stage: appends each text it gets to ``<folder>/<split>.txt`` and flushes."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.files: dict = {}

    def _append(self, name: str, text: str) -> None:
        f = self.files.get(name)
        if f is None:  # kept open for the life of the worker process
            f = self.files[name] = open(self.folder / f"{name}.txt", "a", encoding="utf-8", newline="")  # noqa: SIM115
        f.write(text)
        f.flush()


class StdWriter(_Appender):
    def __call__(self, message):
        name, chunk, first, seed = message
        self._append(name, _blocks(chunk, first, seed, reverse=False))
        return name, _blocks(chunk, first, seed, reverse=True)


class MMIWriter(_Appender):
    def __call__(self, message):
        name, text = message
        self._append(name, text)
        return len(text)


def write_splits(splits: dict[str, list[list[str]]], out_dir: Path, start_method: str, *,
                 seed: bool, progress: bool | None = None):
    """Write ``{"train": conversations, "val": ...}`` to ``std/`` and, reversed, to ``mmi/``.

    Seed: a blank line after every conversation (the article's layout, an empty conversation
    included). Default: a blank line between conversations, none at the end. Returns the
    conversations per file, and the writers' final ``PipelineStats``.
    """
    from functools import partial

    from .. import Pipeline

    std_dir, mmi_dir = out_dir / "std", out_dir / "mmi"
    for folder in (std_dir, mmi_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for name in splits:
            (folder / f"{name}.txt").write_text("", encoding="utf-8")
    pipe = (Pipeline("dialogue writers")
            .stage(partial(StdWriter, str(std_dir)), factory=True, name="std writer", maxsize=MAXSIZE)
            .stage(partial(MMIWriter, str(mmi_dir)), factory=True, name="mmi writer", maxsize=MAXSIZE))
    messages = ((name, conversations[i:i + CHUNK], i == 0, seed)
                for name, conversations in splits.items()
                for i in range(0, len(conversations), CHUNK))
    pipe.run(messages, progress=progress, start_method=start_method)
    written = {}
    for name, conversations in splits.items():
        written[f"std/{name}.txt"] = written[f"mmi/{name}.txt"] = len(conversations)
    return written, pipe.stats()


def _blocks(chunk: Iterable[list[str]], first: bool, seed: bool, *, reverse: bool) -> str:
    parts = []
    for index, lines in enumerate(chunk):
        block = "".join(line + "\n" for line in (reversed(lines) if reverse else lines))
        if seed:
            parts.append(block + "\n")
        else:
            parts.append(block if first and index == 0 else "\n" + block)
    return "".join(parts)
