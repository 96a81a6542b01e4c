"""Device history: the journal as a searchable table, a detail view per device, manifest export and verify.

Journal reads and exports run in the loop's executor; the GUI thread only sorts and filters rows it already
holds. Certificate details and cloud registration come with their own issues: their places are here
(`certificate_details`, `registration_state`) and say plainly that nothing is there yet.
"""
from __future__ import annotations

import asyncio
import html
import inspect
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
    QSplitter, QTableView, QTextBrowser, QVBoxLayout, QWidget,
)

from station.journal import BatchRow, DeviceRow, Journal, StepRow
from station.store import StoreError
from ui import theme
from ui.bridge import EngineBridge
from ui.state import Phase

RESULTS = (("All results", ""), ("Pass", "pass"), ("Fail", "fail"), ("Interrupted", "interrupted"),
           ("Running", "running"))
RESULT_PHASE = {"pass": Phase.PASS, "fail": Phase.FAIL, "interrupted": Phase.OPERATOR, "running": Phase.WORKING}


def find_verifier() -> Callable | None:
    """`verify(path, trusted_roots) -> (ok, words)` over station.manifest_sign; None hides the Verify button."""
    try:
        from station.manifest_sign import verify_manifest
    except ImportError:
        return None

    def verify(path: str, roots: list) -> tuple[bool, str]:
        if not roots:
            return False, ("no trusted root: this station has no CA to check against (Settings → Station CA), "
                           "so the manifest can't be verified here")
        with open(path, encoding="utf-8", errors="replace", newline="") as lines:
            report = verify_manifest(lines, roots)
        return report.ok, report.text(Path(path).name)
    return verify


def find_signer() -> Callable | None:
    """`sign(records, ca, out, station_id) -> count` over station.manifest_sign, when it is there."""
    try:
        from station.manifest_sign import sign_manifest
    except ImportError:
        return None

    def sign(records, ca, out, station_id: str) -> int:
        key, chain = ca.manifest_signer()
        return sign_manifest(records, key, chain, out, station_id=station_id,
                             ephemeral_ca=bool(getattr(ca, "is_ephemeral", False)))
    return sign


def identity_html(device: DeviceRow) -> str | None:
    """The device's IDevID from its journal record (public facts only), or None when it has none."""
    identity = getattr(device, "identity", None) or {}
    if not identity:
        return None
    e = html.escape
    rows = [("Device serial", identity.get("subject_serial")),
            ("Certificate serial", identity.get("certificate_serial")),
            ("Key made", {"host": "on the station, written, forgotten", "board": "on the board (CSR)"}.get(
                identity.get("key_origin"), identity.get("key_origin"))),
            ("Stored in", identity.get("store"))]
    pem = identity.get("certificate")
    if pem:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes

            cert = x509.load_pem_x509_certificate(pem.encode())
            rows += [("Subject", cert.subject.rfc4514_string()), ("Issuer", cert.issuer.rfc4514_string()),
                     ("Valid", f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"),
                     ("SHA-256", cert.fingerprint(hashes.SHA256()).hex())]
        except (ValueError, ImportError) as exc:
            rows.append(("Certificate", f"unreadable ({exc})"))
    state = ""
    if identity.get("void"):
        state = "<p style='color:#cf222e'><b>VOID</b>: this certificate was revoked in the ledger (the board " \
                "failed or was re-provisioned).</p>"
    elif identity.get("ephemeral_ca"):
        state = "<p style='color:#9a6700'>Issued by an ephemeral demo CA: it does not trace to a lasting " \
                "manufacturer CA.</p>"
    return state + "<table cellspacing=0 cellpadding=2>" + "".join(
        f"<tr><td style='color:#57606a;padding-right:12px'>{e(k)}</td><td>{e(str(v))}</td></tr>"
        for k, v in rows if v) + "</table>"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def registration_states(journal: Journal) -> dict[str, str]:
    """Blocking: device id -> its cloud registration state, from the outbox in the journal file."""
    from station.cloud.outbox import Outbox

    outbox = Outbox(journal.path)
    try:
        return outbox.device_states()
    finally:
        outbox.close()


REGISTRATION_WORDS = {
    "delivered": "<p style='color:#1a7f37'><b>Registered</b>: the cloud confirmed this device.</p>",
    "pending": "<p style='color:#9a6700'><b>Pending</b>: waiting in the outbox; the station keeps retrying until "
               "the cloud confirms it.</p>",
    "failed": "<p style='color:#cf222e'><b>Refused</b> by the cloud; see the station log for its answer.</p>",
}


@dataclass(frozen=True)
class HistoryRow:
    device: DeviceRow
    batch: BatchRow | None
    registration: str = ""  # "", "pending", "delivered", "failed"

    @property
    def lot(self) -> str:
        return self.batch.lot if self.batch else ""


class DeviceTable(QAbstractTableModel):
    COLUMNS = ("Result", "Finished", "Port", "Chip", "MAC", "Lot", "Batch", "Station", "Reason", "Device")

    def __init__(self, name: Callable[[str], str]):
        super().__init__()
        self.rows: list[HistoryRow] = []
        self._name = name

    def set_rows(self, rows: list[HistoryRow]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None

    def text(self, row: HistoryRow, column: int) -> str:
        d = row.device
        port = self._name(d.port)
        return (d.result.upper(), _when(d.ended or d.started), port if port == d.port else f"{port} ({d.port})",
                d.chip, d.mac, row.lot, d.batch_id, d.station_id, d.reason, d.id)[column]

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return self.text(row, index.column())
        if role == Qt.ItemDataRole.UserRole:
            return row
        if role == Qt.ItemDataRole.UserRole + 1:  # sort key
            return (row.device.ended or row.device.started) if index.column() == 1 else self.text(row, index.column())
        if index.column() == 0 and role in (Qt.ItemDataRole.BackgroundRole, Qt.ItemDataRole.ForegroundRole):
            phase = RESULT_PHASE.get(row.device.result)
            if phase is None:
                return None
            sw = theme.SWATCHES[phase]
            return QColor(sw.fill if role == Qt.ItemDataRole.BackgroundRole else sw.text)
        return None


class DeviceFilter(QSortFilterProxyModel):
    def __init__(self):
        super().__init__()
        self.text = ""
        self.result = ""
        self.setSortRole(Qt.ItemDataRole.UserRole + 1)

    def set(self, text: str, result: str) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.10: invalidateFilter() is deprecated
            self.beginFilterChange()
            self.text, self.result = text.strip().lower(), result
            self.endFilterChange()
        else:
            self.text, self.result = text.strip().lower(), result
            self.invalidateFilter()

    def filterAcceptsRow(self, source_row: int, _parent) -> bool:  # noqa: N802
        row: HistoryRow = self.sourceModel().rows[source_row]
        d = row.device
        if self.result and d.result != self.result:
            return False
        if not self.text:
            return True
        bare = self.text.replace(":", "").replace("-", "")
        identity = getattr(d, "identity", None) or {}
        fields = (d.id, d.batch_id, row.lot, d.port, d.station_id, str(identity.get("subject_serial", "")),
                  str(identity.get("certificate_serial", "")))
        return any(self.text in f.lower() for f in fields) or (bool(bare) and bare in d.mac.replace(":", "").lower())


class HistoryPage(QWidget):
    loaded = Signal(int)  # rows now in the table
    detailShown = Signal(str)  # device id
    exported = Signal(str, int)  # path, records

    def __init__(self, journal: Journal, bridge: EngineBridge, name: Callable[[str], str],
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.journal = journal
        self.bridge = bridge
        self.verifier: Callable | None = find_verifier()
        self.signer: Callable | None = find_signer()
        self.ca_provider: Callable | None = None  # async () -> StationCA | None (the controller's open_ca)
        self.roots_provider: Callable[[], list] = list  # () -> trusted root certificates for Verify
        self.station_id = ""
        # the places other issues fill in: return HTML, or None for "not there yet"
        self.certificate_details: Callable[[DeviceRow], str | None] = identity_html
        self.registration_state: Callable[[HistoryRow], str | None] = \
            lambda row: REGISTRATION_WORDS.get(row.registration)
        self.detail_html = ""
        self._loading = asyncio.Lock()  # one reload at a time; a second waits and reads afresh
        self._stale = True

        self.search = QLineEdit()
        self.search.setObjectName("historySearch")
        self.search.setPlaceholderText("Search device id, MAC, batch or lot…")
        self.search.setClearButtonEnabled(True)
        self.result = QComboBox()
        self.result.setObjectName("historyResult")
        for label, value in RESULTS:
            self.result.addItem(label, value)
        self.scope = QComboBox()
        self.scope.setObjectName("exportScope")
        self.scope.addItem("Export: every batch", "")
        self.refresh_button = QPushButton("Refresh")
        self.export_signed = QPushButton("Export signed manifest…")
        self.export_signed.setObjectName("exportSigned")
        self.export_signed.setToolTip("JSON lines, each record signed by the station CA's manifest key and chained "
                                      "to the one before; a signed batch head closes the file")
        self.export_signed.setVisible(self.signer is not None)
        self.export_jsonl = QPushButton("Export JSON lines…")
        self.export_csv = QPushButton("Export CSV…")
        self.verify_button = QPushButton("Verify manifest…")
        self.verify_button.setObjectName("verifyManifest")
        self.verify_button.setVisible(self.verifier is not None)
        self.count = QLabel("")

        self.model = DeviceTable(name)
        self.proxy = DeviceFilter()
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setObjectName("historyTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.detail = QTextBrowser()
        self.detail.setObjectName("deviceDetail")
        self.detail.setOpenExternalLinks(False)
        self.detail.setHtml("<p style='color:#57606a'>Pick a device to see its steps.</p>")

        bar = QHBoxLayout()
        bar.addWidget(self.search, 2)
        bar.addWidget(self.result)
        bar.addWidget(self.refresh_button)
        bar.addStretch(1)
        bar.addWidget(self.scope)
        bar.addWidget(self.export_signed)
        bar.addWidget(self.export_jsonl)
        bar.addWidget(self.export_csv)
        bar.addWidget(self.verify_button)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.detail)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        box = QVBoxLayout(self)
        box.addLayout(bar)
        box.addWidget(split, 1)
        box.addWidget(self.count)

        self.search.textChanged.connect(self._filter)
        self.result.currentIndexChanged.connect(self._filter)
        self.refresh_button.clicked.connect(lambda: asyncio.ensure_future(self.reload()))
        self.export_signed.clicked.connect(lambda: self._export_dialog("signed"))
        self.export_jsonl.clicked.connect(lambda: self._export_dialog("jsonl"))
        self.export_csv.clicked.connect(lambda: self._export_dialog("csv"))
        self.verify_button.clicked.connect(self._verify_dialog)
        self.table.selectionModel().currentRowChanged.connect(self._row_changed)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(600)
        self._debounce.timeout.connect(self._reload_if_visible)
        bridge.deviceDone.connect(self._journal_changed)
        bridge.batchDone.connect(self._journal_changed)

    # --- loading ------------------------------------------------------------------------------------------------

    def _journal_changed(self, *_args) -> None:
        self._stale = True
        self._debounce.start()

    def _reload_if_visible(self) -> None:
        if self.isVisible():
            asyncio.ensure_future(self.reload())

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        if self._stale:
            asyncio.ensure_future(self.reload())

    def _read(self) -> tuple[list[HistoryRow], list[BatchRow]]:
        batches = self.journal.batches()
        by_id = {b.id: b for b in batches}
        try:
            states = registration_states(self.journal)
        except Exception:  # noqa: BLE001 - the table still shows without registration states
            states = {}
        return [HistoryRow(d, by_id.get(d.batch_id), states.get(d.id, "")) for d in self.journal.devices()], batches

    async def reload(self) -> int:
        """Read the journal (in the executor) into the table; returns the number of devices."""
        async with self._loading:
            self._stale = False
            try:
                rows, batches = await asyncio.get_running_loop().run_in_executor(None, self._read)
            except StoreError as exc:  # the factory database away: the table keeps what it showed
                self._stale = True
                self.bridge.note(f"history: {exc}", "warning")
                return self.model.rowCount()
            current = self.table.currentIndex()
            keep = current.data(Qt.ItemDataRole.UserRole).device.id if current.isValid() else None
            self.model.set_rows(rows)
            chosen = self.scope.currentData()
            self.scope.blockSignals(True)
            self.scope.clear()
            self.scope.addItem("Export: every batch", "")
            for b in reversed(batches):
                self.scope.addItem(f"Export: batch {b.id}" + (f" (lot {b.lot})" if b.lot else ""), b.id)
            self.scope.setCurrentIndex(max(0, self.scope.findData(chosen)))
            self.scope.blockSignals(False)
            if keep is not None:
                self.select_device(keep)
            self._update_count()
            self.loaded.emit(len(rows))
            return len(rows)

    def _filter(self) -> None:
        self.proxy.set(self.search.text(), self.result.currentData())
        self._update_count()

    def _update_count(self) -> None:
        shown, total = self.proxy.rowCount(), self.model.rowCount()
        self.count.setText(f"{shown} of {total} devices" if shown != total else f"{total} devices")

    def visible_rows(self) -> list[HistoryRow]:
        return [self.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(self.proxy.rowCount())]

    # --- detail -------------------------------------------------------------------------------------------------

    def select_device(self, device_id: str) -> bool:
        for r in range(self.proxy.rowCount()):
            index = self.proxy.index(r, 0)
            if index.data(Qt.ItemDataRole.UserRole).device.id == device_id:
                self.table.setCurrentIndex(index)
                return True
        return False

    def _row_changed(self, current, _previous) -> None:
        if current.isValid():
            asyncio.ensure_future(self.show_detail(current.data(Qt.ItemDataRole.UserRole)))

    async def show_detail(self, row: HistoryRow) -> None:
        steps = await asyncio.get_running_loop().run_in_executor(None, self.journal.steps, row.device.id)
        self.detail_html = self.render_detail(row, steps)
        self.detail.setHtml(self.detail_html)
        self.detailShown.emit(row.device.id)

    def render_detail(self, row: HistoryRow, steps: list[StepRow]) -> str:
        d, b = row.device, row.batch
        e = html.escape
        sw = theme.SWATCHES.get(RESULT_PHASE.get(d.result, Phase.IDLE))
        out = [f"<h2 style='margin:0'><span style='background:{sw.fill};color:{sw.text};padding:2px 10px'>"
               f"{e(d.result.upper())}</span> &nbsp;{e(d.chip or 'board not identified')}</h2>"]
        if d.reason:
            out.append(f"<p><b>Reason:</b> {e(d.reason)}</p>")
        board = d.board or {}
        facts = [("Device id", d.id), ("MAC", d.mac), ("Chip", board.get("description") or d.chip),
                 ("Flash", f"{board['flash_size'] // (1024 * 1024)} MB" if board.get("flash_size") else ""),
                 ("Features", ", ".join(board.get("features", []))), ("USB port", f"{d.port} ({d.usb_id})"),
                 ("Started", _when(d.started)), ("Finished", _when(d.ended))]
        if b is not None:
            facts += [("Batch", b.id), ("Lot", b.lot), ("Profile", f"{b.profile} (sha256 {b.profile_sha256[:12]}…)"),
                      ("Operator", b.operator), ("Station", b.station_id), ("Mode", b.mode)]
        out.append("<table cellspacing=0 cellpadding=2>" + "".join(
            f"<tr><td style='color:#57606a;padding-right:12px'>{e(k)}</td><td>{e(str(v))}</td></tr>"
            for k, v in facts if v) + "</table>")
        out.append("<h3>Steps</h3><table cellspacing=0 cellpadding=3 border=0>"
                   "<tr style='color:#57606a'><td>at</td><td>step</td><td>took</td><td>result</td><td>detail</td></tr>")
        t0 = steps[0].started if steps else d.started
        for s in steps:
            took = f"{s.ended - s.started:.1f} s" if s.ended else "…"
            colour = {"pass": "#1a7f37", "fail": "#cf222e"}.get(s.result, "#9a6700")
            attempt = f" (try {s.attempt})" if s.attempt > 1 else ""
            out.append(f"<tr><td>+{s.started - t0:.1f} s</td><td><b>{e(s.name)}</b>{attempt}</td><td>{took}</td>"
                       f"<td style='color:{colour}'><b>{e(s.result)}</b></td><td>{e(self.bridge.redact(s.detail))}"
                       f"</td></tr>")
        if not steps:
            out.append("<tr><td colspan=5>no steps recorded</td></tr>")
        out.append("</table>")
        if d.images:
            out.append("<h3>Images written</h3><table cellspacing=0 cellpadding=2>")
            for i in d.images:
                digest = i.get("sha256") or "holds a secret: hash not recorded"
                out.append(f"<tr><td>{e(i.get('name', ''))}</td><td>@{i.get('offset', 0):#x}</td>"
                           f"<td>{i.get('size', 0)} B</td><td style='font-family:monospace'>{e(digest)}</td></tr>")
            out.append("</table>")
        cert = self.certificate_details(d)
        out.append("<h3>Certificate (IDevID)</h3>" + (cert if cert is not None else
                   "<p style='color:#57606a'>Not issued: device identities and the station CA arrive with the "
                   "identity issue. This board has no certificate yet.</p>"))
        reg = self.registration_state(row)
        out.append("<h3>Cloud registration</h3>" + (reg if reg is not None else
                   "<p style='color:#57606a'>None: this device's profile registers it nowhere (no [cloud]), or it "
                   "did not pass.</p>"))
        return "".join(out)

    # --- export and verify --------------------------------------------------------------------------------------

    async def export_to(self, path: str | Path, fmt: str = "jsonl", batch_id: str | None = None) -> int:
        """Write the manifest in the executor: "signed" (JWS lines + batch head, station CA), "jsonl" or "csv".
        A failed export leaves no half file behind."""
        from station.manifest import device_records, write_csv, write_jsonl

        path = Path(path)
        if fmt == "signed":
            ca = await self.ca_provider() if self.ca_provider is not None else None
            if ca is None or self.signer is None:
                self.bridge.note("signed export needs the station CA (Settings → Station CA)", "error")
                raise RuntimeError("no station CA to sign the manifest with")
            station_id = self.station_id

            def write(records, out) -> int:
                return self.signer(records, ca, out, station_id)
        else:
            write = write_jsonl if fmt == "jsonl" else write_csv

        def records():
            if "registration" in inspect.signature(device_records).parameters:  # manifests carry it since 484ff85
                states = registration_states(self.journal)
                return device_records(self.journal, batch_id or None, registration=states.get)
            return device_records(self.journal, batch_id or None)

        def work() -> int:
            tmp = path.with_name(path.name + ".part")
            try:
                with open(tmp, "w", newline="", encoding="utf-8") as out:
                    count = write(records(), out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return count

        try:
            count = await asyncio.get_running_loop().run_in_executor(None, work)
        except (OSError, ValueError) as exc:
            self.bridge.note(f"export to {path} failed: {getattr(exc, 'strerror', None) or exc}", "error")
            raise
        kind = {"signed": "signed manifest", "jsonl": "JSON lines", "csv": "CSV"}[fmt]
        self.bridge.note(f"exported {count} device records to {path} ({kind})")
        self.exported.emit(str(path), count)
        return count

    def _export_dialog(self, fmt: str) -> None:
        suffix = "csv" if fmt == "csv" else "jsonl"
        batch = self.scope.currentData() or None
        default = f"manifest-{batch or time.strftime('%Y%m%d-%H%M%S')}.{suffix}"
        path, _ = QFileDialog.getSaveFileName(self, "Export device manifest", default,
                                              "CSV (*.csv)" if fmt == "csv" else "JSON lines (*.jsonl)")
        if path:
            asyncio.ensure_future(self.export_to(path, fmt, batch))

    async def verify_file(self, path: str | Path) -> tuple[bool, str]:
        """Check a signed manifest against this station's root CA (in the executor)."""
        if self.verifier is None:
            return False, "No manifest verifier in this version."
        loop = asyncio.get_running_loop()
        try:
            roots = await loop.run_in_executor(None, self.roots_provider)
            ok, text = await loop.run_in_executor(None, self.verifier, str(path), roots)
        except Exception as exc:  # noqa: BLE001 - a file that can't be read is a verdict too
            ok, text = False, f"{Path(path).name}: NOT verified: {exc}"
        self.bridge.note(text.splitlines()[0] if text else "", "info" if ok else "error")
        return ok, text

    def _verify_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Verify a device manifest", "", "Manifests (*.jsonl *.csv)")
        if path:
            async def go():
                ok, text = await self.verify_file(path)
                colour = "#1a7f37" if ok else "#cf222e"
                self.detail.setHtml(f"<h2 style='color:{colour}'>{'✔ VERIFIED' if ok else '✘ NOT VERIFIED'}</h2>"
                                    f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>")
            asyncio.ensure_future(go())
