"""One colour legend for the whole window, and the style sheet.

Every state has a border, a fill and a text colour. Results (pass / fail) and "needs operator" are solid
fills, so they read from across the bench; work in progress is a light fill with a strong border. The word
on the tile (PASS, FAIL, NEEDS YOU) always repeats what the colour says, for colour-blind eyes.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PySide6.QtGui import QColor

from ui.state import Phase

# the installed package station_resources (the repository's resources/ folder); a folder on disk once installed,
# and Qt loads icons and sounds from file paths
RESOURCES = Path(str(resources.files("station_resources")))


@dataclass(frozen=True)
class Swatch:
    border: str
    fill: str
    text: str
    label: str  # the legend's word


SWATCHES: dict[Phase, Swatch] = {
    Phase.EMPTY: Swatch("#afb8c1", "#f6f8fa", "#6e7781", "Empty"),
    Phase.IDLE: Swatch("#57606a", "#eaeef2", "#24292f", "Idle"),
    Phase.WORKING: Swatch("#0969da", "#ddf4ff", "#0a3069", "Working"),
    Phase.VERIFYING: Swatch("#8250df", "#f5ebff", "#3e1f79", "Verifying"),
    Phase.OPERATOR: Swatch("#9a6700", "#ffd33d", "#3b2300", "Needs operator"),
    Phase.PASS: Swatch("#116329", "#1a7f37", "#ffffff", "Pass"),
    Phase.FAIL: Swatch("#82071e", "#cf222e", "#ffffff", "Fail"),
    Phase.STOPPED: Swatch("#57606a", "#d0d7de", "#24292f", "Stopped"),  # neutral: the operator's doing
}

LEGEND = (Phase.IDLE, Phase.WORKING, Phase.VERIFYING, Phase.OPERATOR, Phase.PASS, Phase.FAIL, Phase.STOPPED)

# one-touch: teal, a colour no board state uses, so a live port never reads as FAIL
ARMED = "#0b7285"
ARMED_TEXT = "#ffffff"
PROGRESS_TRACK = "#ffffff"
SELECTION = "#24292f"


def color(value: str) -> QColor:
    return QColor(value)


def style_sheet() -> str:
    try:
        return (RESOURCES / "station.qss").read_text(encoding="utf-8")  # a few KB, read once at start
    except OSError:
        return ""
