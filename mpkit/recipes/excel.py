"""Parallel extraction of chat exports: the article's "使用进程池快速抽取数据", on mpkit.

    out_dir checked first (a folder, writable, empty unless overwrite) ─► OutputError before any read
    paths, each file once (a path or content given again: skipped, named) ─►
          mpkit.imap(_read_file, one file per task, in input order, progress bar)
               │  in a worker:  _workbook.read_sheets: every sheet with the columns (calamine;
               │                openpyxl without it or when it fails on the file) → 消息内容 to
               │                text → drop notice rows → flag cells over 32,767 characters
               ▼
             FileResult(path, rows | None, rows_read, rows_dropped, sheets read / skipped,
                        formulas without a value, long cells, engine, reason)
               │  reason set ─► skipped, named in the report  (strict=True: ExtractError)
               ▼
             every `segment` input files ─► _excel_write.SegmentWriter ─► out_dir/extract_<first>_<last>.<fmt>
               │  xlsx: each file's rows streamed in as it arrives (Sheet2... past 1,048,575 rows);
               │        rows with an over-long cell ─► extract_<first>_<last>.long_cells.csv
               ▼
             stopped half way (Ctrl-C, an error): the unfinished segment removed, the whole ones
               named in a note on the exception, no manifest
             out_dir/manifest.json (files written, rows each) and
             ExtractReport(files and sheets read / skipped, rows read = rows written + notices
                           dropped, formulas without a value, long rows, outputs)

    from mpkit.recipes import excel, SAMPLE_DATA
    report = excel.extract(sorted(SAMPLE_DATA.glob("*.xlsx")), "out", segment=25)
    print(report)

Command line: ``python -m mpkit excel INPUT... --out DIR`` (see :func:`add_arguments`).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from ._dialogue_text import notice_pattern
from ._excel_write import OutputFile, SegmentWriter
from ._workbook import WorkbookError, list_folder, once_each, other_format_note, read_sheets, subfolder_note
from ._xlsx import MAX_CELL_CHARS, MAX_ROWS, too_long

#: Columns every chat export must have, in output order.
COLUMNS = ("坐席id", "客户微信id", "是否客服", "消息内容", "发送时间")
#: The system notices the article filtered out, verbatim.
ARTICLE_NOTICES = ("我通过了好友请求,现在你俩可以开始聊天了", "我通过了你的朋友验证请求,现在我们可以开始聊天了",
                   "已通过你的朋友验证请求,现在可以开始聊天了", "不支持此消息,请在手机上查看", "微信红包")
#: The article's list plus variants WeChat exports also carry. Matched as substrings after
#: normalisation (full-width punctuation to half-width, whitespace removed), those of
#: WHOLE_MESSAGE_NOTICES as the whole message; extend it freely:
#: ``notices=DEFAULT_NOTICES + ("my notice",)``.
DEFAULT_NOTICES = ARTICLE_NOTICES + (
    "现在可以开始聊天了", "收到红包,请在手机上查看", "收到了一个表情,请在手机上查看", "以上是打招呼的内容",
    "撤回了一条消息", "微信转账")
FORMATS = ("xlsx", "parquet", "csv")
ENGINES = ("auto", "calamine", "openpyxl")
#: Data rows one .xlsx sheet holds; a bigger segment continues on Sheet2, Sheet3, ...
XLSX_MAX_ROWS = MAX_ROWS
_PUNCT = str.maketrans({"。": ".", "、": ",", "【": "[", "】": "]", "“": '"', "”": '"', "‘": "'", "’": "'"})
_SPACE = re.compile(r"\s+")


class ExtractError(ValueError):
    """A file could not be extracted and ``strict=True`` was asked."""


def normalize(text: str) -> str:
    """Text as notices are compared: NFKC (，→, ！→! ...), Chinese full stops and quotes, no whitespace."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", text).translate(_PUNCT))


@dataclass(frozen=True)
class FileResult:
    """What a worker did with one file: the kept rows, or ``reason`` why it was skipped."""
    path: str
    rows: list | None = None  # the kept rows, each a tuple in COLUMNS order; None when skipped
    rows_read: int = 0
    rows_dropped: int = 0
    engine: str = ""
    reason: str = ""
    sheets: tuple[tuple[str, int], ...] = ()  # (sheet, rows read) of each sheet read
    sheets_skipped: tuple[tuple[str, str], ...] = ()  # (sheet, why)
    uncached_formulas: int = 0  # formula cells saved without a value (read as empty)
    long_cells: tuple[tuple[int, str, int], ...] = ()  # (index in rows, sheet, Excel row): a cell > 32,767 chars
    fallback: str = ""  # why calamine failed, when openpyxl read the file after it
    blank_rows: int = 0  # rows with no cell at all, between the header and the last row: not rows read


@dataclass(frozen=True)
class ExtractReport:
    """Every input file is in ``files_read`` or ``files_skipped``; rows_read = rows_written + rows_dropped.

    ``rows_written`` counts every row in ``written``, the side files of rows with a cell too long for
    .xlsx included; ``manifest`` lists the same files with their rows."""
    files_read: tuple[str, ...]
    files_skipped: tuple[tuple[str, str], ...]  # (path, reason)
    rows_read: int
    rows_dropped: int
    rows_written: int
    outputs: tuple[Path, ...]  # the segment files (not the side files)
    files_fallback: tuple[str, ...] = ()  # read by openpyxl after calamine failed on them
    sheets_read: tuple[tuple[str, str, int], ...] = ()  # (path, sheet, rows read)
    sheets_skipped: tuple[tuple[str, str, str], ...] = ()  # (path, sheet, why), in files read
    uncached_formulas: tuple[tuple[str, int], ...] = ()  # (path, formula cells without a saved value)
    long_rows: tuple[tuple[str, str, int, Path], ...] = ()  # (path, sheet, Excel row, side file)
    cells_cleaned: int = 0  # .xlsx text cells that lost control characters .xlsx cannot hold
    written: tuple[OutputFile, ...] = ()
    manifest: Path | None = None
    without_calamine: bool = False  # python-calamine is not installed: openpyxl read every file
    blank_rows: int = 0  # empty rows inside the sheets read (no cell at all), left out

    def __str__(self) -> str:
        lines = [(f"mpkit excel: {len(self.files_read)} file(s) read, {len(self.files_skipped)} skipped; "
                 f"{len(self.sheets_read)} sheet(s) read, {len(self.sheets_skipped)} skipped; "
                 f"{self.rows_read:,} rows read, {self.rows_dropped:,} notices dropped, "
                 f"{self.rows_written:,} rows written to {len(self.written or self.outputs)} file(s)")]
        if self.written:
            lines += [f"  wrote {f.path} ({f.rows:,} rows" + (f" on {f.sheets} sheets)" if f.sheets > 1 else ")")
                      for f in self.written]
        else:
            lines += [f"  wrote {p}" for p in self.outputs]
        if self.manifest is not None:
            lines.append(f"  manifest: {self.manifest}")
        if self.blank_rows:
            lines.append(f"  {self.blank_rows:,} empty row(s) inside the sheets read were left out")
        per_file: dict[str, list[str]] = {}
        for p, s, n in self.sheets_read:
            per_file.setdefault(p, []).append(f"{s} ({n:,} rows)")
        lines += [f"  read {len(sheets)} sheets of {p}: {', '.join(sheets)}" for p, sheets in per_file.items()
                  if len(sheets) > 1]
        lines += [f"  sheet {s!r} of {p} not read: {why}" for p, s, why in self.sheets_skipped]
        if self.without_calamine:
            lines.append("  python-calamine is not installed: the files were read with openpyxl (3-4x slower). "
                         "Fix: pip install python-calamine")
        lines += [f"  read with openpyxl (calamine failed): {p}" for p in self.files_fallback]
        lines += [f"  {n:,} formula cell(s) in {p} have no saved value and were read as empty. "
                  "Fix: open the file in Excel and save it, so that the values are stored." for p, n in
                  self.uncached_formulas]
        lines += [f"  row {r} of sheet {s!r} in {p} has a cell over {MAX_CELL_CHARS:,} characters (.xlsx "
                  f"cannot hold it): the whole row is in {side}" for p, s, r, side in self.long_rows]
        if self.cells_cleaned:
            lines.append(f"  {self.cells_cleaned:,} text cell(s) held control characters that .xlsx cannot "
                         "store; those characters were removed. Fix: --format parquet or csv keeps them.")
        lines += [f"  SKIPPED {p}: {reason}" for p, reason in self.files_skipped]
        return "\n".join(lines)


class OutputError(ValueError):
    """The output folder cannot take this run's files; found before any input is read."""


# ---- per file: runs in the workers, imported there by name -----------------------------------------
def _read_file(task: tuple[str, tuple[str, ...], str]) -> FileResult:
    path, notices, engine = task
    try:
        book = read_sheets(path, COLUMNS, engine)
    except WorkbookError as exc:
        return FileResult(path, reason=exc.reason)
    if not book.sheets:
        if len(book.skipped) == 1:  # the usual export: one sheet
            why = book.skipped[0][1]
        else:
            why = (f"no sheet has all the columns {', '.join(COLUMNS)}: "
                   + "; ".join(f"sheet {name!r}: {reason}" for name, reason in book.skipped))
        return FileResult(path, engine=book.engine,
                          reason=f"{why}. Fix: export with these columns, or rename them.")
    kept, long_cells, read, dropped = [], [], 0, 0
    notice = _notice_pattern(notices).search
    content = COLUMNS.index("消息内容")
    for sheet in book.sheets:
        pick = itemgetter(*(sheet.column(c) for c in COLUMNS))
        read += len(sheet.rows)
        first, at = len(kept), []  # this sheet's rows in kept, and where each was in the sheet
        for i, row in enumerate(sheet.rows):
            row = pick(row)
            text = row[content]
            if text.__class__ is not str and text is not None:  # a number typed as a number stays text
                row = (*row[:content], str(text), *row[content + 1:])
                text = row[content]
            if text is not None and notice(normalize(text)):
                dropped += 1
                continue
            kept.append(row)
            at.append(i)
        long = sorted({k for j in range(len(COLUMNS)) for k, v in enumerate(map(itemgetter(j), kept[first:]), first)
                       if v.__class__ is str and len(v) > MAX_CELL_CHARS // 2 and too_long(v)})
        long_cells += [(k, sheet.name, sheet.excel_row(at[k - first])) for k in long]
    return FileResult(path, kept, read, dropped, book.engine,
                      sheets=tuple((s.name, len(s.rows)) for s in book.sheets), sheets_skipped=book.skipped,
                      uncached_formulas=book.uncached_formulas, long_cells=tuple(long_cells),
                      fallback=book.fallback, blank_rows=sum(s.blank_rows for s in book.sheets))


#: Notices that are also phrases people say ("可以微信转账吗?"): they match only a message that is
#: nothing else (punctuation and spaces around it aside). Other notices, the user's included,
#: match inside a message.
WHOLE_MESSAGE_NOTICES = ("微信红包", "微信转账")


@functools.lru_cache(maxsize=8)
def _notice_pattern(notices: tuple[str, ...]) -> re.Pattern:
    """One expression for ``notices`` (already :func:`normalize`-d), those of WHOLE_MESSAGE_NOTICES
    as the whole message: ~2.5x faster than testing each notice in turn."""
    return notice_pattern(notices, [normalize(n) for n in WHOLE_MESSAGE_NOTICES], normalised=True)


def _has_notice(text: str, notices: Iterable[str]) -> bool:
    """True if the normalised ``text`` holds one of ``notices``."""
    return _notice_pattern(tuple(notices)).search(text) is not None


# ---- the output folder, checked before anything is read ------------------------------------------
MANIFEST = "manifest.json"
#: What a run writes: its segments, their side files of over-long rows, the manifest. With
#: overwrite=True exactly these are removed first (a manifest only if a run of this recipe wrote
#: it: another one stops the run); any other file in the folder is left alone.
_OUR_FILES = re.compile(r"extract_\d+_\d+(\.long_cells\.csv|\.(xlsx|parquet|csv))|" + re.escape(MANIFEST))


def _segment_names(count: int, segment: int, fmt: str) -> list[str]:
    width = len(str(max(count - 1, 0)))
    return [f"extract_{first:0{width}d}_{min(first + segment, count) - 1:0{width}d}.{fmt}"
            for first in range(0, count, segment)]


def _prepare_out(out: Path, names: list[str], overwrite: bool) -> None:
    """Make ``out`` ready for this run, or raise OutputError saying what is wrong and what to do."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"the output folder {out} is a file. Fix: give --out a folder (new or empty).")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".mpkit-write-check-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write in the output folder {out} ({exc.strerror or exc}). "
                          "Fix: give --out a folder you can write to.") from None
    present = sorted(p.name for p in out.iterdir())
    if present and not overwrite:
        shown = ", ".join(present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
        raise OutputError(f"the output folder {out} is not empty ({shown}): this run's files would mix "
                          "with what is there. Fix: give a new or empty folder, or pass --overwrite "
                          "(overwrite=True) to replace a previous run's outputs.")
    manifest = out / MANIFEST
    if manifest.is_file() and not _is_our_manifest(manifest):
        raise OutputError(f"{manifest} was not written by mpkit excel, and this run writes its own "
                          "manifest there. Fix: move that file away, or give another --out.")
    for name in present:
        if _OUR_FILES.fullmatch(name) and (out / name).is_file():
            (out / name).unlink()
    blocked = [n for n in names if (out / n).exists()]
    if blocked:
        raise OutputError(f"{out / blocked[0]} is a folder, where this run writes a file. "
                          "Fix: move it away, or give another --out.")


def _is_our_manifest(path: Path) -> bool:
    """True if ``path`` is a manifest a run of this recipe wrote (its "tool" says so)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("tool") == "mpkit excel"
    except (OSError, ValueError, AttributeError):
        return False


# ---- the run ---------------------------------------------------------------------------------------
def _once_each(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``paths`` without a file given again (the same path, or the same bytes under another name),
    so that its rows are not written twice; and each one left out, with why."""
    kept, repeated = once_each(paths)
    return kept, [(p, f"{what}: read once, so that its rows are not doubled. Fix: give each export once.")
                  for p, what in repeated]


def extract(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *, segment: int = 25,
            fmt: str = "xlsx", notices: Sequence[str] = DEFAULT_NOTICES, engine: str = "calamine",
            strict: bool = False, workers: int | None = None, progress: bool | None = None,
            overwrite: bool = False) -> ExtractReport:
    """Read chat exports in parallel, drop system-notice rows, save every ``segment`` files as one file.

    - ``paths``: the .xlsx files, in the order segments are cut (sort them for a stable split).
      A file given again (the same path, or the same content under another name) is read once and
      named in ``files_skipped``.
      Every sheet that has the columns is read, in workbook order; the others are named in the report.
    - ``out_dir``: a new or empty folder (``overwrite=True``: a previous run's files in it are replaced;
      other files are left alone). Checked before any input is read. ``manifest.json`` in it lists
      the files written and their rows.
    - ``fmt``: ``"xlsx"`` (as the article; 1,048,575 rows a sheet, then Sheet2, ...), ``"parquet"``
      or ``"csv"`` (UTF-8 with BOM, so Excel shows the Chinese). A row with a cell over 32,767
      characters cannot go into .xlsx whole: it is written to ``<segment>.long_cells.csv`` instead
      and named in the report.
    - ``notices``: texts whose rows are dropped, matched as substrings after :func:`normalize`
      (those of :data:`WHOLE_MESSAGE_NOTICES`, phrases people also say, as the whole message).
    - ``engine``: ``"calamine"`` (fast; openpyxl when it fails on a file, or for every file when
      python-calamine is not installed, said in the report), ``"openpyxl"``, or ``"auto"`` (the
      same as ``"calamine"``).
    - ``strict``: raise :class:`ExtractError` naming the first bad file instead of skipping it.
    - ``workers`` / ``progress``: as for :func:`mpkit.map` (a progress bar over files, then one
      over the rows being written).
    """
    import mpkit
    from ..widgets._progress import in_ipython

    paths = [str(p) for p in paths]
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not supported. Fix: use one of {', '.join(FORMATS)}.")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not supported. Fix: use one of {', '.join(ENGINES)}.")
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
        raise ValueError(f"segment={segment!r}: it is the number of input files per output file. "
                         "Fix: give a whole number of at least 1.")
    wanted = tuple(n for n in (normalize(str(n)) for n in notices) if n)
    paths, duplicates = _once_each(paths)
    out = Path(out_dir)
    names = _segment_names(len(paths), segment, fmt)
    _prepare_out(out, names, overwrite)
    show = in_ipython() if progress is None else progress

    read, skipped, fallback, outputs, written = [], duplicates, [], [], []
    sheets_read, sheets_skipped, uncached, long_rows, long_rows_here = [], [], [], [], []
    segment_out = None  # the SegmentWriter of the segment being filled
    rows_read = rows_dropped = rows_written = cleaned = 0
    no_calamine, blank_rows = False, 0
    reader = "openpyxl" if engine == "openpyxl" else "auto"  # auto: openpyxl when calamine is not installed
    results = mpkit.imap(_read_file, [(p, wanted, reader) for p in paths], workers=workers, chunksize=1,
                         on_error="collect", progress=progress)
    try:
        for i, res in enumerate(results):
            if isinstance(res, mpkit.Failure):
                res = FileResult(paths[res.index], reason=f"the worker failed: {type(res.exception).__name__}: "
                                                          f"{res.exception}. Fix: check the file; rerun it alone.")
            if res.reason:
                if strict:
                    raise ExtractError(f"{res.path}: {res.reason} (strict=True stops at the first bad file; "
                                       "without it the file is skipped and named in the report.)")
                skipped.append((res.path, res.reason))
            else:
                read.append(res.path)
                if res.fallback:
                    fallback.append(res.path)
                elif res.engine == "openpyxl" and engine != "openpyxl":
                    no_calamine = True
                rows_read += res.rows_read
                rows_dropped += res.rows_dropped
                blank_rows += res.blank_rows
                sheets_read += [(res.path, s, n) for s, n in res.sheets]
                sheets_skipped += [(res.path, s, why) for s, why in res.sheets_skipped]
                if res.uncached_formulas:
                    uncached.append((res.path, res.uncached_formulas))
                rows, long = res.rows, []
                if fmt == "xlsx" and res.long_cells:
                    at = {k for k, _, _ in res.long_cells}
                    long = [rows[k] for k, _, _ in res.long_cells]
                    long_rows_here += [(res.path, s, r) for _, s, r in res.long_cells]
                    rows = [row for k, row in enumerate(rows) if k not in at]
                if segment_out is None:
                    segment_out = SegmentWriter(out / names[i // segment], fmt, COLUMNS, XLSX_MAX_ROWS, show)
                segment_out.add(rows, long)
                del rows, long, res  # this file's rows are in the .xlsx now: let them go
            if ((i + 1) % segment == 0 or i + 1 == len(paths)) and segment_out is not None:
                files = segment_out.close()
                cleaned += segment_out.cleaned
                rows_written += sum(f.rows for f in files)
                written += files
                outputs.append(segment_out.path)
                long_rows += [(p, s, r, segment_out.side_path) for p, s, r in long_rows_here]
                segment_out, long_rows_here = None, []
    except BaseException as exc:  # strict, an interrupt, a full disk: say what is left on disk
        if not isinstance(exc, ExtractError):
            whole = ", ".join(f.path.name for f in written) or "none"
            exc.add_note(f"mpkit excel: {'interrupted' if isinstance(exc, KeyboardInterrupt) else 'stopped'} "
                         f"after {len(outputs)} of {len(names)} segment(s); whole in {out}: {whole}; the "
                         f"unfinished one was removed and no {MANIFEST} was written. Fix: run again with "
                         "--overwrite (overwrite=True).")
        raise
    finally:
        if segment_out is not None:  # stopped inside a segment (strict, an interrupt): no half file
            segment_out.abort()
        close = getattr(results, "close", None)
        if close is not None:
            close()
    report = ExtractReport(tuple(read), tuple(skipped), rows_read, rows_dropped, rows_written, tuple(outputs),
                           tuple(fallback), tuple(sheets_read), tuple(sheets_skipped), tuple(uncached),
                           tuple(long_rows), cleaned, tuple(written), out / MANIFEST, no_calamine, blank_rows)
    _write_manifest(report)
    return report


def _write_manifest(report: ExtractReport) -> None:
    data = {
        "tool": "mpkit excel",
        "files": [{"name": f.path.name, "rows": f.rows, "sheets": f.sheets} for f in report.written],
        "rows_written": report.rows_written,
        "rows_read": report.rows_read,
        "rows_dropped": report.rows_dropped,
        "blank_rows_left_out": report.blank_rows,
        "inputs_read": list(report.files_read),
        "inputs_skipped": [{"path": p, "reason": r} for p, r in report.files_skipped],
    }
    report.manifest.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


# ---- command line: python -m mpkit excel ------------------------------------------------------------
HELP = "read chat-export .xlsx files in parallel, drop system notices, save in segments"
DESCRIPTION = ("Read chat exports (columns " + ", ".join(COLUMNS) + ") with a pool of worker processes, "
               "drop rows that are chat-app system notices, and save every SEGMENT input files as one file. "
               "Bad files are skipped and named (or, with --strict, stop the run). Exit code 0 if every file "
               "was read, 1 if some were skipped or --strict stopped, 2 if no input was found or --out "
               "cannot take the output (checked before reading), 130 on Ctrl-C. --out must be a new or empty "
               "folder (--overwrite replaces a previous run's files); manifest.json in it lists what was written.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``excel`` subcommand's arguments to ``parser``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=".xlsx files, or folders (their .xlsx files; subfolders are named, not read)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the output files")
    parser.add_argument("--segment", type=int, default=25, metavar="N", help="input files per output file "
                                                                               "(default: 25)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="xlsx", help="output format "
                                                                                     "(default: xlsx)")
    parser.add_argument("--engine", choices=ENGINES, default="calamine",
                        help="reader (default: calamine; openpyxl for a file calamine fails on, or for "
                             "every file when python-calamine is not installed)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous run's files in --out (by default --out must be new or empty)")
    parser.add_argument("--notice", action="append", default=[], metavar="TEXT",
                        help="another notice text to drop (repeatable; added to the defaults)")
    parser.add_argument("-n", "--workers", type=int, default=None, metavar="WORKERS",
                        help="worker processes (default: the CPUs available)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def collect_inputs(inputs: Iterable[str], out: str | os.PathLike | None = None
                   ) -> tuple[list[str], list[tuple[str, str]]]:
    """Files given, plus each folder's .xlsx files (any letter case, sorted, Excel's ~$ lock files
    left out); and each input not read, with why: missing, or a subfolder holding .xlsx files
    (folders are read one level deep; ``out``, the run's output folder, is not named)."""
    files, left_out = [], []
    inputs = list(inputs)
    leave_out = [*inputs, *([out] if out is not None else [])]  # given as inputs, or the output: not named
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_folder(p, leave_out)
            files += [str(f) for f in found.workbooks]
            left_out += [(str(sub), subfolder_note(sub, n)) for sub, n in found.subfolders]
            left_out += [(str(f), other_format_note(f)) for f in found.others]
        elif p.exists():
            files.append(str(p))
        else:
            left_out.append((item, "does not exist. Fix: check the path."))
    return files, left_out


def run(args: argparse.Namespace) -> int:
    """Run ``python -m mpkit excel``; prints the report, returns the exit code."""
    import sys

    files, missing = collect_inputs(args.inputs, args.out)
    for item, why in missing:
        print(f"mpkit excel: {item} left out: {why}", file=sys.stderr)
    if not files:
        print("mpkit excel: no .xlsx files found in the input. Fix: give .xlsx files, or folders holding "
              "them.", file=sys.stderr)
        return 2
    try:
        report = extract(files, args.out, segment=args.segment, fmt=args.fmt, engine=args.engine,
                         notices=DEFAULT_NOTICES + tuple(args.notice), strict=args.strict,
                         workers=args.workers, progress=getattr(args, "progress", True),
                         overwrite=getattr(args, "overwrite", False))
    except OutputError as exc:
        print(f"mpkit excel: {exc}", file=sys.stderr)
        return 2
    except (ExtractError, ValueError, ImportError) as exc:
        print(f"mpkit excel: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, what is left on disk (the note says it)
        notes = [n for n in getattr(exc, "__notes__", ()) if n.startswith("mpkit excel:")]
        print(notes[0] if notes else "mpkit excel: interrupted.", file=sys.stderr)
        return 130
    print(report)
    return 1 if report.files_skipped or missing else 0
