"""Writing the dialogue files: two writer processes, the stages of a pipeline.

    main process                 "std writer" process              "mmi writer" process
    one item per conversation ─► append to std/<split>.txt ──► append to mmi/<split>.txt
    (train, then val), in         reverse each conversation's      (a batch at a time)
    batches of up to CHUNK        utterances, pass them on
                          bounded channels (MAXSIZE conversations): a full channel makes the sender wait

As in the article, the MMI file is written by a second process that receives each reversed
conversation through a bounded channel, so only a bounded number of copies exist at a time; and
because the writers are pipeline stages, ``pipe.dashboard()`` (in Jupyter, or a text status in a
terminal) shows both writers while they work, counting conversations (each item is one; the
pipeline's micro-batcher sends them CHUNK at a time, so a message still carries many). One worker
per stage keeps every file in order.
The files are emptied here before the run and appended to by the writers, which flush after each
chunk: a writer replaced after a crash never truncates what was written.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: Conversations per message between the writers: 200 short dialogues are ~100 KB of text.
CHUNK = 200
#: Conversations a channel between the writers holds (eight messages' worth): the copies in flight.
MAXSIZE = 8 * CHUNK
#: Seconds the batcher waits for a message to fill: the input is in memory, so only its end waits.
CHUNK_WAIT = 0.05


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

    def _flush(self) -> None:
        for f in self.files.values():
            f.flush()


class StdWriter(_Appender):
    """A batch of (split, conversation's lines joined by ``\n``, first of its split, seed) ->
    (split, reversed text) each."""

    def __call__(self, batch):
        out = []
        for name, text, first, seed in batch:
            lines = text.split("\n") if text else []
            self._append(name, _block(lines, first, seed))
            lines.reverse()
            out.append((name, _block(lines, first, seed)))
        self._flush()
        return out


class MMIWriter(_Appender):
    def __call__(self, batch):
        for name, text in batch:
            self._append(name, text)
        self._flush()
        return [len(text) for _, text in batch]


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
            .batch(CHUNK, CHUNK_WAIT)
            .stage(partial(StdWriter, str(std_dir)), factory=True, name="std writer", maxsize=MAXSIZE)
            .batch(CHUNK, CHUNK_WAIT)
            .stage(partial(MMIWriter, str(mmi_dir)), factory=True, name="mmi writer", maxsize=MAXSIZE))
    # each conversation one flat tuple of atoms (its lines joined: no line holds a "\n"), which the
    # C pickler alone packs: a list inside would take the notebook-aware pickler, 3x the cost
    messages = ((name, "\n".join(lines), i == 0, seed)
                for name, conversations in splits.items()
                for i, lines in enumerate(conversations))
    pipe.run(messages, progress=progress, start_method=start_method)
    written = {}
    for name, conversations in splits.items():
        written[f"std/{name}.txt"] = written[f"mmi/{name}.txt"] = len(conversations)
    return written, pipe.stats()


def _block(lines: Iterable[str], first: bool, seed: bool) -> str:
    """One conversation as its file holds it: seed puts a blank line after each, the default
    one between them (none before the first of a split)."""
    block = "".join(line + "\n" for line in lines)
    if seed:
        return block + "\n"
    return block if first else "\n" + block
