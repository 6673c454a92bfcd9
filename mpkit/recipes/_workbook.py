"""One workbook's sheets as rows: the reader both recipes share.

    read_sheets(path, needed)
      │  calamine (python-calamine) when importable; openpyxl when it is not, or when calamine
      │  fails on this file (the calamine error is kept in Workbook.fallback)
      ▼
    every sheet: first non-empty row = the header (each name stripped of whitespace)
      │  has every `needed` column ─► Sheet(name, header, rows)      rows: lists, one per data row,
      │  otherwise                 ─► Workbook.skipped (name, why)     as wide as the header
      ▼
    Workbook(path, engine, sheets, skipped, uncached_formulas, fallback)

Cells come out the same from both engines: empty cells are None, whole numbers are int (calamine
gives 12345.0, openpyxl 12345), text is str with OOXML escapes such as ``_x000D_`` decoded, dates
are datetime (calamine gives a date for a date-only cell, openpyxl a datetime). Rows that are
empty in every cell are left out and counted (Sheet.blank_rows).

A formula cell saved without its value (written by a script, never opened in Excel) reads as
empty in both engines; ``uncached_formulas`` counts such cells in the sheets read, from the
sheet XML itself, so a report can say how many values are missing.

``list_folder`` lists a folder given as input: its .xlsx files (any letter case, lock files
apart), one level deep; the subfolders holding .xlsx files and the spreadsheets in other formats
(.xls, .csv ...), which callers name as not read. ``once_each`` leaves out an input given again
(the same path, or the same bytes under another name), so that no export is read twice.

Rows are plain lists rather than DataFrames: calamine hands lists over at no cost, and the recipes
filter row by row anyway (a DataFrame costs ~2 s per million rows to build and is made only where
an output needs one).
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from datetime import date, datetime
from sys import intern
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ENGINES = ("auto", "calamine", "openpyxl")
#: Bytes of sheet XML scanned at a time for formulas: big enough that the scan runs at zlib's
#: speed, small enough that a 100 MB sheet never sits in memory whole.
_SCAN_CHUNK = 1 << 22
#: Texts this short (ids, names, roles: the same few values on every row) are shared, one object
#: each (sys.intern): a 500,000-row export's rows take half the memory, and pickle sends each once.
#: Longer texts (messages, times) are mostly unique: interning them would only cost time.
_SHARED_TEXT = 16
_FORMULA = re.compile(rb"<f[ />]")
_CELL_END = re.compile(rb"</c>|<c[ >]|</row>")
_CACHED = re.compile(rb"<v>[^<]")
_ENTITY = re.compile(r"&(#x[0-9A-Fa-f]+|#[0-9]+|amp|lt|gt|quot|apos);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


class WorkbookError(ValueError):
    """A file that cannot be read as a workbook: ``path``, and ``reason`` (why, and what to do);
    the message is both."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # from a worker process whole: its args are the message alone
        return WorkbookError, (self.path, self.reason)


@dataclass(frozen=True)
class Sheet:
    """One sheet that has every needed column."""
    name: str
    header: list[str]  # stripped column names, in sheet order
    rows: list[list]  # data rows, each as wide as the header; empty cells are None
    blank_rows: int = 0  # rows left out because every cell was empty
    header_row: int = 1  # the header's row number in Excel (1-based)
    blank_at: tuple[int, ...] = ()  # where the blank rows were, counted from the first row after the header

    def column(self, name: str) -> int:
        """Index of column ``name`` (stripped) in ``header`` and in every row."""
        return self.header.index(name.strip())

    def excel_row(self, index: int) -> int:
        """The row number Excel shows for ``rows[index]``."""
        offset = index
        for blank in self.blank_at:
            if blank > offset:
                break
            offset += 1
        return self.header_row + 1 + offset


@dataclass(frozen=True)
class Workbook:
    """What :func:`read_sheets` found in one file."""
    path: str
    engine: str  # "calamine" or "openpyxl": the engine that read it
    sheets: tuple[Sheet, ...]  # the sheets with every needed column, in workbook order
    skipped: tuple[tuple[str, str], ...]  # (sheet name, why it was not read)
    uncached_formulas: int = 0  # formula cells without a saved value, in the sheets read (read as None)
    fallback: str = ""  # why calamine failed, when openpyxl read the file after it

    @property
    def rows(self) -> int:
        return sum(len(s.rows) for s in self.sheets)


def read_sheets(path: str | os.PathLike, needed: Sequence[str], engine: str = "auto") -> Workbook:
    """Every sheet of ``path`` that has all ``needed`` columns, as rows; the others named with why.

    ``engine``: ``"auto"`` (calamine if installed, else openpyxl; openpyxl also when calamine fails
    on the file), ``"calamine"`` (the same fallback, but calamine must be installed) or
    ``"openpyxl"``. Raises :class:`WorkbookError` when the file is missing, empty or no engine can
    read it.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not supported. Fix: use one of {', '.join(ENGINES)}.")
    p = Path(path)
    if not p.is_file():
        raise WorkbookError(p, "no such file. Fix: check the path.")
    if p.stat().st_size == 0:
        raise WorkbookError(p, "empty file (0 bytes), not an Excel workbook. "
                               "Fix: export it again, or leave it out.")
    needed = [str(n).strip() for n in needed]
    fallback = ""
    if engine != "openpyxl":
        try:
            import python_calamine  # noqa: F401
        except ImportError as exc:
            if engine == "calamine":
                raise ImportError("engine='calamine' needs python-calamine, which is not installed. "
                                  "Fix: pip install 'mpkit[recipes]', or use engine='openpyxl'.") from exc
        else:
            try:
                sheets = _calamine_sheets(p)
                return _workbook(p, "calamine", sheets, needed, "")
            except Exception as exc:  # noqa: BLE001 - any reader failure: try openpyxl, keep the reason
                fallback = f"calamine: {type(exc).__name__}: {str(exc)[:200]}"
    try:
        sheets = _openpyxl_sheets(p)
    except Exception as exc:  # noqa: BLE001
        errors = "; ".join(e for e in (fallback, f"openpyxl: {type(exc).__name__}: {str(exc)[:200]}") if e)
        raise WorkbookError(p, f"not a readable .xlsx workbook ({errors}). "
                               "Fix: open it in Excel and save it as .xlsx again, or leave it out.") from None
    return _workbook(p, "openpyxl", sheets, needed, fallback)


def _calamine_sheets(path: Path) -> list[tuple[str, list]]:
    from python_calamine import CalamineWorkbook

    book = CalamineWorkbook.from_path(str(path))
    try:
        return [(name, book.get_sheet_by_name(name).to_python(skip_empty_area=False))
                for name in book.sheet_names]
    finally:
        book.close()


def _openpyxl_sheets(path: Path) -> list[tuple[str, list]]:
    import openpyxl
    from openpyxl.utils.escape import unescape

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        out = []
        for ws in book.worksheets:
            ws.reset_dimensions()  # exporters often write a wrong <dimension>; read what is there
            out.append((ws.title, [[unescape(v) if v.__class__ is str and "_x" in v else v for v in row]
                                   for row in ws.iter_rows(values_only=True)]))
        return out
    finally:
        book.close()


def _workbook(path: Path, engine: str, sheets: list, needed: list[str], fallback: str) -> Workbook:
    read, skipped = [], []
    for name, raw in sheets:
        start = next((i for i, row in enumerate(raw) if any(v is not None and v != "" for v in row)), None)
        if start is None:
            skipped.append((name, "empty sheet"))
            continue
        header = ["" if v is None else str(v).strip() for v in raw[start]]
        missing = [c for c in needed if c not in header]
        if missing:
            found = ", ".join(h for h in header if h) or "none"
            skipped.append((name, f"missing column(s) {', '.join(missing)} (found: {found})"))
            continue
        width = len(header)
        rows, blank = [], []
        for offset in range(len(raw) - start - 1):
            row, raw[start + 1 + offset] = raw[start + 1 + offset], None  # the engine's row freed as we go
            cells = [None if v == "" or v is None else
                     (intern(v) if len(v) <= _SHARED_TEXT else v) if v.__class__ is str else
                     int(v) if v.__class__ is float and v.is_integer() else
                     datetime(v.year, v.month, v.day) if v.__class__ is date else v for v in row[:width]]
            if cells.count(None) == len(cells):
                blank.append(offset)
                continue
            if len(cells) < width:
                cells += [None] * (width - len(cells))
            rows.append(cells)
        read.append(Sheet(name, header, rows, len(blank), start + 1, tuple(blank)))
    uncached = _uncached_formulas(path, {s.name for s in read}) if read else 0
    return Workbook(str(path), engine, tuple(read), tuple(skipped), uncached, fallback)


# ---- formulas without a cached value, counted from the sheet XML ---------------------------------
def _uncached_formulas(path: Path, names: set[str]) -> int:
    """Formula cells with no saved value in the sheets called ``names`` (0 if the XML is unusual)."""
    try:
        with zipfile.ZipFile(path) as z:
            return sum(_count_in_part(z, part) for part in _sheet_parts(z, names))
    except (zipfile.BadZipFile, KeyError, OSError):
        return 0


def _sheet_parts(z: zipfile.ZipFile, names: set[str]) -> list[str]:
    """The zip member of each sheet named in ``names``, via xl/workbook.xml and its relationships."""
    book = z.read("xl/workbook.xml").decode("utf-8", "replace")
    rels = z.read("xl/_rels/workbook.xml.rels").decode("utf-8", "replace")
    targets = {}
    for rel in re.finditer(r"<Relationship\b[^>]*>", rels):
        ident, target = re.search(r'\bId="([^"]*)"', rel[0]), re.search(r'\bTarget="([^"]*)"', rel[0])
        if ident and target:
            t = target[1]
            targets[ident[1]] = t.lstrip("/") if t.startswith("/") else "xl/" + t
    parts = []
    for sheet in re.finditer(r"<sheet\b[^>]*>", book):
        name, ident = re.search(r'\bname="([^"]*)"', sheet[0]), re.search(r'\br:id="([^"]*)"', sheet[0])
        if name and ident and xml_text(name[1]) in names and ident[1] in targets:
            parts.append(targets[ident[1]])
    return parts


def xml_text(s: str) -> str:
    """XML text as the parser gives it: entities and character references (``&#32842;``) replaced,
    line ends made ``\\n``."""
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return _ENTITY.sub(lambda m: _ENTITIES.get(m[1]) or chr(int(m[1][2:], 16) if m[1][1] == "x" else int(m[1][1:])), s)


def _count_in_part(z: zipfile.ZipFile, part: str) -> int:
    count, tail = 0, b""
    with z.open(part) as f:
        while True:
            chunk = f.read(_SCAN_CHUNK)
            data = tail + chunk
            if not chunk:
                return count + _count_in(data, final=True)[0]
            n, keep = _count_in(data, final=False)
            count, tail = count + n, data[keep:]


def _count_in(data: bytes, final: bool) -> tuple[int, int]:
    """Uncached formula cells in ``data``; and where an unfinished cell starts (kept for the next chunk)."""
    count, pos = 0, 0
    while True:
        m = _FORMULA.search(data, pos)
        if m is None:
            # keep a short tail: a "<f" cut at the chunk's end is found next time
            return count, len(data) if final else max(pos, len(data) - 8)
        end = _CELL_END.search(data, m.end())
        if end is None:
            return count, len(data) if final else m.start()
        cell_tag = data[data.rfind(b"<c", 0, m.start()):m.start()]
        if not _CACHED.search(data, m.end(), end.start()) and b't="str"' not in cell_tag:
            count += 1  # (a text formula whose saved value is "" has t="str" and is cached)
        pos = end.end()


# ---- a folder given as input ---------------------------------------------------------------------
#: Spreadsheet formats a folder of exports may also hold, which are named as not read (a chat saved
#: as .xls or .csv would otherwise be left out without a word).
OTHER_SPREADSHEETS = (".xls", ".xlsm", ".xlsb", ".ods", ".csv", ".et")
@dataclass(frozen=True)
class Folder:
    """What :func:`list_folder` found in one input folder."""
    workbooks: list[Path]  # its *.xlsx, any letter case, sorted; lock files not among them
    lock_files: list[Path]  # Excel's ~$ files (one beside each workbook open in Excel)
    subfolders: list[tuple[Path, int]]  # (subfolder, .xlsx files somewhere under it): not read
    others: list[Path]  # spreadsheets in another format (.xls, .csv ...): not read, to be named


def list_folder(folder: Path, leave_out: Iterable[str | os.PathLike] = ()) -> Folder:
    """The workbooks of ``folder``, one level deep; and each subfolder that holds .xlsx files, which is
    not read (an output folder, a backup copy, another month: the user says which), except those in
    ``leave_out`` (the run's other inputs, its own output folder)."""
    books, locks, subs, others = [], [], [], []
    skip = {Path(p).resolve() for p in leave_out}
    for f in sorted(folder.iterdir()):
        if f.is_dir():
            if f.resolve() in skip:
                continue
            n = sum(1 for g in f.rglob("*") if g.suffix.lower() == ".xlsx" and not g.name.startswith("~$")
                    and g.is_file())
            if n:
                subs.append((f, n))
        elif f.suffix.lower() == ".xlsx" and f.is_file():
            (locks if f.name.startswith("~$") else books).append(f)
        elif f.suffix.lower() in OTHER_SPREADSHEETS and not f.name.startswith("~$") and f.is_file():
            others.append(f)
    return Folder(books, locks, subs, others)


#: Bytes read at a time when hashing an input to find the same file given twice.
_HASH_CHUNK = 1 << 20
_P = TypeVar("_P", str, Path)


def once_each(paths: Iterable[_P]) -> tuple[list[_P], list[tuple[_P, str]]]:
    """``paths`` without a file given again: the same path, or the same bytes under another name
    (blake2b of the content); and each one left out, with what it repeats ("given twice (the same
    file as a.xlsx)", "the same content as a.xlsx"). A file that cannot be opened is kept: its
    reader says why."""
    kept, repeated = [], []
    by_path: dict[Path, _P] = {}
    by_hash: dict[bytes, _P] = {}
    for p in paths:
        resolved = Path(p).resolve()
        if resolved in by_path:
            repeated.append((p, f"given twice (the same file as {by_path[resolved]})"))
            continue
        by_path[resolved] = p
        h = hashlib.blake2b(digest_size=16)
        try:
            with open(p, "rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    h.update(chunk)
        except OSError:
            kept.append(p)
            continue
        first = by_hash.setdefault(h.digest(), p)
        if first != p:
            repeated.append((p, f"the same content as {first}"))
            continue
        kept.append(p)
    return kept, repeated


def other_format_note(path: Path) -> str:
    """Why a spreadsheet in another format than .xlsx was not read, and what to do."""
    return (f"not an .xlsx workbook ({path.suffix} files are not read). Fix: save it as .xlsx "
            "(Excel: Save As, Excel Workbook) and give it again.")


def subfolder_note(sub: Path, count: int) -> str:
    """Why a subfolder's workbooks were not read, and what to do."""
    return (f"a subfolder holding {count} .xlsx file(s), not read (a folder is read one level deep). "
            f"Fix: give it as an input too if its files belong to this run.")
