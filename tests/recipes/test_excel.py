"""mpkit.recipes.excel: parallel extraction of chat exports, notices dropped, saved in segments."""
from __future__ import annotations

import argparse
import os
import shutil

import pandas as pd
import pytest

from mpkit.recipes import SAMPLE_DATA, excel
from tests.recipes import workbooks
from tests.recipes.workbooks import interrupted_cli

SAMPLES = sorted(SAMPLE_DATA.glob("*.xlsx"))


@pytest.fixture
def inputs(tmp_path):
    """The four sample exports copied to tmp_path/in."""
    folder = tmp_path / "in"
    folder.mkdir()
    return [shutil.copy(p, folder / p.name) for p in SAMPLES]


def _bad_files(folder):
    corrupt = folder / "corrupt.xlsx"
    corrupt.write_bytes(bytes(range(256)) * 20)
    empty = folder / "empty.xlsx"
    empty.write_bytes(b"")
    columnless = folder / "columnless.xlsx"
    pd.DataFrame({"name": ["a"], "消息内容": ["hi"]}).to_excel(columnless, index=False)
    return corrupt, empty, columnless


def _read_back(report, fmt):
    reader = {"xlsx": lambda p: pd.read_excel(p, dtype=object, engine="calamine"), "parquet": pd.read_parquet,
              "csv": lambda p: pd.read_csv(p, dtype=object, keep_default_na=False, na_values=[""])}[fmt]
    return pd.concat([reader(p) for p in report.outputs], ignore_index=True)


def _is_notice(text):
    return isinstance(text, str) and any(n in excel.normalize(text) for n in
                                         map(excel.normalize, excel.ARTICLE_NOTICES))


def test_rows_add_up_notices_are_gone_and_numbers_stay_text(inputs, tmp_path, start_method):
    report = excel.extract(inputs, tmp_path / "out", workers=2, progress=False)
    assert report.files_read == tuple(map(str, inputs)) and report.files_skipped == ()
    assert report.rows_read == sum(len(pd.read_excel(p, engine="calamine")) for p in SAMPLES)
    assert report.rows_dropped > 0
    assert report.rows_read == report.rows_written + report.rows_dropped
    assert [p.name for p in report.outputs] == ["extract_0_3.xlsx"]
    df = _read_back(report, "xlsx")
    assert list(df.columns) == list(excel.COLUMNS) and len(df) == report.rows_written
    assert not df["消息内容"].map(_is_notice).any()
    texts = set(df["消息内容"].dropna())
    assert "12345" in texts and all(isinstance(t, str) for t in texts)


def test_notices_match_across_punctuation_widths_and_as_substrings():
    article = [excel.normalize(n) for n in excel.DEFAULT_NOTICES]
    assert excel._has_notice(excel.normalize("我通过了你的朋友验证请求，现在我们可以开始聊天了"), article)
    assert excel._has_notice(excel.normalize("[收到了一个表情，请在手机上查看]"), article)
    assert excel._has_notice(excel.normalize("  微信红包 ！"), article)
    assert not excel._has_notice(excel.normalize("可以微信红包付款吗？"), article)  # a customer's question
    assert not excel._has_notice(excel.normalize("推荐你去都一处烧麦馆(前门店)，"), article)


def test_segments_of_n_files_and_user_notices(inputs, tmp_path, start_method):
    report = excel.extract(inputs, tmp_path / "out", segment=3, fmt="csv", workers=2, progress=False,
                           notices=excel.DEFAULT_NOTICES + ("酒店",))
    assert [p.name for p in report.outputs] == ["extract_0_2.csv", "extract_3_3.csv"]
    sizes = [len(pd.read_csv(p)) for p in report.outputs]
    assert sum(sizes) == report.rows_written == report.rows_read - report.rows_dropped
    df = _read_back(report, "csv")
    assert not df["消息内容"].dropna().str.contains("酒店").any()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_parquet_and_csv_hold_the_same_rows(inputs, tmp_path, fmt):
    report = excel.extract(inputs, tmp_path / fmt, segment=2, fmt=fmt, workers=2, progress=False)
    assert all(p.suffix == "." + fmt for p in report.outputs) and len(report.outputs) == 2
    df = _read_back(report, fmt)
    assert len(df) == report.rows_written
    assert not df["消息内容"].map(_is_notice).any()


def test_bad_files_are_skipped_and_named_while_the_others_finish(inputs, tmp_path, start_method):
    corrupt, empty, columnless = _bad_files(tmp_path / "in")
    paths = [corrupt, *inputs[:2], empty, *inputs[2:], columnless]
    report = excel.extract(paths, tmp_path / "out", segment=25, fmt="parquet", workers=2, progress=False)
    assert report.files_read == tuple(map(str, inputs))
    reasons = dict(report.files_skipped)
    assert set(reasons) == {str(corrupt), str(empty), str(columnless)}
    assert "not a readable .xlsx" in reasons[str(corrupt)] and "Fix:" in reasons[str(corrupt)]
    assert "empty file" in reasons[str(empty)]
    assert "坐席id" in reasons[str(columnless)] and "发送时间" in reasons[str(columnless)]
    assert "消息内容," not in reasons[str(columnless)].split("(found")[0]
    assert report.rows_read == report.rows_written + report.rows_dropped
    assert len(report.files_read) + len(report.files_skipped) == len(paths)
    assert str(columnless) in str(report)


def test_strict_raises_naming_the_file(inputs, tmp_path, start_method):
    _, empty, _ = _bad_files(tmp_path / "in")
    with pytest.raises(excel.ExtractError, match="empty.xlsx.*empty file"):
        excel.extract([*inputs[:2], empty], tmp_path / "out", strict=True, workers=2, progress=False)
    assert not list((tmp_path / "out").glob("extract_*"))  # the segment it stopped in is not left half-written


def test_calamine_and_openpyxl_give_the_same_rows(inputs, tmp_path):
    a = excel.extract(inputs[:2], tmp_path / "cal", fmt="parquet", engine="calamine", workers=2,
                      progress=False)
    b = excel.extract(inputs[:2], tmp_path / "opx", fmt="parquet", engine="openpyxl", workers=2,
                      progress=False)
    assert (a.rows_read, a.rows_dropped) == (b.rows_read, b.rows_dropped)
    pd.testing.assert_frame_equal(_read_back(a, "parquet"), _read_back(b, "parquet"))


def test_bad_arguments_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="Fix"):
        excel.extract(SAMPLES, tmp_path, fmt="json")
    with pytest.raises(ValueError, match="segment"):
        excel.extract(SAMPLES, tmp_path, segment=0)


def _cli(argv):
    parser = argparse.ArgumentParser()
    excel.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_run_reads_folders_and_prints_the_report(inputs, tmp_path, capsys, start_method):
    folder = inputs[0].parent
    code = excel.run(_cli([str(folder), "--out", str(tmp_path / "out"), "--segment", "2", "--format",
                           "parquet", "-n", "2", "--no-progress"]))
    out = capsys.readouterr().out
    assert code == 0
    assert "4 file(s) read, 0 skipped" in out and "extract_2_3.parquet" in out
    _bad_files(folder)
    code = excel.run(_cli([str(folder), "--out", str(tmp_path / "out2"), "-n", "2", "--no-progress"]))
    assert code == 1 and "SKIPPED" in capsys.readouterr().out
    code = excel.run(_cli([str(folder), "--out", str(tmp_path / "out3"), "--strict", "-n", "2",
                           "--no-progress"]))
    assert code == 1 and ".xlsx" in capsys.readouterr().err
    assert excel.run(_cli([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])) == 2


# ---- what real exports do to a run: every sheet, reruns, long cells, formulas, output errors ----------


def _chat(n, start=0, text="消息 {i}"):
    return [list(excel.COLUMNS)] + [["kf_1", f"wx_{i % 3}", "是" if i % 2 else "否", text.format(i=i + start),
                                     f"2024-03-01 09:{(i + start) % 60:02d}:00"] for i in range(n)]


def _rows_on_disk(folder):
    """Every row in every file of ``folder`` (all sheets of each .xlsx), read without mpkit."""
    total = 0
    for p in sorted(folder.iterdir()):
        if p.suffix == ".xlsx":
            total += sum(len(df) for df in pd.read_excel(p, sheet_name=None, engine="calamine").values())
        elif p.suffix == ".csv":
            total += len(pd.read_csv(p, dtype=object))
        elif p.suffix == ".parquet":
            total += len(pd.read_parquet(p))
    return total


def test_every_sheet_with_the_columns_is_read_and_the_others_are_named(tmp_path, start_method):
    two = workbooks.book(tmp_path / "two_sheets.xlsx", {"Sheet1": _chat(30), "Sheet2": _chat(25, start=30),
                                                 "说明": [["导出说明"], ["客服系统 v2"]]})
    one = workbooks.book(tmp_path / "one.xlsx", {"Sheet1": _chat(10, start=100)})
    report = excel.extract([two, one], tmp_path / "out", fmt="csv", workers=2, progress=False)
    assert report.rows_read == 30 + 25 + 10 == report.rows_written + report.rows_dropped
    assert report.sheets_read == ((str(two), "Sheet1", 30), (str(two), "Sheet2", 25), (str(one), "Sheet1", 10))
    [(path, sheet, why)] = report.sheets_skipped
    assert (path, sheet) == (str(two), "说明") and "坐席id" in why and "found: 导出说明" in why
    text = str(report)
    assert "3 sheet(s) read, 1 skipped" in text and "Sheet2 (25 rows)" in text and "'说明'" in text
    assert _rows_on_disk(tmp_path / "out") == 65


def test_the_recipes_own_xlsx_output_read_back_keeps_the_rows_spilled_onto_sheet2(inputs, tmp_path, monkeypatch):
    # The writer runs in this process: a small sheet size stands for .xlsx's 1,048,575 rows a sheet.
    monkeypatch.setattr(excel, "XLSX_MAX_ROWS", 4_000)
    first = excel.extract(inputs, tmp_path / "first", workers=2, progress=False)
    [out] = first.written
    assert out.sheets == -(-first.rows_written // 4_000) > 1
    assert len(pd.read_excel(out.path, sheet_name=0, engine="calamine")) == 4_000
    again = excel.extract([out.path], tmp_path / "again", fmt="parquet", workers=2, progress=False)
    assert again.files_skipped == () and again.rows_dropped == 0
    assert again.rows_read == again.rows_written == first.rows_written
    sheets = pd.read_excel(out.path, sheet_name=None, dtype=object, engine="calamine")
    assert list(sheets) == [f"Sheet{k + 1}" for k in range(out.sheets)]
    pd.testing.assert_frame_equal(_read_back(again, "parquet"), pd.concat(sheets.values(), ignore_index=True),
                                  check_dtype=False)


def test_a_rerun_into_the_same_folder_is_refused_or_replaces_the_previous_run(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    first = excel.extract(inputs, out, segment=1, workers=2, progress=False)
    assert len(first.outputs) == 4
    with pytest.raises(excel.OutputError, match=r"not empty .*Fix: .*--overwrite"):
        excel.extract(inputs, out, segment=2, workers=2, progress=False)
    assert excel.run(_cli([*map(str, inputs), "--out", str(out), "-n", "2", "--no-progress"])) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mpkit excel: the output folder {out} is not empty") and err.count("\n") == 1
    (out / "notes.txt").write_text("mine")  # not the recipe's: left alone
    second = excel.extract(inputs, out, segment=2, workers=2, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["extract_0_1.xlsx", "extract_2_3.xlsx", "manifest.json",
                                                     "notes.txt"]
    assert _rows_on_disk(out) == second.rows_written == first.rows_written
    import json
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [(f["name"], f["rows"]) for f in manifest["files"]] == [(f.path.name, f.rows) for f in second.written]
    assert sum(f["rows"] for f in manifest["files"]) == manifest["rows_written"] == second.rows_written
    assert manifest["rows_read"] == manifest["rows_written"] + manifest["rows_dropped"]


def _with_texts(path, **texts):
    """``path`` with each placeholder text replaced in the sheet XML: openpyxl itself cuts cells at 32,767
    characters, while other exporters (and a chat system's own .xlsx export) write them whole."""
    import zipfile

    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.startswith("xl/worksheets/"):
                for placeholder, text in texts.items():
                    assert f">{placeholder}<".encode() in data
                    data = data.replace(f">{placeholder}<".encode(), f">{text}<".encode())
            zout.writestr(item, data)
    tmp.replace(path)
    return path


def test_cells_too_long_for_xlsx_go_whole_to_a_side_file_named_in_the_report(tmp_path, start_method):
    long_text = "长" * 40_000  # .xlsx holds 32,767 characters a cell
    emoji_text = "🙂" * 20_000  # 20,000 characters, 40,000 UTF-16 units: too long for Excel as well
    rows = _chat(20)
    rows[6][3], rows[15][3] = "LONG_TEXT", "EMOJI_TEXT"
    rows.insert(10, [None] * 5)  # a blank row: the emoji row is Excel's row 17
    src = _with_texts(workbooks.book(tmp_path / "long.xlsx", {"Sheet1": rows}), LONG_TEXT=long_text, EMOJI_TEXT=emoji_text)
    report = excel.extract([src], tmp_path / "out", workers=2, progress=False)
    side = tmp_path / "out" / "extract_0_0.long_cells.csv"
    assert report.long_rows == ((str(src), "Sheet1", 7, side), (str(src), "Sheet1", 17, side))
    assert "row 7 of sheet 'Sheet1' in " + str(src) in str(report) and str(side) in str(report)
    kept = pd.read_excel(tmp_path / "out" / "extract_0_0.xlsx", engine="calamine")
    whole = pd.read_csv(side, dtype=object)
    assert len(kept) + len(whole) == report.rows_written == 20
    assert report.blank_rows == 1 and "1 empty row(s)" in str(report)
    assert list(whole["消息内容"]) == [long_text, emoji_text]
    assert not kept["消息内容"].str.len().gt(32_767).any()


def test_formulas_without_saved_values_are_counted_in_the_report(tmp_path):
    rows = _chat(12)
    for i in (2, 5, 9):
        rows[i][3] = f'=CONCAT("订单", {i})'  # written by a script: no value saved with the formula
    src = workbooks.book(tmp_path / "formulas.xlsx", {"Sheet1": rows, "汇总": [["合计"], ["=COUNTA(Sheet1!A:A)"]]})
    report = excel.extract([src], tmp_path / "out", fmt="csv", workers=2, progress=False)
    assert report.uncached_formulas == ((str(src), 3),)  # the summary sheet is not read
    assert "3 formula cell(s) in " + str(src) in str(report)
    assert report.rows_read == 12 == report.rows_written


def _excel_cli(args, env=None, timeout=180):
    import subprocess
    import sys

    from tests.proctree import child_env

    return subprocess.run([sys.executable, "-m", "mpkit", "excel", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env or child_env())


def test_output_errors_are_one_line_before_any_reading(inputs, tmp_path):
    a_file = tmp_path / "report.txt"
    a_file.write_text("not a folder")
    cases = {"is a file": a_file, "cannot write": a_file / "sub", "is a folder": tmp_path / "out"}
    (tmp_path / "out" / "extract_0_3.xlsx").mkdir(parents=True)
    for expected, out in cases.items():
        done = _excel_cli([*inputs, "--out", out, "-n", "1", "--overwrite"])
        assert done.returncode == 2, (expected, done.stderr)
        assert done.stderr.startswith("mpkit excel: ") and done.stderr.count("\n") == 1, done.stderr
        assert expected in done.stderr and "Fix:" in done.stderr and "Traceback" not in done.stderr
        assert done.stdout == ""  # no report: nothing was read
    assert (tmp_path / "out" / "extract_0_3.xlsx").is_dir()


def test_without_calamine_installed_openpyxl_reads_every_file(inputs, tmp_path):
    from tests.proctree import child_env

    hide = tmp_path / "no_calamine"  # this process and its workers start as if python-calamine were absent
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['python_calamine'] = None\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hide), env["PYTHONPATH"]])
    done = _excel_cli([*inputs, "--out", tmp_path / "out", "--format", "csv", "-n", "2", "--no-progress"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 file(s) read, 0 skipped" in done.stdout and "SKIPPED" not in done.stdout
    assert "python-calamine is not installed: the files were read with openpyxl" in done.stdout
    expected = excel.extract(inputs, tmp_path / "with_calamine", fmt="csv", workers=2, progress=False)
    assert f"{expected.rows_written:,} rows written" in done.stdout


def test_writing_shows_progress(inputs, tmp_path, capsys, monkeypatch):
    from mpkit.recipes import _excel_write

    monkeypatch.setattr(_excel_write, "WRITE_BATCH", 1_000)  # a bar for files of 1,000 rows and more
    assert excel.run(_cli([*map(str, inputs), "--out", str(tmp_path / "out"), "-n", "2"])) == 0
    assert "writing extract_0_3.xlsx" in capsys.readouterr().err
    code = excel.run(_cli([*map(str, inputs), "--out", str(tmp_path / "csv"), "--format", "csv", "-n", "2"]))
    assert code == 0 and "writing extract_0_3.csv" in capsys.readouterr().err
    [csv] = (tmp_path / "csv").glob("*.csv")
    text = csv.read_text(encoding="utf-8-sig")  # written in batches of 1,000 rows: one header, one BOM
    assert "\ufeff" not in text and text.count("坐席id,客户微信id") == 1
    assert len(pd.read_csv(csv, dtype=object)) == _rows_on_disk(tmp_path / "out")


# ---- folders as users keep them: month subfolders, .XLSX, the same export twice ---------------------
def test_a_folder_with_subfolders_and_upper_case_names_names_every_workbook_it_did_not_read(inputs, tmp_path,
                                                                                           capsys):
    folder = inputs[0].parent
    (folder / "2024-02").mkdir()
    inputs[2].rename(folder / "2024-02" / inputs[2].name)  # exports kept by month
    inputs[3].rename(folder / "CHAT_EXPORT_003.XLSX")  # Windows' upper-case names
    (folder / "notes").mkdir()  # a subfolder without workbooks: nothing to say
    code = excel.run(_cli([str(folder), "--out", str(tmp_path / "out"), "-n", "1", "--no-progress"]))
    out, err = capsys.readouterr()
    assert "3 file(s) read" in out  # the upper-case one is a workbook like the others
    assert "2024-02" in err and "1 .xlsx" in err and "notes" not in err
    assert code == 1  # a workbook under --in was not read: not a clean run
    code = excel.run(_cli([str(folder), str(folder / "2024-02"), "--out", str(tmp_path / "out2"), "-n", "1",
                           "--no-progress"]))
    assert code == 0 and "4 file(s) read" in capsys.readouterr().out


def test_the_output_folder_inside_the_input_folder_is_not_a_subfolder_left_out(inputs, tmp_path, capsys):
    folder = inputs[0].parent
    argv = [str(folder), "--out", str(folder / "out"), "-n", "1", "--no-progress", "--overwrite"]
    assert excel.run(_cli(argv)) == 0
    assert excel.run(_cli(argv)) == 0 and "out" not in capsys.readouterr().err


def test_the_same_export_given_twice_is_read_once_and_named(inputs, tmp_path, start_method):
    once = excel.extract(inputs, tmp_path / "once", workers=2)
    copy = shutil.copy(inputs[0], tmp_path / "copy_of_000.xlsx")
    twice = excel.extract([*inputs, inputs[0], copy], tmp_path / "twice", workers=2)
    assert twice.rows_read == once.rows_read and twice.rows_written == once.rows_written
    assert _rows_on_disk(tmp_path / "twice") == _rows_on_disk(tmp_path / "once")
    reasons = dict(twice.files_skipped)
    assert "given twice" in reasons[str(inputs[0])] and "same content as" in reasons[str(copy)]
    assert "copy_of_000.xlsx" in str(twice)


def test_ctrl_c_half_way_says_which_segments_are_whole_and_leaves_no_partial_file(tmp_path):
    from mpkit.recipes._xlsx import XlsxWriter

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):
        with XlsxWriter(folder / f"export_{k}.xlsx", excel.COLUMNS) as w:
            w.write(["kf_1", f"wx_{i % 7}", "是" if i % 2 else "否", f"消息 {k} {i}", f"2024-03-01 09:{i % 60:02d}:00"]
                    for i in range(60_000))
    out = tmp_path / "out"
    code, stdout, stderr = interrupted_cli(["excel", str(folder), "--out", str(out), "--segment", "1", "-n", "2",
                                            "--no-progress"], lambda: (out / "extract_1_1.xlsx").exists())
    assert code == 130, (stdout, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr and "--overwrite" in stderr, stderr
    left = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in left  # no manifest: the run did not finish
    for name in left:  # each segment left is whole, and named as such
        assert name in stderr and len(pd.read_excel(out / name, engine="calamine")) == 60_000, name


def test_spreadsheets_in_a_folder_that_are_not_xlsx_are_named(inputs, tmp_path, capsys):
    folder = inputs[0].parent
    (folder / "old_export.xls").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))  # Excel 97-2003
    (folder / "macro.xlsm").write_bytes(b"PK")
    (folder / "chat.csv").write_text("坐席id,消息内容\n", encoding="utf-8")
    (folder / "readme.txt").write_text("notes")
    code = excel.run(_cli([str(folder), "--out", str(tmp_path / "out"), "-n", "1", "--no-progress"]))
    out, err = capsys.readouterr()
    assert "4 file(s) read" in out and code == 1
    for name in ("old_export.xls", "macro.xlsm", "chat.csv"):
        assert name in err, err
    assert "readme.txt" not in err


def test_overwrite_never_replaces_a_manifest_another_tool_wrote(inputs, tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    theirs = '{"dataset": "chat exports 2024", "owner": "team"}\n'
    (out / "manifest.json").write_text(theirs, encoding="utf-8")
    code = excel.run(_cli([str(inputs[0]), "--out", str(out), "--overwrite", "-n", "1", "--no-progress"]))
    assert code == 2 and "manifest.json" in capsys.readouterr().err
    assert (out / "manifest.json").read_text(encoding="utf-8") == theirs
    # a previous run's manifest is replaced as before
    assert excel.run(_cli([str(inputs[0]), "--out", str(tmp_path / "o"), "-n", "1", "--no-progress"])) == 0
    assert excel.run(_cli([str(inputs[1]), "--out", str(tmp_path / "o"), "--overwrite", "-n", "1",
                           "--no-progress"])) == 0


def test_customers_talking_about_payments_are_not_dropped_as_notices(tmp_path):
    # a customer-service chat mentions transfers and red packets all the time: only the app's own
    # notices go
    said = ["可以微信转账吗？", "我已经向你转账了，请查收", "支持微信红包吗", "收到红包了吗", "老板已收钱了没"]
    notices = ["微信红包", "微信转账", "“小王”撤回了一条消息", "我通过了你的朋友验证请求，现在我们可以开始聊天了"]
    rows = [list(excel.COLUMNS)] + [["kf_1", "wx_1", "否", t, f"2024-03-01 09:{i:02d}:00"]
                                    for i, t in enumerate(said + notices)]
    path = workbooks.book(tmp_path / "pay.xlsx", {"Sheet1": rows})
    report = excel.extract([path], tmp_path / "out", workers=1)
    kept = list(pd.read_excel(report.outputs[0], engine="calamine")["消息内容"])
    assert kept == said and report.rows_dropped == len(notices)
