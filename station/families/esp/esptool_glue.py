"""What it takes to drive many ports with esptool in one process.

1. esptool's logger is a process-wide singleton, so progress from parallel ports can't be told apart
   (espressif/esptool#1102). esptool logs from the calling thread, and each port runs in its own worker
   thread, so a logger that dispatches on a thread-local sink attributes every line and progress tick to
   the right port.
2. esptool formats hex dumps of every packet eagerly, even with tracing off (~2 s of a 2.9 s CLI run), and
   the formatting holds the GIL that the other ports need. The station never traces, so the dump is skipped.
3. pyserial's socket:// `in_waiting` answers 0 or 1, so esptool reads one byte per call (read-flash ~15×
   slower). Asking the kernel (FIONREAD) gives the real count. Only opening the port differs for TCP ports;
   the protocol path is the same for every board.
4. esptool's block checksum and SLIP reader loop over every byte in Python, holding the GIL the other ports
   (and the window) need: about half of the station's GIL time at 24 ports. Both are replaced by versions
   that work on whole buffers in C (int.from_bytes folding, bytes.find/replace); same results, same errors.
5. esptool deflates each image (zlib level 9) on the port's thread before sending it: 75 ms of CPU per board
   for a 1 MiB app, the same work for every board of a batch. esptool's `zlib` is given a `compress` that
   does each distinct image once per process (`precompress` starts it while the board connects).
6. Connecting (`connect_rom`): the reset that works on every port is tried first, and the chip is told by
   probes that don't end in fixed sleeps; see its docstring for what that does on a real board.
"""
from __future__ import annotations

import fcntl
import hashlib
import struct
import termios
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Iterable, Iterator, Protocol

import esptool.cmds
import esptool.loader
import serial
from esp_pylib.logger import EspLog, EspLogBase
from esptool.loader import ESPLoader
from esptool.reset import ClassicReset, ResetStrategy
from esptool.targets import ROM_LIST
from esptool.util import FatalError, UnsupportedCommandError
from serial.urlhandler import protocol_socket


class PortSink(Protocol):
    def log(self, level: str, message: str) -> None: ...

    def progress(self, done: int, total: int) -> None: ...


class _PortRoutedLog(EspLogBase):
    def __init__(self, fallback: EspLogBase | None):
        self._local = threading.local()
        self._fallback = fallback

    def _sink(self) -> PortSink | None:
        return getattr(self._local, "sink", None)

    def _emit(self, level: str, args: tuple, fallback_name: str, **kwargs) -> None:
        sink = self._sink()
        if sink is not None:
            text = " ".join(str(a) for a in args).strip()
            if text:
                sink.log(level, text)
        elif self._fallback is not None:
            getattr(self._fallback, fallback_name)(*args, **kwargs)

    def print(self, *args, **kwargs) -> None:
        self._emit("debug", args, "print", **kwargs)

    def note(self, *args) -> None:
        self._emit("debug", args, "note")  # esptool's notes are for developers; warnings stay visible

    def hint(self, *args) -> None:
        self._emit("info", args, "hint")

    def debug(self, *args) -> None:
        self._emit("debug", args, "debug")

    def warn(self, *args, suggestion: str | None = None) -> None:
        self._emit("warning", args, "warn", suggestion=suggestion)

    def err(self, *args, suggestion: str | None = None) -> None:
        self._emit("error", args, "err", suggestion=suggestion)

    def set_verbosity(self, mode) -> None:
        if self._fallback is not None:
            self._fallback.set_verbosity(mode)

    def stage(self, finish: bool = False) -> None:
        if self._sink() is None and self._fallback is not None:
            self._fallback.stage(finish)

    def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                     bar_length: int = 30) -> None:
        sink = self._sink()
        if sink is not None:
            sink.progress(cur_iter, total_iters)
        elif self._fallback is not None:
            self._fallback.progress_bar(cur_iter, total_iters, prefix, suffix, bar_length)


_router: _PortRoutedLog | None = None
_install_lock = threading.Lock()


def install() -> None:
    """Install the routing logger and the two speed fixes, once per process."""
    global _router
    with _install_lock:
        if _router is not None:
            return
        _router = _PortRoutedLog(EspLog.instance)
        EspLog.set_logger(_router)
        esptool.loader.HexFormatter.__str__ = lambda self: f"<{len(self._s)} bytes>"
        protocol_socket.Serial.in_waiting = property(_socket_in_waiting)
        ESPLoader.checksum = staticmethod(checksum)
        esptool.loader.slip_reader = slip_reader  # flush_input() looks it up here for every new reader
        esptool.cmds.zlib = _shared_zlib


@contextmanager
def routed_to(sink: PortSink) -> Iterator[None]:
    """Everything esptool logs from this thread inside the block goes to `sink`."""
    install()
    assert _router is not None
    previous = _router._sink()
    _router._local.sink = sink
    try:
        yield
    finally:
        _router._local.sink = previous


def _socket_in_waiting(self) -> int:
    if not self.is_open:
        from serial import PortNotOpenError

        raise PortNotOpenError()
    buf = fcntl.ioctl(self._socket.fileno(), termios.FIONREAD, struct.pack("I", 0))
    return struct.unpack("I", buf)[0]


# --- one deflate per distinct image ----------------------------------------------------------------------------


class _SharedCompress:
    """zlib as esptool.cmds uses it, with `compress` remembered by content for the last few distinct images.
    Concurrent requests for the same image wait for the one computing it (zlib releases the GIL meanwhile)."""

    KEEP = 8  # distinct images remembered: a batch flashes one firmware set, payloads differ per board

    def __init__(self):
        self._lock = threading.Lock()
        self._results: OrderedDict[tuple[bytes, int], Future] = OrderedDict()

    def __getattr__(self, name: str):
        return getattr(zlib, name)  # decompressobj and the rest: zlib's own

    def compress(self, data: bytes, level: int = -1) -> bytes:
        key = (hashlib.sha256(data).digest(), level)
        with self._lock:
            future = self._results.get(key)
            mine = future is None
            if mine:
                future = self._results[key] = Future()
                while len(self._results) > self.KEEP:
                    self._results.popitem(last=False)
            else:
                self._results.move_to_end(key)
        if mine:
            try:
                future.set_result(zlib.compress(data, level))
            except BaseException as exc:
                with self._lock:
                    self._results.pop(key, None)
                future.set_exception(exc)
        return future.result()


_shared_zlib = _SharedCompress()


def precompress(images: Iterable[bytes]) -> None:
    """Deflate firmware images the way esptool's write_flash will (padded to 4 bytes, level 9), ahead of it."""
    for data in images:
        _shared_zlib.compress(data + b"\xff" * (-len(data) % 4), 9)


# --- C-speed checksum and SLIP framing -----------------------------------------------------------------------


def checksum(data: bytes, state: int = ESPLoader.ESP_CHECKSUM_MAGIC) -> int:
    """The ROM's block checksum (XOR of every byte, seeded), by folding the buffer as one integer in halves."""
    value, size = int.from_bytes(data, "little"), len(data)
    while size > 1:
        half = (size + 1) // 2
        value = (value >> (8 * half)) ^ (value & ((1 << (8 * half)) - 1))
        size = half
    return state ^ value


class SlipError(FatalError):
    """Bytes on the line that are not SLIP framing (noise, or the board printing instead of answering)."""


def slip_reader(port: serial.Serial, _trace=None) -> Iterator[bytes]:
    """esptool's SLIP reader contract: yield each packet's payload, raise FatalError when the line goes quiet
    (the port's read timeout) or carries something that is not a packet."""
    raw = bytearray()  # the escaped bytes of the packet being received
    inside = False
    seen_packet = False
    while True:
        chunk = port.read(port.in_waiting or 1)
        if not chunk:
            if inside:
                raise FatalError(f"Packet content transfer stopped (received {len(raw)} bytes).")
            raise FatalError("Serial data stream stopped: Possible serial noise or corruption." if seen_packet
                             else "No serial data received.")
        pos = 0
        while pos < len(chunk):
            if not inside:
                if chunk[pos] != 0xC0:
                    _refuse(port, chunk, f"Invalid head of packet (0x{chunk[pos]:02x}): "
                                         "Possible serial noise or corruption.")
                inside, pos = True, pos + 1
                continue
            end = chunk.find(b"\xc0", pos)
            if end < 0:
                raw += chunk[pos:]
                break
            raw += chunk[pos:end]
            pos, inside, seen_packet = end + 1, False, True
            yield _unescape(port, raw, chunk)
            raw.clear()


def _unescape(port: serial.Serial, raw: bytearray, chunk: bytes) -> bytes:
    escapes = raw.count(b"\xdb")
    if escapes == 0:
        return bytes(raw)
    if escapes != raw.count(b"\xdb\xdc") + raw.count(b"\xdb\xdd"):  # every 0xDB must start an escape pair
        _refuse(port, chunk, "Invalid SLIP escape (0xdb followed by something other than 0xdc or 0xdd).")
    return bytes(raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))  # this order: see SLIP


def _refuse(port: serial.Serial, chunk: bytes, message: str) -> None:
    """What is not SLIP may be the board's panic output; say so when it is."""
    text = chunk + port.read(port.in_waiting)
    if b"Guru Meditation Error" in text or b"Fatal exception" in text:
        raise SlipError("Guru Meditation Error detected: the board crashed instead of answering.")
    raise SlipError(message)


# --- connecting ----------------------------------------------------------------------------------------------


class WrongChip(Exception):
    def __init__(self, wanted: str, found: str):
        super().__init__(f"Wrong chip: profile wants {wanted}, board is {found}")
        self.wanted, self.found = wanted, found


def connect_rom(port: serial.Serial, chip: str | None, attempts: int, mode: str = "default-reset") -> ESPLoader:
    """Reset the board into its ROM loader (`mode` "no-reset": it is there already), sync, and tell which chip
    it is; the loader object for that chip.

    Reset order: esptool on Linux tries UnixTightReset (DTR and RTS in one TIOCMSET ioctl) before ClassicReset
    (the pyserial dtr/rts setters). Here ClassicReset comes first at each delay, then the tight one: it is the
    sequence esptool used on every OS until v4.5 and still uses on Windows and rfc2217, so it resets boards on
    real bridges; ports without the modem-line ioctl (espsim://, some USB-serial drivers) no longer lose two
    timed-out attempts (1.5 s) before it. A bridge that glitches with sequential writes still gets the tight
    reset on the second attempt.

    Chip: esptool's detect_chip asks GET_SECURITY_INFO first, which ESP32 and ESP8266 ROMs answer with
    "invalid message", and esptool then sleeps 0.2 s per try to drain the repeats (0.41 s per board). The
    magic-value register is read first here (every ROM answers READ_REG, ESP32 and ESP8266 say who they are
    by it); only chips that don't (ESP32-C3 and later) are asked for their chip ID. With `chip` (the one chip
    the profile allows) a board that is something else raises `WrongChip` before anything is uploaded.
    """
    probe = _tty_first(ESPLoader(port, ESPLoader.ESP_ROM_BAUD))
    probe.connect(mode, attempts, detecting=True)  # detecting: no chip checks, _identify does them
    cls, security = _identify(probe)
    if chip is not None and cls.CHIP_NAME != chip:
        raise WrongChip(chip, cls.CHIP_NAME)
    esp = cls(port, ESPLoader.ESP_ROM_BAUD)
    esp.sync_stub_detected = probe.sync_stub_detected  # run_stub skips the upload when a stub answered
    if security is not None:
        esp.secure_download_mode = security["parsed_flags"]["SECURE_DOWNLOAD_ENABLE"]
    esp._post_connect()
    return esp


def _identify(probe: ESPLoader) -> tuple[type[ESPLoader], dict | None]:
    """The chip's loader class, and its security info when it was asked for."""
    try:
        magic = probe.read_reg(ESPLoader.CHIP_DETECT_MAGIC_REG_ADDR)
    except UnsupportedCommandError:  # secure download mode refuses READ_REG; the chip ID still answers
        magic = None
    for cls in ROM_LIST:
        if cls.USES_MAGIC_VALUE and magic == cls.MAGIC_VALUE:
            return cls, None
    security = probe.get_security_info()
    for cls in ROM_LIST:
        if not cls.USES_MAGIC_VALUE and security["chip_id"] == cls.IMAGE_CHIP_ID:
            return cls, security
    shown = "none" if magic is None else f"{magic:#010x}"
    raise FatalError(f"Unknown chip (magic value {shown}, chip ID {security['chip_id']}): not a chip this "
                     "esptool supports")


def _tty_first(esp: ESPLoader) -> ESPLoader:
    """Order the loader's reset strategies: at each delay, ClassicReset before UnixTightReset."""
    build = esp._construct_reset_strategy_sequence

    def ordered(mode: str) -> tuple[ResetStrategy, ...]:
        return tuple(sorted(build(mode), key=lambda s: (s.reset_delay, not isinstance(s, ClassicReset))))

    esp._construct_reset_strategy_sequence = ordered
    return esp
