"""Chat exports built for the recipes' tests: a workbook of named sheets, written by openpyxl."""
from __future__ import annotations


def book(path, sheets: dict[str, list[list]]):
    """An .xlsx at ``path`` with one sheet per entry of ``sheets`` ({name: rows}, header first)."""
    import openpyxl

    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
    wb.save(path)
    return path
