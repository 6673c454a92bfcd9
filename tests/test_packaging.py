"""What ``pip install -e ".[demo]"`` brings, and what the README says first."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_the_demo_extra_opens_the_notebooks_in_jupyterlab_with_widgets():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    demo = extras["demo"]
    names = _names(demo)
    assert {"jupyterlab", "jupyterlab-widgets", "ipykernel"} <= names, demo  # the lab and its widget manager
    # what demos 03 and 04 import (pandas, numpy): the recipes extra, pulled in by the demo one
    assert "mpkit[recipes]" in demo or {"pandas", "numpy"} <= names, demo


def test_the_readme_names_the_article_near_the_top():
    top = (ROOT / "README.md").read_text(encoding="utf-8")[:1500]
    assert "python多进程及通信实现异步任务的方法" in top
