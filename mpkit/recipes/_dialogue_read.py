"""Reading one chat export in a worker process: the first stage of the dialogue recipe.

``read_export(job)`` runs in an mpkit worker (one call per file) and returns a ``FileRows``:

* default mode: every sheet that has the chat columns (``_workbook.read_sheets``: calamine, or
  openpyxl when calamine is missing or fails on the file; headers stripped), rows with a missing
  cell or repeated within the file dropped, each message cleaned (``_dialogue_text.clean``); then
  the messages of each (agent, customer) key with their time, not yet merged, because a
  conversation may continue in another file: the main process joins the files' pieces first.
  The time column is the one asked for, else the first of :data:`TIME_COLUMNS` the sheet has; a
  message whose time cell is empty or unreadable is kept with no time (counted in ``untimed``);
* seed mode: the article's steps inside the one file (its first sheet as pandas' openpyxl reader
  reads it, by ``_seed_sheet``; ``dropna``, ``drop_duplicates``, system messages matched as whole
  contents, ``groupby`` of the file), each conversation already merged into utterances.

A file that cannot be used comes back with ``skipped`` set to the reason (without the file's
name), never as an exception, so that the main process can skip it and go on, or stop when asked
to be strict.
"""
from __future__ import annotations

import datetime as dt
import operator
from dataclasses import dataclass, field
from pathlib import Path

from ._dialogue_text import any_of, clean, notice_keys, notice_pattern, seed_conversation

AGENT, CUSTOMER, ROLE, CONTENT = "坐席id", "客户微信id", "是否客服", "消息内容"
KEY = [AGENT, CUSTOMER]
NEEDED = [AGENT, CUSTOMER, ROLE, CONTENT]
#: Column names taken as the send time when no time column is given, in this order: the names
#: WeChat-style exporters use. A name only some sheets have is used where it is.
TIME_COLUMNS = ("发送时间", "消息时间", "聊天时间", "时间", "send_time", "time", "timestamp")


class DialogueInputError(ValueError):
    """A chat export that cannot be read as one: its name and what is wrong are in the message."""


@dataclass(frozen=True)
class ReadJob:
    path: str
    seed: bool
    time_column: str | None
    notices: tuple[str, ...]


@dataclass
class FileRows:
    name: str
    rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    #: seed: [utterance lines] in groupby order; default: {key: (times, roles, texts)}, three
    #: lists (times as seconds, None without a time column; roles the two strings of _ROLES): lists of
    #: numbers and shared strings are half the memory and pickling time of a tuple per message
    conversations: object = None
    #: why the file was not used ("" when it was)
    skipped: str = ""
    #: (sheet, rows) read; (sheet, why) left out
    sheets: list = field(default_factory=list)
    sheets_skipped: list = field(default_factory=list)
    engine: str = ""
    fallback: str = ""
    uncached_formulas: int = 0
    #: the time column used for each sheet read (None: the sheet has none)
    time_columns: list = field(default_factory=list)
    #: messages kept without a readable time (empty, or a form _time does not know), and up to
    #: UNTIMED_EXAMPLES of those values as the report shows them
    untimed: int = 0
    untimed_examples: list = field(default_factory=list)


def read_export(job: ReadJob) -> FileRows:
    path = Path(job.path)
    out = FileRows(path.name)
    if path.name.startswith("~$"):
        out.skipped = ("an Excel lock file (Excel writes one beside each workbook it has open), not a chat "
                       "export. Fix: leave it out (a folder given as input leaves these out by itself).")
        return out
    try:
        return _read_seed(path, job, out) if job.seed else _read_default(path, job, out)
    except DialogueInputError as exc:
        out.skipped = str(exc)
        return out


def _drop(out: FileRows, reason: str, count: int) -> None:
    if count:
        out.dropped[reason] = out.dropped.get(reason, 0) + count


# ---- default mode: every sheet, rows as lists --------------------------------------------------------
def _read_default(path: Path, job: ReadJob, out: FileRows) -> FileRows:
    from ._workbook import WorkbookError, read_sheets

    needed = NEEDED + ([job.time_column] if job.time_column else [])
    try:
        book = read_sheets(path, needed)
    except WorkbookError as exc:
        raise DialogueInputError(exc.reason) from None
    out.engine, out.fallback, out.uncached_formulas = book.engine, book.fallback, book.uncached_formulas
    out.sheets_skipped = list(book.skipped)
    if not book.sheets:
        why = "; ".join(f"sheet {name!r}: {reason}" for name, reason in book.skipped) or "no sheets"
        raise DialogueInputError(
            f"no sheet has the columns {', '.join(needed)} ({why}). Fix: export the chat with "
            "these columns, rename them, or leave this file out.")
    notices, keys = notice_pattern(job.notices), any_of(notice_keys(job.notices))
    conversations: dict[tuple[str, str], tuple[list, list, list]] = {}
    seen: set = set()  # the file's rows so far: a row repeated (within any sheet) is a duplicate
    cleaned: dict = {}  # message -> (text, reason): chat exports repeat their greetings and notices
    entries: dict = {}  # (agent, customer) as read -> its conversation's lists
    for sheet in book.sheets:
        out.sheets.append((sheet.name, len(sheet.rows)))
        out.rows += len(sheet.rows) + sheet.blank_rows
        _drop(out, "blank", sheet.blank_rows)
        time_column = job.time_column or next((c for c in TIME_COLUMNS if c in sheet.header), None)
        out.time_columns.append(time_column)
        pick = operator.itemgetter(*[sheet.column(c) for c in NEEDED + ([time_column] if time_column else [])])
        for row in sheet.rows:
            values = pick(row)
            if None in values[:4]:  # a needed cell empty (the time may be: the message is kept)
                _drop(out, "missing", 1)
                continue
            if values in seen:
                _drop(out, "duplicate", 1)
                continue
            seen.add(values)
            role = _ROLES.get(str(values[2]).strip())
            if role is None:
                _drop(out, "unknown_role", 1)
                continue
            content = values[3]
            if content.__class__ is str:
                result = cleaned.get(content)
                if result is None:
                    result = cleaned[content] = clean(content, notices, keys)
            else:
                result = clean(content, notices, keys)
            text, reason = result
            if text is None:
                _drop(out, reason, 1)
                continue
            time = _time(values[4]) if time_column and values[4] is not None else None
            if time is not None:
                time = (time - _UNIX).total_seconds()
            elif time_column:  # kept: its conversation stays in file order, and the report says why
                out.untimed += 1
                if len(out.untimed_examples) < UNTIMED_EXAMPLES:
                    shown = "empty" if values[4] is None else repr(values[4]) if values[4].__class__ is str \
                        else str(values[4])
                    if shown not in out.untimed_examples:
                        out.untimed_examples.append(shown)
            entry = entries.get(values[:2])
            if entry is None:
                key = (str(values[0]).strip(), str(values[1]).strip())
                entry = entries[values[:2]] = conversations.setdefault(key, ([], [], []))
            entry[0].append(time)
            entry[1].append(role)
            entry[2].append(text)
    out.conversations = conversations
    return out


#: Unreadable send times a file reports, as examples for the user: enough to see the pattern.
UNTIMED_EXAMPLES = 3
_EXCEL_EPOCH = dt.datetime(1899, 12, 30)
_UNIX = dt.datetime(1970, 1, 1)
#: 是否客服 as read -> the one string object kept for it (agent or customer)
_ROLES = {"是": "是", "否": "否"}
_FORMATS = ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d", "%Y年%m月%d日 %H:%M:%S", "%Y年%m月%d日 %H:%M")


def _time(value) -> dt.datetime | None:
    """A send time as a naive datetime (UTC when the text has an offset); None if it is none."""
    if value.__class__ is str:  # the usual case first: "2024-03-01 09:01:07"
        try:
            time = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return time if time.tzinfo is None else time.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _EXCEL_EPOCH + dt.timedelta(days=value)  # a date typed as Excel's day number
    if isinstance(value, str):
        text = value.strip()
        try:
            return _time(dt.datetime.fromisoformat(text))
        except ValueError:
            pass
        for fmt in _FORMATS:
            try:
                return dt.datetime.strptime(text, fmt)
            except ValueError:
                continue
    return None


# ---- seed mode: the article's DataFrame steps ----------------------------------------------------------
def _read_seed(path: Path, job: ReadJob, out: FileRows) -> FileRows:
    from ._seed_sheet import read_first_sheet

    try:
        df, names = read_first_sheet(path)
    except Exception as exc:  # noqa: BLE001 - any reader error: name the file, say what it was
        raise DialogueInputError(
            f"could not be read as an Excel file ({type(exc).__name__}: {exc}). "
            "Fix: give .xlsx chat exports, or leave this file out.") from None
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise DialogueInputError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(it has {', '.join(map(str, df.columns)) or 'no columns'}). Fix: export the chat with "
            f"the columns {', '.join(NEEDED)}, rename them, or leave this file out.")
    out.rows = len(df)
    out.sheets.append((names[0], len(df)))
    out.sheets_skipped = [(name, "compat='seed' reads the first sheet only, as the article does") for name in names[1:]]
    before = len(df)
    df = df.dropna()
    _drop(out, "missing", before - len(df))
    before = len(df)
    df = df.drop_duplicates(keep="first")
    _drop(out, "duplicate", before - len(df))
    notice = df[CONTENT].isin(list(job.notices))
    _drop(out, "notice", int(notice.sum()))
    df = df[~notice]
    # df.groupby(by=KEY)'s groups, in its order (ngroup numbers them as iterating would give
    # them), each in row order: the same lists as iterating, without a DataFrame per group
    groups = df.groupby(by=KEY)
    roles: list[list] = [[] for _ in range(groups.ngroups)]
    contents: list[list] = [[] for _ in range(groups.ngroups)]
    for number, role, content in zip(groups.ngroup().tolist(), df[ROLE].tolist(), df[CONTENT].tolist()):
        roles[number].append(role)
        contents[number].append(content)
    out.conversations = [seed_conversation(r, c) for r, c in zip(roles, contents)]
    return out

