"""Recipes from the article mpkit grew from, on the engine: parallel Excel extraction
(``excel``), dialogue cleaning into GPT2-chitchat training files (``dialogue``) and batched model
inference (``inference``). Each is a module of its own, imported only when used: ``import mpkit``
loads none of pandas, openpyxl or emoji.
"""
from pathlib import Path

#: A small sample of chat exports derived from CrossWOZ (Apache-2.0; see its README).
SAMPLE_DATA = Path(__file__).with_name("sample_data")
