"""Chat exports -> GPT2-chitchat training files: the article's dialogue cleaning, on mpkit.

    exports (.xlsx) ──mpkit.map, one file per worker──► read_export (_dialogue_read)
        read, drop NA / duplicate rows / notices, clean text (newlines, emoji), count what is dropped
    main process
        join each (坐席id, 客户微信id) across files, sort by time_column if named,
        merge consecutive messages of one role into utterances (_dialogue_text.merge),
        split conversations into train / val (sklearn's train_test_split(random_state=1) rule)
    write_splits (_dialogue_write)
        std/train.txt, std/val.txt  (main)   ── reversed, bounded Queue ──► mmi/*.txt (2nd process)

Output: one utterance a line (``坐席:...`` or ``客户:...``), a blank line between conversations.
The MMI files hold the same conversations with their utterances in reverse order.

``compat="seed"`` reproduces the article byte for byte (openpyxl, its five system messages
matched as whole contents, grouping inside each file, ``\\r`` and ``_x000D_`` left in, a blank line
after every conversation). The default mode fixes what real exports break: see
:func:`clean_dialogues`.

Command line: ``python -m mpkit dialogues INPUT... --out DIR [--compat seed] [--val-size N|F]
[--time-column 发送时间] [--notice TEXT]... [-n WORKERS]``.
"""
from __future__ import annotations

from typing import Any

import argparse
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._dialogue_read import DialogueInputError, FileRows, ReadJob, read_export
from ._dialogue_text import DEFAULT_NOTICES, SEED_NOTICES, merge, split, val_count

__all__ = ["DEFAULT_NOTICES", "SEED_NOTICES", "DialogueInputError", "DialogueReport", "add_arguments",
           "clean_dialogues", "run"]

#: The default share of conversations kept for validation.
DEFAULT_VAL_SIZE = 0.1


@dataclass(frozen=True)
class DialogueReport:
    """What a run of :func:`clean_dialogues` read, dropped and wrote.

    ``rows_read == rows_kept + sum(rows_dropped.values())``; ``written`` maps each output file
    (``"std/train.txt"``...) to the conversations in it, ``std`` and ``mmi`` alike.
    """

    out_dir: Path
    files: int
    rows_read: int
    rows_kept: int
    #: rows dropped, by reason: missing (NA), duplicate, notice, empty (blank after cleaning),
    #: unknown_role (是否客服 neither 是 nor 否), bad_time (time_column not a time)
    rows_dropped: Mapping[str, int] = field(default_factory=dict)
    conversations: int = 0
    #: conversations left without an utterance: skipped (default) or written blank (seed)
    empty_conversations: int = 0
    written: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: the two writer processes' pipeline at the end (``PipelineStats``: std and mmi writers)
    writers: Any = None

    def __str__(self) -> str:
        dropped = ", ".join(f"{n:,} {why}" for why, n in sorted(self.rows_dropped.items())) or "none"
        files = ", ".join(f"{name} {n:,}" for name, n in self.written.items())
        return (f"{self.files} files, {self.rows_read:,} rows read, {self.rows_kept:,} kept "
                f"(dropped: {dropped}); {self.conversations:,} conversations "
                f"({self.empty_conversations:,} empty) -> {files} in {self.out_dir} "
                f"({self.seconds:.1f} s)")


def clean_dialogues(paths: Iterable[str | Path], out_dir: str | Path, *, compat: str | None = None,
                    val_size: int | float = DEFAULT_VAL_SIZE, time_column: str | None = None,
                    notices: Sequence[str] | None = None, workers: int | None = None,
                    progress: bool | None = None) -> DialogueReport:
    """Clean chat exports into ``out_dir/std/{train,val}.txt`` and ``out_dir/mmi/{train,val}.txt``.

    - ``paths``: .xlsx exports with the columns 坐席id, 客户微信id, 是否客服 (是/否), 消息内容; read in
      parallel, one file per worker (``workers``; default all CPUs; ``progress`` as ``mpkit.map``).
    - ``compat="seed"``: the article's algorithm exactly (see the module docstring).
    - Default mode: a conversation continued in another file stays one conversation; notices
      (``notices``, default :data:`DEFAULT_NOTICES`) are found inside messages after full- and
      half-width punctuation are made alike; ``\\r``, ``\\n`` and ``_x000D_`` are removed;
      blank and emoji-only messages dropped; numbers kept as their digits; rows sorted by
      ``time_column`` when given (e.g. ``"发送时间"``); no blank line at the end of a file.
    - ``val_size``: a count of conversations or a fraction (rounded up); 0 puts all in train. The
      default mode keeps at least one conversation for training; seed mode fails as sklearn would.
    """
    started = time.perf_counter()
    from .. import _api
    from ..engine.process import default_start_method
    from ._dialogue_write import write_splits

    if compat not in (None, "seed"):
        raise ValueError(f"compat must be None or 'seed', not {compat!r}")
    seed = compat == "seed"
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ValueError("no input files given. Fix: pass the .xlsx chat exports to clean.")
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"no such file: {', '.join(absent)}. Fix: check the paths.")
    val_count(val_size, 1, clamp=True)  # a bad val_size fails before any work
    if notices is None:
        notices = SEED_NOTICES if seed else DEFAULT_NOTICES
    elif isinstance(notices, str):
        raise TypeError("notices must be a list of texts, not one string. Fix: notices=[...].")
    jobs = [ReadJob(str(p), seed, None if seed else time_column, tuple(notices)) for p in paths]
    results = _api.map(read_export, jobs, workers=workers, chunksize=1, on_error="collect", progress=progress)
    if results.failures:
        raise DialogueInputError("; ".join(_reason(f.exception) for f in results.failures)
                                 + f" ({len(results.failures)} of {len(paths)} files failed; none was written)")
    files: list[FileRows] = list(results)
    conversations = _seed_conversations(files) if seed else _joined_conversations(files)
    n_val = val_count(val_size, len(conversations), clamp=not seed)
    train, val = split(len(conversations), n_val)
    splits = {"train": [conversations[i] for i in train], "val": [conversations[i] for i in val]}
    if not seed:
        splits = {name: [c for c in convs if c] for name, convs in splits.items()}
    out = Path(out_dir)
    written, writers = write_splits(splits, out, default_start_method(), seed=seed, progress=progress)
    dropped: dict[str, int] = {}
    for f in files:
        for why, n in f.dropped.items():
            dropped[why] = dropped.get(why, 0) + n
    rows_read = sum(f.rows for f in files)
    return DialogueReport(out, len(files), rows_read, rows_read - sum(dropped.values()), dropped,
                          len(conversations), sum(1 for c in conversations if not c), written,
                          time.perf_counter() - started, writers)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DialogueInputError) else f"{type(exc).__name__}: {exc}"


def _seed_conversations(files: list[FileRows]) -> list[list[str]]:
    return [lines for f in files for _key, lines in f.conversations]


def _joined_conversations(files: list[FileRows]) -> list[list[str]]:
    """Each key's messages from every file, in file order (then by time), merged into utterances."""
    messages: dict[tuple[str, str], list] = {}
    for f in files:
        for key, rows in f.conversations.items():
            messages.setdefault(key, []).extend(rows)
    out = []
    for key in sorted(messages):
        rows = sorted(messages[key], key=lambda r: r[0])  # stable: file order among equal times
        out.append(merge([r[1] for r in rows], [r[2] for r in rows]))
    return out


# ---- command line --------------------------------------------------------------------------------
def _val_size(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a count or a fraction: {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m mpkit dialogues``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="chat exports (.xlsx)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: std/train.txt, std/val.txt, mmi/train.txt, mmi/val.txt")
    parser.add_argument("--compat", choices=["seed"], default=None,
                        help="reproduce the article's cleaning byte for byte")
    parser.add_argument("--val-size", type=_val_size, default=DEFAULT_VAL_SIZE, metavar="N|F",
                        help=f"validation conversations: a count or a fraction (default {DEFAULT_VAL_SIZE}); "
                             "0 puts everything in train")
    parser.add_argument("--time-column", default=None, metavar="NAME",
                        help="sort each conversation by this column, e.g. 发送时间 (default mode)")
    parser.add_argument("--notice", action="append", default=[], metavar="TEXT",
                        help="another system-notice text to drop (repeatable; --compat seed matches whole messages)")
    parser.add_argument("-n", "--workers", type=int, default=None, metavar="WORKERS",
                        help="processes reading files (default: all CPUs)")


def run(args: argparse.Namespace) -> int:
    """Run ``python -m mpkit dialogues``; 0 on success, 1 on bad input."""
    notices = None
    if args.notice:
        notices = (SEED_NOTICES if args.compat else DEFAULT_NOTICES) + tuple(args.notice)
    try:
        report = clean_dialogues(args.inputs, args.out, compat=args.compat, val_size=args.val_size,
                                 time_column=args.time_column, notices=notices, workers=args.workers,
                                 progress=sys.stderr.isatty())
    except (DialogueInputError, FileNotFoundError, ValueError) as exc:
        print(f"mpkit dialogues: {exc}", file=sys.stderr)
        return 1
    print(f"mpkit dialogues: {report}")
    return 0
