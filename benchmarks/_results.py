"""Where a benchmark leaves its report: ``benchmarks/results/<name>``, UTF-8, the folder made if missing."""
from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "results"


def save(name: str, text: str) -> Path:
    """Write ``text`` to ``benchmarks/results/name``, replacing what was there; the file's path."""
    FOLDER.mkdir(exist_ok=True)
    path = FOLDER / name
    path.write_text(text, encoding="utf-8")
    return path
