"""The USB DFU family: boards whose bootloader speaks USB DFU 1.1 with ST's DfuSe extensions — STM32 ROM
bootloaders — flashed over pyusb (host.py), with .dfu files and memory layouts, and an emulator that is a pyusb
backend (sim/). The DFU host is shared: the particle family drives the Spark Core's and the Photon's DFU
bootloaders with it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from station.families.base import BoardFamily, LogFn, ProgressFn
from station.families.dfu import profile as dfu_profile
from station.model import PortInfo
from station.steps import StepPolicy


class DfuFamily(BoardFamily):
    name = "dfu"
    title = "USB DFU"
    usb_ids = {(0x0483, 0xDF11): "STM32 ROM DFU"}
    transport = "usb"
    url_schemes = ("usb", "usbsim")
    chips = tuple(dfu_profile.DFU_CHIPS)
    policies = {
        "detect": StepPolicy(timeout=30, retries=1),
        "check": StepPolicy(timeout=10, retries=0),
        "flash": StepPolicy(timeout=600, retries=0),  # a 1 MiB STM32F4 takes ~30 s of erase alone
        "verify": StepPolicy(timeout=120, retries=0),
        "reset": StepPolicy(timeout=30, retries=0),
    }

    def load_firmware(self, table, base: Path, chip: str):
        return dfu_profile.load_firmware(table, base, chip)

    def describe_firmware(self, firmware) -> list[str]:
        return dfu_profile.describe_firmware(firmware)

    def load_options(self, top, firmware: dict[str, Any], generic: dict[str, Any]):
        return dfu_profile.load_options(top, firmware, generic)

    def open_session(self, port: PortInfo, log: LogFn, progress: ProgressFn):
        from station.families.dfu.session import DfuSession

        return DfuSession(port.url, log=log, progress=progress)

    def steps(self, profile):
        from station.families.dfu.steps import dfu_steps

        return dfu_steps(profile)

    def sim_command(self):
        from station.families.dfu.sim.cli import dfu

        return dfu
