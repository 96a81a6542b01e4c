"""Starting the window: one QApplication, the engine's asyncio loop hosted in Qt through qasync.

Python 3.11: the classic qasync pattern (`QEventLoop(app)`, `run_until_complete`). The loop's default executor
(journal reads, profile loading, keyring, scrypt, exports) is a thread pool of its own; board work runs in
each engine's pool. The window's close ends the run: the station stops the engine, waits for every port to
record how it ended, then the loop closes without waiting on stray executor threads (qasync #115).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Sequence

T0 = time.monotonic()

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtGui import QIcon  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from station import services  # noqa: E402
from station.cloud.broker import station_broker  # noqa: E402
from station.discovery import PortSource  # noqa: E402
from station.journal import Journal  # noqa: E402
from station.profile_library import profile_dirs as default_profile_dirs  # noqa: E402
from station.profiles import WifiSpec, resolve_psk  # noqa: E402
from station.store import StoreError  # noqa: E402
from station.settings import data_dir as default_data_dir  # noqa: E402
from station.settings import operator as operator_name  # noqa: E402
from station.settings import db_url, offline_boards  # noqa: E402
from station.settings import station_id as make_station_id  # noqa: E402
from ui import theme  # noqa: E402
from ui.bridge import EngineBridge  # noqa: E402
from ui.controller import StationController  # noqa: E402
from ui.lock import SupervisorLock  # noqa: E402
from ui.main_window import MainWindow  # noqa: E402
from ui.store import UiSettings  # noqa: E402

UI_THREADS = 16  # journal reads, profile loads, keyring, exports: never more than a few at once
# With 16+ port threads running Python (esptool, payload builders, the journal), the GUI thread waits for the
# GIL behind them; a 2 ms switch interval (default 5 ms) halves its longest waits (tests/bench/bench_ui.py:
# longest stall 68-73 ms -> ~42 ms, p99 ~21 -> ~12 ms, batch time unchanged).
GIL_SWITCH_INTERVAL_S = 0.002


def ca_words(ca) -> str:
    """A CA as a person checks it: the issuing certificate's subject and SHA-256 fingerprint (start of)."""
    from station.identity.ca import subject_text

    return f"{subject_text(ca.issuing.subject)} · SHA-256 {ca.issuing_sha256[:16]}…"


class Station:
    """Everything behind one window: journal, settings, lock, the bridge, the controller and the window."""

    def __init__(self, data: Path, sources: list[PortSource], *, profile_dirs: Sequence[Path] | None = None,
                 profile: str | Path | None = None, operator: str | None = None, station_id: str | None = None,
                 listeners: Iterable[Callable] = (), poll_interval: float = 0.25, idle_scan_ms: int = 1000,
                 title_suffix: str = "", psk_resolver: Callable[[WifiSpec], str] = resolve_psk,
                 db: str | None = None):
        """`db`: the factory database's URL (station/replica.py): the journal's rows go there too, the history
        shows every station's devices, and {counter} numbers come from its shared sequence."""
        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        self.profile_dirs = default_profile_dirs() if profile_dirs is None else list(profile_dirs)
        self.initial_profile = str(profile) if profile else None
        self.journal = Journal(self.data / services.JOURNAL_FILE)  # StoreError: run() says it in one line
        sid = station_id or make_station_id(self.data)
        self.replica = services.open_replica(self.data, db, sid) if db else None
        self.record = services.open_record(self.data, db) if db else self.journal  # what the history lists
        self.settings = UiSettings(self.data)
        self.lock = SupervisorLock(self.data)
        self.bridge = EngineBridge()
        self.controller = StationController(
            self.bridge, self.journal, sources, self.settings, operator=operator_name(operator),
            station_id=sid, poll_interval=poll_interval,
            idle_scan_ms=idle_scan_ms, listeners=listeners, psk_resolver=psk_resolver)
        self.controller.replica, self.controller.offline_boards = self.replica, offline_boards(self.data)
        self.window = MainWindow(self.controller, self.bridge, self.record, self.settings, self.lock,
                                 self.profile_dirs, title_suffix=title_suffix)
        self.exit_code = 0
        self._closed = False
        self.controller.ca_provider = self.open_station_ca
        self.controller.data_dir = self.data
        # a CA comes from <data>/ca, or from whatever brings its own (the demo's ephemeral one)
        self.controller.ca_exists = lambda: (self.controller.ca_provider != self.open_station_ca
                                             or self.ca_on_disk())
        self.window.settings_page.grid_columns = self.window.grid.columns
        self.window.history.ca_provider = self.controller.open_ca
        self.window.history.roots_provider = self.trusted_roots
        self.window.history.station_id = self.controller.station_id
        self.window.settings_page.ca_status = self.ca_status
        self.window.settings_page.cloud_status = self.cloud_status
        self.window.settings_page.ca_setup = self.create_ca
        self.window.settings_page.cloud_up = self.cloud_up
        self.window.settings_page.cloud_down = self.cloud_down

    # --- the station CA (station.identity), opened when a batch or a signed export first needs it ---------

    async def open_station_ca(self):
        """Open <data>/ca with its passphrase from STATION_CA_PASSPHRASE or the OS keyring; else ask for it."""
        import qasync
        from PySide6.QtWidgets import QInputDialog, QLineEdit

        from station.identity import SecretError
        from station.identity.keys import SecretSource, ca_passphrase_source, pkcs11_pin_source

        loop = asyncio.get_running_loop()
        try:  # never a terminal prompt: the window has no terminal to type into
            return await loop.run_in_executor(None, lambda: services.open_station_ca(
                self.data, ca_passphrase_source(interactive=False), pin_source=pkcs11_pin_source(interactive=False)))
        except SecretError:
            pass  # not in the environment or keyring: ask the person at the station (never a terminal prompt)
        text, ok = await qasync.asyncWrap(lambda: QInputDialog.getText(
            self.window, "Station CA", "CA key passphrase or token PIN (to sign device certificates and manifests):",
            QLineEdit.EchoMode.Password))
        if not ok or not text:
            raise SecretError("no CA key passphrase given")
        source = SecretSource.fixed(text, "CA key passphrase", "typed in the window")
        return await loop.run_in_executor(None, lambda: services.open_station_ca(self.data, source, source))

    def ca_on_disk(self) -> bool:
        from station.identity.ca import ca_dir

        return (ca_dir(self.data) / "root.crt").is_file()

    def trusted_roots(self) -> list:
        """Roots a manifest must chain to: the open CA's, else the one in <data>/ca (public, no passphrase)."""
        ca = self.controller.ca
        if ca is not None:
            return [ca.root]
        from station.identity.ca import ca_dir

        root = ca_dir(self.data) / "root.crt"
        if not root.is_file():
            return []
        from cryptography import x509

        return x509.load_pem_x509_certificates(root.read_bytes())

    async def create_ca(self, organization: str, passphrase: str) -> str:
        """`station ca init` from the window: keys in encrypted files under <data>/ca, opened for this run."""
        from station.identity.ca import StationCA
        from station.identity.keys import Secret, SecretSource, check_new_passphrase

        check_new_passphrase(Secret(passphrase, "typed in the window"))
        source = SecretSource.fixed(passphrase, "CA key passphrase", "typed in the window")
        ca = await asyncio.get_running_loop().run_in_executor(
            None, lambda: StationCA.init(self.data, organization=organization or "Provisioning Station",
                                         passphrase_source=source))
        self.controller.ca = ca
        return f"station CA created in {self.data / 'ca'}: {ca_words(ca)}. Keep its passphrase safe, and a backup."

    async def cloud_up(self) -> str:
        """`station cloud up` from the window (the broker's certificate comes from the station CA)."""
        ca = await self.controller.open_ca()
        if ca is None:
            raise RuntimeError("the local cloud needs the station CA: create or open it first")
        state = await asyncio.get_running_loop().run_in_executor(None, lambda: station_broker(self.data, ca).up())
        return "local cloud: " + "; ".join(state.lines())

    async def cloud_down(self) -> str:
        stopped = await asyncio.get_running_loop().run_in_executor(None, lambda: station_broker(self.data).down())
        return "local cloud stopped" if stopped else "local cloud was not running"

    async def cloud_status(self) -> tuple[bool, str]:
        """The local broker (the demo's, else the station's own `station cloud up`) and the outbox."""
        def look() -> tuple[bool, str]:
            broker = self.controller.broker
            if broker is None:
                broker = station_broker(self.data)
            state = broker.status()
            lines = list(state.lines()) if hasattr(state, "lines") else [repr(state)]
            try:
                from station.cloud.outbox import Outbox

                outbox = Outbox(self.journal.path)
                try:
                    counts = outbox.counts()
                finally:
                    outbox.close()
                lines.append("outbox: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
            except Exception as exc:  # noqa: BLE001
                lines.append(f"outbox unreadable: {exc}")
            if not state.running:
                lines.insert(0, "Not running: start it with `station cloud up` (registrations wait in the outbox "
                                "meanwhile).")
            return bool(state.running), "\n".join(lines)

        try:
            return await asyncio.get_running_loop().run_in_executor(None, look)
        except Exception as exc:  # noqa: BLE001
            return False, f"Not set up ({exc})."

    async def ca_status(self) -> tuple[bool, str]:
        ca = self.controller.ca
        if ca is not None and getattr(ca, "is_ephemeral", False):
            return True, (f"Ephemeral demo CA, in memory only: {ca_words(ca)}. Its certificates do not trace to a "
                          f"lasting manufacturer CA.")
        from station.identity.ca import describe

        try:
            infos = await asyncio.get_running_loop().run_in_executor(None, describe, self.data)
        except Exception as exc:  # noqa: BLE001 - no CA, or an unreadable one: both are "not set up" here
            return False, f"Not set up ({exc}). Run `station ca init` (or `station ca import`) on this station."
        if not infos:
            return False, "Not set up. Run `station ca init` (or `station ca import`) on this station."
        lines = [f"{i.role}: {i.subject} · SHA-256 {i.sha256[:16]}… · valid to {i.not_after:%Y-%m-%d} · key "
                 f"{i.key_location}" for i in infos]
        return True, "\n".join(lines)

    async def start(self) -> None:
        """After the window shows: note interrupted boards, load the profile, look at the hub."""
        loop = asyncio.get_running_loop()
        if self.settings.load_error:
            self.bridge.note(self.settings.load_error, "warning")
        interrupted = await loop.run_in_executor(None, services.recover, self.journal)  # voids their certificates
        for dev in interrupted:
            self.bridge.note(f"{self.settings.name(dev.port)}: the board there (batch {dev.batch_id}, "
                             f"{dev.chip or 'chip unknown'}) was interrupted last time; provision it again.",
                             "warning", None)
        path = self.initial_profile or self.settings.profile  # first run: none, the person chooses
        if path and not Path(path).exists():
            self.bridge.note(f"the last profile, {path}, is gone: pick one", "warning")
            path = None
        if path:
            if await self.controller.load_profile(path):
                self.settings.profile = path
                self.settings.save()
        else:
            self.window.show_profile_state()
        self.window.settings_page.refresh()
        self.controller.scan_now()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.controller.shutdown()
        self.journal.close()
        if self.record is not self.journal:
            self.record.close()
        if self.replica is not None:
            self.replica.close()


def make_app() -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
    app.setApplicationName("Provisioning station")
    app.setOrganizationName("provisioning-station")
    app.setDesktopFileName("provisioning-station")  # resources/desktop/provisioning-station.desktop
    app.setWindowIcon(QIcon(str(theme.RESOURCES / "icons" / "provisioning-station.svg")))
    app.setStyleSheet(theme.style_sheet())
    app.setQuitOnLastWindowClosed(False)  # the window's close ends the run, after the engine has stopped
    return app


def run(make_station: Callable[[], Station], after_start: Callable[[Station], Awaitable] | None = None) -> int:
    """Build the window, run the Qt + asyncio loop until it is closed, and return the exit code."""
    import qasync

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    app = make_app()
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    executor = ThreadPoolExecutor(max_workers=UI_THREADS, thread_name_prefix="ui-io")
    loop.set_default_executor(executor)
    tasks: list[asyncio.Future] = []

    async def main() -> int:
        try:
            station = make_station()
        except StoreError as exc:  # the journal file can't be used: say why (one line), no window
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        closed = asyncio.Event()
        station.window.closed.connect(closed.set)

        def interrupt(*_args) -> None:  # Ctrl-C in the terminal closes the window, no questions
            station.window.ask = False
            station.window.close()
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        station.window.show()
        await station.start()
        if after_start is not None:
            tasks.append(asyncio.ensure_future(after_start(station)))
        await closed.wait()
        for task in tasks:
            task.cancel()
        await station.close()
        return station.exit_code

    wake = QTimer()  # lets Python run its signal handlers while Qt sits in C++
    wake.timeout.connect(lambda: None)
    wake.start(250)
    try:
        return loop.run_until_complete(main())
    finally:
        wake.stop()
        executor.shutdown(wait=False, cancel_futures=True)
        loop.set_default_executor(None)  # close() would wait for stray executor threads otherwise
        loop.close()
        asyncio.set_event_loop(None)


def main(argv: list[str] | None = None) -> int:
    """`python -m ui`: the station's window over the real USB hub (and emulated boards with --sim-registry)."""
    parser = argparse.ArgumentParser(prog="station gui", description="Provisioning station window")
    parser.add_argument("--data-dir", default=os.environ.get("STATION_DATA_DIR"),
                        help="Where the journal and the window's settings live (default: the user data dir)")
    parser.add_argument("--profile", help="Profile to start with, a name or a path (default: the last one used)")
    parser.add_argument("--sim-registry", default=os.environ.get("STATION_SIM_REGISTRY"),
                        help="Also find emulated boards served by `station sim esp|dfu --registry DIR`")
    parser.add_argument("--operator", help="Who runs the batches (default: $STATION_OPERATOR or login)")
    args = parser.parse_args(argv)

    from station.discovery import hub_sources
    from station.profile_library import find_profile
    from station.profiles import ProfileError

    try:
        profile = find_profile(args.profile) if args.profile else None
    except ProfileError as exc:
        parser.error(str(exc))
    data = default_data_dir(args.data_dir)
    sources = hub_sources(Path(args.sim_registry) if args.sim_registry else None)
    return run(lambda: Station(data, sources, profile=profile, operator=args.operator, db=db_url(data)))


if __name__ == "__main__":
    sys.exit(main())
