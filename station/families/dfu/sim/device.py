"""An emulated USB device in DFU mode: descriptors, standard requests, the DFU 1.1 state machine and DfuSe.

Requests arrive as control transfers (`control`), exactly what a host sends on endpoint 0; answers are bytes or
one of the USB outcomes a host sees (`EndpointStall`, `DeviceGone`, `TransferTimeout`). Facts: PROTOCOLS §4.1
(states, status codes, transitions), §4.3 (DfuSe commands, block addressing, the busy rule), §4.4 (leave).

DfuSe operations run when the host polls: the first GETSTATUS after a command or data block executes it and shows
dfuDNBUSY with bwPollTimeout set to what the operation costs on the real part; the next GETSTATUS shows
dfuDNLOAD-IDLE (or dfuERROR). When throttled the device really stays busy for that long (the next request waits);
unthrottled it is never busy and says so (bwPollTimeout 0).

After the zero-length DNLOAD (leave) the device answers one GETSTATUS (dfuMANIFEST on the STM32 ROM,
dfuDNLOAD-IDLE on Particle Gen2) and resets: it drops off the bus until plugged again.

One lock per device; devices never share state, so hosts may drive many of them from parallel threads.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, fields, replace
from typing import Callable

from station.families.dfu.sim.descriptors import (
    ConfigurationDescriptor, Descriptors, DeviceDescriptor, InterfaceDescriptor, dfu_functional,
)
from station.families.dfu.sim.kinds import (
    DFU_ERROR, DFU_IDLE, DNBUSY, DNLOAD_IDLE, DNLOAD_SYNC, KINDS, MANIFEST_SYNC, UPLOAD_IDLE, DfuKind,
)
from station.families.dfu.sim.memory import AccessError, AddressError, AltMemory

# DFU class requests
DETACH, DNLOAD, UPLOAD, GETSTATUS, CLRSTATUS, GETSTATE, ABORT = range(7)
# status codes
OK, ERR_TARGET, ERR_FILE, ERR_WRITE, ERR_ERASE, ERR_CHECK_ERASED, ERR_PROG, ERR_VERIFY, ERR_ADDRESS = range(9)
ERR_UNKNOWN, ERR_STALLEDPKT = 0x0E, 0x0F
# DfuSe commands (DNLOAD block 0)
CMD_GET_COMMANDS, CMD_SET_ADDRESS, CMD_ERASE, CMD_READ_UNPROTECT = 0x00, 0x21, 0x41, 0x92
# standard requests
GET_STATUS, GET_DESCRIPTOR, GET_CONFIGURATION, SET_CONFIGURATION, GET_INTERFACE, SET_INTERFACE = 0, 6, 8, 9, 10, 11

STRING_MANUFACTURER, STRING_PRODUCT, STRING_SERIAL, STRING_FIRST_ALT = 1, 2, 3, 4


class EndpointStall(Exception):
    """The device stalled the control pipe (pyusb: USBError errno 32)."""


class DeviceGone(Exception):
    """The device is not on the bus (pyusb: USBError errno 19)."""


class TransferTimeout(Exception):
    """The device did not answer within the request's timeout (pyusb: USBError errno 110)."""


@dataclass
class DfuFaults:
    """Misbehaviours to inject; settable on a live device (`device.faults = DfuFaults(...)` or field by field)."""

    stall_on_request: int | None = None  # stall the next request with this DFU bRequest, once
    err_verify: bool = False  # written data reads back with a bit cleared; manifestation reports errVERIFY
    unplug_after_bytes: int | None = None  # drop off the bus once this many data bytes were downloaded
    vanish_on_leave: bool = False  # the GETSTATUS after the zero-length DNLOAD gets no answer: the device is gone
    stuck_in_error: bool = False  # every GETSTATUS says dfuERROR; CLRSTATUS does not help

    NAMES = ("stall_on_request", "err_verify", "unplug_after_bytes", "vanish_on_leave", "stuck_in_error")

    def with_fault(self, name: str, value: str | None) -> "DfuFaults":
        """A copy with fault `name` set from text (`stall_on_request=3`, `err_verify`); ValueError names the fix."""
        if name not in self.NAMES:
            raise ValueError(f"unknown DFU fault {name!r}; choose one of {', '.join(self.NAMES)}")
        kind = {f.name: f.type for f in fields(self)}[name]
        if "int" in kind:
            if value is None or not value.strip().isdigit():
                raise ValueError(f"DFU fault {name} needs a number, e.g. {name}=3")
            return replace(self, **{name: int(value)})
        if value not in (None, "1", "true", "yes", "on"):
            raise ValueError(f"DFU fault {name} takes no value (or =1)")
        return replace(self, **{name: True})


@dataclass(frozen=True)
class Attachment:
    """One enumeration on the bus; a re-plugged device gets a new one (and a new address)."""

    bus: int
    address: int
    port_numbers: tuple[int, ...]


@dataclass
class _Pending:
    """What the next GETSTATUS in dfuDNLOAD-SYNC carries out."""

    block: int
    data: bytes


class DfuDevice:
    """An emulated device of `kind` with its own 96-bit `uid` (which the USB serial may or may not reflect)."""

    def __init__(self, kind: DfuKind | str, uid: bytes, *, throttle: bool = False, faults: DfuFaults | None = None):
        self.kind = KINDS[kind] if isinstance(kind, str) else kind
        if len(uid) != 12:
            raise ValueError(f"a device UID is 12 bytes, got {len(uid)}")
        self.uid = bytes(uid)
        self.throttle = throttle
        self.faults = faults or DfuFaults()
        self.serial = self.kind.serial_of(self.uid)
        self.memories = [AltMemory(a.layout, a.timing) for a in self.kind.alts]
        for alt, memory in zip(self.kind.alts, self.memories):
            for address, data in alt.factory:
                memory.load(address, data)
        self.descriptors = self._build_descriptors()
        self._lock = threading.Lock()
        self._cut = threading.Event()  # set when the device leaves the bus: wakes a throttled wait at once
        self.attachment: Attachment | None = None
        self.exit_reason = "unplugged"  # why it last left the bus: "unplugged" (cable, fault) or "reset" (itself)
        self._listeners: list[Callable[[DfuDevice], None]] = []
        self._reset_state()

    @property
    def device_id(self) -> str:
        """The UID as Particle shows it: 24 lower-case hex digits in memory order."""
        return self.uid.hex()

    def __repr__(self) -> str:
        return f"DfuDevice({self.kind.name}, uid={self.uid.hex()})"

    # --- descriptors ----------------------------------------------------------------------------------------------

    def _build_descriptors(self) -> Descriptors:
        k = self.kind
        strings = {STRING_MANUFACTURER: k.manufacturer, STRING_PRODUCT: k.product, STRING_SERIAL: self.serial}
        interfaces = []
        for alt, spec in enumerate(k.alts):
            strings[STRING_FIRST_ALT + alt] = spec.layout
            interfaces.append(InterfaceDescriptor(bInterfaceNumber=0, bAlternateSetting=alt,
                                                  iInterface=STRING_FIRST_ALT + alt))
        functional = dfu_functional(k.bm_attributes, k.detach_timeout_ms, k.transfer_size, k.bcd_dfu)
        interfaces[-1].extra_descriptors = list(functional)
        total = 9 + 9 * len(interfaces) + len(functional)
        return Descriptors(
            DeviceDescriptor(bcdUSB=k.bcd_usb, idVendor=k.vid, idProduct=k.pid, bcdDevice=k.bcd_device,
                             iManufacturer=STRING_MANUFACTURER, iProduct=STRING_PRODUCT,
                             iSerialNumber=STRING_SERIAL),
            ConfigurationDescriptor(wTotalLength=total, bmAttributes=k.config_attributes,
                                    bMaxPower=k.max_power_2ma),
            interfaces, strings)

    # --- the bus --------------------------------------------------------------------------------------------------

    def attach(self, attachment: Attachment) -> None:
        """Enumerate: fresh bootloader state, configured by the host OS (as Linux does for one configuration)."""
        with self._lock:
            self._cut = threading.Event()
            self.attachment = attachment
            self._reset_state()

    def detach(self) -> None:
        """Pulled from the bus (cable, or a reset of its own)."""
        self._cut.set()
        with self._lock:
            self._drop_off_bus("unplugged")

    def add_listener(self, on_detach: Callable[[DfuDevice], None]) -> None:
        """`on_detach(device)` runs whenever the device leaves the bus, also when it resets itself (`exit_reason`
        says which); it runs under the device's lock, so it must not call back into the device."""
        self._listeners.append(on_detach)

    def _drop_off_bus(self, reason: str) -> None:
        if self.attachment is None:
            return
        self._cut.set()
        self.attachment = None
        self.exit_reason = reason
        for listener in self._listeners:
            listener(self)

    def _reset_state(self) -> None:
        self.state = DFU_IDLE
        self.status = OK
        self.configuration = 1
        self.alt = 0
        self.address_pointer = self.memories[0].start
        self._pending: _Pending | None = None
        self._deferred_status = OK  # outcome of the operation in progress, shown once it is done
        self._busy_until = 0.0
        self._downloaded = 0
        self._leave_after_reply: str | None = None  # the exit reason once the current reply is out

    # --- host side entry points -----------------------------------------------------------------------------------

    def check_present(self, attachment: Attachment) -> None:
        if self.attachment is None or self.attachment is not attachment:
            raise DeviceGone(f"{self!r} is not on the bus")

    def control(self, attachment: Attachment, bm_request_type: int, b_request: int, w_value: int, w_index: int,
                data: bytes, w_length: int, timeout_ms: int) -> bytes:
        """One control transfer. OUT: `data` is the payload, returns b"". IN: returns up to `w_length` bytes."""
        with self._lock:
            self.check_present(attachment)
            self._wait_while_busy(timeout_ms)
            try:
                reply = self._dispatch(bm_request_type, b_request, w_value, w_index, data, w_length)
            finally:
                if self._leave_after_reply is not None:
                    self._drop_off_bus(self._leave_after_reply)
            return reply[:w_length]

    def _wait_while_busy(self, timeout_ms: int) -> None:
        """A throttled device still erasing or programming NAKs everything until done."""
        if not self.throttle:
            return
        remaining = self._busy_until - time.monotonic()
        if remaining <= 0:
            return
        if timeout_ms and remaining > timeout_ms / 1000:
            if self._cut.wait(timeout_ms / 1000):
                raise DeviceGone(f"{self!r} left the bus while busy")
            raise TransferTimeout(f"{self!r} busy for {remaining:.1f} s, longer than the {timeout_ms} ms timeout")
        if self._cut.wait(remaining):
            raise DeviceGone(f"{self!r} left the bus while busy")

    def _dispatch(self, rt: int, req: int, value: int, index: int, data: bytes, length: int) -> bytes:
        if rt == 0x21 or rt == 0xA1:
            if index != 0:
                raise EndpointStall(f"no interface {index}")
            return self._dfu_request(rt, req, value, data, length)
        return self._standard_request(rt, req, value, index)

    # --- standard requests ----------------------------------------------------------------------------------------

    def _standard_request(self, rt: int, req: int, value: int, index: int) -> bytes:
        if rt == 0x80 and req == GET_DESCRIPTOR:
            kind, number = value >> 8, value & 0xFF
            if kind == 1 and number == 0:
                return self.descriptors.device.to_bytes()
            if kind == 2 and number == 0:
                return self.descriptors.configuration_bytes()
            if kind == 3:
                try:
                    return self.descriptors.string_bytes(number)
                except KeyError:
                    raise EndpointStall(f"no string {number}") from None
            raise EndpointStall(f"no descriptor 0x{value:04X}")
        if rt == 0x80 and req == GET_STATUS:
            return bytes([1 if self.kind.config_attributes & 0x40 else 0, 0])
        if rt == 0x80 and req == GET_CONFIGURATION:
            return bytes([self.configuration])
        if rt == 0x00 and req == SET_CONFIGURATION:
            if value not in (0, 1):
                raise EndpointStall(f"no configuration {value}")
            self.configuration = value
            return b""
        if rt == 0x81 and req == GET_INTERFACE and index == 0:
            return bytes([self.alt])
        if rt == 0x01 and req == SET_INTERFACE and index == 0:
            if not 0 <= value < len(self.memories):
                raise EndpointStall(f"no alternate setting {value}")
            self.alt = value
            return b""
        raise EndpointStall(f"unsupported request {rt:02X}/{req:02X}")

    # --- DFU ------------------------------------------------------------------------------------------------------

    def _stall(self, why: str) -> EndpointStall:
        """An unexpected DFU request: stall and enter dfuERROR/errSTALLEDPKT."""
        self.state, self.status = DFU_ERROR, ERR_STALLEDPKT
        return EndpointStall(why)

    def _dfu_request(self, rt: int, req: int, value: int, data: bytes, length: int) -> bytes:
        if self.configuration == 0:
            raise EndpointStall("not configured")
        if self.faults.stall_on_request == req:
            self.faults.stall_on_request = None
            raise self._stall(f"fault: stall on request {req}")
        handler = {(0x21, DNLOAD): self._dnload, (0xA1, UPLOAD): self._upload, (0xA1, GETSTATUS): self._getstatus,
                   (0x21, CLRSTATUS): self._clrstatus, (0xA1, GETSTATE): self._getstate,
                   (0x21, ABORT): self._abort}.get((rt, req))
        if handler is None:
            raise self._stall(f"DFU request {req} ({rt:02X}) not valid in DFU mode")
        return handler(value, data, length)

    def _dnload(self, block: int, data: bytes, length: int) -> bytes:
        if not data:
            if self.state != DNLOAD_IDLE:
                raise self._stall(f"zero-length DNLOAD in state {self.state}")
            self.state = MANIFEST_SYNC
            return b""
        if self.state not in (DFU_IDLE, DNLOAD_IDLE):
            raise self._stall(f"DNLOAD in state {self.state}")
        if len(data) > self.kind.transfer_size or block == 1:
            raise self._stall(f"DNLOAD block {block} of {len(data)} bytes")
        if block == 0 and data[0] not in self.kind.dfuse_commands[1:]:
            raise self._stall(f"unknown DfuSe command 0x{data[0]:02X}")
        self._pending = _Pending(block, bytes(data))
        self.state = DNLOAD_SYNC
        if block >= 2:
            self._downloaded += len(data)
            limit = self.faults.unplug_after_bytes
            if limit is not None and self._downloaded >= limit:
                self._leave_after_reply = "unplugged"
        return b""

    def _getstatus(self, value: int, data: bytes, length: int) -> bytes:
        poll_s = 0.0
        if self.faults.stuck_in_error:
            self.state, self.status = DFU_ERROR, ERR_UNKNOWN
        elif self.state == DNLOAD_SYNC:
            poll_s = self._execute(self._pending)
            self._pending = None
        elif self.state == DNBUSY:
            self.status, self._deferred_status = self._deferred_status, OK
            self.state = DNLOAD_IDLE if self.status == OK else DFU_ERROR
        elif self.state == MANIFEST_SYNC:
            self._manifest()
        poll_ms = math.ceil(poll_s * 1000) if self.throttle else 0
        self._busy_until = time.monotonic() + poll_s
        return bytes([self.status, poll_ms & 0xFF, (poll_ms >> 8) & 0xFF, (poll_ms >> 16) & 0xFF, self.state, 0])

    def _manifest(self) -> None:
        if self.faults.vanish_on_leave:
            self._drop_off_bus("reset")
            raise DeviceGone(f"{self!r} reset without answering")
        if self.faults.err_verify:
            self.state, self.status = DFU_ERROR, ERR_VERIFY
            return
        # manifestation intolerant: the bootloader resets once this status is out
        self.state = self.kind.leave_state
        self._leave_after_reply = "reset"

    def _execute(self, pending: _Pending) -> float:
        """Run a command or data block; returns its cost. Checks fail at once (dfuERROR), flash errors after busy."""
        memory = self.memories[self.alt]
        try:
            if pending.block == 0:
                cost = self._command(memory, pending.data)
            else:
                address = (pending.block - 2) * self.kind.transfer_size + self.address_pointer
                data = pending.data
                if self.faults.err_verify:
                    data = _flip_one_bit(data)
                write = memory.program(address, data)
                cost = write.cost_s
                if write.conflict:
                    self._deferred_status = ERR_CHECK_ERASED
        except AddressError:
            self.state, self.status = DFU_ERROR, ERR_ADDRESS
            return 0.0
        except AccessError:
            self.state, self.status = DFU_ERROR, ERR_WRITE if pending.block else ERR_TARGET
            return 0.0
        self.state = DNBUSY
        return cost

    def _command(self, memory: AltMemory, cmd: bytes) -> float:
        if cmd[0] == CMD_SET_ADDRESS and len(cmd) == 5:
            address = int.from_bytes(cmd[1:5], "little")
            if not memory.contains(address):
                raise AddressError(f"0x{address:08X}")
            self.address_pointer = address
            return 0.0
        if cmd[0] == CMD_ERASE and len(cmd) == 5:
            return memory.erase_page(int.from_bytes(cmd[1:5], "little"))
        if cmd[0] == CMD_ERASE and len(cmd) == 1:
            return memory.mass_erase()
        if cmd[0] == CMD_READ_UNPROTECT and len(cmd) == 1:
            cost = self.memories[0].mass_erase()
            self._leave_after_reply = "reset"  # AN3156: erases everything, then resets
            return cost
        raise AccessError(f"DfuSe command {cmd.hex()} malformed")

    def _upload(self, block: int, data: bytes, length: int) -> bytes:
        if self.state not in (DFU_IDLE, UPLOAD_IDLE) or block == 1 or length > self.kind.transfer_size:
            raise self._stall(f"UPLOAD block {block} of {length} bytes in state {self.state}")
        if block == 0:
            reply = self.kind.dfuse_commands
        else:
            address = (block - 2) * self.kind.transfer_size + self.address_pointer
            try:
                reply = self.memories[self.alt].read(address, length)
            except (AddressError, AccessError) as e:
                stall = self._stall(str(e))
                self.status = ERR_ADDRESS
                raise stall from None
        self.state = UPLOAD_IDLE if len(reply) >= length else DFU_IDLE  # a short frame ends the upload
        return reply

    def _clrstatus(self, value: int, data: bytes, length: int) -> bytes:
        if self.state != DFU_ERROR:
            raise self._stall(f"CLRSTATUS in state {self.state}")
        if not self.faults.stuck_in_error:
            self.state, self.status = DFU_IDLE, OK
        return b""

    def _getstate(self, value: int, data: bytes, length: int) -> bytes:
        return bytes([self.state])

    def _abort(self, value: int, data: bytes, length: int) -> bytes:
        if self.state not in (DFU_IDLE, DNLOAD_SYNC, DNLOAD_IDLE, MANIFEST_SYNC, UPLOAD_IDLE):
            raise self._stall(f"ABORT in state {self.state}")
        self.state, self.status = DFU_IDLE, OK
        self._pending = None
        return b""

    # --- for tests and dumps --------------------------------------------------------------------------------------

    def read_memory(self, alt: int, address: int, length: int) -> bytes:
        """What is in the memory, bypassing USB (a debugger's view)."""
        with self._lock:
            return self.memories[alt].read(address, length)

    def snapshot(self, alt: int) -> bytes:
        with self._lock:
            return self.memories[alt].snapshot()


def _flip_one_bit(data: bytes) -> bytes:
    """The data with the lowest set bit of its first non-zero byte cleared (NOR can only clear bits)."""
    out = bytearray(data)
    for i, b in enumerate(out):
        if b:
            out[i] = b & (b - 1)
            break
    return bytes(out)


def make_device(kind: str, index: int = 0, *, throttle: bool = False, faults: DfuFaults | None = None) -> DfuDevice:
    """Instance `index` of `kind` with the UID that kind's factory gives it (stm32: pairs share a serial)."""
    return DfuDevice(kind, KINDS[kind].uid_for(index), throttle=throttle, faults=faults)

