"""The particle family's share of a profile.

[[firmware]] sets for "Spark Core" and "Photon" list their images as the DFU family's do (raw .bin at an address
and alt, or a .dfu file for the board's DFU USB ID), pinned by SHA-256. The [particle] table says what makes the
board the local cloud's:

    [particle]
    server_key = { file = "keys/spark-server.pub.pem", sha256 = "…" }  # the cloud's RSA public key, PEM or DER
    server_address = "192.168.1.10"   # IPv4 or host name the board connects to
    device_key = "new"                # "new": made on the station in memory; "keep": the board's own, checked

With a [cloud] (or its own [cloud.particle] table) each board's device ID and public key are registered there
(spark-server's provisioning API; an HTTPS registrar gets the same record). The local Mosquitto broker admits
devices by certificate only, so with registrar = "mosquitto" these boards are provisioned but not registered, and
the profile's plan says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.families.dfu.profile import Placement, load_images
from station.families.particle.keys import ParticleKeyError, ServerKey, address_tlv, load_server_key
from station.families.particle.platforms import PLATFORMS
from station.profiles import PinnedFile, Table, WifiSpec, read_pinned

DEVICE_KEY_CHOICES = ("new", "keep")
CERTIFICATE_ONLY = ("mosquitto",)


@dataclass(frozen=True)
class ParticleFirmwareSet:
    chip: str
    images: tuple[PinnedFile, ...]
    placements: tuple[Placement, ...]


@dataclass(frozen=True)
class ParticleOptions:
    server_key: ServerKey
    server_key_file: str
    server_address: str
    device_key: str  # "new" | "keep"
    wifi: WifiSpec | None
    registered: bool  # the profile's [cloud] takes a device's public key (spark-server, https)


def load_firmware(fw: Table, base: Path, chip: str) -> ParticleFirmwareSet:
    fw.check_keys(("chip", "images"))
    images, placements = load_images(fw, base, PLATFORMS[chip].dfu_id)
    return ParticleFirmwareSet(chip=chip, images=images, placements=placements)


def describe_firmware(fw: ParticleFirmwareSet) -> list[str]:
    digests = {f.name: f.sha256 for f in fw.images}
    return [f"{p.name} → alt {p.alt} at {p.address:#010x}, {len(p.data):,} bytes, SHA-256 {digests[p.name][:16]}…"
            for p in fw.placements]


def load_options(top: Table, firmware: dict[str, ParticleFirmwareSet], generic: dict[str, Any]) -> ParticleOptions:
    chips = "/".join(firmware)
    if "particle" not in top.raw:
        top.fail(f"{chips} boards need a [particle] table: server_key (the local cloud's public key), "
                 f"server_address and device_key = \"new\" or \"keep\".")
    table = top.sub("particle", top.get("particle", dict))
    table.check_keys(("server_key", "server_address", "device_key"))
    key_table = table.sub("server_key", table.get("server_key", dict, hint='{ file = "…", sha256 = "…" }'))
    key_table.check_keys(("file", "sha256"))
    file = read_pinned(key_table, top.file.parent)
    try:
        server_key = load_server_key(file.data)
    except ParticleKeyError as exc:
        key_table.fail(f"{file.name}: {exc}.", "file")
    address = table.get("server_address", str, hint="the IPv4 address or host name of the local cloud")
    try:
        address_tlv(address)
    except ParticleKeyError as exc:
        table.fail(f"{exc}.", "server_address")
    device_key = table.get("device_key", str, "new")
    if device_key not in DEVICE_KEY_CHOICES:
        table.fail(f"device_key is \"new\" (made on the station) or \"keep\" (the board's own), not "
                   f"{device_key!r}.", "device_key")
    cloud = generic["clouds"]["particle"]
    # the local broker admits a device by its certificate: a Particle device key has no place there
    registered = cloud is not None and cloud.registrar not in CERTIFICATE_ONLY
    return ParticleOptions(server_key=server_key, server_key_file=file.name, server_address=address,
                           device_key=device_key, wifi=generic["wifi"], registered=registered)
