"""A streaming .xlsx writer: rows go straight into the zip, a sheet at a time, in constant memory.

    XlsxWriter(path, header)
      │ write(rows) ─► xl/worksheets/sheet1.xml (deflated as it is written)
      │                 full at max_rows data rows ─► the header again on Sheet2, Sheet3, ...
      ▼
    close() ─► workbook.xml, styles, content types: the sheets written, in order

Why not pandas ``to_excel``: it builds the whole workbook in openpyxl objects first (a 500,000-row
segment took 162 s and 1.3 GB, 4x csv's time); this writes each cell as one formatted string.

Cells: str as inline text (XML-escaped; characters XML 1.0 cannot hold are removed and counted in
``cleaned``; a literal ``_x0041_`` is escaped so that readers do not decode it; ``\\r`` as ``&#13;``
so that it survives XML's line-end normalisation), bool, int and float as values, datetime / date /
time as Excel date serials with a date format (dates before 1 March 1900 as text), None and NaN
as empty cells, anything else as its str(). Text over :data:`MAX_CELL_CHARS` is Excel's to cut:
callers keep such rows out (see :func:`too_long`).
"""
from __future__ import annotations

import datetime as dt
import math
import numbers
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from xml.sax.saxutils import escape, quoteattr

#: Data rows one sheet holds (Excel's 1,048,576 rows, less the header).
MAX_ROWS = 1_048_575
#: Characters one cell holds (Excel counts UTF-16 code units: an emoji counts 2).
MAX_CELL_CHARS = 32_767
#: zlib level for the sheet XML: level 1 is ~4x faster than the default 6 for files ~15% bigger.
_COMPRESSLEVEL = 1
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: An underscore that starts an escape-like run (a lookahead: in "_x0041_x0042_" the second run
#: starts on the first one's closing underscore, and both must be escaped).
_ESCAPE_LIKE = re.compile("_(?=x[0-9A-Fa-f]{4}_)")
_EPOCH = dt.datetime(1899, 12, 30)
#: Excel's day 61 is 1 March 1900; below it Excel counts a 29 February 1900 that never was, so
#: readers show every earlier serial a day off: such dates are written as text.
_FIRST_TRUE_SERIAL = 61
_DATETIME_STYLE, _DATE_STYLE, _TIME_STYLE = 1, 2, 3


def too_long(text: str) -> bool:
    """True when ``text`` is over Excel's :data:`MAX_CELL_CHARS` (UTF-16 code units)."""
    return len(text) > MAX_CELL_CHARS // 2 and len(text.encode("utf-16-le")) // 2 > MAX_CELL_CHARS


def _column_letters(n: int) -> list[str]:
    out = []
    for i in range(n):
        name, i = "", i + 1
        while i:
            i, r = divmod(i - 1, 26)
            name = chr(65 + r) + name
        out.append(name)
    return out


class XlsxWriter:
    """Write ``header`` and rows to ``path``; use as a context manager (or call :meth:`close`)."""

    def __init__(self, path: str | os.PathLike, header: Sequence[str], max_rows: int = MAX_ROWS):
        self.path = path
        self.header = [str(h) for h in header]
        self.max_rows = max_rows
        self.sheets = 0  # sheets started
        self.rows = 0  # data rows written, all sheets
        self.cleaned = 0  # text cells that lost characters .xlsx cannot hold
        self._letters = _column_letters(len(self.header))
        self._zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=_COMPRESSLEVEL)
        self._sheet = None
        self._in_sheet = 0  # data rows on the current sheet

    def __enter__(self) -> XlsxWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, rows: Iterable[Sequence]) -> None:
        """Append ``rows`` (each as wide as the header, or narrower), starting new sheets as they fill."""
        if self._sheet is None:
            self._new_sheet()
        lines = []
        for row in rows:
            if self._in_sheet == self.max_rows:
                self._sheet.write("".join(lines).encode("utf-8"))
                lines = []
                self._new_sheet()
            self._in_sheet += 1
            lines.append(self._row(self._in_sheet + 1, row))
            if len(lines) >= 2000:
                self._sheet.write("".join(lines).encode("utf-8"))
                lines = []
        self._sheet.write("".join(lines).encode("utf-8"))

    def _row(self, number: int, row: Sequence) -> str:
        cells = [f'<row r="{number}">']
        for letter, v in zip(self._letters, row):
            if v is None:
                continue
            ref = f"{letter}{number}"
            cls = v.__class__
            if cls is str:
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{self._text(v)}</t></is></c>')
            elif cls is int:
                cells.append(f'<c r="{ref}"><v>{v}</v></c>')
            elif cls is bool:
                cells.append(f'<c r="{ref}" t="b"><v>{int(v)}</v></c>')
            elif isinstance(v, float):
                if v == v:  # NaN: an empty cell, as pandas writes it
                    cells.append(f'<c r="{ref}"><v>{float(v)!r}</v></c>' if not math.isinf(v) else
                                 f'<c r="{ref}" t="inlineStr"><is><t>{v}</t></is></c>')  # Excel has no inf
            elif isinstance(v, numbers.Integral):  # numpy integers
                cells.append(f'<c r="{ref}"><v>{int(v)}</v></c>')
            elif isinstance(v, (dt.datetime, dt.date, dt.time)):
                serial = _serial(v)
                if serial is not None:
                    style = (_DATETIME_STYLE if isinstance(v, dt.datetime) else
                             _DATE_STYLE if isinstance(v, dt.date) else _TIME_STYLE)
                    cells.append(f'<c r="{ref}" s="{style}"><v>{serial!r}</v></c>')
                elif v == v:  # before 1 March 1900: Excel shows no such date (or a day off), the text keeps it
                    cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{self._text(str(v))}</t></is></c>')
            else:
                text = self._text(str(v))
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{text}</t></is></c>')
        cells.append("</row>")
        return "".join(cells)

    def _text(self, s: str) -> str:
        if _ILLEGAL.search(s):
            s = _ILLEGAL.sub("", s)
            self.cleaned += 1
        if "_x" in s:
            s = _ESCAPE_LIKE.sub("_x005F_", s)
        s = escape(s)
        return s.replace("\r", "&#13;") if "\r" in s else s

    def _new_sheet(self) -> None:
        self._end_sheet()
        self.sheets += 1
        self._sheet = self._zip.open(f"xl/worksheets/sheet{self.sheets}.xml", "w", force_zip64=True)
        self._sheet.write(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                          b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                          b"<sheetData>")
        self._in_sheet = 0
        self._sheet.write(self._row(1, self.header).encode("utf-8"))

    def _end_sheet(self) -> None:
        if self._sheet is not None:
            self.rows += self._in_sheet
            self._sheet.write(b"</sheetData></worksheet>")
            self._sheet.close()
            self._sheet = None

    def close(self) -> None:
        if self._zip is None:
            return
        try:
            if self.sheets == 0:
                self._new_sheet()  # a header-only sheet: a workbook needs one
            self._end_sheet()
            self._zip.writestr("[Content_Types].xml", _content_types(self.sheets))
            self._zip.writestr("_rels/.rels", _ROOT_RELS)
            self._zip.writestr("xl/workbook.xml", _workbook(self.sheets))
            self._zip.writestr("xl/_rels/workbook.xml.rels", _workbook_rels(self.sheets))
            self._zip.writestr("xl/styles.xml", _STYLES)
        finally:
            self._zip.close()
            self._zip = None


def _serial(v) -> float | None:
    """Excel's day number for a date/time (None for NaT or a date before 1 March 1900)."""
    if v != v:  # pandas NaT
        return None
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.replace(tzinfo=None)
        days = (v - _EPOCH).total_seconds() / 86400
    elif isinstance(v, dt.date):
        days = float((v - _EPOCH.date()).days)
    else:
        return (v.hour * 3600 + v.minute * 60 + v.second + v.microsecond / 1e6) / 86400
    return days if days >= _FIRST_TRUE_SERIAL else None


_NS = "http://schemas.openxmlformats.org"
_ROOT_RELS = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="{_NS}/package/2006/'
              f'relationships"><Relationship Id="rId1" Type="{_NS}/officeDocument/2006/relationships/'
              'officeDocument" Target="xl/workbook.xml"/></Relationships>')
_STYLES = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
           f'<styleSheet xmlns="{_NS}/spreadsheetml/2006/main">'
           '<numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy-mm-dd hh:mm:ss"/>'
           '<numFmt numFmtId="165" formatCode="hh:mm:ss"/></numFmts>'
           '<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
           '<fills count="2"><fill><patternFill patternType="none"/></fill>'
           '<fill><patternFill patternType="gray125"/></fill></fills>'
           '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
           '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
           '<cellXfs count="4"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
           '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
           '<xf numFmtId="14" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
           '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>'
           '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
           '</styleSheet>')


def _content_types(sheets: int) -> str:
    main = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    parts = "".join(f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="{main}.worksheet+xml"/>'
                    for i in range(1, sheets + 1))
    return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            f'<Types xmlns="{_NS}/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{main}.sheet.main+xml"/>'
            f'<Override PartName="/xl/styles.xml" ContentType="{main}.styles+xml"/>{parts}</Types>')


def _workbook(sheets: int) -> str:
    items = "".join(f'<sheet name={quoteattr(f"Sheet{i}")} sheetId="{i}" r:id="rId{i}"/>'
                    for i in range(1, sheets + 1))
    return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            f'<workbook xmlns="{_NS}/spreadsheetml/2006/main" '
            f'xmlns:r="{_NS}/officeDocument/2006/relationships"><sheets>{items}</sheets></workbook>')


def _workbook_rels(sheets: int) -> str:
    rel = f"{_NS}/officeDocument/2006/relationships"
    items = "".join(f'<Relationship Id="rId{i}" Type="{rel}/worksheet" Target="worksheets/sheet{i}.xml"/>'
                    for i in range(1, sheets + 1))
    items += f'<Relationship Id="rId{sheets + 1}" Type="{rel}/styles" Target="styles.xml"/>'
    return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            f'<Relationships xmlns="{_NS}/package/2006/relationships">{items}</Relationships>')
