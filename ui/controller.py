"""Runs the engine for the window: picks the profile, starts and stops batches and one-touch, keeps ports fresh.

Everything here runs on the Qt thread (which, under qasync, is the asyncio loop); slow work goes to the
loop's executor (profile loading hashes every firmware image; the keyring may talk D-Bus) and all board work
runs in the engine's own pool. The engine is made for a profile and a Wi-Fi passphrase; a new one replaces it
only while nothing runs. The controller never reads engine events: the bridge does.
"""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Awaitable, Callable, Iterable

from PySide6.QtCore import QObject, QTimer, Signal

from station import services
from station.discovery import Discovery, PortSource
from station.engine import BatchSummary, Engine
from station.journal import Journal
from station.profiles import Profile, ProfileError, WifiSpec, load_profile, resolve_psk
from station.secrets import SecretError
from station.store import StoreError
from ui.bridge import EngineBridge
from ui.store import UiSettings

IDLE, STARTING, BATCH, ONE_TOUCH = "", "starting", "batch", "one-touch"
NOTHING_TO_RETRY = "Nothing to retry: no failed or stopped board of this batch is on the hub."
NO_ALLOWED_PORT = ("One-touch needs an allowed port: right-click a tile and tick \"Allow one-touch on this port\" "
                   "(supervisor).")


def needs_ca(profile: Profile | None) -> bool:
    """The profile makes device identities ([identity]), so batches need the station CA open."""
    return bool(getattr(profile, "identity", None))


class StationController(QObject):
    modeChanged = Signal(str)
    profileChanged = Signal()
    message = Signal(str, str)  # level ("info", "warning", "error"), text
    refused = Signal(str)  # why the last Start / one-touch / Retry did not start ("" when one did)

    def __init__(self, bridge: EngineBridge, journal: Journal, sources: list[PortSource], settings: UiSettings, *,
                 operator: str, station_id: str, poll_interval: float = 0.25, idle_scan_ms: int = 1000,
                 listeners: Iterable[Callable] = (), psk_resolver: Callable[[WifiSpec], str] = resolve_psk):
        super().__init__()
        self.bridge, self.journal, self.settings = bridge, journal, settings
        self.discovery = Discovery(sources)
        self.operator, self.station_id = operator, station_id
        self.replica = None  # the factory database's link (station/replica.py), set by the station when it has one
        self.offline_boards = 10  # boards it may provision with that database away
        self.poll_interval = poll_interval
        self.listeners = list(listeners)
        self.resolve_psk = psk_resolver
        self.profile: Profile | None = None
        self.profile_path = ""
        self.profile_error = ""
        self.engine: Engine | None = None
        self.mode = IDLE
        self.lot = ""
        self.last_summary: BatchSummary | None = None
        self.lot_required = False  # a supervisor's setting: no batch starts without a lot
        self.refusal = ""  # why the last start was refused, for the banner; cleared by the next start
        self._psk_tag: str | None = None  # which passphrase the engine holds (a hash; the secret stays there)
        self._task: asyncio.Future | None = None
        self._scan_task: asyncio.Future | None = None
        self._stop: asyncio.Event | None = None
        self._batch_engine: Engine | None = None  # the engine that ran the last batch (retry-failed lives there)
        self._engine_full = False  # False: an engine for looking at ports only (its profile lacks [identity])
        # the station CA: opened on first need by `ca_provider` (the window asks for its passphrase; the demo
        # brings an ephemeral one); None when the station has none
        self.ca = None
        self.ca_provider: Callable[[], Awaitable[object | None]] | None = None
        self.ca_exists: Callable[[], bool] = lambda: self.ca_provider is not None  # a CA to open is there
        self.reprovision_default = False  # the demo re-provisions its boards on every run
        self.data_dir: Path | None = None  # where `station cloud up` keeps the broker's state
        self.broker = None  # a LocalBroker the caller runs (the demo's); None: the station's own
        self.spark = None  # the demo's spark-server registrar; None: the profile's own
        self._idle = QTimer(self)
        self._idle.setInterval(idle_scan_ms)
        self._idle.timeout.connect(self._idle_scan)
        self._idle.start()

    # --- state --------------------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.mode != IDLE

    def _set_mode(self, mode: str) -> None:
        if mode != self.mode:
            self.mode = mode
            self.modeChanged.emit(mode)

    def _say(self, level: str, text: str) -> None:
        self.bridge.note(text, level)
        self.message.emit(level, text)

    def _refuse(self, text: str) -> None:
        """A start that can't happen: said in the log, and held for the banner until the next start."""
        self.bridge.note(text, "error")
        self._set_refusal(text)

    def _set_refusal(self, text: str) -> None:
        if text != self.refusal:
            self.refusal = text
            self.refused.emit(text)

    def blockers(self) -> list[str]:
        """What stops a batch from starting right now, in the words the banner shows."""
        if self.profile is None:
            return [self.profile_error and f"Profile refused: {self.profile_error}" or
                    "No profile chosen: pick one with Profile in the toolbar."]
        out = []
        if needs_ca(self.profile) and self.ca is None and not self.ca_exists():
            out.append("This profile gives every board an identity, but the station has no CA yet.")
        if self.lot_required and not self.lot:
            out.append("Scan or type the lot first: the supervisor requires one for every batch.")
        return out

    def start_problems(self) -> list[str]:
        """The blockers, and the last refusal while it still holds (an allowed port or a board to retry
        clears theirs)."""
        refusal = self.refusal
        if (refusal == NO_ALLOWED_PORT and self.settings.allowed) or (refusal == NOTHING_TO_RETRY and
                                                                       self.can_retry()):
            refusal = ""
        blockers = self.blockers()
        return blockers + ([refusal] if refusal and refusal not in blockers else [])

    # --- profile ------------------------------------------------------------------------------------------------

    async def load_profile(self, path: str | Path) -> bool:
        """Load and check a profile in the executor (it hashes every image). False, with the reason, if refused."""
        if self.busy:
            self._say("warning", "Stop the running batch before changing the profile.")
            return False
        loop = asyncio.get_running_loop()
        try:
            profile = await loop.run_in_executor(None, load_profile, str(path))
        except ProfileError as exc:
            return await self._profile_refused(str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken file must not take the window down
            return await self._profile_refused(f"{path}: {type(exc).__name__}: {exc}")
        if self.busy:
            return False
        await self._settle_scan()
        self.profile, self.profile_path, self.profile_error = profile, str(path), ""
        self._set_refusal("")
        self._replace_engine(None, None)
        self.profileChanged.emit()
        self.bridge.note(f"profile: {profile.summary()}")
        return True

    async def _profile_refused(self, reason: str) -> bool:
        """A refused profile leaves none loaded: the old one must not go on writing boards unnoticed."""
        if self.busy:
            return False
        await self._settle_scan()
        self.profile, self.profile_path, self.profile_error = None, "", reason
        self._replace_engine(None, None)
        self._set_refusal("")
        self.profileChanged.emit()
        self._say("error", f"profile refused: {reason}")
        return False

    # --- the engine ---------------------------------------------------------------------------------------------

    def _replace_engine(self, psk: str | None, tag: str | None, full: bool = False) -> Engine | None:
        """A new engine for the profile. Not `full`: only looks at ports (no CA needed before a batch)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.profile is None:
            return None
        try:
            engine = services.build_engine(
                self.profile, self.discovery, self.journal, data=self.data_dir or Path("."), operator=self.operator,
                station_id=self.station_id, lot=self.lot, psk=psk, ca=self.ca, broker=self.broker, spark=self.spark,
                reprovision=self.reprovision_default, poll_interval=self.poll_interval, watch_only=not full,
                on_registrar_error=lambda text, level: self._say(level, text), replica=self.replica,
                offline_boards=self.offline_boards)
        except (StoreError, SecretError) as exc:  # the journal file's ledger/outbox tables can't be used
            self._say("error", str(exc))
            return None
        self.bridge.registering = engine.outbox is not None  # passed boards wait there until the cloud answers
        engine.subscribe(self.bridge)  # the one bridge
        for listener in self.listeners:
            engine.subscribe(listener)
        self.engine, self._psk_tag, self._engine_full = engine, tag, full or not needs_ca(self.profile)
        return engine

    async def open_ca(self) -> object | None:
        """The station CA, opened once (by `ca_provider`); None, with the reason said, when there is none."""
        if self.ca is None and self.ca_provider is not None:
            try:
                self.ca = await self.ca_provider()
            except Exception as exc:  # noqa: BLE001 - CAError & co. carry words for the operator
                self._say("error", f"The station CA can't be opened: {exc}")
                if self.mode == STARTING:
                    self._set_refusal(f"The station CA can't be opened: {exc}")
                return None
        return self.ca

    async def _prepare(self, reprovision: bool | None = None) -> Engine | None:
        """Read the passphrase (executor: the keyring may block), make sure the engine holds it and the CA,
        set the lot."""
        blockers = self.blockers()
        if blockers:  # the banner shows them for as long as they hold
            self._say("error", blockers[0])
            return None
        if needs_ca(self.profile) and await self.open_ca() is None:
            self._refuse(self.refusal or "The station CA could not be opened: the boards need it for their "
                                         "identities.")
            return None
        psk = None
        if self.profile.wifi is not None:
            try:
                psk = await asyncio.get_running_loop().run_in_executor(None, self.resolve_psk, self.profile.wifi)
            except ProfileError as exc:
                self._refuse(str(exc))
                return None
            self.bridge.secrets.add(psk)  # so it is scrubbed from anything shown, should a tool ever echo it
        tag = hashlib.sha256(psk.encode()).hexdigest() if psk else ""
        await self._settle_scan()
        engine = self.engine
        if engine is None or tag != self._psk_tag or not self._engine_full:
            engine = self._replace_engine(psk, tag, full=True)
            if engine is None:
                return None
        engine.lot = self.lot
        if hasattr(engine, "reprovision"):
            engine.reprovision = self.reprovision_default if reprovision is None else reprovision
        return engine

    async def _settle_scan(self) -> None:
        """Let an idle scan finish first: two scans at once would both report the same ports as new."""
        if self._scan_task is not None and not self._scan_task.done():
            await asyncio.gather(self._scan_task, return_exceptions=True)

    def _idle_scan(self) -> None:
        if self.busy or self.engine is None or (self._scan_task is not None and not self._scan_task.done()):
            return
        self._scan_task = asyncio.ensure_future(self.engine.scan())
        self._scan_task.add_done_callback(self._scanned)

    def _scanned(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.bridge.note(f"looking for boards failed: {task.exception()}", "warning")

    def scan_now(self) -> None:
        self._idle_scan()

    # --- commands -----------------------------------------------------------------------------------------------

    async def start_batch(self, only: Iterable[str] | None = None, reprovision: bool | None = None) -> bool:
        """Provision the boards on the hub now (or just `only`); False, with the reason said, if it can't.

        `reprovision`: boards that already hold a live certificate get a new one (the old is voided)."""
        if self.busy:
            return False
        self._set_refusal("")
        self._set_mode(STARTING)
        engine = await self._prepare(reprovision)
        if engine is None:
            self._set_mode(IDLE)
            return False
        self._run(engine.run_batch(only=list(only) if only is not None else None), BATCH)
        return True

    async def retry_failed(self) -> bool:
        if self.busy:
            return False
        self._set_refusal("")
        if not self.can_retry():
            self._refuse(NOTHING_TO_RETRY)
            return False
        blockers = self.blockers()
        if blockers:
            self._say("error", blockers[0])
            return False
        failed = self.bridge.failed_ports()
        missing = [k for k in failed if not (k in self.bridge.tiles and self.bridge.tiles[k].present)]
        if missing:
            names = ", ".join(self.settings.name(k) for k in missing)
            self._say("warning", f"Not on the hub, so not retried: {names}. Plug the board back in to retry it.")
        self._set_mode(STARTING)
        await self._settle_scan()
        self.engine.lot = self.lot
        self._run(self.engine.retry_failed(), BATCH)
        return True

    async def arm_one_touch(self) -> bool:
        if self.busy:
            return False
        self._set_refusal("")
        if not self.settings.allowed:
            self._refuse(NO_ALLOWED_PORT)
            return False
        self._set_mode(STARTING)
        engine = await self._prepare()
        if engine is None:
            self._set_mode(IDLE)
            return False
        self._stop = asyncio.Event()
        # the live allow-list: ticking a port while armed takes effect with the next board plugged there
        self._run(engine.run_one_touch(self._stop, self.settings.allowed), ONE_TOUCH)
        return True

    def can_retry(self) -> bool:
        return not self.busy and self.engine is not None and self.engine is self._batch_engine \
            and bool(self.bridge.retryable_ports())

    def _run(self, coro, mode: str) -> None:
        self._batch_engine = self.engine
        self._task = asyncio.ensure_future(coro)
        self._task.add_done_callback(self._finished)
        self._set_mode(mode)

    def _finished(self, task: asyncio.Future) -> None:
        self._stop = None
        if task.cancelled():
            self._say("warning", "The run was cancelled.")
        elif task.exception() is not None:
            exc = task.exception()
            self._say("error", f"The run stopped: {type(exc).__name__}: {exc}")
        else:
            summary: BatchSummary = task.result()
            self.last_summary = summary
            if not summary.passed and not summary.failed and self.mode == BATCH:
                self._say("warning", "No boards on the hub: plug boards in, then press Start.")
        self._set_mode(IDLE)

    def stop(self) -> None:
        """Stop everything now: one-touch disarms, every running board is interrupted (and recorded so)."""
        if self._stop is not None:
            self._stop.set()
        if self.engine is not None:
            self.engine.stop()

    def cancel(self, key: str) -> None:
        if self.engine is not None:
            self.engine.cancel(key)

    async def shutdown(self, timeout: float = 15.0) -> None:
        self._idle.stop()
        self.stop()
        pending = [t for t in (self._task, self._scan_task) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.ca is not None and hasattr(self.ca, "close"):
            self.ca.close()  # logs out of a PKCS#11 token, if the CA lives on one
