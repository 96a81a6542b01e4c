"""NOR flash as emulators see it: erased bytes read 0xFF, erasing works on whole sectors, programming only clears bits.

A program that would need a 0 -> 1 flip cannot happen on real NOR; the cells keep `old AND new` and the caller
learns about it (`NorWrite.conflict`), so an emulated bootloader can answer the way real parts do (STM32 DfuSe:
errCHECK_ERASED / errVERIFY). Every operation also reports what it costs on the real part, so the owner can advertise
it (DFU bwPollTimeout) and, when throttled, really take that long. The flash keeps no lock: its owner serialises.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Mapping, Sequence

ERASED = 0xFF


class NorRangeError(ValueError):
    """An operation reaches outside the flash array."""


@dataclass(frozen=True)
class NorTiming:
    """Typical datasheet times: seconds per sector erase, keyed by sector size, and seconds per programmed byte."""

    erase_s: Mapping[int, float]
    program_s_per_byte: float

    def erase_cost(self, sector_size: int) -> float:
        return self.erase_s[sector_size]

    def program_cost(self, nbytes: int) -> float:
        return nbytes * self.program_s_per_byte


@dataclass(frozen=True)
class NorWrite:
    cost_s: float
    conflict: bool  # some bit needed 0 -> 1: the cells now hold old AND new, not what was asked


class NorFlash:
    """`sectors` lists (count, size) runs from offset 0, e.g. [(4, 16384), (1, 65536), (7, 131072)]."""

    def __init__(self, sectors: Sequence[tuple[int, int]], timing: NorTiming):
        self.timing = timing
        self._starts: list[int] = []
        self._sizes: list[int] = []
        offset = 0
        for count, size in sectors:
            for _ in range(count):
                self._starts.append(offset)
                self._sizes.append(size)
                offset += size
        self.size = offset
        self._cells = bytearray([ERASED]) * offset

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NorRangeError(f"0x{offset:X}+{length} is outside the {self.size}-byte flash")

    def sector_at(self, offset: int) -> tuple[int, int]:
        """(start, size) of the sector holding `offset`."""
        self._check(offset, 1)
        i = bisect.bisect_right(self._starts, offset) - 1
        return self._starts[i], self._sizes[i]

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self._cells[offset:offset + length])

    def is_erased(self, offset: int, length: int) -> bool:
        self._check(offset, length)
        return self._cells[offset:offset + length].count(ERASED) == length

    def erase_sector(self, offset: int) -> float:
        """Erase the sector holding `offset`; returns the time it takes on the real part."""
        start, size = self.sector_at(offset)
        self._cells[start:start + size] = bytes([ERASED]) * size
        return self.timing.erase_cost(size)

    def program(self, offset: int, data: bytes) -> NorWrite:
        self._check(offset, len(data))
        old = self._cells[offset:offset + len(data)]
        n = len(data)
        new = (int.from_bytes(old, "little") & int.from_bytes(data, "little")).to_bytes(n, "little")  # whole-range AND
        self._cells[offset:offset + len(data)] = new
        return NorWrite(self.timing.program_cost(len(data)), conflict=new != bytes(data))

    def load(self, offset: int, data: bytes) -> None:
        """Factory contents (a bootloader, option bytes): placed as is, outside the program rules."""
        self._check(offset, len(data))
        self._cells[offset:offset + len(data)] = data

    def snapshot(self) -> bytes:
        return bytes(self._cells)
