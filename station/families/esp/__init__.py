"""The ESP family: ESP32, ESP32-C3 and ESP8266 behind a USB-serial bridge or native USB serial, flashed through
esptool's library API (session.py), with NVS, esp_secure_cert and LittleFS payloads and the ROM/stub emulator."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from station.families.base import BoardFamily, LogFn, ProgressFn
from station.families.esp import profile as esp_profile
from station.families.esp.usb_ids import ESP_SERIAL_IDS
from station.model import PortInfo
from station.steps import StepPolicy


class EspFamily(BoardFamily):
    name = "esp"
    title = "ESP (serial bootloader)"
    usb_ids = ESP_SERIAL_IDS
    transport = "serial"
    url_schemes = ("", "socket", "rfc2217", "espsim")
    chips = esp_profile.ESP_CHIPS
    takes_identity = True
    profile_keys = {"": ("nvs",), "profile": ("baud", "verify"), "wifi": ("partition", "method", "improv_wait"),
                    "identity": ("store", "partition", "flash_layout", "files", "broker_fingerprint")}
    policies = {
        "detect": StepPolicy(timeout=30, retries=1),
        "check": StepPolicy(timeout=10, retries=0),
        "flash": StepPolicy(timeout=300, retries=0),
        "write-data": StepPolicy(timeout=60, retries=0),
        "verify": StepPolicy(timeout=60, retries=0),
        "reset": StepPolicy(timeout=10, retries=0),
        "identity": StepPolicy(timeout=60, retries=0),
        "wifi": StepPolicy(timeout=60, retries=0),  # Improv: the boot wait, then up to 35 s for the network join
    }

    def load_firmware(self, table, base: Path, chip: str):
        return esp_profile.load_firmware(table, base, chip)

    def describe_firmware(self, firmware) -> list[str]:
        return esp_profile.describe_firmware(firmware)

    def load_options(self, top, firmware: dict[str, Any], generic: dict[str, Any]):
        return esp_profile.load_options(top, firmware, generic)

    def open_session(self, port: PortInfo, log: LogFn, progress: ProgressFn):
        from station.families.esp.session import EspSession

        return EspSession(port.url, log=log, progress=progress)

    def steps(self, profile):
        from station.families.esp.steps import esp_steps

        return esp_steps(profile)

    def sim_command(self):
        from station.families.esp.sim.cli import esp

        return esp
