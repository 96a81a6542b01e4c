"""The Particle family: the Spark Core and the Photon, in both personalities at one USB location — the DFU
bootloader (found and driven over pyusb with the DFU family's host) and the firmware's USB serial (found by
pyserial; listening mode, magic baud rates). A board gets the local cloud's key and address, a device key and
its firmware in DFU mode, then Wi-Fi in listening mode, and its public key goes to spark-server (steps.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from station.families.base import BoardFamily, LogFn, ProgressFn
from station.families.particle import profile as particle_profile
from station.families.particle.platforms import PLATFORMS
from station.model import PortInfo
from station.steps import StepPolicy


class ParticleFamily(BoardFamily):
    name = "particle"
    title = "Particle (Spark Core, Photon)"
    usb_ids = {(0x1D50, 0x607F): "Spark Core DFU", (0x2B04, 0xD006): "Photon DFU",
               (0x1D50, 0x607D): "Spark Core", (0x2B04, 0xC006): "Photon"}
    transport = "usb"
    transports = {p.serial_id: "serial" for p in PLATFORMS.values()}
    url_schemes = ("particlesim",)
    chips = tuple(PLATFORMS)
    registers_device_keys = True
    profile_keys = {"": ("particle",)}  # the [particle] table: the local cloud's key and address, the device key
    policies = {
        "detect": StepPolicy(timeout=30, retries=1),
        "dfu": StepPolicy(timeout=30, retries=1),
        "check": StepPolicy(timeout=30, retries=0),
        "flash": StepPolicy(timeout=300, retries=0),
        "verify": StepPolicy(timeout=120, retries=0),
        "restart": StepPolicy(timeout=60, retries=0),  # not "reset": ESP boards give that step 10 s
        "listen": StepPolicy(timeout=30, retries=1),
        "wifi": StepPolicy(timeout=60, retries=1),
    }

    def load_firmware(self, table, base: Path, chip: str):
        return particle_profile.load_firmware(table, base, chip)

    def describe_firmware(self, firmware) -> list[str]:
        return particle_profile.describe_firmware(firmware)

    def load_options(self, top, firmware: dict[str, Any], generic: dict[str, Any]):
        return particle_profile.load_options(top, firmware, generic)

    def open_session(self, port: PortInfo, log: LogFn, progress: ProgressFn):
        from station.families.particle.session import ParticleSession

        return ParticleSession(port.url, log=log, progress=progress)

    def steps(self, profile):
        from station.families.particle.steps import particle_steps

        return particle_steps(profile)

    def sim_command(self):
        from station.families.particle.sim.cli import particle

        return particle
