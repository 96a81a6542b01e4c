"""The ESP family's share of a profile: firmware sets by chip with flash offsets and image kinds, the baud
rate, the NVS namespaces, which NVS partition takes Wi-Fi, and where the identity lives on the board.

Everything is checked at load time with the same code that will build the payloads, so a bad value fails
before any board is touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.profiles import IdentitySpec, PinnedFile, Table, kind_name, read_pinned

IMAGE_KINDS = ("bootloader", "partition-table", "app", "data")
ESP_CHIPS = ("ESP32", "ESP32-C3", "ESP8266")
NVS_TYPES = ("u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "string")
IDENTITY_STORES = ("auto", "esp_secure_cert", "littlefs")
VERIFY_MODES = ("unchecked", "all")  # which written regions the verify step asks the board's MD5 of
WIFI_METHODS = ("nvs", "improv")  # Wi-Fi written into NVS with the firmware, or sent by Improv serial after boot
IMPROV_WAIT_S = 10  # how long a freshly flashed firmware may take to answer Improv (ESP Web Tools' default)


@dataclass(frozen=True)
class ImageSpec:
    offset: int
    kind: str
    file: PinnedFile

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def data(self) -> bytes:
        return self.file.data

    @property
    def sha256(self) -> str:
        return self.file.sha256


@dataclass(frozen=True)
class FirmwareSet:
    chip: str
    images: tuple[ImageSpec, ...]
    partition_table: ImageSpec | None  # the image of kind "partition-table", if any


@dataclass(frozen=True)
class EspOptions:
    baud: int
    nvs: dict[str, dict[str, tuple[str, int | str]]]  # namespace -> key -> (type, value)
    wifi_partition: str  # the NVS partition (by name in the firmware's partition table) that takes Wi-Fi
    identity_store: str  # "auto" (by the partition table), "esp_secure_cert" or "littlefs"
    identity_partition: str | None  # its name in the firmware's partition table; None: found by type
    verify: str = "unchecked"  # "unchecked": only regions esptool's write did not check; "all": every region
    wifi_method: str = "nvs"  # "nvs": in the NVS partition with the firmware; "improv": by Improv serial after boot
    improv_wait: float = IMPROV_WAIT_S  # seconds the booted firmware may take to answer Improv

    def wifi_in_nvs(self, wifi) -> bool:
        """Whether the profile's [wifi] (a WifiSpec or None) is written into NVS."""
        return wifi is not None and self.wifi_method == "nvs"

    def nvs_values(self):
        """The profile's own NVS namespaces as the NVS builder takes them."""
        from station.families.esp.payloads.nvs import NvsValue

        return {ns: {key: NvsValue(kind, value) for key, (kind, value) in entries.items()}
                for ns, entries in self.nvs.items()}


def describe_firmware(fw: FirmwareSet) -> list[str]:
    return [f"{i.name} ({i.kind}) → flash {i.offset:#08x}, {len(i.data):,} bytes, SHA-256 {i.sha256[:16]}…"
            for i in fw.images]


def load_firmware(fw: Table, base: Path, chip: str) -> FirmwareSet:
    fw.check_keys(("chip", "images"))
    images = tuple(_load_image(fw.sub(f"images[{i}]", r), base, chip) for i, r in enumerate(fw.get("images", list)))
    if not images:
        fw.fail("images is empty; list the bootloader, partition table and app.", "images")
    _check_overlaps(fw, images)
    tables = [i for i in images if i.kind == "partition-table"]
    if len(tables) > 1:
        fw.fail("more than one partition-table image; keep one.", "images")
    return FirmwareSet(chip=chip, images=images, partition_table=tables[0] if tables else None)


def load_options(top: Table, firmware: dict[str, FirmwareSet], generic: dict[str, Any]) -> EspOptions:
    meta = top.sub("profile", top.raw["profile"])
    baud = meta.get("baud", int, 921600)
    if not 9600 <= baud <= 5_000_000:
        meta.fail(f"baud {baud} is out of range; use a rate such as 460800 or 921600.", "baud")
    verify = meta.get("verify", str, "unchecked")
    if verify not in VERIFY_MODES:
        meta.fail(f"verify '{verify}' is not known; use \"unchecked\" (regions esptool's write has not checked) "
                  "or \"all\" (every written region again).", "verify")
    wifi_raw = top.raw.get("wifi", {})
    ident_raw = top.raw.get("identity", {})
    wifi_table = top.sub("wifi", wifi_raw)
    wifi_partition = wifi_table.get("partition", str, "nvs") if generic["wifi"] else "nvs"
    method = wifi_table.get("method", str, "nvs") if generic["wifi"] else "nvs"
    if method not in WIFI_METHODS:
        wifi_table.fail(f"method '{method}' is not known; use \"nvs\" (written with the firmware) or \"improv\" "
                        "(sent by Improv Wi-Fi serial once the firmware has booted).", "method")
    improv_wait = wifi_table.get("improv_wait", (int, float), IMPROV_WAIT_S) if generic["wifi"] else IMPROV_WAIT_S
    if not 0 < improv_wait <= 120:
        wifi_table.fail(f"improv_wait {improv_wait} is out of range; give the seconds the firmware may take to "
                        "boot and answer Improv (more than 0, at most 120).", "improv_wait")
    if method == "improv" and "partition" in wifi_raw:
        wifi_table.fail("partition is where [wifi] goes in NVS; with method = \"improv\" nothing is written "
                        "there. Remove one of the two.", "partition")
    options = EspOptions(baud=baud, nvs=_load_nvs(top), wifi_partition=wifi_partition,
                         identity_store=ident_raw.get("store", "auto"), identity_partition=ident_raw.get("partition"),
                         verify=verify, wifi_method=method, improv_wait=float(improv_wait))
    identity: IdentitySpec | None = generic["identity"]
    if identity is not None:
        table = top.sub("identity", ident_raw)
        if options.identity_store not in IDENTITY_STORES:
            table.fail(f"store '{options.identity_store}' is not known; use one of {', '.join(IDENTITY_STORES)}.",
                       "store")
        if options.identity_partition is not None and not isinstance(options.identity_partition, str):
            table.fail("partition must be the partition's name in the firmware's partition table.", "partition")
    writes_data = options.wifi_in_nvs(generic["wifi"]) or options.nvs or identity
    if writes_data and not all(fw.partition_table for fw in firmware.values()):
        top.fail("[wifi], [nvs] and [identity] need a partition-table image in every ESP [[firmware]] set, so the "
                 "station knows where their partitions are. Add the firmware's partition-table.bin with "
                 "kind = \"partition-table\".")
    for fw in firmware.values() if identity else ():
        try:
            identity_target(options, fw)
        except ValueError as exc:
            top.fail(str(exc))
    if options.wifi_in_nvs(generic["wifi"]) or options.nvs:
        _check_partition_exists(top, firmware, wifi_partition, "[wifi] partition")
    return options


def identity_target(options: EspOptions, firmware: FirmwareSet):
    """(store, Partition) where this chip's firmware keeps its identity; ValueError says why there is none."""
    from station.families.esp.payloads.partition_table import (SUBTYPE_DATA_LITTLEFS, TYPE_DATA,
                                                               TYPE_ESP_SECURE_CERT, find_partition,
                                                               parse_partition_table)

    assert firmware.partition_table is not None
    table = parse_partition_table(firmware.partition_table.data)
    kinds = {"esp_secure_cert": {"type": TYPE_ESP_SECURE_CERT},
             "littlefs": {"type": TYPE_DATA, "subtype": SUBTYPE_DATA_LITTLEFS}}
    stores = list(kinds) if options.identity_store == "auto" else [options.identity_store]
    for store in stores:
        part = find_partition(table, name=options.identity_partition) if options.identity_partition \
            else find_partition(table, **kinds[store])
        if part is not None and all(getattr(part, k) == v for k, v in kinds[store].items()):
            return store, part
    names = ", ".join(f"{p.name} (type {p.type:#x}/{p.subtype:#x})" for p in table)
    wanted = f"partition named '{options.identity_partition}'" if options.identity_partition else \
        " or ".join(stores) + " partition"
    raise ValueError(f"[identity]: {firmware.chip}'s partition table ({firmware.partition_table.name}) has no "
                     f"{wanted} to hold the identity; it has {names}. Use firmware with such a partition or "
                     f"set [identity] store/partition.")


def _load_image(img: Table, base: Path, chip: str) -> ImageSpec:
    from station.families.esp.image import ImageError, check_app_image

    img.check_keys(("offset", "file", "sha256", "kind"))
    offset = img.get("offset", int, hint="write it as hex, e.g. offset = 0x10000")
    if offset < 0 or offset % 0x1000:
        img.fail(f"offset {offset:#x} is not a multiple of the 4 KiB flash sector; fix the offset.", "offset")
    kind = img.get("kind", str, hint=f"one of {', '.join(IMAGE_KINDS)}")
    if kind not in IMAGE_KINDS:
        img.fail(f"kind '{kind}' is not known; use one of {', '.join(IMAGE_KINDS)}.", "kind")
    file = read_pinned(img, base)
    if kind in ("bootloader", "app"):
        try:
            check_app_image(file.data, chip, flash_size=1 << 30, offset=offset, what=img.raw["file"])
        except ImageError as exc:
            img.fail(str(exc), "file")
    return ImageSpec(offset=offset, kind=kind, file=file)


def _check_overlaps(fw: Table, images: tuple[ImageSpec, ...]) -> None:
    ordered = sorted(images, key=lambda i: i.offset)
    for a, b in zip(ordered, ordered[1:]):
        if a.offset + len(a.data) > b.offset:
            fw.fail(f"{a.name} at {a.offset:#x} ({len(a.data)} bytes) overlaps {b.name} at {b.offset:#x}; "
                    f"fix the offsets.", "images")


def _check_partition_exists(top: Table, firmware: dict[str, FirmwareSet], name: str, what: str) -> None:
    from station.families.esp.payloads import PayloadError
    from station.families.esp.payloads.partition_table import find_partition, parse_partition_table

    for chip, fw in firmware.items():
        assert fw.partition_table is not None
        try:
            table = parse_partition_table(fw.partition_table.data)
        except PayloadError as exc:
            top.fail(f"{fw.partition_table.name} ({chip}): {exc}")
        if find_partition(table, name=name) is None:
            names = ", ".join(p.name for p in table)
            top.fail(f"{what} '{name}' is not in {chip}'s partition table ({fw.partition_table.name}: {names}); "
                     f"fix the name or use firmware whose table has it.")


def _load_nvs(top: Table) -> dict[str, dict[str, tuple[str, int | str]]]:
    if "nvs" not in top.raw:
        return {}
    spaces = top.sub("nvs", top.get("nvs", dict))
    result: dict[str, dict[str, tuple[str, int | str]]] = {}
    for ns, raw in spaces.raw.items():
        table = spaces.sub(ns, raw)
        if len(ns) > 15:
            spaces.fail(f"namespace '{ns}' is longer than NVS's 15 characters; shorten it.")
        entries: dict[str, tuple[str, int | str]] = {}
        for key, value in table.raw.items():
            if len(key) > 15:
                table.fail(f"NVS keys are at most 15 characters; shorten '{key}'.", key)
            if isinstance(value, dict):
                typed = table.sub(key, value)
                typed.check_keys(("type", "value"))
                kind = typed.get("type", str)
                if kind not in NVS_TYPES:
                    typed.fail(f"type '{kind}' is not an NVS type; use one of {', '.join(NVS_TYPES)}.", "type")
                entries[key] = (kind, typed.get("value", str if kind == "string" else int))
            elif isinstance(value, str):
                entries[key] = ("string", value)
            elif isinstance(value, int) and not isinstance(value, bool):
                entries[key] = ("i32", value)
            else:
                table.fail(f"expected a string, an integer or {{ type = \"u16\", value = 1 }}, got {kind_name(value)}.",
                           key)
        result[ns] = entries
    if "nvs.net80211" in result:
        spaces.fail("namespace 'nvs.net80211' is written from [wifi]; set ssid/psk_env there instead.")
    _check_nvs_values(spaces, result)
    return result


def _check_nvs_values(spaces: Table, result: dict) -> None:
    """Check types and ranges with the same code that will write them, so a bad value fails at load time."""
    from station.families.esp.payloads import PayloadError
    from station.families.esp.payloads.nvs import NvsValue, build_nvs_image

    try:
        build_nvs_image({ns: {k: NvsValue(t, v) for k, (t, v) in e.items()} for ns, e in result.items()}, 0x40000)
    except PayloadError as exc:
        spaces.fail(str(exc))
