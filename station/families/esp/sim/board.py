"""One emulated ESP board: SPI NOR flash plus the serial download protocol the stock esptool speaks.

Byte flow: a transport (esp_server) hands received bytes to `EspBoard.receive`, which passes them to the current
*mode* object; modes answer through `EspBoard.send`. Modes are swapped as the chip would change state:

    reset with IO0 low -> RomLoader --MEM_END(entry in uploaded RAM)--> StubLoader
    RomLoader/StubLoader --FLASH_END(run user code) / RUN_USER_CODE--> app mode (`EspBoard.app_mode_factory`)
    reset with IO0 high (SPI boot) -> ROM boot log -> bootloader in flash? -> app mode, else "invalid header"

Resets come from the dev board's auto-reset circuit (`EspBoard.set_lines`: the USB bridge's DTR/RTS drive EN
and IO0 through two transistors) when the transport carries modem lines (espsim://), and from the connection
itself on transports that cannot (socket://, pty: `EspBoard.reset`, always into download mode).

The app mode is what the flashed firmware does after boot: by default `flashed_app` looks at the app in
flash and runs the on-board identity agent (station.families.esp.sim.agent) and Improv Wi-Fi serial
(station.families.esp.sim.improv) when the app declares them, else a silent app.
Stub code is never executed; uploading it only switches behaviour.
"""
from __future__ import annotations

import hashlib
import logging
import struct
import threading
import zlib
from dataclasses import dataclass, replace
from typing import Callable, Protocol

from station.families.esp.sim.chips import (
    MIB, ChipFacts, chip_facts, format_mac, mac_for, parse_flash_size, rdid_bytes, sfdp_table,
)

log = logging.getLogger(__name__)

ROM_BAUD = 115200
# EN's RC (10 kΩ with 0.1-1 µF on dev boards) rises past the reset threshold 1-15 ms after the bridge lets go;
# modelled at 20 ms, so a ClassicReset whose thread is preempted between its two writes still works, and
# well under esptool's 50 ms before it lets IO0 go again.
EN_RISE_S = 0.02
SECTOR = 0x1000
SYNC_PAYLOAD = b"\x07\x07\x12\x20" + b"\x55" * 32
ROM_SYNC_VALUE = 0x20120707  # the ROM echoes the first sync word; a stub answers 0

# --- SLIP ----------------------------------------------------------------------------------------------------------


def slip_encode(packet: bytes) -> bytes:
    return b"\xc0" + packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def slip_unescape(body: bytes) -> bytes:
    # DB DC first: every DB in an escaped body starts an escape, so this order cannot mis-pair bytes.
    return body.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")


class SlipDecoder:
    """Splits a byte stream on C0. Bytes between frames (boot noise) come out as junk frames the caller drops."""

    MAX_FRAME = 1 << 20

    def __init__(self):
        self._tail = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        if b"\xc0" not in data:
            self._tail += data
            if len(self._tail) > self.MAX_FRAME:
                self._tail.clear()  # no delimiter for a megabyte: line noise, not a frame
            return []
        self._tail += data
        parts = self._tail.split(b"\xc0")
        self._tail = bytearray(parts.pop())
        return [slip_unescape(bytes(p)) for p in parts if p]

    def take_tail(self) -> bytes:
        """Bytes after the last delimiter (a frame still arriving); the decoder forgets them."""
        tail, self._tail = bytes(self._tail), bytearray()
        return tail


def xor_checksum(data: bytes, seed: int = 0xEF) -> int:
    """The ROM checksum (seed 0xEF XOR every byte), folded as one big integer instead of a per-byte loop."""
    if not data:
        return seed
    width = 8
    while width < len(data) * 8:
        width *= 2
    value = int.from_bytes(data, "little")
    while width > 8:
        width //= 2
        value = (value >> width) ^ (value & ((1 << width) - 1))
    return (value ^ seed) & 0xFF


# --- NOR flash -----------------------------------------------------------------------------------------------------


class FlashRangeError(ValueError):
    pass


class NorFlash:
    """SPI NOR semantics: erase sets whole 4 KiB sectors to FF, programming can only clear bits (AND)."""

    def __init__(self, size: int):
        self.size = size
        self.data = bytearray(b"\xff") * size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FlashRangeError(f"0x{offset:x}+0x{length:x} is outside {self.size} bytes of flash")

    def erase(self, offset: int, length: int) -> None:
        """Erase every sector touched by [offset, offset+length)."""
        if length <= 0:
            return
        start = offset - offset % SECTOR
        end = min(-(-(offset + length) // SECTOR) * SECTOR, self.size)
        self._check(start, end - start)
        self.data[start:end] = b"\xff" * (end - start)

    def erase_all(self) -> None:
        self.data[:] = b"\xff" * self.size

    def program(self, offset: int, chunk: bytes) -> None:
        self._check(offset, len(chunk))
        old = self.data[offset:offset + len(chunk)]
        n = len(chunk)
        anded = int.from_bytes(old, "little") & int.from_bytes(chunk, "little")
        self.data[offset:offset + n] = anded.to_bytes(n, "little")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self.data[offset:offset + length])

    def md5(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return hashlib.md5(memoryview(self.data)[offset:offset + length]).digest()


# --- faults --------------------------------------------------------------------------------------------------------


@dataclass
class EspFaults:
    """Misbehaviours a station must cope with. All off by default."""

    no_sync: bool = False  # download mode, but the ROM never answers (TX path down)
    # the auto-reset circuit never pulls IO0 low (a broken transistor, a board without one): every reset it does
    # boots from SPI flash, so the boot log says SPI_FAST_FLASH_BOOT and the ROM loader never listens
    # (socket://: silence after the log). Only the BOOT button (EspBoard.hold_boot) still pulls IO0 low.
    wrong_boot_mode: bool = False
    bad_md5: bool = False  # SPI_FLASH_MD5 and READ_FLASH digests are wrong
    flash_write_error: bool = False  # FLASH_DATA / FLASH_DEFL_DATA answer a flash write error
    unplug_after_bytes: int | None = None  # vanish after this many flash-data payload bytes (one-shot)
    # the on-board identity agent (station.families.esp.sim.agent), when the flashed app runs one
    agent_garbage: bool = False  # answers every request with bytes that are not agent frames
    agent_silent: bool = False  # the app declares the agent, but it never answers
    agent_bad_crc: bool = False  # every answer frame carries a wrong CRC-32
    agent_commit_refused: bool = False  # COMMIT fails: the secure-storage write is refused

    KINDS = ("no_sync", "wrong_boot_mode", "bad_md5", "flash_write_error", "unplug_after_bytes",
             "agent_garbage", "agent_silent", "agent_bad_crc", "agent_commit_refused")

    def with_fault(self, kind: str, arg: str | None = None) -> "EspFaults":
        """`kind[=arg]` as given on the command line, e.g. ("unplug_after_bytes", "65536")."""
        kind = kind.replace("-", "_")
        if kind not in self.KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose from {', '.join(self.KINDS)}")
        if kind == "unplug_after_bytes":
            if arg is None:
                raise ValueError("unplug_after_bytes needs a byte count, e.g. unplug_after_bytes=65536")
            return replace(self, unplug_after_bytes=int(arg, 0))
        return replace(self, **{kind: True})


# --- modes ---------------------------------------------------------------------------------------------------------


class BoardMode(Protocol):
    """Whatever currently owns the board's serial byte stream."""

    def receive(self, data: bytes) -> None: ...


class DeafMode:
    """Hears nothing: a ROM whose TX path is down, or a chip that booted the wrong way."""

    def __init__(self, board: "EspBoard"):
        self.board = board

    def receive(self, data: bytes) -> None:
        pass


class IdleAppMode:
    """An app that ignores its UART: swallows input. `EspBoard.app_mode_factory` picks what the app does."""

    def __init__(self, board: "EspBoard"):
        self.board = board

    def receive(self, data: bytes) -> None:
        pass


class SharedUart:
    """An app running several serial protocols on one UART (the identity agent and Improv): each hears every
    byte and answers only its own frames."""

    def __init__(self, modes: list[BoardMode]):
        self.modes = modes

    def receive(self, data: bytes) -> None:
        for mode in self.modes:
            mode.receive(data)


def flashed_app(board: "EspBoard") -> BoardMode:
    """The default app: whatever the app in flash declares (the identity agent, Improv Wi-Fi), else an idle app."""
    from station.families.esp.sim.agent import agent_for_flash  # these import this module
    from station.families.esp.sim.improv import ImprovMode, app_declares_improv

    modes: list[BoardMode] = [m for m in (agent_for_flash(board),) if m is not None]
    if app_declares_improv(board):
        modes.append(ImprovMode(board))
    return modes[0] if len(modes) == 1 else SharedUart(modes) if modes else IdleAppMode(board)


class Op:
    FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
    MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
    SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
    SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
    FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END, SPI_FLASH_MD5 = 0x10, 0x11, 0x12, 0x13
    GET_SECURITY_INFO = 0x14
    ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3


class LoaderError(Exception):
    """A command failed; `kind` is mapped to the ROM's or the stub's error byte by the loader."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


@dataclass
class _FlashSession:
    offset: int
    size: int  # stub: exact bytes to write; ROM: the erase size it was given
    block_size: int
    compressed: bool
    erase_next: int  # stub erases just in time; next sector not yet erased
    erase_end: int
    next_seq: int = 0
    written: int = 0
    inflater: "zlib._Decompress | None" = None


@dataclass
class RamSegment:
    """One MEM_BEGIN upload: kept (never executed) so MEM_END can tell whether its entry point is in it."""

    offset: int
    size: int
    block_size: int
    data: bytearray
    next_seq: int = 0


@dataclass
class _ReadJob:
    offset: int
    length: int
    packet: int
    window: int
    sent: int = 0
    acked: int = 0


class _Loader:
    """What the ROM loader and the flasher stub share: framing, validation, registers, RAM and flash writes."""

    is_stub = False
    status_len = 2
    errors: dict[str, int] = {}

    def __init__(self, board: "EspBoard"):
        self.board = board
        self.chip = board.chip
        self.slip = SlipDecoder()
        self.session: _FlashSession | None = None
        self.handlers: dict[int, Callable[[bytes, int], None]] = {
            Op.SYNC: self.on_sync,
            Op.READ_REG: self.on_read_reg,
            Op.WRITE_REG: self.on_write_reg,
            Op.MEM_BEGIN: self.on_mem_begin,
            Op.MEM_DATA: self.on_mem_data,
            Op.MEM_END: self.on_mem_end,
            Op.FLASH_BEGIN: self.on_flash_begin,
            Op.FLASH_DATA: self.on_flash_data,
            Op.FLASH_END: self.on_flash_end,
        }

    # framing

    def receive(self, data: bytes) -> None:
        frames = self.slip.feed(data)
        for i, frame in enumerate(frames):
            if self.board.mode is not self:
                self._hand_over(frames[i:])
                return
            self.on_frame(frame)
        if self.board.mode is not self:
            self._hand_over([])

    def _hand_over(self, frames: list[bytes]) -> None:
        # A frame changed state (stub started, app booted, board vanished) mid-chunk: the bytes after it
        # belong to whoever owns the stream now, re-framed exactly as they arrived.
        tail = self.slip.take_tail()
        rest = b"".join(map(slip_encode, frames)) + (b"\xc0" + tail if tail else b"")
        if rest:
            self.board.mode.receive(rest)

    def on_frame(self, frame: bytes) -> None:
        if len(frame) < 8 or frame[0] != 0x00:
            return  # not a request: noise between frames, ignored like the ROM does
        _, op, size, checksum = struct.unpack_from("<BBHI", frame)
        data = frame[8:]
        handler = self.handlers.get(op)
        if handler is None:
            self.unsupported(op)
            return
        if size != len(data):
            self.fail(op, "bad_len")
            return
        try:
            handler(data, checksum)
        except LoaderError as e:
            self.fail(op, e.kind)
        except FlashRangeError as e:
            log.debug("%s: op 0x%02x outside flash: %s", self.board.name, op, e)
            self.fail(op, "flash_read" if op in (Op.READ_FLASH_SLOW, Op.SPI_FLASH_MD5, Op.READ_FLASH) else "flash_write")

    def status_bytes(self, error: int) -> bytes:
        # ROM: [1, code] (esptool shows "0108"); the stub puts its code in the first byte: [0xC4, 0] ("C400")
        if not error:
            return bytes(self.status_len)
        pair = (error, 0) if self.is_stub else (1, error)
        return bytes(pair).ljust(self.status_len, b"\x00")

    def reply(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        status = self.status_bytes(error)
        body = data + status
        self.board.send(slip_encode(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def fail(self, op: int, kind: str) -> None:
        self.reply(op, error=self.errors.get(kind, self.errors["bad_len"]))

    def unsupported(self, op: int) -> None:
        raise NotImplementedError

    # helpers

    @staticmethod
    def words(data: bytes, count: int) -> tuple[int, ...]:
        if len(data) != 4 * count:
            raise LoaderError("bad_len")
        return struct.unpack(f"<{count}I", data)

    def data_block(self, data: bytes, checksum: int) -> tuple[int, bytes]:
        """Validate a *_DATA payload: `<IIII` length, seq, 0, 0, then the data with its XOR checksum."""
        if len(data) < 16:
            raise LoaderError("bad_len")
        length, seq = struct.unpack_from("<II", data)
        payload = data[16:]
        if length != len(payload):
            raise LoaderError("bad_len")
        if xor_checksum(payload) != checksum & 0xFF:
            raise LoaderError("bad_checksum")
        return seq, payload

    # commands both loaders answer

    def on_sync(self, data: bytes, _chk: int) -> None:
        if data != SYNC_PAYLOAD:
            return  # not a sync pattern: the autobaud logic would not lock either
        value = 0 if self.is_stub else ROM_SYNC_VALUE
        for _ in range(8):  # the ROM (and the stub, to mimic it) answers one SYNC eight times
            self.reply(Op.SYNC, value)

    def on_read_reg(self, data: bytes, _chk: int) -> None:
        (addr,) = self.words(data, 1)
        self.reply(Op.READ_REG, self.board.read_register(addr))

    def on_write_reg(self, data: bytes, _chk: int) -> None:
        if not data or len(data) % 16:
            raise LoaderError("bad_len")
        for addr, value, mask, _delay in struct.iter_unpack("<IIII", data):
            self.board.write_register(addr, value, mask)
        self.reply(Op.WRITE_REG)

    def on_mem_begin(self, data: bytes, _chk: int) -> None:
        size, _blocks, block_size, offset = self.words(data, 4)
        self.board.ram_segments.append(RamSegment(offset, size, block_size, bytearray(size)))
        self.reply(Op.MEM_BEGIN)

    def on_mem_data(self, data: bytes, checksum: int) -> None:
        if not self.board.ram_segments:
            raise LoaderError("not_in_mode")
        segment = self.board.ram_segments[-1]
        seq, payload = self.data_block(data, checksum)
        if seq != segment.next_seq:
            raise LoaderError("bad_seq")
        start = seq * segment.block_size
        if len(payload) > segment.block_size or start + len(payload) > segment.size:
            raise LoaderError("too_much")
        segment.data[start:start + len(payload)] = payload
        segment.next_seq += 1
        self.reply(Op.MEM_DATA)

    def on_mem_end(self, data: bytes, _chk: int) -> None:
        no_entry, entry = self.words(data, 2)
        self.reply(Op.MEM_END)
        if not no_entry:
            self.run_from_ram(entry)

    def run_from_ram(self, entry: int) -> None:
        pass

    def on_flash_data(self, data: bytes, checksum: int, op: int = Op.FLASH_DATA) -> None:
        session = self.session
        if session is None or session.compressed != (op == Op.FLASH_DEFL_DATA):
            raise LoaderError("not_in_mode")
        if self.board.count_flash_bytes(max(len(data) - 16, 0)):
            return  # the board just vanished mid-transfer: no answer, the link is gone
        seq, payload = self.data_block(data, checksum)
        if seq != session.next_seq:
            raise LoaderError("bad_seq")
        if len(payload) > session.block_size:
            raise LoaderError("bad_blocksize")
        if self.board.faults.flash_write_error:
            raise LoaderError("flash_write")
        if session.compressed:
            try:
                payload = session.inflater.decompress(payload)
            except zlib.error:
                raise LoaderError("inflate") from None
        self.write_flash(session, payload)
        session.next_seq += 1
        self.reply(op)

    def _begin(self, data: bytes, compressed: bool) -> None:
        raise NotImplementedError

    def write_flash(self, session: _FlashSession, chunk: bytes) -> None:
        raise NotImplementedError

    def on_flash_end(self, data: bytes, _chk: int, op: int = Op.FLASH_END) -> None:
        (run_user_code,) = self.words(data, 1)
        self.session = None
        # The chip answers, then jumps; the state change is recorded first so that whoever reads the
        # answer already sees the new state. The bytes on the wire are the same either way.
        if run_user_code:
            self.run_user_code_after_flash_end()
            self.reply(op)
        else:
            self.reply(op)
            self.board.reset()  # "reboot": the straps still select download mode

    def run_user_code_after_flash_end(self) -> None:
        self.board.on_app_boot()

    # shared by both loaders where the chip supports them

    def on_spi_set_params(self, data: bytes, _chk: int) -> None:
        self.words(data, 6)  # id, total size, block, sector, page, status mask: accepted, flash is fixed-size
        self.reply(Op.SPI_SET_PARAMS)

    def on_change_baudrate(self, data: bytes, _chk: int) -> None:
        new_baud, _old = self.words(data, 2)
        if new_baud == 0:
            raise LoaderError("bad_len")
        self.reply(Op.CHANGE_BAUDRATE)  # the answer still goes out at the old rate
        self.board.baud = new_baud

    def on_security_info(self, data: bytes, _chk: int) -> None:
        if data:
            raise LoaderError("bad_len")
        # flags, flash_crypt_cnt, 7 key purposes, chip_id, api_version: an open, unencrypted chip
        info = struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0, self.chip.image_chip_id, 0)
        self.reply(Op.GET_SECURITY_INFO, data=info)

    def md5_digest(self, offset: int, length: int) -> bytes:
        digest = self.board.flash.md5(offset, length)
        if self.board.faults.bad_md5:
            digest = hashlib.md5(digest).digest()
        return digest

    # FLASH_BEGIN and FLASH_DEFL_BEGIN differ between ROM and stub only in `_begin` (erase now or as it goes)
    def on_flash_begin(self, data: bytes, _chk: int) -> None:
        self._begin(data, compressed=False)
        self.reply(Op.FLASH_BEGIN)

    def on_defl_begin(self, data: bytes, _chk: int) -> None:
        self._begin(data, compressed=True)
        self.reply(Op.FLASH_DEFL_BEGIN)


class RomLoader(_Loader):
    """The mask-ROM serial loader: erases at FLASH_BEGIN, MD5 as hex text, 64-byte READ_FLASH_SLOW."""

    errors = {"bad_len": 0x05, "bad_seq": 0x05, "not_in_mode": 0x05, "too_much": 0x05, "bad_blocksize": 0x05,
              "failed": 0x06, "bad_checksum": 0x07, "flash_write": 0x08, "flash_read": 0x09, "read_len": 0x0A,
              "inflate": 0x0B}

    def __init__(self, board: "EspBoard"):
        super().__init__(board)
        self.status_len = self.chip.rom_status_len
        if self.chip.rom_spi_attach:
            self.handlers[Op.SPI_ATTACH] = self.on_spi_attach
            self.handlers[Op.SPI_SET_PARAMS] = self.on_spi_set_params
        if self.chip.rom_has_md5_and_deflate:
            self.handlers.update({
                Op.CHANGE_BAUDRATE: self.on_change_baudrate,
                Op.FLASH_DEFL_BEGIN: self.on_defl_begin,
                Op.FLASH_DEFL_DATA: lambda d, c: self.on_flash_data(d, c, Op.FLASH_DEFL_DATA),
                Op.FLASH_DEFL_END: lambda d, c: self.on_flash_end(d, c, Op.FLASH_DEFL_END),
                Op.SPI_FLASH_MD5: self.on_md5,
                Op.READ_FLASH_SLOW: self.on_read_flash_slow,
            })
        if self.chip.rom_has_security_info:
            self.handlers[Op.GET_SECURITY_INFO] = self.on_security_info

    def unsupported(self, op: int) -> None:
        # "invalid message", eight times, in a reply whose op does not match the request: esptool turns that
        # into UnsupportedCommandError (how ESP32/ESP8266 answer GET_SECURITY_INFO) and drains the copies.
        status = self.status_bytes(0x05)
        for _ in range(8):
            self.board.send(slip_encode(struct.pack("<BBHI", 1, 0, len(status), 0) + status))

    def on_spi_attach(self, data: bytes, _chk: int) -> None:
        self.words(data, 2)  # pin config + the ROM-only "legacy" word
        self.reply(Op.SPI_ATTACH)

    def _begin(self, data: bytes, compressed: bool) -> None:
        if len(data) != self.chip.rom_flash_begin_len:
            raise LoaderError("bad_len")
        erase_size, _blocks, block_size, offset = struct.unpack_from("<IIII", data)
        if block_size == 0:
            raise LoaderError("bad_blocksize")
        self.board.flash.erase(offset, self.rom_erase_length(offset, erase_size))
        self.session = _FlashSession(offset, erase_size, block_size, compressed, 0, 0,
                                     inflater=zlib.decompressobj() if compressed else None)

    def rom_erase_length(self, offset: int, erase_size: int) -> int:
        if not self.chip.rom_erase_bug or erase_size == 0:
            return erase_size
        # ESP8266 ROM bug: it erases the head sectors (up to the next 64 KiB block) twice over;
        # esptool's get_erase_size() sends a smaller size so the real erase lands where it wants.
        sectors = -(-erase_size // SECTOR)
        head = 16 - (offset // SECTOR) % 16
        return (sectors + min(sectors, head)) * SECTOR

    def write_flash(self, session: _FlashSession, chunk: bytes) -> None:
        start = session.offset + session.written
        chunk = chunk[:max(self.board.flash.size - start, 0)]  # padding past the end of flash is dropped
        try:
            self.board.flash.program(start, chunk)
        except FlashRangeError:
            raise LoaderError("flash_write") from None
        session.written += len(chunk)

    def on_md5(self, data: bytes, _chk: int) -> None:
        offset, length, _, _ = self.words(data, 4)
        self.reply(Op.SPI_FLASH_MD5, data=self.md5_digest(offset, length).hex().encode())

    def on_read_flash_slow(self, data: bytes, _chk: int) -> None:
        offset, length = self.words(data, 2)
        if length > 64:
            raise LoaderError("read_len")
        block = self.board.flash.read(offset, min(64, self.board.flash.size - offset))
        self.reply(Op.READ_FLASH_SLOW, data=block.ljust(64, b"\xff"))  # always a 64-byte buffer

    def run_from_ram(self, entry: int) -> None:
        if self.board.entry_in_uploaded_ram(entry):
            stub = StubLoader(self.board)
            self.board.mode = stub
            self.board.send(slip_encode(b"OHAI"))  # the stub's greeting, its only unsolicited packet
        else:
            log.warning("%s: MEM_END jumps to 0x%08x outside uploaded RAM; staying in ROM", self.board.name, entry)


class StubLoader(_Loader):
    """The flasher stub: 2-byte status, just-in-time erase, deflate, windowed READ_FLASH, raw MD5."""

    is_stub = True
    status_len = 2
    errors = {"bad_len": 0xC0, "bad_checksum": 0xC1, "bad_blocksize": 0xC2, "bad_seq": 0xC0, "failed": 0xC4,
              "flash_write": 0xC4, "flash_read": 0xC4, "read_len": 0xC0, "not_in_mode": 0xC6, "inflate": 0xC7,
              "not_enough": 0xC8, "too_much": 0xC9}

    def __init__(self, board: "EspBoard"):
        super().__init__(board)
        self.reading: _ReadJob | None = None
        self.handlers.update({
            Op.SPI_ATTACH: self.on_spi_attach,
            Op.SPI_SET_PARAMS: self.on_spi_set_params,
            Op.CHANGE_BAUDRATE: self.on_change_baudrate,
            Op.FLASH_DEFL_BEGIN: self.on_defl_begin,
            Op.FLASH_DEFL_DATA: lambda d, c: self.on_flash_data(d, c, Op.FLASH_DEFL_DATA),
            Op.FLASH_DEFL_END: lambda d, c: self.on_flash_end(d, c, Op.FLASH_DEFL_END),
            Op.SPI_FLASH_MD5: self.on_md5,
            Op.ERASE_FLASH: self.on_erase_flash,
            Op.ERASE_REGION: self.on_erase_region,
            Op.READ_FLASH: self.on_read_flash,
            Op.RUN_USER_CODE: self.on_run_user_code,
        })
        if self.chip.rom_has_security_info:
            self.handlers[Op.GET_SECURITY_INFO] = self.on_security_info

    def on_frame(self, frame: bytes) -> None:
        if self.reading is not None:
            self.on_read_ack(frame)
        else:
            super().on_frame(frame)

    def unsupported(self, op: int) -> None:
        self.reply(op, error=0xFF)  # stub: echoes the op, "command not implemented"

    def on_spi_attach(self, data: bytes, _chk: int) -> None:
        self.words(data, 1)
        self.reply(Op.SPI_ATTACH)

    def _begin(self, data: bytes, compressed: bool) -> None:
        if len(data) not in (16, 20):
            raise LoaderError("bad_len")
        size, _blocks, block_size, offset = struct.unpack_from("<IIII", data)
        if block_size == 0:
            raise LoaderError("bad_blocksize")
        if offset + size > self.board.flash.size:
            raise LoaderError("too_much")
        erase_start = offset - offset % SECTOR
        erase_end = -(-(offset + size) // SECTOR) * SECTOR
        self.session = _FlashSession(offset, size, block_size, compressed, erase_start, erase_end,
                                     inflater=zlib.decompressobj() if compressed else None)

    def write_flash(self, session: _FlashSession, chunk: bytes) -> None:
        remaining = session.size - session.written
        if session.compressed and len(chunk) > remaining:
            raise LoaderError("too_much")
        chunk = chunk[:remaining]  # an uncompressed last block arrives padded with FF
        if not chunk:
            return
        start = session.offset + session.written
        end = start + len(chunk)
        if session.erase_next < end:  # erase just in time, sector by sector, as the data reaches it
            erase_to = min(-(-end // SECTOR) * SECTOR, session.erase_end)
            self.board.flash.erase(session.erase_next, erase_to - session.erase_next)
            session.erase_next = erase_to
        self.board.flash.program(start, chunk)
        session.written += len(chunk)

    def on_flash_end(self, data: bytes, chk: int, op: int = Op.FLASH_END) -> None:
        if self.session is None:
            raise LoaderError("not_in_mode")
        if self.session.written < self.session.size:
            raise LoaderError("not_enough")
        super().on_flash_end(data, chk, op)

    def run_user_code_after_flash_end(self) -> None:
        pass  # the stub only leaves flash mode; esptool relies on that (it sends FLASH_END(1) then MD5)

    def on_md5(self, data: bytes, _chk: int) -> None:
        offset, length, _, _ = self.words(data, 4)
        self.reply(Op.SPI_FLASH_MD5, data=self.md5_digest(offset, length))

    def on_erase_flash(self, data: bytes, _chk: int) -> None:
        self.board.flash.erase_all()
        self.reply(Op.ERASE_FLASH)

    def on_erase_region(self, data: bytes, _chk: int) -> None:
        offset, length = self.words(data, 2)
        if offset % SECTOR or length % SECTOR:
            raise LoaderError("failed")
        self.board.flash.erase(offset, length)
        self.reply(Op.ERASE_REGION)

    def on_run_user_code(self, data: bytes, _chk: int) -> None:
        self.board.on_app_boot()  # no answer: esptool sends it with wait_response=False

    # READ_FLASH: answer, then data packets with at most `window` unacknowledged, then the MD5 of it all

    def on_read_flash(self, data: bytes, _chk: int) -> None:
        offset, length, packet, window = self.words(data, 4)
        if packet == 0 or window == 0:
            raise LoaderError("bad_len")
        if offset + length > self.board.flash.size:
            raise LoaderError("flash_read")
        self.reply(Op.READ_FLASH)
        self.reading = _ReadJob(offset, length, packet, window)
        self._pump_read()

    def _pump_read(self) -> None:
        job = self.reading
        while job.sent < job.length and job.sent - job.acked < job.window * job.packet:
            n = min(job.packet, job.length - job.sent)
            self.board.send(slip_encode(self.board.flash.read(job.offset + job.sent, n)))
            job.sent += n
        if job.acked >= job.length:
            self.reading = None
            self.board.send(slip_encode(self.md5_digest(job.offset, job.length)))

    def on_read_ack(self, frame: bytes) -> None:
        if len(frame) != 4:
            return  # the stub only listens for 4-byte acks here
        self.reading.acked = max(self.reading.acked, int.from_bytes(frame, "little"))
        self._pump_read()


# --- the board -----------------------------------------------------------------------------------------------------


class EspBoard:
    """An ESP chip on a dev board: identity, flash, registers, and whichever mode owns its serial line."""

    def __init__(self, chip: str | ChipFacts = "esp32", number: int = 1, *, seed: int = 0,
                 flash_size: int | str = 4 * MIB, faults: EspFaults | None = None):
        self.chip = chip if isinstance(chip, ChipFacts) else chip_facts(chip)
        self.number = number  # 1-based board number; sets the MAC
        self.mac = mac_for(self.chip, number, seed)
        self.flash = NorFlash(parse_flash_size(flash_size))
        self.faults = faults or EspFaults()
        self.app_mode_factory: Callable[[EspBoard], BoardMode] = flashed_app
        self.on_vanish: Callable[[EspBoard], None] | None = None  # set by the server: unplug me
        self.booted_app = False
        self.boot_count = 0
        self._boot_changed = threading.Condition()
        self.flash_bytes_received = 0
        self.identity = None  # the firmware's secure storage: the identity agent's key and certificates
        self.access_points: dict[str, str] = {}  # the Wi-Fi networks in range: SSID -> passphrase
        self.wifi: tuple[str, str] | None = None  # the network the firmware joined (SSID, passphrase), kept
        # the auto-reset circuit: DTR/RTS as the USB bridge drives them (True = asserted), in host time
        self.dtr = self.rts = False
        self.powered = True  # the server powers boards off while they are unplugged
        self.in_reset = False  # EN is (or was, and has not yet risen past the threshold) held low
        self.boot_held = False  # the BOOT button: pulls IO0 low while a person holds it
        self._released_at: float | None = None  # host time EN was let go; the straps are sampled EN_RISE_S later
        self._lines_at = 0.0
        self._send: Callable[[bytes], None] | None = None
        self._power_on_registers = self.chip.registers(self.mac)
        self._spi_answers = {0x9F: rdid_bytes(self.flash.size), 0x05: b"\x00", 0x35: b"\x00", 0x15: b"\x00",
                             0xAB: b"\x15"}
        self._sfdp = sfdp_table(self.flash.size)
        self.reset()

    @property
    def name(self) -> str:
        return f"{self.chip.name}#{self.number}"

    @property
    def mac_text(self) -> str:
        return format_mac(self.mac)

    # wiring to a transport

    def attach(self, send: Callable[[bytes], None]) -> None:
        self._send = send

    def detach(self, send: Callable[[bytes], None] | None = None) -> None:
        """Disconnect the transport (only if it is still `send`, when given: a newer line may own the board)."""
        if send is None or self._send == send:
            self._send = None

    def send(self, data: bytes) -> None:
        if self._send is not None:
            self._send(data)

    def receive(self, data: bytes) -> None:
        self.mode.receive(data)

    # chip state

    def reset(self) -> None:
        """EN reset as a transport without modem lines implies it (socket://, pty: the connection is the pulse):
        IO0 held low, fresh ROM loader, 115200 baud, no boot log. Flash is kept."""
        self._reset_chip_state()
        if self.faults.wrong_boot_mode and not self.boot_held:
            self.send(self.chip.boot_log_spi)
            self.mode: BoardMode = DeafMode(self)
        elif self.faults.no_sync:
            self.mode = DeafMode(self)
        else:
            self.mode = RomLoader(self)

    def _reset_chip_state(self) -> None:
        self.baud = ROM_BAUD
        self.registers = dict(self._power_on_registers)
        self.ram_segments: list[RamSegment] = []
        self.booted_app = False

    def power_off(self) -> None:
        """Unplugged: the chip stops (RAM state, a running stub, the app); flash and `identity` are kept."""
        self.powered = False
        self._released_at = None
        self.mode = DeafMode(self)

    def power_on(self) -> None:
        """USB power comes on with nobody holding DTR/RTS: EN and IO0 are pulled high, so the chip boots from flash."""
        self.powered = True
        self.dtr = self.rts = False
        self.in_reset = False
        self._released_at = None
        self.boot(download=False)

    def boot(self, download: bool) -> None:
        """The chip leaves reset. IO0 low: ROM download mode and its boot log; high: SPI boot into the firmware."""
        self._reset_chip_state()
        if download:
            self.send(self.chip.boot_log_download)
            self.mode = DeafMode(self) if self.faults.no_sync else RomLoader(self)
            log.info("%s: reset into download mode", self.name)
        else:
            self.send(self.chip.boot_log_spi)
            self._boot_from_flash()

    def _boot_from_flash(self) -> None:
        head = self.flash.read(self.chip.bootloader_offset, 4)
        if head[0] != 0xE9:  # the ROM finds no bootloader image (erased flash reads FF)
            self.send(f"invalid header: 0x{int.from_bytes(head, 'little'):08x}\r\n".encode())
            self.mode = DeafMode(self)
            return
        app = self.app_partition()
        if app is not None and self.flash.read(app[0], 1) != b"\xe9":
            self.send(b"E (58) boot: No bootable app partitions in the partition table\r\n")
            self.mode = DeafMode(self)
            return
        where = f" at offset 0x{app[0]:x}" if app else ""
        self.send(b"I (29) boot: 2nd stage bootloader\r\n" + f"I (63) boot: Loaded app from partition{where}\r\n".encode())
        self.on_app_boot()

    def app_partition(self) -> tuple[int, int] | None:
        """(offset, size) of the app the bootloader boots: factory, else ota_0, else the first app partition of
        the partition table at 0x8000 (otadata is not consulted). None without a valid table."""
        from station.families.esp.payloads import PayloadError
        from station.families.esp.payloads.partition_table import (
            SUBTYPE_APP_FACTORY, SUBTYPE_APP_OTA_0, TABLE_MAX_LENGTH, TABLE_OFFSET, TYPE_APP, parse_partition_table,
        )

        try:
            parts = parse_partition_table(self.flash.read(TABLE_OFFSET, TABLE_MAX_LENGTH))
        except (PayloadError, FlashRangeError):
            return None
        apps = [p for p in parts if p.type == TYPE_APP and p.offset < self.flash.size]
        for wanted in (SUBTYPE_APP_FACTORY, SUBTYPE_APP_OTA_0):
            for part in apps:
                if part.subtype == wanted:
                    return part.offset, min(part.size, self.flash.size - part.offset)
        return (apps[0].offset, min(apps[0].size, self.flash.size - apps[0].offset)) if apps else None

    # the auto-reset circuit of the dev board (two transistors between the USB bridge and the chip)

    def set_lines(self, dtr: bool, rts: bool, at: float) -> None:
        """The bridge's DTR/RTS changed at host time `at` (seconds).

        EN is pulled low while RTS∧¬DTR: the chip is held in reset and silent. When EN is let go it rises through
        the board's RC, and the chip samples IO0 (low while DTR∧¬RTS) `EN_RISE_S` later: low boots the ROM
        download mode, high boots from flash. esptool's ClassicReset passes through DTR=RTS=1 (EN released, IO0
        high) for the microseconds between its two writes; the RC delay is what makes that harmless, as on a
        real board. The `wrong_boot_mode` fault keeps IO0 high (a broken circuit or a stuck strap).
        """
        if not self.powered:
            return
        self.settle(at)
        self.dtr, self.rts, self._lines_at = dtr, rts, at
        if rts and not dtr:  # EN low
            if not self.in_reset:
                self.in_reset = True
                self.booted_app = False
                self.mode = DeafMode(self)
                log.debug("%s: held in reset", self.name)
            self._released_at = None
        elif self.in_reset and self._released_at is None:
            self._released_at = at

    def settle(self, at: float) -> None:
        """Host time has reached `at`: a released EN that has risen by then starts the chip."""
        if self.powered and self._released_at is not None and at >= self._released_at + EN_RISE_S:
            self._released_at = None
            self.in_reset = False
            self.boot(download=self._io0_low())

    def _io0_low(self) -> bool:
        circuit = self.dtr and not self.rts and not self.faults.wrong_boot_mode
        return self.boot_held or circuit

    # the dev board's two buttons, as a person presses them (no cable is touched)

    def hold_boot(self, held: bool) -> None:
        """Press (True) or release (False) BOOT: IO0 is low while it is held; the chip samples it when it starts."""
        self.boot_held = held

    def press_reset(self) -> None:
        """Press and release RESET (EN): the chip restarts and samples IO0, whatever the bridge's lines say."""
        if not self.powered:
            return
        self.in_reset = False
        self._released_at = None
        self.boot(download=self._io0_low())

    def hold_boot_and_press_reset(self) -> None:
        """Hold BOOT, press and release RESET, release BOOT: a person putting the board in download mode by hand."""
        self.hold_boot(True)
        self.press_reset()
        self.hold_boot(False)

    @property
    def strap_sample_due(self) -> float | None:
        """Host time at which a released EN will have risen (the chip starts then), or None."""
        return None if self._released_at is None else self._released_at + EN_RISE_S

    def drop_lines(self) -> None:
        """The host closed the port: DTR and RTS fall (EN, if held, is let go); what that starts happens now."""
        self.set_lines(False, False, self._lines_at)
        self.settle(float("inf"))

    def on_app_boot(self) -> None:
        """The loader handed control to the application in flash. Records it and gives the stream to the app."""
        self.mode = self.app_mode_factory(self)
        with self._boot_changed:
            self.booted_app = True
            self.boot_count += 1
            self._boot_changed.notify_all()
        log.info("%s: application booted (boot #%d)", self.name, self.boot_count)

    def wait_for_app_boot(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until the app has booted `count` times in total (True), or the timeout passes (False)."""
        with self._boot_changed:
            return self._boot_changed.wait_for(lambda: self.boot_count >= count, timeout)

    def count_flash_bytes(self, n: int) -> bool:
        """Count flash-data payload bytes; True if that made the board vanish (unplug_after_bytes fault)."""
        self.flash_bytes_received += n
        limit = self.faults.unplug_after_bytes
        if limit is None or self.flash_bytes_received < limit:
            return False
        self.faults = replace(self.faults, unplug_after_bytes=None)  # one-shot: a re-plugged board behaves
        self.vanish()
        return True

    def vanish(self) -> None:
        log.info("%s: vanishing (unplugged)", self.name)
        self.mode = DeafMode(self)
        if self.on_vanish is not None:
            self.on_vanish(self)
        self.detach()

    def entry_in_uploaded_ram(self, entry: int) -> bool:
        return any(seg.offset <= entry < seg.offset + seg.size for seg in self.ram_segments)

    def read_register(self, addr: int) -> int:
        if addr == self.chip.uart_clkdiv_reg:
            return self.chip.clkdiv_for(self.baud)
        return self.registers.get(addr, 0)

    def write_register(self, addr: int, value: int, mask: int) -> None:
        old = self.registers.get(addr, 0)
        self.registers[addr] = (old & ~mask) | (value & mask)
        spi = self.chip.spi
        if addr == spi.cmd and self.registers[addr] & (1 << 18):
            self._run_spi_user_command()
            self.registers[addr] &= ~(1 << 18)  # SPI_CMD_USR clears when the transfer is done

    def _run_spi_user_command(self) -> None:
        spi, regs = self.chip.spi, self.registers
        usr = regs.get(spi.base + spi.usr, 0)
        command = regs.get(spi.base + spi.usr2, 0) & 0xFF
        if not usr & (1 << 28):  # SPI_USR_MISO: nothing to read back
            return
        if spi.miso_dlen is not None:
            miso_bits = regs.get(spi.base + spi.miso_dlen, 0) + 1
        else:
            miso_bits = ((regs.get(spi.base + spi.usr1, 0) >> 8) & 0x1FF) + 1
        answer = self.spi_flash_answer(command, regs.get(spi.addr, 0))
        nbytes = min((miso_bits + 7) // 8, 4)
        value = int.from_bytes(answer.ljust(nbytes, b"\xff")[:nbytes], "little")  # idle MISO reads as 1s
        regs[spi.base + spi.w0] = value & ((1 << min(miso_bits, 32)) - 1)

    def spi_flash_answer(self, command: int, addr_reg: int) -> bytes:
        if command == 0x5A:  # RDSFDP: 24-bit address, left-aligned in SPI_ADDR on ESP32/ESP8266
            addr = (addr_reg >> 8 if self.chip.spi.addr_msb else addr_reg) & 0xFFFFFF
            return self._sfdp[addr:addr + 4] if addr < len(self._sfdp) else b""
        return self._spi_answers.get(command, b"")

    def read_flash(self, offset: int, length: int) -> bytes:
        return self.flash.read(offset, length)

    def __repr__(self) -> str:
        return f"<EspBoard {self.name} mac={self.mac_text} flash={self.flash.size >> 20}MB>"

