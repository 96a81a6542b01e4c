"""NVS partition images: Wi-Fi credentials (`nvs.net80211`) and a profile's own key/values.

Images are built in memory with esp-idf-nvs-partition-gen's API (`nvs_open`, `write_entry`,
`nvs_close`); `read_nvs` is a small reader (the package has none) used to verify what was
built or read back from a board.

Library behaviour this module works around (esp-idf-nvs-partition-gen 0.3.0):
- `nvs_open(buf, size)` appends the reserved page itself, so it gets `partition_size - 0x1000`.
- `version=None` breaks strings and blobs, so `Page.VERSION2` is passed explicitly.
- Its size checks call `sys.exit` and its packing errors print the value, so every size, key
  and value is validated here first and the library is only reached with good input.
- Writing `sta.ssid` / `sta.pswd` through `write_entry` auto-adds `sta.apinfo` (140 x 0xFF),
  `sta.pmk` (32 x 0x00) and `sta.apsw` (0x0000), as the Wi-Fi driver expects.
"""

from __future__ import annotations

import io
import re
import string
import struct
import zlib
from dataclasses import dataclass

from esp_idf_nvs_partition_gen.nvs_partition_gen import (
    InsufficientSizeError,
    Page,
    nvs_close,
    nvs_open,
    write_entry,
)

from station.families.esp.payloads import PayloadError

PAGE_SIZE = 0x1000
MIN_PARTITION_SIZE = 0x3000  # read/write NVS needs two data pages + the reserved page
WIFI_NAMESPACE = "nvs.net80211"

_NAME_MAX = 15  # NVS_KEY_NAME_MAX_SIZE is 16 including the terminating NUL
_MAX_NAMESPACES = 254
_STRING_MAX = 4000  # bytes including the NUL; strings cannot span pages
_BLOB_MAX = 508000  # ESP-IDF limit for a v2 (multi-page) blob
_INT_RANGES = {
    "u8": (0, 0xFF), "i8": (-0x80, 0x7F),
    "u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFFFFFF), "i32": (-0x80000000, 0x7FFFFFFF),
    "u64": (0, 0xFFFFFFFFFFFFFFFF), "i64": (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
}
_FILL = re.compile(r"(blob_fill|blob_sz_fill)\((\d+);(0x[0-9a-fA-F]{2})\)")


@dataclass(frozen=True, repr=False)
class NvsValue:
    """One typed NVS value.

    encoding: "u8".."i64" (value int), "string" (value str), "binary" (value bytes), or the
    Wi-Fi fill encodings "blob_fill(N;0xPP)" / "blob_sz_fill(N;0xPP)" (value str, padded to N
    bytes; sz_fill adds a u32 length prefix). A secret value never shows in repr or errors.
    """

    encoding: str
    value: int | str | bytes
    secret: bool = False

    def __repr__(self) -> str:
        shown = "<secret>" if self.secret else repr(self.value)
        return f"NvsValue({self.encoding!r}, {shown})"


def validate_wifi(ssid: str, psk: str) -> None:
    """Refuse SSIDs and PSKs the Wi-Fi driver cannot use. The PSK never appears in messages."""
    ssid_len = len(ssid.encode("utf-8"))
    if ssid_len == 0:
        raise PayloadError("Wi-Fi SSID is empty; set the profile's [wifi] ssid.")
    if ssid_len > 32:
        raise PayloadError(
            f"Wi-Fi SSID is {ssid_len} bytes; the limit is 32 bytes (UTF-8). "
            "Shorten it in the profile's [wifi] ssid."
        )
    if psk == "":
        return  # open network
    fix = "Set a valid Wi-Fi password (PSK) for this profile."
    if len(psk) == 64:
        if not all(c in string.hexdigits for c in psk):
            raise PayloadError(
                "Wi-Fi PSK is 64 characters but not all hex digits; a 64-character PSK is a raw "
                "key and must be exactly 64 hex digits (0-9, a-f). Use a passphrase of 8-63 "
                f"printable ASCII characters instead. {fix}"
            )
        return
    if not 8 <= len(psk) <= 63:
        raise PayloadError(
            f"Wi-Fi PSK is {len(psk)} characters; a passphrase must be 8-63 printable ASCII "
            f"characters (or exactly 64 hex digits, or empty for an open network). {fix}"
        )
    if not all(" " <= c <= "~" for c in psk):
        raise PayloadError(
            "Wi-Fi PSK contains a character outside printable ASCII (space to '~'); "
            f"WPA passphrases allow only those. {fix}"
        )


def wifi_namespace(ssid: str, psk: str) -> dict[str, NvsValue]:
    """The station rows of ESP-IDF's wifi_nvs_config example (STA mode, driver defaults)."""
    validate_wifi(ssid, psk)
    u8 = lambda v: NvsValue("u8", v)  # noqa: E731 - a local shorthand for the table below
    return {
        "opmode": u8(1),  # WIFI_MODE_STA
        "sta.ssid": NvsValue("blob_sz_fill(32;0x00)", ssid),
        "sta.pswd": NvsValue("blob_fill(64;0x00)", psk, secret=True),
        "bssid.set": u8(0),
        "sta.lis_intval": NvsValue("u16", 3),
        "sta.scan_method": u8(1),  # WIFI_ALL_CHANNEL_SCAN
        "sta.sort_method": u8(0),
        "sta.pmf_r": u8(0),
        "sta.btm_e": u8(0),
        "sta.rrm_e": u8(0),
        "sta.mbo_e": u8(0),
        "sta.ft": u8(0),
        "sta.trans_d": u8(0),
        "sta.sae_h2e": u8(0),
        "sta.sae_pk_mode": u8(0),
    }


def build_wifi_nvs(
    ssid: str,
    psk: str,
    partition_size: int,
    extra: dict[str, dict[str, NvsValue]] | None = None,
) -> bytes:
    """NVS image with the Wi-Fi station config, plus a profile's own namespaces if given."""
    namespaces = {WIFI_NAMESPACE: wifi_namespace(ssid, psk)}
    for name, values in (extra or {}).items():
        if name == WIFI_NAMESPACE:
            raise PayloadError(
                f"NVS namespace '{WIFI_NAMESPACE}' is written from the Wi-Fi settings; "
                "remove it from the profile's own NVS values."
            )
        namespaces[name] = values
    return build_nvs_image(namespaces, partition_size)


def build_nvs_image(namespaces: dict[str, dict[str, NvsValue]], partition_size: int) -> bytes:
    """An NVS partition image of exactly `partition_size` bytes holding these namespaces."""
    _check_partition_size(partition_size)
    if len(namespaces) > _MAX_NAMESPACES:
        raise PayloadError(
            f"NVS image has {len(namespaces)} namespaces; the limit is {_MAX_NAMESPACES}."
        )
    for ns, values in namespaces.items():
        _check_name(ns, "namespace", ns)
        for key, value in values.items():
            _check_name(key, "key", ns)
            _check_value(ns, key, value)

    out = io.BytesIO()
    nvs = nvs_open(out, partition_size - PAGE_SIZE, Page.VERSION2)
    try:
        for ns, values in namespaces.items():
            write_entry(nvs, ns, "namespace", "", "")
            for key, v in values.items():
                write_entry(nvs, key, "data", v.encoding, v.value)
        nvs_close(nvs)
    except InsufficientSizeError:
        raise PayloadError(
            f"NVS values do not fit in the {partition_size:#x}-byte NVS partition; enlarge the "
            "nvs partition in the partition table or store fewer/smaller values."
        ) from None
    image = out.getvalue()
    if len(image) != partition_size:  # a library change would otherwise spill past the partition
        raise PayloadError(
            f"NVS generator produced {len(image):#x} bytes for a {partition_size:#x}-byte "
            "partition; check the esp-idf-nvs-partition-gen version (0.3.x expected)."
        )
    return image


def _check_partition_size(size: int) -> None:
    if size % PAGE_SIZE:
        raise PayloadError(
            f"NVS partition size {size:#x} is not a multiple of 4096 bytes; "
            "fix the nvs partition size in the partition table."
        )
    if size < MIN_PARTITION_SIZE:
        raise PayloadError(
            f"NVS partition size {size:#x} is too small; a read/write NVS partition needs at "
            f"least {MIN_PARTITION_SIZE:#x} bytes. Enlarge the nvs partition in the partition table."
        )


def _check_name(name: str, what: str, ns: str) -> None:
    where = f"NVS {what} '{name}'" + (f" in namespace '{ns}'" if what == "key" else "")
    if not name or len(name) > _NAME_MAX or not name.isascii() or not name.isprintable():
        raise PayloadError(
            f"{where}: names must be 1-{_NAME_MAX} printable ASCII characters. Rename it."
        )


def _check_value(ns: str, key: str, v: NvsValue) -> None:
    where = f"NVS value {ns}/{key} ({v.encoding})"
    shown = "" if v.secret else f" (got {v.value!r})"
    if v.encoding in _INT_RANGES:
        lo, hi = _INT_RANGES[v.encoding]
        if not isinstance(v.value, int) or not lo <= v.value <= hi:
            raise PayloadError(f"{where} must be an integer {lo}..{hi}{shown}; fix the profile.")
    elif v.encoding == "string":
        if not isinstance(v.value, str) or "\x00" in v.value:
            raise PayloadError(f"{where} must be text without NUL characters{shown}; fix the profile.")
        size = len(v.value.encode("utf-8")) + 1
        if size > _STRING_MAX:
            raise PayloadError(
                f"{where} is {size} bytes with its terminator; the limit is {_STRING_MAX}. "
                "Shorten it or store it as binary."
            )
    elif v.encoding == "binary":
        if not isinstance(v.value, (bytes, bytearray)):
            raise PayloadError(f"{where} must be bytes; fix the profile.")
        if len(v.value) > _BLOB_MAX:
            raise PayloadError(f"{where} is {len(v.value)} bytes; the NVS blob limit is {_BLOB_MAX}.")
    elif m := _FILL.fullmatch(v.encoding):
        limit = int(m.group(2))
        if not isinstance(v.value, str):
            raise PayloadError(f"{where} must be text; fix the profile.")
        size = len(v.value.encode("utf-8"))
        if size > limit:
            raise PayloadError(f"{where} is {size} bytes; the limit is {limit} bytes. Shorten it.")
    else:
        raise PayloadError(
            f"{where}: unknown encoding; use u8, i8, u16, i16, u32, i32, u64, i64, string, binary, "
            "blob_fill(N;0xPP) or blob_sz_fill(N;0xPP)."
        )


# --- reader -----------------------------------------------------------------------------

_PAGE_ACTIVE = 0xFFFFFFFE
_PAGE_FULL = 0xFFFFFFFC
_PAGE_UNINITIALIZED = 0xFFFFFFFF
_ENTRIES_PER_PAGE = 126
_ENTRY_SIZE = 32
_FIRST_ENTRY = 64
_ENTRY_WRITTEN = 0b10
_ENTRY_EMPTY = 0b11
_PRIMITIVES = {
    Page.U8: "<B", Page.I8: "<b", Page.U16: "<H", Page.I16: "<h",
    Page.U32: "<I", Page.I32: "<i", Page.U64: "<Q", Page.I64: "<q",
}
_VARIABLE = (Page.SZ, Page.BLOB, Page.BLOB_DATA)


@dataclass(frozen=True)
class _BlobIndex:
    """A v2 blob's BLOB_IDX entry: total size and which BLOB_DATA chunks hold it."""

    size: int
    chunk_count: int
    chunk_start: int

    def join(self, chunks: dict[tuple[int, str, int], bytes], ns_index: int, key: str) -> bytes:
        try:
            blob = b"".join(
                chunks[(ns_index, key, self.chunk_start + n)] for n in range(self.chunk_count)
            )
        except KeyError:
            raise PayloadError(f"NVS blob '{key}' is missing a data chunk; the image is corrupt.") from None
        if len(blob) != self.size:
            raise PayloadError(
                f"NVS blob '{key}' has {len(blob)} bytes but its index says {self.size}; corrupt."
            )
        return blob


def _crc(data: bytes) -> int:
    return zlib.crc32(data, 0xFFFFFFFF)  # ESP-IDF's esp_rom_crc32_le(0xFFFFFFFF, ...)


def read_nvs(image: bytes) -> dict[tuple[str, str], bytes | int | str]:
    """(namespace, key) -> value for every entry; blobs as bytes, strings as str.

    Checks page-header, entry and data CRCs and raises PayloadError on a corrupt image.
    """
    if not image or len(image) % PAGE_SIZE:
        raise PayloadError(
            f"NVS image is {len(image)} bytes, not a whole number of 4096-byte pages; "
            "it is truncated or not an NVS partition."
        )
    namespaces: dict[int, str] = {}
    items: list[tuple[int, str, object]] = []
    chunks: dict[tuple[int, str, int], bytes] = {}

    pages = []
    for page_no in range(len(image) // PAGE_SIZE):
        page = image[page_no * PAGE_SIZE : (page_no + 1) * PAGE_SIZE]
        state, seq = struct.unpack_from("<II", page)
        if state == _PAGE_UNINITIALIZED:
            continue
        if state not in (_PAGE_ACTIVE, _PAGE_FULL):
            raise PayloadError(
                f"NVS page {page_no} has state {state:#010x} (not active or full); "
                "the image is corrupt or from a board mid-erase. Rebuild or erase the partition."
            )
        if struct.unpack_from("<I", page, 28)[0] != _crc(page[4:28]):
            raise PayloadError(f"NVS page {page_no} header CRC mismatch; the image is corrupt.")
        pages.append((seq, page_no, page))

    for _seq, page_no, page in sorted(pages):  # blob chunks are read in write order
        bitmap = page[32:64]
        i = 0
        while i < _ENTRIES_PER_PAGE:
            state = (bitmap[i // 4] >> ((i % 4) * 2)) & 0b11
            if state != _ENTRY_WRITTEN:
                i += 1
                continue
            at = f"NVS page {page_no} entry {i}"
            entry = page[_FIRST_ENTRY + i * _ENTRY_SIZE : _FIRST_ENTRY + (i + 1) * _ENTRY_SIZE]
            ns_index, item_type, span, chunk = entry[0], entry[1], entry[2], entry[3]
            if struct.unpack_from("<I", entry, 4)[0] != _crc(entry[0:4] + entry[8:32]):
                raise PayloadError(f"{at}: entry CRC mismatch; the image is corrupt.")
            if span < 1 or i + span > _ENTRIES_PER_PAGE:
                raise PayloadError(f"{at}: span {span} runs past the page; the image is corrupt.")
            key = entry[8:24].split(b"\x00", 1)[0].decode("ascii", "replace")
            data = entry[24:32]

            if item_type in _PRIMITIVES:
                value = struct.unpack_from(_PRIMITIVES[item_type], data)[0]
                if ns_index == 0:  # namespace definitions live in namespace 0
                    namespaces[value] = key
                else:
                    items.append((ns_index, key, value))
            elif item_type in _VARIABLE:
                size, _reserved, data_crc = struct.unpack("<HHI", data)
                body_start = _FIRST_ENTRY + (i + 1) * _ENTRY_SIZE
                if size > (span - 1) * _ENTRY_SIZE:
                    raise PayloadError(f"{at}: {size} data bytes do not fit its span; corrupt.")
                body = page[body_start : body_start + size]
                if _crc(body) != data_crc:
                    raise PayloadError(f"{at} ('{key}'): data CRC mismatch; the image is corrupt.")
                if item_type == Page.SZ:
                    try:
                        items.append((ns_index, key, body.rstrip(b"\x00").decode("utf-8")))
                    except UnicodeDecodeError:
                        raise PayloadError(f"{at} ('{key}'): string is not UTF-8; corrupt.") from None
                elif item_type == Page.BLOB:  # v1 single-page blob
                    items.append((ns_index, key, bytes(body)))
                else:
                    chunks[(ns_index, key, chunk)] = bytes(body)
            elif item_type == Page.BLOB_IDX:
                # chunks may sit on later pages: keep the slot, join after all pages are read
                items.append((ns_index, key, _BlobIndex(*struct.unpack_from("<IBB", data))))
            else:
                raise PayloadError(f"{at}: unknown item type {item_type:#04x}; corrupt.")
            i += span

    result: dict[tuple[str, str], bytes | int | str] = {}
    for ns_index, key, value in items:
        if isinstance(value, _BlobIndex):
            value = value.join(chunks, ns_index, key)
        if ns_index not in namespaces:
            raise PayloadError(f"NVS key '{key}' uses undefined namespace index {ns_index}; corrupt.")
        name = (namespaces[ns_index], key)
        if name in result:
            raise PayloadError(f"NVS key {name[0]}/{key} is stored twice; the image is inconsistent.")
        result[name] = value  # type: ignore[assignment]
    return result
