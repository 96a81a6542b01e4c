"""The emulated Particle boards: what each looks like in both personalities and what it ships with.

- core: Spark Core, DFU 1d50:607f (serial from the ST UID formula, not the device id), run-time 1d50:607d,
  factory firmware device-os 1.4.4 (14400 → DFU, 28800 → listening mode).
- old-core: the same Core with the 2014 firmware (0.3.3): no magic baud at all, so only the MODE button switches it.
- photon: Photon with bootloader 0250 (its DFU serial is the device id), DFU 2b04:d006, run-time 2b04:c006,
  factory system parts 2.3.1 and Tinker.
- photon-0200: a Photon with bootloader 0200 (DFU serial "00000000010C") and system 0.6.3 (upper-case ids).

Where the keys are (PROTOCOLS §5.2, §5.3): Core external flash (alt 1) device key 0x2000, server key 0x1000;
Photon DCT (alt 1) device key 34, server key 2082.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from station.families.dfu.sim.kinds import CORE, PHOTON, DfuKind
from station.families.particle.sim.firmware import PLATFORM_CORE, PLATFORM_PHOTON, Version


def photon_0250_serial(uid: bytes) -> str:
    """Bootloader 0250 reports the device id (as hex of the UID, upper case like the run-time serial)."""
    return uid.hex().upper()


PHOTON_0250 = replace(PHOTON, name="photon-0250", bcd_device=0x0250, serial_of=photon_0250_serial)


@dataclass(frozen=True)
class KeySlots:
    alt: int
    device_key: int
    device_key_size: int
    server_key: int


@dataclass(frozen=True)
class ParticleKind:
    name: str
    platform: str  # "core" or "photon"
    platform_id: int
    dfu: DfuKind
    run_vid: int
    run_pid: int
    run_product: str
    run_manufacturer: str
    factory_version: Version  # of the firmware it ships with
    keys: KeySlots


CORE_KEYS = KeySlots(alt=1, device_key=0x2000, device_key_size=612, server_key=0x1000)
PHOTON_KEYS = KeySlots(alt=1, device_key=34, device_key_size=1216, server_key=2082)

KINDS: dict[str, ParticleKind] = {k.name: k for k in (
    ParticleKind("core", "core", PLATFORM_CORE, CORE, 0x1D50, 0x607D, "Spark Core", "Spark Devices", (1, 4, 4),
                 CORE_KEYS),
    ParticleKind("old-core", "core", PLATFORM_CORE, CORE, 0x1D50, 0x607D, "Spark Core", "Spark Devices", (0, 3, 3),
                 CORE_KEYS),
    ParticleKind("photon", "photon", PLATFORM_PHOTON, PHOTON_0250, 0x2B04, 0xC006, "Photon", "Particle", (2, 3, 1),
                 PHOTON_KEYS),
    ParticleKind("photon-0200", "photon", PLATFORM_PHOTON, PHOTON, 0x2B04, 0xC006, "Photon", "Particle", (0, 6, 3),
                 PHOTON_KEYS),
)}
