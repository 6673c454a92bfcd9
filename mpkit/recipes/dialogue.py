"""Chat exports -> GPT2-chitchat training files: the article's dialogue cleaning, on mpkit.

    inputs: .xlsx files and folders (their .xlsx files; Excel's ~$ lock files left out, subfolders named)
        the output folder checked first (a file, a folder where a file goes, not writable: stop)
        the same file given twice (path or content) read once, with a warning
    exports ──mpkit.map, one file per worker──► read_export (_dialogue_read)
        every sheet with the chat columns (_workbook.read_sheets), drop NA / duplicate rows /
        notices, clean text (newlines, invisible characters, emoji), count what is dropped;
        a file that cannot be used comes back with its reason: skipped and named (strict: stop)
    main process
        join each (坐席id, 客户微信id) across files, sort by its time column (the one given, else
        发送时间 or another of TIME_COLUMNS found in the sheet), merge consecutive messages of one
        role into utterances (_dialogue_text.merge), split conversations into train / val
        (sklearn's train_test_split(random_state=1) rule)
    write_splits (_dialogue_write)
        std/train.txt, std/val.txt  (main)   ── reversed, bounded Queue ──► mmi/*.txt (2nd process)
        stopped half way (Ctrl-C, a writer's error): the four files removed, none left truncated

Output: one utterance a line (``坐席:...`` or ``客户:...``), a blank line between conversations.
The MMI files hold the same conversations with their utterances in reverse order. The report
accounts for every file (read, skipped and why, duplicate), sheet (read, skipped and why) and row
(kept, or dropped by reason).

``compat="seed"`` reproduces the article byte for byte (the first sheet only, its cells as openpyxl
reads them (_seed_sheet: calamine, with what it reads differently put back), its five
system messages matched as whole contents, grouping inside each file, ``\\r`` and ``_x000D_`` left
in, a blank line after every conversation). The default mode fixes what real exports break: see
:func:`clean_dialogues`.

Command line: ``python -m mpkit dialogues INPUT... --out DIR [--compat seed] [--val-size N|F]
[--time-column 发送时间] [--notice TEXT]... [--strict] [-n WORKERS]``.
"""
from __future__ import annotations

from typing import Any

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..engine._errors import MpkitWarning
from ._dialogue_read import TIME_COLUMNS, UNTIMED_EXAMPLES, DialogueInputError, FileRows, ReadJob, read_export
from ._dialogue_text import DEFAULT_NOTICES, SEED_NOTICES, merge, split, val_count
from ._workbook import list_folder, once_each, other_format_note, subfolder_note

__all__ = ["DEFAULT_NOTICES", "SEED_NOTICES", "TIME_COLUMNS", "DialogueInputError", "DialogueOutputError",
           "DialogueReport", "DialogueWarning", "add_arguments", "clean_dialogues", "run"]

#: The default share of conversations kept for validation.
DEFAULT_VAL_SIZE = 0.1
#: The files a run writes, under ``out_dir``.
OUTPUTS = ("std/train.txt", "std/val.txt", "mmi/train.txt", "mmi/val.txt")


class DialogueOutputError(ValueError):
    """The output folder cannot take the files: said before any input is read."""


class DialogueWarning(MpkitWarning):
    """An input given twice (the same path, or the same content under another name): read once, so
    that its messages are not doubled."""


@dataclass(frozen=True)
class DialogueReport:
    """What a run of :func:`clean_dialogues` read, dropped and wrote.

    ``rows_read == rows_kept + sum(rows_dropped.values())``; ``written`` maps each output file
    (``"std/train.txt"``...) to the conversations in it, ``std`` and ``mmi`` alike.
    """

    out_dir: Path
    #: files read
    files: int
    rows_read: int
    rows_kept: int
    #: rows dropped, by reason: missing (a needed cell empty), duplicate, notice, empty (blank after
    #: cleaning), blank (every cell empty), unknown_role (是否客服 neither 是 nor 否)
    rows_dropped: Mapping[str, int] = field(default_factory=dict)
    conversations: int = 0
    #: conversations left without an utterance: skipped (default) or written blank (seed)
    empty_conversations: int = 0
    written: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: the two writer processes' pipeline at the end (``PipelineStats``: std and mmi writers)
    writers: Any = None
    #: (file, why) of each input left out: unreadable, missing columns, lock file, no such file
    files_skipped: tuple[tuple[str, str], ...] = ()
    #: (file, what it repeats) of each input given twice (same path or same content): read once
    duplicates: tuple[tuple[str, str], ...] = ()
    #: (file, sheet, rows) read and (file, sheet, why) left out
    sheets_read: tuple[tuple[str, str, int], ...] = ()
    sheets_skipped: tuple[tuple[str, str, str], ...] = ()
    #: the column conversations were sorted by (None: none found, file order kept)
    time_column: str | None = None
    #: conversations whose messages came out of time order (across files or within one) and were sorted
    reordered: int = 0
    #: conversations left in file order because some of their messages have no time (a sheet
    #: without the column, or a cell empty or in a form not understood)
    unsorted: int = 0
    #: messages kept without a readable time, and a few of those values as found
    untimed: int = 0
    untimed_examples: tuple[str, ...] = ()
    #: formula cells saved without a value (read as empty: rows dropped as "missing")
    uncached_formulas: int = 0
    #: (file, why) of each file read with openpyxl: python-calamine missing, or failed on it
    read_with_openpyxl: tuple[tuple[str, str], ...] = ()
    #: None (the default mode) or "seed"
    compat: str | None = None

    def __str__(self) -> str:
        dropped = ", ".join(f"{n:,} {why}" for why, n in sorted(self.rows_dropped.items())) or "none"
        files = ", ".join(f"{name} {n:,}" for name, n in self.written.items())
        lines = [f"{self.files} files, {self.rows_read:,} rows read, {self.rows_kept:,} kept "
                 f"(dropped: {dropped}); {self.conversations:,} conversations "
                 f"({self.empty_conversations:,} empty) -> {files} in {self.out_dir} "
                 f"({self.seconds:.1f} s)"]
        if self.time_column:
            lines.append(f"  sorted by the time column {self.time_column}; {self.reordered:,} conversations "
                         "had messages out of time order (across files or within one)"
                         + (f"; {self.unsorted:,} kept in file order (a sheet without the column, or "
                            "messages without a readable time)" if self.unsorted else ""))
            if self.untimed:
                lines.append(f"  {self.untimed:,} messages without a readable {self.time_column} (e.g. "
                             f"{', '.join(self.untimed_examples)}) were kept, their conversations in file order. "
                             "Fix: write the send times as 2024-03-01 09:00:00")
        elif self.compat is None:
            lines.append(f"  no time column ({', '.join(TIME_COLUMNS)}): each conversation keeps the "
                         "files' order. Fix: --time-column NAME if the send time has another name")
        many = len({f for f, _s, _n in self.sheets_read}) < len(self.sheets_read)
        if many or self.sheets_skipped:
            lines += [f"  read {f} sheet {s!r}: {n:,} rows" for f, s, n in self.sheets_read]
        lines += [f"  sheet left out: {f} {s!r}: {why}" for f, s, why in self.sheets_skipped]
        if self.uncached_formulas:
            lines.append(f"  {self.uncached_formulas:,} formula cells have no saved value (read as empty). "
                         "Fix: open and save those files in Excel to store the values")
        lines += [f"  read with openpyxl: {f} ({why})" for f, why in self.read_with_openpyxl]
        lines += [f"  DUPLICATE {f}: {what}; read once" for f, what in self.duplicates]
        lines += [f"  SKIPPED {f}: {why}" for f, why in self.files_skipped]
        return "\n".join(lines)


def clean_dialogues(paths: Iterable[str | Path] | str | Path, out_dir: str | Path, *, compat: str | None = None,
                    val_size: int | float = DEFAULT_VAL_SIZE, time_column: str | None = None,
                    notices: Sequence[str] | None = None, strict: bool = False, workers: int | None = None,
                    progress: bool | None = None) -> DialogueReport:
    """Clean chat exports into ``out_dir/std/{train,val}.txt`` and ``out_dir/mmi/{train,val}.txt``.

    - ``paths``: .xlsx exports with the columns 坐席id, 客户微信id, 是否客服 (是/否), 消息内容 (headers
      may have stray spaces), or folders of them; every sheet with these columns is read. Read in
      parallel, one file per worker (``workers``; default all CPUs; ``progress`` as ``mpkit.map``).
      A file that cannot be read (or lacks the columns, or is an Excel ``~$`` lock file) is skipped
      and named in the report; ``strict=True`` stops the run instead, before anything is written.
      The same file given twice (by path or content) is read once, with a :class:`DialogueWarning`.
    - The output folder is checked before any reading: :class:`DialogueOutputError` if it cannot
      take the files.
    - ``compat="seed"``: the article's algorithm exactly (see the module docstring).
    - Default mode: a conversation continued in another file stays one conversation, its
      messages sorted by ``time_column`` (default: the first of :data:`TIME_COLUMNS` the sheet has;
      the report says which one, and how many conversations were out of order); notices
      (``notices``, default :data:`DEFAULT_NOTICES`) are found inside messages after full- and
      half-width punctuation are made alike; ``\\r``, ``\\n``, ``_x000D_`` and invisible characters
      (zero-width spaces and joiners, byte-order marks) are removed; blank and emoji-only messages
      dropped; numbers kept as their digits; no blank line at the end of a file.
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
    val_count(val_size, 1, clamp=True)  # a bad val_size fails before any work
    if notices is None:
        notices = SEED_NOTICES if seed else DEFAULT_NOTICES
    elif isinstance(notices, str):
        raise TypeError("notices must be a list of texts, not one string. Fix: notices=[...].")
    out = Path(out_dir)
    check_output(out)
    inputs = collect_inputs([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    if strict and inputs.skipped:
        raise DialogueInputError("; ".join(f"{f}: {why}" for f, why in inputs.skipped)
                                 + " (strict: nothing was read or written)")
    if not inputs.files and not inputs.skipped:
        raise ValueError("no input files given. Fix: pass the .xlsx chat exports (or their folders) to clean.")
    jobs = [ReadJob(str(p), seed, None if seed else time_column, tuple(notices)) for p in inputs.files]
    results = _api.map(read_export, jobs, workers=workers, chunksize=1, on_error="collect",
                       progress=progress) if jobs else []
    read: list[FileRows] = []
    skipped = list(inputs.skipped)
    for f in results:
        if f.skipped:
            skipped.append((f.name, f.skipped))
        else:
            read.append(f)
    for failure in getattr(results, "failures", ()):  # the reader itself failed (or its process died)
        exc = failure.exception
        skipped.append((Path(failure.item.path).name, f"reading it failed ({type(exc).__name__}: {exc}). "
                                                      "Fix: open it in Excel and save it again, or leave it out."))
    if strict and skipped:
        raise DialogueInputError("; ".join(f"{f}: {why}" for f, why in skipped)
                                 + f" ({len(skipped)} of {len(jobs) + len(inputs.skipped)} inputs; "
                                 "strict: nothing was written)")
    if not read:
        raise DialogueInputError("no input could be read: " + "; ".join(f"{f}: {why}" for f, why in skipped))
    if seed:
        conversations, order = _seed_conversations(read), (None, 0, 0)
    else:
        conversations, order = _joined_conversations(read)
    n_val = val_count(val_size, len(conversations), clamp=not seed)
    train, val = split(len(conversations), n_val)
    splits = {"train": [conversations[i] for i in train], "val": [conversations[i] for i in val]}
    if not seed:
        splits = {name: [c for c in convs if c] for name, convs in splits.items()}
    try:
        written, writers = write_splits(splits, out, default_start_method(), seed=seed, progress=progress)
    except BaseException as exc:  # an interrupt (or a writer that failed) half way: no truncated file
        removed = _remove_outputs(out)
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped by an error"
        exc.add_note(f"mpkit dialogues: {what} while writing; the unfinished files were removed "
                     f"({', '.join(removed) or 'none yet'}), so that no truncated training file is left.")
        raise
    dropped: dict[str, int] = {}
    for f in read:
        for why, n in f.dropped.items():
            dropped[why] = dropped.get(why, 0) + n
    rows_read = sum(f.rows for f in read)
    return DialogueReport(
        out, len(read), rows_read, rows_read - sum(dropped.values()), dropped,
        len(conversations), sum(1 for c in conversations if not c), written,
        time.perf_counter() - started, writers,
        files_skipped=tuple(skipped), duplicates=inputs.duplicates,
        sheets_read=tuple((f.name, s, n) for f in read for s, n in f.sheets),
        sheets_skipped=tuple((f.name, s, why) for f in read for s, why in f.sheets_skipped),
        time_column=order[0], reordered=order[1], unsorted=order[2],
        untimed=sum(f.untimed for f in read),
        untimed_examples=tuple(dict.fromkeys(e for f in read for e in f.untimed_examples))[:UNTIMED_EXAMPLES],
        uncached_formulas=sum(f.uncached_formulas for f in read),
        read_with_openpyxl=tuple((f.name, f.fallback or "python-calamine is not installed")
                                 for f in read if f.engine == "openpyxl"),  # seed mode sets no engine
        compat=compat)


def _remove_outputs(out: Path) -> list[str]:
    """Remove this run's output files (each one begun, so none whole); the names removed."""
    removed = []
    for name in OUTPUTS:
        try:
            (out / name).unlink()
            removed.append(name)
        except OSError:
            pass  # missing, or it cannot be removed (left): the note names only those removed
    return removed


# ---- before reading: the output folder, the inputs ------------------------------------------------
def check_output(out: Path) -> None:
    """Fail with one line if ``out`` cannot take the output files; leave no trace on disk."""
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise DialogueOutputError(f"the output folder {out} cannot be made: {existing} is a file, not a folder. "
                                  "Fix: give --out a folder (it is created if missing), or move the file.")
    for name in ("std", "mmi", *OUTPUTS):
        target = out / name
        if "/" not in name and target.exists() and not target.is_dir():
            raise DialogueOutputError(f"{target} is a file, not a folder, where the {name} files go. "
                                      "Fix: remove it, or choose another --out.")
        if "/" in name and target.is_dir():
            raise DialogueOutputError(f"the output file {target} is a folder. Fix: remove it, or choose "
                                      "another --out.")
    created = []
    try:
        for folder in reversed([out, *out.parents][:len(out.parts) - len(existing.parts)]):
            folder.mkdir()
            created.append(folder)
        with tempfile.TemporaryFile(dir=out):
            pass
        for name in OUTPUTS:
            if (out / name).exists() and not os.access(out / name, os.W_OK):
                raise PermissionError(13, "Permission denied", str(out / name))
    except OSError as exc:
        raise DialogueOutputError(f"cannot write to {out} ({exc.strerror or exc}). Fix: choose a folder you "
                                  "can write to for --out.") from None
    finally:
        for folder in reversed(created):
            folder.rmdir()


@dataclass(frozen=True)
class Inputs:
    files: list[Path]
    skipped: tuple[tuple[str, str], ...]
    duplicates: tuple[tuple[str, str], ...]


def collect_inputs(items: Iterable[str | os.PathLike]) -> Inputs:
    """Files given, and each folder's .xlsx files (any letter case, sorted); lock files, missing paths
    and subfolders holding .xlsx files (a folder is read one level deep) as skipped; the
    same file given twice (same path, or same bytes) kept once, with a :class:`DialogueWarning`."""
    candidates, skipped = [], []
    items = list(items)
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_folder(p, items)  # a subfolder given as an input too is not named
            skipped += [(f.name, "an Excel lock file (Excel writes one beside each workbook it has open); left out")
                        for f in found.lock_files]
            skipped += [(str(sub), subfolder_note(sub, n)) for sub, n in found.subfolders]
            skipped += [(f.name, other_format_note(f)) for f in found.others]
            candidates += found.workbooks
        elif p.exists():
            candidates.append(p)
        else:
            skipped.append((str(p), "no such file or folder. Fix: check the path."))
    files, repeated = once_each(candidates)
    duplicates = [(str(f), what) for f, what in repeated]
    for f, what in duplicates:
        warnings.warn(f"{f}: {what}: read once, so that its messages are not doubled. Fix: give each "
                      "export once.", DialogueWarning, stacklevel=3)
    return Inputs(files, tuple(skipped), tuple(duplicates))


def _seed_conversations(files: list[FileRows]) -> list[list[str]]:
    return [lines for f in files for lines in f.conversations]


def _joined_conversations(files: list[FileRows]) -> tuple[list[list[str]], tuple[str | None, int, int]]:
    """Each key's messages from every file, in file order, sorted by time where every message has
    one; merged into utterances. Also (time column(s) used, conversations reordered, left unsorted).
    The files' messages are let go of as they are merged."""
    messages: dict[tuple[str, str], tuple[list, list, list]] = {}
    for f in files:
        for key, piece in f.conversations.items():
            entry = messages.get(key)
            if entry is None:
                messages[key] = piece
            else:
                for whole, part in zip(entry, piece):
                    whole.extend(part)
        f.conversations = None
    reordered = unsorted = 0
    out = []
    for key in sorted(messages):
        times, roles, texts = messages.pop(key)
        if None in times:
            unsorted += any(t is not None for t in times)
        elif any(a > b for a, b in zip(times, times[1:])):
            reordered += 1
            order = sorted(range(len(times)), key=times.__getitem__)  # stable: file order among equal times
            roles, texts = [roles[i] for i in order], [texts[i] for i in order]
        out.append(merge(roles, texts))
    names = list(dict.fromkeys(c for f in files for c in f.time_columns if c))
    return out, (", ".join(names) or None, reordered, unsorted)


# ---- command line --------------------------------------------------------------------------------
def _val_size(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a count or a fraction: {text!r}. Fix: e.g. --val-size 1000 "
                                             "or --val-size 0.1") from None
        return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m mpkit dialogues``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="chat exports (.xlsx), or folders (their *.xlsx)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: std/train.txt, std/val.txt, mmi/train.txt, mmi/val.txt")
    parser.add_argument("--compat", choices=["seed"], default=None,
                        help="reproduce the article's cleaning byte for byte")
    parser.add_argument("--val-size", type=_val_size, default=DEFAULT_VAL_SIZE, metavar="N|F",
                        help=f"validation conversations: a count or a fraction (default {DEFAULT_VAL_SIZE}); "
                             "0 puts everything in train")
    parser.add_argument("--time-column", default=None, metavar="NAME",
                        help="sort each conversation by this column (default mode; default: the first of "
                             + ", ".join(TIME_COLUMNS) + " a sheet has)")
    parser.add_argument("--notice", action="append", default=[], metavar="TEXT",
                        help="another system-notice text to drop (repeatable; --compat seed matches whole messages)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at a bad input (unreadable, missing columns, lock file) instead of skipping it")
    parser.add_argument("-n", "--workers", type=int, default=None, metavar="WORKERS",
                        help="processes reading files (default: all CPUs)")


def run(args: argparse.Namespace) -> int:
    """Run ``python -m mpkit dialogues``; 0 if every input was read, 1 if some were skipped or on bad
    input or output (one line on stderr, before anything is read), 130 on Ctrl-C (one line saying
    what is left on disk)."""
    notices = None
    if args.notice:
        notices = (SEED_NOTICES if args.compat else DEFAULT_NOTICES) + tuple(args.notice)
    try:
        with warnings.catch_warnings():  # the report names each duplicate input
            warnings.simplefilter("ignore", DialogueWarning)
            report = clean_dialogues(args.inputs, args.out, compat=args.compat, val_size=args.val_size,
                                     time_column=args.time_column, notices=notices, strict=args.strict,
                                     workers=args.workers, progress=sys.stderr.isatty())
    except (DialogueInputError, DialogueOutputError, ValueError) as exc:
        print(f"mpkit dialogues: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, what is left on disk (the note says it)
        notes = [n for n in getattr(exc, "__notes__", ()) if n.startswith("mpkit dialogues:")]
        print(notes[0] if notes else "mpkit dialogues: interrupted while reading; nothing was written.",
              file=sys.stderr)
        return 130
    print(f"mpkit dialogues: {report}")
    return 1 if report.files_skipped else 0
