"""`station demo` with a window: emulated boards on an emulated hub, one that fails and one that needs a hand.

The boards are the project's ESP and USB DFU emulators (station.sim.demo_hub), served on loopback and found
through a registry directory exactly as real ports are found; the station drives them with the same code as real boards. The
demo adds two things a real bench has and an emulator does not:

* a scripted operator: when the station asks for a hand on the "wrong boot mode" board (OperatorPrompt), it
  waits 3 s, then does what the tile says on the emulated board's buttons: holds BOOT, presses RESET, lets
  go of BOOT. No cable is touched (a CP2102/CH340 board does not re-enumerate); the station sees the board
  answer in download mode and carries on by itself. The board is an ESP32: esptool reads the boot mode from
  the ROM's boot log on ESP32 and later only, so on an ESP8266 (or wherever no prompt comes) the scripted
  operator holds BOOT through the station's second detect attempt instead, and says so in the station log.
* tile menu entries to unplug / plug back an emulated board (ESP or DFU).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QMenu

from station import events as ev
from station import services
from station.families.esp.sim.board import EspFaults
from station.families.esp.sim.server import EspSimServer
from station.sim.demo_hub import DemoHub
from ui.app import Station, run
from ui.tiles import fit_columns

PROMPT_DELAY_S = 3.0


class DemoHarness(QObject):
    def __init__(self, station: Station, server: EspSimServer, prompt_index: int | None, hub: DemoHub | None = None):
        """`prompt_index`: the board on `server` with wrong boot straps, if any; `hub`: whose boards the tile
        menu unplugs and plugs back (none: no such menu entries)."""
        super().__init__(station.window)
        self.station, self.server, self.hub = station, server, hub
        self.prompt_index = prompt_index
        self.prompt_key = server.locations[prompt_index] if prompt_index is not None else None
        self.prompted = False
        self.fixed_without_prompt = False
        self.pressed = 0  # times the operator held BOOT and pressed RESET after a prompt
        self.delay = PROMPT_DELAY_S
        self.batches_done = 0
        station.bridge.eventSeen.connect(self._event)
        station.window.tile_actions.append(self._tile_actions)

    def _event(self, e) -> None:
        if isinstance(e, ev.BatchDone):
            self.batches_done += 1
        if self.prompt_key is None or getattr(e, "key", None) != self.prompt_key:
            return
        board = self.server.boards[self.prompt_index]
        if isinstance(e, ev.OperatorPrompt):
            self.prompted = True
            self.station.bridge.note(f"demo: the operator walks over to {self._name()} ({self.delay:g} s)",
                                     key=self.prompt_key)
            QTimer.singleShot(int(self.delay * 1000), self._press_boot_and_reset)
        elif (isinstance(e, ev.StepStarted) and e.step == "detect" and e.attempt >= 2 and not self.prompted
              and board.faults.wrong_boot_mode and not board.boot_held):
            # this runs before the retry opens the port, so BOOT is down when the bridge resets the chip
            board.hold_boot(True)
            self.fixed_without_prompt = True
            self.station.bridge.note(
                "demo: no operator prompt came (the station saw only silence, not the ROM's boot mode); the "
                "scripted operator holds BOOT through the second attempt", "warning", self.prompt_key)
        elif isinstance(e, ev.StepDone) and e.step == "detect" and self.fixed_without_prompt and board.boot_held:
            board.hold_boot(False)

    def _name(self) -> str:
        return self.station.settings.name(self.prompt_key) if self.prompt_key else ""

    def _press_boot_and_reset(self) -> None:
        self.server.boards[self.prompt_index].hold_boot_and_press_reset()
        self.pressed += 1
        self.station.bridge.note(f"demo: the operator held BOOT and pressed RESET on {self._name()}",
                                 key=self.prompt_key)

    def _tile_actions(self, key: str, menu: QMenu) -> None:
        if self.hub is None or key not in self.hub.locations:
            return
        menu.addSeparator()
        plugged = self.hub.is_plugged(key)
        action = menu.addAction("Unplug (emulated board)" if plugged else "Plug back in (emulated board)")
        action.triggered.connect(lambda: asyncio.ensure_future(
            asyncio.get_running_loop().run_in_executor(None, self.hub.unplug if plugged else self.hub.plug, key)))
        if plugged and self.hub.has_buttons(key):
            buttons = menu.addAction("Hold BOOT, press RESET (emulated board)")
            buttons.triggered.connect(lambda: self.hub.boot_into_download_mode(key))


_DEMO_CA = None


async def demo_ca():
    """The demo's CA: made in memory once per run, gone when it ends (manifests and certificates say so)."""
    global _DEMO_CA
    if _DEMO_CA is None:
        from station.identity.ca import StationCA

        _DEMO_CA = await asyncio.get_running_loop().run_in_executor(None, StationCA.ephemeral, "Demo station")
    return _DEMO_CA


async def start_demo_cloud(station: Station):
    """The demo's own Mosquitto on loopback (station.services.demo_broker) and, for Cores and Photons, its
    spark-server stand-in, started in the executor; returns the context to close at the end, or None when the
    profile registers nowhere."""
    profile = station.controller.profile
    if profile is None or not profile.clouds:
        return None
    ca = await demo_ca()
    loop = asyncio.get_running_loop()

    def note(text: str, level: str) -> None:  # said from the executor; the bridge lives on the GUI thread
        loop.call_soon_threadsafe(station.bridge.note, f"demo: {text}", level)

    def start() -> tuple[contextlib.ExitStack, object, object]:
        with contextlib.ExitStack() as stack:
            broker = stack.enter_context(services.demo_broker(ca, note))
            spark = stack.enter_context(services.demo_spark_server(profile, note))
            return stack.pop_all(), broker, spark

    context, station.controller.broker, station.controller.spark = await loop.run_in_executor(None, start)
    return context


def configure_demo(station: Station) -> None:
    """The demo brings its own CA (ephemeral) and broker, and re-provisions its boards on every run."""
    station.controller.ca_provider = demo_ca
    station.controller.reprovision_default = True  # the same emulated boards come back every run
    page = station.window.settings_page
    page.ca_setup = page.cloud_up = page.cloud_down = None


def prepare_layout(station: Station, locations: list[str]) -> None:
    """First demo run: name the emulated hub's ports by row and column (A1, A2 … B1 …) and allow two of them
    for one-touch."""
    settings = station.settings
    changed = False
    for key in [k for k in settings.order if k not in locations]:  # an older demo's hub had other ports
        settings.forget(key)
        station.bridge.tiles.pop(key, None)
        changed = True
    for key in locations:
        changed |= settings.add_port(key)
        station.bridge.ensure_tile(key)
    if any(key not in settings.names for key in locations):  # named as the grid will show them in this window,
        # which then keeps that many columns
        w = station.window  # not laid out yet: the grid gets about this share of it
        settings.auto_name(settings.columns or fit_columns(len(locations), w.width() - 24, w.height() * 0.55))
        settings.allowed.update(locations[:2])
        changed = True
    if changed:
        settings.save()
    station.window._layout_changed()
    station.window.settings_page.refresh_ports()


async def wait_for_ports(station: Station, keys: list[str], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(k in station.bridge.tiles and station.bridge.tiles[k].present for k in keys):
            return True
        await asyncio.sleep(0.1)
    return False


def run_demo(*, data: Path, station_id: str, boards: int = 8, dfu_boards: int = 4, faults: bool = True,
             throttle: bool = True, profile: str | Path, listeners=(), autostart: bool = True,
             autoquit: bool | None = None, screenshot: str | None = None) -> int:
    """Open the window on `boards` emulated ESP boards and `dfu_boards` DFU boards and run one batch; the
    window stays until closed.

    autoquit (default: $STATION_DEMO_AUTOQUIT) closes the window once the batch is done (for runs under
    xvfb-run, where nobody can close it); screenshot (default: $STATION_DEMO_SCREENSHOT) saves it first.
    """
    if autoquit is None:
        autoquit = os.environ.get("STATION_DEMO_AUTOQUIT", "") not in ("", "0")
    screenshot = screenshot or os.environ.get("STATION_DEMO_SCREENSHOT") or None
    hub = DemoHub.mixed(boards, dfu_boards, faults=faults, throttle=throttle)  # faults: the last ESP board vanishes
    prompt_index = 3 if faults and boards >= 5 else None  # an ESP32 (see demo_fleet's chip order)
    if prompt_index is not None:
        hub.esp.boards[prompt_index].faults = EspFaults(wrong_boot_mode=True)
    hub.start()

    def make() -> Station:
        station = Station(data, hub.sources(), profile=profile, station_id=station_id,
                          listeners=listeners, title_suffix=" — demo (emulated boards)")
        station.harness = DemoHarness(station, hub.esp, prompt_index, hub)
        configure_demo(station)
        prepare_layout(station, hub.locations)
        return station

    clouds = []

    async def after_start(station: Station) -> None:
        cloud = await start_demo_cloud(station)
        if cloud is not None:
            clouds.append(cloud)
        if not autostart:
            return
        if not await wait_for_ports(station, hub.locations):
            station.bridge.note("demo: the emulated boards did not show up", "error")
        await station.controller.start_batch()
        if autoquit:
            while station.harness.batches_done < 1 or station.controller.busy:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            if screenshot:
                station.window.grab().save(screenshot)
            station.window.ask = False
            station.window.close()

    try:
        return run(make, after_start)
    finally:
        for cloud in clouds:
            cloud.__exit__(None, None, None)  # the broker stops by PID
        hub.stop()
