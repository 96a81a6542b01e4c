"""Check ESP firmware images before they are flashed, with esptool's own image parser.

esptool only checks an image against a *connected* chip (cmds._get_image_incompatibility needs
a loader and only warns for apps), so a profile's firmware is checked here, offline, when the
profile is loaded: right chip, complete, checksum and SHA-256 valid, fits the flash.
"""

from __future__ import annotations

import io
import re
import struct

from esptool.bin_image import ESP8266ROMFirmwareImage, LoadFirmwareImage
from esptool.loader import ESPLoader
from esptool.targets import CHIP_DEFS, ROM_LIST, ESP8266ROM
from esptool.util import FatalError

ESP_IMAGE_MAGIC = ESPLoader.ESP_IMAGE_MAGIC  # 0xE9
ESP8266_V2_MAGIC = 0xEA  # ESP8266 "v2" (OTA SDK) app image
ARDUINO_ESP8266_APP_OFFSET = 0x1000  # elf2bin.py: eboot padded to 4 KiB, then the sketch

_PARSE_ERRORS = (FatalError, struct.error, TypeError, ValueError, RuntimeError)
_CHIP_BY_IMAGE_ID = {rom.IMAGE_CHIP_ID: rom for rom in ROM_LIST if hasattr(rom, "IMAGE_CHIP_ID")}


class ImageError(ValueError):
    """A firmware image is unusable for this board; the message names the file and the fix."""


class _QuietESP8266Image(ESP8266ROMFirmwareImage):
    # esptool logs "Suspicious segment" for flash-mapped (irom0) segments, which Arduino app
    # images always have; problems are raised as ImageError here, never logged.
    def warn_if_unusual_segment(self, offset, size, is_irom_segment):
        pass


def rom_class(chip: str) -> type[ESPLoader]:
    """esptool's target class for "ESP32", "ESP32-C3", "esp32c3", "ESP8266", ..."""
    rom = CHIP_DEFS.get(re.sub(r"[-_ ()]", "", chip.lower()))
    if rom is None:
        known = ", ".join(r.CHIP_NAME for r in ROM_LIST)
        raise ImageError(f"Unknown chip '{chip}'; use one of {known}.")
    return rom


def image_chip(data: bytes) -> str | None:
    """esptool chip name the image is built for, or None if it is not a valid ESP image.

    ESP8266 images have no chip id; an image counts as ESP8266 when it parses and checksums as
    one and not as an ESP32-family image (whose extended header names the chip).
    """
    if not data:
        return None
    candidates = []
    if data[0] == ESP_IMAGE_MAGIC and (rom := _header_rom(data)) is not None:
        candidates.append(rom)
    if data[0] in (ESP_IMAGE_MAGIC, ESP8266_V2_MAGIC):
        candidates.append(ESP8266ROM)
    for rom in candidates:
        try:
            _load(data, rom, "image")
        except ImageError:
            continue
        return rom.CHIP_NAME
    return None


def check_app_image(data: bytes, chip: str, flash_size: int, offset: int, what: str) -> None:
    """Raise ImageError unless `data` is a complete, valid image for `chip` that fits the flash."""
    _check(data, rom_class(chip), flash_size, offset, what)


def check_bootloader_image(data: bytes, chip: str, flash_size: int, what: str) -> None:
    """Like check_app_image, at the chip's bootloader offset (ESP32 0x1000; C3 and ESP8266 0x0).

    The ROM loads a bootloader into RAM, so it must not have flash-mapped segments: that is
    how an app image passed as the bootloader is caught.
    """
    rom = rom_class(chip)
    image = _check(data, rom, flash_size, rom.BOOTLOADER_FLASH_OFFSET, what)
    in_flash = image.is_irom_addr if rom is ESP8266ROM else image.is_flash_addr
    for seg in image.segments:
        if seg.addr and in_flash(seg.addr):
            raise ImageError(
                f"{what} has a segment mapped from flash (load address {seg.addr:#010x}), so it is "
                "an application, not a bootloader; use bootloader.bin from the firmware build."
            )


def _check(data: bytes, rom: type[ESPLoader], flash_size: int, offset: int, what: str):
    if not data:
        raise ImageError(f"{what} is empty; is it truncated or the wrong file?")
    magics = (ESP_IMAGE_MAGIC, ESP8266_V2_MAGIC) if rom is ESP8266ROM else (ESP_IMAGE_MAGIC,)
    if data[0] not in magics:
        raise ImageError(
            f"{what} is not an ESP image (bad magic {data[0]:#04x}, expected 0xE9); "
            "is it truncated or the wrong file?"
        )
    built_for = image_chip(data)
    if built_for is None and rom is not ESP8266ROM:  # damaged image: trust a plausible header
        header_rom = _header_rom(data)
        built_for = header_rom.CHIP_NAME if header_rom else None
    if built_for is not None and built_for != rom.CHIP_NAME:
        raise ImageError(
            f"{what} is built for {built_for} but the board is {rom.CHIP_NAME}; pick the profile "
            f"for {built_for} or rebuild the firmware for {rom.CHIP_NAME}"
        )
    image = _load(data, rom, what)
    if offset + len(data) > flash_size:
        raise ImageError(
            f"{what} ({_size(len(data))} at {offset:#x}) does not fit the board's "
            f"{_size(flash_size)} flash"
        )
    return image


def _header_rom(data: bytes) -> type[ESPLoader] | None:
    """The chip an ESP32-family extended header names, if the header looks like one."""
    if len(data) < 24 or data[23] not in (0, 1):  # byte 23: append_digest flag
        return None
    return _CHIP_BY_IMAGE_ID.get(struct.unpack_from("<H", data, 12)[0])


def _load(data: bytes, rom: type[ESPLoader], what: str):
    """Parse with esptool and check what the ROM / bootloader checks: checksum and SHA-256."""
    stream = io.BytesIO(data)
    try:
        if rom is ESP8266ROM and data[0] == ESP_IMAGE_MAGIC:
            image = _QuietESP8266Image(stream)
        else:
            image = LoadFirmwareImage(rom.CHIP_NAME, data)
    except _PARSE_ERRORS as exc:
        raise _damaged(what, exc) from None
    if rom is not ESP8266ROM and image.chip_id != rom.IMAGE_CHIP_ID:
        raise ImageError(
            f"{what} has chip id {image.chip_id} in its header, not {rom.CHIP_NAME}'s "
            f"{rom.IMAGE_CHIP_ID}; rebuild the firmware for {rom.CHIP_NAME}"
        )
    computed = image.calculate_checksum()
    if image.checksum != computed:
        raise ImageError(
            f"{what} has checksum {image.checksum:#04x} but its data sums to {computed:#04x}; "
            "the file is corrupt. Download or build it again."
        )
    if getattr(image, "append_digest", False):
        if len(image.stored_digest) < image.SHA256_DIGEST_LEN:
            raise ImageError(
                f"{what} is truncated: it ends inside its appended SHA-256 "
                f"({len(data)} bytes). Download or build it again."
            )
        if image.stored_digest != image.calc_digest:
            raise ImageError(
                f"{what} has an appended SHA-256 that does not match its contents; the file is "
                "corrupt. Download or build it again."
            )
    if rom is ESP8266ROM and data[0] == ESP_IMAGE_MAGIC:
        _check_arduino_app(data, stream.tell(), what)
    return image


def _check_arduino_app(data: bytes, loader_end: int, what: str) -> None:
    """Arduino ESP8266 .bin files are eboot (at 0x0, 0xAA-padded to 4 KiB) + the sketch image.

    Only the structure of the sketch image is checked: elf2bin.py writes its CRC words into
    the first segment after computing the XOR checksum, so that checksum never matches.
    """
    padding = data[loader_end:ARDUINO_ESP8266_APP_OFFSET]
    if not padding or padding.strip(b"\xAA"):
        return  # not the Arduino layout: a plain image, or other data follows it
    where = f"{what} (sketch image at {ARDUINO_ESP8266_APP_OFFSET:#x})"
    app = data[ARDUINO_ESP8266_APP_OFFSET:]
    if not app:
        raise ImageError(
            f"{what} is truncated: it ends in the loader's padding, before the sketch image at "
            f"{ARDUINO_ESP8266_APP_OFFSET:#x}. Download or build it again."
        )
    if app[0] != ESP_IMAGE_MAGIC:
        raise ImageError(
            f"{where} has bad magic {app[0]:#04x}, expected 0xE9; the file is corrupt. "
            "Download or build it again."
        )
    try:
        _QuietESP8266Image(io.BytesIO(app))
    except _PARSE_ERRORS as exc:
        raise _damaged(where, exc) from None


def _damaged(what: str, exc: Exception) -> ImageError:
    if isinstance(exc, TypeError):  # esptool's ord() on an empty read: no checksum byte left
        detail = "it ends before its checksum byte"
    elif isinstance(exc, struct.error):
        detail = "it ends inside its header"
    elif "End of file" in str(exc):
        detail = f"it ends inside a segment ({exc})"
    else:
        detail = f"it is corrupt ({exc})"
    return ImageError(f"{what} is truncated or damaged: {detail}. Download or build it again.")


def _size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f}".rstrip("0").rstrip(".") + " MiB"
    return f"{n / 1024:.1f}".rstrip("0").rstrip(".") + " KiB"
