"""A pyusb backend whose bus holds emulated DFU devices, so any pyusb code (the station, pyfu-usb, pydfu) drives them.

`usb.core.find(find_all=True, backend=be)` lists the plugged devices with their real descriptors, bus, address
and port numbers; control transfers reach the device's state machine. Device outcomes map to what libusb reports:
a stall is USBError errno 32 (EPIPE), a device that left the bus errno 19 (ENODEV), a timeout errno 110.
Re-plugging a device is a new enumeration with a new address, as on a real hub: Device objects from before it
stay dead (errno 19).
"""
from __future__ import annotations

import array
import errno
import itertools
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import usb.backend
import usb.core
import usb.util

from station.families.dfu.sim.descriptors import Descriptors
from station.families.dfu.sim.device import Attachment, DeviceGone, DfuDevice, EndpointStall, TransferTimeout

FULL_SPEED = usb.util.SPEED_FULL


def usb_error(exc: Exception) -> usb.core.USBError:
    """The USBError libusb would have produced for a device outcome."""
    if isinstance(exc, EndpointStall):
        return usb.core.USBError(f"Pipe error ({exc})", errno=errno.EPIPE)
    if isinstance(exc, DeviceGone):
        return usb.core.USBError(f"No such device (it may have been disconnected) ({exc})", errno=errno.ENODEV)
    if isinstance(exc, TransferTimeout):
        return usb.core.USBError(f"Operation timed out ({exc})", errno=errno.ETIMEDOUT)
    raise TypeError(f"not a USB outcome: {exc!r}")


def device_descriptor(descriptors: Descriptors, attachment: Attachment) -> SimpleNamespace:
    """The device descriptor plus where it sits on the bus, as pyusb's Device reads it."""
    return SimpleNamespace(**vars(descriptors.device), bus=attachment.bus, address=attachment.address,
                           port_number=attachment.port_numbers[-1], port_numbers=attachment.port_numbers,
                           speed=FULL_SPEED)


def interface_descriptor(descriptors: Descriptors, intf: int, alt: int, config: int):
    if config != 0 or intf != 0 or not 0 <= alt < len(descriptors.interfaces):
        raise IndexError(f"no interface ({intf}, {alt}) in configuration {config}")
    return descriptors.interfaces[alt]


def transfer(device_call, data: array.array, bm_request_type: int, b_request: int, w_value: int, w_index: int,
             timeout: int) -> int:
    """pyusb's ctrl_transfer convention on top of `device_call(rt, req, value, index, out_bytes, length, timeout)`:
    IN fills `data` in place and returns the byte count, OUT returns the bytes written."""
    is_in = bool(bm_request_type & 0x80)
    out = b"" if is_in else data.tobytes()
    try:
        reply = device_call(bm_request_type, b_request, w_value, w_index, out, len(data) if is_in else len(out),
                            timeout)
    except (EndpointStall, DeviceGone, TransferTimeout) as e:
        raise usb_error(e) from None
    if not is_in:
        return len(out)
    data[:len(reply)] = array.array("B", reply)
    return len(reply)


@dataclass(frozen=True)
class _DevRef:
    """pyusb's opaque `dev`: one device in one enumeration."""

    device: DfuDevice
    attachment: Attachment


@dataclass
class _Handle:
    ref: _DevRef


class EmulatedUsbBackend(usb.backend.IBackend):
    """One emulated USB bus. `plug(device)` enumerates a device on the next free hub port (or `port`)."""

    def __init__(self, bus: int = 2):
        self.bus = bus
        self._lock = threading.Lock()  # guards the port table only; devices carry their own locks
        self._ports: dict[int, DfuDevice] = {}
        self._addresses = itertools.count(2)  # address 1 is the root hub

    def plug(self, device: DfuDevice, port: int | None = None) -> Attachment:
        with self._lock:
            if device.attachment is not None:
                raise ValueError(f"{device!r} is already plugged in")
            if port is None:
                port = next(p for p in itertools.count(1) if p not in self._ports or
                            self._ports[p].attachment is None)
            if port in self._ports and self._ports[port].attachment is not None:
                raise ValueError(f"port {port} of bus {self.bus} is taken")
            self._ports[port] = device
            attachment = Attachment(self.bus, next(self._addresses), (port,))
        device.attach(attachment)
        return attachment

    def unplug(self, device: DfuDevice) -> None:
        device.detach()

    @property
    def devices(self) -> list[DfuDevice]:
        """Devices currently on this bus, by port."""
        with self._lock:
            return [d for _, d in sorted(self._ports.items()) if d.attachment is not None]

    # --- pyusb IBackend ---------------------------------------------------------------------------------------------

    def enumerate_devices(self):
        for device in self.devices:
            attachment = device.attachment
            if attachment is not None:
                yield _DevRef(device, attachment)

    def get_device_descriptor(self, dev: _DevRef):
        return device_descriptor(dev.device.descriptors, dev.attachment)

    def get_configuration_descriptor(self, dev: _DevRef, config: int):
        if config != 0:
            raise IndexError(f"no configuration {config}")
        return dev.device.descriptors.configuration

    def get_interface_descriptor(self, dev: _DevRef, intf: int, alt: int, config: int):
        return interface_descriptor(dev.device.descriptors, intf, alt, config)

    def get_endpoint_descriptor(self, dev: _DevRef, ep: int, intf: int, alt: int, config: int):
        raise IndexError("a DFU interface has no endpoints besides endpoint 0")

    def open_device(self, dev: _DevRef) -> _Handle:
        self._call(dev.device.check_present, dev.attachment)
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        pass  # like libusb_close: always succeeds, also for a device that is gone

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        self._control(dev_handle, 0x00, 9, config_value, 0, array.array("B"), 0)

    def get_configuration(self, dev_handle: _Handle) -> int:
        buf = array.array("B", [0])
        self._control(dev_handle, 0x80, 8, 0, 0, buf, 0)
        return buf[0]

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        self._control(dev_handle, 0x01, 11, altsetting, intf, array.array("B"), 0)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._claim_check(dev_handle, intf)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._claim_check(dev_handle, intf)

    def _claim_check(self, dev_handle: _Handle, intf: int) -> None:
        self._call(dev_handle.ref.device.check_present, dev_handle.ref.attachment)
        if intf != 0:
            raise usb.core.USBError(f"Entity not found (no interface {intf})", errno=errno.ENOENT)

    def ctrl_transfer(self, dev_handle: _Handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        return self._control(dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout)

    def _control(self, dev_handle: _Handle, rt: int, req: int, value: int, index: int, data: array.array,
                 timeout: int) -> int:
        ref = dev_handle.ref

        def call(*args):
            return ref.device.control(ref.attachment, *args)
        return transfer(call, data, rt, req, value, index, timeout)

    @staticmethod
    def _call(fn, *args):
        try:
            return fn(*args)
        except (EndpointStall, DeviceGone, TransferTimeout) as e:
            raise usb_error(e) from None
