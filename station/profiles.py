"""Product profiles: TOML files that say what a board becomes.

Loading checks everything that can be checked without a board: unknown keys, wrong types, missing firmware
files, SHA-256 pins, which chip each image is built for, Wi-Fi limits. Every error names the file, the key
and the fix, so a profile is either fully usable or refused before any board is touched.
"""
from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from station.identity.idevid import IdevidProfile

IMAGE_KINDS = ("bootloader", "partition-table", "app", "data")
ESP_CHIPS = ("ESP32", "ESP32-C3", "ESP8266")
NVS_TYPES = ("u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "string")
STEP_NAMES = ("detect", "check", "flash", "write-data", "verify", "reset", "identity")
IDENTITY_STORES = ("auto", "esp_secure_cert", "littlefs")


class ProfileError(ValueError):
    """A profile can't be used as written. The message names the file, the key and the fix."""


@dataclass(frozen=True)
class ImageSpec:
    offset: int
    path: Path
    sha256: str
    kind: str
    data: bytes = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class FirmwareSet:
    chip: str
    images: tuple[ImageSpec, ...]
    partition_table: ImageSpec | None  # the image of kind "partition-table", if any


@dataclass(frozen=True)
class WifiSpec:
    ssid: str
    psk_env: str | None
    psk_keyring: str | None  # "service/username"
    partition: str  # NVS partition name in the firmware's partition table


@dataclass(frozen=True)
class CloudSpec:
    """The [cloud] table: where a provisioned board is registered. Secrets are named, never written here."""

    registrar: str  # "mosquitto" (the station's local broker), "spark-server" or "https"
    topic_prefix: str = "devices"
    url: str = ""
    options: dict = field(default_factory=dict)  # registrar-specific: client_id, credentials specs, pin


CLOUD_KEYS = {
    "mosquitto": ("registrar", "topic_prefix"),
    "spark-server": ("registrar", "url", "client_id", "client_secret", "username", "password"),
    "https": ("registrar", "url", "token", "pin_sha256", "pin_kind"),
}


@dataclass(frozen=True)
class StepPolicy:
    timeout: float  # seconds
    retries: int  # extra attempts after the first


DEFAULT_POLICIES = {
    "detect": StepPolicy(timeout=30, retries=1),
    "check": StepPolicy(timeout=10, retries=0),
    "flash": StepPolicy(timeout=300, retries=0),
    "write-data": StepPolicy(timeout=60, retries=0),
    "verify": StepPolicy(timeout=60, retries=0),
    "reset": StepPolicy(timeout=10, retries=0),
    "identity": StepPolicy(timeout=60, retries=0),
}


@dataclass(frozen=True)
class IdentitySpec:
    """The [identity] table: how the IDevID is made (certificate profile) and where it lands on the board."""

    certificate: "IdevidProfile"
    store: str  # "auto" (by the partition table), "esp_secure_cert" (TLV partition) or "littlefs" (BearSSL files)
    partition: str | None  # its name in the firmware's partition table; None: found by type


@dataclass(frozen=True)
class Profile:
    path: Path
    sha256: str  # of the profile file itself, recorded with every batch
    name: str
    description: str
    family: str
    baud: int
    firmware: dict[str, FirmwareSet]  # by chip name
    wifi: WifiSpec | None
    nvs: dict[str, dict[str, tuple[str, int | str]]]  # namespace -> key -> (type, value)
    steps: dict[str, StepPolicy]
    identity: IdentitySpec | None = None
    cloud: CloudSpec | None = None

    def nvs_values(self):
        """The profile's own NVS namespaces as the NVS builder takes them."""
        from station.payloads.nvs import NvsValue

        return {ns: {key: NvsValue(kind, value) for key, (kind, value) in entries.items()}
                for ns, entries in self.nvs.items()}

    @property
    def chips(self) -> tuple[str, ...]:
        return tuple(self.firmware)

    def summary(self) -> str:
        """One line saying what a run of this profile does."""
        parts = [f"{self.name}: {'/'.join(self.chips)}"]
        sizes = {chip: sum(len(i.data) for i in fw.images) for chip, fw in self.firmware.items()}
        parts.append(f"flash {max(sizes.values()) / 1024:.0f} KiB")
        if self.wifi:
            parts.append(f"Wi-Fi '{self.wifi.ssid}'")
        return ", ".join(parts)


class _Table:
    """One TOML table being validated: remembers where it is so errors can say so."""

    def __init__(self, file: Path, where: str, raw: Any):
        self.file, self.where = file, where
        if not isinstance(raw, dict):
            self.fail(f"expected a table, got {_kind(raw)}")
        self.raw: dict = raw

    def fail(self, message: str, key: str | None = None) -> None:
        place = f"{self.where}.{key}" if key else self.where
        raise ProfileError(f"{self.file}: [{place}] {message}")

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.raw:
            if key not in allowed:
                self.fail(f"unknown key '{key}'; allowed here: {', '.join(allowed)}. Remove it or fix its spelling.")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., hint: str = "") -> Any:
        if key not in self.raw:
            if default is ...:
                self.fail(f"missing required key '{key}'{'; ' + hint if hint else ''}.")
            return default
        value = self.raw[key]
        # bool is an int in Python; a profile saying `baud = true` is still wrong
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            names = " or ".join(k.__name__ for k in _as_tuple(kind)).replace("str", "string").replace("int", "integer")
            self.fail(f"expected {names}, got {_kind(value)} {value!r}{'; ' + hint if hint else ''}.", key)
        return value

    def sub(self, key: str, raw: Any) -> "_Table":
        return _Table(self.file, f"{self.where}.{key}" if self.where else key, raw)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def load_profile(path: str | os.PathLike) -> Profile:
    file = Path(path)
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"{file}: profile file not found. Check the path; shipped profiles are in profiles/.")
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{file}: not valid TOML ({exc}). Fix the syntax at that line.")
    top = _Table(file, "", raw)
    top.check_keys(("profile", "firmware", "wifi", "nvs", "steps", "identity", "cloud"))

    meta = top.sub("profile", top.get("profile", dict, hint="add a [profile] table with name and family"))
    meta.check_keys(("name", "description", "family", "baud"))
    name = meta.get("name", str)
    family = meta.get("family", str)
    if family != "esp":
        meta.fail(f"family '{family}' is not supported yet; use \"esp\".", "family")
    baud = meta.get("baud", int, 921600)
    if not 9600 <= baud <= 5_000_000:
        meta.fail(f"baud {baud} is out of range; use a rate such as 460800 or 921600.", "baud")

    firmware = _load_firmware(top, file)
    wifi = _load_wifi(top)
    nvs = _load_nvs(top)
    identity = _load_identity(top)
    if (wifi or nvs or identity) and not all(fw.partition_table for fw in firmware.values()):
        top.fail("[wifi], [nvs] and [identity] need a partition-table image in every [[firmware]] set, so the "
                 "station knows where their partitions are. Add the firmware's partition-table.bin with "
                 "kind = \"partition-table\".")
    for fw in firmware.values() if identity else ():
        try:
            identity_target(identity, fw)
        except ValueError as exc:
            top.fail(str(exc))
    if wifi or nvs:
        _check_partition_exists(top, firmware, wifi.partition if wifi else "nvs", "[wifi] partition")
    steps = _load_steps(top)
    cloud = _load_cloud(top)
    if cloud and not identity:
        top.fail("[cloud] registers each board by its certificate; add an [identity] table.")
    return Profile(path=file, sha256=hashlib.sha256(text).hexdigest(), name=name,
                   description=meta.get("description", str, ""), family=family, baud=baud, firmware=firmware,
                   wifi=wifi, nvs=nvs, steps=steps, identity=identity, cloud=cloud)


def _load_cloud(top: _Table) -> CloudSpec | None:
    if "cloud" not in top.raw:
        return None
    table = top.sub("cloud", top.get("cloud", dict))
    kind = table.get("registrar", str, hint=f"one of {', '.join(CLOUD_KEYS)}")
    if kind not in CLOUD_KEYS:
        table.fail(f"registrar '{kind}' is not known; use one of {', '.join(CLOUD_KEYS)}.", "registrar")
    table.check_keys(CLOUD_KEYS[kind])
    options = {k: table.get(k, str) for k in CLOUD_KEYS[kind] if k not in ("registrar", "topic_prefix", "url")
               and k in table.raw}
    for secret in ("client_secret", "password", "token"):
        if secret in options and not options[secret].startswith(("env:", "keyring:")):
            table.fail(f"{secret} must name where the secret is, never hold it: \"env:VARIABLE\" or "
                       f"\"keyring:service/user\".", secret)
    url = table.get("url", str, "" if kind == "mosquitto" else ...)
    return CloudSpec(registrar=kind, topic_prefix=table.get("topic_prefix", str, "devices"), url=url,
                     options=options)


def _check_partition_exists(top: _Table, firmware: dict[str, FirmwareSet], name: str, what: str) -> None:
    from station.payloads import PayloadError
    from station.payloads.partition_table import find_partition, parse_partition_table

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


def identity_target(identity: IdentitySpec, firmware: FirmwareSet):
    """(store, Partition) where this chip's firmware keeps its identity; ValueError says why there is none."""
    from station.payloads.partition_table import (SUBTYPE_DATA_LITTLEFS, TYPE_DATA, TYPE_ESP_SECURE_CERT,
                                                  find_partition, parse_partition_table)

    assert firmware.partition_table is not None
    table = parse_partition_table(firmware.partition_table.data)
    kinds = {"esp_secure_cert": {"type": TYPE_ESP_SECURE_CERT},
             "littlefs": {"type": TYPE_DATA, "subtype": SUBTYPE_DATA_LITTLEFS}}
    stores = list(kinds) if identity.store == "auto" else [identity.store]
    for store in stores:
        part = find_partition(table, name=identity.partition) if identity.partition \
            else find_partition(table, **kinds[store])
        if part is not None and all(getattr(part, k) == v for k, v in kinds[store].items()):
            return store, part
    names = ", ".join(f"{p.name} (type {p.type:#x}/{p.subtype:#x})" for p in table)
    wanted = f"a partition named '{identity.partition}'" if identity.partition else \
        " or ".join(f"an {s} partition" for s in stores)
    raise ValueError(f"[identity]: {firmware.chip}'s partition table ({firmware.partition_table.name}) has no "
                     f"{wanted} to hold the identity; it has {names}. Use firmware with such a partition or "
                     f"set [identity] store/partition.")


def _load_identity(top: _Table) -> IdentitySpec | None:
    from station.identity import IdentityProfileError
    from station.identity.idevid import parse_identity_table

    if "identity" not in top.raw:
        return None
    table = top.sub("identity", top.get("identity", dict))
    raw = dict(table.raw)
    store = raw.pop("store", "auto")
    partition = raw.pop("partition", None)
    if store not in IDENTITY_STORES:
        table.fail(f"store '{store}' is not known; use one of {', '.join(IDENTITY_STORES)}.", "store")
    if partition is not None and not isinstance(partition, str):
        table.fail("partition must be the partition's name in the firmware's partition table.", "partition")
    try:
        certificate = parse_identity_table(raw, f"{top.file}: [identity]")
    except IdentityProfileError as exc:
        raise ProfileError(str(exc)) from None
    return IdentitySpec(certificate=certificate, store=store, partition=partition)


def _load_firmware(top: _Table, file: Path) -> dict[str, FirmwareSet]:
    sets = top.get("firmware", list, hint="add one [[firmware]] table per chip with its images")
    if not sets:
        top.fail("[[firmware]] is empty; add one [[firmware]] table per chip.")
    firmware: dict[str, FirmwareSet] = {}
    for n, raw in enumerate(sets):
        fw = top.sub(f"firmware[{n}]", raw)
        fw.check_keys(("chip", "images"))
        chip = fw.get("chip", str)
        if chip not in ESP_CHIPS:
            fw.fail(f"chip '{chip}' is not known; use one of {', '.join(ESP_CHIPS)}.", "chip")
        if chip in firmware:
            fw.fail(f"chip '{chip}' has two [[firmware]] sets; keep one.", "chip")
        images = tuple(_load_image(fw.sub(f"images[{i}]", r), file.parent, chip)
                       for i, r in enumerate(fw.get("images", list)))
        if not images:
            fw.fail("images is empty; list the bootloader, partition table and app.", "images")
        _check_overlaps(fw, images)
        tables = [i for i in images if i.kind == "partition-table"]
        if len(tables) > 1:
            fw.fail("more than one partition-table image; keep one.", "images")
        firmware[chip] = FirmwareSet(chip=chip, images=images, partition_table=tables[0] if tables else None)
    return firmware


def _load_image(img: _Table, base: Path, chip: str) -> ImageSpec:
    from station.boards.esp_image import ImageError, check_app_image  # payload rules live with the board family

    img.check_keys(("offset", "file", "sha256", "kind"))
    offset = img.get("offset", int, hint="write it as hex, e.g. offset = 0x10000")
    if offset < 0 or offset % 0x1000:
        img.fail(f"offset {offset:#x} is not a multiple of the 4 KiB flash sector; fix the offset.", "offset")
    kind = img.get("kind", str, hint=f"one of {', '.join(IMAGE_KINDS)}")
    if kind not in IMAGE_KINDS:
        img.fail(f"kind '{kind}' is not known; use one of {', '.join(IMAGE_KINDS)}.", "kind")
    rel = img.get("file", str)
    path = (base / rel).resolve()
    pinned = img.get("sha256", str, hint="pin the image: sha256 = \"<sha256sum of the file>\"").lower()
    if len(pinned) != 64 or any(c not in "0123456789abcdef" for c in pinned):
        img.fail("sha256 must be 64 hex digits (the output of sha256sum).", "sha256")
    try:
        data = path.read_bytes()
    except OSError as exc:
        img.fail(f"firmware file {path} can't be read ({exc.strerror}); put the file there or fix the path "
                 f"(relative to the profile).", "file")
    actual = hashlib.sha256(data).hexdigest()
    if actual != pinned:
        img.fail(f"{rel} has SHA-256 {actual[:16]}…, but the profile pins {pinned[:16]}…; the file is not the one "
                 f"the profile was written for. Restore the right file, or update sha256 after checking it.", "sha256")
    if kind in ("bootloader", "app"):
        try:
            check_app_image(data, chip, flash_size=1 << 30, offset=offset, what=rel)
        except ImageError as exc:
            img.fail(str(exc), "file")
    return ImageSpec(offset=offset, path=path, sha256=actual, kind=kind, data=data)


def _check_overlaps(fw: _Table, images: tuple[ImageSpec, ...]) -> None:
    ordered = sorted(images, key=lambda i: i.offset)
    for a, b in zip(ordered, ordered[1:]):
        if a.offset + len(a.data) > b.offset:
            fw.fail(f"{a.name} at {a.offset:#x} ({len(a.data)} bytes) overlaps {b.name} at {b.offset:#x}; "
                    f"fix the offsets.", "images")


def _load_wifi(top: _Table) -> WifiSpec | None:
    from station.payloads import PayloadError
    from station.payloads.nvs import validate_wifi

    if "wifi" not in top.raw:
        return None
    wifi = top.sub("wifi", top.get("wifi", dict))
    if {"psk", "password", "passphrase"} & set(wifi.raw):
        wifi.fail("a Wi-Fi passphrase must never be written in a profile; name an environment variable "
                  "(psk_env) or an OS keyring entry (psk_keyring) instead.")
    wifi.check_keys(("ssid", "psk_env", "psk_keyring", "partition"))
    ssid = wifi.get("ssid", str)
    psk_env = wifi.get("psk_env", str, None)
    psk_keyring = wifi.get("psk_keyring", str, None)
    if psk_keyring is not None and psk_keyring.count("/") != 1:
        wifi.fail("psk_keyring must be \"service/username\" as stored in the OS keyring.", "psk_keyring")
    try:
        validate_wifi(ssid, "")  # the passphrase is checked when it is read, before any board is touched
    except PayloadError as exc:
        wifi.fail(str(exc), "ssid")
    return WifiSpec(ssid=ssid, psk_env=psk_env, psk_keyring=psk_keyring, partition=wifi.get("partition", str, "nvs"))


def _load_nvs(top: _Table) -> dict[str, dict[str, tuple[str, int | str]]]:
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
                table.fail(f"expected a string, an integer or {{ type = \"u16\", value = 1 }}, got {_kind(value)}.",
                           key)
        result[ns] = entries
    if "nvs.net80211" in result:
        spaces.fail("namespace 'nvs.net80211' is written from [wifi]; set ssid/psk_env there instead.")
    _check_nvs_values(spaces, result)
    return result


def _check_nvs_values(spaces: _Table, result: dict) -> None:
    """Check types and ranges with the same code that will write them, so a bad value fails at load time."""
    from station.payloads import PayloadError
    from station.payloads.nvs import NvsValue, build_nvs_image

    try:
        build_nvs_image({ns: {k: NvsValue(t, v) for k, (t, v) in e.items()} for ns, e in result.items()}, 0x40000)
    except PayloadError as exc:
        spaces.fail(str(exc))


def _load_steps(top: _Table) -> dict[str, StepPolicy]:
    policies = dict(DEFAULT_POLICIES)
    if "steps" not in top.raw:
        return policies
    steps = top.sub("steps", top.get("steps", dict))
    steps.check_keys(STEP_NAMES)
    for name, raw in steps.raw.items():
        step = steps.sub(name, raw)
        step.check_keys(("timeout", "retries"))
        timeout = step.get("timeout", (int, float), policies[name].timeout)
        retries = step.get("retries", int, policies[name].retries)
        if timeout <= 0 or not 0 <= retries <= 10:
            step.fail("timeout must be > 0 seconds and retries between 0 and 10.")
        policies[name] = StepPolicy(timeout=float(timeout), retries=retries)
    return policies


def resolve_psk(wifi: WifiSpec, environ: dict[str, str] | None = None) -> str:
    """The Wi-Fi passphrase from where [wifi] says it is kept (psk_env, else psk_keyring), never from a file.

    Called once per batch, before any board is touched, so a missing secret stops nothing half-way.
    """
    from station.payloads import PayloadError
    from station.payloads.nvs import validate_wifi
    from station.secrets import SecretError, SecretSpec

    places = [f"{kind}:{name}" for kind, name in (("env", wifi.psk_env), ("keyring", wifi.psk_keyring)) if name]
    if not places:
        raise ProfileError(f"Wi-Fi passphrase for '{wifi.ssid}': [wifi] names no psk_env or psk_keyring; add "
                           f"psk_env = \"STATION_WIFI_PSK\" (and export it) or psk_keyring = \"service/user\".")
    try:
        psk = SecretSpec.parse(f"Wi-Fi passphrase for '{wifi.ssid}'", *places).resolve(environ=environ)
    except SecretError as exc:
        raise ProfileError(str(exc)) from None
    try:
        validate_wifi(wifi.ssid, psk.reveal())
    except PayloadError as exc:
        raise ProfileError(f"Wi-Fi passphrase {psk.origin}: {exc}") from None
    return psk.reveal()
