"""Product profiles: TOML files that say what a board becomes.

Loading checks everything that can be checked without a board: unknown keys, wrong types, missing firmware
files, SHA-256 pins, Wi-Fi limits, and through each board family (station.families) its own tables: which chip
each image is built for, where it goes. Every error names the file, the key and the fix, so a profile is either
fully usable or refused before any board is touched. One profile may carry firmware for several families: each
[[firmware]] set names a chip, and the chip says which family reads it.
"""
from __future__ import annotations

import hashlib
import math
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.steps import StepPolicy
from station.text import one_line, shown

if TYPE_CHECKING:
    from station.identity.idevid import IdevidProfile


class ProfileError(ValueError):
    """A profile can't be used as written. The message names the file, the key and the fix."""


@dataclass(frozen=True)
class PinnedFile:
    """A firmware file as the profile names it: read once, its SHA-256 checked against the pin."""

    path: Path
    sha256: str
    data: bytes = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class WifiSpec:
    ssid: str
    psk_env: str | None
    psk_keyring: str | None  # "service/username"


@dataclass(frozen=True)
class CloudSpec:
    """The [cloud] table: where a provisioned board is registered. Secrets are named, never written here."""

    registrar: str  # "mosquitto" (the station's local broker), "spark-server" or "https"
    topic_prefix: str = "devices"
    url: str = ""
    options: dict = field(default_factory=dict)  # registrar-specific: client_id, credentials specs, pin


@dataclass(frozen=True)
class IdentitySpec:
    """The [identity] table's certificate profile; where the identity lands on a board is the family's."""

    certificate: "IdevidProfile"


@dataclass(frozen=True)
class Profile:
    path: Path
    sha256: str  # of the profile file itself, recorded with every batch
    name: str
    description: str
    firmware: dict[str, Any]  # chip name -> the chip's family's firmware set
    options: dict[str, Any]  # family name -> that family's share of the tables
    wifi: WifiSpec | None
    steps: dict[str, dict[str, StepPolicy]]  # family name -> step name -> policy
    identity: IdentitySpec | None = None
    cloud: CloudSpec | None = None  # [cloud]: where boards register unless their family has its own
    family_clouds: dict[str, CloudSpec] = field(default_factory=dict)  # [cloud.<family>]: that family's boards

    @property
    def chips(self) -> tuple[str, ...]:
        return tuple(self.firmware)

    def cloud_for(self, family: str) -> CloudSpec | None:
        return self.family_clouds.get(family, self.cloud)

    @property
    def clouds(self) -> dict[str, CloudSpec]:
        """Every cloud this profile's boards register with, by registrar (the name outbox rows carry)."""
        specs = (self.cloud_for(family) for family in self.families)
        return {spec.registrar: spec for spec in specs if spec is not None}

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.options)

    def summary(self) -> str:
        """One line saying what a run of this profile does."""
        parts = [f"{self.name}: {'/'.join(self.chips)}"]
        sizes = [sum(len(i.data) for i in fw.images) for fw in self.firmware.values()]
        parts.append(f"flash {max(sizes) / 1024:.0f} KiB")
        if self.wifi:
            parts.append(f"Wi-Fi '{self.wifi.ssid}'")
        return ", ".join(parts)

    def plan(self) -> list[str]:
        """What a run writes where, for a person to check before Start: images by chip, Wi-Fi, identity, cloud."""
        from station.families import FAMILIES, family_of_chip

        lines = [f"Profile {self.name} ({self.path.name}, SHA-256 {self.sha256[:16]}…)"]
        for chip, fw in self.firmware.items():
            lines.append(f"{chip}:")
            lines += [f"  {line}" for line in family_of_chip(chip).describe_firmware(fw)]
        lines.append(f"Wi-Fi: network '{self.wifi.ssid}', passphrase from "
                     f"{'the environment' if self.wifi.psk_env else 'the keyring'}" if self.wifi else "Wi-Fi: none")
        if self.identity:
            cert = self.identity.certificate
            lines.append(f"Identity: a {cert.key_type} key made on the {cert.key_origin}, certificate "
                         f"'{cert.serial_template}' signed by the station CA")
        else:
            lines.append("Identity: none")
        if self.clouds:
            for name in self.families:
                cloud, chips = self.cloud_for(name), "/".join(c for c in self.chips if c in FAMILIES[name].chips)
                family = FAMILIES[name]
                if cloud is None:
                    lines.append(f"Cloud for {chips}: none")
                elif family.registers_device_keys and not self.options[name].registered:
                    lines.append(f"Cloud for {chips}: none (their {family.title} keys have no place on "
                                 f"{cloud.registrar})")
                elif not family.registers_device_keys and not (family.takes_identity and self.identity):
                    lines.append(f"Cloud for {chips}: none (no device identity to register)")
                else:
                    lines.append(f"Cloud for {chips}: registered with {cloud.registrar}"
                                 + (f" at {cloud.url}" if cloud.url else ""))
        else:
            lines.append("Cloud: none")
        return lines



class Table:
    """One TOML table being validated: remembers where it is so errors can say so."""

    def __init__(self, file: Path, where: str, raw: Any):
        self.file, self.where = file, where
        if not isinstance(raw, dict):
            self.fail(f"expected a table, got {kind_name(raw)}")
        self.raw: dict = raw

    def fail(self, message: str, key: str | None = None) -> None:
        place = f"{self.where}.{key}" if key and self.where else key or self.where
        at = f"[{place}] " if place else ""  # the file's top level has no table name to give
        # keys and values are the file's words: one line, whatever they hold
        raise ProfileError(one_line(f"{self.file}: {at}{message}", limit=1000))

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
            self.fail(f"expected {names}, got {kind_name(value)} {value!r}{'; ' + hint if hint else ''}.", key)
        return value

    def sub(self, key: str, raw: Any) -> "Table":
        return Table(self.file, f"{self.where}.{key}" if self.where else key, raw)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def kind_name(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def load_profile(path: str | os.PathLike) -> Profile:
    from station.families import FAMILIES, all_chips, family_of_chip

    file = Path(path)
    try:
        text = read_regular_file(file, MAX_PROFILE_BYTES)
    except FileNotFoundError:
        raise ProfileError(f"{file}: profile file not found. Check the path; `station profiles` lists the shipped "
                           f"ones and yours.")
    except OSError as exc:
        raise ProfileError(f"{file}: the profile can't be read ({exc.strerror}); name a TOML file of at most "
                           f"{MAX_PROFILE_BYTES // 1024} KiB.") from None
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{file}: not valid TOML ({exc}). Fix the syntax at that line.")
    top = Table(file, "", raw)
    top.check_keys(("profile", "firmware", "wifi", "steps", "identity", "cloud", *family_keys(FAMILIES, "")))

    meta = top.sub("profile", top.get("profile", dict, hint="add a [profile] table with its name"))
    meta.check_keys(("name", "description", "family", *family_keys(FAMILIES, "profile")))
    name = meta.get("name", str)

    firmware: dict[str, Any] = {}
    by_family: dict[str, dict[str, Any]] = {}
    sets = top.get("firmware", list, hint="add one [[firmware]] table per chip with its images")
    if not sets:
        top.fail("[[firmware]] is empty; add one [[firmware]] table per chip.")
    for n, raw_set in enumerate(sets):
        fw = top.sub(f"firmware[{n}]", raw_set)
        chip = fw.get("chip", str)
        family = family_of_chip(chip)
        if family is None:
            fw.fail(f"chip '{chip}' is not known; use one of {', '.join(all_chips())}.", "chip")
        if chip in firmware:
            fw.fail(f"chip '{chip}' has two [[firmware]] sets; keep one.", "chip")
        firmware[chip] = by_family.setdefault(family.name, {})[chip] = family.load_firmware(fw, file.parent, chip)
    declared = meta.get("family", (str, list), None)
    if declared is not None:
        names = [declared] if isinstance(declared, str) else declared
        for extra in set(by_family) - set(names):
            meta.fail(f"family {names} does not include '{extra}', but [[firmware]] has {extra} chips; add it or "
                      f"remove the key (the chips say which families a profile uses).", "family")

    cloud, family_clouds = _load_cloud(top, list(by_family))
    generic = {"wifi": _load_wifi(top), "identity": _load_identity(top), "chips": tuple(firmware),
               "clouds": {name: family_clouds.get(name, cloud) for name in by_family}}
    options = {name_: FAMILIES[name_].load_options(top, sets_, generic) for name_, sets_ in by_family.items()}
    registering = [f for f in by_family if generic["clouds"][f]]
    if registering and not generic["identity"] and not any(FAMILIES[f].registers_device_keys for f in registering):
        top.fail("[cloud] registers each board by its certificate; add an [identity] table.")
    return Profile(path=file, sha256=hashlib.sha256(text).hexdigest(), name=name,
                   description=meta.get("description", str, ""), firmware=firmware, options=options,
                   wifi=generic["wifi"], steps=_load_steps(top, [FAMILIES[f] for f in by_family]),
                   identity=generic["identity"], cloud=cloud, family_clouds=family_clouds)


def family_keys(families: dict, table: str) -> tuple[str, ...]:
    """Keys the registered families read in a shared table, e.g. "partition" in [wifi] for ESP boards."""
    return tuple(sorted({k for f in families.values() for k in f.profile_keys.get(table, ())}))


MAX_FIRMWARE_BYTES = 64 * 1024 * 1024  # above the largest flash a supported board has (16 MiB), far below RAM
MAX_PROFILE_BYTES = 1024 * 1024
MAX_STEP_TIMEOUT = 24 * 3600  # seconds; a step that may take longer is one nobody is watching


def read_regular_file(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit` of them. Anything else (a device, a FIFO, a directory, a file
    over the limit) raises OSError with words a person can act on; opening never blocks."""
    if "\0" in str(path):
        raise OSError(0, "the path holds a NUL character")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # a FIFO or a device would block a plain open
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "it is not a regular file")
        if info.st_size > limit:
            raise OSError(0, f"it is {info.st_size} bytes, over the limit of {limit}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(0, f"it grew over the limit of {limit} bytes while being read")
    return data


def read_pinned(img: Table, base: Path) -> PinnedFile:
    """The `file` an image table names (relative to the profile), checked against its `sha256` pin."""
    rel = img.get("file", str)
    pinned = img.get("sha256", str, hint="pin the image: sha256 = \"<sha256sum of the file>\"").lower()
    if len(pinned) != 64 or any(c not in "0123456789abcdef" for c in pinned):
        img.fail("sha256 must be 64 hex digits (the output of sha256sum).", "sha256")
    if not rel or "\0" in rel:
        img.fail(f"{shown(rel)} is not a file path; name the firmware file (relative to the profile).", "file")
    path = (base / rel).resolve()
    try:
        data = read_regular_file(path, MAX_FIRMWARE_BYTES)
    except OSError as exc:
        img.fail(f"firmware file {path} can't be read ({exc.strerror}); put a regular file of at most "
                 f"{MAX_FIRMWARE_BYTES // (1024 * 1024)} MiB there or fix the path (relative to the profile).", "file")
    actual = hashlib.sha256(data).hexdigest()
    if actual != pinned:
        img.fail(f"{rel} has SHA-256 {actual[:16]}…, but the profile pins {pinned[:16]}…; the file is not the one "
                 f"the profile was written for. Restore the right file, or update sha256 after checking it.", "sha256")
    return PinnedFile(path=path, sha256=actual, data=data)


def _load_cloud(top: Table, families: list[str]) -> tuple[CloudSpec | None, dict[str, CloudSpec]]:
    """[cloud] (every board's) and its [cloud.<family>] tables (that family's boards: a profile with ESP boards on
    the local broker and Cores on spark-server). Two clouds of one registrar must be the same cloud: outbox rows
    name the registrar."""
    if "cloud" not in top.raw:
        return None, {}
    table = top.sub("cloud", top.get("cloud", dict))
    own = {name: table.sub(name, table.get(name, dict)) for name in families if name in table.raw}
    default = _cloud_spec(table, tuple(own)) if "registrar" in table.raw or not own else None
    by_family = {name: _cloud_spec(sub, ()) for name, sub in own.items()}
    for name, spec in by_family.items():
        other = next((s for s in [default, *by_family.values()] if s and s.registrar == spec.registrar), spec)
        if other != spec:
            own[name].fail(f"a second {spec.registrar} cloud; one registrar serves one cloud per profile, so give "
                           f"these boards the same table or another registrar.", "registrar")
    return default, by_family


def _cloud_spec(table: Table, family_tables: tuple[str, ...]) -> CloudSpec:
    from station.cloud.registrar import REGISTRARS, RegistrarOptionError

    kind = table.get("registrar", str, hint=f"one of {', '.join(REGISTRARS)}")
    if kind not in REGISTRARS:
        table.fail(f"registrar {shown(kind)} is not known; use one of {', '.join(REGISTRARS)}.", "registrar")
    table.check_keys(("registrar", *REGISTRARS[kind].OPTIONS, *family_tables))
    options = {k: table.get(k, str) for k in REGISTRARS[kind].OPTIONS if k not in ("topic_prefix", "url")
               and k in table.raw}
    for secret in ("client_secret", "password", "token"):
        if secret in options and not options[secret].startswith(("env:", "keyring:")):
            table.fail(f"{secret} must name where the secret is, never hold it: \"env:VARIABLE\" or "
                       f"\"keyring:service/user\".", secret)
    url = table.get("url", str, "" if kind == "mosquitto" else ...)
    topic_prefix = table.get("topic_prefix", str, "devices")
    try:
        REGISTRARS[kind].check_options(url, topic_prefix, options)
    except RegistrarOptionError as exc:
        table.fail(f"{exc}; fix it for the {kind} registrar.", exc.key)
    return CloudSpec(registrar=kind, topic_prefix=topic_prefix, url=url, options=options)


def _load_identity(top: Table) -> IdentitySpec | None:
    from station.families import FAMILIES
    from station.identity import IdentityProfileError
    from station.identity.idevid import parse_identity_table

    if "identity" not in top.raw:
        return None
    table = top.sub("identity", top.get("identity", dict))
    raw = {k: v for k, v in table.raw.items() if k not in family_keys(FAMILIES, "identity")}
    try:
        certificate = parse_identity_table(raw, f"{top.file}: [identity]")
    except IdentityProfileError as exc:
        raise ProfileError(str(exc)) from None
    return IdentitySpec(certificate=certificate)


def _load_wifi(top: Table) -> WifiSpec | None:
    from station.families import FAMILIES
    from station.families.esp.payloads import PayloadError
    from station.families.esp.payloads.nvs import validate_wifi
    from station.secrets import Place, SecretError

    if "wifi" not in top.raw:
        return None
    wifi = top.sub("wifi", top.get("wifi", dict))
    if {"psk", "password", "passphrase"} & set(wifi.raw):
        wifi.fail("a Wi-Fi passphrase must never be written in a profile; name an environment variable "
                  "(psk_env) or an OS keyring entry (psk_keyring) instead.")
    wifi.check_keys(("ssid", "psk_env", "psk_keyring", *family_keys(FAMILIES, "wifi")))
    ssid = wifi.get("ssid", str)
    psk_env = wifi.get("psk_env", str, None)
    psk_keyring = wifi.get("psk_keyring", str, None)
    if psk_keyring is not None and psk_keyring.count("/") != 1:
        wifi.fail("psk_keyring must be \"service/username\" as stored in the OS keyring.", "psk_keyring")
    for key, place in (("psk_env", f"env:{psk_env}"), ("psk_keyring", f"keyring:{psk_keyring}")):
        try:
            if wifi.raw.get(key) is not None:
                Place.parse(place, "Wi-Fi passphrase")  # the same rule resolve_psk applies, but now
        except SecretError as exc:
            wifi.fail(str(exc), key)
    try:
        validate_wifi(ssid, "")  # the passphrase is checked when it is read, before any board is touched
    except PayloadError as exc:
        wifi.fail(str(exc), "ssid")
    return WifiSpec(ssid=ssid, psk_env=psk_env, psk_keyring=psk_keyring)


def _load_steps(top: Table, families: list) -> dict[str, dict[str, StepPolicy]]:
    """Each family's default policies, then [steps]: a step named there is set for every family that has it
    (an ESP "check" and a Particle "check" keep their own defaults until the profile says otherwise)."""
    policies = {family.name: dict(family.policies) for family in families}
    if "steps" not in top.raw:
        return policies
    steps = top.sub("steps", top.get("steps", dict))
    steps.check_keys(tuple(dict.fromkeys(name for own in policies.values() for name in own)))
    for name, raw in steps.raw.items():
        step = steps.sub(name, raw)
        step.check_keys(("timeout", "retries"))
        default = next(own[name] for own in policies.values() if name in own)
        timeout = step.get("timeout", (int, float), default.timeout)
        retries = step.get("retries", int, default.retries)
        if not (math.isfinite(timeout) and 0 < timeout <= MAX_STEP_TIMEOUT) or not 0 <= retries <= 10:
            step.fail(f"timeout must be more than 0 and at most {MAX_STEP_TIMEOUT} seconds, and retries between 0 "
                      f"and 10.")
        for own in policies.values():
            if name in own:
                own[name] = StepPolicy(timeout=float(timeout), retries=retries)
    return policies


def resolve_psk(wifi: WifiSpec, environ: dict[str, str] | None = None) -> str:
    """The Wi-Fi passphrase from where [wifi] says it is kept (psk_env, else psk_keyring), never from a file.

    Called once per batch, before any board is touched, so a missing secret stops nothing half-way.
    """
    from station.families.esp.payloads import PayloadError
    from station.families.esp.payloads.nvs import validate_wifi
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
