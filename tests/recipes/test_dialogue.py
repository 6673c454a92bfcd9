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
from mpkit.recipes._dialogue_text import clean, emoji_chars, normalise
from mpkit.recipes.dialogue import DEFAULT_NOTICES, DialogueInputError, clean_dialogues
from tests.recipes import workbooks
from tests.recipes.workbooks import interrupted_cli

COLUMNS = ["坐席id", "客户微信id", "是否客服", "消息内容", "发送时间"]
FILES = [("std", "finetune_std_data"), ("mmi", "finetune_mmi_data")]


def _seed_matches_the_article(path, tmp_path):
    """``--compat seed`` on ``path`` writes the train files the article's code writes, byte for byte."""
    from benchmarks.article_dialogue import get_funtine_data

    get_funtine_data([str(path)], str(tmp_path / "port"), val_size=0)
    clean_dialogues([path], tmp_path / "ours", compat="seed", val_size=0, workers=1)
    for ours, theirs in FILES:
        assert (tmp_path / "ours" / ours / "train.txt").read_bytes() == \
            (tmp_path / "port" / theirs / "train.txt").read_bytes()


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


def test_seed_reads_odd_cells_as_the_article_does(tmp_path):
    """Cells where calamine and openpyxl differ (escapes, whitespace-only text) come out as openpyxl's."""
    odd = ["a\r\nb", "lit _x000D_ x", "_x005F_x0041_", "tab\tx", 12345, 1.5, "NA", "", " ", "   ", "\n", " a ",
           "x&y <b>", "a\rb", "好的\ufe0e", "👍🏽", "\u200b"]
    rows = [["kf_1", f"wxid_{i % 3}", "是" if i % 2 else "否", v, f"2024-03-01 10:{i:02d}:00"] for i, v in enumerate(odd)]
    path = _xlsx(tmp_path / "odd.xlsx", rows)
    assert not pd.read_excel(path, engine="calamine").equals(pd.read_excel(path, engine="openpyxl"))
    _seed_matches_the_article(path, tmp_path)


def _with_shared_strings(src, dst):
    """``src`` rewritten with its texts in a shared-strings table, as Excel and most exporters save
    them (openpyxl writes each text inside its cell)."""
    import re
    import zipfile

    texts = []

    def share(m):
        texts.append(m[3])
        return b"<c " + m[1] + b't="s"' + m[2] + b"><v>%d</v></c>" % (len(texts) - 1)

    with zipfile.ZipFile(src) as z:
        parts = {name: z.read(name) for name in z.namelist()}
    for name in [n for n in parts if n.startswith("xl/worksheets/sheet")]:
        parts[name] = re.sub(rb'<c ([^>]*?)t="inlineStr"([^>]*)><is>(.*?)</is></c>', share, parts[name], flags=re.S)
    ns = b"http://schemas.openxmlformats.org/"
    parts["xl/sharedStrings.xml"] = (b'<sst xmlns="' + ns + b'spreadsheetml/2006/main" count="%d" uniqueCount="%d">'
                                     % (len(texts), len(texts)) + b"".join(b"<si>" + t + b"</si>" for t in texts)
                                     + b"</sst>")
    parts["[Content_Types].xml"] = parts["[Content_Types].xml"].replace(
        b"</Types>", b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-'
                     b'officedocument.spreadsheetml.sharedStrings+xml"/></Types>')
    parts["xl/_rels/workbook.xml.rels"] = parts["xl/_rels/workbook.xml.rels"].replace(
        b"</Relationships>", b'<Relationship Type="' + ns + b'officeDocument/2006/relationships/sharedStrings" '
                             b'Target="sharedStrings.xml" Id="rIdShared"/></Relationships>')
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in parts.items():
            z.writestr(name, data)
    return dst


def test_seed_reads_shared_whitespace_texts_as_the_article_does(tmp_path):
    rows = [["kf_1", "wxid_a", "是" if i % 2 else "否", v, f"2024-03-01 10:{i:02d}:00"]
            for i, v in enumerate(["你好", "   ", "在的", " ", "_x000D_", "a\r\nb", "\n", "好"])]
    path = _with_shared_strings(_xlsx(tmp_path / "inline.xlsx", rows), tmp_path / "shared.xlsx")
    import zipfile

    assert b"<si><t>   </t></si>" in zipfile.ZipFile(path).read("xl/sharedStrings.xml")
    assert not pd.read_excel(path, engine="calamine").equals(pd.read_excel(path, engine="openpyxl"))
    _seed_matches_the_article(path, tmp_path)


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


def test_without_time_column_the_send_time_column_is_found(exports, tmp_path):
    report = clean_dialogues(exports, tmp_path, val_size=0, workers=1)
    assert report.time_column == "发送时间" and report.reordered == 1
    assert _dialogues(tmp_path / "std" / "train.txt")[0][-1] == "客户:有电话吗;谢谢"


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
    with pytest.raises(DialogueInputError, match=r"bad\.xlsx: .*missing column\(s\) 客户微信id, 是否客服, 消息内容"):
        clean_dialogues([exports[0], bad], tmp_path / "out", strict=True, workers=2)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DialogueInputError, match=r"a.xlsx: .*missing column\(s\) 时间"):
        clean_dialogues(exports[:1], tmp_path / "out", time_column="时间", workers=1)


def test_odd_contents_never_crash(tmp_path):
    odd = _xlsx(tmp_path / "odd.xlsx", [_row("wxid_a", False, value, i) for i, value in
                                        enumerate([float("nan"), 3.5, 7, True, "好的", "\n", "_x000D_"])])
    for compat in (None, "seed"):
        report = clean_dialogues([odd], tmp_path / str(compat), compat=compat, val_size=0, workers=1)
        assert report.rows_read == report.rows_kept + sum(report.rows_dropped.values()) == 7
    assert _dialogues(tmp_path / "None" / "std" / "train.txt") == [["客户:3.5;7;True;好的"]]


def test_not_a_file(tmp_path):
    with pytest.raises(DialogueInputError, match="no input could be read: .*nope.xlsx: no such file"):
        clean_dialogues([tmp_path / "nope.xlsx"], tmp_path)
    (tmp_path / "text.xlsx").write_text("not a spreadsheet")
    with pytest.raises(DialogueInputError, match="text.xlsx: not a readable .xlsx workbook"):
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
    assert "missing column(s) x" in capsys.readouterr().err


def test_clean_drops_blank_and_notices_and_keeps_numbers_as_text():
    notices = [normalise(n) for n in DEFAULT_NOTICES]
    assert clean("   ", notices) == clean(" \u3000\r\n", notices) == clean("🙂[捂脸]", notices) == (None, "empty")
    assert clean("[收到了一个表情，请在手机上查看]", notices) == (None, "notice")
    assert clean("不支持此消息，请在手机上查看", notices) == (None, "notice")
    assert clean(12345.0, notices) == ("12345", "") and clean(3.5, notices) == ("3.5", "")
    assert clean(" a_x000D_\r\nb ", notices) == ("ab", "")


def test_emoji_prefilter_sees_every_emoji_and_skips_only_what_replace_emoji_leaves_alone():
    assert not any(emoji_chars().isdisjoint(e) for e in emoji.EMOJI_DATA)
    for cp in [*range(0x80, 0x3400), *range(0x1F000, 0x1FC00), *range(0xE0000, 0xE0080)]:
        text = f"a{chr(cp)}#1"
        if emoji_chars().isdisjoint(text):
            assert emoji.replace_emoji(text, "") == text, hex(cp)


_SOME_EMOJI = sorted(emoji.EMOJI_DATA)[::40]  # ~130 of them: keycaps, flags, ZWJ families, skin tones...
_PIECES = _SOME_EMOJI + list("你好，。？!?#*0123456789 ab") + ["\ufe0f", "\ufe0e", "\u20e3", "\u200d", "\U0001f3fd",
                                                          "\U0001f1e8", "\U0001f1f3", "\U000e0067", "\U000e007f"]


def test_emoji_stripping_is_replace_emoji_for_any_mix_of_emoji_pieces_and_text():
    """Emoji are stripped run by run (cached), which must give what replace_emoji gives on the whole
    text: for keycaps next to digits, half sequences, lone selectors, joiners, flags and tags."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    from mpkit.recipes._dialogue_text import strip_emoji

    @settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.sampled_from(_PIECES), max_size=12))
    def check(pieces):
        text = "".join(pieces)
        assert strip_emoji(text) == emoji.replace_emoji(text, ""), ascii(text)

    check()


_NOTICE_PIECES = [*DEFAULT_NOTICES, "收到", "红包", "［", "］", "[", "]", "，", "⾳", "⽚", "㉆", "⽂", "\u0301", "e",
                  "가", "\u1100", "\u1161", " ", "\u3000", "你好", "文件", "⼀", "图片", "!", "！", "\u200b", "\r\n",
                  "_x000D_", "🙂", "[捂脸]", "\U0002a6a5", "\U0002f8a6"]


def test_messages_skipped_by_the_notice_key_check_hold_no_notice():
    """Messages without a notice's key character are not normalised for the notice test: whatever
    the mix of full-width forms, radicals, enclosed forms, combining marks and jamo, the result is
    the one of the full test."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    from mpkit.recipes._dialogue_text import any_of, notice_keys, notice_pattern

    user = tuple(DEFAULT_NOTICES) + ("é", "ｏｋ", "가방", "\U0002a6a5")  # and a character past U+FFFF
    pattern, chars = notice_pattern(user), notice_keys(user)
    assert "⽚" in chars and "［" not in chars  # the key of [图片] is 片; [ is no key
    keys = any_of(chars)
    assert clean("［红包］", pattern, keys) == (None, "notice") == clean("[图⽚]", pattern, keys)
    assert clean("e\u0301", pattern, keys) == (None, "notice")  # é made by composition: found

    @settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.sampled_from(_NOTICE_PIECES), max_size=8))
    def check(pieces):
        text = "".join(pieces)
        assert clean(text, pattern, keys) == clean(text, pattern), ascii(text)

    check()


def test_no_character_past_the_scanned_range_decomposes():
    """notice_keys scans the characters below U+30000 for those whose normal form holds a key."""
    import sys
    import unicodedata

    from mpkit.recipes import _dialogue_text

    assert all(unicodedata.decomposition(chr(c)) == "" for c in range(_dialogue_text._DECOMPOSED_BELOW,
                                                                        sys.maxunicode + 1))


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


# ---- exports as they come: every sheet, every file accounted for ---------------------------------------
def _chat(customer, n, start=0, agent="kf_1"):
    """``n`` alternating messages of one conversation, a minute apart from ``start``."""
    return [[agent, customer, "是" if i % 2 else "否", f"第{i}句", f"2024-03-01 10:{start + i:02d}:00"]
            for i in range(n)]




def test_every_sheet_with_the_chat_columns_is_read(tmp_path, start_method):
    book = workbooks.book(tmp_path / "two_sheets.xlsx", {
        "Sheet1": [COLUMNS] + _chat("wxid_a", 30),
        "Sheet2": [[f" {c} " for c in COLUMNS]] + _chat("wxid_b", 25),     # stray spaces in the header
        "说明": [["导出说明"], ["本文件由系统导出"]],
    })
    report = clean_dialogues([book], tmp_path / "out", val_size=0, workers=1)
    assert report.rows_read == report.rows_kept == 55
    assert report.sheets_read == (("two_sheets.xlsx", "Sheet1", 30), ("two_sheets.xlsx", "Sheet2", 25))
    assert [(f, s) for f, s, _why in report.sheets_skipped] == [("two_sheets.xlsx", "说明")]
    assert "missing column" in report.sheets_skipped[0][2]
    assert "Sheet2" in str(report) and "说明" in str(report)
    assert len(_dialogues(tmp_path / "out" / "std" / "train.txt")) == 2


def test_a_conversation_interleaved_across_files_is_sorted_by_the_detected_time_column(tmp_path):
    # wxid_a talks at 10:00, 10:01 (file a), 10:02, 10:03 (file b), 10:04 (file a again)
    rows = _chat("wxid_a", 5)
    a = _xlsx(tmp_path / "a.xlsx", [rows[0], rows[1], rows[4]])
    b = _xlsx(tmp_path / "b.xlsx", [rows[2], rows[3]])
    report = clean_dialogues([a, b], tmp_path / "out", val_size=0, workers=1)
    assert report.time_column == "发送时间"
    assert _dialogues(tmp_path / "out" / "std" / "train.txt") == [
        ["客户:第0句", "坐席:第1句", "客户:第2句", "坐席:第3句", "客户:第4句"]]
    assert report.reordered == 1
    assert "发送时间" in str(report) and "out of time order" in str(report)


def test_without_a_time_column_backwards_times_are_not_detectable_but_said(tmp_path):
    rows = [r[:4] for r in _chat("wxid_a", 3)]
    path = tmp_path / "no_time.xlsx"
    pd.DataFrame(rows, columns=COLUMNS[:4]).to_excel(path, index=False)
    report = clean_dialogues([path], tmp_path / "out", val_size=0, workers=1)
    assert report.time_column is None
    assert "no time column" in str(report)


def test_invisible_characters_are_stripped_and_invisible_utterances_dropped(tmp_path):
    path = _xlsx(tmp_path / "zw.xlsx", [
        _row("wxid_a", False, "\u200b", 1),
        _row("wxid_a", False, "\ufeff你\u200d好\u200c", 2),
        _row("wxid_a", True, "\u200c\u200b \ufeff", 3),
        _row("wxid_a", True, "在的", 4),
    ])
    for compat in (None,):
        report = clean_dialogues([path], tmp_path / "out", val_size=0, workers=1)
        assert _dialogues(tmp_path / "out" / "std" / "train.txt") == [["客户:你好", "坐席:在的"]]
        assert report.rows_dropped == {"empty": 2}
        assert report.rows_read == report.rows_kept + 2


def test_the_same_file_given_twice_is_read_once_with_a_warning(exports, tmp_path):
    from mpkit.recipes.dialogue import DialogueWarning

    once = clean_dialogues(exports, tmp_path / "once", val_size=0, workers=1)
    copy = shutil.copy(exports[0], tmp_path / "copy_of_a.xlsx")
    with pytest.warns(DialogueWarning, match="given twice|same content") as caught:
        twice = clean_dialogues([*exports, exports[0], copy], tmp_path / "twice", val_size=0, workers=1)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "a.xlsx: given twice" in messages[0]
    assert "copy_of_a.xlsx: the same content as" in messages[1]
    assert twice.rows_read == once.rows_read and twice.files == 2
    for name in once.written:
        assert (tmp_path / "twice" / name).read_bytes() == (tmp_path / "once" / name).read_bytes()
    assert "copy_of_a.xlsx" in str(twice)


def test_bad_files_and_lock_files_are_skipped_and_named_strict_aborts(exports, tmp_path, start_method):
    (tmp_path / "text.xlsx").write_text("not a spreadsheet")
    (tmp_path / "~$a.xlsx").write_bytes(b"\x05user")  # what Excel leaves beside an open workbook
    pd.DataFrame({"坐席id": ["kf"], "内容": ["x"]}).to_excel(tmp_path / "columns.xlsx", index=False)
    inputs = [*exports, tmp_path / "text.xlsx", tmp_path / "~$a.xlsx", tmp_path / "columns.xlsx"]
    report = clean_dialogues(inputs, tmp_path / "out", val_size=0, workers=2)
    skipped = dict(report.files_skipped)
    assert sorted(skipped) == ["columns.xlsx", "text.xlsx", "~$a.xlsx"]
    assert "lock file" in skipped["~$a.xlsx"] and "missing column" in skipped["columns.xlsx"]
    assert report.files == 2 and report.rows_read == 16
    assert "SKIPPED" in str(report) and "text.xlsx" in str(report)
    with pytest.raises(DialogueInputError, match="text.xlsx"):
        clean_dialogues(inputs, tmp_path / "strict", val_size=0, strict=True, workers=2)
    assert not (tmp_path / "strict").exists()


def test_a_folder_is_read_as_its_xlsx_files(exports, tmp_path):
    (tmp_path / "~$a.xlsx").write_bytes(b"\x05user")
    (tmp_path / "notes.txt").write_text("not an export")
    by_files = clean_dialogues(exports, tmp_path / "o1", val_size=0, workers=1)
    by_folder = clean_dialogues([tmp_path], tmp_path / "o2", val_size=0, workers=1)
    assert by_folder.files == 2 and by_folder.rows_read == by_files.rows_read
    assert (tmp_path / "o2" / "std" / "train.txt").read_bytes() == (tmp_path / "o1" / "std" / "train.txt").read_bytes()


def test_formulas_without_saved_values_are_counted(tmp_path):
    book = workbooks.book(tmp_path / "f.xlsx", {"Sheet1": [COLUMNS, *_chat("wxid_a", 3),
                                                  ["kf_1", "wxid_a", "否", '="你"&"好"', "2024-03-01 10:09:00"]]})
    report = clean_dialogues([book], tmp_path / "out", val_size=0, workers=1)
    assert report.uncached_formulas == 1 and report.rows_dropped == {"missing": 1}
    assert "formula" in str(report)


def test_without_calamine_the_files_are_read_with_openpyxl(exports, tmp_path):
    """python-calamine not installed (a stand-in package that fails to import, in the workers too)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    shadow = tmp_path / "shadow" / "python_calamine"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named python_calamine')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(root)])}
    code = ("import sys\nfrom mpkit.cli import main\nif __name__ == '__main__':\n"
            "    sys.exit(main(sys.argv[1:]))\n")
    (tmp_path / "run.py").write_text(code)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), "dialogues", *map(str, exports), "--out",
                           str(tmp_path / "no_cal"), "--val-size", "0", "-n", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "16 rows read" in done.stdout and "openpyxl" in done.stdout
    clean_dialogues(exports, tmp_path / "cal", val_size=0, workers=1)
    for name in ("std/train.txt", "mmi/train.txt"):
        assert (tmp_path / "no_cal" / name).read_bytes() == (tmp_path / "cal" / name).read_bytes()


# ---- the output location is checked before any reading ---------------------------------------------
def _cli_error(capsys, *argv):
    from mpkit.cli import main

    code = main(["dialogues", *map(str, argv)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_an_out_that_is_a_file_is_refused_before_reading(exports, tmp_path, capsys):
    (tmp_path / "out.txt").write_text("x")
    # the input does not exist: the output is checked first, so the message is about the output
    err = _cli_error(capsys, tmp_path / "nope.xlsx", "--out", tmp_path / "out.txt")
    assert err.startswith("mpkit dialogues: ") and "out.txt" in err and "not a folder" in err


def test_an_output_file_that_is_a_folder_is_refused_before_reading(exports, tmp_path, capsys):
    (tmp_path / "o" / "std" / "train.txt").mkdir(parents=True)
    err = _cli_error(capsys, tmp_path / "nope.xlsx", "--out", tmp_path / "o")
    assert "train.txt" in err and "is a folder" in err


def test_an_unwritable_out_is_refused_before_reading(exports, tmp_path, capsys):
    import os

    if os.geteuid() == 0:  # root writes anywhere chmod says: a folder procfs will not let anyone create
        out = "/proc/self/mpkit-out"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        out = tmp_path / "ro" / "out"
    err = _cli_error(capsys, tmp_path / "nope.xlsx", "--out", out)
    assert "cannot write" in err and str(out) in err


def test_val_size_nan_says_what_to_give(exports, tmp_path, capsys):
    with pytest.raises(ValueError, match="val_size must be .* not nan"):
        clean_dialogues(exports, tmp_path, val_size=float("nan"))
    from mpkit.cli import main

    with pytest.raises(SystemExit):
        main(["dialogues", str(exports[0]), "--out", str(tmp_path / "o"), "--val-size", "nan"])
    err = capsys.readouterr().err
    assert "--val-size" in err and "nan" in err and "cannot convert" not in err


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 10_006, 70_000])
def test_the_split_draws_numpys_permutation(n):
    np = pytest.importorskip("numpy")
    from mpkit.recipes._dialogue_text import permutation

    assert permutation(n, 1) == np.random.RandomState(1).permutation(n).tolist()


def test_an_export_dealt_into_files_in_any_order_gives_the_conversations_of_the_whole(tmp_path_factory):
    """However a chat export is split into files (and in whatever order the files are given), the
    conversations are those of the whole export in time order: the send-time column is found."""
    import itertools

    from hypothesis import HealthCheck, given, settings, strategies as st

    messages = [["kf_1", f"wxid_{i % 3}", "是" if i % 4 in (1, 2) else "否", f"消息{i}",
                 f"2024-03-01 10:{i // 60:02d}:{i % 60:02d}"] for i in range(24)]
    whole_dir = tmp_path_factory.mktemp("whole")
    clean_dialogues([_xlsx(whole_dir / "whole.xlsx", messages)], whole_dir / "out", val_size=0, workers=1)
    expected = (whole_dir / "out" / "std" / "train.txt").read_bytes()
    runs = itertools.count()

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.permutations(range(len(messages))), st.lists(st.integers(0, 2), min_size=len(messages),
                                                            max_size=len(messages)))
    def dealt(order, files_of):
        folder = tmp_path_factory.mktemp(f"dealt{next(runs)}")
        piles: dict[int, list] = {}
        for i in order:
            piles.setdefault(files_of[i], []).append(messages[i])
        paths = [_xlsx(folder / f"part{k}.xlsx", rows) for k, rows in piles.items()]
        report = clean_dialogues(paths, folder / "out", val_size=0, workers=1)
        assert report.time_column == "发送时间" and report.rows_kept == len(messages)
        assert (folder / "out" / "std" / "train.txt").read_bytes() == expected

    dealt()


def test_a_conversation_partly_without_send_times_keeps_file_order_and_is_counted(tmp_path):
    rows = _chat("wxid_a", 4)
    timed = _xlsx(tmp_path / "timed.xlsx", [rows[2], rows[3]])
    untimed = tmp_path / "untimed.xlsx"
    pd.DataFrame([r[:4] for r in rows[:2]], columns=COLUMNS[:4]).to_excel(untimed, index=False)
    report = clean_dialogues([timed, untimed], tmp_path / "out", val_size=0, workers=1)
    assert report.time_column == "发送时间" and report.unsorted == 1 and report.reordered == 0
    assert _dialogues(tmp_path / "out" / "std" / "train.txt") == [["客户:第2句", "坐席:第3句", "客户:第0句", "坐席:第1句"]]
    assert "1 kept in file order" in str(report)


def test_a_folder_with_subfolders_and_upper_case_names_names_every_workbook_it_did_not_read(exports, tmp_path):
    folder = tmp_path / "exports"
    (folder / "2024-02").mkdir(parents=True)
    shutil.copy(exports[0], folder / "A.XLSX")  # Windows' upper-case names
    shutil.copy(exports[1], folder / "2024-02" / "b.xlsx")  # exports kept by month
    report = clean_dialogues([folder], tmp_path / "out", val_size=0, workers=1)
    assert report.files == 1  # the upper-case one is read like the others
    (sub, why), = report.files_skipped
    assert sub.endswith("2024-02") and "1 .xlsx" in why and "2024-02" in str(report)
    both = clean_dialogues([folder, folder / "2024-02"], tmp_path / "out2", val_size=0, workers=1)
    assert both.files == 2 and both.files_skipped == ()


def test_ctrl_c_while_the_files_are_written_leaves_no_truncated_training_file(tmp_path):
    # Ctrl-C in the terminal while train.txt is half written: a truncated train.txt looks like a
    # whole one to the trainer. The run says it was interrupted, and leaves no output file behind.
    from mpkit.recipes._xlsx import XlsxWriter

    folder = tmp_path / "exports"
    folder.mkdir()
    for k in range(2):  # ~2 s of writing on a quiet machine: time to interrupt it
        with XlsxWriter(folder / f"export_{k}.xlsx", COLUMNS) as w:
            w.write(["kf_1", f"wxid_{k}_{i // 20}", "是" if i % 2 else "否", f"第 {i} 条消息, 有点长的内容 {k}",
                     f"2024-03-01 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"] for i in range(60_000))
    out = tmp_path / "out"
    train = out / "std" / "train.txt"
    code, stdout, stderr = interrupted_cli(["dialogues", str(folder), "--out", str(out), "-n", "2"],
                                           lambda: train.exists() and train.stat().st_size > 0)
    assert code == 130, (stdout, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    left = [str(p.relative_to(out)) for p in out.rglob("*.txt")]
    assert left == [], left


@pytest.mark.parametrize("writer", ["excel recipe", "openpyxl"])
def test_seed_reads_escape_like_texts_and_carriage_returns_as_the_article_does(tmp_path, writer):
    # the Excel recipe's own output (a message with a Windows line end is stored as &#13;), and a
    # message quoting escaped text, which openpyxl stores as it is (_x0041_, lower-case _x000d_)
    from mpkit.recipes._xlsx import XlsxWriter

    odd = ["你好", "a\r\nb", "\r", "a_x0041_x0042_", "lit _x000d_ x", "_x0031_ 号", "好的", "在吗"]
    rows = [["kf_1", "wxid_a", "是" if i % 2 else "否", v, f"2024-03-01 10:{i:02d}:00"] for i, v in enumerate(odd)]
    path = tmp_path / "odd.xlsx"
    if writer == "openpyxl":
        _xlsx(path, rows)
    else:
        with XlsxWriter(path, COLUMNS) as w:
            w.write(rows)
    _seed_matches_the_article(path, tmp_path)


def test_messages_with_an_empty_or_odd_send_time_are_kept_in_file_order_and_counted(tmp_path):
    # a real export's 发送时间 column: a few empty cells, a time typed without padding or with dots,
    # a time-only cell. The column was found by itself: it must not cost the user those messages.
    import datetime as dt

    times = ["2024-03-01 09:00:00", "2024-3-1 9:01", None, "", "2024.03.01 09:03", dt.time(9, 4), "2024-03-01 09:05:00"]
    rows = [["kf_1", "wxid_a", "是" if i % 2 else "否", f"第{i}句", t] for i, t in enumerate(times)]
    path = _xlsx(tmp_path / "odd_times.xlsx", rows)
    report = clean_dialogues([path], tmp_path / "out", val_size=0, workers=1)
    assert report.rows_kept == 7 and report.rows_dropped == {}, report.rows_dropped
    assert _dialogues(tmp_path / "out" / "std" / "train.txt") == [
        [f"{'坐席' if i % 2 else '客户'}:第{i}句" for i in range(7)]]
    assert report.unsorted == 1 and report.untimed == 5
    assert "5 messages without a readable 发送时间" in str(report) and "'2024.03.01 09:03'" in str(report)


def test_spreadsheets_in_a_folder_that_are_not_xlsx_are_named(exports, tmp_path):
    folder = exports[0].parent
    (folder / "old_export.xls").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))  # Excel 97-2003
    (folder / "chat.csv").write_text("坐席id,消息内容\n", encoding="utf-8")
    report = clean_dialogues([folder], tmp_path / "out", val_size=0, workers=1)
    assert report.files == 2
    assert sorted(f for f, _why in report.files_skipped) == ["chat.csv", "old_export.xls"]
    assert "not an .xlsx" in str(report)


def test_customers_talking_about_payments_are_not_dropped_as_notices(tmp_path):
    said = ["可以微信转账吗？", "我已经向你转账了，请查收", "支持微信红包吗", "收到红包了吗", "老板已收钱了没"]
    notices = ["微信红包", "[转账]请在手机上查看", "已收钱", "[红包]恭喜发财", "收到红包"]
    rows = [_row("wxid_a", False, t, i) for i, t in enumerate(said + notices)]
    report = clean_dialogues([_xlsx(tmp_path / "pay.xlsx", rows)], tmp_path / "out", val_size=0, workers=1)
    assert report.rows_dropped == {"notice": len(notices)} and report.rows_kept == len(said)
