"""One Spark Core's or Photon's session: the board in whichever personality it has now — its DFU bootloader
(the DFU family's host, over pyusb) or its firmware's USB serial (the listening-mode console, over pyserial) —
and what the steps learn about it on the way.

Emulated boards are opened as usbsim://… in DFU mode and particlesim://… when running (a pyserial URL scheme
that carries the baud rate the host sets, so the magic baud rates work): opening is the only difference.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import serial

from station.families.base import LogFn, ProgressFn
from station.families.dfu.host import DfuHost
from station.families.dfu.session import DfuSession
from station.families.particle.console import Console, ConsoleError
from station.families.particle.keys import DeviceKey
from station.families.particle.platforms import Platform
from station.model import StepFailed

# pyserial looks a particlesim:// url up as station.families.particle.sim.protocol_particlesim
if "station.families.particle.sim" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("station.families.particle.sim")


@dataclass
class BoardState:
    """What the steps learnt about one board, from detect on."""

    platform: Platform
    dfu_serial_id: str | None = None  # the device ID its DFU bootloader reports in its USB serial (newer Photon)
    device_id: str | None = None
    new_key: Future | None = None  # Future[DeviceKey], made on the station while the board is detected
    device_key: DeviceKey | None = field(default=None, repr=False)
    previous_key: str = ""  # fingerprint (or state) of the key the board had


class ParticleSession:
    def __init__(self, url: str, log: LogFn, progress: ProgressFn):
        self.url = url
        self.log = log
        self.progress = progress
        self.board: BoardState | None = None
        self._dfu = DfuSession(url, log, progress)
        self._console: Console | None = None
        self._lock = threading.Lock()

    def dfu(self) -> DfuHost:
        """The DFU bootloader at the board's url now (opened once per enumeration)."""
        self._close_console()
        if self._dfu.url != self.url or not self._dfu.is_open:
            self._dfu.url = self.url
            self._dfu.open()
        return self._dfu.host

    def console(self) -> Console:
        """The run-time USB serial at the board's url now, at 9600 baud."""
        self._dfu.close()
        with self._lock:
            self._close_console_locked()
            try:
                self._console = Console(self.url)
            except ConsoleError as exc:
                raise StepFailed(f"Can't talk to the board's firmware: {exc}", retryable=True) from None
            return self._console

    def release(self) -> None:
        """Let go of the board before it re-enumerates (a mode switch): no handle may hold the old device."""
        self._dfu.close()
        self._close_console()

    def abort(self) -> None:
        """From another thread (timeout, Stop): a DFU transfer stops at its next block, a console wait at once."""
        with self._lock:
            console = self._console
        self._dfu.abort()
        if console is not None:
            console.abort()

    def close(self) -> None:
        self.release()

    def _close_console(self) -> None:
        with self._lock:
            self._close_console_locked()

    def _close_console_locked(self) -> None:
        console, self._console = self._console, None
        if console is not None:
            console.close()
