"""The one bridge from the engine to Qt.

The engine calls listeners on its asyncio loop; under qasync that loop *is* the Qt GUI thread, so the bridge
updates its plain-data model (ui.state) in place and emits Qt signals directly. Should an event ever arrive
from another thread, it is re-posted through a queued signal instead of touching anything.

Progress events are the only frequent ones (every block of every busy port): the bridge just stores the
latest figures per port and marks the port dirty; the tile grid repaints dirty tiles from a 15 Hz timer, so
24 busy ports cost 24 dict writes per block and at most 15 repaints per tile per second.

Secrets: the bridge knows the secrets in use (the Wi-Fi passphrase) and scrubs them, and anything that looks
like `password=…`, from every log line before anyone can display or copy it.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterable

from PySide6.QtCore import QObject, Qt, Signal

from station import events as ev
from ui.state import LogLine, Phase, StepRecord, TileState

MASK = "••••••"
_SECRETISH = re.compile(r"(?i)\b(psk|pass(?:word|phrase)?|pswd|secret|token)\b(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)")


class EngineBridge(QObject):
    tileAdded = Signal(str)  # a USB location seen for the first time this session
    tileChanged = Signal(str)  # something other than progress changed on a tile: repaint it now
    logAdded = Signal(object)  # LogLine
    eventSeen = Signal(object)  # every event except Progress and Log, after the model took it in
    batchStarted = Signal(str, str, str)  # batch id, profile, mode
    batchDone = Signal(str, int, int)  # batch id, passed, failed
    deviceDone = Signal(str, bool, str)  # port, ok, reason
    promptShown = Signal(str, str)  # port, prompt
    countsChanged = Signal()
    _incoming = Signal(object)

    def __init__(self, parent: QObject | None = None, log_lines: int = 20000):
        super().__init__(parent)
        self.tiles: dict[str, TileState] = {}
        self.log: deque[LogLine] = deque(maxlen=log_lines)
        self.secrets: set[str] = set()
        self.batch_id = ""
        self.batch_mode = ""
        self.batch_running = False
        self.results: dict[str, bool] = {}  # this batch: port -> passed (latest board on that port)
        self.stopped: set[str] = set()  # ports of this batch whose board the operator interrupted (not failed)
        self.reasons: dict[str, str] = {}  # this batch: port -> why its board failed (kept after it is pulled)
        self.board_seconds: list[float] = []  # this batch: how long each finished board took
        self.batch_ports: set[str] = set()  # the ports this batch runs (BATCH mode; one-touch adds as it goes)
        self.batch_started = 0.0  # time.monotonic()
        self.batch_devices: set[str] = set()  # device ids started in this batch
        self.passed_devices: set[str] = set()  # device ids that passed in this batch
        self.registering = False  # the profile registers passed boards with a cloud ([cloud]; set by the controller)
        self.registrations: dict[str, str] = {}  # device id -> "pending" | "delivered" | "failed"
        self.events_seen = 0
        self._dirty: set[str] = set()
        self._gui_thread = threading.get_ident()
        self._incoming.connect(self.handle, Qt.ConnectionType.QueuedConnection)

    # --- the engine's listener ------------------------------------------------------------------------------

    def __call__(self, event: ev.Event) -> None:
        if threading.get_ident() != self._gui_thread:
            self._incoming.emit(event)  # queued: handled on the GUI thread
            return
        self.handle(event)

    def handle(self, e: ev.Event) -> None:
        self.events_seen += 1
        if isinstance(e, ev.Progress):  # the hot path: no signal, no repaint; the grid's timer picks it up
            tile = self.tiles.get(e.key)
            if tile is not None:
                tile.done, tile.total, tile.rate, tile.progress_step = e.done, e.total, e.rate, e.step
                self._dirty.add(e.key)
            return
        if isinstance(e, ev.Log):
            self._log(e.key, e.level, e.message)
            return
        changed = self._apply(e)
        if changed:
            self.tileChanged.emit(changed)
        self.eventSeen.emit(e)

    def _apply(self, e: ev.Event) -> str | None:
        match e:
            case ev.PortAppeared():
                tile = self._tile(e.port.key)
                tile.url, tile.usb_id, tile.usb_description = e.port.url, e.port.usb_id, e.port.description
                if not tile.family:
                    tile.family = e.port.family
                if tile.present:
                    return None
                tile.present = True
                if tile.busy:  # a board switching mode (DFU <-> run-time) comes back at its location on its own
                    self._line(e.port.key, "info", f"board back on the bus as USB {e.port.usb_id} "
                                                    f"({e.port.description or e.port.url})")
                    return e.port.key
                if tile.finished:  # a board came back before anyone saw the tile empty
                    tile.last_result = tile.phase.name
                tile.reset_run()
                tile.family = e.port.family
                tile.phase = Phase.IDLE
                self._line(e.port.key, "info", f"board plugged in ({e.port.description or e.port.url}, "
                                                f"USB {e.port.usb_id})")
                return e.port.key
            case ev.PortGone():
                tile = self.tiles.get(e.key)
                if tile is None or not tile.present:
                    return None
                tile.present = False
                if tile.phase is Phase.PASS and tile.leaves_bus:
                    self._line(e.key, "info", "board left its bootloader and runs its firmware")
                    return e.key
                if tile.busy:  # its pipeline says whether it vanished or re-enumerates as it was asked to
                    self._line(e.key, "info", "board left the bus")
                    return e.key
                if tile.finished:
                    tile.last_result = tile.phase.name
                tile.phase = Phase.EMPTY
                self._line(e.key, "info", "board unplugged")
                return e.key
            case ev.BatchStarted():
                if e.batch_id != self.batch_id:
                    self.results.clear()
                    self.stopped.clear()
                    self.reasons.clear()
                    self.board_seconds.clear()
                    self.batch_ports.clear()
                    self.batch_devices.clear()
                    self.passed_devices.clear()
                self.batch_id, self.batch_mode, self.batch_running = e.batch_id, e.mode, True
                self.batch_started = time.monotonic()
                self.batch_ports.update(e.ports)
                for key in e.ports:
                    self.results.pop(key, None)
                    self.stopped.discard(key)
                    self.reasons.pop(key, None)
                self._line(None, "info", f"batch {e.batch_id} started ({e.mode}, {e.profile})"
                                         + (f": {len(e.ports)} boards" if e.ports else ""))
                self.batchStarted.emit(e.batch_id, e.profile, e.mode)
                self.countsChanged.emit()
                return None
            case ev.DeviceStarted():
                tile = self._tile(e.key)
                tile.reset_run()
                tile.batch_id, tile.device_id, tile.steps = self.batch_id, e.device_id, tuple(e.steps)
                tile.labels, tile.verifying, tile.leaves_bus = tuple(e.labels), tuple(e.verifying), e.leaves_bus
                tile.started = time.monotonic()
                tile.phase = Phase.WORKING
                tile.last_result = ""
                self.batch_devices.add(e.device_id)
                self.batch_ports.add(e.key)
                self.stopped.discard(e.key)
                self.reasons.pop(e.key, None)
                if self.results.pop(e.key, None) is not None:
                    self.countsChanged.emit()
                return e.key
            case ev.BoardIdentified():
                tile = self._tile(e.key)
                b = e.board
                tile.family, tile.chip, tile.mac = b.family, b.chip, b.mac
                tile.description, tile.flash_size = b.description, b.flash_size
                return e.key
            case ev.StepStarted():
                tile = self._tile(e.key)
                tile.step, tile.step_index, tile.attempt = e.step, e.index, e.attempt
                tile.clear_progress()
                tile.prompt = tile.prompt_reason = ""
                if e.attempt == 1:
                    tile.retrying = ""
                tile.phase = Phase.VERIFYING if e.step in tile.verifying else Phase.WORKING
                tile.history.append(StepRecord(e.step, e.attempt))
                self._line(e.key, "info", f"▶ {e.step}" + (f" (attempt {e.attempt})" if e.attempt > 1 else ""))
                return e.key
            case ev.StepDone():
                tile = self._tile(e.key)
                record = next((r for r in reversed(tile.history) if r.name == e.step and r.ok is None), None)
                if record is None:
                    record = StepRecord(e.step, tile.attempt)
                    tile.history.append(record)
                record.ok, record.detail, record.seconds = e.ok, self.redact(e.detail), e.seconds
                if not e.ok:
                    tile.retrying = self.redact(e.detail)
                mark = "✔" if e.ok else "✘"
                self._line(e.key, "info" if e.ok else "warning",
                           f"{mark} {e.step} ({e.seconds:.1f} s): {self.redact(e.detail)}")
                return e.key
            case ev.OperatorPrompt():
                tile = self._tile(e.key)
                tile.phase = Phase.OPERATOR
                tile.prompt, tile.prompt_reason = e.prompt, self.redact(e.reason)
                tile.clear_progress()
                self._line(e.key, "warning", f"needs a hand: {e.prompt} ({self.redact(e.reason)})")
                self.promptShown.emit(e.key, e.prompt)
                return e.key
            case ev.DeviceDone():
                tile = self._tile(e.key)
                tile.phase = Phase.PASS if e.ok else Phase.STOPPED if e.interrupted else Phase.FAIL
                tile.reason, tile.seconds = self.redact(e.reason), e.seconds
                tile.prompt = tile.prompt_reason = tile.retrying = ""
                tile.clear_progress()
                if not tile.present and e.ok:  # finished, and pulled already
                    tile.last_result = "PASS"
                self.results[e.key] = e.ok
                if e.ok:
                    self.passed_devices.add(e.device_id)
                    if e.registering and e.device_id not in self.registrations:
                        self.registrations[e.device_id] = tile.registration = "pending"
                elif e.interrupted:
                    self.stopped.add(e.key)
                else:
                    self.reasons[e.key] = tile.reason
                if not e.interrupted:
                    self.board_seconds.append(e.seconds)
                word = "PASS" if e.ok else "STOPPED" if e.interrupted else "FAIL"
                self._line(e.key, "info" if e.ok or e.interrupted else "error",
                           f"{word} in {e.seconds:.1f} s" + (f": {tile.reason}" if tile.reason
                                                                                 else ""))
                self.deviceDone.emit(e.key, e.ok, tile.reason)
                self.countsChanged.emit()
                return e.key
            case ev.RegistrationChanged():  # the cloud's answer, maybe long after the batch
                self.registrations[e.device_id] = e.state
                tile = self.tiles.get(e.key) if e.key else None
                if tile is None or tile.device_id != e.device_id:  # the key is not always known to the outbox
                    tile = next((t for t in self.tiles.values() if t.device_id == e.device_id), None)
                changed = tile is not None and tile.registration != e.state
                if tile is not None:
                    tile.registration = e.state
                level = {"delivered": "info", "failed": "error"}.get(e.state, "warning")
                self._line(tile.key if tile is not None else None, level, f"cloud: {self.redact(e.detail)}")
                self.countsChanged.emit()
                return tile.key if changed else None  # another "still pending" repaints nothing
            case ev.BatchDone():
                self.batch_running = False
                self._line(None, "info", f"batch {e.batch_id} done: {e.passed} passed, {e.failed} failed")
                self.batchDone.emit(e.batch_id, e.passed, e.failed)
                return None
        return None

    # --- model helpers ----------------------------------------------------------------------------------------

    def _tile(self, key: str) -> TileState:
        tile = self.tiles.get(key)
        if tile is None:
            tile = self.tiles[key] = TileState(key)
            self.tileAdded.emit(key)
        return tile

    def ensure_tile(self, key: str) -> TileState:
        """A remembered location (from the saved layout) gets an empty tile before any board shows up."""
        return self._tile(key)

    def take_dirty(self, keys: Iterable[str]) -> set[str]:
        """The ports among `keys` whose progress moved since they were last taken (the grid takes a slice)."""
        taken = self._dirty.intersection(keys)
        self._dirty -= taken
        return taken

    @property
    def pending_registration(self) -> int:
        """Boards of this batch whose registration waits in the outbox (the cloud has not confirmed it yet).
        A passed board is in the outbox before its DeviceDone (which says so), pending until the cloud answers;
        a board with nothing to register (no identity) is never pending."""
        return sum(1 for d in self.batch_devices if self.registrations.get(d) == "pending")

    def counts(self) -> tuple[int, int, int]:
        """Passed, failed (stopped boards are neither) and pending registration, in this batch."""
        passed = sum(1 for ok in self.results.values() if ok)
        return passed, len(self.results) - passed - len(self.stopped), self.pending_registration

    def failed_ports(self) -> list[str]:
        """Ports whose board of this batch did not pass (failed or stopped): what Retry failed runs again."""
        return [k for k, ok in self.results.items() if not ok]

    def retryable_ports(self) -> list[str]:
        """The failed and stopped boards still (or again) on the hub: the ones Retry failed will run."""
        return [k for k in self.failed_ports() if k in self.tiles and self.tiles[k].present]

    def red_ports(self) -> list[str]:
        """The tiles that show FAIL right now (a failed board pulled, or reseated, is no longer red)."""
        return [k for k in self.failed_ports() if self.tiles[k].phase is Phase.FAIL]

    def batch_progress(self, now: float | None = None) -> tuple[int, int, float, float | None]:
        """This batch: boards finished, boards in it, the fraction of all their steps done, and the seconds
        left (None until a board has finished: its time is the estimate for the ones still running)."""
        now = time.monotonic() if now is None else now
        ports = [k for k in self.batch_ports if k in self.tiles]
        finished = sum(1 for k in ports if k in self.results)
        if not ports:
            return 0, 0, 0.0, None
        fraction = sum(1.0 if k in self.results else self.tiles[k].fraction() for k in ports) / len(ports)
        typical = sum(self.board_seconds) / len(self.board_seconds) if self.board_seconds else None
        running = [self.tiles[k] for k in ports if k not in self.results and self.tiles[k].busy]
        lefts = [left for t in running if (left := _time_left(t, typical, now)) is not None]
        if running and len(lefts) < len(running):  # a board with no estimate yet: no honest ETA either
            return finished, len(ports), fraction, None
        return finished, len(ports), fraction, max(lefts, default=0.0)

    # --- log ---------------------------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, MASK)
        return _SECRETISH.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)

    def _log(self, key: str | None, level: str, message: str) -> None:
        self._line(key, level, message)

    def _line(self, key: str | None, level: str, text: str) -> None:
        line = LogLine(time.time(), key, level, self.redact(text))
        self.log.append(line)
        if key is not None:
            tile = self.tiles.get(key)
            if tile is not None:
                tile.log.append(line)
        self.logAdded.emit(line)

    def note(self, text: str, level: str = "info", key: str | None = None) -> None:
        """A line from the window itself (not the engine): settings saved, export written, demo operator."""
        self._line(key, level, text)


def _time_left(tile: TileState, typical: float | None, now: float) -> float | None:
    """A running board's time to go: from its own pace through its steps once it is a tenth of the way, and
    what a finished board of this batch took (boards of other families may be much faster: the larger wins).
    None while there is neither."""
    elapsed, done = tile.elapsed(now), tile.fraction()
    estimates = [elapsed * (1 - done) / done] if done >= 0.1 else []
    if typical is not None:
        estimates.append(typical - elapsed)
    return max(0.0, *estimates) if estimates else None

