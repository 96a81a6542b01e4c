"""Settings: station CA and local cloud (not set up yet: their issues), Wi-Fi passphrase in the OS keyring,
the supervisor lock, the hub layout, the factory database and sounds. With the lock on, everything here except "Unlock" is disabled.

Secrets: the Wi-Fi passphrase field only ever writes to the keyring (in the executor: the keyring may talk
D-Bus) and is cleared right after; what is stored is never read back into the window, only whether it is
there. The supervisor passphrase is checked and hashed in the executor too (scrypt takes ~50 ms).
"""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
    QPushButton, QScrollArea, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from station.pg import KEYRING_SERVICE, PASSWORD_ENV, check_url
from station.settings import db_url, offline_boards, save_setting
from station.store import StoreError
from ui.bridge import EngineBridge
from ui.controller import StationController
from ui.lock import LockError, SupervisorLock
from ui.sound import Sounds
from ui.store import UiSettings


def keyring_status(psk_keyring: str) -> str:
    """Blocking: 'stored', 'missing', or why the keyring can't be used. Never returns the secret."""
    import keyring

    service, user = psk_keyring.split("/")
    try:
        return "stored" if keyring.get_password(service, user) else "missing"
    except Exception as exc:  # noqa: BLE001 - every backend failure means "not usable here"
        return f"unavailable: {exc}"


def keyring_store(psk_keyring: str, psk: str) -> None:
    import keyring

    service, user = psk_keyring.split("/")
    keyring.set_password(service, user, psk)


class SettingsPage(QScrollArea):
    layoutChanged = Signal()  # names, order, allow-list or columns changed
    lockChanged = Signal()
    unlockRequested = Signal()

    def __init__(self, controller: StationController, bridge: EngineBridge, settings: UiSettings,
                 lock: SupervisorLock, sounds: Sounds, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller, self.bridge, self.settings, self.lock, self.sounds = controller, bridge, settings, lock, sounds
        # the places other issues fill in: () -> (set up?, words)
        self.ca_status: Callable[[], tuple[bool, str]] = lambda: (
            False, "Not set up. The station's manufacturer CA (it signs every device's IDevID certificate) "
                   "arrives with the identity issue; until then boards get no certificate.")
        self.cloud_status: Callable[[], tuple[bool, str]] = lambda: (
            False, "Not set up. Registration with the local cloud (Mosquitto) arrives with its issue; until then "
                   "no device is registered and \"pending registration\" stays 0.")
        self.setWidgetResizable(True)
        page = QWidget()
        page.setObjectName("settingsPage")
        self.setWidget(page)
        col = QVBoxLayout(page)

        # --- lock banner
        self.lock_label = QLabel()
        self.lock_label.setObjectName("lockBanner")
        self.lock_label.setWordWrap(True)
        self.unlock_button = QPushButton("Unlock…")
        self.unlock_button.setObjectName("unlockButton")
        self.lock_now = QPushButton("Lock now")
        row = QHBoxLayout()
        row.addWidget(self.lock_label, 1)
        row.addWidget(self.unlock_button)
        row.addWidget(self.lock_now)
        col.addLayout(row)
        self.unlock_button.clicked.connect(self.unlockRequested)
        self.lock_now.clicked.connect(self.lock_station)

        self.guarded: list[QWidget] = []  # everything a locked station refuses to change

        # --- station CA / local cloud (hooks filled by ui.app.Station: set up? / make one / start / stop)
        self.ca_setup: Callable | None = None  # async (organization, passphrase) -> words
        self.grid_columns: Callable[[], int] = lambda: 4  # the columns the port grid shows now (the window's)
        self.cloud_up: Callable | None = None  # async () -> words
        self.cloud_down: Callable | None = None  # async () -> words
        self.ca_group, self.ca_label, self.ca_button = self._not_yet("Station CA", "Create station CA")
        form = QFormLayout()
        self.ca_org = QLineEdit("Provisioning Station")
        self.ca_org.setObjectName("caOrganization")
        self.ca_pass = QLineEdit()
        self.ca_repeat = QLineEdit()
        for edit, name in ((self.ca_pass, "caPassphrase"), (self.ca_repeat, "caRepeat")):
            edit.setEchoMode(QLineEdit.EchoMode.Password)
            edit.setObjectName(name)
        form.addRow("Organization:", self.ca_org)
        form.addRow("CA key passphrase:", self.ca_pass)
        form.addRow("Repeat:", self.ca_repeat)
        self.ca_form = QWidget()
        self.ca_form.setLayout(form)
        self.ca_group.layout().insertWidget(1, self.ca_form, 1)
        self.ca_button.clicked.connect(lambda: asyncio.ensure_future(self.create_ca(
            self.ca_org.text(), self.ca_pass.text(), self.ca_repeat.text())))
        self.cloud_group, self.cloud_label, self.cloud_button = self._not_yet("Local cloud", "Start local cloud")
        self.cloud_stop = QPushButton("Stop local cloud")
        self.cloud_group.layout().addWidget(self.cloud_stop)
        self.cloud_button.clicked.connect(lambda: asyncio.ensure_future(self._cloud(self.cloud_up)))
        self.cloud_stop.clicked.connect(lambda: asyncio.ensure_future(self._cloud(self.cloud_down)))
        self._ca_ready = self._cloud_running = False
        col.addWidget(self.ca_group)
        col.addWidget(self.cloud_group)

        # --- Wi-Fi passphrase
        wifi = QGroupBox("Wi-Fi passphrase (OS keyring)")
        form = QFormLayout(wifi)
        self.wifi_where = QLabel()
        self.wifi_where.setWordWrap(True)
        self.wifi_status = QLabel()
        self.wifi_status.setObjectName("wifiStatus")
        self.psk_edit = QLineEdit()
        self.psk_edit.setObjectName("pskEdit")
        self.psk_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.psk_edit.setPlaceholderText("type the network's passphrase (8–63 characters)")
        self.psk_store = QPushButton("Store in keyring")
        self.psk_store.setObjectName("pskStore")
        form.addRow("Profile:", self.wifi_where)
        form.addRow("Keyring:", self.wifi_status)
        line = QHBoxLayout()
        line.addWidget(self.psk_edit, 1)
        line.addWidget(self.psk_store)
        form.addRow("Set / replace:", line)
        self.psk_store.clicked.connect(lambda: asyncio.ensure_future(self.store_psk(self.psk_edit.text())))
        self.psk_edit.returnPressed.connect(self.psk_store.click)
        self.guarded += [self.psk_edit, self.psk_store]
        col.addWidget(wifi)

        # --- supervisor passphrase
        sup = QGroupBox("Supervisor lock")
        form = QFormLayout(sup)
        self.sup_current = QLineEdit()
        self.sup_new = QLineEdit()
        self.sup_repeat = QLineEdit()
        for edit, name in ((self.sup_current, "supCurrent"), (self.sup_new, "supNew"), (self.sup_repeat, "supRepeat")):
            edit.setEchoMode(QLineEdit.EchoMode.Password)
            edit.setObjectName(name)
        self.sup_set = QPushButton("Set passphrase")
        self.sup_remove = QPushButton("Remove lock")
        self.sup_status = QLabel()
        self.sup_status.setWordWrap(True)
        form.addRow(QLabel("With a passphrase set, the station starts locked: operators run batches and "
                           "one-touch, but cannot change profiles, ports or settings."))
        form.addRow("Current passphrase:", self.sup_current)
        form.addRow("New passphrase:", self.sup_new)
        form.addRow("Repeat:", self.sup_repeat)
        buttons = QHBoxLayout()
        buttons.addWidget(self.sup_set)
        buttons.addWidget(self.sup_remove)
        buttons.addStretch(1)
        form.addRow(buttons)
        form.addRow(self.sup_status)
        self.sup_set.clicked.connect(lambda: asyncio.ensure_future(self.set_supervisor(
            self.sup_new.text(), self.sup_repeat.text(), self.sup_current.text() or None)))
        self.sup_remove.clicked.connect(lambda: asyncio.ensure_future(self.remove_supervisor(self.sup_current.text())))
        self.guarded += [self.sup_current, self.sup_new, self.sup_repeat, self.sup_set, self.sup_remove]
        col.addWidget(sup)

        # --- ports
        ports = QGroupBox("Hub layout")
        box = QVBoxLayout(ports)
        top = QHBoxLayout()
        top.addWidget(QLabel("Columns (0 = fit the window):"))
        self.columns = QSpinBox()
        self.columns.setObjectName("columns")
        self.columns.setRange(0, 12)
        self.columns.setValue(settings.columns)
        top.addWidget(self.columns)
        self.auto_names = QPushButton("Name ports A1, A2… as the grid shows them")
        self.auto_names.setToolTip("Names follow the grid's rows and columns (or the column count above, set to "
                                   "the hub's layout), and the grid keeps that many columns")
        top.addWidget(self.auto_names)
        self.forget = QPushButton("Forget selected port")
        top.addWidget(self.forget)
        top.addStretch(1)
        box.addLayout(top)
        self.port_table = QTableWidget(0, 4)
        self.port_table.setObjectName("portTable")
        self.port_table.setHorizontalHeaderLabels(["Name", "USB location", "One-touch", "Passed / failed"])
        self.port_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.port_table.verticalHeader().setVisible(False)
        self.port_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.port_table.setMinimumHeight(180)
        box.addWidget(self.port_table)
        self.columns.valueChanged.connect(self._columns_changed)
        self.auto_names.clicked.connect(self._auto_name)
        self.forget.clicked.connect(self._forget)
        self.port_table.itemChanged.connect(self._port_edited)
        yields = QHBoxLayout()
        self.yields_label = QLabel()
        self.yields_label.setObjectName("yieldsSince")
        self.reset_yields = QPushButton("Reset the per-port counters")
        self.reset_yields.setObjectName("resetYields")
        self.reset_yields.setToolTip("Passed / failed per hub port since the last reset (a shift): a port or cable "
                                     "that fails more than the others shows here and on its tile")
        self.reset_yields.clicked.connect(self._reset_yields)
        yields.addWidget(self.yields_label, 1)
        yields.addWidget(self.reset_yields)
        box.addLayout(yields)
        self.guarded += [self.columns, self.auto_names, self.forget, self.port_table, self.reset_yields]
        col.addWidget(ports)

        # --- batches
        rules = QGroupBox("Batches")
        line = QHBoxLayout(rules)
        self.lot_required = QCheckBox("A lot is required: no batch starts without one")
        self.lot_required.setObjectName("lotRequired")
        self.lot_required.setChecked(settings.lot_required)
        self.lot_required.toggled.connect(self._lot_required_toggled)
        controller.lot_required = settings.lot_required
        line.addWidget(self.lot_required)
        self.guarded.append(self.lot_required)
        col.addWidget(rules)

        # --- the factory database (station/replica.py)
        factory = QGroupBox("Factory database: several stations, one record")
        form = QFormLayout(factory)
        self.db_url = QLineEdit()
        self.db_url.setObjectName("dbUrl")
        self.db_url.setPlaceholderText("postgresql://station@db.factory.lan/provisioning  (empty: this station's "
                                       "journal file alone)")
        self.offline_boards = QSpinBox()
        self.offline_boards.setRange(0, 10_000)
        self.offline_boards.setToolTip("How many boards this station may provision while the database is away "
                                       "(device serial numbers reserved ahead)")
        self.db_save = QPushButton("Save")
        self.db_save.clicked.connect(self.save_database)
        self.db_status = QLabel()
        self.db_status.setWordWrap(True)
        form.addRow("URL (no password):", self.db_url)
        form.addRow("Boards offline:", self.offline_boards)
        form.addRow(self.db_save)
        form.addRow(self.db_status)
        self.guarded += [self.db_url, self.offline_boards, self.db_save]
        col.addWidget(factory)

        # --- sound
        snd = QGroupBox("Sound")
        line = QHBoxLayout(snd)
        self.sound = QCheckBox(f"Sound on every pass and fail ({sounds.backend})")
        self.sound.setChecked(settings.sound)
        self.sound.toggled.connect(self._sound_toggled)
        line.addWidget(self.sound)
        self.prompt_sound = QCheckBox("Sound when a board needs a hand")
        self.prompt_sound.setObjectName("promptSound")
        self.prompt_sound.setChecked(settings.prompt_sound)
        self.prompt_sound.toggled.connect(self._prompt_sound_toggled)
        line.addWidget(self.prompt_sound)
        self.guarded += [self.sound, self.prompt_sound]
        col.addWidget(snd)
        col.addStretch(1)

        controller.profileChanged.connect(self.refresh_wifi)
        self.refresh()

    def refresh_database(self) -> None:
        data = self.controller.data_dir
        if data is None:
            return
        self.db_url.setText(db_url(data) or "")
        self.offline_boards.setValue(offline_boards(data))
        replica = self.controller.replica
        if replica is None:
            self.db_status.setText("This station keeps its record in its own journal file.")
        else:
            state = "connected" if replica.online else f"not reached ({replica.last_error})"
            self.db_status.setText(f"{replica.where}: {state}; {replica.pending()} journal entries wait to go there.")

    def save_database(self) -> bool:
        """Keep the URL and the offline allowance in the station's settings; used from the next start."""
        url = self.db_url.text().strip()
        try:
            if url:
                check_url(url)
        except StoreError as exc:
            self.db_status.setText(str(exc))
            self.bridge.note(str(exc), "error")
            return False
        save_setting(self.controller.data_dir, "db", url or None)
        save_setting(self.controller.data_dir, "offline_boards", self.offline_boards.value())
        self.db_status.setText(f"Saved; the station uses {'it' if url else 'its own journal file alone'} from its "
                               f"next start. The password comes from {PASSWORD_ENV} or the OS keyring entry "
                               f"{KEYRING_SERVICE}/<user>, never from this field.")
        return True

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        self.refresh()  # the CA may have been opened, a keyring entry stored elsewhere, …

    def _not_yet(self, title: str, button: str) -> tuple[QGroupBox, QLabel, QPushButton]:
        group = QGroupBox(title)
        row = QHBoxLayout(group)
        label = QLabel()
        label.setWordWrap(True)
        push = QPushButton(button)
        row.addWidget(label, 1)
        row.addWidget(push)
        return group, label, push

    # --- state --------------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        self.refresh_lock()
        for status, label in ((self.ca_status, self.ca_label), (self.cloud_status, self.cloud_label)):
            asyncio.ensure_future(self._show_status(status, label))
        self.refresh_ports()
        self.refresh_wifi()
        self.refresh_database()

    async def _show_status(self, status: Callable, label: QLabel) -> None:
        result = status()
        ok, words = await result if inspect.isawaitable(result) else result
        label.setText(("✔ " if ok else "⚠ NOT SET UP — ") + words)
        label.setStyleSheet("" if ok else "color:#9a6700; font-weight:bold")
        if label is self.ca_label:
            self._ca_ready = ok
        else:
            self._cloud_running = ok
        self._setup_buttons()

    def _setup_buttons(self) -> None:
        locked = self.lock.locked
        self.ca_form.setVisible(not self._ca_ready)
        self.ca_button.setVisible(not self._ca_ready)
        for widget in (self.ca_org, self.ca_pass, self.ca_repeat):
            widget.setEnabled(not locked and self.ca_setup is not None)
        self.ca_button.setEnabled(not locked and self.ca_setup is not None)
        self.ca_button.setToolTip("Locked: supervisor only" if locked else "")
        managed = self.cloud_up is None  # the demo runs its own broker
        self.cloud_button.setVisible(not managed and not self._cloud_running)
        self.cloud_stop.setVisible(not managed and self._cloud_running)
        self.cloud_button.setEnabled(not locked)
        self.cloud_stop.setEnabled(not locked)

    async def create_ca(self, organization: str, passphrase: str, repeat: str) -> bool:
        """First-run setup: the station CA (root, issuing CA, manifest signer) with encrypted key files."""
        self.ca_pass.clear()
        self.ca_repeat.clear()
        if self.lock.locked or self.ca_setup is None:
            return False
        if passphrase != repeat:
            self.ca_label.setText("⚠ The two passphrases differ; type them again.")
            return False
        try:
            words = await self.ca_setup(organization.strip(), passphrase)
        except Exception as exc:  # noqa: BLE001 - CAError & co. say what to fix
            self.ca_label.setText(f"⚠ Not created: {exc}")
            return False
        self.bridge.note(words)
        self.refresh()
        return True

    async def _cloud(self, action: Callable | None) -> None:
        if action is None or self.lock.locked:
            return
        self.cloud_label.setText("working…")
        try:
            self.bridge.note(await action())
        except Exception as exc:  # noqa: BLE001
            self.bridge.note(f"local cloud: {exc}", "error")
        await self._show_status(self.cloud_status, self.cloud_label)

    def refresh_lock(self) -> None:
        locked = self.lock.locked
        if not self.lock.is_set:
            self.lock_label.setText("No supervisor passphrase: anyone at this station can change profiles and "
                                    "settings. Set one below to lock them.")
        elif locked:
            self.lock_label.setText("■ LOCKED — operators run batches; profiles, ports and settings need the "
                                    "supervisor passphrase.")
        else:
            self.lock_label.setText("Unlocked by the supervisor. Lock again when done.")
        self.lock_label.setProperty("locked", locked)
        self.lock_label.style().unpolish(self.lock_label)
        self.lock_label.style().polish(self.lock_label)
        self.unlock_button.setVisible(locked)
        self.lock_now.setVisible(self.lock.is_set and not locked)
        for widget in self.guarded:
            widget.setEnabled(not locked)
        self.sup_current.setEnabled(not locked and self.lock.is_set)
        self.sup_remove.setEnabled(not locked and self.lock.is_set)
        self.sup_set.setText("Change passphrase" if self.lock.is_set else "Set passphrase")
        self._setup_buttons()

    def refresh_ports(self) -> None:
        self.columns.blockSignals(True)
        self.columns.setValue(self.settings.columns)  # naming the ports by the grid fixes its columns
        self.columns.blockSignals(False)
        self.port_table.blockSignals(True)
        self.port_table.setRowCount(len(self.settings.order))
        for r, key in enumerate(self.settings.order):
            name = QTableWidgetItem(self.settings.names.get(key, ""))
            name.setData(Qt.ItemDataRole.UserRole, key)
            loc = QTableWidgetItem(key)
            loc.setFlags(loc.flags() & ~Qt.ItemFlag.ItemIsEditable)
            allow = QTableWidgetItem("")
            allow.setFlags((allow.flags() | Qt.ItemFlag.ItemIsUserCheckable) & ~Qt.ItemFlag.ItemIsEditable)
            allow.setCheckState(Qt.CheckState.Checked if key in self.settings.allowed else Qt.CheckState.Unchecked)
            passed, failed = self.settings.yields.get(key, (0, 0))
            tally = QTableWidgetItem(f"{passed} / {failed}")
            tally.setFlags(tally.flags() & ~Qt.ItemFlag.ItemIsEditable)
            for c, item in enumerate((name, loc, allow, tally)):
                self.port_table.setItem(r, c, item)
        self.port_table.blockSignals(False)
        self.yields_label.setText(f"Per-port counters since {self.settings.yields_since or 'this station began'}.")

    def refresh_wifi(self) -> None:
        profile = self.controller.profile
        self.psk_edit.clear()
        if profile is None or profile.wifi is None:
            self.wifi_where.setText("The current profile writes no Wi-Fi credentials." if profile else
                                    "No profile loaded.")
            self.wifi_status.setText("")
            self._wifi_key = None
        else:
            w = profile.wifi
            where = []
            if w.psk_env:
                where.append(f"environment variable {w.psk_env} (read first)")
            if w.psk_keyring:
                where.append(f"keyring entry {w.psk_keyring}")
            self.wifi_where.setText(f"{profile.name}: network '{w.ssid}'; passphrase from " + " then ".join(where))
            self._wifi_key = w.psk_keyring
            if w.psk_keyring:
                self.wifi_status.setText("checking…")
                asyncio.ensure_future(self._check_keyring(w.psk_keyring))
            else:
                self.wifi_status.setText("This profile names no keyring entry: add psk_keyring = \"service/user\" "
                                         "under [wifi] to keep the passphrase in the OS keyring.")
        can = bool(self._wifi_key) and not self.lock.locked
        self.psk_edit.setEnabled(can)
        self.psk_store.setEnabled(can)

    async def _check_keyring(self, entry: str) -> None:
        status = await asyncio.get_running_loop().run_in_executor(None, keyring_status, entry)
        if entry != self._wifi_key:
            return
        self.wifi_status.setText({"stored": "✔ stored (hidden; it is never shown here)",
                                  "missing": "⚠ not stored yet"}.get(status, f"⚠ OS keyring {status}"))

    # --- actions ------------------------------------------------------------------------------------------------

    async def store_psk(self, psk: str) -> bool:
        from station.families.esp.payloads import PayloadError
        from station.families.esp.payloads.nvs import validate_wifi

        self.psk_edit.clear()
        profile = self.controller.profile
        if self.lock.locked or profile is None or profile.wifi is None or not profile.wifi.psk_keyring:
            return False
        try:
            validate_wifi(profile.wifi.ssid, psk)  # its message never echoes the passphrase
        except PayloadError as exc:
            self.wifi_status.setText(f"⚠ not stored: {exc}")
            return False
        entry = profile.wifi.psk_keyring
        try:
            await asyncio.get_running_loop().run_in_executor(None, keyring_store, entry, psk)
        except Exception as exc:  # noqa: BLE001 - shown to the person who tried
            self.wifi_status.setText(f"⚠ not stored: the OS keyring refused ({exc})")
            return False
        self.bridge.note(f"Wi-Fi passphrase for '{profile.wifi.ssid}' stored in keyring entry {entry}")
        await self._check_keyring(entry)
        return True

    async def set_supervisor(self, new: str, repeat: str, current: str | None) -> bool:
        for edit in (self.sup_current, self.sup_new, self.sup_repeat):
            edit.clear()
        if self.lock.locked:
            return False
        if new != repeat:
            self.sup_status.setText("⚠ The two new passphrases differ; type them again.")
            return False
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.lock.set_passphrase, new, current)
        except LockError as exc:
            self.sup_status.setText(f"⚠ {exc}")
            return False
        self.sup_status.setText("✔ Supervisor passphrase set. The station locks when you press \"Lock now\" and "
                                "at every start.")
        self.bridge.note("supervisor passphrase set")
        self.refresh_lock()
        self.lockChanged.emit()
        return True

    async def remove_supervisor(self, current: str) -> bool:
        self.sup_current.clear()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.lock.remove, current)
        except LockError as exc:
            self.sup_status.setText(f"⚠ {exc}")
            return False
        self.sup_status.setText("Lock removed: anyone can change settings.")
        self.bridge.note("supervisor lock removed")
        self.refresh_lock()
        self.lockChanged.emit()
        return True

    def lock_station(self) -> None:
        if self.lock.is_set:
            self.lock.locked = True
            self.bridge.note("station locked")
            self.refresh()
            self.lockChanged.emit()

    def _columns_changed(self, value: int) -> None:
        if self.lock.locked:
            return
        self.settings.columns = value
        self.settings.save()
        self.layoutChanged.emit()

    def _auto_name(self) -> None:
        if self.lock.locked:
            return
        self.settings.auto_name(self.settings.columns or self.grid_columns())
        self.settings.save()
        self.refresh_ports()
        self.layoutChanged.emit()

    def _forget(self) -> None:
        row = self.port_table.currentRow()
        if self.lock.locked or row < 0:
            return
        key = self.port_table.item(row, 1).text()
        tile = self.bridge.tiles.get(key)
        if tile is not None and tile.present:
            self.bridge.note(f"{self.settings.name(key)} has a board in it; unplug it before forgetting the port",
                             "warning")
            return
        self.settings.forget(key)
        self.bridge.tiles.pop(key, None)
        self.settings.save()
        self.refresh_ports()
        self.layoutChanged.emit()

    def _port_edited(self, item: QTableWidgetItem) -> None:
        if self.lock.locked:
            self.refresh_ports()
            return
        key = self.port_table.item(item.row(), 1).text() if self.port_table.item(item.row(), 1) else None
        if key is None:
            return
        if item.column() == 0:
            self.settings.rename(key, item.text())
        elif item.column() == 2:
            self.settings.set_allowed(key, item.checkState() == Qt.CheckState.Checked)
        self.settings.save()
        self.layoutChanged.emit()

    def _reset_yields(self) -> None:
        if self.lock.locked:
            return
        self.settings.reset_yields(time.strftime("%Y-%m-%d %H:%M"))
        self.settings.save()
        self.bridge.note("per-port counters reset by the supervisor")
        self.refresh_ports()
        self.layoutChanged.emit()

    def _lot_required_toggled(self, on: bool) -> None:
        if self.lock.locked:
            return
        self.settings.lot_required = self.controller.lot_required = on
        self.settings.save()
        self.layoutChanged.emit()

    def _prompt_sound_toggled(self, on: bool) -> None:
        if self.lock.locked:
            return
        self.settings.prompt_sound = self.sounds.prompts = on
        self.settings.save()

    def _sound_toggled(self, on: bool) -> None:
        if self.lock.locked:
            return
        self.settings.sound = self.sounds.enabled = on
        self.settings.save()
