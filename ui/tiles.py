"""The port grid: one painted tile per physical USB location, in hub order, readable from across the bench.

A tile is drawn by hand (QPainter), not built from labels: 24 tiles of nested widgets relayout on every text
change, a painted tile repaints one rectangle. Sizes of the words scale with the tile; PASS / FAIL take a third
of its height. The grid repaints tiles whose progress moved at 15 Hz (see ui.bridge), and busy tiles once a
second for their clock; a third of the tiles per tick of a 45 Hz timer, so no tick paints all of them at once.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable

from PySide6.QtCore import QPoint, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QGuiApplication, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QSizePolicy, QWidget

from ui import theme
from ui.advice import next_step
from ui.bridge import EngineBridge
from ui.state import Phase, TileState, clock, rate_words

REPAINT_HZ = 15
SLICES = 3  # the grid's timer runs SLICES x REPAINT_HZ and visits one slice of the tiles per tick
WHITE = QColor("#ffffff")
TILE_MIN = QSize(112, 78)  # 6 x 4 of these, with the bars around them, fit a 1280 x 800 screen
TILE_HINT = QSize(260, 180)
SPACING = 8
MARGIN = 4
Tally = Callable[[str], "list[int] | None"]  # a port's [passed, failed] since the counters were reset


def fit_columns(n: int, width: float, height: float) -> int:
    """The column count that gives `n` tiles the largest size at about 4:3 in a width x height area, never
    so many columns that a tile is narrower than TILE_MIN (that would make the window wider than the area)."""
    best, best_score = 1, -1.0
    widest = max(1, int((width - 2 * MARGIN + SPACING) // (TILE_MIN.width() + SPACING)))
    for cols in range(1, max(1, min(n, widest)) + 1):
        rows = math.ceil(n / cols)
        score = min(width / cols, height / rows * 1.4)
        if score > best_score:
            best, best_score = cols, score
    return best


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


def _fitted(px: float, words: str, width: float) -> QFont:
    """A bold font of about `px` for the tile's big word, smaller if the word would be wider than `width`."""
    font = _font(px, bold=True)
    wide = QFontMetricsF(font).horizontalAdvance(words)
    return font if wide <= width else _font(px * width / wide * 0.97, bold=True)


class PortTile(QWidget):
    clicked = Signal(str)
    menuRequested = Signal(str, QPoint)

    def __init__(self, state: TileState, name: Callable[[str], str], armed: Callable[[str], str],
                 tally: Tally = lambda _key: None, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._name = name
        self._armed = armed  # "" (not armed), "armed" (this port acts), "ignored" (armed, port not allowed)
        self._tally = tally
        self.selected = False
        self.paints = 0
        # everything but the moving band (bar, speed, clock) is drawn once into a pixmap and reused until what it
        # shows changes: a progress tick then costs one pixmap copy and the band's few calls, not the whole tile
        self._layer = QPixmap()
        self._layer_drawn: tuple | None = None
        self._band: tuple | None = None  # where _paint_band draws, set while the layer is drawn (busy tiles only)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(1, 1)  # the grid sets its own minimum, for all its tiles at once (TileGrid.relayout)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, False)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

    def sizeHint(self) -> QSize:  # noqa: N802
        return TILE_HINT

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
            case Phase.STOPPED:
                return "Stopped"
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
            parts += [next_step(s.reason), s.reason]
        if s.phase is Phase.OPERATOR:
            parts.append(s.prompt)
        return " — ".join(parts)

    def refresh(self) -> None:
        self.setToolTip(self._tooltip())
        self.setAccessibleName(self.summary())
        # an idle or finished tile draws nothing but its layer: an event that leaves the layer as it is (a late
        # log line, a registration still pending) costs no paint
        if self.state.busy or self._layer_key(self._armed(self.state.key), self.devicePixelRatioF()) \
                != self._layer_drawn:
            self.update()

    def _tooltip(self) -> str:
        s = self.state
        lines = [f"<b>{self._name(s.key)}</b> (USB location {s.key})"]
        if s.usb_description:
            lines.append(f"{s.usb_description} · USB {s.usb_id}")
        if s.description:
            lines.append(f"{s.description} · MAC {s.mac}")
        if s.phase is Phase.FAIL:
            lines.append(f"<b>{next_step(s.reason)}</b><br>Failed: {s.reason}")
        if s.phase is Phase.STOPPED:
            lines.append("Stopped by the operator: not a board fault. Retry failed finishes it.")
        tally = self._tally(s.key)
        if tally:
            lines.append(f"This port since the counters were reset: {tally[0]} passed, {tally[1]} failed")
        if s.phase is Phase.OPERATOR:
            lines.append(f"<b>{s.prompt}</b><br>{s.prompt_reason}")
        lines.append("<i>Click: this port's log · right-click: name, one-touch, stop, diagnostics</i>")
        return "<br>".join(lines)

    # --- input --------------------------------------------------------------------------------------------------

    def mousePressEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.key)
        super().mousePressEvent(event)

    def contextMenuEvent(self, event) -> None:  # noqa: N802
        self.menuRequested.emit(self.key, event.globalPos())

    # --- painting -----------------------------------------------------------------------------------------------

    def _layer_key(self, armed: str, dpr: float) -> tuple:
        """Everything the layer draws: when none of it changed, the layer is reused as it is."""
        s = self.state
        return (self.width(), self.height(), dpr, armed, self.selected, self._name(s.key),
                tuple(self._tally(s.key) or ()), s.phase, s.family, s.chip, s.mac, s.usb_description, s.steps,
                s.labels, s.step, s.step_index, s.attempt, s.reason, s.prompt, s.prompt_reason, s.registration,
                s.present, s.leaves_bus, s.last_result, None if s.busy else clock(s.elapsed()))

    def paintEvent(self, _event) -> None:  # noqa: N802
        self.paints += 1
        armed = self._armed(self.state.key)
        dpr = self.devicePixelRatioF()
        key = self._layer_key(armed, dpr)
        if key != self._layer_drawn:
            self._draw_layer(armed, dpr)
            self._layer_drawn = key
        p = QPainter(self)
        p.drawPixmap(0, 0, self._layer)
        if self._band is not None:
            p.setRenderHint(QPainter.RenderHint.Antialiasing)
            if armed == "ignored":
                p.setOpacity(0.45)
            self._paint_band(p, *self._band)
        p.end()

    def _draw_layer(self, armed: str, dpr: float) -> None:
        s = self.state
        sw = theme.SWATCHES[s.phase]
        w, h = self.width(), self.height()
        self._layer = QPixmap(round(w * dpr), round(h * dpr))
        self._layer.setDevicePixelRatio(dpr)
        self._layer.fill(Qt.GlobalColor.transparent)  # the rounded corners show what is behind the tile
        self._band = None
        p = QPainter(self._layer)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        unit = min(h, w * 0.8)  # type scales with the tile, bounded by its width
        border = max(3.0, unit * 0.022)
        outer = QRectF(3, 3, w - 6, h - 6)
        radius = max(6.0, unit * 0.05)

        if armed == "ignored":  # one-touch is armed, but not here: the whole tile steps back
            p.setOpacity(0.45)
        path = QPainterPath()
        path.addRoundedRect(outer, radius, radius)
        p.fillPath(path, QColor(sw.fill))
        pen = QPen(QColor(sw.border), border)
        if s.phase is Phase.EMPTY:
            pen.setStyle(Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.drawPath(path)
        if armed == "armed":  # a live port: a thick teal frame inside the state's own border
            live = QPen(QColor(theme.ARMED), border * 1.6)
            p.setPen(live)
            p.drawRoundedRect(outer.adjusted(border * 1.3, border * 1.3, -border * 1.3, -border * 1.3),
                              radius * 0.7, radius * 0.7)
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
        head = QRectF(inner.left(), inner.top(), inner.width() * 0.55, fm.height())
        p.drawText(head, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(name, Qt.TextElideMode.ElideRight, head.width()))
        self._paint_corner(p, QRectF(inner.left() + inner.width() * 0.5, inner.top(), inner.width() * 0.5,
                                     fm.height()), unit, armed, muted)

        body = QRectF(inner.left(), head.bottom() + unit * 0.015, inner.width(), inner.bottom() - head.bottom())
        match s.phase:
            case Phase.PASS | Phase.FAIL:
                self._paint_verdict(p, body, unit, text, muted)
            case Phase.STOPPED:
                self._paint_stopped(p, body, unit, text, muted)
            case Phase.OPERATOR:
                self._paint_operator(p, body, unit, text, muted)
            case Phase.WORKING | Phase.VERIFYING:
                self._paint_working(p, body, unit, text, muted, sw.border)
            case _:
                self._paint_idle(p, body, unit, text, muted)
        p.end()

    def _paint_corner(self, p: QPainter, r: QRectF, unit: float, armed: str, muted: QColor) -> None:
        """Top right: the one-touch badge when armed (a teal pill: this port acts), else the port's tally."""
        if armed == "armed":
            p.setFont(_font(unit * 0.075, bold=True))
            fm = QFontMetricsF(p.font())
            words = "⚡ LIVE" if r.width() > fm.horizontalAdvance("⚡ LIVE") + 8 else "⚡"
            pill_w = fm.horizontalAdvance(words) + fm.height() * 0.8
            pill = QRectF(r.right() - pill_w, r.top() + (r.height() - fm.height() * 1.1) / 2, pill_w,
                          fm.height() * 1.1)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(theme.ARMED))
            p.drawRoundedRect(pill, pill.height() / 2, pill.height() / 2)
            p.setPen(QColor(theme.ARMED_TEXT))
            p.drawText(pill, Qt.AlignmentFlag.AlignCenter, words)
            return
        p.setFont(_font(unit * 0.065))
        p.setPen(muted)
        if armed == "ignored":
            corner = "not armed"
        else:
            tally = self._tally(self.state.key)
            corner = f"✔{tally[0]} ✘{tally[1]}" if tally and any(tally) else ""
        fm = QFontMetricsF(p.font())
        p.drawText(r, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(corner, Qt.TextElideMode.ElideLeft, r.width()))

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
        if s.mac and r.height() > unit * 0.6:  # the MAC only where the verdict still has room
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
        verdict = ("✔ PASS" if passed else "✘ FAIL") if unit > 150 else ("PASS" if passed else "FAIL")
        p.setFont(_fitted(unit * (0.30 if passed else 0.25), verdict, r.width()))
        fm = QFontMetricsF(p.font())
        word = QRectF(r.left(), y, r.width(), fm.height() * 0.95)
        p.setPen(text)
        p.drawText(word, Qt.AlignmentFlag.AlignCenter, verdict)
        rest = QRectF(r.left(), word.bottom(), r.width(), r.bottom() - word.bottom())
        if passed:
            tail = f"{clock(s.elapsed())}"
            cloud = {"pending": "cloud: pending", "delivered": "cloud: registered",
                     "failed": "cloud: REFUSED"}.get(s.registration)
            if cloud:
                tail += f" · {cloud}"
            if not s.present:
                tail += " · firmware running" if s.leaves_bus else " · board pulled"
            elif self._armed(s.key) == "armed":
                tail += " · unplug the board"
            p.setFont(_font(unit * 0.075))
            p.setPen(muted)
            p.drawText(rest, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, tail)
        else:  # what to do, big; the engine's reason beneath it (all of it: the tooltip, the log on a click)
            used = self._wrapped(p, rest, next_step(s.reason), unit * 0.08, text, bold=True, lines=2)
            tail = QRectF(rest.left(), rest.top() + used + unit * 0.01, rest.width(), rest.height() - used)
            if tail.height() > unit * 0.06:
                self._wrapped(p, tail, s.reason or "Failed", unit * 0.062, muted, lines=2)

    def _paint_stopped(self, p: QPainter, r: QRectF, unit: float, text: QColor, muted: QColor) -> None:
        y = self._paint_board(p, r, unit, text)
        stopped = "■ Stopped" if unit > 150 else "Stopped"
        p.setFont(_fitted(unit * 0.2, stopped, r.width()))
        fm = QFontMetricsF(p.font())
        word = QRectF(r.left(), y, r.width(), fm.height())
        p.setPen(text)
        p.drawText(word, Qt.AlignmentFlag.AlignCenter, stopped)
        rest = QRectF(r.left(), word.bottom(), r.width(), r.bottom() - word.bottom())
        self._wrapped(p, rest, "Not a fault: Retry failed finishes it", unit * 0.07, muted, lines=2)

    def _paint_operator(self, p: QPainter, r: QRectF, unit: float, text: QColor, muted: QColor) -> None:
        s = self.state
        p.setFont(_fitted(unit * 0.16, "⚠ NEEDS YOU", r.width()))
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
        p.setFont(_font(unit * 0.09, bold=True))
        fm = QFontMetricsF(p.font())
        step = QRectF(r.left(), y + unit * 0.02, r.width(), fm.height())
        p.setPen(text)
        label = self.headline() + (f" (try {s.attempt})" if s.attempt > 1 else "")
        p.drawText(step, Qt.AlignmentFlag.AlignLeft, fm.elidedText(label, Qt.TextElideMode.ElideRight, r.width()))
        # the bar: this step's transfer, or a step-count bar when nothing is moving; it takes the room there is
        foot_h = QFontMetricsF(_font(unit * 0.072)).height()
        room = r.bottom() - step.bottom() - foot_h - unit * 0.06
        bar_h = max(12.0, min(unit * 0.2, room * 0.6, 56.0))
        bar = QRectF(r.left(), step.bottom() + max(unit * 0.03, (room - bar_h) / 2), r.width(), bar_h)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(theme.PROGRESS_TRACK))
        p.drawRoundedRect(bar, bar_h / 3, bar_h / 3)
        self._band = (r, unit, bar, text, muted, QColor(accent))

    def _paint_band(self, p: QPainter, r: QRectF, unit: float, bar: QRectF, text: QColor, muted: QColor,
                    accent: QColor) -> None:
        """The part of a busy tile that moves: the bar's fill and figure, speed · ETA, the clock."""
        s = self.state
        bar_h = bar.height()
        if s.total:
            frac = min(1.0, s.done / s.total)
        else:
            frac = (s.step_index + 0.5) / len(s.steps) if s.steps else 0.0
        if frac > 0:
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(accent)
            p.drawRoundedRect(QRectF(bar.left(), bar.top(), max(bar_h / 1.5, bar.width() * frac), bar_h),
                              bar_h / 3, bar_h / 3)
        if s.total:  # the figure in white over the filled part, in the text colour over the rest
            p.setFont(_font(bar_h * 0.72, bold=True))
            split = bar.left() + bar.width() * frac
            figure = f"{s.percent()} %"
            for colour, clip in ((WHITE, QRectF(bar.left(), bar.top(), split - bar.left(), bar_h)),
                                 (text, QRectF(split, bar.top(), bar.right() - split, bar_h))):
                p.setClipRect(clip)
                p.setPen(colour)
                p.drawText(bar, Qt.AlignmentFlag.AlignCenter, figure)
            p.setClipping(False)
        # speed · ETA on the left, the clock on the right
        p.setFont(_font(unit * 0.072))
        fm = QFontMetricsF(p.font())
        foot = QRectF(r.left(), max(bar.bottom() + unit * 0.03, r.bottom() - fm.height()), r.width(), fm.height())
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
        word = "Ready" if s.phase is Phase.IDLE else "Empty"
        p.setFont(_fitted(unit * 0.14, word, r.width()))
        fm = QFontMetricsF(p.font())
        mid = QRectF(r.left(), r.top() + r.height() * 0.18, r.width(), fm.height())
        p.setPen(text)
        p.drawText(mid, Qt.AlignmentFlag.AlignCenter, word)
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
        """Draw `words` wrapped in `r`, in whole lines only, at most `lines` (shrinking once if it does not fit);
        what does not fit ends in "…" (the tooltip and the log hold the rest). Returns the height used."""
        for size in (px, px * 0.82):
            font = _font(size, bold=bold)
            fm = QFontMetricsF(font)
            box = fm.boundingRect(QRectF(0, 0, r.width(), 10_000),
                                  int(Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap), words)
            if box.height() <= min(r.height(), fm.lineSpacing() * lines + 1):
                break
        p.setFont(font)
        p.setPen(color)
        fit = max(1, min(lines, int((r.height() + 1) // fm.lineSpacing())))
        if box.height() <= fm.lineSpacing() * fit + 1:
            p.drawText(r, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap),
                       words)
            return min(box.height(), r.height())
        # too long: lay it out line by line, the last line elided, so no line is cut through its middle
        y, rest = r.top(), words
        for n in range(fit):
            last = n == fit - 1
            line = fm.elidedText(rest, Qt.TextElideMode.ElideRight, r.width()) if last else \
                _first_line(fm, rest, r.width())
            p.drawText(QRectF(r.left(), y, r.width(), fm.lineSpacing()), int(Qt.AlignmentFlag.AlignLeft), line)
            rest = rest[len(line):].lstrip()
            y += fm.lineSpacing()
            if not rest:
                break
        return y - r.top()


def _first_line(fm: QFontMetricsF, words: str, width: float) -> str:
    """As much of `words` as fits one line of `width`, broken at a space where there is one."""
    cut = len(words)
    while cut > 1 and fm.horizontalAdvance(words[:cut]) > width:
        space = words.rfind(" ", 0, cut)
        cut = space if space > 0 else cut - 1
    return words[:cut]


class TileGrid(QWidget):
    """The tiles in the saved hub order; repaints moving tiles at REPAINT_HZ."""

    tileClicked = Signal(str)
    tileMenu = Signal(str, QPoint)

    def __init__(self, bridge: EngineBridge, order: Callable[[], list[str]], name: Callable[[str], str],
                 armed: Callable[[str], str], columns: Callable[[], int], tally: Tally = lambda _key: None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.bridge = bridge
        self._order, self._name, self._armed, self._columns = order, name, armed, columns
        self._tally = tally
        self.tiles: dict[str, PortTile] = {}
        self.selected: str | None = None
        self._grid = QGridLayout(self)
        self._grid.setSpacing(SPACING)
        self._grid.setContentsMargins(MARGIN, MARGIN, MARGIN, MARGIN)
        self._grid.setSizeConstraint(QGridLayout.SizeConstraint.SetNoConstraint)  # our minimum, not the tiles'
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._placed: tuple = ()
        self._hint = QLabel("No USB ports seen yet.\nPlug boards into the hub: a tile appears for each port.", self)
        self._hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._hint.setObjectName("gridHint")
        self._timer = QTimer(self)
        self._timer.setInterval(1000 // (REPAINT_HZ * SLICES))
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        self._turn = 0
        self._seconds = [0] * SLICES  # the second each slice's clocks last showed
        bridge.tileChanged.connect(self._changed)
        bridge.tileAdded.connect(lambda _key: self.relayout())
        self.relayout()

    def columns(self) -> int:
        wanted = self._columns()
        if wanted > 0:
            return wanted
        return fit_columns(max(1, len(self.tiles)), max(1, self.width()), max(1, self.height()))

    def order(self) -> list[str]:
        """The ports as the grid shows them: the saved hub order, then any the order does not know yet."""
        keys = [k for k in self._order() if k in self.bridge.tiles]
        return keys + [k for k in self.bridge.tiles if k not in keys]

    def _span(self, cols: int, rows: int, tile: QSize) -> QSize:
        return QSize(cols * tile.width() + (cols - 1) * SPACING + 2 * MARGIN,
                     rows * tile.height() + (rows - 1) * SPACING + 2 * MARGIN)

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        """Every tile at TILE_MIN in a compact arrangement (about 3:2): 24 tiles are 6 x 4 of them."""
        n = max(1, len(self.tiles))
        cols = self._columns() or min(n, max(1, math.ceil(math.sqrt(n * 1.5))))
        return self._span(cols, math.ceil(n / cols), TILE_MIN)

    def sizeHint(self) -> QSize:  # noqa: N802
        """Comfortable tiles, but never more than the screen has room for."""
        n = max(1, len(self.tiles))
        cols = self._columns() or min(n, max(1, math.ceil(math.sqrt(n * 1.5))))
        hint = self._span(cols, math.ceil(n / cols), TILE_HINT)
        screen = (self.screen() or QGuiApplication.primaryScreen()).availableGeometry()
        return hint.boundedTo(QSize(screen.width() - 40, screen.height() // 2)).expandedTo(self.minimumSizeHint())

    def relayout(self) -> None:
        keys = self.order()
        for key in keys:
            if key not in self.tiles:
                tile = PortTile(self.bridge.tiles[key], self._name, self._armed, self._tally, self)
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
            self.setMinimumSize(self.minimumSizeHint())
            self.updateGeometry()
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
        """Repaint one slice of the tiles: those whose progress moved, and busy ones when their clock turns.
        Painting 24 tiles in one go stalls the event loop (each paint waits for the interpreter lock the port
        workers hold); a third at a time keeps every tile at REPAINT_HZ and each stall a third as long."""
        self._turn = (self._turn + 1) % SLICES
        keys = list(self.tiles)[self._turn::SLICES]
        second = int(time.monotonic())
        clocks, self._seconds[self._turn] = second != self._seconds[self._turn], second
        dirty = self.bridge.take_dirty(keys)
        for key in keys:
            tile = self.tiles[key]
            if key in dirty or (clocks and tile.state.busy):
                tile.update()

    def repaint_all(self) -> None:
        for tile in self.tiles.values():
            tile.refresh()


class Legend(QWidget):
    """The colour legend, always on screen under the toolbar."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 2, 4, 2)
        row.setSpacing(5)
        for phase in theme.LEGEND:
            sw = theme.SWATCHES[phase]
            chip = QLabel(sw.label)
            chip.setObjectName("legendChip")
            chip.setStyleSheet(f"background:{sw.fill}; color:{sw.text}; border:3px solid {sw.border};"
                               f"border-radius:6px; padding:2px 7px; font-weight:bold; font-size:12px;")
            row.addWidget(chip)
