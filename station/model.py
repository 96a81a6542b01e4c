"""The nouns of the station: ports, boards, steps and results.

A port is keyed by its physical USB location (``1-2.3``), never by tty name or USB serial:
CH340 bridges have no serial and tty names move when a board re-enumerates.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

from station.text import one_line

PortKey = str  # physical USB location, e.g. "1-2.3" (real hub) or "sim-1.3" (emulated hub)


@dataclass(frozen=True)
class PortInfo:
    """A USB port as discovery sees it, before anyone has talked to the board."""

    key: PortKey
    url: str  # what pyserial opens: /dev/ttyUSB0, socket://127.0.0.1:4001, …
    family: str  # board family the VID:PID belongs to ("esp")
    vid: int | None = None
    pid: int | None = None
    serial: str | None = None
    description: str = ""

    @property
    def usb_id(self) -> str:
        if self.vid is None or self.pid is None:
            return "?"
        return f"{self.vid:04x}:{self.pid:04x}"


@dataclass
class BoardInfo:
    """What the station learnt by talking to the board."""

    family: str
    chip: str = ""  # esptool chip name: "ESP32", "ESP32-C3", "ESP8266"
    mac: str = ""
    flash_size: int = 0
    description: str = ""  # e.g. "ESP32-D0WD-V3 (revision v3.0)"
    features: list[str] = field(default_factory=list)


class Mode(enum.Enum):
    BATCH = "batch"  # provision the boards present at start, finish when all are done
    ONE_TOUCH = "one-touch"  # provision every allowed board that appears, until stopped


class Result(enum.Enum):
    RUNNING = "running"
    PASS = "pass"
    FAIL = "fail"
    INTERRUPTED = "interrupted"  # the station stopped (crash, power, Stop) before the board finished


class StepFailed(Exception):
    """A step failed for a reason an operator can act on. The reason often carries what a board said, so it is
    made one safe line here (station.text), and is shown as-is from then on.

    `operator_prompt` says what a person must do with the board (press a button, change a mode). A prompt comes
    with `probe`: a blocking check, run in the port's worker about every second while the prompt shows, that
    asks the board (without disturbing what the person is doing) whether it is now as the prompt asks. The
    engine runs the step again once the probe says yes, or once the board re-enumerates at the same USB location;
    many boards (a CP2102 or CH340 bridge) never re-enumerate when their buttons are pressed.
    """

    def __init__(self, reason: str, retryable: bool = False, operator_prompt: str | None = None,
                 probe: Callable[[], bool] | None = None):
        if operator_prompt and probe is None:
            raise ValueError("an operator prompt needs a probe: the station must see when the board is ready")
        self.reason = one_line(reason)
        super().__init__(self.reason)
        self.retryable = retryable
        self.operator_prompt = operator_prompt
        self.probe = probe
