"""The engine must run without Qt: nothing under station/ may import it."""
import ast
from pathlib import Path

STATION = Path(__file__).resolve().parent.parent / "station"
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "qasync")


def test_station_never_imports_qt():
    offenders = []
    for file in STATION.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{file.relative_to(STATION.parent)}: {n}" for n in names if n.split(".")[0] in QT_MODULES]
    assert offenders == []
    assert len(list(STATION.rglob("*.py"))) > 10  # the walk really looked at the engine
