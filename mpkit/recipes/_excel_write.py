"""One output segment of the Excel recipe, filled file by file as the workers' results arrive.

    SegmentWriter(path, fmt)
      │ add(rows, long_rows)   xlsx:          rows streamed into the .xlsx now (XlsxWriter), so the
      │                                       parent holds one input file's rows, not the segment's
      │                        parquet / csv: rows kept until close (one DataFrame)
      ▼
    close() ─► [OutputFile(segment), OutputFile(<stem>.long_cells.csv) if rows had an over-long cell]

A progress bar (tqdm: a widget in Jupyter, text in a terminal) follows the rows while a big batch
is written; small files go by faster than a bar could be read, and the reading bar shows them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._xlsx import XlsxWriter

#: Rows written between progress-bar updates (~0.1 s of .xlsx writing); a file with fewer rows
#: gets no bar of its own.
WRITE_BATCH = 20_000


@dataclass(frozen=True)
class OutputFile:
    """One file the run wrote."""
    path: Path
    rows: int
    sheets: int = 1  # .xlsx: Sheet1, Sheet2, ... (1,048,575 rows each)


class SegmentWriter:
    """Collect or stream one segment's rows into ``path`` (.xlsx, .parquet or .csv)."""

    def __init__(self, path: Path, fmt: str, columns: tuple[str, ...], max_rows: int, progress: bool):
        self.path, self.fmt, self.columns, self.progress = path, fmt, columns, progress
        self.cleaned = 0  # .xlsx text cells that lost characters it cannot hold
        self._xlsx = XlsxWriter(path, columns, max_rows=max_rows) if fmt == "xlsx" else None
        self._rows: list = []  # parquet / csv: every row, written at close
        self._long: list = []  # rows kept out of the .xlsx: a cell too long for it

    def add(self, rows: list, long_rows: list) -> None:
        """Append one input file's ``rows``; ``long_rows`` go to the side file instead (.xlsx only)."""
        self._long += long_rows
        if self._xlsx is None:
            self._rows += rows
            return
        with self._bar(len(rows)) as bar:
            for start in range(0, len(rows), WRITE_BATCH):
                self._xlsx.write(rows[start:start + WRITE_BATCH])
                bar.update(min(WRITE_BATCH, len(rows) - start))

    def close(self) -> list[OutputFile]:
        files = []
        if self._xlsx is not None:
            self._xlsx.close()
            self.cleaned = self._xlsx.cleaned
            files.append(OutputFile(self.path, self._xlsx.rows, self._xlsx.sheets))
        else:
            files.append(OutputFile(self.path, self._write_frame()))
        if self._long:
            side = self.path.with_name(self.path.stem + ".long_cells.csv")
            _frame(self._long, self.columns).to_csv(side, index=False, encoding="utf-8-sig")
            files.append(OutputFile(side, len(self._long)))
        return files

    def abort(self) -> None:
        """Stop without a result: the partial file is removed."""
        if self._xlsx is not None:
            self._xlsx.close()
        self.path.unlink(missing_ok=True)

    def _write_frame(self) -> int:
        df = _frame(self._rows, self.columns)
        self._rows = []
        if self.fmt == "parquet":
            for col in df.columns:  # Arrow needs one type per column: mixed cells (str and datetime) become text
                kinds = {type(v) for v in df[col] if v is not None and v == v}
                if len(kinds) > 1:
                    df[col] = df[col].map(lambda v: v if v is None or v != v else str(v))
            df.to_parquet(self.path, index=False)
            return len(df)
        with self._bar(len(df)) as bar:
            for start in range(0, max(len(df), 1), WRITE_BATCH):
                df.iloc[start:start + WRITE_BATCH].to_csv(self.path, index=False, encoding="utf-8-sig",
                                                          mode="w" if start == 0 else "a", header=start == 0)
                bar.update(min(WRITE_BATCH, len(df) - start))
        return len(df)

    def _bar(self, rows: int):
        if not self.progress or rows < WRITE_BATCH:
            return _NoBar()
        from tqdm.auto import tqdm
        return tqdm(total=rows, desc=f"writing {self.path.name}", unit="row", unit_scale=True, leave=False)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int) -> None:
        pass


def _frame(rows: list, columns: tuple[str, ...]):
    import pandas as pd

    return pd.DataFrame.from_records(rows, columns=list(columns)) if rows else pd.DataFrame(columns=list(columns))
