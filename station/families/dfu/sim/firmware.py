"""Demo firmware for the emulated DFU boards: Cortex-M images with a real vector table (initial stack
pointer in SRAM, Thumb reset vector inside the image), so they look like what a linker makes for the part."""
from __future__ import annotations

import hashlib
import struct

from station.families.dfu.dfufile import Element, Target, build_dfuse_file


def cortex_m_image(base: int, size: int, name: str, sram_top: int = 0x20020000) -> bytes:
    """`size` bytes for flash at `base`: a vector table, then deterministic filler that is not all 0xFF."""
    vectors = struct.pack("<II", sram_top, (base + 0x200) | 1) + struct.pack("<I", (base + 0x240) | 1) * 14
    body = bytearray()
    seed = name.encode()
    while len(vectors) + len(body) < size:
        seed = hashlib.sha256(seed).digest()
        body += seed
    return (vectors + bytes(body))[:size]


def dfuse_image(base: int, size: int, name: str, vid: int, pid: int, alt: int = 0) -> bytes:
    """The same, packed as a DfuSe .dfu file for one board's USB ID."""
    return build_dfuse_file([Target(alt, "Internal Flash", (Element(base, cortex_m_image(base, size, name)),))],
                            vid, pid)
