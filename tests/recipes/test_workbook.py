"""mpkit.recipes._workbook: every sheet with the needed columns, from calamine or openpyxl alike."""
from __future__ import annotations

import datetime as dt
import sys

import pytest

from mpkit.recipes._workbook import WorkbookError, read_sheets
from tests.recipes import workbooks

NEEDED = ["坐席id", "消息内容"]




@pytest.fixture
def chat_on_two_sheets(tmp_path):
    """A chat export split over two sheets (headers with stray spaces), a summary sheet, an empty one."""
    first = [[" 坐席id", "消息内容 ", "发送时间"]] + [["kf_1", f"hi {i}", dt.datetime(2024, 3, 1, 9, i)]
                                                  for i in range(30)]
    second = [["坐席id", "消息内容", "发送时间"], ["kf_1", 12345, None], [None, None, None],
              ["kf_2", "=A2", None]] + [["kf_2", f"later {i}", None] for i in range(23)]
    summary = [["total", "=COUNTA(Sheet1!A:A)"]]
    return workbooks.book(tmp_path / "chat.xlsx", {"Sheet1": first, "Sheet2": second, "summary": summary, "blank": []})


@pytest.mark.parametrize("engine", ["calamine", "openpyxl"])
def test_every_sheet_with_the_columns_is_read_and_the_others_are_named(chat_on_two_sheets, engine):
    book = read_sheets(chat_on_two_sheets, NEEDED, engine)
    assert book.engine == engine
    assert [s.name for s in book.sheets] == ["Sheet1", "Sheet2"]
    assert book.rows == 30 + 25 and book.sheets[1].blank_rows == 1
    reasons = dict(book.skipped)
    assert set(reasons) == {"summary", "blank"}
    assert "坐席id" in reasons["summary"] and "found: total" in reasons["summary"]
    assert reasons["blank"] == "empty sheet"
    first, second = book.sheets
    assert first.header == ["坐席id", "消息内容", "发送时间"]
    assert first.rows[0] == ["kf_1", "hi 0", dt.datetime(2024, 3, 1, 9, 0)]
    assert second.rows[0] == ["kf_1", 12345, None]  # a whole number is int from both engines
    assert second.rows[1] == ["kf_2", None, None]  # the formula had no saved value
    assert book.uncached_formulas == 1  # the summary sheet's formula is not in a sheet read


def test_without_calamine_openpyxl_reads_it(chat_on_two_sheets, monkeypatch):
    monkeypatch.setitem(sys.modules, "python_calamine", None)  # what `import` sees when it is not installed
    book = read_sheets(chat_on_two_sheets, NEEDED)
    assert book.engine == "openpyxl" and book.rows == 55 and book.fallback == ""
    with pytest.raises(ImportError, match="python-calamine.*Fix"):
        read_sheets(chat_on_two_sheets, NEEDED, "calamine")


def test_a_file_calamine_cannot_read_is_named_with_both_reasons(tmp_path):
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(WorkbookError, match=r"bad\.xlsx: not a readable .*calamine.*openpyxl.*Fix"):
        read_sheets(bad, NEEDED)
    empty = tmp_path / "empty.xlsx"
    empty.write_bytes(b"")
    with pytest.raises(WorkbookError, match="empty file"):
        read_sheets(empty, NEEDED)
    with pytest.raises(WorkbookError, match="no such file") as info:
        read_sheets(tmp_path / "gone.xlsx", NEEDED)
    import pickle  # from a worker process it comes whole: the file, and the reason apart

    again = pickle.loads(pickle.dumps(info.value))
    assert (again.path, again.reason, str(again)) == (str(tmp_path / "gone.xlsx"), info.value.reason, str(info.value))
    assert again.reason.startswith("no such file")


def test_a_wrong_dimension_tag_does_not_hide_rows_from_openpyxl(tmp_path):
    import zipfile

    src = workbooks.book(tmp_path / "src.xlsx", {"Sheet1": [NEEDED] + [["kf", f"m{i}"] for i in range(10)]})
    dst = tmp_path / "dim.xlsx"  # some exporters write <dimension ref="A1"/> whatever the size
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                assert b'<dimension ref="A1:B11"' in data
                data = data.replace(b'<dimension ref="A1:B11"', b'<dimension ref="A1"')
            zout.writestr(item, data)
    for engine in ("calamine", "openpyxl"):
        assert read_sheets(dst, NEEDED, engine).rows == 10, engine


def test_formulas_are_counted_in_a_sheet_whose_name_is_written_with_character_references(tmp_path):
    """Some writers store a sheet's name in xl/workbook.xml as character references (&#32842;): the
    formula count must still find that sheet's XML."""
    import zipfile

    src = workbooks.book(tmp_path / "src.xlsx", {"聊天 & 记录": [NEEDED, ["kf_1", "=A1"], ["kf_1", "hi"]]})
    dst = tmp_path / "refs.xlsx"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "xl/workbook.xml":
                written = 'name="聊天 &amp; 记录"'.encode()
                assert written in data
                data = data.replace(written, b'name="&#32842;&#x5929; &amp; &#35760;&#24405;"')
            zout.writestr(item, data)
    for engine in ("calamine", "openpyxl"):
        book = read_sheets(dst, NEEDED, engine)
        assert [s.name for s in book.sheets] == ["聊天 & 记录"], engine
        assert book.uncached_formulas == 1, engine
