"""Text rules of the dialogue recipe: notices, cleaning, utterance merging, the train/val split.

Pure functions, imported by the reading workers and by the main process alike (no pandas here).
"""
from __future__ import annotations

import functools
import itertools
import math
import random
import re
import string
import unicodedata
from collections.abc import Iterable, Sequence

#: What ends a piece without a ``;`` being added. The article uses a ``punctuations`` it never
#: defines; this is ASCII punctuation plus the full-width marks of Chinese chat text.
PUNCTUATIONS = string.punctuation + "，。！？；：、…“”‘’（）《》【】〈〉「」『』～·—"

#: The article's system messages (its ``sysInfo_list``), dropped in ``compat="seed"`` mode when
#: a message is exactly one of them.
SEED_NOTICES = ("我通过了好友请求,现在你俩可以开始聊天了", "我通过了你的朋友验证请求,现在我们可以开始聊天了",
                "已通过你的朋友验证请求,现在可以开始聊天了", "不支持此消息,请在手机上查看", "微信红包")

#: Notices dropped in the default mode: a message containing one of these (after punctuation is
#: normalised to half-width) is a chat-app notice, not an utterance. Covers friend-accept texts,
#: red packets, transfers, stickers and "please view on your phone" in their full- and half-width
#: spellings. Extend it: ``notices=DEFAULT_NOTICES + ("以上是打招呼的内容",)``. Matching is by
#: substring (those of WHOLE_MESSAGE_NOTICES: the whole message), so keep entries specific
#: enough not to hit real utterances.
DEFAULT_NOTICES = SEED_NOTICES + ("现在可以开始聊天了", "现在我们可以开始聊天了", "现在你俩可以开始聊天了",
                                  "请在手机上查看", "[红包]", "收到红包", "[转账]", "向你转账", "已收钱",
                                  "[表情]", "[动画表情]", "[图片]", "[语音]", "[视频]", "[文件]")

ROLE_PREFIX = {"是": "坐席:", "否": "客户:"}

#: Removed from every message in the default mode: line breaks (and openpyxl's ``_x000D_``), and the
#: invisible characters that chat apps and Excel leave in text (zero-width space, non-joiner,
#: joiner, word joiner, byte-order mark) and that would make an utterance look blank but not be.
_REMOVED = re.compile("_x000D_|[\r\n\u200b\u200c\u200d\u2060\ufeff]")
#: WeChat's text emoji codes, e.g. ``[捂脸]``: removed like emoji in the default mode.
WECHAT_CODES = ("微笑", "撇嘴", "色", "发呆", "得意", "流泪", "害羞", "闭嘴", "睡", "大哭", "尴尬", "发怒", "调皮",
                "呲牙", "惊讶", "难过", "囧", "抓狂", "吐", "偷笑", "愉快", "白眼", "傲慢", "困", "惊恐", "憨笑",
                "悠闲", "咒骂", "疑问", "嘘", "晕", "衰", "骷髅", "敲打", "再见", "擦汗", "抠鼻", "鼓掌", "坏笑",
                "右哼哼", "鄙视", "委屈", "快哭了", "阴险", "亲亲", "可怜", "笑脸", "生病", "脸红", "破涕为笑",
                "恐惧", "失望", "无语", "嘿哈", "捂脸", "奸笑", "机智", "皱眉", "耶", "吃瓜", "加油", "汗", "天啊",
                "社会社会", "旺柴", "好的", "打脸", "哇", "翻白眼", "666", "让我看看", "叹气", "苦涩", "裂开",
                "嘴唇", "爱心", "心碎", "拥抱", "强", "弱", "握手", "胜利", "抱拳", "勾引", "拳头", "OK", "合十",
                "啤酒", "咖啡", "蛋糕", "玫瑰", "凋谢", "菜刀", "炸弹", "便便", "月亮", "太阳", "庆祝", "礼物",
                "红包", "發", "福", "烟花", "爆竹", "猪头", "跳跳", "发抖", "转圈")
_WECHAT_CODE = re.compile(r"\[(?:" + "|".join(map(re.escape, WECHAT_CODES)) + r")\]")


def normalise(text: str) -> str:
    """Full-width punctuation and letters to half-width (NFKC), whitespace removed: for matching."""
    return "".join(unicodedata.normalize("NFKC", text).split())


def as_text(value) -> str:
    """A cell as text: numbers stored as numbers become their digits (``12345.0`` -> ``12345``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@functools.cache
def emoji_chars() -> frozenset[str]:
    """The non-ASCII characters that occur in any emoji (keycaps start with ASCII ``#*0-9`` but go on
    with U+20E3), and the two variation selectors, which ``replace_emoji`` drops even alone: text with
    none of them has no emoji, so ``emoji.replace_emoji`` (a tokenizer in
    Python, ~40 us a message) can be skipped and the text is returned as it is. A set, for the
    exact test; messages are searched first with :func:`any_of` of it (its characters past U+FFFF
    as one range: a class that lists them one by one searches ~10x slower)."""
    import emoji

    return frozenset({c for e in emoji.EMOJI_DATA for c in e if ord(c) > 127} | {"\ufe0e", "\ufe0f"})


@functools.cache
def _run_chars() -> frozenset[str]:
    """Every character of any emoji (the keycaps' ASCII ``#*0-9`` included) and the variation selectors."""
    import emoji

    return frozenset({c for e in emoji.EMOJI_DATA for c in e}) | emoji_chars()


def any_of(chars: Iterable[str]) -> re.Pattern:
    """An expression finding one of ``chars`` in a text, or any character past U+FFFF if one of them
    is: a class of characters past U+FFFF is searched ~10x slower than one of the first 65,536, and
    ``frozenset.isdisjoint`` ~4x slower. A quick test for "none of these": a match only says maybe."""
    bmp = sorted({c for c in chars if ord(c) < 0x10000})
    astral = any(ord(c) >= 0x10000 for c in chars)
    parts = "".join(re.escape(c) for c in bmp) + ("\U00010000-\U0010ffff" if astral else "")
    return re.compile(f"[{parts}]" if parts else "(?!)")


@functools.cache
def _emoji_search():
    """The quick search for a character of :func:`emoji_chars` (or any past U+FFFF)."""
    return any_of(emoji_chars()).search


def strip_emoji(text: str) -> str:
    """``emoji.replace_emoji(text, "")``, the same result, quickly when the text has no emoji.

    Without a zero-width joiner, ``replace_emoji``'s tokenizer never looks past a character that
    is in no emoji, so each run of emoji characters (``"👍"``, ``"❤️"``, ``"150"``: keycaps start
    with a digit) is replaced on its own, and the few different runs are remembered: ~8 us a
    message with emoji instead of ~45. At a zero-width joiner the tokenizer steps back over tokens
    it has read, which may lie before the run: such a text goes to ``replace_emoji`` whole."""
    if _emoji_search()(text) is None or emoji_chars().isdisjoint(text):
        return text
    if "\u200d" in text:
        return _replace_emoji(text)
    return "".join(_replace_emoji("".join(run)) if is_emoji else "".join(run)
                   for is_emoji, run in itertools.groupby(text, _run_chars().__contains__))


#: Runs of emoji characters (and texts with a zero-width joiner) whose replacement a reading
#: process remembers: chat exports use the same few emoji again and again. 4,096 short texts are
#: ~1 MB; a miss costs ~40 us.
EMOJI_CACHE = 4096


@functools.lru_cache(maxsize=EMOJI_CACHE)
def _replace_emoji(text: str) -> str:
    import emoji

    return emoji.replace_emoji(text, "")


#: Notices that are also phrases people say ("可以微信转账吗?", "我已经向你转账了"): they match only
#: a message that is nothing else (punctuation and spaces around it aside). Other notices, the
#: user's included, match inside a message.
WHOLE_MESSAGE_NOTICES = ("微信红包", "收到红包", "向你转账", "已收钱")


def notice_pattern(notices: Iterable[str], whole: Iterable[str] = WHOLE_MESSAGE_NOTICES, *,
                   normalised: bool = False) -> re.Pattern:
    """One expression finding any of ``notices`` in a normalised message, those also in ``whole``
    only as the whole message (non-word characters around it aside): ~7x faster than testing each
    in turn. ``notices`` and ``whole`` are :func:`normalise`-d first, unless ``normalised`` (texts
    normalised by the caller's own rule, as the Excel recipe's)."""
    prepare = (lambda n: n) if normalised else normalise
    flat = [f for f in dict.fromkeys(prepare(n) for n in notices) if f]
    whole_set = {prepare(n) for n in whole}
    inside = [re.escape(f) for f in flat if f not in whole_set]
    entire = [re.escape(f) for f in flat if f in whole_set]
    parts = inside + ([rf"^\W*(?:{'|'.join(entire)})\W*$"] if entire else [])
    return re.compile("|".join(parts) or "(?!)")


@functools.cache
def _whole_set() -> frozenset[str]:
    return frozenset(normalise(n) for n in WHOLE_MESSAGE_NOTICES)


def whole_only(notice: str) -> bool:
    """True if the normalised ``notice`` matches only a whole message (:data:`WHOLE_MESSAGE_NOTICES`)."""
    return notice in _whole_set()


#: Every decomposition in Unicode is of a character below this one (the last ones: the CJK
#: compatibility ideographs supplement, U+2F800-2FA1F), so :func:`notice_keys` looks no further.
_DECOMPOSED_BELOW = 0x30000
#: Characters normalised at once while looking for those that change: a block that comes out the
#: same has none, and most blocks do.
_SCAN_BLOCK = 128


@functools.lru_cache(maxsize=8)
def notice_keys(notices: tuple[str, ...]) -> frozenset[str]:
    """Characters a message must have (as it is, before :func:`normalise`) to hold one of ``notices``.
    Testing them first spares normalising the ~90% of messages that hold no notice: the NFKC step
    costs more than the rest of :func:`clean`.

    Each notice gets a key: a character of its decomposed form (NFKD), which no decomposition
    leaves. A normalised message that holds the notice holds the key once decomposed, so the
    message has the key, or a character whose NFKD holds it (full-width ``［``, a Kangxi radical
    ``⽚``, an enclosed ``㉆``...), found by scanning Unicode's decomposable characters once per
    process (~0.04 s)."""
    keys = set()
    for flat in dict.fromkeys(normalise(n) for n in notices):
        if flat:  # any character would do; the highest code point is seldom punctuation
            keys.add(max(unicodedata.normalize("NFKD", flat)))
    found = set(keys)
    for block in range(0, _DECOMPOSED_BELOW, _SCAN_BLOCK):
        if 0xD800 <= block < 0xE000:  # surrogates: no characters
            continue
        text = "".join(map(chr, range(block, block + _SCAN_BLOCK)))
        if unicodedata.is_normalized("NFKD", text):
            continue
        found.update(c for c in text if not keys.isdisjoint(unicodedata.normalize("NFKD", c)))
    return frozenset(found)


def clean(value, notices: Sequence[str] | re.Pattern, keys: re.Pattern | None = None) -> tuple[str | None, str]:
    """The cleaned text of one message and why it is dropped: ``(text, "")`` or ``(None, reason)``.

    Line breaks (``\\n``, ``\\r``, openpyxl's ``_x000D_``) and invisible characters (``\\u200b``...)
    are removed, then notices (``notices``: a :func:`notice_pattern`, or texts
    already :func:`normalise`-d; ``keys``: ``any_of(notice_keys(...))`` of them, to skip messages
    without), emoji and WeChat codes (``[捂脸]``); what is left blank is ``"empty"``.
    """
    text = as_text(value)
    if not text.isprintable() or "_x000D_" in text:  # every character _REMOVED takes is unprintable
        text = _REMOVED.sub("", text)
    if keys is None or keys.search(text) is not None:
        flat = normalise(text)
        if notices.search(flat) if isinstance(notices, re.Pattern) else any(
                notice in flat and (not whole_only(notice) or re.fullmatch(rf"\W*{re.escape(notice)}\W*", flat))
                for notice in notices):
            return None, "notice"
    text = _WECHAT_CODE.sub("", strip_emoji(text)).strip() if "[" in text else strip_emoji(text).strip()
    return (text, "") if text else (None, "empty")


def merge(roles: Sequence[str], contents: Sequence[str]) -> list[str]:
    """Consecutive messages of one role joined into one utterance, as in the article.

    A piece not ending in punctuation gets ``;``; each utterance is prefixed ``坐席:`` or ``客户:``
    and loses its final character (the article's ``save_str[0:-1]``).
    """
    lines: list[str] = []
    current = ""
    for index, (role, content) in enumerate(zip(roles, contents)):
        if content[-1] not in PUNCTUATIONS:
            content += ";"
        if index and role == roles[index - 1]:
            current += content
            continue
        if index:
            lines.append(current[:-1])
        current = ROLE_PREFIX.get(role, "客户:") + content
    if len(current) > 1:
        lines.append(current[:-1])
    return lines


def seed_conversation(roles: Iterable, contents: Iterable) -> list[str]:
    """The article's cleaning of one conversation, step for step (emoji removed twice, as there)."""
    kept_roles, kept = [], []
    for role, content in zip(roles, contents):
        content = strip_emoji(as_seed_text(content).replace("\n", ""))
        if content:
            kept_roles.append(role)
            kept.append(content)
    kept = [strip_emoji(c.replace("\n", "")) for c in kept]
    return merge(kept_roles, kept)


def as_seed_text(value) -> str:
    """``str(value)`` for a number, where the article's ``content.replace`` would crash."""
    return value if isinstance(value, str) else str(value)


def val_count(val_size: int | float, n: int, *, clamp: bool) -> int:
    """Conversations for validation out of ``n``: a count, or a fraction rounded up.

    As sklearn's ``train_test_split``: a count ``k`` of the article's becomes the fraction
    ``k / n``, and ``ceil(fraction * n)`` conversations go to validation. With ``clamp`` (the
    default mode) the count is kept within ``0 .. n - 1`` so that training is never empty; without
    it (``compat="seed"``) a split that leaves no training data fails, as sklearn does.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or not math.isfinite(val_size) \
            or val_size < 0 \
            or (isinstance(val_size, float) and val_size >= 1):
        raise ValueError(f"val_size must be a count (0, 1, 2, ...) or a fraction in [0, 1), not {val_size!r}. "
                         "Fix: e.g. val_size=1000 or val_size=0.1; 0 writes everything to train.")
    if val_size == 0 or n == 0:
        return 0
    fraction = val_size / n if isinstance(val_size, int) else val_size
    count = math.ceil(fraction * n)
    if clamp:
        return max(0, min(count, n - 1))
    if count >= n:
        raise ValueError(f"val_size={val_size!r} leaves no conversation for training out of {n} (the "
                         "article's train_test_split fails the same way). Fix: a smaller val_size.")
    return count


def split(n: int, n_val: int) -> tuple[list[int], list[int]]:
    """(train, val) positions as sklearn's ``train_test_split(random_state=1)`` picks them.

    sklearn's ShuffleSplit: ``perm = RandomState(1).permutation(n)``, validation ``perm[:n_val]``,
    training ``perm[n_val:]``, each in that order. ``n_val == 0`` keeps every conversation in
    its original order, for training.
    """
    if n_val == 0:
        return list(range(n)), []
    perm = permutation(n, 1)
    return perm[n_val:], perm[:n_val]


def permutation(n: int, seed: int) -> list[int]:
    """``numpy.random.RandomState(seed).permutation(n).tolist()``, without importing numpy (0.2 s
    and ~20 MB in the main process): both are MT19937, which Python's ``random`` runs too.

    numpy seeds the generator with ``init_genrand(seed)`` and shuffles from the end, drawing each
    position ``j <= i`` as 32-bit outputs masked to ``i``'s bit length until one is ``<= i``.
    """
    mt = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & 0xFFFFFFFF)
    rng = random.Random()
    rng.setstate((3, (*mt, 624), None))
    bits = rng.getrandbits
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        mask = (1 << i.bit_length()) - 1
        j = bits(32) & mask
        while j > i:
            j = bits(32) & mask
        perm[i], perm[j] = perm[j], perm[i]
    return perm
