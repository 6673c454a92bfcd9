"""mpkit.recipes.dialogue: the article's port reproduced byte for byte, each default-mode fix, bad input."""
from __future__ import annotations

import math
import shutil

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("openpyxl")
pytest.importorskip("python_calamine")
emoji = pytest.importorskip("emoji")

from mpkit.recipes import SAMPLE_DATA
from mpkit.recipes._dialogue_text import _EMOJI_CANDIDATE, clean, normalise
from mpkit.recipes.dialogue import DEFAULT_NOTICES, DialogueInputError, clean_dialogues

COLUMNS = ["坐席id", "客户微信id", "是否客服", "消息内容", "发送时间"]
FILES = [("std", "finetune_std_data"), ("mmi", "finetune_mmi_data")]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Copies of the sample exports, and the article port's output on them (val_size=50)."""
    from benchmarks.article_dialogue import get_funtine_data

    folder = tmp_path_factory.mktemp("sample")
    paths = [shutil.copy(p, folder) for p in sorted(SAMPLE_DATA.glob("*.xlsx"))]
    port = tmp_path_factory.mktemp("port")
    get_funtine_data(paths, str(port), val_size=50)
    return paths, port


def _xlsx(path, rows):
    pd.DataFrame(rows, columns=COLUMNS).to_excel(path, index=False, engine="openpyxl")
    return path


def _row(customer, agent_speaks, content, minute):
    return ["kf_1", customer, "是" if agent_speaks else "否", content, f"2024-03-01 09:{minute:02d}:00"]


def _dialogues(path):
    """The conversations of an output file in the default layout: lists of lines."""
    text = path.read_text(encoding="utf-8")
    return [block.split("\n") for block in text.rstrip("\n").split("\n\n")] if text else []


# ---- compat="seed" -----------------------------------------------------------------------------
def test_seed_is_the_article_byte_for_byte(sample, tmp_path, start_method):
    paths, port = sample
    report = clean_dialogues(paths, tmp_path, compat="seed", val_size=50, workers=2)
    for ours, theirs in FILES:
        for split in ("train", "val"):
            assert (tmp_path / ours / f"{split}.txt").read_bytes() == (port / theirs / f"{split}.txt").read_bytes()
    assert report.written == {"std/train.txt": 451, "mmi/train.txt": 451, "std/val.txt": 50, "mmi/val.txt": 50}
    assert report.rows_read == report.rows_kept + sum(report.rows_dropped.values()) == 11739


def test_seed_val_size_zero_puts_everything_in_train(sample, tmp_path):
    paths, _port = sample
    report = clean_dialogues(paths[:1], tmp_path, compat="seed", val_size=0, workers=1)
    assert report.written["std/val.txt"] == 0 and (tmp_path / "std" / "val.txt").read_bytes() == b""
    train = (tmp_path / "std" / "train.txt").read_text(encoding="utf-8")
    assert train.count("\n\n") == report.conversations == report.written["std/train.txt"]
    with pytest.raises(ValueError, match="leaves no conversation for training"):
        clean_dialogues(paths[:1], tmp_path, compat="seed", val_size=10**6, workers=1)


# ---- the default mode's fixes --------------------------------------------------------------------
@pytest.fixture
def exports(tmp_path):
    """Two files: wxid_a continues from the first into the second, rows out of time order, noise."""
    first = _xlsx(tmp_path / "a.xlsx", [
        _row("wxid_a", False, "你好，帮我推荐酒店", 1),
        _row("wxid_a", True, "我通过了你的朋友验证请求，现在我们可以开始聊天了", 0),   # full-width notice
        _row("wxid_a", True, "为您推荐_x000D_\n北京饭店", 2),
        _row("wxid_a", True, "   ", 3),                                               # whitespace only
        _row("wxid_a", True, "地址在\r\n长安街🙂", 4),
        _row("wxid_b", False, "收到红包，请在手机上查看", 1),                          # red packet variant
        _row("wxid_b", False, 12345, 2),                                               # a number
        _row("wxid_b", True, "[转账]", 3),
        _row("wxid_b", True, "好的。", 4),
        _row("wxid_b", False, "自定义通知", 5),
        _row("wxid_b", False, None, 6),                                                # NaN
        _row("wxid_b", False, "👍", 7),                                                 # emoji only
    ])
    second = _xlsx(tmp_path / "b.xlsx", [
        _row("wxid_a", False, "谢谢[捂脸]", 6),
        _row("wxid_a", False, "有电话吗", 5),                                           # earlier: sorted
        _row("wxid_c", False, "在吗", 1),
        _row("wxid_c", True, "在的", 2),
    ])
    return [first, second]


def test_default_mode_fixes(exports, tmp_path, start_method):
    out = tmp_path / "out"
    report = clean_dialogues(exports, out, val_size=0, time_column="发送时间",
                             notices=DEFAULT_NOTICES + ("自定义通知",), workers=2)
    train = (out / "std" / "train.txt").read_text(encoding="utf-8")
    assert not train.endswith("\n\n") and "\r" not in train and "_x000D_" not in train
    assert _dialogues(out / "std" / "train.txt") == [
        ["客户:你好，帮我推荐酒店", "坐席:为您推荐北京饭店;地址在长安街", "客户:有电话吗;谢谢"],  # one, across files
        ["客户:12345", "坐席:好的"],
        ["客户:在吗", "坐席:在的"],
    ]
    assert _dialogues(out / "mmi" / "train.txt") == [list(reversed(d)) for d in _dialogues(out / "std" / "train.txt")]
    # the whitespace-only cell may come back from the reader as NaN ("missing") or as "   " ("empty")
    assert report.rows_dropped["notice"] == 4
    assert report.rows_dropped["empty"] + report.rows_dropped["missing"] == 3
    assert report.rows_read == 16 == report.rows_kept + sum(report.rows_dropped.values())
    assert report.written == {"std/train.txt": 3, "mmi/train.txt": 3, "std/val.txt": 0, "mmi/val.txt": 0}


def test_without_time_column_rows_keep_file_order(exports, tmp_path):
    clean_dialogues(exports, tmp_path, val_size=0, workers=1)
    assert _dialogues(tmp_path / "std" / "train.txt")[0][-1] == "客户:谢谢;有电话吗"


@pytest.mark.parametrize(("val_size", "n_val"), [(1, 1), (10, 2), (0.5, 2), (0.1, 1), (0, 0)])
def test_val_size_count_or_fraction_clamped(exports, tmp_path, val_size, n_val):
    report = clean_dialogues(exports, tmp_path, val_size=val_size, workers=1)
    assert report.written["std/val.txt"] == len(_dialogues(tmp_path / "std" / "val.txt")) == n_val
    assert report.written["std/train.txt"] == len(_dialogues(tmp_path / "mmi" / "train.txt")) == 3 - n_val


@pytest.mark.parametrize("bad", [-1, 1.0, 1.5, "10", True])
def test_bad_val_size_says_what_to_give(exports, tmp_path, bad):
    with pytest.raises(ValueError, match="count .* or a fraction"):
        clean_dialogues(exports, tmp_path, val_size=bad)


# ---- bad input --------------------------------------------------------------------------------
def test_missing_columns_name_the_file_and_the_columns(exports, tmp_path, start_method):
    bad = tmp_path / "bad.xlsx"
    pd.DataFrame({"坐席id": ["kf"], "内容": ["x"]}).to_excel(bad, index=False)
    with pytest.raises(DialogueInputError, match=r"bad\.xlsx: missing columns 客户微信id, 是否客服, 消息内容"):
        clean_dialogues([exports[0], bad], tmp_path / "out", workers=2)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DialogueInputError, match="a.xlsx: missing column 时间"):
        clean_dialogues(exports[:1], tmp_path / "out", time_column="时间", workers=1)


def test_odd_contents_never_crash(tmp_path):
    odd = _xlsx(tmp_path / "odd.xlsx", [_row("wxid_a", False, value, i) for i, value in
                                        enumerate([float("nan"), 3.5, 7, True, "好的", "\n", "_x000D_"])])
    for compat in (None, "seed"):
        report = clean_dialogues([odd], tmp_path / str(compat), compat=compat, val_size=0, workers=1)
        assert report.rows_read == report.rows_kept + sum(report.rows_dropped.values()) == 7
    assert _dialogues(tmp_path / "None" / "std" / "train.txt") == [["客户:3.5;7;True;好的"]]


def test_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        clean_dialogues([tmp_path / "nope.xlsx"], tmp_path)
    (tmp_path / "text.xlsx").write_text("not a spreadsheet")
    with pytest.raises(DialogueInputError, match="text.xlsx: could not be read"):
        clean_dialogues([tmp_path / "text.xlsx"], tmp_path, workers=1)


# ---- report, CLI, helpers ------------------------------------------------------------------------
def test_report_adds_up_on_the_sample(sample, tmp_path):
    paths, _ = sample
    report = clean_dialogues(paths, tmp_path, time_column="发送时间", val_size=0.1, workers=2)
    assert report.files == 4 and report.rows_read == 11739
    assert report.rows_read == report.rows_kept + sum(report.rows_dropped.values())
    assert report.written["std/val.txt"] == math.ceil(0.1 * report.conversations)
    for name, count in report.written.items():
        assert len(_dialogues(tmp_path / name)) == count
    assert report.written["std/train.txt"] + report.written["std/val.txt"] == report.conversations == 500
    text = "".join((tmp_path / n).read_text(encoding="utf-8") for n in report.written)
    assert "请在手机上查看" not in text and "[玫瑰]" not in text and "_x000D_" not in text


def test_cli(exports, tmp_path, capsys):
    from mpkit.cli import main

    assert main(["dialogues", *map(str, exports), "--out", str(tmp_path / "o"), "--val-size", "1",
                 "--time-column", "发送时间", "--notice", "自定义通知", "-n", "1"]) == 0
    assert "16 rows read" in capsys.readouterr().out
    assert len(_dialogues(tmp_path / "o" / "std" / "val.txt")) == 1
    assert main(["dialogues", str(exports[0]), "--out", str(tmp_path / "o"), "--time-column", "x"]) == 1
    assert "missing column x" in capsys.readouterr().err


def test_clean_drops_blank_and_notices_and_keeps_numbers_as_text():
    notices = [normalise(n) for n in DEFAULT_NOTICES]
    assert clean("   ", notices) == clean(" \u3000\r\n", notices) == clean("🙂[捂脸]", notices) == (None, "empty")
    assert clean("[收到了一个表情，请在手机上查看]", notices) == (None, "notice")
    assert clean("不支持此消息，请在手机上查看", notices) == (None, "notice")
    assert clean(12345.0, notices) == ("12345", "") and clean(3.5, notices) == ("3.5", "")
    assert clean(" a_x000D_\r\nb ", notices) == ("ab", "")


def test_emoji_prefilter_sees_every_emoji():
    assert all(_EMOJI_CANDIDATE.search(e) for e in emoji.EMOJI_DATA)


def test_both_writers_are_pipeline_stages_with_bounded_channels(tmp_path):
    """The MMI file is written by its own process fed through a bounded channel, and both writers
    are stages of a pipeline, so its dashboard (or text status) shows them."""
    from mpkit.recipes import SAMPLE_DATA
    from mpkit.recipes.dialogue import clean_dialogues

    report = clean_dialogues(sorted(SAMPLE_DATA.glob("*.xlsx"))[:2], tmp_path / "out", val_size=0.1,
                             progress=False)
    stats = report.writers
    assert stats is not None and stats.name == "dialogue writers"
    assert [s.name for s in stats.stages if s.kind == "stage"] == ["std writer", "mmi writer"]
    assert stats.accounted and stats.pending == 0 and stats.failed == 0
    assert all(s.capacity <= 8 * 200 for s in stats.stages)
    assert stats.stage("mmi writer").received == stats.stage("std writer").emitted > 0
    # the dashboard counts conversations, not the messages that carry them
    assert stats.submitted == stats.completed == report.conversations, (stats.submitted, report)
