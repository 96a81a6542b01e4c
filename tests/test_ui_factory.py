"""The window with the factory database: its batch goes to the shared record, and the history lists every
station's devices with a station column."""
from pathlib import Path

from station.families.esp.sim.fleet import demo_fleet
from station.journal import Journal
from station.model import Result

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "demo-mixed.toml"


def test_the_history_lists_every_stations_devices_with_a_station_column(stations, pg_url, qtbot, arun, monkeypatch):
    from station.identity.ca import StationCA

    monkeypatch.setenv("STATION_DEMO_WIFI_PSK", "bench-passphrase-42")
    other = Journal(pg_url)  # a board another station made, already in the factory record
    batch = other.start_batch("demo-mixed", "00" * 32, "batch", "bob", "station-other")
    other.end_device(other.start_device(batch, "1-9", "303a:1001", "esp"), Result.PASS)
    other.close()
    ca = StationCA.ephemeral("UI factory test")

    async def provider():
        return ca
    station, server = stations(demo_fleet(1, seed=5), PROFILE, ca_provider=provider, db=pg_url)
    w, hist = station.window, station.window.history
    qtbot.waitUntil(lambda: any(t.present for t in station.bridge.tiles.values()))
    w.start_clicked()
    qtbot.waitUntil(lambda: not station.controller.busy and station.bridge.tiles[server.locations[0]].finished,
                    timeout=30_000)
    assert station.replica.flush(30) == 0  # this station's batch is on the server
    w.tabs.setCurrentWidget(hist)
    assert arun(hist.reload()) == 2
    column = hist.model.COLUMNS.index("Station")
    assert sorted(hist.model.text(row, column) for row in hist.model.rows) == ["station-other", "station-t"]
    hist.search.setText("station-other")
    assert [r.device.port for r in hist.visible_rows()] == ["1-9"]
