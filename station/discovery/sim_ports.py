"""Emulated boards, found through the registry directory the emulators keep (one JSON file per plugged board).

The registry plays the part udev plays for real hubs: a file appears when a board is plugged and vanishes
when it is unplugged, and it carries the same facts list_ports or pyusb give for a real port. Every family's
emulator writes the same schema, so one source finds them all.

A poll costs one stat() of the directory: boards are published and removed by renaming and unlinking files
(station/sim/registry.py), which changes the directory's mtime, so the files are read again only then. A
change within the filesystem's timestamp granularity of the last read could leave the mtime as it was, so
while the mtime is that recent every poll reads the files again.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from station.families import family_of_usb_id
from station.model import PortInfo

RECENT_NS = 1_000_000_000  # an mtime younger than this may still hide a second change in the same tick


class SimPortSource:
    def __init__(self, registry: Path):
        self.registry = Path(registry)
        self._seen_mtime: int | None = None
        self._ports: list[PortInfo] = []

    def scan(self) -> list[PortInfo]:
        try:
            mtime = os.stat(self.registry).st_mtime_ns
        except OSError:
            mtime = None  # no registry (yet): read (nothing) every time
        if mtime is None or mtime != self._seen_mtime or time.time_ns() - mtime < RECENT_NS:
            self._ports = self._read()
            self._seen_mtime = mtime
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
