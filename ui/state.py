"""What a tile shows, as plain data. The bridge writes it from engine events; tiles and panes only read it."""
from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field


class Phase(enum.Enum):
    EMPTY = "empty"  # a remembered USB location with no board in it
    IDLE = "idle"  # a board is there, nothing runs on it
    WORKING = "working"
    VERIFYING = "verifying"
    OPERATOR = "operator"  # a step needs a hand
    PASS = "pass"
    FAIL = "fail"
    STOPPED = "stopped"  # interrupted by the operator: not a board fault, Retry failed finishes it


BUSY = (Phase.WORKING, Phase.VERIFYING, Phase.OPERATOR)

@dataclass(frozen=True)
class LogLine:
    when: float  # time.time()
    key: str | None  # None: the station itself
    level: str
    text: str


@dataclass
class StepRecord:
    name: str
    attempt: int
    ok: bool | None = None  # None while running
    detail: str = ""
    seconds: float = 0.0


@dataclass
class TileState:
    key: str
    present: bool = False
    phase: Phase = Phase.EMPTY
    # the port, as discovery saw it
    url: str = ""
    usb_id: str = ""
    usb_description: str = ""
    # the board, once detected
    family: str = ""
    chip: str = ""
    mac: str = ""
    description: str = ""
    flash_size: int = 0
    # the run
    batch_id: str = ""
    device_id: str = ""
    steps: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # what each step is called on the tile ("Flashing"), from its board family
    verifying: tuple[str, ...] = ()  # the steps shown as verifying
    leaves_bus: bool = False  # the board resets off the bus when done (DFU): its result stays on the tile
    step: str = ""
    step_index: int = -1
    attempt: int = 1
    done: int = 0
    total: int = 0
    rate: float = 0.0
    progress_step: str = ""
    started: float | None = None  # time.monotonic() at DeviceStarted
    seconds: float | None = None  # the engine's figure at DeviceDone
    reason: str = ""
    prompt: str = ""
    prompt_reason: str = ""
    retrying: str = ""  # why the current step is on another attempt
    last_result: str = ""  # "PASS"/"FAIL" of the board that was just pulled from here
    registration: str = ""  # cloud registration of this board: "", "pending", "delivered", "failed"
    history: list[StepRecord] = field(default_factory=list)
    log: deque = field(default_factory=lambda: deque(maxlen=400))

    @property
    def step_label(self) -> str:
        if 0 <= self.step_index < len(self.labels):
            return self.labels[self.step_index]
        return self.step.replace("-", " ").capitalize()

    @property
    def busy(self) -> bool:
        return self.phase in BUSY

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.PASS, Phase.FAIL, Phase.STOPPED)

    def elapsed(self, now: float | None = None) -> float:
        if self.seconds is not None:
            return self.seconds
        if self.started is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.started

    def fraction(self) -> float:
        """How far this board is through its steps (0..1), the current transfer counted in."""
        if self.finished:
            return 1.0
        if not self.steps or self.step_index < 0:
            return 0.0
        part = self.done / self.total if self.total else 0.0
        return min(1.0, (self.step_index + part) / len(self.steps))

    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0

    def eta(self) -> float | None:
        if self.rate <= 0 or not self.total or self.done >= self.total:
            return None
        return (self.total - self.done) / self.rate

    def reset_run(self) -> None:
        """A new board (or a new attempt on this one) starts from a clean slate."""
        self.family = self.chip = self.mac = self.description = ""
        self.flash_size = 0
        self.device_id = ""
        self.steps = self.labels = self.verifying = ()
        self.leaves_bus = False
        self.step, self.step_index, self.attempt = "", -1, 1
        self.clear_progress()
        self.started = self.seconds = None
        self.reason = self.prompt = self.prompt_reason = self.retrying = ""
        self.registration = ""
        self.history = []

    def clear_progress(self) -> None:
        self.done = self.total = 0
        self.rate = 0.0
        self.progress_step = ""


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def rate_words(rate: float) -> str:
    if rate >= 1024 * 1024:
        return f"{rate / 1024 / 1024:.1f} MiB/s"
    return f"{rate / 1024:.0f} KiB/s"
