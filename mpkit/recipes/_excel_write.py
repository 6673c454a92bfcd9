"""One output segment of the Excel recipe, filled file by file as the workers' results arrive.

    SegmentWriter(path, fmt)
      │ add(rows, long_rows)   xlsx, csv: rows streamed into the file now (XlsxWriter, csv.writer),
      │                                   so the parent holds one input file's rows, not the segment's
      │                        parquet:   rows kept until close (one DataFrame, one Arrow table)
      ▼
    close() ─► [OutputFile(segment), OutputFile(<stem>.long_cells.csv) if rows had an over-long cell]

A progress bar (tqdm: a widget in Jupyter, text in a terminal) follows the rows while a big batch
is written; small files go by faster than a bar could be read, and the reading bar shows them.
"""
from __future__ import annotations

import csv
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
        #: where rows with a cell too long for .xlsx go (written at close if there are any)
        self.side_path = path.with_name(path.stem + ".long_cells.csv")
        self.cleaned = 0  # .xlsx text cells that lost characters it cannot hold
        self._xlsx = XlsxWriter(path, columns, max_rows=max_rows) if fmt == "xlsx" else None
        self._csv = _CsvFile(path, columns) if fmt == "csv" else None
        self._rows: list = []  # parquet: every row, written at close
        self._count = 0  # rows streamed (csv)
        self._long: list = []  # rows kept out of the .xlsx: a cell too long for it

    def add(self, rows: list, long_rows: list) -> None:
        """Append one input file's ``rows``; ``long_rows`` go to the side file instead (.xlsx only)."""
        self._long += long_rows
        sink = self._xlsx or self._csv
        if sink is None:
            self._rows += rows
            return
        with self._bar(len(rows)) as bar:
            for start in range(0, len(rows), WRITE_BATCH):
                sink.write(rows[start:start + WRITE_BATCH])
                bar.update(min(WRITE_BATCH, len(rows) - start))
        self._count += len(rows)

    def close(self) -> list[OutputFile]:
        files = []
        if self._xlsx is not None:
            self._xlsx.close()
            self.cleaned = self._xlsx.cleaned
            files.append(OutputFile(self.path, self._xlsx.rows, self._xlsx.sheets))
        elif self._csv is not None:
            self._csv.close()
            files.append(OutputFile(self.path, self._count))
        else:
            files.append(OutputFile(self.path, self._write_parquet()))
        if self._long:
            side = _CsvFile(self.side_path, self.columns)
            side.write(self._long)
            side.close()
            files.append(OutputFile(side.path, len(self._long)))
        return files

    def abort(self) -> None:
        """Stop without a result: the partial file is removed."""
        for sink in (self._xlsx, self._csv):
            if sink is not None:
                sink.close()
        self.path.unlink(missing_ok=True)

    def _write_parquet(self) -> int:
        import pandas as pd

        rows, self._rows = self._rows, []
        df = pd.DataFrame.from_records(rows, columns=list(self.columns)) if rows else pd.DataFrame(
            columns=list(self.columns))
        for col in df.columns:  # Arrow needs one type per column: mixed cells (str and datetime) become text
            kinds = {type(v) for v in df[col] if v is not None and v == v}
            if len(kinds) > 1:
                df[col] = df[col].map(lambda v: v if v is None or v != v else str(v))
        df.to_parquet(self.path, index=False)
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


class _CsvFile:
    """UTF-8 with a BOM (so that Excel shows the Chinese), "\n" line ends, None as an empty field:
    what pandas ``to_csv`` writes, without a DataFrame (which copies every text into Arrow strings)."""

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path = path
        self._file = open(path, "w", encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by close()
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(columns)

    def write(self, rows: list) -> None:
        self._writer.writerows(rows)

    def close(self) -> None:
        self._file.close()
