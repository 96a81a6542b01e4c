"""ESP8266 Arduino flash layouts: where the core's filesystem (SPIFFS or LittleFS) lives on the flash.

Arduino ESP8266 firmware has no partition table: the board menu's "Flash Size" entry (`eesz`) picks a linker
script `eagle.flash.<name>.ld`, whose `_FS_start`, `_FS_end` and `_FS_block` the firmware mounts its filesystem
with (flash offset = linker address - 0x40200000). The values are those of the scripts at esp8266/Arduino HEAD
(../shared/PROTOCOLS.md §11.3.3): the filesystem ends before EEPROM, RF calibration and the SDK's Wi-Fi sectors,
rounded down to a whole block, and its block is 8192 bytes, or 4096 below 512 KB. Page is 256 everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class FlashLayout:
    name: str  # the board menu's value, e.g. "4M1M" (4 MB flash, 1 MB filesystem)
    flash_size: int
    fs_start: int  # flash offset
    fs_end: int
    block_size: int
    page_size: int = 256

    @property
    def fs_size(self) -> int:
        return self.fs_end - self.fs_start


LAYOUTS = {layout.name: layout for layout in (
    FlashLayout("4M1M", 4 * MIB, 0x300000, 0x3FA000, 8192),
    FlashLayout("4M2M", 4 * MIB, 0x200000, 0x3FA000, 8192),
    FlashLayout("4M3M", 4 * MIB, 0x100000, 0x3FA000, 8192),
    FlashLayout("2M1M", 2 * MIB, 0x100000, 0x1FA000, 8192),
    FlashLayout("1M256", 1 * MIB, 0xBB000, 0xFB000, 4096),
    FlashLayout("1M64", 1 * MIB, 0xEB000, 0xFB000, 4096),
)}


def flash_layout(name: str) -> FlashLayout:
    """The layout a board menu names; ValueError naming the known ones."""
    layout = LAYOUTS.get(name.upper())
    if layout is None:
        raise ValueError(f"flash_layout '{name}' is not a known ESP8266 Arduino layout; use one of "
                         f"{', '.join(LAYOUTS)} (the board's Flash Size menu: 4MB (FS:1MB) is 4M1M).")
    return layout
