"""A workbook's first sheet as the article reads it (pandas with openpyxl), read by calamine.

``compat="seed"`` must give the article's output byte for byte, and the article reads with
``pd.read_excel(path, engine="openpyxl")``, which is ~10x slower than calamine. calamine's cells
differ from openpyxl's in two ways only, both undone here before pandas makes the DataFrame:

    calamine cells ──► OOXML escapes put back ──► whitespace-only texts put back ──► pandas' parser
                       (_x000D_ for \\r, _x005F_   (calamine reads "   " as empty;
                       before a literal _xHHHH_:   found in the sheet's XML and the
                       openpyxl leaves them in)    shared strings)

Without python-calamine, or when the XML holds a whitespace-only text this module cannot place
(a cell written in a form it does not know), an escape calamine decodes for good (``_x0041_``
written as it is by openpyxl, a lower-case ``_x000d_``) or a control character stored as a
character reference (``&#13;``, as the Excel recipe's writer stores ``\\r``), the file is read by
openpyxl itself.
"""
from __future__ import annotations

import datetime as dt
import re
import zipfile
from pathlib import Path

# What calamine decodes and openpyxl leaves as written: control characters other than tab and
# newline (stored as _xHHHH_), and a literal "_xHHHH_" (stored with its "_" escaped as _x005F_).
_DECODED = re.compile(r"[\x00-\x08\x0b-\x1f]|_(?=x[0-9A-Fa-f]{4}_)")
_CELL = re.compile(rb'<c r="([A-Z]+)([0-9]+)"([^>]*)>(.*?)</c>', re.S)
_SHARED = re.compile(rb"<si>(.*?)</si>", re.S)
_TEXT = re.compile(rb"<t(?:\s[^>]*)?>([^<]*)</t>")
_BLANK = re.compile(rb"<t(?:\s[^>]*)?>\s+</t>")
# What cannot be put back: an escape calamine decodes to a printable character (openpyxl keeps the
# literal "_x0041_"), or in lower case (put back, it would be "_x000D_"); and a control character
# stored as a character reference (&#13;: openpyxl reads it as the character, not as "_x000D_").
_ESCAPE_IN_XML = re.compile(rb"_x([0-9A-Fa-f]{4})_")
_ESCAPE_AFTER = re.compile(rb"x[0-9A-Fa-f]{4}_")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")  # the characters _DECODED escapes
_CONTROL_REF = re.compile(rb"&#(?:x0*(?:[0-8bcefBCEF]|1[0-9A-Fa-f]|[dD])|0*(?:[0-8]|1[1-9]|2[0-9]|3[01]));")


class _Unplaceable(Exception):
    """A whitespace-only text in a cell form not handled here: openpyxl reads the file."""


def read_first_sheet(path: Path):
    """``(DataFrame, sheet names)``: the first sheet exactly as ``pd.read_excel(path, engine="openpyxl")``."""
    import pandas as pd

    try:
        from pandas.io.excel._calamine import CalamineReader
    except ImportError:
        CalamineReader = None  # noqa: N806
    if CalamineReader is not None:
        try:
            import python_calamine  # noqa: F401
        except ImportError:
            CalamineReader = None  # noqa: N806
    if CalamineReader is not None:
        class _AsOpenpyxl(CalamineReader):
            def get_sheet_data(self, sheet, file_rows_needed=None):
                # pandas' own conversion (whole floats to int, dates to datetime) and the escapes
                # put back, in one pass over the cells
                data = sheet.to_python(skip_empty_area=False, nrows=file_rows_needed)
                for row in data:
                    for i, v in enumerate(row):
                        kind = v.__class__
                        if kind is str:
                            # isprintable() is False for any control character: a quick test first
                            if ("_x" in v or not v.isprintable()) and _DECODED.search(v):
                                row[i] = _DECODED.sub(_escape, v)
                        elif kind is float:
                            if v.is_integer():
                                row[i] = int(v)
                        elif kind is dt.date:
                            row[i] = dt.datetime(v.year, v.month, v.day)
                for (r, c), text in _blank_texts(path).items():
                    if r < len(data) and c < len(data[r]) and data[r][c] == "":
                        data[r][c] = text
                return data

        try:
            reader = _AsOpenpyxl(str(path))
        except Exception:  # noqa: BLE001 - calamine cannot open it: openpyxl says why
            reader = None
        if reader is not None:
            try:
                return reader.parse(0), list(reader.sheet_names)
            except _Unplaceable:
                pass
            finally:
                reader.close()
    with pd.ExcelFile(path, engine="openpyxl") as book:
        return book.parse(0), list(book.sheet_names)


def _escape(m: re.Match) -> str:
    c = m.group()
    return "_x005F_" if c == "_" else f"_x{ord(c):04X}_"


def _blank_texts(path: Path) -> dict[tuple[int, int], str]:
    """{(row, column) from 0: text} of the first sheet's cells whose text is whitespace only."""
    from ._workbook import _sheet_parts, xml_text

    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        book = z.read("xl/workbook.xml").decode("utf-8", "replace")
        first = re.search(r'<sheet\b[^>]*\bname="([^"]*)"', book)
        parts = _sheet_parts(z, {xml_text(first[1])}) if first else []
        if not parts:
            raise _Unplaceable
        sheet = z.read(parts[0])
        _check_restorable(sheet)
        shared: dict[int, str] = {}
        if "xl/sharedStrings.xml" in names:
            strings = z.read("xl/sharedStrings.xml")
            _check_restorable(strings)
            if _BLANK.search(strings):
                for index, si in enumerate(_SHARED.finditer(strings)):
                    text = b"".join(_TEXT.findall(si[1]))
                    if text and not text.strip():
                        shared[index] = xml_text(text.decode("utf-8"))
    out = {}
    for blank in _BLANK.finditer(sheet):  # an inline string (or a form not known: openpyxl reads it)
        m = _CELL.match(sheet, sheet.rfind(b"<c ", 0, blank.start()))
        if m is None or b't="inlineStr"' not in m[3] or m.end() < blank.end():
            raise _Unplaceable
        text = b"".join(_TEXT.findall(m[4]))
        if not text.strip():
            out[(int(m[2]) - 1, _column(m[1]))] = xml_text(text.decode("utf-8"))
    if shared:
        indices = b"|".join(str(i).encode() for i in shared)
        for m in re.finditer(rb'<c r="([A-Z]+)([0-9]+)"[^>]*?\bt="s"[^>]*><v>(' + indices + rb")</v>", sheet):
            out[(int(m[2]) - 1, _column(m[1]))] = shared[int(m[3])]
    return out


def _check_restorable(xml: bytes) -> None:
    """Raise _Unplaceable if calamine reads a text of ``xml`` in a way the escapes cannot undo."""
    if b"_x" in xml:
        for m in _ESCAPE_IN_XML.finditer(xml):  # left to right, as readers decode them
            code = int(m[1], 16)
            if code == 0x5F:  # put back only before an escape-like run ("_x005F_x0041_")
                if m[0] != b"_x005F_" or not _ESCAPE_AFTER.match(xml, m.end()):
                    raise _Unplaceable
            elif not _CONTROL.fullmatch(chr(code)) or m[0] != b"_x%04X_" % code:
                raise _Unplaceable
    if b"&#" in xml and _CONTROL_REF.search(xml):
        raise _Unplaceable


def _column(letters: bytes) -> int:
    n = 0
    for b in letters:
        n = n * 26 + b - 64
    return n - 1
