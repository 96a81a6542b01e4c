"""One DFU board's session: the USB device behind its port url, opened once by detect and used by every step.

Emulated boards are opened as usbsim://host:port/slot (the emulator's socket); the opener is looked up by
scheme when such a url is opened, so opening the device is the only difference from a board on a real hub.
"""
from __future__ import annotations

import threading

from station.discovery.usb_devices import UsbOpenError, open_usb, register_scheme
from station.families.base import LogFn, ProgressFn
from station.families.dfu.errors import DfuError
from station.families.dfu.host import DfuHost
from station.model import StepFailed


def _open_emulated(url: str):
    from station.families.dfu.sim.remote import NoDeviceAtUrl, UsbSimUrlError, open_device

    try:
        return open_device(url)
    except (UsbSimUrlError, NoDeviceAtUrl, OSError) as exc:
        raise UsbOpenError(f"{url}: {exc}") from None


register_scheme("usbsim", _open_emulated)


class DfuSession:
    def __init__(self, url: str, log: LogFn, progress: ProgressFn):
        self.url = url
        self.log = log
        self.progress = progress
        self._host: DfuHost | None = None
        self._lock = threading.Lock()
        self._aborted = False

    def open(self) -> DfuHost:
        self.close()
        self._aborted = False
        try:
            host = DfuHost(open_usb(self.url))
        except (UsbOpenError, DfuError) as exc:
            raise StepFailed(f"Can't open the DFU board: {exc}", retryable=True) from exc
        with self._lock:
            self._host = host
        return host

    @property
    def is_open(self) -> bool:
        return self._host is not None

    @property
    def host(self) -> DfuHost:
        host = self._host
        if host is None:
            raise StepFailed("Lost the connection to the board" if self._aborted else "Board is not connected")
        return host

    def abort(self) -> None:
        """From another thread (timeout, Stop): the transfer stops at its next block or poll."""
        self._aborted = True
        with self._lock:
            host = self._host
        if host is not None:
            host.cancel("stopped by the station")

    def close(self) -> None:
        with self._lock:
            host, self._host = self._host, None
        if host is not None:
            host.close()
