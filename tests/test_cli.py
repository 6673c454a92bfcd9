"""``python -m mpkit``: the command line, its exit codes and messages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpkit import cli

IMPORT_TIMEOUT = 60
ROOT = Path(__file__).resolve().parent.parent


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_help_lists_the_demo_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_demo_without_the_default_notebook_says_what_it_looked_for(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "demo_notebooks" / "01_quickstart.ipynb") in err
    assert "Fix:" in err and "python -m mpkit demo PATH" in err


def test_demo_with_a_missing_notebook(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "nowhere.ipynb"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere.ipynb") in err


def test_demo_reports_a_failing_cell_and_exits_1(tmp_path, capsys):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    from nbformat.v4 import new_code_cell, new_notebook

    (tmp_path / "data.txt").write_text("from the notebook's folder")
    nb = new_notebook(cells=[
        new_code_cell("print(open('data.txt').read())\nx = 1"),   # runs in the notebook's folder
        new_code_cell("x + 1"),
        new_code_cell("raise ValueError('broken on purpose')"),
        new_code_cell("print('never runs')"),
    ])
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, path)

    assert cli.main(["demo", str(path), "--timeout", "30"]) == 1
    out = capsys.readouterr().out
    assert "[1] print(open('data.txt').read()) ..." in out
    assert "    from the notebook's folder" in out
    assert "[2] x + 1\n    2\n" in out
    assert "ValueError: broken on purpose" in out
    assert "never runs" not in out
    assert "mpkit demo: 3 of 4 code cells run in" in out
    assert out.rstrip().endswith("FAILED (a cell raised ValueError: broken on purpose)")


def test_import_mpkit_and_its_cli_stay_light():
    code = ("import sys, mpkit, mpkit.cli\n"
            "heavy = [m for m in ('nbclient', 'nbformat', 'jupyter_client', 'IPython') if m in sys.modules]\n"
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=IMPORT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
