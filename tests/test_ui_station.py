"""The window on emulated boards, end to end: tiles, counters, one-touch, the lock, history and export.

Offscreen Qt, one shared qasync loop (tests/conftest.py); every wait is qtbot.waitUntil on real state.
"""
import csv
import io
import json

import pytest
from PySide6.QtCore import Qt

from station.families.esp.sim.board import EspFaults
from station.families.esp.sim.fleet import demo_fleet
from station.profile_library import shipped_profiles_dir
from ui.controller import IDLE, ONE_TOUCH
from ui.state import Phase

PROFILE = shipped_profiles_dir() / "demo-mixed.toml"
PSK = "ui-test-passphrase-7"




@pytest.fixture
def bench(stations, monkeypatch):
    """make(boards, plug=True, prefix="sim-1", cloud=False) -> (station, server): the window over emulated boards,
    with an ephemeral CA and, with `cloud`, a real Mosquitto on loopback to register them with."""
    from station.services import demo_broker
    from station.identity.ca import StationCA

    monkeypatch.setenv("STATION_DEMO_WIFI_PSK", PSK)
    clouds = []

    def make(boards, plug=True, prefix="sim-1", cloud=False):
        ca = StationCA.ephemeral("UI test station")

        async def ca_provider():
            return ca

        def attach_cloud(station):
            context = demo_broker(ca)
            station.controller.broker = context.__enter__()
            clouds.append(context)

        return stations(boards, PROFILE, plug=plug, prefix=prefix, ca_provider=ca_provider,
                        before_start=attach_cloud if cloud else None)

    yield make
    for context in clouds:
        context.__exit__(None, None, None)


def present(station) -> int:
    return sum(1 for t in station.bridge.tiles.values() if t.present)


def click(qtbot, window, action):
    qtbot.mouseClick(window.toolbar.widgetForAction(action), Qt.MouseButton.LeftButton)


def finished(station, keys) -> bool:
    return not station.controller.busy and all(station.bridge.tiles[k].finished for k in keys)


def test_a_batch_of_eight_boards_ends_with_eight_pass_tiles(bench, qtbot):
    station, server = bench(demo_fleet(8), cloud=True)
    w = station.window
    qtbot.waitUntil(lambda: present(station) == 8)
    assert [w.grid.tiles[k].headline() for k in server.locations] == ["Ready"] * 8
    assert w.start_action.isEnabled()

    click(qtbot, w, w.start_action)
    qtbot.waitUntil(lambda: station.controller.busy)
    assert not w.start_action.isEnabled() and w.stop_action.isEnabled()
    qtbot.waitUntil(lambda: finished(station, server.locations), timeout=45_000)

    assert [w.grid.tiles[k].headline() for k in server.locations] == ["PASS"] * 8
    assert station.bridge.counts()[:2] == (8, 0)
    qtbot.waitUntil(lambda: station.bridge.counts() == (8, 0, 0), timeout=20_000)  # the cloud confirmed them all
    assert {station.bridge.tiles[k].registration for k in server.locations} == {"delivered"}
    assert w.passed_label.text().startswith("✔ 8") and w.failed_label.text().startswith("✘ 0")
    assert w.pending_label.text().startswith("☁ 0")
    assert "all 8 passed" in w.banner.text()
    for key, board in zip(server.locations, server.boards):
        tile = station.bridge.tiles[key]
        assert tile.chip == board.chip.display_name and tile.mac == board.mac_text
        assert tile.steps and tile.step_index == len(tile.steps) - 1  # it went through every step
    assert w.grid.tiles[server.locations[0]].paints > 0
    assert not w.retry_action.isEnabled()


def test_a_board_unplugged_mid_flash_fails_with_its_reason_while_the_others_pass(bench, qtbot):
    boards = demo_fleet(4)
    boards[3].faults = EspFaults(unplug_after_bytes=96 * 1024)
    station, server = bench(boards)
    w = station.window
    station.settings.auto_name(4)
    w.rename_port(server.locations[3], "A4")
    qtbot.waitUntil(lambda: present(station) == 4)

    w.activateWindow()
    qtbot.keyClick(w, Qt.Key.Key_F5)  # the keyboard shortcut for Start
    qtbot.waitUntil(lambda: finished(station, server.locations), timeout=45_000)

    bad = server.locations[3]
    tile = station.bridge.tiles[bad]
    assert tile.phase is Phase.FAIL and w.grid.tiles[bad].headline() == "FAIL"
    assert tile.reason.startswith("Board vanished during flash at")
    assert tile.reason in w.grid.tiles[bad].summary()
    assert [station.bridge.tiles[k].phase for k in server.locations[:3]] == [Phase.PASS] * 3
    # no cloud is running here: the three passed boards wait in the outbox, and the counter says so
    qtbot.waitUntil(lambda: station.bridge.counts() == (3, 1, 3))
    assert w.pending_label.text().startswith("☁ 3")
    # A4's board vanished: its tile stays red, the banner says so, and Retry failed waits for it to come back
    assert "A4 failed and left the hub" in w.banner.text() and "Take out" not in w.banner.text()
    assert not w.retry_action.isEnabled()

    diag = w.diagnostics(bad)
    for words in ("A4 (USB location " + bad, tile.reason, "flash", "FAIL", tile.mac, "Last 40 log lines"):
        assert words in diag
    assert PSK not in diag and PSK not in w.log_pane.text()


def test_one_touch_provisions_a_board_that_appears_and_ignores_a_port_not_allowed(bench, qtbot):
    boards = demo_fleet(2)
    station, server = bench(boards, plug=False, prefix="sim-7")
    w, c = station.window, station.controller
    allowed, other = "sim-7.1", "sim-7.2"
    assert w.set_allowed(allowed, True)
    assert station.settings.allowed == {allowed}

    w.one_touch.click()
    qtbot.waitUntil(lambda: c.mode == ONE_TOUCH)
    assert w.one_touch.isChecked() and "ARMED" in w.one_touch.text() and "ONE-TOUCH ARMED" in w.banner.text()
    server.start()  # boards are plugged in after arming
    qtbot.waitUntil(lambda: station.bridge.tiles.get(allowed) is not None
                    and station.bridge.tiles[allowed].phase is Phase.PASS, timeout=30_000)

    ignored = station.bridge.tiles[other]
    assert ignored.present and ignored.phase is Phase.IDLE and ignored.device_id == ""
    assert w._armed_state(allowed) == "armed" and w._armed_state(other) == "ignored"
    assert boards[1].flash.read(0, 0x20000) == b"\xff" * 0x20000  # never touched
    w.one_touch.click()  # disarm
    qtbot.waitUntil(lambda: c.mode == IDLE)
    assert not w.one_touch.isChecked()


def test_the_lock_blocks_profile_edits_until_a_supervisor_unlocks(bench, qtbot, arun, tmp_path):
    station, server = bench(demo_fleet(1))
    w, page, lock = station.window, station.window.settings_page, station.lock
    qtbot.waitUntil(lambda: present(station) == 1)
    key = server.locations[0]
    assert arun(page.set_supervisor("correct horse", "correct horse", None))
    stored = lock.path.read_text()
    assert "correct horse" not in stored and json.loads(stored)["kdf"] == "scrypt"
    page.lock_station()

    assert lock.locked and not w.profile_button.isEnabled()
    other = shipped_profiles_dir() / "esp32-mqtt-sensor.toml"
    assert arun(w.select_profile(other)) is False
    assert station.controller.profile_path == str(PROFILE)
    assert not w.rename_port(key, "Z9") and station.settings.name(key) == key
    assert not w.set_allowed(key, True) and key not in station.settings.allowed
    menu = {a.text(): a for a in w.build_tile_menu(key).actions()}
    assert not menu["Name this port…"].isEnabled() and not menu["Allow one-touch on this port"].isEnabled()
    assert not any(x.isEnabled() for x in (page.psk_edit, page.columns, page.port_table, page.sound, page.sup_new))
    assert w.start_action.isEnabled() and w.lot_edit.isEnabled()  # operators still run batches

    assert arun(w.unlock("wrong horse")) is False and lock.locked
    assert arun(w.unlock("correct horse")) is True and not lock.locked
    assert w.profile_button.isEnabled() and page.columns.isEnabled()
    assert arun(w.select_profile(other)) is True
    assert station.controller.profile_path == str(other)

    from ui.lock import SupervisorLock
    assert SupervisorLock(tmp_path / "data").locked  # the next start is locked again


def test_history_search_detail_and_export_one_record_per_device(bench, qtbot, arun, tmp_path):
    station, server = bench(demo_fleet(3))
    w, hist = station.window, station.window.history
    qtbot.waitUntil(lambda: present(station) == 3)
    w.lot_edit.setText("LOT-77")
    click(qtbot, w, w.start_action)
    qtbot.waitUntil(lambda: finished(station, server.locations), timeout=45_000)

    w.tabs.setCurrentWidget(hist)
    qtbot.waitUntil(lambda: hist.model.rowCount() == 3)
    mac = server.boards[1].mac_text
    hist.search.setText(mac.replace(":", "").upper())
    assert [r.device.mac for r in hist.visible_rows()] == [mac]
    hist.search.setText("LOT-77")
    assert len(hist.visible_rows()) == 3
    hist.search.clear()
    hist.result.setCurrentIndex(hist.result.findData("fail"))
    assert hist.visible_rows() == []
    hist.result.setCurrentIndex(0)

    device = hist.visible_rows()[0].device
    with qtbot.waitSignal(hist.detailShown, timeout=10_000):
        assert hist.select_device(device.id)
    for words in ("detect", "flash", "verify", device.mac, "LOT-77"):
        assert words in hist.detail_html

    journal_ids = sorted(d.id for d in station.journal.devices())
    out = tmp_path / "batch.jsonl"
    assert arun(hist.export_to(out, "jsonl")) == 3
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["device_id"] for r in records) == journal_ids
    assert all(r["result"] == "pass" and r["lot"] == "LOT-77" for r in records)
    assert PSK not in out.read_text()

    out_csv = tmp_path / "batch.csv"
    assert arun(hist.export_to(out_csv, "csv")) == 3
    assert sorted(row["device_id"] for row in csv.DictReader(io.StringIO(out_csv.read_text()))) == journal_ids

    if hist.signer is not None and hist.verifier is not None:  # signed manifests (station.manifest_sign)
        signed = tmp_path / "batch.signed.jsonl"
        assert arun(hist.export_to(signed, "signed")) == 3
        ok, text = arun(hist.verify_file(signed))
        assert ok, text
        assert "3 records" in text
        lines = signed.read_text().splitlines()
        lines[0] = lines[0].replace('"signature":"', '"signature":"A')  # tamper with one record
        signed.write_text("\n".join(lines) + "\n")
        ok, text = arun(hist.verify_file(signed))
        assert not ok
