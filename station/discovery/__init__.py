"""Finding boards: every source answers `scan()` with the ports present now, keyed by USB location.

Real serial bridges, emulated boards and ports named on the command line all come through this one
interface, so the engine has no idea which kind it is driving.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from station.model import PortInfo


class PortSource(Protocol):
    def scan(self) -> list[PortInfo]: ...


class Discovery:
    """All sources together; a key seen twice keeps its first source's view."""

    def __init__(self, sources: list[PortSource]):
        self.sources = sources

    def scan(self) -> dict[str, PortInfo]:
        ports: dict[str, PortInfo] = {}
        for source in self.sources:
            for port in source.scan():
                ports.setdefault(port.key, port)
        return dict(sorted(ports.items(), key=lambda kv: _natural(kv[0])))


def _natural(key: str) -> list:
    """Sort "sim-1.10" after "sim-1.9", so tiles follow the hub's order."""
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def hub_sources(sim_registry: Path | None = None) -> list[PortSource]:
    """Every board on the real hub, of every family; plus emulated boards when a registry is given."""
    from station.discovery.node_watch import NodeWatch
    from station.discovery.serial_ports import SerialPortSource
    from station.discovery.sim_ports import SimPortSource
    from station.discovery.usb_devices import UsbDeviceSource
    from station.families import usb_ids

    # polls cost a stat() per watched directory until a device node comes or goes
    sources: list[PortSource] = [SerialPortSource(usb_ids("serial"), watch=NodeWatch("/dev")),
                                 UsbDeviceSource(usb_ids("usb"), watch=NodeWatch("/dev/bus/usb", subfolders=True))]
    if sim_registry is not None:
        sources.append(SimPortSource(sim_registry))
    return sources
