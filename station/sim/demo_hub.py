"""The demo's emulated hub: ESP boards (sim-1.N) and USB DFU boards (sim-2.N) published in one registry dir.

`station demo` (headless and windowed) and the screenshots run on it; the station finds its boards through
`SimPortSource(hub.registry)`, exactly as it finds emulated boards served by `station sim esp|dfu`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from station.discovery.sim_ports import SimPortSource
from station.families.dfu.sim.device import DfuDevice, make_device
from station.families.dfu.sim.server import DfuSimServer
from station.families.esp.sim.board import EspBoard
from station.families.esp.sim.fleet import demo_fleet
from station.families.esp.sim.server import EspSimServer

DFU_MIX = ("stm32", "core", "photon")  # an STM32 in DfuSe mode, a Spark Core, a Particle Photon


def dfu_fleet(count: int, throttle: bool = False) -> list[DfuDevice]:
    """`count` DFU devices cycling STM32, Spark Core, Photon."""
    return [make_device(DFU_MIX[i % len(DFU_MIX)], i, throttle=throttle) for i in range(count)]


class DemoHub:
    """Both emulators on loopback, serving into one registry dir (a temporary one unless given)."""

    def __init__(self, esp_boards: list[EspBoard], dfu_devices: list[DfuDevice], *, throttle: bool = True,
                 registry: Path | None = None):
        self._tmp = None if registry is not None else tempfile.TemporaryDirectory(prefix="station-sim-")
        self.registry = Path(registry) if registry is not None else Path(self._tmp.name)
        self.esp = EspSimServer(esp_boards, registry_dir=self.registry, throttle=throttle)
        self.dfu = DfuSimServer(dfu_devices, self.registry)

    @classmethod
    def mixed(cls, esp: int, dfu: int, *, faults: bool = False, throttle: bool = True,
              registry: Path | None = None) -> "DemoHub":
        """`esp` boards from demo_fleet (with `faults`, the last ESP board vanishes mid-flash) and `dfu` boards."""
        return cls(demo_fleet(esp, faults=faults), dfu_fleet(dfu, throttle=throttle), throttle=throttle,
                   registry=registry)

    def start(self) -> "DemoHub":
        self.esp.start()
        try:
            self.dfu.start()
        except BaseException:
            self.esp.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.esp.stop()
            self.dfu.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()

    def __enter__(self) -> "DemoHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def locations(self) -> list[str]:
        return self.esp.locations + self.dfu.locations

    def sources(self) -> list[SimPortSource]:
        return [SimPortSource(self.registry)]

    # --- the cable, by location (the window's tile menu) ---------------------------------------------------------

    def _server(self, location: str) -> tuple[EspSimServer | DfuSimServer, int]:
        for server in (self.esp, self.dfu):
            if location in server.locations:
                return server, server.locations.index(location)
        raise KeyError(f"{location} is not a port of the demo hub")

    def is_plugged(self, location: str) -> bool:
        server, i = self._server(location)
        return server.is_plugged(i)

    def unplug(self, location: str) -> None:
        server, i = self._server(location)
        server.unplug(i)

    def plug(self, location: str) -> None:
        server, i = self._server(location)
        server.plug(i)

    # --- the buttons on an ESP dev board, as a person presses them (no cable touched) ------------------------------

    def has_buttons(self, location: str) -> bool:
        return location in self.esp.locations

    def boot_into_download_mode(self, location: str) -> None:
        """Hold BOOT, press and release RESET, release BOOT: what the station's wrong-boot-mode prompt asks."""
        self.esp.boards[self.esp.locations.index(location)].hold_boot_and_press_reset()
