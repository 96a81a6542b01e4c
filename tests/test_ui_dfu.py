"""DFU boards beside ESP boards in the same window: one batch, every tile green, each board's memory holding
the profile's images, and the tiles naming each board's family and chip."""
import pytest
from PySide6.QtCore import Qt

from station.families.dfu.sim.device import make_device
from station.families.dfu.sim.server import DfuSimServer
from station.families.esp.sim.fleet import demo_fleet
from station.identity.ca import StationCA
from station.profile_library import shipped_profiles_dir

PROFILE = shipped_profiles_dir() / "demo-mixed.toml"
KINDS = ["stm32"] * 8
CHIPS = {"stm32": "STM32"}


@pytest.fixture
def mixed_hub(stations, tmp_path, monkeypatch):
    monkeypatch.setenv("STATION_DEMO_WIFI_PSK", "ui-test-passphrase-7")
    ca = StationCA.ephemeral("UI test station")

    async def ca_provider():
        return ca

    dfu = DfuSimServer([make_device(kind, i) for i, kind in enumerate(KINDS)], tmp_path / "registry")
    dfu.start()
    station, esp = stations(demo_fleet(4), PROFILE, ca_provider=ca_provider)
    yield station, esp, dfu
    dfu.stop()


def test_eight_dfu_and_four_esp_boards_pass_in_one_window_batch(mixed_hub, qtbot):
    station, esp, dfu = mixed_hub
    w = station.window
    keys = esp.locations + dfu.locations
    qtbot.waitUntil(lambda: all(station.bridge.tiles.get(k) and station.bridge.tiles[k].present for k in keys))

    qtbot.mouseClick(w.toolbar.widgetForAction(w.start_action), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: station.controller.busy)
    qtbot.waitUntil(lambda: not station.controller.busy and all(station.bridge.tiles[k].finished for k in keys),
                    timeout=60_000)

    assert [w.grid.tiles[k].headline() for k in keys] == ["PASS"] * 12
    assert station.bridge.counts()[:2] == (12, 0)
    profile = station.controller.profile
    for key, device, kind in zip(dfu.locations, dfu.devices, KINDS):
        tile = station.bridge.tiles[key]
        assert (tile.family, tile.chip) == ("dfu", CHIPS[kind])
        assert w.grid.tiles[key]._board_line() == f"DFU · {CHIPS[kind]}"
        assert tile.labels[-1] == "Leaving DFU" and tile.step_index == len(tile.steps) - 1
        for p in profile.firmware[CHIPS[kind]].placements:
            alt = p.alt if isinstance(p.alt, int) else 0
            assert device.read_memory(alt, p.address, len(p.data)) == p.data
