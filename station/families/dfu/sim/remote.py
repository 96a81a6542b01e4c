"""pyusb backend for one device served by `DfuSimServer` (usbsim://HOST:PORT/N), and `open_device(url)`.

`open_device(url)` returns a real `usb.core.Device`, so code written for pyusb drives the emulated device unchanged.
Descriptors come once per enumeration (one `D` request); every control transfer is one round trip. A device that
was unplugged at the server, or a server that went away, reads as USBError errno 19 (ENODEV).
"""
from __future__ import annotations

import array
import errno
import json
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import usb.backend
import usb.core

from station.families.dfu.sim.backend import device_descriptor, interface_descriptor, transfer, usb_error
from station.families.dfu.sim.descriptors import Descriptors
from station.families.dfu.sim.device import Attachment, DeviceGone, EndpointStall, TransferTimeout
from station.families.dfu.sim.wire import CONTROL, OK, OPEN, SLOT, FrameError, recv_frame, send_frame

SCHEME = "usbsim"
CONNECT_TIMEOUT_S = 5.0
QUERY_TIMEOUT_MS = 5000  # describe / open: answered without waiting for the device
REPLY_MARGIN_S = 5.0  # beyond the transfer's own timeout, which the server-side device enforces
EXCEPTION_OF = {errno.EPIPE: EndpointStall, errno.ENODEV: DeviceGone, errno.ETIMEDOUT: TransferTimeout}


class UsbSimUrlError(ValueError):
    """A usbsim:// url that cannot be used; the message names the url and the fix."""


def parse_url(url: str) -> tuple[str, int, int]:
    """(host, port, slot) of `usbsim://HOST:PORT/N`."""
    parts = urlsplit(url)
    try:
        slot = int(parts.path.strip("/"))
        port = parts.port
    except ValueError:
        port = slot = None
    if parts.scheme != SCHEME or not parts.hostname or port is None or slot is None or slot < 1:
        raise UsbSimUrlError(f"{url!r} is not a usbsim url; expected usbsim://HOST:PORT/N as the emulator's "
                             "registry lists it")
    return parts.hostname, port, slot


@dataclass(frozen=True)
class _RemoteRef:
    descriptors: Descriptors
    attachment: Attachment


class RemoteUsbBackend(usb.backend.IBackend):
    """A bus with at most one device on it: the one at `url`. Thread-safe (one request at a time on the socket)."""

    def __init__(self, url: str):
        self.url = url
        self.host, self.port, self.slot = parse_url(url)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _request(self, payload: bytes, timeout_ms: int = 0) -> bytes:
        """Send one request, return the reply's data; device outcomes raise EndpointStall/DeviceGone/Timeout.

        `timeout_ms` 0 waits as long as the device takes (libusb's meaning of 0).
        """
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._sock = sock
                self._sock.settimeout(timeout_ms / 1000 + REPLY_MARGIN_S if timeout_ms else None)
                send_frame(self._sock, payload)
                reply = recv_frame(self._sock)
            except (OSError, FrameError) as e:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                raise DeviceGone(f"{self.url}: emulator not reachable ({e})") from None
        if not reply:
            raise DeviceGone(f"{self.url}: empty reply")
        if reply[0] != OK:
            raise EXCEPTION_OF.get(reply[0], DeviceGone)(reply[1:].decode(errors="replace"))
        return reply[1:]

    def describe(self) -> _RemoteRef | None:
        """The device as currently enumerated, or None while nothing is plugged there."""
        try:
            d = json.loads(self._request(b"D" + SLOT.pack(self.slot), QUERY_TIMEOUT_MS))
        except DeviceGone:
            return None
        return _RemoteRef(Descriptors.from_dict(d["descriptors"]),
                          Attachment(d["bus"], d["address"], tuple(d["port_numbers"])))

    # --- pyusb IBackend ---------------------------------------------------------------------------------------------

    def enumerate_devices(self):
        ref = self.describe()
        if ref is not None:
            yield ref

    def get_device_descriptor(self, dev: _RemoteRef):
        return device_descriptor(dev.descriptors, dev.attachment)

    def get_configuration_descriptor(self, dev: _RemoteRef, config: int):
        if config != 0:
            raise IndexError(f"no configuration {config}")
        return dev.descriptors.configuration

    def get_interface_descriptor(self, dev: _RemoteRef, intf: int, alt: int, config: int):
        return interface_descriptor(dev.descriptors, intf, alt, config)

    def get_endpoint_descriptor(self, dev: _RemoteRef, ep: int, intf: int, alt: int, config: int):
        raise IndexError("a DFU interface has no endpoints besides endpoint 0")

    def open_device(self, dev: _RemoteRef) -> _RemoteRef:
        self._checked(self._request, b"O" + OPEN.pack(self.slot, dev.attachment.address), QUERY_TIMEOUT_MS)
        return dev

    def close_device(self, dev_handle: _RemoteRef) -> None:
        pass  # like libusb_close: nothing to tell the device

    def set_configuration(self, dev_handle: _RemoteRef, config_value: int) -> None:
        self._control(dev_handle, 0x00, 9, config_value, 0, array.array("B"), 0)

    def get_configuration(self, dev_handle: _RemoteRef) -> int:
        buf = array.array("B", [0])
        self._control(dev_handle, 0x80, 8, 0, 0, buf, 0)
        return buf[0]

    def set_interface_altsetting(self, dev_handle: _RemoteRef, intf: int, altsetting: int) -> None:
        self._control(dev_handle, 0x01, 11, altsetting, intf, array.array("B"), 0)

    def claim_interface(self, dev_handle: _RemoteRef, intf: int) -> None:
        self._claim_check(dev_handle, intf)

    def release_interface(self, dev_handle: _RemoteRef, intf: int) -> None:
        self._claim_check(dev_handle, intf)

    def _claim_check(self, dev_handle: _RemoteRef, intf: int) -> None:
        if intf != 0:
            raise usb.core.USBError(f"Entity not found (no interface {intf})", errno=errno.ENOENT)
        self.open_device(dev_handle)

    def ctrl_transfer(self, dev_handle: _RemoteRef, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        return self._control(dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout)

    def _control(self, dev_handle: _RemoteRef, rt: int, req: int, value: int, index: int, data: array.array,
                 timeout: int) -> int:
        address = dev_handle.attachment.address

        def call(rt_, req_, value_, index_, out, length, timeout_):
            head = CONTROL.pack(self.slot, address, rt_, req_, value_, index_, length, timeout_ or 0)
            return self._request(b"C" + head + out, timeout_)
        return transfer(call, data, rt, req, value, index, timeout)

    @staticmethod
    def _checked(fn, *args):
        try:
            return fn(*args)
        except (EndpointStall, DeviceGone, TransferTimeout) as e:
            raise usb_error(e) from None


class NoDeviceAtUrl(LookupError):
    """Nothing is plugged at a usbsim:// url (or its emulator is not running)."""


def open_device(url: str) -> usb.core.Device:
    """The device at `url` as a pyusb Device; NoDeviceAtUrl when nothing answers there."""
    backend = RemoteUsbBackend(url)
    device = usb.core.find(backend=backend)
    if device is None:
        backend.close()
        raise NoDeviceAtUrl(f"no DFU device at {url}; is `station sim dfu` running and the device plugged in?")
    return device
