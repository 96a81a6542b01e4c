"""Demo and test firmware in the real ESP image formats (no compiler needed).

ESP32-family images are written by esptool's own image classes (`ESP32FirmwareImage.save`),
so header, MMU-page padding, checksum and appended SHA-256 are exactly what esptool and the
ROM expect; `esptool image-info` shows the project name and version from a real
`esp_app_desc_t`. ESP8266 images come in two layouts: ESP8266_RTOS_SDK 3.x (IDF-style: a bootloader at 0x0, a partition
table at 0x8000 with NVS and two OTA slots, the app at 0x10000), which the shipped OTA profile uses, and
the Arduino core's elf2bin.py layout (an eboot-like loader padded to 4 KiB, then the sketch image).

Output is a pure function of the arguments (no clock, seeded random), so SHA-256 pins in the
shipped profiles stay valid.

    python -m station.families.esp.sim.firmware OUTDIR   # writes the demo firmware set of the shipped profiles
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from esptool.bin_image import ELFSection, ESP8266ROMFirmwareImage, ImageSegment
from esptool.cmds import FLASH_MODES
from esptool.loader import ESPLoader
from esptool.targets import ESP8266ROM

from station.families.esp.image import rom_class
from station.families.esp.payloads.partition_table import (
    SUBTYPE_APP_FACTORY,
    SUBTYPE_APP_OTA_0,
    SUBTYPE_DATA_OTA,
    SUBTYPE_DATA_LITTLEFS,
    SUBTYPE_DATA_NVS,
    SUBTYPE_DATA_PHY,
    TYPE_APP,
    TYPE_DATA,
    TYPE_ESP_SECURE_CERT,
    Partition,
    build_partition_table,
)

# Fixed build identity: the images must not change from run to run.
BUILD_DATE = "Jan  1 2025"
BUILD_TIME = "12:00:00"
IDF_VERSION = "v5.3.2"

_APP_DESC = struct.Struct("<II8s32s32s16s16s32s32sHHB3s72s")  # esp_app_desc_t, 256 bytes
_APP_DESC_MAGIC = 0xABCD5432
_BOOTLOADER_DESC = struct.Struct("<B3sI32s24s16s")  # esp_bootloader_desc_t, 80 bytes
_BOOTLOADER_DESC_MAGIC = 0x50
_MMU_PAGE = 0x10000
_AGENT_MARKER = b"STATION-AGENT/1\0"  # = station.families.esp.sim.agent.AGENT_MARKER: the provisioning agent's banner
_IMPROV_MARKER = b"IMPROV\x01"  # = station.families.esp.sim.improv.IMPROV_MARKER: the Improv serial packet header


@dataclass(frozen=True)
class _Layout:
    """Where a chip's ESP-IDF app and bootloader segments load (from the IDF linker scripts)."""

    drom: int
    irom: int
    dram: int
    iram: int
    boot_dram: int
    boot_iram: tuple[int, int]  # iram_loader_seg, iram_seg
    max_rev_full: int  # CONFIG_<chip>_REV_MAX_FULL of IDF 5.x
    shared_cache: bool  # IROM and DROM share one MMU table (C3)


_LAYOUTS = {
    "ESP32": _Layout(0x3F400020, 0x400D0020, 0x3FFB0000, 0x40080000,
                     0x3FFF0000, (0x40078000, 0x40080400), 399, False),
    "ESP32-C3": _Layout(0x3C000020, 0x42000020, 0x3FC8A000, 0x40380000,
                        0x3FCD5800, (0x403CC000, 0x403CE000), 199, True),
}


def make_app_image(
    chip: str,
    project_name: str,
    version: str,
    size: int = 0,
    seed: int = 0,
    compressible: bool = True,
    arduino: bool = False,
    identity_agent: bool = False,
    improv: bool = False,
) -> bytes:
    """A valid app image for `chip` of roughly `size` bytes (at least the minimal image).

    ESP8266: an ESP8266_RTOS_SDK app for 0x10000, or with `arduino` the Arduino .bin for 0x0.
    `identity_agent`: the app links the station's provisioning agent, i.e. its read-only data holds the agent's
    banner string `STATION-AGENT/1` (docs/agent-protocol.md); an emulated board runs the agent when it boots
    such an app. Off by default, and then the bytes are exactly what they always were.
    `improv`: the app speaks Improv Wi-Fi serial, i.e. its read-only data holds the packet header constant
    `IMPROV` + version 1; an emulated board runs Improv when it boots such an app. Off by default, likewise.
    """
    _check_text("project_name", project_name)
    _check_text("version", version)
    rom = rom_class(chip)
    rng = random.Random(f"{rom.CHIP_NAME}/{project_name}/{version}/{seed}")  # str seeds are stable
    fill = _filler(rng, compressible)

    def rodata_fill(n: int) -> bytes:  # read-only data, led by the agent's banner and Improv's header when linked
        head = (_AGENT_MARKER if identity_agent else b"") + (_IMPROV_MARKER if improv else b"")
        return head + fill(n - len(head))

    if rom is ESP8266ROM:
        if arduino:
            return _arduino_esp8266_bin(project_name, version, size, fill, rodata_fill)
        return _rtos_esp8266_app(project_name, version, size, fill, rodata_fill)

    layout = _LAYOUTS.get(rom.CHIP_NAME)
    if layout is None:
        raise ValueError(f"no demo layout for {rom.CHIP_NAME}; supported: ESP32, ESP32-C3, ESP8266")
    elf_sha256 = hashlib.sha256(f"{rom.CHIP_NAME}/{project_name}/{version}/{seed}".encode()).digest()
    app_desc = _APP_DESC.pack(
        _APP_DESC_MAGIC, 0, b"", version.encode(), project_name.encode(), BUILD_TIME.encode(),
        BUILD_DATE.encode(), IDF_VERSION.encode(), elf_sha256, 0, 99, 16, b"", b"",
    )
    iram = fill(min(max(size // 8, 0x400), 0x10000))
    dram = fill(min(max(size // 32, 0x100), 0x4000))
    # IROM must start on a fresh 64 KiB page; esptool fills the gap after DROM with RAM
    # segments, so end DROM about half the RAM size before a page boundary (no zero padding).
    half_ram = (len(iram) + len(dram)) // 2
    drom_end = -(-(0x20 + len(app_desc) + max(size // 4, 0x100) + half_ram) // _MMU_PAGE) * _MMU_PAGE
    rodata = app_desc + rodata_fill((drom_end - half_ram - 0x20 - len(app_desc)) // 4 * 4)

    def build(code_len: int) -> bytes:
        irom_addr = layout.irom
        drom_addr = layout.drom
        if layout.shared_cache:  # keep DROM pages clear of the IROM pages in the shared MMU
            drom_addr += (code_len + _MMU_PAGE - 1) // _MMU_PAGE * _MMU_PAGE
        segments = [
            _section(".flash.rodata", drom_addr, rodata),  # starts with esp_app_desc_t
            _section(".flash.text", irom_addr, code[:code_len]),
            _section(".dram0.data", layout.dram, dram),
            _section(".iram0.text", layout.iram, iram),
        ]
        return _save_esp32_family(rom, segments, entry=layout.iram + 0x400)

    # The image length is the code length plus a fixed part (headers, MMU padding, RAM
    # segments), so one trial build tells how long the code must be to reach `size`.
    code = fill(max(size, 0x400))
    image = build(0x400)
    if len(image) < size:
        image = build(min(len(code), 0x400 + (size - len(image)) // 4 * 4))
    return image


def make_bootloader_image(chip: str) -> bytes:
    """A second-stage bootloader image (RAM segments only, with esp_bootloader_desc_t).

    ESP8266: a RAM-only loader image, used as the ESP8266_RTOS_SDK bootloader at 0x0 (and, padded, as
    the eboot-like first 4 KiB of an Arduino .bin).
    """
    rom = rom_class(chip)
    fill = _filler(random.Random(f"bootloader/{rom.CHIP_NAME}"), compressible=True)
    if rom is ESP8266ROM:
        return _eboot_image(fill)
    layout = _LAYOUTS.get(rom.CHIP_NAME)
    if layout is None:
        raise ValueError(f"no demo layout for {rom.CHIP_NAME}; supported: ESP32, ESP32-C3, ESP8266")
    desc = _BOOTLOADER_DESC.pack(
        _BOOTLOADER_DESC_MAGIC, b"", 1, IDF_VERSION.encode(),
        f"{BUILD_DATE} {BUILD_TIME}".encode(), b"",
    )
    loader_iram, main_iram = layout.boot_iram
    segments = [
        _section(".dram0.bootdesc", layout.boot_dram, desc + fill(0x2680)),
        _section(".iram_loader.text", loader_iram, fill(0x1800)),
        _section(".iram.text", main_iram, fill(0x2C00)),
    ]
    return _save_esp32_family(rom, segments, entry=main_iram + 0x100)


def ota_partitions(slot_size: int = 0xF0000) -> list[Partition]:
    """Two OTA slots after NVS and otadata (ESP8266_RTOS_SDK / IDF "partitions_two_ota.csv"), plus a small
    LittleFS partition for the device identity files (client.der, client.key, certs.ar)."""
    return [
        Partition("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, 0x9000, 0x4000),
        Partition("otadata", TYPE_DATA, SUBTYPE_DATA_OTA, 0xD000, 0x2000),
        Partition("phy_init", TYPE_DATA, SUBTYPE_DATA_PHY, 0xF000, 0x1000),
        Partition("ota_0", TYPE_APP, SUBTYPE_APP_OTA_0, 0x10000, slot_size),
        Partition("ota_1", TYPE_APP, SUBTYPE_APP_OTA_0 + 1, 0x10000 + slot_size, slot_size),
        Partition("littlefs", TYPE_DATA, SUBTYPE_DATA_LITTLEFS, 0x10000 + 2 * slot_size, 0x10000),
    ]


def secure_cert_partitions(app_size: int = 0x100000) -> list[Partition]:
    """Single app with an esp_secure_cert partition at 0xD000 (esp_secure_cert_mgr's default offset), so NVS
    shrinks to 0x4000 to make room."""
    return [
        Partition("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, 0x9000, 0x4000),
        Partition("esp_secure_cert", TYPE_ESP_SECURE_CERT, 0, 0xD000, 0x2000),
        Partition("phy_init", TYPE_DATA, SUBTYPE_DATA_PHY, 0xF000, 0x1000),
        Partition("factory", TYPE_APP, SUBTYPE_APP_FACTORY, 0x10000, app_size),
    ]


def default_partitions(app_size: int = 0x100000) -> list[Partition]:
    """ESP-IDF's default single-app table ("partitions_singleapp.csv")."""
    return [
        Partition("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, 0x9000, 0x6000),
        Partition("phy_init", TYPE_DATA, SUBTYPE_DATA_PHY, 0xF000, 0x1000),
        Partition("factory", TYPE_APP, SUBTYPE_APP_FACTORY, 0x10000, app_size),
    ]


def make_partition_table(parts: list[Partition] | None = None) -> bytes:
    """partition-table.bin for offset 0x8000: the given partitions or the default layout."""
    return build_partition_table(parts if parts is not None else default_partitions())


# --- image building ----------------------------------------------------------------------


def _section(name: str, addr: int, data: bytes) -> ELFSection:
    # esptool's save() names padding after the ELF section it aligns, so it wants sections
    return ELFSection(name.encode(), addr, data, flags=0)


def _save_esp32_family(rom, segments: list[ELFSection], entry: int) -> bytes:
    image = rom.BOOTLOADER_IMAGE()  # esptool's image class for this chip
    image.segments = segments
    image.entrypoint = entry
    image.flash_mode = FLASH_MODES["dio"]
    image.flash_size_freq = rom.FLASH_SIZES["4MB"] | rom.FLASH_FREQUENCY["40m"]
    image.min_rev_full = 0
    image.max_rev_full = _LAYOUTS[rom.CHIP_NAME].max_rev_full
    return image.save(None)


def _eboot_image(fill) -> bytes:
    text = bytearray(fill(0x7A0))
    text[7] = 0xA5  # image byte 23 must not read as esptool's ESP32 append_digest flag (0/1)
    segments = [ImageSegment(0x4010F000, bytes(text)), ImageSegment(0x3FFE8000, fill(0x40))]
    return _save_esp8266_v1(segments, entry=0x4010F000 + 0x4)


def _arduino_esp8266_bin(project_name: str, version: str, size: int, fill, rodata_fill) -> bytes:
    """eboot padded to 0x1000 with 0xAA, then the sketch image (Arduino elf2bin.py layout).

    The two words elf2bin.py patches in after the first 8 bytes of irom0 (CRC length and
    value, checked only if the sketch calls ESP.checkFlashCRC()) stay zero: "no CRC".
    """
    eboot = _eboot_image(fill)
    eboot += b"\xAA" * (0x1000 - len(eboot))
    ident = f"{project_name} {version}\0".encode()  # Arduino sketches carry no app descriptor
    rodata = ident + rodata_fill(0x600)
    ram = [
        ImageSegment(0x40100000, fill(min(max(size // 12, 0x400), 0x7000))),  # .text (IRAM)
        ImageSegment(0x3FFE8000, fill(0x500)),  # .data
        ImageSegment(0x3FFE8500, rodata),  # .rodata
    ]
    fixed = len(eboot) + 8 + 8 * (len(ram) + 1) + sum(len(s.data) for s in ram) + 1
    irom_len = max(0x400, (size - fixed) // 16 * 16 - 8)
    irom = ImageSegment(0x40201010, b"\0" * 8 + fill(irom_len))
    sketch = _save_esp8266_v1([irom] + ram, entry=0x40100004)
    return eboot + sketch


def _rtos_esp8266_app(project_name: str, version: str, size: int, fill, rodata_fill) -> bytes:
    """An ESP8266_RTOS_SDK app image for 0x10000: flash-mapped irom plus RAM segments."""
    ident = f"{project_name} {version}\0".encode()
    ram = [
        ImageSegment(0x40100000, fill(min(max(size // 12, 0x400), 0x7000))),  # .text (IRAM)
        ImageSegment(0x3FFE8000, ident + rodata_fill(0x500)),  # .data (rodata lives in DRAM on the ESP8266)
    ]
    fixed = 8 + 8 * (len(ram) + 1) + sum(len(s.data) for s in ram) + 1
    irom = ImageSegment(0x40210010, fill(max(0x400, (size - fixed) // 16 * 16)))
    return _save_esp8266_v1([irom] + ram, entry=0x40100004)


def _save_esp8266_v1(segments: list[ImageSegment], entry: int) -> bytes:
    image = ESP8266ROMFirmwareImage()
    image.segments = segments
    image.entrypoint = entry
    image.flash_mode = FLASH_MODES["dio"]
    image.flash_size_freq = ESP8266ROM.FLASH_SIZES["4MB"] | ESP8266ROM.FLASH_FREQUENCY["40m"]
    out = io.BytesIO()
    image.write_common_header(out, segments)
    checksum = ESPLoader.ESP_CHECKSUM_MAGIC
    for seg in segments:
        checksum = image.save_segment(out, seg, checksum)
    image.append_checksum(out, checksum)
    return out.getvalue()


def _filler(rng: random.Random, compressible: bool):
    """Deterministic segment content: 16 distinct byte values deflate to about half, like code."""
    symbols = bytes(range(0x30, 0x40)) * 16  # index by byte value -> one of 16 symbols

    def fill(n: int) -> bytes:
        data = rng.randbytes(n)
        return data.translate(symbols) if compressible else data

    return fill


def _check_text(field: str, text: str) -> None:
    if not text or len(text.encode()) > 31:  # char[32] with the terminating NUL
        raise ValueError(f"{field} must be 1-31 bytes for esp_app_desc_t (got {text!r})")


# --- demo firmware set -----------------------------------------------------------------------

DEMO_PRODUCTS = {
    # directory: (chip, project, version, app size, seed, links the on-board identity agent)
    "mqtt-sensor-esp32": ("ESP32", "mqtt-sensor", "1.4.0", 300 * 1024, 1, False),
    "mqtt-sensor-esp32c3": ("ESP32-C3", "mqtt-sensor", "1.4.0", 280 * 1024, 2, False),
    "ota-switch-esp8266": ("ESP8266", "ota-switch", "2.1.0", 300 * 1024, 3, False),  # ESP8266_RTOS_SDK, 2 OTA slots
    "secure-sensor-esp32": ("ESP32", "secure-sensor", "1.0.0", 300 * 1024, 4, True),  # makes its own key
}


ARDUINO_PRODUCTS = {
    # directory: (project, version, app size, seed): one Arduino ESP8266 .bin for 0x0, no partition table
    "mqtt-node-esp8266": ("mqtt-node", "1.0.0", 300 * 1024, 5),  # identity files in SPIFFS, Wi-Fi by Improv
}


def demo_firmware_set() -> dict[str, list[tuple[int, str, bytes]]]:
    """directory -> [(flash offset, file name, bytes)] for the shipped demo profiles."""
    result = {directory: [(0x0, f"{project}.bin", make_app_image("ESP8266", project, version, size=size,
                                                                    seed=seed, arduino=True, improv=True))]
              for directory, (project, version, size, seed) in ARDUINO_PRODUCTS.items()}
    for directory, (chip, project, version, size, seed, agent) in DEMO_PRODUCTS.items():
        app = make_app_image(chip, project, version, size=size, seed=seed, identity_agent=agent)
        rom = rom_class(chip)
        if rom is ESP8266ROM:
            result[directory] = [
                (0x0, "bootloader.bin", make_bootloader_image(chip)),
                (0x8000, "partition-table.bin", make_partition_table(ota_partitions())),
                (0x10000, f"{project}.bin", app),
            ]
        else:
            result[directory] = [
                (rom.BOOTLOADER_FLASH_OFFSET, "bootloader.bin", make_bootloader_image(chip)),
                (0x8000, "partition-table.bin", make_partition_table(secure_cert_partitions())),
                (0x10000, f"{project}.bin", app),
            ]
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m station.families.esp.sim.firmware OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(args[0])
    for directory, files in demo_firmware_set().items():
        (outdir / directory).mkdir(parents=True, exist_ok=True)
        for offset, name, data in files:
            path = outdir / directory / name
            path.write_bytes(data)
            print(f"{offset:#07x}  {hashlib.sha256(data).hexdigest()}  {path}  ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
