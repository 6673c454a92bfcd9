"""What a page shows of the dashboard's HTML: its text, and the header and cards of its panel."""
from __future__ import annotations

import re

CARDS = "<div class=mpkit-cards>"


def text(html: str) -> str:
    """The text of some HTML as a page shows it: tags dropped, spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def header(panel: str) -> str:
    """The header's HTML in the panel's value (everything before the cards)."""
    return panel.split(CARDS, 1)[0]


def stages(panel: str) -> str:
    """The cards' HTML in the panel's value."""
    return CARDS + panel.split(CARDS, 1)[1]
