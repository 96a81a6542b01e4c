"""The demo's emulated hub: ESP boards (sim-1.N), STM32 DFU boards (sim-2.N) and Spark Cores / Photons (sim-3.N,
in either personality) published in one registry dir.

`station demo` (headless and windowed) and the screenshots run on it; the station finds its boards through
`SimPortSource(hub.registry)`, exactly as it finds emulated boards served by `station sim esp|dfu|particle`.
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
from station.families.particle.sim.board import ParticleBoard
from station.families.particle.sim.server import ParticleSimServer

USB_MIX = ("stm32", "core", "photon")  # an STM32 in DfuSe mode, a Spark Core, a Particle Photon
DEMO_SSID = "station-demo"  # the demo profile's network: the emulated Photons see it


def usb_fleet(count: int, throttle: bool = False) -> tuple[list[DfuDevice], list[ParticleBoard]]:
    """`count` USB boards cycling STM32 (DFU bootloader), Spark Core, Photon (running their factory firmware)."""
    kinds = [USB_MIX[i % len(USB_MIX)] for i in range(count)]
    stm32 = [make_device(kind, i, throttle=throttle) for i, kind in enumerate(k for k in kinds if k == "stm32")]
    particle = [ParticleBoard(kind, i, visible={DEMO_SSID: (3, 1)})
                for i, kind in enumerate(k for k in kinds if k != "stm32")]
    for board in particle:
        board.dfu.throttle = throttle  # its bootloader erases and programs as long as the part takes
    return stm32, particle


class DemoHub:
    """Both emulators on loopback, serving into one registry dir (a temporary one unless given)."""

    def __init__(self, esp_boards: list[EspBoard], dfu_devices: list[DfuDevice],
                 particle_boards: list[ParticleBoard] = (), *, throttle: bool = True, registry: Path | None = None):
        self._tmp = None if registry is not None else tempfile.TemporaryDirectory(prefix="station-sim-")
        self.registry = Path(registry) if registry is not None else Path(self._tmp.name)
        self.esp = EspSimServer(esp_boards, registry_dir=self.registry, throttle=throttle)
        self.dfu = DfuSimServer(dfu_devices, self.registry)
        self.particle = ParticleSimServer(list(particle_boards), self.registry)

    @classmethod
    def mixed(cls, esp: int, usb: int, *, faults: bool = False, throttle: bool = True,
              registry: Path | None = None) -> "DemoHub":
        """`esp` boards from demo_fleet (with `faults`, the last ESP board vanishes mid-flash) and `usb` boards
        (usb_fleet: STM32, Spark Core, Photon, …)."""
        stm32, particle = usb_fleet(usb, throttle=throttle)
        return cls(demo_fleet(esp, faults=faults), stm32, particle, throttle=throttle, registry=registry)

    @property
    def servers(self) -> tuple[EspSimServer, DfuSimServer, ParticleSimServer]:
        return self.esp, self.dfu, self.particle

    def start(self) -> "DemoHub":
        started = []
        try:
            for server in self.servers:
                server.start()
                started.append(server)
        except BaseException:
            for server in started:
                server.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            for server in self.servers:
                server.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()

    def __enter__(self) -> "DemoHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def locations(self) -> list[str]:
        return [location for server in self.servers for location in server.locations]

    def sources(self) -> list[SimPortSource]:
        return [SimPortSource(self.registry)]

    # --- the cable, by location (the window's tile menu) ---------------------------------------------------------

    def _server(self, location: str) -> tuple[EspSimServer | DfuSimServer | ParticleSimServer, int]:
        for server in self.servers:
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
