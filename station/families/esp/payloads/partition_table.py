"""ESP-IDF binary partition tables: parse, build, look up.

No PyPI package reads or writes these, so this is a small hand-rolled version of
ESP-IDF's gen_esp32part.py binary format: 32-byte rows `<2sBBII16sI>` (magic AA 50,
type, subtype, offset, size, name, flags), then an MD5 row (EB EB + 14 x FF + MD5 of
the rows before it), then 0xFF fill up to 0xC00 bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from station.families.esp.payloads import PayloadError

# Partition types (esp_partition.h).
TYPE_APP = 0x00
TYPE_DATA = 0x01
TYPE_ESP_SECURE_CERT = 0x3F  # custom type used by espressif/esp_secure_cert_mgr

# App subtypes.
SUBTYPE_APP_FACTORY = 0x00
SUBTYPE_APP_OTA_0 = 0x10  # ota_0 .. ota_15 = 0x10 .. 0x1F
SUBTYPE_APP_TEST = 0x20

# Data subtypes.
SUBTYPE_DATA_OTA = 0x00
SUBTYPE_DATA_PHY = 0x01
SUBTYPE_DATA_NVS = 0x02
SUBTYPE_DATA_COREDUMP = 0x03
SUBTYPE_DATA_NVS_KEYS = 0x04
SUBTYPE_DATA_EFUSE = 0x05
SUBTYPE_DATA_UNDEFINED = 0x06
SUBTYPE_DATA_FAT = 0x81
SUBTYPE_DATA_SPIFFS = 0x82
SUBTYPE_DATA_LITTLEFS = 0x83

# Flags word bits.
FLAG_ENCRYPTED = 1 << 0
FLAG_READONLY = 1 << 1

TABLE_OFFSET = 0x8000  # default CONFIG_PARTITION_TABLE_OFFSET
TABLE_MAX_LENGTH = 0xC00  # rows + MD5 row; the rest of the 4 KiB sector is for a signature

_ROW = struct.Struct("<2sBBII16sI")
_ENTRY_MAGIC = b"\xAA\x50"
_MD5_MAGIC = b"\xEB\xEB" + b"\xFF" * 14
_END_ROW = b"\xFF" * 32
_MAX_ENTRIES = TABLE_MAX_LENGTH // 32 - 1  # one row is kept for the MD5 row
_APP_ALIGN = 0x10000  # the MMU maps apps in 64 KiB pages
_DATA_ALIGN = 0x1000  # flash erase sector


@dataclass(frozen=True)
class Partition:
    name: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.size


def parse_partition_table(data: bytes) -> list[Partition]:
    """Read a binary partition table (the bytes at 0x8000, or just the table itself)."""
    parts: list[Partition] = []
    md5 = hashlib.md5()
    for pos in range(0, min(len(data), TABLE_MAX_LENGTH), 32):
        row = bytes(data[pos : pos + 32])
        if len(row) < 32:
            break
        if row == _END_ROW:
            return _non_empty(parts)
        if row[:16] == _MD5_MAGIC:
            if row[16:] != md5.digest():
                raise PayloadError(
                    f"Partition table MD5 mismatch at row {pos // 32} (stored {row[16:].hex()}, "
                    f"computed {md5.hexdigest()}); the table is corrupt. Regenerate it with the "
                    "firmware build (gen_esp32part.py) or read it again from the board."
                )
            return _non_empty(parts)
        magic, ptype, subtype, offset, size, raw_name, flags = _ROW.unpack(row)
        if magic != _ENTRY_MAGIC:
            raise PayloadError(
                f"Partition table row {pos // 32} starts with {magic.hex(' ')} instead of aa 50; "
                "this is not an ESP-IDF partition table (or it is corrupt). "
                "Use the partition-table.bin from the firmware build."
            )
        try:
            name = raw_name.split(b"\x00", 1)[0].decode("ascii")
        except UnicodeDecodeError:
            raise PayloadError(
                f"Partition table row {pos // 32} has a name that is not ASCII ({raw_name!r}); "
                "the table is corrupt. Use the partition-table.bin from the firmware build."
            ) from None
        md5.update(row)
        parts.append(Partition(name, ptype, subtype, offset, size, flags))
    raise PayloadError(
        f"Partition table ends after {len(parts)} entries without an end marker "
        "(MD5 row or 0xFF fill); it is truncated. Use the complete partition-table.bin "
        f"({TABLE_MAX_LENGTH:#x} bytes or more)."
    )


def _non_empty(parts: list[Partition]) -> list[Partition]:
    if not parts:
        raise PayloadError(
            "Partition table has no entries (all 0xFF: erased flash or the wrong file). "
            "Use the partition-table.bin from the firmware build."
        )
    return parts


def build_partition_table(parts: list[Partition]) -> bytes:
    """Binary table with MD5 row, padded with 0xFF to 0xC00 bytes (what the build system writes)."""
    _validate(parts)
    rows = b"".join(
        _ROW.pack(_ENTRY_MAGIC, p.type, p.subtype, p.offset, p.size, p.name.encode("ascii"), p.flags)
        for p in parts
    )
    table = rows + _MD5_MAGIC + hashlib.md5(rows).digest()
    return table + b"\xFF" * (TABLE_MAX_LENGTH - len(table))


def find_partition(
    parts: list[Partition],
    name: str | None = None,
    type: int | None = None,  # noqa: A002 - matches the field name
    subtype: int | None = None,
) -> Partition | None:
    """First partition matching every given criterion, or None."""
    for p in parts:
        if name is not None and p.name != name:
            continue
        if type is not None and p.type != type:
            continue
        if subtype is not None and p.subtype != subtype:
            continue
        return p
    return None


def _validate(parts: list[Partition]) -> None:
    if not parts:
        raise PayloadError("Partition table has no partitions; add at least the app partition.")
    if len(parts) > _MAX_ENTRIES:
        raise PayloadError(
            f"Partition table has {len(parts)} partitions; the limit is {_MAX_ENTRIES}. Merge some."
        )
    seen: set[str] = set()
    for p in parts:
        label = f"Partition '{p.name}'"
        try:
            encoded = p.name.encode("ascii")
        except UnicodeEncodeError:
            raise PayloadError(f"{label}: the name must be ASCII. Rename it.") from None
        if not 1 <= len(encoded) <= 16 or "\x00" in p.name:
            raise PayloadError(f"{label}: the name must be 1-16 ASCII characters. Rename it.")
        if p.name in seen:
            raise PayloadError(f"{label} appears twice; partition names must be unique.")
        seen.add(p.name)
        if not (0 <= p.type <= 0xFF and 0 <= p.subtype <= 0xFF):
            raise PayloadError(f"{label}: type and subtype must be 0-255 (got {p.type}, {p.subtype}).")
        if not 0 <= p.flags <= 0xFFFFFFFF:
            raise PayloadError(f"{label}: flags must fit in 32 bits (got {p.flags}).")
        if p.size <= 0 or p.offset < 0 or p.end > 0xFFFFFFFF:
            raise PayloadError(
                f"{label}: offset {p.offset:#x} size {p.size:#x} is not a valid flash range."
            )
        align = _APP_ALIGN if p.type == TYPE_APP else _DATA_ALIGN
        if p.offset % align:
            raise PayloadError(
                f"{label}: offset {p.offset:#x} is not aligned to {align:#x}; "
                f"move it to {(p.offset + align - 1) // align * align:#x}."
            )
    ordered = sorted(parts, key=lambda p: p.offset)
    for before, after in zip(ordered, ordered[1:]):
        if after.offset < before.end:
            raise PayloadError(
                f"Partition '{after.name}' at {after.offset:#x} overlaps '{before.name}' "
                f"({before.offset:#x}-{before.end - 1:#x}); move or shrink one of them."
            )
