"""Parallel extraction of chat exports: the article's "使用进程池快速抽取数据", on mpkit.

    paths ─► mpkit.imap(_read_file, one file per task, in input order, progress bar)
               │  in a worker:  read sheet 1 (calamine; openpyxl if calamine fails on the file)
               │                → check the columns → 消息内容 to text → drop notice rows
               ▼
             FileResult(path, frame | None, rows_read, rows_dropped, engine, reason)
               │  reason set ─► skipped, named in the report  (strict=True: ExtractError)
               ▼
             every `segment` input files: pd.concat ─► out_dir/extract_<first>_<last>.<fmt>
               ▼
             ExtractReport(files read / skipped, rows read = rows written + notices dropped, outputs)

    from mpkit.recipes import excel, SAMPLE_DATA
    report = excel.extract(sorted(SAMPLE_DATA.glob("*.xlsx")), "out", segment=25)
    print(report)

Command line: ``python -m mpkit excel INPUT... --out DIR`` (see :func:`add_arguments`).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Columns every chat export must have, in output order.
COLUMNS = ("坐席id", "客户微信id", "是否客服", "消息内容", "发送时间")
#: The system notices the article filtered out, verbatim.
ARTICLE_NOTICES = ("我通过了好友请求,现在你俩可以开始聊天了", "我通过了你的朋友验证请求,现在我们可以开始聊天了",
                   "已通过你的朋友验证请求,现在可以开始聊天了", "不支持此消息,请在手机上查看", "微信红包")
#: The article's list plus variants WeChat exports also carry. Matched as substrings after
#: normalisation (full-width punctuation to half-width, whitespace removed); extend it freely:
#: ``notices=DEFAULT_NOTICES + ("my notice",)``.
DEFAULT_NOTICES = ARTICLE_NOTICES + (
    "现在可以开始聊天了", "收到红包,请在手机上查看", "收到了一个表情,请在手机上查看", "以上是打招呼的内容",
    "撤回了一条消息", "微信转账")
FORMATS = ("xlsx", "parquet", "csv")
ENGINES = ("auto", "calamine", "openpyxl")
#: Data rows one .xlsx sheet holds; a bigger segment continues on Sheet2, Sheet3, ...
XLSX_MAX_ROWS = 1_048_575
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
    frame: object = None  # pandas.DataFrame of the kept rows, or None when skipped
    rows_read: int = 0
    rows_dropped: int = 0
    engine: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ExtractReport:
    """Every input file is in ``files_read`` or ``files_skipped``; rows_read = rows_written + rows_dropped."""
    files_read: tuple[str, ...]
    files_skipped: tuple[tuple[str, str], ...]  # (path, reason)
    rows_read: int
    rows_dropped: int
    rows_written: int
    outputs: tuple[Path, ...]
    files_fallback: tuple[str, ...] = ()  # read by openpyxl after calamine failed on them

    def __str__(self) -> str:
        lines = [(f"mpkit excel: {len(self.files_read)} file(s) read, {len(self.files_skipped)} skipped; "
                 f"{self.rows_read:,} rows read, {self.rows_dropped:,} notices dropped, "
                 f"{self.rows_written:,} rows written to {len(self.outputs)} file(s)")]
        lines += [f"  wrote {p}" for p in self.outputs]
        lines += [f"  read with openpyxl (calamine failed): {p}" for p in self.files_fallback]
        lines += [f"  SKIPPED {p}: {reason}" for p, reason in self.files_skipped]
        return "\n".join(lines)


# ---- per file: runs in the workers, imported there by name -----------------------------------------
def _read_file(task: tuple[str, tuple[str, ...], str]) -> FileResult:
    path, notices, engine = task
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        return FileResult(path, reason="no such file. Fix: check the path.")
    if p.stat().st_size == 0:
        return FileResult(path, reason="empty file (0 bytes), not an Excel workbook. "
                                       "Fix: export it again, or leave it out.")
    errors = []
    for eng in (["calamine", "openpyxl"] if engine == "calamine" else [engine]):
        try:
            df = pd.read_excel(p, sheet_name=0, dtype=object, engine=eng)
            break
        except Exception as exc:  # noqa: BLE001 - any reader failure is reported per file
            errors.append(f"{eng}: {type(exc).__name__}: {str(exc)[:200]}")
    else:
        return FileResult(path, reason=f"not a readable .xlsx workbook ({'; '.join(errors)}). "
                                       "Fix: open it in Excel and save it as .xlsx again, or leave it out.")
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        found = ", ".join(df.columns) or "none"
        return FileResult(path, engine=eng, reason=f"missing column(s) {', '.join(missing)} (found: {found}). "
                                                   "Fix: export with these columns, or rename them.")
    df = df.loc[:, list(COLUMNS)]
    if eng == "openpyxl":  # openpyxl leaves OOXML escapes such as _x000D_ (\r) in text; calamine decodes them
        from openpyxl.utils.escape import unescape
        for col in COLUMNS:
            df[col] = df[col].map(lambda v: unescape(v) if isinstance(v, str) and "_x" in v else v)
    # Numbers typed as numbers stay text, as written: 12345 -> "12345".
    df["消息内容"] = df["消息内容"].map(lambda v: v if isinstance(v, str) or pd.isna(v) else str(v))
    is_notice = df["消息内容"].map(lambda v: isinstance(v, str) and _has_notice(normalize(v), notices))
    dropped = int(is_notice.sum())
    return FileResult(path, df.loc[~is_notice].reset_index(drop=True), len(df), dropped, eng)


def _has_notice(text: str, notices: tuple[str, ...]) -> bool:
    return any(n in text for n in notices)


# ---- the run ---------------------------------------------------------------------------------------
def extract(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *, segment: int = 25,
            fmt: str = "xlsx", notices: Sequence[str] = DEFAULT_NOTICES, engine: str = "calamine",
            strict: bool = False, workers: int | None = None, progress: bool | None = None) -> ExtractReport:
    """Read chat exports in parallel, drop system-notice rows, save every ``segment`` files as one file.

    - ``paths``: the .xlsx files, in the order segments are cut (sort them for a stable split).
    - ``fmt``: ``"xlsx"`` (pandas ``to_excel``, openpyxl, as the article), ``"parquet"`` or ``"csv"``
      (UTF-8 with BOM, so Excel shows the Chinese).
    - ``notices``: texts whose rows are dropped, matched as substrings after :func:`normalize`.
    - ``engine``: ``"calamine"`` (fast; openpyxl is tried when it fails on a file), ``"openpyxl"``,
      or ``"auto"`` (calamine when installed).
    - ``strict``: raise :class:`ExtractError` naming the first bad file instead of skipping it.
    - ``workers`` / ``progress``: as for :func:`mpkit.map` (a progress bar over files).
    """
    import mpkit

    paths = [str(p) for p in paths]
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not supported. Fix: use one of {', '.join(FORMATS)}.")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not supported. Fix: use one of {', '.join(ENGINES)}.")
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
        raise ValueError(f"segment={segment!r}: it is the number of input files per output file. "
                         "Fix: give a whole number of at least 1.")
    has_calamine = importlib.util.find_spec("python_calamine") is not None
    if engine == "auto":
        engine = "calamine" if has_calamine else "openpyxl"
    elif engine == "calamine" and not has_calamine:
        raise ImportError("engine='calamine' needs python-calamine, which is not installed. "
                          "Fix: pip install 'mpkit[recipes]', or pass engine='openpyxl'.")
    wanted = tuple(n for n in (normalize(str(n)) for n in notices) if n)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = len(str(max(len(paths) - 1, 0)))

    read, skipped, fallback, outputs, frames = [], [], [], [], []
    rows_read = rows_dropped = rows_written = 0
    results = mpkit.imap(_read_file, [(p, wanted, engine) for p in paths], workers=workers, chunksize=1,
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
                if engine == "calamine" and res.engine == "openpyxl":
                    fallback.append(res.path)
                rows_read += res.rows_read
                rows_dropped += res.rows_dropped
                frames.append(res.frame)
            if (i + 1) % segment == 0 or i + 1 == len(paths):
                first = i - i % segment
                if frames:
                    name = f"extract_{first:0{width}d}_{i:0{width}d}.{fmt}"
                    rows_written += _write(frames, out / name, fmt)
                    outputs.append(out / name)
                frames = []
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    return ExtractReport(tuple(read), tuple(skipped), rows_read, rows_dropped, rows_written, tuple(outputs),
                         tuple(fallback))


def _write(frames: list, path: Path, fmt: str) -> int:
    """Concatenate one segment's frames and save them; returns the rows written."""
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    if fmt == "xlsx":  # control characters other than \t \n \r cannot be stored in .xlsx: removed
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE as bad
        df = df.map(lambda v: bad.sub("", v) if isinstance(v, str) else v)
        with pd.ExcelWriter(path, engine="openpyxl") as writer:
            for k, start in enumerate(range(0, max(len(df), 1), XLSX_MAX_ROWS)):
                df.iloc[start:start + XLSX_MAX_ROWS].to_excel(writer, sheet_name=f"Sheet{k + 1}", index=False)
    elif fmt == "parquet":
        for col in df.columns:  # Arrow needs one type per column: mixed cells (str and datetime) become text
            kinds = {type(v) for v in df[col] if not pd.isna(v)}
            if len(kinds) > 1:
                df[col] = df[col].map(lambda v: v if pd.isna(v) else str(v))
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False, encoding="utf-8-sig")
    return len(df)


# ---- command line: python -m mpkit excel ------------------------------------------------------------
HELP = "read chat-export .xlsx files in parallel, drop system notices, save in segments"
DESCRIPTION = ("Read chat exports (columns " + ", ".join(COLUMNS) + ") with a pool of worker processes, "
               "drop rows that are chat-app system notices, and save every SEGMENT input files as one file. "
               "Bad files are skipped and named (or, with --strict, stop the run). Exit code 0 if every file "
               "was read, 1 if some were skipped or --strict stopped, 2 if no input was found.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``excel`` subcommand's arguments to ``parser``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".xlsx files, or folders (their *.xlsx)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the output files")
    parser.add_argument("--segment", type=int, default=25, metavar="N", help="input files per output file "
                                                                               "(default: 25)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="xlsx", help="output format "
                                                                                     "(default: xlsx)")
    parser.add_argument("--engine", choices=ENGINES, default="calamine",
                        help="reader (default: calamine, falling back to openpyxl per file)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    parser.add_argument("--notice", action="append", default=[], metavar="TEXT",
                        help="another notice text to drop (repeatable; added to the defaults)")
    parser.add_argument("-n", "--workers", type=int, default=None, metavar="WORKERS",
                        help="worker processes (default: the CPUs available)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def collect_inputs(inputs: Iterable[str]) -> tuple[list[str], list[str]]:
    """Files given, plus each folder's *.xlsx (sorted, Excel's ~$ lock files left out); and what was not found."""
    files, missing = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += [str(f) for f in sorted(p.glob("*.xlsx")) if not f.name.startswith("~$")]
        elif p.exists():
            files.append(str(p))
        else:
            missing.append(item)
    return files, missing


def run(args: argparse.Namespace) -> int:
    """Run ``python -m mpkit excel``; prints the report, returns the exit code."""
    import sys

    files, missing = collect_inputs(args.inputs)
    for item in missing:
        print(f"mpkit excel: {item} does not exist; left out. Fix: check the path.", file=sys.stderr)
    if not files:
        print("mpkit excel: no .xlsx files found in the input. Fix: give .xlsx files, or folders holding "
              "them.", file=sys.stderr)
        return 2
    try:
        report = extract(files, args.out, segment=args.segment, fmt=args.fmt, engine=args.engine,
                         notices=DEFAULT_NOTICES + tuple(args.notice), strict=args.strict,
                         workers=args.workers, progress=getattr(args, "progress", True))
    except (ExtractError, ValueError, ImportError) as exc:
        print(f"mpkit excel: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 1 if report.files_skipped or missing else 0
