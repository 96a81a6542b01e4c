"""Typed events: the only thing a front end (terminal or Qt) consumes from the engine.

Events are plain frozen dataclasses, delivered on the engine's event loop in the order they happened.
"""
from __future__ import annotations

from dataclasses import dataclass

from station.model import BoardInfo, PortInfo, PortKey


@dataclass(frozen=True)
class PortAppeared:
    port: PortInfo


@dataclass(frozen=True)
class PortGone:
    key: PortKey


@dataclass(frozen=True)
class BatchStarted:
    batch_id: str
    profile: str
    mode: str
    ports: tuple[PortKey, ...]


@dataclass(frozen=True)
class DeviceStarted:
    key: PortKey
    device_id: str
    steps: tuple[str, ...]  # the board's steps, in order (its family's, for this profile)
    labels: tuple[str, ...] = ()  # what the window shows while each step runs ("Flashing")
    verifying: tuple[str, ...] = ()  # the steps that check what was written
    leaves_bus: bool = False  # a board that passes resets off the bus by itself: its going is not a pull


@dataclass(frozen=True)
class BoardIdentified:
    key: PortKey
    board: BoardInfo


@dataclass(frozen=True)
class StepStarted:
    key: PortKey
    step: str
    index: int  # 0-based position in DeviceStarted.steps
    attempt: int = 1


@dataclass(frozen=True)
class Progress:
    key: PortKey
    step: str
    done: int  # bytes
    total: int  # bytes
    rate: float  # bytes per second since the transfer began

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0


@dataclass(frozen=True)
class StepDone:
    key: PortKey
    step: str
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class OperatorPrompt:
    """A board needs a hand; the step continues by itself once the board answers as asked (or re-enumerates)."""

    key: PortKey
    step: str
    prompt: str  # "Hold BOOT, press and release RESET, then release BOOT"
    reason: str  # what the station saw


@dataclass(frozen=True)
class DeviceDone:
    key: PortKey
    device_id: str
    ok: bool
    reason: str  # "" on pass; plain words on failure ("Board vanished during flash at 62 %")
    seconds: float
    interrupted: bool = False  # stopped by the operator (or the station closing): not a board fault
    registering: bool = False  # its registration waits in the outbox (RegistrationChanged follows)


@dataclass(frozen=True)
class RegistrationChanged:
    """A provisioned board's registration with the cloud: "pending" (will retry), "delivered" or "failed"."""

    key: PortKey | None  # None when the board was provisioned by an earlier run (picked up from the outbox)
    device_id: str
    state: str
    detail: str


@dataclass(frozen=True)
class BatchDone:
    batch_id: str
    passed: int
    failed: int


@dataclass(frozen=True)
class Log:
    key: PortKey | None  # None: the station itself
    level: str  # "debug", "info", "warning", "error"
    message: str


Event = (
    PortAppeared | PortGone | BatchStarted | DeviceStarted | BoardIdentified | StepStarted | Progress
    | StepDone | OperatorPrompt | DeviceDone | RegistrationChanged | BatchDone | Log
)
