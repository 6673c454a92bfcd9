"""mpkit.recipes.excel: parallel extraction of chat exports, notices dropped, saved in segments."""
from __future__ import annotations

import argparse
import shutil

import pandas as pd
import pytest

from mpkit.recipes import SAMPLE_DATA, excel

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
    assert excel._has_notice(excel.normalize("  对方发来 微信红包 ！"), article)
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
