"""Emulated boards, found through the registry directory the emulators keep (one JSON file per plugged board).

The registry plays the part udev plays for real hubs: a file appears when a board is plugged and vanishes
when it is unplugged, and it carries the same facts list_ports or pyusb give for a real port. Every family's
emulator writes the same schema, so one source finds them all. Anyone can write a file there, so each is
checked like input: a malformed one is left out (and said once in the log), never a crash of the station.

A poll costs one stat() of the directory: boards are published and removed by renaming and unlinking files
(station/sim/registry.py), which changes the directory's mtime, so the files are read again only then.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from station.discovery.node_watch import NodeWatch
from station.families import family_of_usb_id
from station.model import PortInfo
from station.text import one_line

log = logging.getLogger(__name__)
MAX_ENTRY_BYTES = 64 * 1024


class RegistryEntryError(ValueError):
    """A registry file that does not describe a board in the registry's schema."""


class SimPortSource:
    def __init__(self, registry: Path):
        self.registry = Path(registry)
        self._reported: set[tuple[str, str]] = set()  # (file, problem) already logged
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
                with file.open("rb") as f:
                    text = f.read(MAX_ENTRY_BYTES + 1)
                entry = json.loads(text)
            except (OSError, ValueError):
                continue  # unplugged while we looked, or being replaced
            try:
                port = port_from_entry(entry)
            except RegistryEntryError as exc:
                self._report(file, str(exc))
                continue
            if port is not None:
                ports.append(port)
        return ports

    def _report(self, file: Path, problem: str) -> None:
        if (file.name, problem) not in self._reported:
            self._reported.add((file.name, problem))
            log.warning("%s", one_line(f"emulator registry file {file}: {problem}; the board is left out"))


def port_from_entry(entry: object) -> PortInfo | None:
    """The port one registry file describes; None for a USB ID no family claims."""
    if not isinstance(entry, dict):
        raise RegistryEntryError("not a JSON object")
    for key, kinds in (("location", str), ("url", str), ("vid", int), ("pid", int)):
        if not isinstance(entry.get(key), kinds) or isinstance(entry.get(key), bool):
            raise RegistryEntryError(f"'{key}' is missing or not a {kinds.__name__}")
    if not entry["location"] or not entry["url"]:
        raise RegistryEntryError("'location' and 'url' must not be empty")
    if not (0 <= entry["vid"] <= 0xFFFF and 0 <= entry["pid"] <= 0xFFFF):
        raise RegistryEntryError("'vid' and 'pid' must be 16-bit USB IDs")
    for key in ("serial", "description"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise RegistryEntryError(f"'{key}' is not a string")
    family = family_of_usb_id(entry["vid"], entry["pid"])
    if family is None:
        return None
    return PortInfo(key=one_line(entry["location"], limit=64), url=entry["url"], family=family.name,
                    vid=entry["vid"], pid=entry["pid"], serial=entry.get("serial"),
                    description=one_line(entry.get("description") or "", limit=120))
