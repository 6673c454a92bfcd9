"""mpkit.recipes._xlsx: what the streaming writer writes, both readers read back unchanged."""
from __future__ import annotations

import datetime as dt
import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpkit.recipes._workbook import read_sheets
from mpkit.recipes._xlsx import XlsxWriter, too_long

ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
cells = st.one_of(st.none(), st.text(max_size=30), st.booleans(),
                  st.integers(min_value=-2**53, max_value=2**53),
                  st.floats(allow_nan=False, allow_infinity=False))


def _expected(v):
    if isinstance(v, str):
        v = ILLEGAL.sub("", v)
        return v or None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(cells, min_size=3, max_size=3), min_size=1, max_size=12),
       max_rows=st.integers(min_value=1, max_value=5))
def test_any_cells_read_back_as_written_on_as_many_sheets_as_needed(tmp_path, rows, max_rows):
    path = tmp_path / "out.xlsx"
    with XlsxWriter(path, ["a", "b", "c"], max_rows=max_rows) as w:
        w.write(rows[:3])
        w.write(rows[3:])
    assert w.rows == len(rows) and w.sheets == -(-len(rows) // max_rows)
    expected = [[_expected(v) for v in row] for row in rows]
    expected = [row for row in expected if row.count(None) < 3]  # a row with no cell is no row
    for engine in ("calamine", "openpyxl"):
        book = read_sheets(path, ["a", "b", "c"], engine)
        assert [s.name for s in book.sheets] == [f"Sheet{k + 1}" for k in range(w.sheets)], engine
        assert [row for s in book.sheets for row in s.rows] == expected, engine


def test_dates_text_escapes_and_line_ends(tmp_path):
    path = tmp_path / "out.xlsx"
    rows = [[dt.datetime(2024, 3, 1, 9, 1, 7), "a\r\nb\rc", "_x000D_ stays text", " padded "],
            [dt.date(2024, 1, 2), "<b>&amp;</b>", pd.Timestamp("2024-05-06 07:08:09"), None],
            [dt.datetime(1850, 1, 1), float("inf"), pd.NaT, float("nan")],
            [None, "bell\x07 and nul\x00", None, None]]
    with XlsxWriter(path, ["when", "text", "more", "pad"]) as w:
        w.write(rows)
    assert w.cleaned == 1  # XML cannot hold those two characters: removed, and counted
    for engine in ("calamine", "openpyxl"):
        got = read_sheets(path, ["when"], engine).sheets[0].rows
        assert got[0] == rows[0], engine
        assert got[1][1:3] == ["<b>&amp;</b>", dt.datetime(2024, 5, 6, 7, 8, 9)], engine
        assert got[1][0] == dt.datetime(2024, 1, 2) and type(got[1][0]) is dt.datetime, engine
        assert got[2] == ["1850-01-01 00:00:00", "inf", None, None], engine  # Excel has no such date or inf
        assert got[3] == [None, "bell and nul", None, None], engine
    assert pd.read_excel(path, engine="openpyxl")["when"][0] == pd.Timestamp("2024-03-01 09:01:07")


@pytest.mark.parametrize("text, expected", [("x" * 32_767, False), ("x" * 32_768, True),
                                            ("🙂" * 16_383, False), ("🙂" * 16_384, True)])
def test_too_long_counts_as_excel_does(text, expected):
    assert too_long(text) is expected


@pytest.mark.parametrize("text", ["_x0041_x0042_", "_x005F_x0041_", "ids _x0031__x0032_x0033_ end", "__x0041__"])
def test_texts_that_look_like_adjacent_ooxml_escapes_read_back_unchanged(tmp_path, text):
    # a chat message quoting escaped text: each underscore that starts an escape-like run is
    # escaped, also when it ends the run before it
    path = tmp_path / "out.xlsx"
    with XlsxWriter(path, ["text"]) as w:
        w.write([[text]])
    for engine in ("calamine", "openpyxl"):
        assert read_sheets(path, ["text"], engine).sheets[0].rows == [[text]], engine


@pytest.mark.parametrize("when", [dt.datetime(1899, 12, 31, 8, 0), dt.datetime(1900, 1, 15), dt.date(1900, 2, 28),
                                  dt.datetime(1900, 3, 1, 12, 0), dt.datetime(2024, 3, 1, 9, 0)])
def test_early_dates_are_never_read_back_as_another_day(tmp_path, when):
    # Excel counts a 29 February 1900 that never was: serials before 1 March 1900 are a day off
    path = tmp_path / "out.xlsx"
    with XlsxWriter(path, ["when"]) as w:
        w.write([[when]])
    for engine in ("calamine", "openpyxl"):
        got = read_sheets(path, ["when"], engine).sheets[0].rows[0][0]
        assert got in (when, str(when)) or got == dt.datetime(when.year, when.month, when.day), (engine, got)
