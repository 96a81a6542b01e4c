"""`make screenshots`: the window's main states, rendered to PNG from a real run on emulated boards.

    xvfb-run -a -s "-screen 0 1600x1000x24" python -m ui.screenshots [OUT_DIR]
    xvfb-run -a -s "-screen 0 1280x800x24" python -m ui.screenshots OUT_DIR --size 1280x800 --boards 24

The first is the tour (ready, running with a prompt, done, a failed board's log, retry, one-touch, history,
settings); the second fills a screen of that size with the window over that many boards (two in three ESP,
the rest DFU) and saves it mid-batch and done, named <boards>-boards-<size>-<state>.png.

Everything on screen comes from the engine driving emulated boards; the demo's scripted operator (ui.demo)
answers the board with wrong boot straps when the station asks for a hand.
"""
from __future__ import annotations

import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path

from station.profile_library import shipped_profiles_dir
from station.families.esp.sim.board import EspFaults
from station.sim.demo_hub import DemoHub
from ui.app import Station, run
from ui.demo import DemoHarness, configure_demo, prepare_layout, start_demo_cloud, wait_for_ports
from ui.state import Phase

PROMPT_BOARD = 3  # A4, an ESP32: esptool reads the boot mode from its boot log



async def until(predicate, timeout: float = 30.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return False


def run_then_clean_up(make, scenario, clouds, hub: DemoHub, work: tempfile.TemporaryDirectory) -> int:
    """Run the window's scenario, then stop its clouds and boards and remove its data, however it ended."""
    try:
        return run(make, scenario)
    finally:
        for cloud in clouds:
            cloud.__exit__(None, None, None)
        hub.stop()
        work.cleanup()


def fill(argv: list[str]) -> int:
    """One screen size, one hub size: the window mid-batch and when the batch is done."""
    out = Path(argv[0])
    size = argv[argv.index("--size") + 1]
    width, height = (int(v) for v in size.split("x"))
    boards = int(argv[argv.index("--boards") + 1])
    out.mkdir(parents=True, exist_ok=True)
    work = tempfile.TemporaryDirectory(prefix="station-shots-")
    esp = max(1, math.ceil(boards * 2 / 3))
    hub = DemoHub.mixed(esp, boards - esp, faults=boards >= 8, registry=Path(work.name) / "registry")
    server = hub.esp
    prompt = PROMPT_BOARD if boards >= 8 else None
    if prompt is not None:
        server.boards[prompt].faults = EspFaults(wrong_boot_mode=True)
    if boards >= 16:  # a board whose flash refuses writes: red, and on the hub
        server.boards[1].faults = EspFaults(flash_write_error=True)
    hub.start()
    clouds = []

    def make() -> Station:
        import os
        os.environ.setdefault("STATION_DEMO_WIFI_PSK", "screenshot-passphrase")
        station = Station(Path(work.name) / "data", hub.sources(),
                          profile=shipped_profiles_dir() / "demo-mixed.toml",
                          operator="alice", station_id="bench-1-demo", title_suffix=" — demo (emulated boards)")
        station.harness = DemoHarness(station, server, prompt, hub)
        station.harness.delay = 10.0  # the scripted operator takes their time: the prompt is in the mid-batch shot
        configure_demo(station)
        station.window.resize(width, height)
        prepare_layout(station, hub.locations)
        station.window.lot_edit.setText("LOT-2026-11-A")
        return station

    async def scenario(station: Station) -> None:
        w, b, c = station.window, station.bridge, station.controller

        def save(state: str) -> None:
            w.repaint()
            path = out / f"{boards}-boards-{size}-{state}.png"
            w.grab().save(str(path))
            print(f"screenshot: {path} (window {w.width()}x{w.height()}, grid {w.grid._placed[1]} columns)",
                  flush=True)

        cloud = await start_demo_cloud(station)
        if cloud is not None:
            clouds.append(cloud)
        await wait_for_ports(station, hub.locations, 30)
        w.lot_edit.returnPressed.emit()
        await c.start_batch()
        if prompt is not None:
            await until(lambda: b.tiles[server.locations[prompt]].phase is Phase.OPERATOR, 60)
        await until(lambda: b.batch_progress()[0] >= boards // 3 and any(t.total for t in b.tiles.values()), 120)
        await asyncio.sleep(0.4)
        save("mid-batch")
        await until(lambda: not c.busy, 300)
        await until(lambda: b.counts()[2] == 0, 10)
        await asyncio.sleep(0.3)
        save("done")
        w.ask = False
        w.close()

    return run_then_clean_up(make, scenario, clouds, hub, work)


def main(argv: list[str]) -> int:
    if "--boards" in argv:
        return fill(argv)
    out = Path(argv[0] if argv else "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    work = tempfile.TemporaryDirectory(prefix="station-shots-")
    hub = DemoHub.mixed(8, 4, faults=True, registry=Path(work.name) / "registry")  # the last ESP board vanishes
    server, fleet = hub.esp, hub.esp.boards  # the scripted operator and the failures are on the ESP boards
    fleet[PROMPT_BOARD].faults = EspFaults(wrong_boot_mode=True)
    hub.start()
    shots: list[str] = []
    clouds = []

    def make() -> Station:
        import os
        os.environ.setdefault("STATION_DEMO_WIFI_PSK", "screenshot-passphrase")
        station = Station(Path(work.name) / "data", hub.sources(),
                          profile=shipped_profiles_dir() / "demo-mixed.toml", operator="alice",
                          station_id="bench-1-demo",
                          title_suffix=" — demo (emulated boards)")
        station.harness = DemoHarness(station, server, PROMPT_BOARD, hub)  # the scripted operator
        configure_demo(station)
        prepare_layout(station, hub.locations)
        station.window.resize(1500, 940)
        station.window.lot_edit.setText("LOT-2026-11-A")
        return station

    async def scenario(station: Station) -> None:
        w, b, c = station.window, station.bridge, station.controller
        key = server.locations[PROMPT_BOARD]

        def save(name: str) -> None:
            w.repaint()
            path = out / f"{name}.png"
            w.grab().save(str(path))
            shots.append(str(path))
            print(f"screenshot: {path}", flush=True)

        cloud = await start_demo_cloud(station)
        if cloud is not None:
            clouds.append(cloud)
        await wait_for_ports(station, hub.locations)
        await asyncio.sleep(0.5)
        save("01-ready")
        w.lot_edit.returnPressed.emit()
        await c.start_batch()
        await until(lambda: b.tiles[key].phase is Phase.OPERATOR)  # the engine asks for a hand on A4
        save("02-batch-running")
        await until(lambda: not c.busy, 120)
        await until(lambda: b.counts()[2] == 0, 10)  # the cloud confirmed the passed boards
        await asyncio.sleep(0.3)
        save("03-batch-done")
        w.grid.select(server.locations[-1])
        w.log_pane.show_port(server.locations[-1])
        await asyncio.sleep(0.2)
        save("04-failed-board-log")

        # the technician reseats both failed boards and presses Retry failed
        fleet[PROMPT_BOARD].faults = EspFaults()
        await asyncio.get_running_loop().run_in_executor(None, server.plug, len(fleet) - 1)
        await until(lambda: b.tiles[server.locations[-1]].present)
        w.grid.select(None)
        w.log_pane.show_port(None)
        await c.retry_failed()
        await until(lambda: not c.busy, 60)
        await asyncio.sleep(0.3)
        save("05-retry-all-passed")

        # one-touch: A1 and A2 are allowed; the technician pulls their boards, arms, plugs a new one into A1
        for i in (0, 1):
            await asyncio.get_running_loop().run_in_executor(None, server.unplug, i)
        await until(lambda: not b.tiles[server.locations[0]].present and not b.tiles[server.locations[1]].present)
        w.one_touch.setChecked(True)
        await until(lambda: c.mode == "one-touch")
        await asyncio.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(None, server.plug, 0)
        await until(lambda: b.tiles[server.locations[0]].phase is Phase.WORKING and b.tiles[server.locations[0]].total)
        save("06-one-touch-armed")
        await until(lambda: b.tiles[server.locations[0]].phase is Phase.PASS, 30)
        await asyncio.sleep(0.2)
        save("07-one-touch-pass")
        w.one_touch.setChecked(False)
        await until(lambda: not c.busy)

        w.tabs.setCurrentWidget(w.history)
        await w.history.reload()
        rows = w.history.visible_rows()
        failed = next((r for r in rows if r.device.result == "fail"), rows[0] if rows else None)
        if failed is not None:
            w.history.select_device(failed.device.id)
            await until(lambda: bool(w.history.detail_html))
        await asyncio.sleep(0.3)
        save("08-history")
        passed = next((r for r in rows if r.device.result == "pass"), None)
        if passed is not None:
            w.history.detail_html = ""
            w.history.select_device(passed.device.id)
            await until(lambda: bool(w.history.detail_html))
            await asyncio.sleep(0.2)
            save("09-history-device")

        await asyncio.get_running_loop().run_in_executor(None, station.lock.set_passphrase, "supervisor-pass")
        station.lock.locked = True
        w.apply_lock()
        w.tabs.setCurrentWidget(w.settings_page)
        await asyncio.sleep(0.5)
        save("10-settings-locked")
        w.ask = False
        w.close()

    return run_then_clean_up(make, scenario, clouds, hub, work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
