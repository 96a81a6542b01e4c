"""Emulated boards, found through the registry directory the emulators keep (one JSON file per plugged board).

The registry plays the part udev plays for real hubs: a file appears when a board is plugged and vanishes
when it is unplugged, and it carries the same facts list_ports or pyusb give for a real port. Every family's
emulator writes the same schema, so one source finds them all.

A poll costs one stat() of the directory: boards are published and removed by renaming and unlinking files
(station/sim/registry.py), which changes the directory's mtime, so the files are read again only then.
"""
from __future__ import annotations

import json
from pathlib import Path

from station.discovery.node_watch import NodeWatch
from station.families import family_of_usb_id
from station.model import PortInfo


class SimPortSource:
    def __init__(self, registry: Path):
        self.registry = Path(registry)
        self._watch = NodeWatch(self.registry)
        self._ports: list[PortInfo] = []

    def scan(self) -> list[PortInfo]:
        if self._watch.changed():
            self._ports = self._read()
        return list(self._ports)

    def _read(self) -> list[PortInfo]:
        ports = []
        for file in sorted(self.registry.glob("*.json")):
            try:
                entry = json.loads(file.read_text())
            except (OSError, ValueError):
                continue  # unplugged while we looked, or being replaced
            family = family_of_usb_id(entry.get("vid"), entry.get("pid"))
            if family is None:
                continue
            ports.append(PortInfo(key=entry["location"], url=entry["url"], family=family.name, vid=entry["vid"],
                                  pid=entry["pid"], serial=entry.get("serial"),
                                  description=entry.get("description", "")))
        return ports
