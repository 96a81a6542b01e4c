"""The DFU family's share of a profile: per chip, the images to write (raw .bin at an address, or DfuSe .dfu
files that carry their own targets), which alternate setting each goes to, and whether to mass-erase.

Checked at load time: pins, .dfu suffix CRC and structure, that a .dfu is meant for the chip's USB ID, that a
raw image names its address, that no two images overlap. Whether an address lies in a writeable segment is
checked against the board's own memory layout in the check step, before any byte is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from station.families.dfu.dfufile import check_board, read_firmware
from station.families.dfu.errors import DfuError
from station.profiles import PinnedFile, Table, read_pinned

# chip name in profiles -> the DFU bootloader's USB ID (PROTOCOLS §2, §5.1); the Spark Core and the Photon are
# the particle family's (their DFU bootloader is one of their two personalities)
DFU_CHIPS: dict[str, tuple[int, int]] = {
    "STM32": (0x0483, 0xDF11),  # any STM32 ROM bootloader (DfuSe); the layout comes from the board
}


@dataclass(frozen=True)
class Placement:
    """Bytes for one range of one alternate setting."""

    name: str  # the file it came from, for records
    alt: int | str  # alt setting by number, or by the name its memory layout carries
    address: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class DfuFirmwareSet:
    chip: str
    images: tuple[PinnedFile, ...]
    placements: tuple[Placement, ...]
    mass_erase: bool  # erase the whole of each alt written before writing (else only the pages touched)


@dataclass(frozen=True)
class DfuOptions:
    pass  # nothing beyond the firmware sets yet; Wi-Fi and identity have no place on a bare DFU board


def load_firmware(fw: Table, base: Path, chip: str) -> DfuFirmwareSet:
    fw.check_keys(("chip", "images", "mass_erase"))
    mass_erase = fw.get("mass_erase", bool, False)
    images, placements = load_images(fw, base, DFU_CHIPS[chip])
    return DfuFirmwareSet(chip=chip, images=images, placements=placements, mass_erase=mass_erase)


def load_images(fw: Table, base: Path, usb_id: tuple[int, int]) -> tuple[tuple[PinnedFile, ...],
                                                                         tuple[Placement, ...]]:
    """The `images` of one [[firmware]] set for a DFU bootloader with `usb_id`: each read, pinned, placed."""
    images, placements = [], []
    for i, raw in enumerate(fw.get("images", list)):
        img = fw.sub(f"images[{i}]", raw)
        img.check_keys(("file", "sha256", "address", "alt"))
        address = img.get("address", int, None)
        alt = img.get("alt", (int, str), 0)
        file = read_pinned(img, base)
        try:
            parsed = read_firmware(file.data, file.name)
            if parsed.suffix is not None:
                check_board(parsed, *usb_id)
            placed = parsed.placements(alt if isinstance(alt, int) else 0, address)
        except DfuError as exc:
            img.fail(f"{exc}.", "file")
        images.append(file)
        for p in placed:
            # a DfuSe file's targets name their alt by number; a raw image keeps the profile's number or name
            placements.append(Placement(file.name, p.alt if parsed.is_dfuse else alt, p.address, p.data))
    if not images:
        fw.fail("images is empty; list the .dfu or .bin files to write.", "images")
    _check_overlaps(fw, placements)
    return tuple(images), tuple(placements)


def describe_firmware(fw: DfuFirmwareSet) -> list[str]:
    digests = {f.name: f.sha256 for f in fw.images}
    lines = [f"{p.name} → alt {p.alt} at {p.address:#010x}, {len(p.data):,} bytes, SHA-256 {digests[p.name][:16]}…"
             for p in fw.placements]
    if fw.mass_erase:
        lines.append("every alt written is mass-erased first")
    return lines


def load_options(top: Table, firmware: dict[str, DfuFirmwareSet], generic: dict[str, Any]) -> DfuOptions:
    """[wifi] and [identity] are for the profile's other boards; a profile of DFU boards alone can't use them."""
    others = [chip for chip in generic["chips"] if chip not in DFU_CHIPS]
    for table in ("wifi", "identity"):
        if generic[table] is not None and not others:
            top.fail(f"[{table}] has no place on {'/'.join(firmware)} boards in DFU mode; remove it (DFU boards "
                     f"are only flashed).")
    return DfuOptions()


def _check_overlaps(fw: Table, placements: list[Placement]) -> None:
    ordered = sorted(placements, key=lambda p: (str(p.alt), p.address))
    for a, b in zip(ordered, ordered[1:]):
        if a.alt == b.alt and a.address + len(a.data) > b.address:
            fw.fail(f"{a.name} at {a.address:#010x} ({len(a.data)} bytes) overlaps {b.name} at {b.address:#010x} "
                    f"on alt {a.alt}; fix the addresses.", "images")
