"""A USB DFU 1.1 + ST DfuSe host on any pyusb `usb.core.Device`, whatever backend made it.

One `DfuHost` drives one board: pick an alt setting (by number, or by the name its memory layout carries),
then write, read back and leave. Ranges are checked against the layout before a byte is sent; every failure
is a `DfuError` with words a technician can act on. The request flow follows PROTOCOLS §4.1/§4.3: GETSTATUS
after every DNLOAD, waiting bwPollTimeout between polls; DfuSe commands must answer dfuDNBUSY then
dfuDNLOAD-IDLE; data goes as SET_ADDRESS + DNLOAD block 2 per wTransferSize chunk, as dfu-util and pydfu do.

`cancel()` may be called from another thread (Stop, a timeout): the running operation stops at the next
block or poll and releases the device. Transfers themselves are bounded by `timeout_ms`; the handle is not
closed under a transfer in flight, which libusb does not allow.
"""
from __future__ import annotations

import enum
import errno
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import usb.core
import usb.util

from station.discovery.usb_devices import usb_error_reason
from station.families.dfu.errors import DfuError
from station.text import shown
from station.families.dfu.layout import MemoryLayout, is_layout, parse_layout

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

_OUT = 0x21  # class request, interface recipient, host to device
_IN = 0xA1
_DFU_CLASS, _DFU_SUBCLASS, _RUNTIME, _DFU_MODE = 0xFE, 0x01, 0x01, 0x02
_FUNCTIONAL = 0x21
_BCD_DFUSE = 0x011A
_BUSY_LIMIT_S = 60.0  # longest a board may stay busy on one request (STM32F405 mass erase takes ~35 s)
_IDLE_TRIES = 4


class Request(enum.IntEnum):
    DETACH = 0
    DNLOAD = 1
    UPLOAD = 2
    GETSTATUS = 3
    CLRSTATUS = 4
    GETSTATE = 5
    ABORT = 6


class State(enum.IntEnum):
    APP_IDLE = 0
    APP_DETACH = 1
    IDLE = 2
    DNLOAD_SYNC = 3
    DNBUSY = 4
    DNLOAD_IDLE = 5
    MANIFEST_SYNC = 6
    MANIFEST = 7
    MANIFEST_WAIT_RESET = 8
    UPLOAD_IDLE = 9
    ERROR = 10


_STATE_NAMES: dict[int, str] = {
    State.APP_IDLE: "appIDLE", State.APP_DETACH: "appDETACH", State.IDLE: "dfuIDLE",
    State.DNLOAD_SYNC: "dfuDNLOAD-SYNC", State.DNBUSY: "dfuDNBUSY", State.DNLOAD_IDLE: "dfuDNLOAD-IDLE",
    State.MANIFEST_SYNC: "dfuMANIFEST-SYNC", State.MANIFEST: "dfuMANIFEST",
    State.MANIFEST_WAIT_RESET: "dfuMANIFEST-WAIT-RESET", State.UPLOAD_IDLE: "dfuUPLOAD-IDLE", State.ERROR: "dfuERROR",
}

# DFU 1.1 status codes (§6.1.2) in words
_STATUS_WORDS = {
    0x01: ("errTARGET", "the file is not meant for this board's memory"),
    0x02: ("errFILE", "the board's own checks rejected the file"),
    0x03: ("errWRITE", "the board could not write its memory"),
    0x04: ("errERASE", "the board could not erase its memory"),
    0x05: ("errCHECK_ERASED", "the memory was not blank where the board had to write (erase check failed)"),
    0x06: ("errPROG", "programming the memory failed"),
    0x07: ("errVERIFY", "the written bytes did not read back the same (verify failed)"),
    0x08: ("errADDRESS", "the board refused the address: it lies outside its memory"),
    0x09: ("errNOTDONE", "the board expected more data: the download ended too early"),
    0x0A: ("errFIRMWARE", "the board's firmware is damaged, so it cannot leave DFU mode"),
    0x0B: ("errVENDOR", "the board reported a vendor-specific error"),
    0x0C: ("errUSBR", "the board saw an unexpected USB reset"),
    0x0D: ("errPOR", "the board saw an unexpected power-on reset"),
    0x0E: ("errUNKNOWN", "the board reported an unknown error"),
    0x0F: ("errSTALLEDPKT", "the board refused a request it did not expect"),
}


def state_name(state: int) -> str:
    return _STATE_NAMES.get(state, f"state {state}")


def status_words(status: int) -> str:
    name, words = _STATUS_WORDS.get(status, (f"status 0x{status:02X}", "the board reported an unknown error"))
    return f"{words} ({name})"


class LeaveOutcome(enum.Enum):
    """How a board answered the request to leave DFU mode; all three are normal (PROTOCOLS §4.4)."""

    MANIFEST = "manifest"  # dfuMANIFEST: DfuSe / Gen3 style
    DNLOAD_IDLE = "dnload-idle"  # Particle Gen2 bootloaders answer this "to please dfu-util"
    VANISHED = "vanished"  # reset straight away, before answering


@dataclass(frozen=True)
class FunctionalDescriptor:
    attributes: int
    detach_timeout_ms: int
    transfer_size: int
    dfu_version: int

    @property
    def can_download(self) -> bool:
        return bool(self.attributes & 0x01)

    @property
    def can_upload(self) -> bool:
        return bool(self.attributes & 0x02)

    @property
    def manifestation_tolerant(self) -> bool:
        return bool(self.attributes & 0x04)

    @property
    def will_detach(self) -> bool:
        return bool(self.attributes & 0x08)

    @property
    def is_dfuse(self) -> bool:
        return self.dfu_version == _BCD_DFUSE


@dataclass(frozen=True)
class Status:
    status: int
    poll_timeout_ms: int
    state: int
    string_index: int


@dataclass(frozen=True)
class AltSetting:
    number: int
    text: str  # the interface string as the board sent it (untrusted)

    @property
    def name(self) -> str:
        """The alt's name: the layout's name for DfuSe ("Internal Flash"), else the whole string."""
        return self.text[1:].split("/", 1)[0].strip() if is_layout(self.text) else self.text.strip()


class DfuHost:
    """The DFU interface of one board. Use as a context manager, or call `close()`."""

    def __init__(self, device: usb.core.Device, timeout_ms: int = 5000):
        self.device = device
        self.timeout_ms = timeout_ms
        self._stop = threading.Event()
        self._stop_reason = ""
        try:
            self._open()
        except DfuError:
            self.close()
            raise

    def _open(self) -> None:
        device = self.device
        try:
            device.set_configuration()
            config = device.get_active_configuration()
        except usb.core.USBError as error:
            raise self._usb_failure(error, "opening the board") from None
        interfaces = [i for i in config if (i.bInterfaceClass, i.bInterfaceSubClass) == (_DFU_CLASS, _DFU_SUBCLASS)]
        if not interfaces:
            raise DfuError(f"USB device {device.idVendor:04x}:{device.idProduct:04x} has no DFU interface; "
                           "it is not a DFU bootloader")
        if all(i.bInterfaceProtocol == _RUNTIME for i in interfaces):
            raise DfuError("the board is running its application, not its DFU bootloader; put it into DFU mode")
        self.interface = next(i for i in interfaces if i.bInterfaceProtocol == _DFU_MODE).bInterfaceNumber
        mine = [i for i in interfaces if i.bInterfaceNumber == self.interface]
        self.functional = self._functional_descriptor(config, mine)
        if self.functional.transfer_size == 0:
            raise DfuError("the board's DFU descriptor gives a transfer size of 0; its bootloader is damaged")
        self.alts = [AltSetting(i.bAlternateSetting, self._string(i.iInterface)) for i in mine]
        self.alt = self.select(self.alts[0].number)

    def __enter__(self) -> DfuHost:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        usb.util.dispose_resources(self.device)

    def cancel(self, reason: str = "stopped") -> None:
        """Stop the running operation at its next block or poll (safe from any thread)."""
        self._stop_reason = reason
        self._stop.set()

    # -- alt settings ------------------------------------------------------------------------------------------

    def select(self, alt: int | str) -> AltSetting:
        """Switch to an alt setting by number or by name ("Internal Flash", "SPI Flash : SST25x", "DCT Flash")."""
        chosen = next((a for a in self.alts if (a.number == alt if isinstance(alt, int)
                                                else _same_name(a.name, alt))), None)
        if chosen is None:
            have = ", ".join(f"{a.number} {shown(a.name)}" for a in self.alts)
            raise DfuError(f"the board has no DFU alt setting {alt!r}; it offers {have}")
        try:
            self.device.set_interface_altsetting(interface=self.interface, alternate_setting=chosen.number)
        except usb.core.USBError as error:
            raise self._usb_failure(error, f"selecting alt setting {chosen.number}") from None
        self.alt = chosen
        return chosen

    @property
    def layout(self) -> MemoryLayout:
        """The selected alt's DfuSe memory layout (parsed when asked: a damaged one on an unused alt is harmless)."""
        if not (self.functional.is_dfuse and is_layout(self.alt.text)):
            raise DfuError(f"alt setting {self.alt.number} {shown(self.alt.name)} has no DfuSe memory layout; "
                           "the board speaks plain DFU 1.1, which has no addresses")
        return parse_layout(self.alt.text)

    # -- DFU 1.1 requests --------------------------------------------------------------------------------------

    def get_status(self) -> Status:
        try:
            return self._raw_status()
        except usb.core.USBError as error:
            raise self._usb_failure(error, "asking the board for its status") from None

    def get_state(self) -> int:
        return self._control_in(Request.GETSTATE, 0, 1, "asking the board for its state")[0]

    def clear_status(self) -> None:
        self._control_out(Request.CLRSTATUS, 0, b"", "clearing the board's error")

    def abort(self) -> None:
        self._control_out(Request.ABORT, 0, b"", "returning the board to idle")

    def to_idle(self) -> None:
        """Bring the board to dfuIDLE from wherever it is, or say why it will not go."""
        for _ in range(_IDLE_TRIES):
            status = self.get_status()
            if status.state == State.IDLE and status.status == 0:
                return
            if status.state in (State.APP_IDLE, State.APP_DETACH):
                raise DfuError("the board is running its application, not its DFU bootloader; put it into DFU mode")
            if status.state == State.ERROR or status.status:
                self.clear_status()
            elif status.state in (State.DNLOAD_IDLE, State.UPLOAD_IDLE):
                self.abort()
            else:
                self._wait(status.poll_timeout_ms)
        raise DfuError(f"the board is stuck in {state_name(status.state)} ({status_words(status.status)}) and "
                       "does not return to idle; unplug it and plug it back in")

    # -- DfuSe -------------------------------------------------------------------------------------------------

    def dfuse_commands(self) -> bytes:
        """The DfuSe commands the board supports (UPLOAD block 0), e.g. 00 21 41 92."""
        self.to_idle()
        commands = bytes(self._control_in(Request.UPLOAD, 0, self.functional.transfer_size,
                                          "asking the board for its DfuSe commands"))
        self.to_idle()
        return commands

    def set_address(self, address: int) -> None:
        self._command(b"\x21" + address.to_bytes(4, "little"), f"setting the address to 0x{address:08X}")

    def erase_page(self, address: int) -> None:
        self._command(b"\x41" + address.to_bytes(4, "little"), f"erasing the page at 0x{address:08X}")

    def mass_erase(self) -> None:
        self._command(b"\x41", "erasing the whole memory")

    def write(self, address: int, data: bytes, progress: Progress | None = None, mass_erase: bool = False) -> None:
        """Erase the pages [address, address+len) touches (or everything, if asked), then write `data` there.

        The range is checked against the selected alt's layout first: nothing is erased or written when it
        leaves the layout, overruns it or touches a read-only segment. Bytes in the touched pages but outside
        the range end up erased; read them first if they matter. The board is left in dfuDNLOAD-IDLE.
        """
        layout = self.layout
        layout.check_write(address, len(data))
        self._require(self.functional.can_download, "accept downloads")
        self.to_idle()
        if mass_erase:
            self.mass_erase()
        else:
            for page in layout.pages(address, address + len(data)):
                if layout.segment_at(page).erasable:  # type: ignore[union-attr]  # pages lie in segments
                    self._check_stop()
                    self.erase_page(page)
        for offset, chunk in self._chunks(data, progress):
            self.set_address(address + offset)
            self._download_block(2, chunk, f"writing {len(chunk)} bytes at 0x{address + offset:08X}")

    def read(self, address: int, length: int, progress: Progress | None = None) -> bytes:
        """Read [address, address+length) back with DfuSe UPLOAD; the board is left in dfuIDLE."""
        layout = self.layout
        layout.check_read(address, length)
        self._require(self.functional.can_upload, "allow reading back")
        self.to_idle()
        size, out = self.functional.transfer_size, bytearray()
        while len(out) < length:
            start = address + len(out)
            self.set_address(start)
            self.abort()  # UPLOAD must start from dfuIDLE; the address pointer stays
            for block in range(2, 0x10000):  # wBlockNum is 16 bits: re-address when it would wrap
                self._check_stop()
                want = min(size, length - len(out))
                at = start + (block - 2) * size
                got = self._control_in(Request.UPLOAD, block, want, f"reading {want} bytes at 0x{at:08X}")
                if len(got) != want:
                    raise DfuError(f"the board sent {len(got)} bytes instead of {want} when reading at "
                                   f"0x{at:08X}; the read-back is incomplete")
                out += got
                if progress:
                    progress(len(out), length)
                if len(out) == length:
                    break
        self.to_idle()
        return bytes(out)

    # -- plain DFU 1.1 -----------------------------------------------------------------------------------------

    def download(self, data: bytes, progress: Progress | None = None) -> None:
        """Plain DFU 1.1 download: blocks 0, 1, 2… of wTransferSize. Call `leave()` next to manifest it."""
        self._require(self.functional.can_download, "accept downloads")
        if not data:
            raise DfuError("nothing to download: the image is empty")
        self.to_idle()
        for number, (offset, chunk) in enumerate(self._chunks(data, progress)):
            self._download_block(number & 0xFFFF, chunk, f"downloading bytes {offset}-{offset + len(chunk) - 1}")

    # -- leaving -----------------------------------------------------------------------------------------------

    def leave(self, address: int | None = None) -> LeaveOutcome:
        """Ask the board to leave DFU mode and run its firmware; say how it answered.

        DfuSe boards get SET_ADDRESS first (the jump address; default: the start of the selected alt's
        memory). Confirm what was written with a read-back made BEFORE this: afterwards the board is gone.
        """
        try:
            if self.functional.is_dfuse:
                self.to_idle()
                self.set_address(self.layout.segments[0].start if address is None else address)
            try:
                self._raw_out(Request.DNLOAD, 2 if self.functional.is_dfuse else 0, b"")
                status = self._raw_status()
                deadline = time.monotonic() + _BUSY_LIMIT_S
                while status.state == State.MANIFEST_SYNC and time.monotonic() < deadline:
                    self._wait(status.poll_timeout_ms)
                    status = self._raw_status()
            except usb.core.USBError as error:
                if error.errno in (errno.ENODEV, errno.EPIPE):
                    return LeaveOutcome.VANISHED
                raise self._usb_failure(error, "asking the board to leave DFU mode") from None
            if status.state in (State.MANIFEST, State.MANIFEST_WAIT_RESET):
                return LeaveOutcome.MANIFEST
            if status.state == State.DNLOAD_IDLE and status.status == 0:
                return LeaveOutcome.DNLOAD_IDLE
            if status.status:
                raise DfuError(f"the board did not leave DFU mode: {status_words(status.status)}")
            raise DfuError(f"the board did not leave DFU mode: it stayed in {state_name(status.state)}")
        finally:
            self.close()

    # -- internals ---------------------------------------------------------------------------------------------

    def _chunks(self, data: bytes, progress: Progress | None) -> Iterator[tuple[int, bytes]]:
        size, total = self.functional.transfer_size, len(data)
        if progress:
            progress(0, total)
        for offset in range(0, total, size):
            self._check_stop()
            chunk = data[offset:offset + size]
            yield offset, chunk
            if progress:
                progress(offset + len(chunk), total)

    def _command(self, payload: bytes, what: str) -> None:
        """A DfuSe command: it runs on the next GETSTATUS, which must show dfuDNBUSY, then dfuDNLOAD-IDLE."""
        self._control_out(Request.DNLOAD, 0, payload, what)
        status = self.get_status()
        if status.state != State.DNBUSY:
            self._fail(status, what, f"it answered {state_name(status.state)} instead of dfuDNBUSY")
        self._settle(status, what)

    def _download_block(self, number: int, chunk: bytes, what: str) -> None:
        self._control_out(Request.DNLOAD, number, chunk, what)
        self._settle(self.get_status(), what)

    def _settle(self, status: Status, what: str) -> None:
        """Poll while the board is busy, honouring bwPollTimeout; it must end in dfuDNLOAD-IDLE with status OK."""
        deadline = time.monotonic() + _BUSY_LIMIT_S
        while status.state in (State.DNBUSY, State.DNLOAD_SYNC) and status.status == 0:
            if time.monotonic() > deadline:
                raise DfuError(f"{what} failed: the board stayed busy for over {_BUSY_LIMIT_S:.0f} s; unplug it "
                               "and plug it back in")
            self._wait(status.poll_timeout_ms)
            status = self.get_status()
        if status.state != State.DNLOAD_IDLE or status.status:
            self._fail(status, what, f"it ended in {state_name(status.state)}")

    def _fail(self, status: Status, what: str, otherwise: str) -> None:
        """Raise the board's own error if it has one; leave it cleared so the next attempt can start."""
        if status.status or status.state == State.ERROR:
            try:
                self.clear_status()
            except DfuError:
                pass  # the error below is the one that matters
            raise DfuError(f"{what} failed: {status_words(status.status)}")
        raise DfuError(f"{what} failed: {otherwise}")

    def _wait(self, ms: int) -> None:
        """Wait bwPollTimeout before the next GETSTATUS (the board is busy until then); Stop cuts it short."""
        if ms:
            self._stop.wait(ms / 1000)
        self._check_stop()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            self.close()
            raise DfuError(f"{self._stop_reason}: the DFU transfer was abandoned part-way; the board's memory "
                           "may be half written")

    def _require(self, capable: bool, ability: str) -> None:
        if not capable:
            raise DfuError(f"the board's DFU descriptor says it does not {ability} (bmAttributes "
                           f"0x{self.functional.attributes:02X})")

    def _raw_out(self, request: Request, value: int, data: bytes) -> None:
        self.device.ctrl_transfer(_OUT, request, value, self.interface, data, self.timeout_ms)

    def _raw_status(self) -> Status:
        reply = self.device.ctrl_transfer(_IN, Request.GETSTATUS, 0, self.interface, 6, self.timeout_ms)
        if len(reply) != 6:
            raise DfuError(f"the board answered GETSTATUS with {len(reply)} bytes instead of 6")
        return Status(status=reply[0], poll_timeout_ms=int.from_bytes(reply[1:4], "little"), state=reply[4],
                      string_index=reply[5])

    def _control_out(self, request: Request, value: int, data: bytes, what: str) -> None:
        try:
            self._raw_out(request, value, data)
        except usb.core.USBError as error:
            raise self._usb_failure(error, what) from None

    def _control_in(self, request: Request, value: int, length: int, what: str) -> bytes:
        try:
            return bytes(self.device.ctrl_transfer(_IN, request, value, self.interface, length, self.timeout_ms))
        except usb.core.USBError as error:
            raise self._usb_failure(error, what) from None

    def _usb_failure(self, error: usb.core.USBError, what: str) -> DfuError:
        return DfuError(usb_error_reason(error, what))

    def _string(self, index: int) -> str:
        try:
            return usb.util.get_string(self.device, index) or ""
        except ValueError:  # no LANGID table: the board names nothing
            return ""
        except usb.core.USBError as error:
            raise self._usb_failure(error, "reading the board's alt-setting names") from None

    def _functional_descriptor(self, config, interfaces) -> FunctionalDescriptor:
        """The 0x21 descriptor, after the DFU interface (or, on some boards, in the configuration's extras)."""
        for extra in [bytes(i.extra_descriptors) for i in interfaces] + [bytes(config.extra_descriptors)]:
            at = 0
            while at + 2 <= len(extra) and extra[at] >= 2:
                length, kind = extra[at], extra[at + 1]
                if kind == _FUNCTIONAL and length >= 7 and at + length <= len(extra):
                    body = extra[at:at + length]
                    version = int.from_bytes(body[7:9], "little") if length >= 9 else 0x0100  # DFU 1.0: 7 bytes
                    return FunctionalDescriptor(attributes=body[2],
                                                detach_timeout_ms=int.from_bytes(body[3:5], "little"),
                                                transfer_size=int.from_bytes(body[5:7], "little"),
                                                dfu_version=version)
                at += length
        raise DfuError("the board's DFU interface has no DFU functional descriptor; its bootloader is damaged")


def _same_name(have: str, want: str) -> bool:
    return " ".join(have.split()).casefold() == " ".join(want.split()).casefold()
