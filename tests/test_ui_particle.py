"""Spark Cores and Photons in the window: each tile follows its board across the DFU and run-time personalities
at one USB location, the old Core's tile asks for the buttons in plain words and carries on by itself once the
board comes back in DFU mode, and every tile ends green."""
import pytest
from PySide6.QtCore import Qt

from station.families.esp.sim.fleet import demo_fleet
from station.families.particle.sim.board import ParticleBoard
from station.families.particle.sim.server import ParticleSimServer
from station.families.particle.steps import DFU_PROMPT
from station.identity.ca import StationCA
from station.profile_library import shipped_profiles_dir
from ui.state import Phase

PROFILE = shipped_profiles_dir() / "demo-mixed.toml"
KINDS = ["core", "photon", "old-core"]
CHIPS = {"core": "Spark Core", "photon": "Photon", "old-core": "Spark Core"}


@pytest.fixture
def particle_hub(stations, tmp_path, monkeypatch):
    monkeypatch.setenv("STATION_DEMO_WIFI_PSK", "ui-test-passphrase-7")
    ca = StationCA.ephemeral("UI test station")

    async def ca_provider():
        return ca

    particle = ParticleSimServer([ParticleBoard(kind, i, visible={"station-demo": (3, 1)})
                                  for i, kind in enumerate(KINDS)], tmp_path / "registry")
    particle.start()
    station, esp = stations(demo_fleet(1), PROFILE, ca_provider=ca_provider)
    yield station, esp, particle
    particle.stop()


def test_cores_and_photons_pass_and_the_old_core_asks_for_its_buttons(particle_hub, qtbot):
    station, esp, particle = particle_hub
    w, bridge = station.window, station.bridge
    keys = esp.locations + particle.locations
    old_core = particle.locations[2]
    qtbot.waitUntil(lambda: all(bridge.tiles.get(k) and bridge.tiles[k].present for k in keys))

    qtbot.mouseClick(w.toolbar.widgetForAction(w.start_action), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bridge.tiles[old_core].phase is Phase.OPERATOR, timeout=30_000)
    assert bridge.tiles[old_core].prompt == DFU_PROMPT
    particle.hold_mode(old_core, 3.5, tap_reset=True)  # the technician does what the tile says
    qtbot.waitUntil(lambda: not station.controller.busy and all(bridge.tiles[k].finished for k in keys),
                    timeout=60_000)

    assert [w.grid.tiles[k].headline() for k in keys] == ["PASS"] * 4
    for key, kind, board in zip(particle.locations, KINDS, particle.boards):
        tile = bridge.tiles[key]
        assert w.grid.tiles[key]._board_line() == f"PARTICLE · {CHIPS[kind]}"
        assert tile.labels == ("Detecting", "Entering DFU mode", "Checking", "Writing keys and firmware",
                               "Reading back", "Restarting", "Listening mode", "Setting Wi-Fi")
        assert tile.present and tile.usb_id == f"{board.kind.run_vid:04x}:{board.kind.run_pid:04x}"
        said = [line.text for line in bridge.log if line.key == key]
        assert "board left the bus" in said and "board unplugged" not in said
        assert any(text.startswith("board back on the bus as USB ") for text in said)
        assert board.wifi and board.mode == "run"
        assert tile.mac == (board.mac if kind == "photon" else "")  # a Photon says its MAC in listening mode
