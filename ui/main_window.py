"""The station's window: toolbar, the port grid with its legend and banner, the log, history and settings."""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QMainWindow, QMenu, QMessageBox, QProgressBar,
    QPushButton, QSizePolicy, QSplitter, QStackedWidget, QTabWidget, QToolBar, QToolButton, QVBoxLayout, QWidget,
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
from ui.state import Phase, clock
from ui.store import UiSettings
from ui.tiles import Legend, TileGrid

TITLE = "Provisioning station"
NO_CA = "This profile gives every board an identity, but the station has no CA yet."


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
        self.sounds.prompts = settings.prompt_sound
        self.setObjectName("mainWindow")
        self.title_suffix = title_suffix
        self.setWindowTitle(TITLE + title_suffix)
        screen = QGuiApplication.primaryScreen().availableGeometry()
        self.resize(min(1400, screen.width()), min(900, screen.height()))
        self.banner_note = ""  # a passing word for the banner's second line (where an export went)
        self.batch_summary = ""  # the last batch's summary, under the banner until the next one starts
        self._batch_seconds = 0.0
        self._needs: tuple[str, ...] = ()  # ports that need a hand, as the title and tab badge show them

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

        # a menu behind a button, not a combo box: no key press or wheel turn can switch the profile
        self.profile_button = QToolButton()
        self.profile_button.setObjectName("profileButton")
        self.profile_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.profile_menu = QMenu(self.profile_button)
        self.profile_menu.aboutToShow.connect(self._fill_profile_menu)
        self.profile_button.setMenu(self.profile_menu)
        self.profile_button.setToolTip("Change the profile (asks first when boards are on the hub)")
        bar.addWidget(self.profile_button)
        bar.addWidget(QLabel(" Lot "))
        self.lot_edit = QLineEdit()
        self.lot_edit.setObjectName("lotEdit")
        self.lot_edit.setPlaceholderText("scan or type the lot, Enter")
        self.lot_edit.setMinimumWidth(130)
        self.lot_edit.setMaximumWidth(200)
        self.lot_edit.setToolTip("Lot / batch label recorded with every board. A barcode scanner types here and "
                                 "ends with Enter. Ctrl+L jumps here.")
        bar.addWidget(self.lot_edit)
        bar.addSeparator()

        self.start_action = QAction("▶  Start batch", self)
        self.start_action.setObjectName("startAction")
        self.start_action.setToolTip("Provision every board on the hub (F5 on the Ports tab)")
        # the keys start a batch only where the tiles are in view (see _start_key)
        self.start_key = QAction(self)
        self.start_key.setShortcuts([QKeySequence(Qt.Key.Key_F5), QKeySequence("Ctrl+Return")])
        self.addAction(self.start_key)
        self.stop_action = QAction("■  Stop", self)
        self.stop_action.setObjectName("stopAction")
        # not Esc: people press Esc to dismiss things, and a stray Stop interrupts every board
        self.stop_action.setShortcuts([QKeySequence("Shift+F5"), QKeySequence("Ctrl+.")])
        self.stop_action.setToolTip("Stop every board now; one-touch disarms (Shift+F5)")
        self.retry_action = QAction("↻  Retry failed", self)
        self.retry_action.setObjectName("retryAction")
        self.retry_action.setShortcut(QKeySequence("Ctrl+R"))
        self.retry_action.setToolTip("Run the failed and stopped boards of this batch that are on the hub again "
                                     "(Ctrl+R)")
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
        # the profile, large: its name, then what it does; the check of what Start writes is one click away
        self.profile_title = QLabel()
        self.profile_title.setObjectName("profileTitle")
        self.profile_title.setWordWrap(True)  # a long name takes two lines rather than widen the window
        self.summary_label = QLabel()
        self.summary_label.setObjectName("profileSummary")
        self.summary_label.setWordWrap(True)
        self.check_button = QPushButton("What Start writes…")
        self.check_button.setObjectName("checkButton")
        self.check_button.setToolTip("Images, addresses, hashes, identity and cloud of this profile, before Start")
        names = QVBoxLayout()
        names.setSpacing(0)
        names.addWidget(self.profile_title)
        names.addWidget(self.summary_label)
        top = QHBoxLayout()
        top.addLayout(names, 1)
        top.addWidget(self.check_button)
        top.addWidget(Legend())
        col.addLayout(top)
        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setAlignment(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft)
        self.banner.setMinimumWidth(200)
        self.fix_button = QPushButton("Set up the CA…")  # beside a blocker it can fix
        self.fix_button.setObjectName("fixButton")
        self.fix_button.setVisible(False)
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
        status.addWidget(self.fix_button)
        for label in (self.passed_label, self.failed_label, self.pending_label):
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            status.addWidget(label)
        col.addLayout(status)
        self.batch_bar = QProgressBar()  # the whole batch: boards done, and an ETA once one has finished
        self.batch_bar.setObjectName("batchProgress")
        self.batch_bar.setRange(0, 1000)
        self.summary_line = QLabel()  # the last batch in a line or two, until the next starts
        self.summary_line.setObjectName("batchSummary")
        self.summary_line.setWordWrap(True)
        # one slot of fixed height for either: the grid below does not move when a batch starts or ends
        self.below_banner = QStackedWidget()
        for page in (QWidget(), self.batch_bar, self.summary_line):
            self.below_banner.addWidget(page)
        self.below_banner.setFixedHeight(36)
        col.addWidget(self.below_banner)
        self.grid = TileGrid(self.bridge, lambda: self.settings.order, self.settings.name, self._armed_state,
                             lambda: self.settings.columns, lambda key: self.settings.yields.get(key))
        self.grid.setObjectName("tileGrid")
        self.log_pane = LogPane(self.bridge, self.settings.name)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.grid)
        split.addWidget(self.log_pane)
        split.setStretchFactor(0, 5)
        split.setStretchFactor(1, 1)
        split.setCollapsible(0, False)
        split.setSizes([700, 120])
        col.addWidget(split, 1)
        self.tabs.addTab(ports, "Ports")
        self.ports_page = ports

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
        self.start_key.triggered.connect(self._start_key)
        self.stop_action.triggered.connect(self.stop_clicked)
        self.retry_action.triggered.connect(self.retry_clicked)
        self.one_touch.toggled.connect(self._one_touch_toggled)
        self.check_button.clicked.connect(self.show_plan)
        self.fix_button.clicked.connect(self._fix_clicked)
        self.lot_edit.returnPressed.connect(self._lot_entered)
        self.lot_edit.editingFinished.connect(self._lot_edited)
        self.lot_edit.textChanged.connect(self._lot_edited)
        self.lock_button.clicked.connect(self._lock_button_clicked)
        c.modeChanged.connect(self._mode_changed)
        c.profileChanged.connect(self.show_profile_state)
        c.message.connect(self._message)
        c.refused.connect(self._sync)
        b.tileAdded.connect(self._port_seen)
        b.countsChanged.connect(self._sync)
        # bound methods, not lambdas: Qt drops them with the window, so a bridge that outlives it can't reach it
        b.batchStarted.connect(self._batch_started)
        b.batchDone.connect(self._batch_done)
        b.deviceDone.connect(self._device_done)
        b.promptShown.connect(self._prompt_shown)
        b.tileChanged.connect(self._tiles_changed)
        self.grid.tileClicked.connect(self.log_pane.show_port)
        self.grid.tileMenu.connect(self._tile_menu)
        self.log_pane.diagnosticsRequested.connect(self._copy_selected_diagnostics)
        self.settings_page.layoutChanged.connect(self._layout_changed)
        self.settings_page.lockChanged.connect(self.apply_lock)
        self.settings_page.unlockRequested.connect(self._ask_unlock)
        self.history.exported.connect(self._exported)
        self._banner_soon = QTimer(self)
        self._banner_soon.setSingleShot(True)
        self._banner_soon.setInterval(100)
        self._banner_soon.timeout.connect(self._sync)  # Retry failed follows boards pulled and reseated too
        self._progress_timer = QTimer(self)  # the batch bar and its ETA, once a second while a batch runs
        self._progress_timer.setInterval(1000)
        self._progress_timer.timeout.connect(self._update_progress)

    # --- profiles -----------------------------------------------------------------------------------------------

    def profile_paths(self) -> list[Path]:
        """The user's profiles, then the shipped ones not shadowed by a user profile of the same name."""
        return [e.path for e in available_profiles(self.profile_dirs) if not e.shadowed]

    def _refresh_profiles(self) -> None:
        c = self.controller
        name = c.profile.name if c.profile is not None else "none chosen"
        fm = self.profile_button.fontMetrics()  # a long name is cut short here; the banner shows it whole
        self.profile_button.setText(f"Profile: {fm.elidedText(name, Qt.TextElideMode.ElideRight, 230)}  ▾")

    def _fill_profile_menu(self) -> None:
        menu = self.profile_menu
        menu.clear()
        paths = [str(p) for p in self.profile_paths()]
        current = self.controller.profile_path
        if current and current not in paths:
            paths.append(current)
        for path in paths:
            action = menu.addAction(Path(path).stem)
            action.setCheckable(True)
            action.setChecked(path == current)
            action.setToolTip(path)
            action.triggered.connect(lambda _=False, p=path: self.profile_picked(p))
        menu.addSeparator()
        other = menu.addAction("Open other profile…")
        other.triggered.connect(self._open_other_profile)

    def _open_other_profile(self) -> None:
        if self.lock.locked:
            self._message("warning", "Locked: only a supervisor can change the profile.")
            return
        start = next(d for d in self.profile_dirs if d.is_dir())  # the shipped folder always is
        path, _ = QFileDialog.getOpenFileName(self, "Open a profile", str(start), "Profiles (*.toml)")
        if path:
            self.profile_picked(path)

    def profile_picked(self, path: str) -> None:
        """A person picked a profile: with boards on the hub, ask first (a wrong profile writes wrong boards)."""
        if path == self.controller.profile_path:
            return
        present = sum(1 for t in self.bridge.tiles.values() if t.present)
        if present and self.ask and not self.confirm_profile_change(Path(path).stem, present):
            return
        asyncio.ensure_future(self.select_profile(path))

    def confirm_profile_change(self, name: str, boards: int) -> bool:
        answer = QMessageBox.question(
            self, "Change the profile?",
            f"{boards} board{'s are' if boards != 1 else ' is'} on the hub. Switch to profile '{name}'? The next "
            f"batch writes what '{name}' says.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    async def select_profile(self, path: str | Path) -> bool:
        """Load a profile; refused while locked or while boards are being provisioned. A refused profile leaves
        none loaded."""
        if self.lock.locked:
            self._message("warning", "Locked: only a supervisor can change the profile.")
            return False
        ok = await self.controller.load_profile(path)
        self.settings.profile = str(path) if ok else ""
        self.settings.save()
        self._refresh_profiles()
        return ok

    def show_profile_state(self) -> None:
        c = self.controller
        if c.profile is not None:
            self.profile_title.setText(c.profile.name)
            self.summary_label.setText(self._profile_words())
        elif c.profile_error:
            self.profile_title.setText("Profile refused — nothing loaded")
            self.summary_label.setText(c.profile_error)
        else:
            self.profile_title.setText("No profile chosen")
            self.summary_label.setText("Pick one with Profile in the toolbar.")
        self.profile_title.setProperty("error", c.profile is None)
        self.profile_title.style().unpolish(self.profile_title)
        self.profile_title.style().polish(self.profile_title)
        self.check_button.setEnabled(c.profile is not None)
        self._refresh_profiles()
        self._sync()

    def _profile_words(self) -> str:
        p = self.controller.profile
        words = [p.summary().removeprefix(f"{p.name}: ")]
        if p.identity:
            words.append("a certificate per board")
        if p.clouds:
            words.append(f"registered with {' and '.join(p.clouds)}")
        return " · ".join(words)

    def plan_text(self) -> str:
        c = self.controller
        if c.profile is None:
            return "No profile loaded."
        lines = c.profile.plan()
        lot = self.lot_edit.text().strip()
        lines.append(f"Lot: {lot or '(none)'}" + ("  — required" if c.lot_required else ""))
        present = [self.settings.name(k) for k in self.grid.order() if self.bridge.tiles[k].present]
        lines.append(f"Boards on the hub now: {', '.join(present) or 'none'}")
        return "\n".join(lines)

    def show_plan(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, "What Start writes", self.plan_text(), parent=self)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.setStyleSheet("QLabel { font-family: 'DejaVu Sans Mono'; font-size: 13px; }")
        box.exec()

    # --- commands -----------------------------------------------------------------------------------------------

    def _start_key(self) -> None:
        """F5 / Ctrl+Return: only with the tiles in view, so a key pressed on another tab starts nothing."""
        if self.tabs.currentWidget() is self.ports_page:
            self.start_clicked()
        else:
            self._message("info", "F5 starts a batch from the Ports tab (Ctrl+1).")

    def retry_clicked(self) -> None:
        self.controller.lot = self.lot_edit.text().strip()
        asyncio.ensure_future(self.controller.retry_failed())

    def _fix_clicked(self) -> None:
        self.tabs.setCurrentWidget(self.settings_page)

    def _lot_edited(self, *_args) -> None:
        lot = self.lot_edit.text().strip()
        if lot != self.controller.lot:
            self.controller.lot = lot
            if self.controller.lot_required:
                self._update_banner()

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
            ask.setInformativeText("\"All boards, again\" voids the certificates those boards hold now (everywhere: "
                                   "ledger, records, cloud) and gives them new ones.")
            only_new = ask.addButton("Only the new boards", QMessageBox.ButtonRole.AcceptRole)
            again = ask.addButton("All boards, again (voids their certificates)", QMessageBox.ButtonRole.DestructiveRole)
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
        self._lot_edited()
        self.lot_edit.selectAll()  # the next scan replaces it
        self._message("info", f"Lot set to {lot}" if lot else "Lot cleared")
        self.bridge.note(f"lot: {lot or '(none)'}")

    # --- lock ---------------------------------------------------------------------------------------------------

    def apply_lock(self) -> None:
        locked = self.lock.locked
        self.profile_button.setEnabled(not locked and not self.controller.busy)
        self.profile_button.setToolTip("Locked: only a supervisor can change the profile" if locked else
                                       "Change the profile (asks first when boards are on the hub)")
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
        self._update_banner()
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

    def _device_done(self, key: str, ok: bool, _reason: str) -> None:
        tile = self.bridge.tiles.get(key)
        if tile is not None and tile.phase is not Phase.STOPPED:  # a stop says nothing about the port
            self.settings.count(key, ok)
            self.settings.save()
        self.sounds.play(ok)

    def _prompt_shown(self, _key: str, _prompt: str) -> None:
        self.sounds.prompt()
        self._show_needs()

    def _exported(self, path: str, records: int) -> None:
        self.banner_note = f"Exported {records} record{'s' if records != 1 else ''} to {path}"
        self._update_banner()

    def _tiles_changed(self, _key: str) -> None:
        self._banner_soon.start()

    def _batch_started(self, *_args) -> None:
        self.batch_summary = self.banner_note = ""
        self._progress_timer.start()
        self._sync()

    def _batch_done(self, *_args) -> None:
        self._progress_timer.stop()
        self._batch_seconds = max(0.0, time.monotonic() - self.bridge.batch_started)
        self.batch_summary = self.summary_words()
        self._sync()

    def summary_words(self) -> str:
        """The batch that just ended in a line: how many passed, failures by reason, registrations, time."""
        b = self.bridge
        passed, failed, pending = b.counts()
        words = [f"Last batch {b.batch_id}: {passed} passed", f"{failed} failed"]
        if b.stopped:
            words.append(f"{len(b.stopped)} stopped")
        by_reason: dict[str, int] = {}
        for reason in b.reasons.values():
            head = re.sub(r" at \d+ %$", "", reason.split(" (")[0].split(": ")[0])  # "vanished during flash"
            by_reason[head] = by_reason.get(head, 0) + 1
        text = ", ".join(words)
        if by_reason:
            text += " (" + "; ".join(f"{n}× {r}" for r, n in sorted(by_reason.items(), key=lambda i: -i[1])) + ")"
        if b.registering:
            text += f" · {pending} pending registration"
        if b.board_seconds:
            text += f" · {clock(sum(b.board_seconds) / len(b.board_seconds))} per board"
            text += f" · {clock(self._batch_seconds)} in all"
        return text

    def _update_progress(self) -> None:
        done, total, fraction, left = self.bridge.batch_progress()
        running = self.controller.mode in (BATCH, STARTING) and total > 0
        if running:
            # QProgressBar.setValue repaints at once (a window-wide bar, inside this engine event); with updates
            # off it only asks for a paint, which the next turn of the event loop does with the tiles'
            self.batch_bar.setUpdatesEnabled(False)
            self.batch_bar.setValue(int(fraction * 1000))
            eta = f" · about {clock(left)} left" if left is not None else " · time left: soon known"
            self.batch_bar.setFormat(f"Batch: {done} of {total} boards done · {int(fraction * 100)} %" + eta)
            self.batch_bar.setUpdatesEnabled(True)
        self.summary_line.setText(self.batch_summary)
        shown = self.batch_bar if running else self.summary_line if self.batch_summary else None
        self.below_banner.setCurrentIndex(self.below_banner.indexOf(shown) if shown is not None else 0)

    def _show_needs(self) -> None:
        """A board that waits for a hand shows on every tab: the Ports tab's badge and the window title."""
        needs = tuple(k for k in self.grid.order() if self.bridge.tiles[k].phase is Phase.OPERATOR)
        if needs == self._needs:
            return
        self._needs = needs
        names = ", ".join(self.settings.name(k) for k in needs)
        self.tabs.setTabText(0, f"Ports  ⚠ {len(needs)} NEED{'S' if len(needs) == 1 else ''} YOU" if needs
                             else "Ports")
        self.tabs.tabBar().setTabTextColor(0, Qt.GlobalColor.darkRed if needs else self.palette().text().color())
        self.setWindowTitle((f"⚠ {names} NEED{'S' if len(needs) == 1 else ''} YOU — " if needs else "") + TITLE
                            + self.title_suffix)

    def _mode_changed(self, *_args) -> None:
        self.grid.repaint_all()  # one-touch marks (armed / not armed) on every tile follow the mode
        self._sync()

    def _sync(self, *_args) -> None:
        c, mode = self.controller, self.controller.mode
        idle = mode == IDLE
        self.start_action.setEnabled(idle and c.profile is not None)
        self.stop_action.setEnabled(mode in (BATCH, ONE_TOUCH, STARTING))
        self.retry_action.setEnabled(c.can_retry())
        again = len(self.bridge.retryable_ports())
        self.retry_action.setText(f"↻  Retry failed ({again})" if again else "↻  Retry failed")
        self.one_touch.setEnabled(idle or mode == ONE_TOUCH)
        self.one_touch.blockSignals(True)
        self.one_touch.setChecked(mode == ONE_TOUCH)
        self.one_touch.blockSignals(False)
        self.one_touch.setText("⚡ ONE-TOUCH ARMED" if mode == ONE_TOUCH else "One-touch: off")
        self.profile_button.setEnabled(idle and not self.lock.locked)
        passed, failed_n, pending = self.bridge.counts()
        self.passed_label.setText(f"✔ {passed}\npassed")
        self.failed_label.setText(f"✘ {failed_n}\nfailed")
        self.pending_label.setText(f"☁ {pending}\npending")
        self.pending_label.setVisible(self.bridge.registering or pending > 0)
        if self.batch_summary and idle:  # registrations confirmed after the batch show in its summary too
            self.batch_summary = self.summary_words()
        self._update_progress()
        self._update_banner()

    def _update_banner(self) -> None:
        c, mode = self.controller, self.controller.mode
        tiles = self.bridge.tiles
        passed, failed, _ = self.bridge.counts()
        busy = [k for k, t in tiles.items() if t.busy]
        name = self.settings.name
        problems = c.start_problems() if mode == IDLE else []
        fix = False
        if mode == ONE_TOUCH:
            allowed = [name(k) for k in self.settings.order if k in self.settings.allowed]
            text = (f"⚡ ONE-TOUCH ARMED: a board plugged into {', '.join(allowed) or 'no port'} is provisioned at "
                    f"once. Unplug it when its tile says PASS.  ({passed} passed, {failed} failed)")
            kind = "armed"
        elif mode in (BATCH, STARTING):
            text = f"Provisioning: {len(busy)} working, {passed + failed} done ({passed} passed, {failed} failed)"
            kind = "working"
        elif problems:
            text = "⛔ " + "  ".join(problems)
            fix = NO_CA in problems
            kind = "blocked"
        else:
            text, kind = self._idle_words(passed, failed)
        self._show_needs()
        if self._needs:
            names = ", ".join(name(k) for k in self._needs)
            text = f"⚠ {names} need{'s' if len(self._needs) == 1 else ''} a hand. " + text
            kind = "operator"
        if self.banner_note and mode == IDLE:
            text += f"\n{self.banner_note}"
        self.fix_button.setVisible(fix and self.settings_page.ca_setup is not None)
        if self.banner.text() != text:
            self.banner.setText(text)
        if self.banner.property("kind") != kind:
            self.banner.setProperty("kind", kind)
            self.banner.style().unpolish(self.banner)
            self.banner.style().polish(self.banner)

    def _idle_words(self, passed: int, failed: int) -> tuple[str, str]:
        """The banner between batches: what happened, and what to do with the boards now."""
        name = self.settings.name
        b = self.bridge
        red = b.red_ports()
        stopped = [name(k) for k in b.stopped if b.tiles[k].phase is Phase.STOPPED]
        again = len(b.retryable_ports())
        retry = f" Retry failed ({again}) runs {'it' if again == 1 else 'them'} again." if again else ""
        if red:
            here = [name(k) for k in b.red_ports() if b.tiles[k].present]
            gone = [name(k) for k in b.red_ports() if not b.tiles[k].present]
            text = f"Batch done: {passed} passed, {failed} FAILED."
            if here:
                text += f" Take out the red boards: {', '.join(here)}" + (f" — or reseat and press Retry failed "
                                                                          f"({again})." if again else ".")
            if gone:
                text += (f" {', '.join(gone)} failed and left the hub: plug {'it' if len(gone) == 1 else 'them'} back "
                         f"in to retry, or set {'it' if len(gone) == 1 else 'them'} aside.")
            return text, "fail"
        if stopped:
            return (f"Stopped by you: {', '.join(stopped)} {'was' if len(stopped) == 1 else 'were'} interrupted, not "
                    f"failed.{retry} ({passed} passed)", "stopped")
        if failed and again:
            return f"Batch done: {passed} passed, {failed} failed; the failed boards are back on the hub.{retry}", \
                "stopped"
        if failed:
            return f"Batch done: {passed} passed, {failed} failed (taken out). Swap the boards, then press Start " \
                   f"(F5).", "idle"
        if passed:
            return (f"Batch done: {f'all {passed}' if passed > 1 else 'the board'} passed. Swap the board"
                    f"{'s' if passed > 1 else ''}, then press Start (F5).", "pass")
        present = sum(1 for t in b.tiles.values() if t.present)
        return ((f"{present} board{'s' if present != 1 else ''} on the hub. " if present else
                 "No boards on the hub yet. ") + "Scan the lot, press Start (F5).", "idle")

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
