"""One DFU alternate setting's memory, built from its DfuSe memory-layout string (PROTOCOLS §4.3).

`@Name/0xADDR/NN*SSSMt,...[/0xADDR2/...]`: each region is a run of segments starting at ADDR; M scales the page
size (' '/B x1, K x1024, M x1048576) and t says what the pages allow (bit 1 readable, 2 erasable, 4 writeable as
'a'..'g'). Each region is backed by one medium: NOR flash, or the Photon bootloader's DCT layer whose erase does
nothing and whose writes replace bytes (device-os `usbd_dct_if.c`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from station.sim.nor import NorFlash, NorTiming, NorWrite

SEGMENT = re.compile(r"(\d+)\*(\d+)([ BKM])([a-g])$")
SCALE = {" ": 1, "B": 1, "K": 1024, "M": 1024 * 1024}


@dataclass(frozen=True)
class Segment:
    start: int
    count: int
    page_size: int
    readable: bool
    erasable: bool
    writeable: bool

    @property
    def end(self) -> int:
        return self.start + self.count * self.page_size


@dataclass(frozen=True)
class Region:
    start: int
    segments: tuple[Segment, ...]

    @property
    def end(self) -> int:
        return self.segments[-1].end


def parse_layout(text: str) -> tuple[str, list[Region]]:
    """(name, regions) of a memory-layout string; ValueError names the part that does not parse."""
    if not text.startswith("@"):
        raise ValueError(f"memory layout {text!r} does not start with '@'")
    name, *parts = text[1:].split("/")
    if not parts or len(parts) % 2:
        raise ValueError(f"memory layout {text!r}: expected /0xADDR/SEGMENTS pairs after the name")
    regions = []
    for addr_text, segs_text in zip(parts[0::2], parts[1::2]):
        addr = start = int(addr_text, 16)
        segments = []
        for seg_text in segs_text.split(","):
            m = SEGMENT.match(seg_text)
            if m is None:
                raise ValueError(f"memory layout {text!r}: segment {seg_text!r} is not NN*SSS[ BKM][a-g]")
            bits = ord(m.group(4)) - ord("a") + 1
            seg = Segment(addr, int(m.group(1)), int(m.group(2)) * SCALE[m.group(3)],
                          readable=bool(bits & 1), erasable=bool(bits & 2), writeable=bool(bits & 4))
            segments.append(seg)
            addr = seg.end
        regions.append(Region(start, tuple(segments)))
    return name.strip(), regions


class DctMedium:
    """The Photon bootloader's DCT alt: erase is a no-op, a write replaces the bytes (no NOR rules show through).

    Costs are what that bootloader advertises in bwPollTimeout: erase 1 ms, program 500 ms.
    """

    ERASE_S = 0.001
    PROGRAM_S = 0.5

    def __init__(self, size: int):
        self.size = size
        self._cells = bytearray([0xFF]) * size

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._cells[offset:offset + length])

    def erase_sector(self, offset: int) -> float:
        return self.ERASE_S

    def program(self, offset: int, data: bytes) -> NorWrite:
        self._cells[offset:offset + len(data)] = data
        return NorWrite(self.PROGRAM_S, conflict=False)

    def load(self, offset: int, data: bytes) -> None:
        self._cells[offset:offset + len(data)] = data

    def snapshot(self) -> bytes:
        return bytes(self._cells)


Medium = NorFlash | DctMedium


class AddressError(Exception):
    """The address is outside every segment of the alt (DFU errADDRESS)."""


class AccessError(Exception):
    """The segment does not allow the operation (DFU errTARGET / errWRITE)."""


class AltMemory:
    """Address-level access to one alt: checks the layout's permissions, then acts on the medium."""

    def __init__(self, layout: str, timing: NorTiming | None):
        """`timing` None selects the DCT medium."""
        self.layout = layout
        self.name, self.regions = parse_layout(layout)
        self.media: list[Medium] = []
        for region in self.regions:
            if timing is None:
                self.media.append(DctMedium(region.end - region.start))
            else:
                self.media.append(NorFlash([(s.count, s.page_size) for s in region.segments], timing))

    @property
    def start(self) -> int:
        return self.regions[0].start

    def _region(self, address: int) -> tuple[Region, Medium]:
        for region, medium in zip(self.regions, self.media):
            if region.start <= address < region.end:
                return region, medium
        raise AddressError(f"0x{address:08X} is outside {self.name}")

    def contains(self, address: int) -> bool:
        return any(r.start <= address < r.end for r in self.regions)

    def _span(self, address: int, length: int) -> tuple[list[Segment], Medium, int]:
        """Segments covering [address, address+length) (one region), the medium and the offset in it."""
        region, medium = self._region(address)
        if address + length > region.end:
            raise AddressError(f"0x{address:08X}+{length} runs past the end of {self.name}")
        segs = [s for s in region.segments if s.start < address + max(length, 1) and s.end > address]
        return segs, medium, address - region.start

    def erase_page(self, address: int) -> float:
        (seg,), medium, offset = self._span(address, 1)
        if not seg.erasable:
            raise AccessError(f"0x{address:08X} in {self.name} is not erasable")
        return medium.erase_sector(offset)

    def mass_erase(self) -> float:
        cost = 0.0
        for region, medium in zip(self.regions, self.media):
            for seg in region.segments:
                if seg.erasable:
                    for page in range(seg.count):
                        cost += medium.erase_sector(seg.start - region.start + page * seg.page_size)
        return cost

    def program(self, address: int, data: bytes) -> NorWrite:
        segs, medium, offset = self._span(address, len(data))
        if not all(s.writeable for s in segs):
            raise AccessError(f"0x{address:08X}+{len(data)} in {self.name} is not writeable")
        return medium.program(offset, data)

    def read(self, address: int, length: int) -> bytes:
        """Up to `length` bytes; a read reaching past the region's end comes back short."""
        region, _ = self._region(address)
        segs, medium, offset = self._span(address, min(length, region.end - address))
        if not all(s.readable for s in segs):
            raise AccessError(f"0x{address:08X}+{length} in {self.name} is not readable")
        return medium.read(offset, length)

    def load(self, address: int, data: bytes) -> None:
        _, medium, offset = self._span(address, len(data))
        medium.load(offset, data)

    def snapshot(self) -> bytes:
        """All regions' bytes back to back (our layouts have one region each)."""
        return b"".join(m.snapshot() for m in self.media)
