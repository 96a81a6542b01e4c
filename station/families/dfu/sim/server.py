"""Serves emulated DFU devices to other processes: control transfers over loopback TCP (protocol: `wire`).

All devices share one listening port; device N (from 1) is `usbsim://HOST:PORT/N` at location `sim-2.N` (the ESP
emulator's boards are `sim-1.N`). While a device is on the bus, `<registry_dir>/<location>.json` describes it the
way the ESP emulator describes its boards ({location, url, vid, pid, serial, description, manufacturer}), so the
station's registry scan finds it; the file goes when the device leaves the bus, by unplug or by resetting itself
after a leave request.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Sequence

from station.families.dfu.sim.backend import EmulatedUsbBackend
from station.families.dfu.sim.device import DeviceGone, DfuDevice, EndpointStall, TransferTimeout
from station.families.dfu.sim.wire import CONTROL, OK, OPEN, SLOT, FrameError, recv_frame, send_frame
from station.sim.registry import write_registry_file

log = logging.getLogger(__name__)

LOCATION_PREFIX = "sim-2"
SIM_BUS = 2
ERRNO_OF = {EndpointStall: errno.EPIPE, DeviceGone: errno.ENODEV, TransferTimeout: errno.ETIMEDOUT}


def registry_entry(device: DfuDevice, location: str, url: str) -> dict:
    k = device.kind
    return {"location": location, "url": url, "vid": k.vid, "pid": k.pid, "serial": device.serial,
            "description": k.product, "manufacturer": k.manufacturer}


class UsbSimService:
    """The usbsim:// side of a set of emulated DFU devices: one loopback TCP listener, an emulated bus, slot N =
    device N-1. It never plugs anything by itself; its owner decides when a device is on the bus."""

    def __init__(self, devices: Sequence[DfuDevice], host: str = "127.0.0.1", port: int = 0, bus: int = SIM_BUS):
        self.devices = list(devices)
        self.host = host
        self.port = port
        self.bus = EmulatedUsbBackend(bus=bus)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def url(self, index: int) -> str:
        return f"usbsim://{self.host}:{self.port}/{index + 1}"

    def listen(self) -> None:
        listener = socket.create_server((self.host, self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, "usb-sim-accept")

    def close(self) -> None:
        """Stop listening and drop every connection (the devices stay as they are)."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    # --- serving --------------------------------------------------------------------------------------------------

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # listener closed by stop()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._serve, f"usb-sim-conn-{conn.fileno()}", conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                request = recv_frame(conn)
                send_frame(conn, self._answer(request))
        except (FrameError, OSError):
            pass  # client went away, or stop()
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _answer(self, request: bytes) -> bytes:
        op, body = request[:1], request[1:]
        try:
            if op == b"D":
                return bytes([OK]) + json.dumps(self._describe(SLOT.unpack(body)[0])).encode()
            if op == b"O":
                slot, address = OPEN.unpack(body)
                device = self._device(slot)
                device.check_present(self._attachment(device, address))
                return bytes([OK])
            if op == b"C":
                slot, address, rt, req, value, index, length, timeout = CONTROL.unpack_from(body)
                device = self._device(slot)
                reply = device.control(self._attachment(device, address), rt, req, value, index,
                                       body[CONTROL.size:], length, timeout)
                return bytes([OK]) + reply
        except (EndpointStall, DeviceGone, TransferTimeout) as e:
            return bytes([ERRNO_OF[type(e)]]) + str(e).encode()
        except Exception as e:  # a malformed request must not take the server down
            log.warning("bad usbsim request %r: %s", request[:16], e)
            return bytes([errno.EINVAL]) + f"bad request: {e}".encode()
        return bytes([errno.EINVAL]) + f"unknown request {op!r}".encode()

    def _device(self, slot: int) -> DfuDevice:
        if not 1 <= slot <= len(self.devices):
            raise DeviceGone(f"no device slot {slot} (this server has 1..{len(self.devices)})")
        return self.devices[slot - 1]

    @staticmethod
    def _attachment(device: DfuDevice, address: int):
        attachment = device.attachment
        if attachment is None or attachment.address != address:
            raise DeviceGone(f"{device!r} is no longer enumerated at address {address}")
        return attachment

    def _describe(self, slot: int) -> dict:
        device = self._device(slot)
        attachment = device.attachment
        if attachment is None:
            raise DeviceGone(f"nothing plugged in slot {slot}")
        return {"descriptors": device.descriptors.to_dict(), "bus": attachment.bus, "address": attachment.address,
                "port_numbers": list(attachment.port_numbers)}


class DfuSimServer:
    """Indexes in this API are 0-based positions in `devices`; locations and url slots count from 1."""

    def __init__(self, devices: Sequence[DfuDevice], registry_dir: str | os.PathLike, host: str = "127.0.0.1",
                 port: int = 0):
        self.usb = UsbSimService(devices, host, port)
        self.devices = self.usb.devices
        self.registry_dir = Path(registry_dir)
        for device in self.devices:
            device.add_listener(self._withdraw)

    @property
    def bus(self) -> EmulatedUsbBackend:
        return self.usb.bus

    @property
    def host(self) -> str:
        return self.usb.host

    @property
    def port(self) -> int:
        return self.usb.port

    @property
    def locations(self) -> list[str]:
        return [f"{LOCATION_PREFIX}.{i + 1}" for i in range(len(self.devices))]

    def url(self, index: int) -> str:
        return self.usb.url(index)

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in range(len(self.devices))]

    def registry_path(self, index: int) -> Path:
        return self.registry_dir / f"{self.locations[index]}.json"

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> "DfuSimServer":
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        self.usb.listen()
        for i in range(len(self.devices)):
            self.plug(i)
        return self

    def stop(self) -> None:
        for i in range(len(self.devices)):
            self.unplug(i)
        self.usb.close()

    def __enter__(self) -> "DfuSimServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def plug(self, index: int) -> None:
        """Plug in (again): a new enumeration with a new address; the registry file appears."""
        device = self.devices[index]
        if device.attachment is None:
            self.bus.plug(device, port=index + 1)
            write_registry_file(self.registry_dir, registry_entry(device, self.locations[index], self.url(index)))

    def unplug(self, index: int) -> None:
        """Yank the cable: requests in flight and later ones fail with ENODEV; the registry file goes."""
        self.bus.unplug(self.devices[index])

    def is_plugged(self, index: int) -> bool:
        return self.devices[index].attachment is not None

    def _withdraw(self, device: DfuDevice) -> None:
        self.registry_path(self.devices.index(device)).unlink(missing_ok=True)
