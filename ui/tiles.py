"""The port grid: one painted tile per physical USB location, in hub order, readable from across the bench.

A tile is drawn by hand (QPainter), not built from labels: 24 tiles of nested widgets relayout on every text
change, a painted tile repaints one rectangle. Sizes of the words scale with the tile; PASS / FAIL take a third
of its height. The grid repaints tiles whose progress moved from a 15 Hz timer (see ui.bridge), and busy tiles
once a second for their clock.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable

from PySide6.QtCore import QPoint, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QSizePolicy, QWidget

from ui import theme
from ui.bridge import EngineBridge
from ui.state import Phase, TileState, clock, rate_words

REPAINT_HZ = 15


def _font(px: float, bold: bool = False, mono: bool = False) -> QFont:
    return _font_px(max(9, int(px)), bold, mono)


@functools.lru_cache(maxsize=256)
def _font_px(px: int, bold: bool, mono: bool) -> QFont:
    """Fonts are values: one per size and weight, made once (a tile paint asks for six)."""
    font = QFont("DejaVu Sans Mono" if mono else "DejaVu Sans")
    if mono:
        font.setStyleHint(QFont.StyleHint.Monospace)
    font.setPixelSize(px)
    font.setBold(bold)
    return font


class PortTile(QWidget):
    clicked = Signal(str)
    menuRequested = Signal(str, QPoint)

    def __init__(self, state: TileState, name: Callable[[str], str], armed: Callable[[str], str],
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._name = name
        self._armed = armed  # "" (not armed), "armed" (this port acts), "ignored" (armed, port not allowed)
        self.selected = False
        self.paints = 0
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(200, 150)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, False)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(300, 215)

    @property
    def key(self) -> str:
        return self.state.key

    # --- what the tile says, as text (tooltips, accessibility, tests) ---------------------------------------

    def headline(self) -> str:
        s = self.state
        match s.phase:
            case Phase.PASS:
                return "PASS"
            case Phase.FAIL:
                return "FAIL"
            case Phase.OPERATOR:
                return "NEEDS YOU"
            case Phase.WORKING | Phase.VERIFYING:
                return f"Step {s.step_index + 1}/{len(s.steps) or '?'} · {s.step_label}"
            case Phase.IDLE:
                return "Ready"
        return "Empty"

    def summary(self) -> str:
        s = self.state
        parts = [self._name(s.key), self.headline()]
        if s.chip:
            parts.append(f"{s.chip} {s.mac}")
        if s.phase is Phase.FAIL and s.reason:
            parts.append(s.reason)
        if s.phase is Phase.OPERATOR:
            parts.append(s.prompt)
        return " — ".join(parts)

    def refresh(self) -> None:
        self.setToolTip(self._tooltip())
        self.setAccessibleName(self.summary())
        self.update()

    def _tooltip(self) -> str:
        s = self.state
        lines = [f"<b>{self._name(s.key)}</b> (USB location {s.key})"]
        if s.usb_description:
            lines.append(f"{s.usb_description} · USB {s.usb_id}")
        if s.description:
            lines.append(f"{s.description} · MAC {s.mac}")
        if s.phase is Phase.FAIL:
            lines.append(f"<b>Failed:</b> {s.reason}")
        if s.phase is Phase.OPERATOR:
            lines.append(f"<b>{s.prompt}</b><br>{s.prompt_reason}")
        lines.append("<i>Right-click: name, one-touch, stop, diagnostics</i>")
        return "<br>".join(lines)

    # --- input --------------------------------------------------------------------------------------------------

    def mousePressEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.key)
        super().mousePressEvent(event)

    def contextMenuEvent(self, event) -> None:  # noqa: N802
        self.menuRequested.emit(self.key, event.globalPos())

    # --- painting -----------------------------------------------------------------------------------------------

    def paintEvent(self, _event) -> None:  # noqa: N802
        self.paints += 1
        s = self.state
        sw = theme.SWATCHES[s.phase]
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        unit = min(h, w * 0.72)  # type scales with the tile, bounded by its width
        border = max(3.0, unit * 0.022)
        outer = QRectF(3, 3, w - 6, h - 6)
        radius = max(6.0, unit * 0.05)

        path = QPainterPath()
        path.addRoundedRect(outer, radius, radius)
        p.fillPath(path, QColor(sw.fill))
        pen = QPen(QColor(sw.border), border)
        if s.phase is Phase.EMPTY:
            pen.setStyle(Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.drawPath(path)
        if self.selected:
            p.setPen(QPen(QColor(theme.SELECTION), 2, Qt.PenStyle.DotLine))
            p.drawRoundedRect(QRectF(1, 1, w - 2, h - 2), radius + 2, radius + 2)

        pad = border + unit * 0.04
        inner = outer.adjusted(pad, pad * 0.8, -pad, -pad * 0.8)
        text = QColor(sw.text)
        muted = QColor(text)
        muted.setAlphaF(0.72)

        # header: the port's name, big; its USB location and one-touch badge, small
        head_px = unit * 0.12
        p.setFont(_font(head_px, bold=True))
        p.setPen(text)
        name = self._name(s.key)
        fm = QFontMetricsF(p.font())
        head = QRectF(inner.left(), inner.top(), inner.width() * 0.6, fm.height())
        p.drawText(head, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(name, Qt.TextElideMode.ElideRight, head.width()))
        small = _font(unit * 0.062)
        p.setFont(small)
        p.setPen(muted)
        right = QRectF(inner.left() + inner.width() * 0.4, inner.top(), inner.width() * 0.6, fm.height())
        corner = s.key if name != s.key else ""
        armed = self._armed(s.key)
        if armed == "armed":
            corner = (corner + "  " if corner else "") + "⚡ ONE-TOUCH"
        elif armed == "ignored":
            corner = (corner + "  " if corner else "") + "not armed"
        p.drawText(right, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, corner)

        body = QRectF(inner.left(), head.bottom() + unit * 0.015, inner.width(), inner.bottom() - head.bottom())
        match s.phase:
            case Phase.PASS | Phase.FAIL:
                self._paint_verdict(p, body, unit, text, muted)
            case Phase.OPERATOR:
                self._paint_operator(p, body, unit, text, muted)
            case Phase.WORKING | Phase.VERIFYING:
                self._paint_working(p, body, unit, text, muted, sw.border)
            case _:
                self._paint_idle(p, body, unit, text, muted)
        p.end()

    def _board_line(self) -> str:
        s = self.state
        if s.chip:
            return f"{s.family.upper()} · {s.chip}"
        if s.usb_description:
            return s.usb_description
        return s.family.upper()

    def _paint_board(self, p: QPainter, r: QRectF, unit: float, color: QColor) -> float:
        """Family · chip, then the MAC in monospace. Returns the y below them."""
        s = self.state
        p.setPen(color)
        p.setFont(_font(unit * 0.075, bold=True))
        fm = QFontMetricsF(p.font())
        line = QRectF(r.left(), r.top(), r.width(), fm.height())
        p.drawText(line, Qt.AlignmentFlag.AlignLeft, fm.elidedText(self._board_line(), Qt.TextElideMode.ElideRight,
                                                                   r.width()))
        y = line.bottom()
        if s.mac:
            p.setFont(_font(unit * 0.075, mono=True))
            fm = QFontMetricsF(p.font())
            line = QRectF(r.left(), y, r.width(), fm.height())
            p.drawText(line, Qt.AlignmentFlag.AlignLeft, s.mac.upper())
            y = line.bottom()
        return y

    def _paint_verdict(self, p: QPainter, r: QRectF, unit: float, text: QColor, muted: QColor) -> None:
        s = self.state
        passed = s.phase is Phase.PASS
        y = self._paint_board(p, r, unit, text)
        p.setFont(_font(unit * (0.30 if passed else 0.25), bold=True))
        fm = QFontMetricsF(p.font())
        word = QRectF(r.left(), y, r.width(), fm.height() * 0.95)
        p.setPen(text)
        p.drawText(word, Qt.AlignmentFlag.AlignCenter, ("✔ PASS" if passed else "✘ FAIL") if unit > 150 else
                   ("PASS" if passed else "FAIL"))
        rest = QRectF(r.left(), word.bottom(), r.width(), r.bottom() - word.bottom())
        if passed:
            tail = f"{clock(s.elapsed())}"
            cloud = {"pending": "cloud: pending", "delivered": "cloud: registered",
                     "failed": "cloud: REFUSED"}.get(s.registration)
            if cloud:
                tail += f" · {cloud}"
            if not s.present:
                tail += " · running its firmware" if s.leaves_bus else " · board pulled"
            elif self._armed(s.key) == "armed":
                tail += " · unplug the board"
            p.setFont(_font(unit * 0.075))
            p.setPen(muted)
            p.drawText(rest, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, tail)
        else:
            self._wrapped(p, rest, s.reason or "Failed", unit * 0.075, text, bold=True, lines=4)

    def _paint_operator(self, p: QPainter, r: QRectF, unit: float, text: QColor, muted: QColor) -> None:
        s = self.state
        p.setFont(_font(unit * 0.16, bold=True))
        fm = QFontMetricsF(p.font())
        top = QRectF(r.left(), r.top(), r.width(), fm.height())
        p.setPen(text)
        p.drawText(top, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, "⚠ NEEDS YOU")
        rest = QRectF(r.left(), top.bottom() + unit * 0.01, r.width(), r.bottom() - top.bottom())
        used = self._wrapped(p, rest, s.prompt or "This board needs a hand", unit * 0.085, text, bold=True, lines=3)
        if s.prompt_reason:
            tail = QRectF(r.left(), rest.top() + used + unit * 0.01, r.width(), r.bottom() - rest.top() - used)
            self._wrapped(p, tail, s.prompt_reason, unit * 0.06, muted, lines=2)

    def _paint_working(self, p: QPainter, r: QRectF, unit: float, text: QColor, muted: QColor,
                       accent: str) -> None:
        s = self.state
        y = self._paint_board(p, r, unit, text)
        # the step, big
        p.setFont(_font(unit * 0.095, bold=True))
        fm = QFontMetricsF(p.font())
        step = QRectF(r.left(), y + unit * 0.02, r.width(), fm.height())
        p.setPen(text)
        label = self.headline() + (f" (try {s.attempt})" if s.attempt > 1 else "")
        p.drawText(step, Qt.AlignmentFlag.AlignLeft, fm.elidedText(label, Qt.TextElideMode.ElideRight, r.width()))
        # the bar: this step's transfer, or a thin step-count bar when nothing is moving
        bar_h = max(12.0, unit * 0.11)
        bar = QRectF(r.left(), step.bottom() + unit * 0.03, r.width(), bar_h)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(theme.PROGRESS_TRACK))
        p.drawRoundedRect(bar, bar_h / 3, bar_h / 3)
        if s.total:
            frac = min(1.0, s.done / s.total)
        else:
            frac = (s.step_index + 0.5) / len(s.steps) if s.steps else 0.0
        if frac > 0:
            p.setBrush(QColor(accent))
            p.drawRoundedRect(QRectF(bar.left(), bar.top(), max(bar_h / 1.5, bar.width() * frac), bar_h),
                              bar_h / 3, bar_h / 3)
        if s.total:  # the figure in white over the filled part, in the text colour over the rest
            p.setFont(_font(bar_h * 0.72, bold=True))
            split = bar.left() + bar.width() * frac
            for colour, clip in ((QColor("#ffffff"), QRectF(bar.left(), bar.top(), split - bar.left(), bar_h)),
                                 (text, QRectF(split, bar.top(), bar.right() - split, bar_h))):
                p.save()
                p.setClipRect(clip)
                p.setPen(colour)
                p.drawText(bar, Qt.AlignmentFlag.AlignCenter, f"{s.percent()} %")
                p.restore()
        # speed · ETA on the left, the clock on the right
        p.setFont(_font(unit * 0.072))
        fm = QFontMetricsF(p.font())
        foot = QRectF(r.left(), bar.bottom() + unit * 0.03, r.width(), fm.height())
        p.setPen(muted)
        if s.total and s.rate > 0:
            eta = s.eta()
            p.drawText(foot, Qt.AlignmentFlag.AlignLeft,
                       f"{rate_words(s.rate)}" + (f" · ETA {clock(math.ceil(eta))}" if eta is not None else ""))
        elif s.retrying:
            p.drawText(foot, Qt.AlignmentFlag.AlignLeft,
                       fm.elidedText(f"retrying: {s.retrying}", Qt.TextElideMode.ElideRight, r.width() * 0.75))
        p.setPen(text)
        p.drawText(foot, Qt.AlignmentFlag.AlignRight, clock(s.elapsed()))

    def _paint_idle(self, p: QPainter, r: QRectF, unit: float, text: QColor, muted: QColor) -> None:
        s = self.state
        p.setFont(_font(unit * 0.14, bold=True))
        fm = QFontMetricsF(p.font())
        mid = QRectF(r.left(), r.top() + r.height() * 0.18, r.width(), fm.height())
        p.setPen(text)
        p.drawText(mid, Qt.AlignmentFlag.AlignCenter, "Ready" if s.phase is Phase.IDLE else "Empty")
        lines = []
        if s.phase is Phase.IDLE:
            lines.append(s.usb_description or "board detected")
        else:
            armed = self._armed(s.key)
            lines.append("plug a board in" if armed == "armed" else "no board")
        if s.last_result:
            lines.append(f"last board: {s.last_result}")
        p.setFont(_font(unit * 0.068))
        p.setPen(muted)
        fm = QFontMetricsF(p.font())
        y = mid.bottom()
        for line in lines:
            row = QRectF(r.left(), y, r.width(), fm.height())
            p.drawText(row, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
                       fm.elidedText(line, Qt.TextElideMode.ElideRight, r.width()))
            y = row.bottom()

    @staticmethod
    def _wrapped(p: QPainter, r: QRectF, words: str, px: float, color: QColor, bold: bool = False,
                 lines: int = 3) -> float:
        """Draw `words` wrapped in `r`, at most `lines` lines (shrinking once if it does not fit); return height."""
        for size in (px, px * 0.82):
            font = _font(size, bold=bold)
            fm = QFontMetricsF(font)
            box = fm.boundingRect(QRectF(0, 0, r.width(), 10_000),
                                  int(Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap), words)
            if box.height() <= min(r.height(), fm.lineSpacing() * lines + 1):
                break
        p.setFont(font)
        p.setPen(color)
        height = min(box.height(), r.height(), fm.lineSpacing() * lines)
        clip = QRectF(r.left(), r.top(), r.width(), height)
        p.save()
        p.setClipRect(clip)
        p.drawText(QRectF(r.left(), r.top(), r.width(), r.height()),
                   int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap), words)
        p.restore()
        return height


class TileGrid(QWidget):
    """The tiles in the saved hub order; repaints moving tiles at REPAINT_HZ."""

    tileClicked = Signal(str)
    tileMenu = Signal(str, QPoint)

    def __init__(self, bridge: EngineBridge, order: Callable[[], list[str]], name: Callable[[str], str],
                 armed: Callable[[str], str], columns: Callable[[], int], parent: QWidget | None = None):
        super().__init__(parent)
        self.bridge = bridge
        self._order, self._name, self._armed, self._columns = order, name, armed, columns
        self.tiles: dict[str, PortTile] = {}
        self.selected: str | None = None
        self._grid = QGridLayout(self)
        self._grid.setSpacing(10)
        self._grid.setContentsMargins(4, 4, 4, 4)
        self._placed: tuple = ()
        self._hint = QLabel("No USB ports seen yet.\nPlug boards into the hub: a tile appears for each port.", self)
        self._hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._hint.setObjectName("gridHint")
        self._timer = QTimer(self)
        self._timer.setInterval(1000 // REPAINT_HZ)
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        self._last_second = 0
        bridge.tileChanged.connect(self._changed)
        bridge.tileAdded.connect(lambda _key: self.relayout())
        self.relayout()

    def columns(self) -> int:
        n = max(1, len(self.tiles))
        wanted = self._columns()
        if wanted > 0:
            return wanted
        # fit: tiles about 4:3, as many columns as keeps them so in the space we have
        w, h = max(1, self.width()), max(1, self.height())
        best, best_score = 1, -1.0
        for cols in range(1, n + 1):
            rows = math.ceil(n / cols)
            tw, th = w / cols, h / rows
            score = min(tw, th * 1.4)
            if score > best_score:
                best, best_score = cols, score
        return best

    def relayout(self) -> None:
        keys = [k for k in self._order() if k in self.bridge.tiles]
        keys += [k for k in self.bridge.tiles if k not in keys]
        for key in keys:
            if key not in self.tiles:
                tile = PortTile(self.bridge.tiles[key], self._name, self._armed, self)
                tile.clicked.connect(self._clicked)
                tile.menuRequested.connect(self.tileMenu)
                self.tiles[key] = tile
        for key in [k for k in self.tiles if k not in keys]:
            tile = self.tiles.pop(key)
            self._grid.removeWidget(tile)
            tile.deleteLater()
        cols = self.columns()
        placed = (tuple(keys), cols)
        if placed != self._placed:
            self._placed = placed
            while self._grid.count():
                self._grid.takeAt(0)
            for n, key in enumerate(keys):
                self._grid.addWidget(self.tiles[key], n // cols, n % cols)
            for c in range(self._grid.columnCount()):
                self._grid.setColumnStretch(c, 1 if c < cols else 0)
            rows = math.ceil(len(keys) / cols) if keys else 0
            for r in range(self._grid.rowCount()):
                self._grid.setRowStretch(r, 1 if r < rows else 0)
        self._hint.setVisible(not keys)
        self._hint.setGeometry(self.rect())
        for tile in self.tiles.values():
            tile.refresh()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self._columns() <= 0 and self.tiles and self.columns() != self._placed[1]:
            self.relayout()
        self._hint.setGeometry(self.rect())

    def _changed(self, key: str) -> None:
        tile = self.tiles.get(key)
        if tile is not None:
            tile.refresh()

    def _clicked(self, key: str) -> None:
        self.select(key)
        self.tileClicked.emit(key)

    def select(self, key: str | None) -> None:
        for k, tile in self.tiles.items():
            if tile.selected != (k == key):
                tile.selected = k == key
                tile.update()
        self.selected = key

    def _tick(self) -> None:
        for key in self.bridge.take_dirty():
            tile = self.tiles.get(key)
            if tile is not None:
                tile.update()
        second = int(time.monotonic())
        if second != self._last_second:  # the clocks on busy tiles
            self._last_second = second
            for tile in self.tiles.values():
                if tile.state.busy:
                    tile.update()

    def repaint_all(self) -> None:
        for tile in self.tiles.values():
            tile.refresh()


class Legend(QWidget):
    """The colour legend, always on screen under the toolbar."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 2, 6, 2)
        row.setSpacing(14)
        for phase in theme.LEGEND:
            sw = theme.SWATCHES[phase]
            chip = QLabel(sw.label)
            chip.setObjectName("legendChip")
            chip.setStyleSheet(f"background:{sw.fill}; color:{sw.text}; border:3px solid {sw.border};"
                               f"border-radius:6px; padding:3px 12px; font-weight:bold;")
            row.addWidget(chip)
        row.addStretch(1)
