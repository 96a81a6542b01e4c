"""The ESP family's share of a profile: firmware sets by chip with flash offsets and image kinds, the baud
rate, the NVS namespaces, which NVS partition takes Wi-Fi, and where the identity lives on the board.

Everything is checked at load time with the same code that will build the payloads, so a bad value fails
before any board is touched.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.families.esp.arduino_layout import FlashLayout, flash_layout
from station.families.esp.payloads import IdentityFileNames
from station.profiles import IdentitySpec, PinnedFile, Table, kind_name, read_pinned, read_regular_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

IMAGE_KINDS = ("bootloader", "partition-table", "app", "data")
ESP_CHIPS = ("ESP32", "ESP32-C3", "ESP8266")
NVS_TYPES = ("u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "string")
IDENTITY_STORES = ("auto", "esp_secure_cert", "littlefs", "spiffs")
FILESYSTEM_STORES = ("littlefs", "spiffs")  # the identity as files BearSSL firmware reads
IDENTITY_FILE_KEYS = ("client_cert", "client_key", "ca", "trust_store", "fingerprint")
MAX_KEY_FILE_BYTES = 64 * 1024
VERIFY_MODES = ("unchecked", "all")  # which written regions the verify step asks the board's MD5 of
WIFI_METHODS = ("nvs", "improv")  # Wi-Fi written into NVS with the firmware, or sent by Improv serial after boot
IMPROV_WAIT_S = 10  # how long a freshly flashed firmware may take to answer Improv (ESP Web Tools' default)
IMPROV_WAIT_MAX_S = 20  # with the join's 35 s and GET_DEVICE_INFO's 5 s, within the wifi step's 60 s


@dataclass(frozen=True)
class ImageSpec:
    offset: int
    kind: str
    file: PinnedFile
    signer: str = ""  # SHA-256 of the public key its signature verified under (signed_image.key_fingerprint)

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
    signing_key: RSAPublicKey | None = None  # the key the app images' signatures verify under, if named


@dataclass(frozen=True)
class EspOptions:
    baud: int
    nvs: dict[str, dict[str, tuple[str, int | str]]]  # namespace -> key -> (type, value)
    wifi_partition: str  # the NVS partition (by name in the firmware's partition table) that takes Wi-Fi
    identity_store: str  # "auto" (by the partition table), "esp_secure_cert", "littlefs" or "spiffs"
    identity_partition: str | None  # its name in the firmware's partition table; None: found by type
    verify: str = "unchecked"  # "unchecked": only regions esptool's write did not check; "all": every region
    flash_layout: FlashLayout | None = None  # ESP8266 Arduino: the filesystem's place without a partition table
    identity_files: IdentityFileNames = IdentityFileNames()  # names of the identity files on a filesystem store
    broker_fingerprint: bytes | None = None  # the broker certificate's SHA-1 or SHA-256, written as a file
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
            + (f", signed by key {i.signer[:16]}…" if i.signer else "") for i in fw.images]


def load_firmware(fw: Table, base: Path, chip: str) -> FirmwareSet:
    fw.check_keys(("chip", "images", "signing_key"))
    if "signing_key" in fw.raw and chip != "ESP8266":
        fw.fail(f"signing_key checks ESP8266 Arduino signed updates; {chip} firmware is not signed that way. "
                f"Remove it.", "signing_key")
    images = tuple(_load_image(fw.sub(f"images[{i}]", r), base, chip) for i, r in enumerate(fw.get("images", list)))
    if not images:
        fw.fail("images is empty; list the bootloader, partition table and app.", "images")
    _check_overlaps(fw, images)
    tables = [i for i in images if i.kind == "partition-table"]
    if len(tables) > 1:
        fw.fail("more than one partition-table image; keep one.", "images")
    signing_key = None
    if "signing_key" in fw.raw:
        images, signing_key = _check_signatures(fw, base, images)
    return FirmwareSet(chip=chip, images=images, partition_table=tables[0] if tables else None,
                       signing_key=signing_key)


def _check_signatures(fw: Table, base: Path,
                      images: tuple[ImageSpec, ...]) -> tuple[tuple[ImageSpec, ...], RSAPublicKey]:
    """Every app image must carry a signature the firmware's signed-update check accepts (Arduino ESP8266,
    signed_image.py), so nothing the board would later refuse to update from is ever flashed."""
    from station.families.esp.signed_image import SignedImageError, load_public_key, verify_signed_image

    rel = fw.get("signing_key", str, hint="the public key file the firmware's signed updates check, e.g. "
                                          "\"public.key\" beside the sketch")
    path = (base / rel).resolve()
    try:
        key = load_public_key(read_regular_file(path, MAX_KEY_FILE_BYTES), f"signing key {path}")
    except OSError as exc:
        fw.fail(f"signing key {path} can't be read ({exc.strerror}); put the firmware's public.key there or fix "
                f"the path (relative to the profile).", "signing_key")
    except SignedImageError as exc:
        fw.fail(str(exc), "signing_key")
    apps = [i for i in images if i.kind == "app"]
    if not apps:
        fw.fail("signing_key is set but no image has kind = \"app\"; mark the signed firmware as the app.",
                "signing_key")
    signed = list(images)
    for n, image in enumerate(images):
        if image.kind == "app":
            try:
                signed[n] = replace(image, signer=verify_signed_image(image.data, key))
            except SignedImageError as exc:
                fw.fail(f"{image.name}: {exc}", f"images[{n}].file")
    return tuple(signed), key


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
    if not 0 < improv_wait <= IMPROV_WAIT_MAX_S:
        wifi_table.fail(f"improv_wait {improv_wait} is out of range; give the seconds the firmware may take to "
                        f"boot and answer Improv (more than 0, at most {IMPROV_WAIT_MAX_S}: the wifi step also "
                        f"waits up to 35 s for the network join within its 60 s).", "improv_wait")
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
        options = _load_identity_files(table, options, firmware, identity)
    # an ESP8266 Arduino layout says where the filesystem is: no partition table needed for the identity
    writes_data = options.wifi_in_nvs(generic["wifi"]) or options.nvs or (identity and not options.flash_layout)
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
    """(store, Partition) where this chip's firmware keeps its identity; ValueError says why there is none.
    With an ESP8266 Arduino flash layout the "partition" is the layout's filesystem."""
    from station.families.esp.payloads.partition_table import (SUBTYPE_DATA_LITTLEFS, SUBTYPE_DATA_SPIFFS,
                                                               TYPE_DATA, TYPE_ESP_SECURE_CERT, Partition,
                                                               find_partition, parse_partition_table)

    if options.flash_layout is not None:
        layout, store = options.flash_layout, options.identity_store
        subtype = SUBTYPE_DATA_SPIFFS if store == "spiffs" else SUBTYPE_DATA_LITTLEFS
        return store, Partition(f"{store} ({layout.name})", TYPE_DATA, subtype, layout.fs_start, layout.fs_size)
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


def fs_block_size(options: EspOptions) -> int:
    """The logical block of the identity's filesystem: the Arduino layout's, else the ESP8266 core's 8192."""
    return options.flash_layout.block_size if options.flash_layout else 8192


def _load_identity_files(table: Table, options: EspOptions, firmware: dict[str, FirmwareSet],
                         identity: IdentitySpec) -> EspOptions:
    """[identity] flash_layout, broker_fingerprint and [identity.files]: the identity as files on a filesystem."""
    store = options.identity_store
    layout = None
    if "flash_layout" in table.raw:
        if store not in FILESYSTEM_STORES:
            table.fail("flash_layout places a filesystem; set store = \"spiffs\" or \"littlefs\" (the one the "
                       "firmware mounts).", "store")
        try:
            layout = flash_layout(table.get("flash_layout", str))
        except ValueError as exc:
            table.fail(str(exc), "flash_layout")
        _check_layout(table, layout, firmware)
    elif store == "spiffs":
        table.fail("store = \"spiffs\" is the ESP8266 Arduino core's filesystem; add flash_layout = the board's "
                   "Flash Size menu entry (e.g. \"4M1M\"), which says where it is.", "flash_layout")
    if store == "spiffs" and identity.certificate.key_origin != "host":
        table.fail("the SPIFFS files are written by the station, so the key must be made on the host; set "
                   "key_origin = \"host\".", "key_origin")
    names = IdentityFileNames()
    if "files" in table.raw:
        if store not in FILESYSTEM_STORES:
            table.fail("[identity.files] names files on a filesystem; set store = \"spiffs\" or \"littlefs\".",
                       "store")
        files = table.sub("files", table.get("files", dict))
        files.check_keys(IDENTITY_FILE_KEYS)
        given = {key: files.get(key, str) for key in IDENTITY_FILE_KEYS if key in files.raw}
        for key, name in given.items():
            _check_file_name(files, key, name, store)
        clash = [n for n in given.values() if list(given.values()).count(n) > 1]
        if clash:
            files.fail(f"{clash[0]} is named for two files; give each its own name.")
        names = replace(IdentityFileNames(trust_store=None), **given)  # the CA only where the profile says
    fingerprint = None
    if "broker_fingerprint" in table.raw:
        fingerprint = _parse_fingerprint(table)
        if names.fingerprint is None:
            table.fail("broker_fingerprint needs a file to go in; add fingerprint = \"/broker.fp\" (or the name "
                       "the firmware reads) to [identity.files].", "broker_fingerprint")
    elif names.fingerprint is not None:
        table.fail("[identity.files] fingerprint names a file but there is no broker_fingerprint to put in it; add "
                   "broker_fingerprint = \"AB:CD:…\" (openssl x509 -fingerprint -sha1 -in broker.pem).",
                   "broker_fingerprint")
    return replace(options, flash_layout=layout, identity_files=names, broker_fingerprint=fingerprint)


def _check_layout(table: Table, layout: FlashLayout, firmware: dict[str, FirmwareSet]) -> None:
    for chip, fw in firmware.items():
        if chip != "ESP8266":
            table.fail(f"flash_layout is an ESP8266 Arduino layout, but the profile has {chip} firmware; keep "
                       f"ESP8266 firmware only, or use a partition table (store/partition) instead.", "flash_layout")
        for image in fw.images:
            end = image.offset + len(image.data)
            if end > layout.flash_size:
                table.fail(f"{image.name} ends at {end:#x}, past the {layout.name} layout's "
                           f"{layout.flash_size // (1024 * 1024)} MB flash; pick the layout the firmware was "
                           f"built for.", "flash_layout")
            if image.offset < layout.fs_end and end > layout.fs_start:
                table.fail(f"{image.name} ({image.offset:#x}-{end:#x}) overlaps the {layout.name} layout's "
                           f"filesystem ({layout.fs_start:#x}-{layout.fs_end:#x}); pick the layout the firmware "
                           f"was built for.", "flash_layout")


def _check_file_name(files: Table, key: str, name: str, store: str) -> None:
    from station.families.esp.payloads import PayloadError
    from station.families.esp.payloads.littlefs import check_path
    from station.families.esp.payloads.spiffs import check_name

    try:
        check_name(name) if store == "spiffs" else check_path(name, 32)
    except PayloadError as exc:
        files.fail(str(exc), key)


def _parse_fingerprint(table: Table) -> bytes:
    text = table.get("broker_fingerprint", str, hint="the broker certificate's SHA-1 or SHA-256 in hex")
    digits = "".join(c for c in text if c not in ": ")
    try:
        digest = bytes.fromhex(digits)
    except ValueError:
        digest = b""
    if len(digest) not in (20, 32):
        table.fail("broker_fingerprint must be a SHA-1 (40 hex digits) or SHA-256 (64 hex digits) of the broker's "
                   "certificate, colons allowed, e.g. the output of `openssl x509 -fingerprint -sha1 -in "
                   "broker.pem`.", "broker_fingerprint")
    return digest


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
