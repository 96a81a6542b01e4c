"""How the emulated boards tell what was flashed into them: a module header the demo firmware carries.

Real Particle modules carry a `module_info` record and a CRC the bootloader checks; the emulator uses its own
small record with the same purpose (this is the emulator's convention, not Particle's byte layout), placed right
after the 16-word Cortex-M vector table (offset 0x40) of the image:

    magic b"PSFW" | platform id u16 LE | function u8 | index u8 | device-os major, minor, patch u8 | 0 |
    image size u32 LE

and the image's last 4 bytes are the CRC-32 (zlib) of everything before them. A module is valid when the header
is there, the platform matches the board and the CRC matches, so an image cut short by a vanished board, or one
built for the other platform, is not booted: the bootloader stays in DFU mode as on the real boards.

`python -m station.families.particle.sim.firmware DIR` writes the shipped demo images (Tinker for the Core and
the Photon's user part) into DIR/tinker-core and DIR/tinker-photon.
"""
from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from station.families.dfu.sim.firmware import cortex_m_image
from station.families.dfu.sim.memory import AccessError, AddressError

HEADER = struct.Struct("<4sHBBBBBBI")
MAGIC = b"PSFW"
HEADER_OFFSET = 0x40

PLATFORM_CORE, PLATFORM_PHOTON = 0, 6
# module functions (the names follow device-os: a Core image is one monolithic module)
MONOLITHIC, SYSTEM_PART, USER_PART = 3, 4, 5

CORE_APP_ADDRESS = 0x08005000
CORE_SRAM_TOP = 0x20005000  # STM32F103CB: 20 KB SRAM
PHOTON_SYSTEM_PARTS = (0x08020000, 0x08060000)
PHOTON_USER_ADDRESS = 0x080A0000
PHOTON_SRAM_TOP = 0x20020000

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Module:
    platform: int
    function: int
    index: int
    version: Version
    size: int

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def module_image(base: int, size: int, name: str, platform: int, function: int, index: int, version: Version,
                 sram_top: int) -> bytes:
    """A `size`-byte image for flash at `base` carrying the module header and its CRC."""
    body = bytearray(cortex_m_image(base, size, name, sram_top))
    body[HEADER_OFFSET:HEADER_OFFSET + HEADER.size] = HEADER.pack(MAGIC, platform, function, index, *version, 0, size)
    body[-4:] = struct.pack("<I", zlib.crc32(bytes(body[:-4])))
    return bytes(body)


def read_module(read, address: int, platform: int, function: int) -> Module | None:
    """The module at `address` if a bootloader would accept it; `read(address, length)` reads the board's flash."""
    header = read(address + HEADER_OFFSET, HEADER.size)
    magic, plat, func, index, major, minor, patch, _, size = HEADER.unpack(header)
    if magic != MAGIC or plat != platform or func != function or size < HEADER_OFFSET + HEADER.size + 4:
        return None
    try:
        image = read(address, size)
    except (AddressError, AccessError):  # a size running past the flash: not a module
        return None
    if len(image) != size or struct.unpack("<I", image[-4:])[0] != zlib.crc32(image[:-4]):
        return None
    return Module(plat, func, index, (major, minor, patch), size)


def core_app(version: Version, name: str = "tinker-core", size: int = 80 * 1024) -> bytes:
    """A Spark Core firmware image for 0x08005000 (device-os up to 1.4.4 builds one monolithic image)."""
    return module_image(CORE_APP_ADDRESS, size, name, PLATFORM_CORE, MONOLITHIC, 0, version, CORE_SRAM_TOP)


def photon_system_part(index: int, version: Version, size: int = 16 * 1024) -> bytes:
    """System part 1 or 2 for the Photon (at PHOTON_SYSTEM_PARTS[index - 1])."""
    return module_image(PHOTON_SYSTEM_PARTS[index - 1], size, f"photon-system-part{index}-{version}",
                        PLATFORM_PHOTON, SYSTEM_PART, index, version, PHOTON_SRAM_TOP)


def photon_user_part(version: Version, name: str = "tinker-photon", size: int = 64 * 1024) -> bytes:
    """A Photon user part for 0x080A0000; `version` is the device-os it was built against."""
    return module_image(PHOTON_USER_ADDRESS, size, name, PLATFORM_PHOTON, USER_PART, 1, version, PHOTON_SRAM_TOP)


# The shipped demo profiles' images: Tinker built against device-os 1.4.4 (the Core's last) and 2.3.1 (Photon LTS)
TINKER_CORE_VERSION: Version = (1, 4, 4)
TINKER_PHOTON_VERSION: Version = (2, 3, 1)


def write_demo_images(directory: Path) -> list[Path]:
    out = [(directory / "tinker-core" / "tinker.bin", core_app(TINKER_CORE_VERSION)),
           (directory / "tinker-photon" / "tinker.bin", photon_user_part(TINKER_PHOTON_VERSION))]
    for path, data in out:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return [path for path, _ in out]


if __name__ == "__main__":
    for written in write_demo_images(Path(sys.argv[1] if len(sys.argv) > 1 else "profiles/firmware")):
        print(written)
