"""The log pane: every Log event, per port or for the station, filterable; lines are already scrubbed.

New lines are queued and appended ten times a second in one block, so a chatty port cannot make the text
view re-layout per line.
"""
from __future__ import annotations

import time
from typing import Callable

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QFont, QTextCursor
from PySide6.QtWidgets import (
    QComboBox, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget,
)

from ui.bridge import EngineBridge
from ui.state import LogLine

LEVELS = ("debug", "info", "warning", "error")
STATION = "__station__"
ALL = "__all__"
SHOWN = 5000


def format_line(line: LogLine, name: Callable[[str], str]) -> str:
    where = f"[{name(line.key)}] " if line.key else "[station] "
    stamp = time.strftime("%H:%M:%S", time.localtime(line.when))
    level = "" if line.level == "info" else f"{line.level}: "
    return f"{stamp} {where}{level}{line.text}"


class LogPane(QWidget):
    diagnosticsRequested = Signal()

    def __init__(self, bridge: EngineBridge, name: Callable[[str], str], parent: QWidget | None = None):
        super().__init__(parent)
        self.bridge = bridge
        self._name = name
        self._pending: list[str] = []

        self.source = QComboBox()
        self.source.setObjectName("logSource")
        self.source.addItem("All ports + station", ALL)
        self.source.addItem("Station", STATION)
        self.level = QComboBox()
        self.level.setObjectName("logLevel")
        for lv in LEVELS:
            self.level.addItem(f"{lv} and up", lv)
        self.level.setCurrentIndex(1)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter text…")
        self.search.setClearButtonEnabled(True)
        self.copy = QPushButton("Copy diagnostics")
        self.copy.setObjectName("copyDiagnostics")
        self.copy.setToolTip("Port, board, every step with its details, the reason and the last log lines of the "
                             "selected tile, to the clipboard (passwords never included)")
        self.copy.clicked.connect(self.diagnosticsRequested)
        self.view = QPlainTextEdit()
        self.view.setObjectName("logView")
        self.view.setReadOnly(True)
        self.view.setMaximumBlockCount(SHOWN)
        self.view.setFont(QFont("DejaVu Sans Mono", 9))
        self.view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)

        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        bar.addWidget(QLabel("Log:"))
        bar.addWidget(self.source)
        bar.addWidget(self.level)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.copy)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(bar)
        box.addWidget(self.view)

        self.source.currentIndexChanged.connect(self.rebuild)
        self.level.currentIndexChanged.connect(self.rebuild)
        self.search.textChanged.connect(self.rebuild)
        bridge.logAdded.connect(self._added)
        bridge.tileAdded.connect(self._port_added)
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(100)
        self._flush_timer.timeout.connect(self._flush)
        self._flush_timer.start()

    def _port_added(self, key: str) -> None:
        if self.source.findData(key) < 0:
            self.source.addItem(self._name(key), key)

    def rename_ports(self) -> None:
        for i in range(2, self.source.count()):
            key = self.source.itemData(i)
            self.source.setItemText(i, self._name(key) if self._name(key) == key else f"{self._name(key)} ({key})")

    def show_port(self, key: str | None) -> None:
        index = self.source.findData(key if key else ALL)
        if index >= 0:
            self.source.setCurrentIndex(index)

    def accepts(self, line: LogLine) -> bool:
        source = self.source.currentData()
        if source == STATION and line.key is not None:
            return False
        if source not in (ALL, STATION) and line.key != source:
            return False
        rank = LEVELS.index(line.level) if line.level in LEVELS else 1
        if rank < LEVELS.index(self.level.currentData()):
            return False
        wanted = self.search.text().strip().lower()
        return not wanted or wanted in line.text.lower() or (line.key or "").lower().startswith(wanted)

    def _added(self, line: LogLine) -> None:
        if self.accepts(line):
            self._pending.append(format_line(line, self._name))

    def _flush(self) -> None:
        if not self._pending:
            return
        text, self._pending = "\n".join(self._pending[-SHOWN:]), []
        at_end = self.view.verticalScrollBar().value() >= self.view.verticalScrollBar().maximum() - 2
        cursor = QTextCursor(self.view.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if not self.view.document().isEmpty():
            cursor.insertText("\n")
        cursor.insertText(text)
        if at_end:
            self.view.verticalScrollBar().setValue(self.view.verticalScrollBar().maximum())

    def rebuild(self) -> None:
        self._pending = []
        lines = [format_line(line, self._name) for line in self.bridge.log if self.accepts(line)][-SHOWN:]
        self.view.setPlainText("\n".join(lines))
        self.view.verticalScrollBar().setValue(self.view.verticalScrollBar().maximum())

    def text(self) -> str:
        self._flush()
        return self.view.toPlainText()
