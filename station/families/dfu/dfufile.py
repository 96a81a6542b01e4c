"""Firmware files for DFU boards: raw .bin, DFU 1.1 files (suffix only) and DfuSe files (prefix, targets).

Layouts (PROTOCOLS §4.2, §4.3; all little-endian):
  suffix, the last 16 bytes:  bcdDevice idProduct idVendor bcdDFU "UFD" bLength=16 dwCRC
  DfuSe prefix, 11 bytes:     "DfuSe" bVersion=1 DFUImageSize(file size without suffix) bTargets
  per target, 274 bytes:      "Target" bAlternateSetting bTargetNamed(4) szTargetName(255) dwTargetSize
                              dwNbElements, then per element dwElementAddress dwElementSize data
dwCRC is CRC-32 without the final XOR, over everything but itself. 0xFFFF in an id field matches any board.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from station.families.dfu.errors import DfuFileError
from station.text import shown

BCD_DFU_PLAIN = 0x0100
BCD_DFUSE = 0x011A
WILDCARD = 0xFFFF

_SUFFIX = struct.Struct("<HHHH3sBI")
_PREFIX = struct.Struct("<5sBIB")
_TARGET = struct.Struct("<6sBI255sII")
_ELEMENT = struct.Struct("<II")


@dataclass(frozen=True)
class Element:
    address: int
    data: bytes


@dataclass(frozen=True)
class Target:
    alt: int
    name: str
    elements: tuple[Element, ...]


@dataclass(frozen=True)
class Suffix:
    bcd_device: int
    pid: int
    vid: int
    bcd_dfu: int


@dataclass(frozen=True)
class Placement:
    """One run of bytes to write: which alt setting, where, what."""

    alt: int
    address: int
    data: bytes


@dataclass(frozen=True)
class Firmware:
    """A parsed file. Raw and DFU 1.1 files carry `payload` and need an address from the profile;
    DfuSe files carry `targets` with their own addresses."""

    name: str
    suffix: Suffix | None  # None: a raw .bin
    payload: bytes = b""
    targets: tuple[Target, ...] = ()

    @property
    def is_dfuse(self) -> bool:
        return self.suffix is not None and self.suffix.bcd_dfu == BCD_DFUSE

    def placements(self, alt: int, address: int | None) -> list[Placement]:
        """What to write where. A DfuSe file places itself; a raw or DFU 1.1 file goes to the profile's address."""
        if self.is_dfuse:
            if address is not None:
                raise DfuFileError(f"{shown(self.name)} is a DfuSe file that carries its own addresses; remove "
                                   "the address from the profile (or use a raw .bin)")
            placed = [Placement(t.alt, e.address, e.data) for t in self.targets for e in t.elements if e.data]
        else:
            if address is None:
                raise DfuFileError(f"{shown(self.name)} has no addresses of its own; set the address to write it "
                                   "to in the profile")
            placed = [Placement(alt, address, self.payload)] if self.payload else []
        if not placed:
            raise DfuFileError(f"{shown(self.name)} holds no bytes to write")
        return placed


def read_firmware(data: bytes, name: str) -> Firmware:
    """A file with a DFU suffix is checked and parsed; anything else is a raw .bin."""
    if has_suffix(data):
        return parse_dfu(data, name)
    return Firmware(name=name, suffix=None, payload=bytes(data))


def has_suffix(data: bytes) -> bool:
    return len(data) >= _SUFFIX.size and data[-8:-5] == b"UFD"


def parse_dfu(data: bytes, name: str) -> Firmware:
    """Parse a .dfu file: check its suffix and CRC, then its DfuSe prefix and targets if it has them."""
    if len(data) < _SUFFIX.size:
        raise DfuFileError(f"{shown(name)} is truncated: {len(data)} bytes is too short for a DFU file")
    bcd_device, pid, vid, bcd_dfu, signature, length, crc = _SUFFIX.unpack_from(data, len(data) - _SUFFIX.size)
    if signature != b"UFD":
        raise DfuFileError(f"{shown(name)} has no DFU suffix (no \"UFD\" signature); it is not a .dfu file")
    if length != _SUFFIX.size:
        raise DfuFileError(f"{shown(name)} has a DFU suffix of length {length}, not 16; the file is damaged or "
                           "made by an unsupported tool")
    actual = dfu_crc(data[:-4])
    if crc != actual:
        raise DfuFileError(f"{shown(name)} is damaged: its DFU suffix says CRC 0x{crc:08X} but the bytes give "
                           f"0x{actual:08X}; copy or download the file again")
    suffix = Suffix(bcd_device=bcd_device, pid=pid, vid=vid, bcd_dfu=bcd_dfu)
    body = data[:-_SUFFIX.size]
    if bcd_dfu == BCD_DFU_PLAIN:
        return Firmware(name=name, suffix=suffix, payload=bytes(body))
    if bcd_dfu == BCD_DFUSE:
        return Firmware(name=name, suffix=suffix, targets=_dfuse_targets(body, name))
    raise DfuFileError(f"{shown(name)} has DFU version 0x{bcd_dfu:04X} in its suffix; only 0x0100 (DFU 1.1) and "
                       "0x011A (DfuSe) files are supported")


def check_board(firmware: Firmware, vid: int, pid: int) -> None:
    """Refuse a file whose suffix names another USB device (0xFFFF in the file matches any)."""
    if firmware.suffix is None:
        return  # a raw .bin names no board
    want_vid, want_pid = firmware.suffix.vid, firmware.suffix.pid
    if want_vid in (WILDCARD, vid) and want_pid in (WILDCARD, pid):
        return
    raise DfuFileError(f"{shown(firmware.name)} is made for USB device {want_vid:04x}:{want_pid:04x}, but this "
                       f"board is {vid:04x}:{pid:04x}; pick the file built for this board")


def dfu_crc(data: bytes) -> int:
    """The suffix CRC: CRC-32 (reflected, initial 0xFFFFFFFF) without the final XOR."""
    return ~zlib.crc32(data) & 0xFFFFFFFF


def build_dfuse_file(targets: list[Target], vid: int, pid: int, bcd_device: int = WILDCARD) -> bytes:
    """The DfuSe file holding `targets`, for building firmware and test files."""
    body = b""
    for target in targets:
        name = target.name.encode("ascii")
        if len(name) > 254:
            raise DfuFileError(f"target name {shown(target.name)} is longer than 254 characters")
        elements = b"".join(_ELEMENT.pack(e.address, len(e.data)) + e.data for e in target.elements)
        body += _TARGET.pack(b"Target", target.alt, int(bool(name)), name, len(elements), len(target.elements))
        body += elements
    body = _PREFIX.pack(b"DfuSe", 1, _PREFIX.size + len(body), len(targets)) + body
    body += _SUFFIX.pack(bcd_device, pid, vid, BCD_DFUSE, b"UFD", _SUFFIX.size, 0)[:-4]
    return body + struct.pack("<I", dfu_crc(body))


def _dfuse_targets(body: bytes, name: str) -> tuple[Target, ...]:
    def truncated(what: str) -> DfuFileError:
        return DfuFileError(f"{shown(name)} is truncated: the file ends inside {what}")

    if len(body) < _PREFIX.size:
        raise truncated("the DfuSe prefix")
    signature, version, image_size, count = _PREFIX.unpack_from(body)
    if signature != b"DfuSe" or version != 1:
        raise DfuFileError(f"{shown(name)} says DfuSe in its suffix but has no DfuSe prefix (\"DfuSe\", version 1); "
                           "the file is damaged")
    if image_size != len(body):
        raise DfuFileError(f"{shown(name)} is damaged: its DfuSe prefix gives {image_size} bytes, the file holds "
                           f"{len(body)} before the suffix")
    targets = []
    offset = _PREFIX.size
    for index in range(count):
        if offset + _TARGET.size > len(body):
            raise truncated(f"target {index}'s header")
        signature, alt, named, raw_name, size, n_elements = _TARGET.unpack_from(body, offset)
        if signature != b"Target":
            raise DfuFileError(f"{shown(name)} is damaged: target {index} does not start with \"Target\"")
        offset += _TARGET.size
        end = offset + size
        if end > len(body):
            raise truncated(f"target {index}")
        elements = []
        for number in range(n_elements):
            if offset + _ELEMENT.size > end:
                raise truncated(f"element {number} of target {index}")
            address, length = _ELEMENT.unpack_from(body, offset)
            offset += _ELEMENT.size
            if offset + length > end:
                raise truncated(f"element {number} of target {index}")
            elements.append(Element(address, bytes(body[offset:offset + length])))
            offset += length
        if offset != end:
            raise DfuFileError(f"{shown(name)} is damaged: target {index} says {size} bytes but its elements "
                               f"take {size - (end - offset)}")
        label = raw_name.split(b"\0", 1)[0].decode("latin-1") if named else ""
        targets.append(Target(alt=alt, name=label, elements=tuple(elements)))
    if offset != len(body):
        raise DfuFileError(f"{shown(name)} is damaged: {len(body) - offset} stray bytes after its last target")
    return tuple(targets)
