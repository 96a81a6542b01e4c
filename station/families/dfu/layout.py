"""DfuSe memory layouts: the `@Name/0xADDR/NN*SSSMt,…` string a DfuSe alt setting carries as its name.

The string comes from the device, so it is parsed strictly and shown escaped in every message. The layout
answers where a byte lives, which pages a write touches, and whether a write or read may happen at all,
so the host can refuse a bad range before it sends anything (PROTOCOLS §4.3).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from station.families.dfu.errors import DfuLayoutError
from station.text import shown

_MULTIPLIERS = {"": 1, "B": 1, "K": 1024, "M": 1024 * 1024}
_SEGMENT = re.compile(r"\s*(\d{1,5})\*(\d{1,5})( ?[BKM]?)([a-gA-G])\s*")
_ADDRESS = re.compile(r"\s*(0[xX][0-9a-fA-F]{1,8}|\d{1,10})\s*")
_ADDRESS_SPACE = 1 << 32


@dataclass(frozen=True)
class Segment:
    """Equal pages from `start` (inclusive) to `end` (exclusive), with one set of access rights."""

    start: int
    end: int
    page_size: int
    readable: bool
    erasable: bool
    writeable: bool

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end

    @property
    def access(self) -> str:
        return "".join(flag for flag, on in (("r", self.readable), ("e", self.erasable), ("w", self.writeable))
                       if on) or "none"


@dataclass(frozen=True)
class MemoryLayout:
    name: str
    segments: tuple[Segment, ...]

    def segment_at(self, address: int) -> Segment | None:
        return next((s for s in self.segments if address in s), None)

    def pages(self, start: int, end: int) -> list[int]:
        """Start addresses of the pages that hold any byte of [start, end), and only those."""
        pages = []
        for seg in self.segments:
            lo, hi = max(start, seg.start), min(end, seg.end)
            if lo >= hi:
                continue
            first = seg.start + (lo - seg.start) // seg.page_size * seg.page_size
            pages.extend(range(first, hi, seg.page_size))
        return pages

    def check_write(self, start: int, length: int) -> None:
        """Refuse a write that leaves the layout, overruns it, or touches a segment that is not writeable."""
        for seg in self._covering(start, length, "write"):
            if not seg.writeable:
                raise DfuLayoutError(
                    f"{self._what(start, length)} would touch {_span(seg.start, seg.end)} of {self.label}, which "
                    f"the board marks read-only (access '{seg.access}'); check the address in the profile")

    def check_read(self, start: int, length: int) -> None:
        for seg in self._covering(start, length, "read"):
            if not seg.readable:
                raise DfuLayoutError(
                    f"reading {length} bytes at 0x{start:08X} would touch {_span(seg.start, seg.end)} of "
                    f"{self.label}, which the board does not allow to be read (access '{seg.access}')")

    @property
    def label(self) -> str:
        return shown(self.name)

    def describe(self) -> str:
        """The address ranges the layout covers, e.g. "0x08000000-0x080FFFFF"."""
        runs: list[list[int]] = []
        for seg in sorted(self.segments, key=lambda s: s.start):
            if runs and runs[-1][1] == seg.start:
                runs[-1][1] = seg.end
            else:
                runs.append([seg.start, seg.end])
        return ", ".join(_span(lo, hi) for lo, hi in runs)

    def _covering(self, start: int, length: int, verb: str) -> list[Segment]:
        if length <= 0:
            raise DfuLayoutError(f"nothing to {verb}: the range at 0x{start:08X} is empty")
        end = start + length
        seg = self.segment_at(start)
        if seg is None:
            raise DfuLayoutError(f"{self._what(start, length, verb)} starts outside {self.label}, which holds "
                                 f"{self.describe()}; check the address in the profile")
        covering = [seg]
        while seg.end < end:
            following = self.segment_at(seg.end)
            if following is None:
                room = seg.end - start
                raise DfuLayoutError(f"{self._what(start, length, verb)} is larger than {self.label}: only {room} "
                                     f"bytes fit from 0x{start:08X} (it ends at 0x{seg.end - 1:08X})")
            covering.append(seg := following)
        return covering

    @staticmethod
    def _what(start: int, length: int, verb: str = "write") -> str:
        noun = "the image" if verb == "write" else "the read"
        return f"{noun} of {length} bytes at {_span(start, start + length)}"


def is_layout(text: str) -> bool:
    """DfuSe alt-setting names start with '@'; plain DFU 1.1 names are free text."""
    return text.startswith("@")


def parse_layout(text: str) -> MemoryLayout:
    """Parse `@Name/0xADDR/NN*SSSMt,…[/0xADDR/…]` (M: ' ' or B bytes, K KiB, M MiB; t: a-g access bits)."""
    if not is_layout(text):
        raise _malformed(text, "it does not start with '@'")
    name, *groups = text[1:].split("/")
    if not groups or len(groups) % 2:
        raise _malformed(text, "it needs '/0xADDRESS/segments' after the name")
    segments: list[Segment] = []
    for address_text, specs in zip(groups[::2], groups[1::2]):
        match = _ADDRESS.fullmatch(address_text)
        if match is None:
            raise _malformed(text, f"{shown(address_text)} is not an address like 0x08000000")
        address = int(match.group(1), 0)
        for spec in specs.split(","):
            seg = _segment(text, spec, address)
            segments.append(seg)
            address = seg.end
    ordered = sorted(segments, key=lambda s: s.start)
    for before, after in zip(ordered, ordered[1:]):
        if after.start < before.end:
            raise _malformed(text, f"two groups overlap at 0x{after.start:08X}")
    return MemoryLayout(name=name.strip(), segments=tuple(segments))


def _segment(text: str, spec: str, start: int) -> Segment:
    match = _SEGMENT.fullmatch(spec)
    if match is None:
        raise _malformed(text, f"segment {shown(spec)} is not COUNT*SIZE[B|K|M]TYPE with TYPE a-g")
    count, size = int(match.group(1)), int(match.group(2)) * _MULTIPLIERS[match.group(3).strip()]
    if count == 0 or size == 0:
        raise _malformed(text, f"segment {shown(spec)} is empty")
    end = start + count * size
    if end > _ADDRESS_SPACE:
        raise _malformed(text, f"segment {shown(spec)} at 0x{start:08X} runs past the 4 GiB address space")
    access = ord(match.group(4).lower()) - ord("a") + 1
    return Segment(start=start, end=end, page_size=size, readable=bool(access & 1), erasable=bool(access & 2),
                   writeable=bool(access & 4))


def _span(start: int, end: int) -> str:
    return f"0x{start:08X}-0x{end - 1:08X}"


def _malformed(text: str, why: str) -> DfuLayoutError:
    return DfuLayoutError(f"the board's DFU memory layout {shown(text)} is malformed: {why}; "
                          "the board is not a DfuSe device or its bootloader is damaged")
