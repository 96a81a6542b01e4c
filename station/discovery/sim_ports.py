"""Emulated boards, found through the registry directory the emulator keeps (one JSON file per plugged board).

The registry plays the part udev plays for real hubs: a file appears when a board is plugged and vanishes
when it is unplugged, and it carries the same facts list_ports gives for a real port.
"""
from __future__ import annotations

import json
from pathlib import Path

from station.discovery.usb_ids import family_of
from station.model import PortInfo


class SimPortSource:
    def __init__(self, registry: Path):
        self.registry = Path(registry)

    def scan(self) -> list[PortInfo]:
        ports = []
        for file in sorted(self.registry.glob("*.json")):
            try:
                entry = json.loads(file.read_text())
            except (OSError, ValueError):
                continue  # unplugged while we looked, or being replaced
            family = family_of(entry.get("vid"), entry.get("pid"))
            if family is None:
                continue
            ports.append(PortInfo(key=entry["location"], url=entry["url"], family=family, vid=entry["vid"],
                                  pid=entry["pid"], serial=entry.get("serial"),
                                  description=entry.get("description", "")))
        return ports
