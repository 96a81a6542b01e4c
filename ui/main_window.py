"""The station's window: toolbar, the port grid with its legend and banner, the log, history and settings."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QComboBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QMainWindow, QMenu, QMessageBox,
    QSizePolicy, QSplitter, QTabWidget, QToolBar, QToolButton, QVBoxLayout, QWidget,
)

from station.journal import Journal
from station.profile_library import available_profiles
from ui.bridge import EngineBridge
from ui.controller import BATCH, IDLE, ONE_TOUCH, STARTING, StationController
from ui.history import HistoryPage
from ui.lock import SupervisorLock
from ui.logpane import LogPane, format_line
from ui.settings_page import SettingsPage
from ui.sound import Sounds
from ui.state import Phase
from ui.store import UiSettings
from ui.tiles import Legend, TileGrid

OPEN_OTHER = "__open__"


class MainWindow(QMainWindow):
    closed = Signal()

    def __init__(self, controller: StationController, bridge: EngineBridge, journal: Journal, settings: UiSettings,
                 lock: SupervisorLock, profile_dirs: list[Path], *, title_suffix: str = ""):
        super().__init__()
        self.controller, self.bridge, self.journal = controller, bridge, journal
        self.settings, self.lock, self.profile_dirs = settings, lock, profile_dirs
        self.ask = True  # confirmation dialogs (off in tests and unattended demos)
        self.tile_actions: list[Callable[[str, QMenu], None]] = []  # hooks that add to a tile's menu (the demo's)
        self.sounds = Sounds(self)
        self.sounds.enabled = settings.sound
        self.setObjectName("mainWindow")
        self.setWindowTitle("Provisioning station" + title_suffix)
        self.resize(1400, 900)

        for key in settings.order:  # remembered locations show as tiles before any board does
            bridge.ensure_tile(key)

        self._build_toolbar()
        self._build_pages()
        self._wire()
        self.statusBar().showMessage("Ready")
        self._refresh_profiles()
        self.apply_lock()
        self._sync()

    # --- building -----------------------------------------------------------------------------------------------

    def _build_toolbar(self) -> None:
        bar = QToolBar("Station")
        bar.setObjectName("mainToolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(bar)
        self.toolbar = bar

        bar.addWidget(QLabel(" Profile "))
        self.profile_box = QComboBox()
        self.profile_box.setObjectName("profileBox")
        self.profile_box.setMinimumWidth(240)
        self.profile_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        bar.addWidget(self.profile_box)
        bar.addWidget(QLabel("  Lot "))
        self.lot_edit = QLineEdit()
        self.lot_edit.setObjectName("lotEdit")
        self.lot_edit.setPlaceholderText("scan or type the lot, Enter")
        self.lot_edit.setMinimumWidth(180)
        self.lot_edit.setMaximumWidth(260)
        self.lot_edit.setToolTip("Lot / batch label recorded with every board. A barcode scanner types here and "
                                 "ends with Enter. Ctrl+L jumps here.")
        bar.addWidget(self.lot_edit)
        bar.addSeparator()

        self.start_action = QAction("▶  Start batch", self)
        self.start_action.setObjectName("startAction")
        self.start_action.setShortcuts([QKeySequence(Qt.Key.Key_F5), QKeySequence("Ctrl+Return")])
        self.start_action.setToolTip("Provision every board on the hub (F5)")
        self.stop_action = QAction("■  Stop", self)
        self.stop_action.setObjectName("stopAction")
        # not Esc: people press Esc to dismiss things, and a stray Stop interrupts every board
        self.stop_action.setShortcuts([QKeySequence("Shift+F5"), QKeySequence("Ctrl+.")])
        self.stop_action.setToolTip("Stop every board now; one-touch disarms (Shift+F5)")
        self.retry_action = QAction("↻  Retry failed", self)
        self.retry_action.setObjectName("retryAction")
        self.retry_action.setShortcut(QKeySequence("Ctrl+R"))
        self.retry_action.setToolTip("Run the failed boards of this batch again (Ctrl+R)")
        for action in (self.start_action, self.stop_action, self.retry_action):
            bar.addAction(action)
            bar.widgetForAction(action).setObjectName(action.objectName() + "Button")
        self.one_touch = QToolButton()
        self.one_touch.setObjectName("oneTouch")
        self.one_touch.setCheckable(True)
        self.one_touch.setText("One-touch: off")
        self.one_touch.setToolTip("Armed: every board plugged into an allowed port is provisioned with no click. "
                                  "Allow ports with a right-click on their tile.")
        bar.addWidget(self.one_touch)

        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        bar.addWidget(spacer)
        self.lock_button = QToolButton()
        self.lock_button.setObjectName("lockButton")
        bar.addWidget(self.lock_button)

    def _build_pages(self) -> None:
        self.tabs = QTabWidget()
        self.tabs.setObjectName("tabs")
        self.setCentralWidget(self.tabs)

        ports = QWidget()
        col = QVBoxLayout(ports)
        col.setContentsMargins(8, 6, 8, 6)
        self.summary_label = QLabel()
        self.summary_label.setObjectName("profileSummary")
        self.summary_label.setWordWrap(True)
        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setAlignment(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft)
        top = QHBoxLayout()
        top.addWidget(self.summary_label, 1)
        top.addWidget(Legend())
        col.addLayout(top)
        self.passed_label = QLabel()
        self.passed_label.setObjectName("passedCount")
        self.passed_label.setToolTip("Boards that passed in this batch")
        self.failed_label = QLabel()
        self.failed_label.setObjectName("failedCount")
        self.failed_label.setToolTip("Boards that failed in this batch (Retry failed runs them again)")
        self.pending_label = QLabel()
        self.pending_label.setObjectName("pendingCount")
        self.pending_label.setToolTip("Boards of this batch whose registration with the cloud waits in the "
                                      "outbox: the cloud has not confirmed them yet. The station keeps retrying, "
                                      "also after a restart.")
        status = QHBoxLayout()
        status.addWidget(self.banner, 1)
        for label in (self.passed_label, self.failed_label, self.pending_label):
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            status.addWidget(label)
        col.addLayout(status)
        self.grid = TileGrid(self.bridge, lambda: self.settings.order, self.settings.name, self._armed_state,
                             lambda: self.settings.columns)
        self.grid.setObjectName("tileGrid")
        self.log_pane = LogPane(self.bridge, self.settings.name)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.grid)
        split.addWidget(self.log_pane)
        split.setStretchFactor(0, 5)
        split.setStretchFactor(1, 1)
        split.setSizes([700, 160])
        col.addWidget(split, 1)
        self.tabs.addTab(ports, "Ports")

        self.history = HistoryPage(self.journal, self.bridge, self.settings.name)
        self.tabs.addTab(self.history, "Device history")
        self.settings_page = SettingsPage(self.controller, self.bridge, self.settings, self.lock, self.sounds)
        self.tabs.addTab(self.settings_page, "Settings")

        for n in range(3):
            action = QAction(self)
            action.setShortcut(QKeySequence(f"Ctrl+{n + 1}"))
            action.triggered.connect(lambda _=False, i=n: self.tabs.setCurrentIndex(i))
            self.addAction(action)
        focus_lot = QAction(self)
        focus_lot.setShortcut(QKeySequence("Ctrl+L"))
        focus_lot.triggered.connect(lambda: (self.lot_edit.setFocus(), self.lot_edit.selectAll()))
        self.addAction(focus_lot)

    def _wire(self) -> None:
        c, b = self.controller, self.bridge
        self.start_action.triggered.connect(self.start_clicked)
        self.stop_action.triggered.connect(self.stop_clicked)
        self.retry_action.triggered.connect(lambda: asyncio.ensure_future(c.retry_failed()))
        self.one_touch.toggled.connect(self._one_touch_toggled)
        self.profile_box.activated.connect(self._profile_picked)
        self.lot_edit.returnPressed.connect(self._lot_entered)
        self.lot_edit.editingFinished.connect(lambda: setattr(c, "lot", self.lot_edit.text().strip()))
        self.lock_button.clicked.connect(self._lock_button_clicked)
        c.modeChanged.connect(self._sync)
        c.profileChanged.connect(self.show_profile_state)
        c.message.connect(self._message)
        b.tileAdded.connect(self._port_seen)
        b.countsChanged.connect(self._sync)
        # bound methods, not lambdas: Qt drops them with the window, so a bridge that outlives it can't reach it
        b.batchDone.connect(self._sync)
        b.deviceDone.connect(self._device_done)
        b.tileChanged.connect(self._tiles_changed)
        self.grid.tileClicked.connect(self.log_pane.show_port)
        self.grid.tileMenu.connect(self._tile_menu)
        self.log_pane.diagnosticsRequested.connect(self._copy_selected_diagnostics)
        self.settings_page.layoutChanged.connect(self._layout_changed)
        self.settings_page.lockChanged.connect(self.apply_lock)
        self.settings_page.unlockRequested.connect(self._ask_unlock)
        self._banner_soon = QTimer(self)
        self._banner_soon.setSingleShot(True)
        self._banner_soon.setInterval(100)
        self._banner_soon.timeout.connect(self._update_banner)

    # --- profiles -----------------------------------------------------------------------------------------------

    def profile_paths(self) -> list[Path]:
        """The user's profiles, then the shipped ones not shadowed by a user profile of the same name."""
        return [e.path for e in available_profiles(self.profile_dirs) if not e.shadowed]

    def _refresh_profiles(self) -> None:
        box = self.profile_box
        box.blockSignals(True)
        box.clear()
        paths = [str(p) for p in self.profile_paths()]
        current = self.controller.profile_path
        if current and current not in paths:
            paths.append(current)
        for path in paths:
            box.addItem(Path(path).stem, path)
            box.setItemData(box.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        box.addItem("Open other profile…", OPEN_OTHER)
        index = box.findData(current) if current else -1
        box.setCurrentIndex(index if index >= 0 else -1)
        box.blockSignals(False)

    def _profile_picked(self, index: int) -> None:
        data = self.profile_box.itemData(index)
        if data == OPEN_OTHER:
            path = None
            if not self.lock.locked:
                start = next(d for d in self.profile_dirs if d.is_dir())  # the shipped folder always is
                path, _ = QFileDialog.getOpenFileName(self, "Open a profile", str(start), "Profiles (*.toml)")
            if not path:
                self._refresh_profiles()
                return
            data = path
        asyncio.ensure_future(self.select_profile(data))

    async def select_profile(self, path: str | Path) -> bool:
        """Load a profile; refused while locked or while boards are being provisioned."""
        if self.lock.locked:
            self._message("warning", "Locked: only a supervisor can change the profile.")
            self._refresh_profiles()
            return False
        ok = await self.controller.load_profile(path)
        if ok:
            self.settings.profile = str(path)
            self.settings.save()
        self._refresh_profiles()
        return ok

    def show_profile_state(self) -> None:
        c = self.controller
        if c.profile_error:
            self.summary_label.setText(f"⚠ {c.profile_error}")
            self.summary_label.setProperty("error", True)
        elif c.profile is not None:
            self.summary_label.setText(c.profile.summary())
            self.summary_label.setProperty("error", False)
        else:
            self.summary_label.setText("No profile: pick one in the toolbar.")
            self.summary_label.setProperty("error", True)
        self.summary_label.style().unpolish(self.summary_label)
        self.summary_label.style().polish(self.summary_label)
        self._refresh_profiles()
        self._sync()

    # --- commands -----------------------------------------------------------------------------------------------

    def start_clicked(self) -> None:
        if self.controller.busy:
            return
        self.controller.lot = self.lot_edit.text().strip()
        done_here = [k for k, t in self.bridge.tiles.items() if t.present and t.phase is Phase.PASS]
        fresh = [k for k, t in self.bridge.tiles.items() if t.present and t.phase is Phase.IDLE]
        if done_here and self.ask:
            names = ", ".join(self.settings.name(k) for k in done_here)
            ask = QMessageBox(QMessageBox.Icon.Question, "Boards already passed",
                              f"{names} still hold{'s' if len(done_here) == 1 else ''} a board that passed just now.",
                              parent=self)
            only_new = ask.addButton("Only the new boards", QMessageBox.ButtonRole.AcceptRole)
            again = ask.addButton("All boards, again", QMessageBox.ButtonRole.DestructiveRole)
            ask.addButton(QMessageBox.StandardButton.Cancel)
            ask.setDefaultButton(only_new)
            ask.exec()
            if ask.clickedButton() is only_new:
                if not fresh:
                    self._message("warning", "No new boards: swap the passed boards for new ones first.")
                    return
                asyncio.ensure_future(self.controller.start_batch(only=fresh))
            elif ask.clickedButton() is again:  # their live certificates are voided and replaced
                asyncio.ensure_future(self.controller.start_batch(reprovision=True))
            return
        asyncio.ensure_future(self.controller.start_batch())

    def stop_clicked(self) -> None:
        if self.controller.busy:
            self.controller.stop()
            self._message("warning", "Stopping: every running board is interrupted and recorded as such.")

    def _one_touch_toggled(self, on: bool) -> None:
        if on and self.controller.mode == IDLE:
            self.controller.lot = self.lot_edit.text().strip()

            async def arm():
                if not await self.controller.arm_one_touch():
                    self.one_touch.setChecked(False)
            asyncio.ensure_future(arm())
        elif not on and self.controller.mode == ONE_TOUCH:
            self.controller.stop()
        self._sync()

    def _lot_entered(self) -> None:
        lot = self.lot_edit.text().strip()
        self.controller.lot = lot
        self.lot_edit.selectAll()  # the next scan replaces it
        self._message("info", f"Lot set to {lot}" if lot else "Lot cleared")
        self.bridge.note(f"lot: {lot or '(none)'}")

    # --- lock ---------------------------------------------------------------------------------------------------

    def apply_lock(self) -> None:
        locked = self.lock.locked
        self.profile_box.setEnabled(not locked and not self.controller.busy)
        if not self.lock.is_set:
            self.lock_button.setText("Lock: none")
            self.lock_button.setToolTip("No supervisor passphrase set (Settings)")
        elif locked:
            self.lock_button.setText("■ LOCKED")
            self.lock_button.setToolTip("Operators run batches. Click to unlock with the supervisor passphrase.")
        else:
            self.lock_button.setText("Supervisor (unlocked)")
            self.lock_button.setToolTip("Unlocked. Click to lock the station again.")
        self.settings_page.refresh_lock()
        self.settings_page.refresh_wifi()

    def _lock_button_clicked(self) -> None:
        if not self.lock.is_set:
            self.tabs.setCurrentWidget(self.settings_page)
        elif self.lock.locked:
            self._ask_unlock()
        else:
            self.settings_page.lock_station()

    def _ask_unlock(self) -> None:
        text, ok = QInputDialog.getText(self, "Unlock", "Supervisor passphrase:", QLineEdit.EchoMode.Password)
        if ok and text:
            asyncio.ensure_future(self.unlock(text))

    async def unlock(self, passphrase: str) -> bool:
        right = await asyncio.get_running_loop().run_in_executor(None, self.lock.verify, passphrase)
        if right:
            self.lock.locked = False
            self.bridge.note("unlocked by the supervisor")
            self._message("info", "Unlocked. Lock again when done (toolbar or Settings).")
        else:
            self.bridge.note("unlock refused: wrong passphrase", "warning")
            self._message("warning", "Wrong supervisor passphrase.")
        self.apply_lock()
        return right

    # --- ports --------------------------------------------------------------------------------------------------

    def _armed_state(self, key: str) -> str:
        if self.controller.mode != ONE_TOUCH:
            return ""
        return "armed" if key in self.settings.allowed else "ignored"

    def _port_seen(self, key: str) -> None:
        if self.settings.add_port(key):
            self.settings.save()
            self.settings_page.refresh_ports()
        self.grid.relayout()
        self.log_pane.rename_ports()

    def _layout_changed(self) -> None:
        self.grid.relayout()
        self.log_pane.rename_ports()
        self._update_banner()

    def _tile_menu(self, key: str, where: QPoint) -> None:
        menu = self.build_tile_menu(key)
        menu.exec(where)

    def build_tile_menu(self, key: str) -> QMenu:
        tile = self.bridge.tiles[key]
        locked = self.lock.locked
        menu = QMenu(self)
        title = menu.addAction(f"{self.settings.name(key)}  —  USB {key}")
        title.setEnabled(False)
        menu.addSeparator()
        rename = menu.addAction("Name this port…")
        rename.triggered.connect(lambda: self._rename(key))
        allow = menu.addAction("Allow one-touch on this port")
        allow.setCheckable(True)
        allow.setChecked(key in self.settings.allowed)
        allow.toggled.connect(lambda on: self.set_allowed(key, on))
        earlier = menu.addAction("Move tile earlier")
        earlier.triggered.connect(lambda: self._move(key, -1))
        later = menu.addAction("Move tile later")
        later.triggered.connect(lambda: self._move(key, +1))
        for action in (rename, allow, earlier, later):
            action.setEnabled(not locked)
            if locked:
                action.setToolTip("Locked: supervisor only")
        menu.addSeparator()
        stop = menu.addAction("Stop this board")
        stop.setEnabled(tile.busy)
        stop.triggered.connect(lambda: self.controller.cancel(key))
        diag = menu.addAction("Copy diagnostics")
        diag.triggered.connect(lambda: self.copy_diagnostics(key))
        log = menu.addAction("Show this port's log")
        log.triggered.connect(lambda: self.log_pane.show_port(key))
        for hook in self.tile_actions:
            hook(key, menu)
        return menu

    def _rename(self, key: str) -> None:
        name, ok = QInputDialog.getText(self, "Name this port", f"Name for USB location {key} (e.g. A1):",
                                        text=self.settings.names.get(key, ""))
        if ok:
            self.rename_port(key, name)

    def rename_port(self, key: str, name: str) -> bool:
        if self.lock.locked:
            return False
        self.settings.rename(key, name)
        self.settings.save()
        self.settings_page.refresh_ports()
        self._layout_changed()
        return True

    def set_allowed(self, key: str, allowed: bool) -> bool:
        if self.lock.locked:
            return False
        self.settings.set_allowed(key, allowed)
        self.settings.save()
        self.settings_page.refresh_ports()
        self.grid.repaint_all()
        return True

    def _move(self, key: str, delta: int) -> None:
        if self.lock.locked:
            return
        self.settings.move(key, delta)
        self.settings.save()
        self.settings_page.refresh_ports()
        self.grid.relayout()

    # --- diagnostics --------------------------------------------------------------------------------------------

    def diagnostics(self, key: str, log_lines: int = 40) -> str:
        t = self.bridge.tiles[key]
        c = self.controller
        lines = [f"Provisioning station diagnostics, {time.strftime('%Y-%m-%d %H:%M:%S')}",
                 f"Station: {c.station_id}   Operator: {c.operator}",
                 f"Profile: {c.profile.name if c.profile else '-'} ({c.profile_path or '-'})",
                 f"Port: {self.settings.name(key)} (USB location {key})",
                 f"  {t.usb_description or '-'}, USB {t.usb_id or '?'}, {t.url or 'not plugged in'}"
                 + ("" if t.present else " [board not on the hub now]")]
        if t.chip:
            lines.append(f"Board: {t.family} {t.chip}, {t.description}, MAC {t.mac}"
                         + (f", {t.flash_size // (1024 * 1024)} MB flash" if t.flash_size else ""))
        lines.append(f"Batch: {t.batch_id or '-'}   Lot: {c.lot or '-'}   Device id: {t.device_id or '-'}")
        verdict = {Phase.PASS: "PASS", Phase.FAIL: "FAIL"}.get(t.phase, t.phase.value)
        lines.append(f"Result: {verdict}" + (f" after {t.elapsed():.1f} s" if t.started is not None else ""))
        if t.reason:
            lines.append(f"Reason: {t.reason}")
        if t.prompt:
            lines.append(f"Waiting for the operator: {t.prompt} ({t.prompt_reason})")
        if t.steps:
            lines.append(f"Profile steps: {', '.join(t.steps)}")
        lines.append("Steps:")
        for s in t.history:
            state = "running" if s.ok is None else ("ok" if s.ok else "FAIL")
            lines.append(f"  {s.name:<11} try {s.attempt}  {state:<7} {s.seconds:6.1f} s  {s.detail}")
        if not t.history:
            lines.append("  (none ran)")
        lines.append(f"Last {log_lines} log lines:")
        lines += ["  " + format_line(line, self.settings.name) for line in list(t.log)[-log_lines:]]
        return self.bridge.redact("\n".join(lines)) + "\n"

    def copy_diagnostics(self, key: str) -> str:
        text = self.diagnostics(key)
        QGuiApplication.clipboard().setText(text)
        self._message("info", f"Diagnostics for {self.settings.name(key)} copied to the clipboard.")
        return text

    def _copy_selected_diagnostics(self) -> None:
        key = self.grid.selected
        if key is None:
            failed = self.bridge.failed_ports()
            key = failed[0] if failed else None
        if key is None:
            self._message("warning", "Click a tile first (a failed one, usually), then Copy diagnostics.")
            return
        self.copy_diagnostics(key)

    # --- state display ------------------------------------------------------------------------------------------

    def _message(self, level: str, text: str) -> None:
        self.statusBar().showMessage(("⚠ " if level in ("warning", "error") else "") + text, 15000)

    def _device_done(self, _key: str, ok: bool, _reason: str) -> None:
        self.sounds.play(ok)

    def _tiles_changed(self, _key: str) -> None:
        self._banner_soon.start()

    def _sync(self, *_args) -> None:
        c, mode = self.controller, self.controller.mode
        idle = mode == IDLE
        self.start_action.setEnabled(idle and c.profile is not None)
        self.stop_action.setEnabled(mode in (BATCH, ONE_TOUCH, STARTING))
        self.retry_action.setEnabled(c.can_retry())
        failed = len(self.bridge.failed_ports())
        self.retry_action.setText(f"↻  Retry failed ({failed})" if failed else "↻  Retry failed")
        self.one_touch.setEnabled(idle or mode == ONE_TOUCH)
        self.one_touch.blockSignals(True)
        self.one_touch.setChecked(mode == ONE_TOUCH)
        self.one_touch.blockSignals(False)
        self.one_touch.setText("⚡ ONE-TOUCH ARMED" if mode == ONE_TOUCH else "One-touch: off")
        self.profile_box.setEnabled(idle and not self.lock.locked)
        passed, failed_n, pending = self.bridge.counts()
        self.passed_label.setText(f"✔ {passed}\npassed")
        self.failed_label.setText(f"✘ {failed_n}\nfailed")
        self.pending_label.setText(f"☁ {pending}\npending registration")
        self.grid.repaint_all()
        self._update_banner()

    def _update_banner(self) -> None:
        mode = self.controller.mode
        tiles = self.bridge.tiles
        passed, failed, _ = self.bridge.counts()
        busy = [k for k, t in tiles.items() if t.busy]
        needs = [k for k, t in tiles.items() if t.phase is Phase.OPERATOR]
        name = self.settings.name
        if mode == ONE_TOUCH:
            allowed = [name(k) for k in self.settings.order if k in self.settings.allowed]
            text = (f"⚡ ONE-TOUCH ARMED: a board plugged into {', '.join(allowed) or 'no port'} is provisioned at "
                    f"once. Unplug it when its tile says PASS.  ({passed} passed, {failed} failed)")
            kind = "armed"
        elif mode in (BATCH, STARTING):
            text = f"Provisioning: {len(busy)} working, {passed + failed} done ({passed} passed, {failed} failed)"
            kind = "working"
        elif failed:
            bad = [name(k) for k in self.bridge.failed_ports()]
            text = f"Batch done: {passed} passed, {failed} FAILED. Take out the red boards: {', '.join(bad)}."
            kind = "fail"
        elif passed:
            text = f"Batch done: all {passed} passed. Swap the boards, then press Start (F5)."
            kind = "pass"
        else:
            present = sum(1 for t in tiles.values() if t.present)
            text = (f"{present} board{'s' if present != 1 else ''} on the hub. " if present else
                    "No boards on the hub yet. ") + "Pick a profile, scan the lot, press Start (F5)."
            kind = "idle"
        if needs:
            text = f"⚠ {', '.join(name(k) for k in needs)} need{'s' if len(needs) == 1 else ''} a hand. " + text
            kind = "operator"
        self.banner.setText(text)
        if self.banner.property("kind") != kind:
            self.banner.setProperty("kind", kind)
            self.banner.style().unpolish(self.banner)
            self.banner.style().polish(self.banner)

    # --- closing ------------------------------------------------------------------------------------------------

    def closeEvent(self, event) -> None:  # noqa: N802
        if self.controller.busy and self.ask:
            answer = QMessageBox.question(self, "Boards are being provisioned",
                                          "Stop every running board and quit? Interrupted boards are recorded as "
                                          "interrupted and can be provisioned again.")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        event.accept()
        self.closed.emit()
