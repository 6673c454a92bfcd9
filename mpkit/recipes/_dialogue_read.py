"""Reading one chat export in a worker process: the first stage of the dialogue recipe.

``read_export(job)`` runs in an mpkit worker (one call per file) and returns a ``FileRows``:

* seed mode: the article's steps inside the one file (openpyxl, ``dropna``, ``drop_duplicates``,
  system messages matched as whole contents, ``groupby`` of the file), each conversation already
  merged into utterances;
* default mode: the cleaned messages of each (agent, customer) key, not yet merged, because a
  conversation may continue in the next file: the main process joins the files' pieces first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ._dialogue_text import clean, normalise, seed_conversation

AGENT, CUSTOMER, ROLE, CONTENT = "坐席id", "客户微信id", "是否客服", "消息内容"
KEY = [AGENT, CUSTOMER]
NEEDED = [AGENT, CUSTOMER, ROLE, CONTENT]


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
    rows: int
    dropped: dict[str, int] = field(default_factory=dict)
    #: seed: [(key, utterance lines)] in groupby order; default: {key: [(time, role, text)]}
    conversations: object = None


def read_export(job: ReadJob) -> FileRows:
    import pandas as pd

    path = Path(job.path)
    try:
        df = pd.read_excel(path, engine="openpyxl" if job.seed else "calamine")
    except Exception as exc:  # noqa: BLE001 - any reader error: name the file, say what it was
        raise DialogueInputError(
            f"{path.name}: could not be read as an Excel file ({type(exc).__name__}: {exc}). "
            "Fix: give .xlsx chat exports, or leave this file out.") from None
    needed = NEEDED + ([job.time_column] if job.time_column else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DialogueInputError(
            f"{path.name}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(it has {', '.join(map(str, df.columns)) or 'no columns'}). Fix: export the chat with "
            f"the columns {', '.join(needed)}, rename them, or leave this file out.")
    out = FileRows(path.name, len(df))
    return _read_seed(df, job, out) if job.seed else _read_default(df, job, out)


def _drop(out: FileRows, reason: str, count: int) -> None:
    if count:
        out.dropped[reason] = out.dropped.get(reason, 0) + count


def _drop_missing_and_duplicates(df, out: FileRows):
    """The article's first two steps, each dropped row counted by reason."""
    before = len(df)
    df = df.dropna()
    _drop(out, "missing", before - len(df))
    before = len(df)
    df = df.drop_duplicates(keep="first")
    _drop(out, "duplicate", before - len(df))
    return df


def _read_seed(df, job: ReadJob, out: FileRows) -> FileRows:
    df = _drop_missing_and_duplicates(df, out)
    notice = df[CONTENT].isin(list(job.notices))
    _drop(out, "notice", int(notice.sum()))
    df = df[~notice]
    out.conversations = [(key, seed_conversation(group[ROLE].tolist(), group[CONTENT].tolist()))
                         for key, group in df.groupby(by=KEY)]
    return out


def _read_default(df, job: ReadJob, out: FileRows) -> FileRows:
    import pandas as pd

    columns = NEEDED + ([job.time_column] if job.time_column else [])
    df = df[columns]
    df = _drop_missing_and_duplicates(df, out)
    if job.time_column:
        times = pd.to_datetime(df[job.time_column], errors="coerce")
        bad = times.isna()
        _drop(out, "bad_time", int(bad.sum()))
        df, times = df[~bad], times[~bad]
        times = times.astype("int64").tolist()
    else:
        times = [0] * len(df)
    notices = [normalise(n) for n in job.notices]
    conversations: dict[tuple[str, str], list] = {}
    for agent, customer, role, content, time in zip(df[AGENT].tolist(), df[CUSTOMER].tolist(),
                                                    df[ROLE].tolist(), df[CONTENT].tolist(), times):
        role = str(role).strip()
        if role not in ("是", "否"):
            _drop(out, "unknown_role", 1)
            continue
        text, reason = clean(content, notices)
        if text is None:
            _drop(out, reason, 1)
            continue
        key = (str(agent).strip(), str(customer).strip())
        conversations.setdefault(key, []).append((time, role, text))
    out.conversations = conversations
    return out
