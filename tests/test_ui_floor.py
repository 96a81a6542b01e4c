"""The window as a tired technician meets it (issue 11): it fits the screen at 24 ports, Stop is not failure, the
banner names only the boards that are red now, the profile can't change by accident, what blocks a start says so
in the banner, a board that needs a hand is seen from every tab.

Offscreen Qt, one shared qasync loop (tests/conftest.py); every wait is qtbot.waitUntil on real state.
"""
from PySide6.QtCore import QPoint, QPointF, QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QWheelEvent
from PySide6.QtWidgets import QApplication

from station.families.esp.sim.board import EspFaults
from station.families.esp.sim.fleet import demo_fleet
from ui import theme
from ui.advice import RESEAT, SET_ASIDE_FLASH, next_step
from station.profile_library import shipped_profiles_dir
from ui.app import Station
from ui.controller import IDLE, NO_ALLOWED_PORT, NOTHING_TO_RETRY
from ui.main_window import NO_CA
from ui.state import Phase
from ui.tiles import TILE_MIN

PROFILE = shipped_profiles_dir() / "demo-mixed.toml"
PSK = "floor-test-passphrase"


def _bench(stations, monkeypatch):
    from station.identity.ca import StationCA

    monkeypatch.setenv("STATION_DEMO_WIFI_PSK", PSK)

    def make(boards, plug=True, prefix="sim-1"):
        ca = StationCA.ephemeral("UI floor test")

        async def ca_provider():
            return ca

        return stations(boards, PROFILE, plug=plug, prefix=prefix, ca_provider=ca_provider)

    return make


def present(station) -> int:
    return sum(1 for t in station.bridge.tiles.values() if t.present)


def finished(station, keys) -> bool:
    return not station.controller.busy and all(station.bridge.tiles[k].finished for k in keys)


def test_stop_shows_a_neutral_stopped_never_fail_and_a_prompt_is_seen_from_every_tab(stations, monkeypatch, qtbot):
    boards = demo_fleet(2)
    boards[1].faults = EspFaults(wrong_boot_mode=True)  # the station asks for a hand, and waits
    station, server = _bench(stations, monkeypatch)(boards)
    w, b = station.window, station.bridge
    stuck = server.locations[1]
    qtbot.waitUntil(lambda: present(station) == 2)
    w.tabs.setCurrentWidget(w.history)  # the technician is looking at another tab
    w.start_clicked()
    qtbot.waitUntil(lambda: b.tiles[stuck].phase is Phase.OPERATOR, timeout=30_000)
    name = station.settings.name(stuck)
    assert "NEEDS YOU" in w.tabs.tabText(0) and f"{name} NEEDS YOU" in w.windowTitle()
    assert "prompt" in w.sounds.played  # prompts are heard by default, pass/fail sounds are not
    assert not station.settings.sound and station.settings.prompt_sound

    w.stop_clicked()
    qtbot.waitUntil(lambda: w.controller.mode == IDLE and b.tiles[stuck].finished, timeout=30_000)
    tile = b.tiles[stuck]
    assert tile.phase is Phase.STOPPED and w.grid.tiles[stuck].headline() == "Stopped"
    assert b.counts()[1] == 0 and stuck not in b.red_ports()
    text = w.banner.text()
    assert "Stopped by you" in text and "not failed" in text and "red" not in text and "FAIL" not in text
    assert w.banner.property("kind") == "stopped"
    assert "NEEDS YOU" not in w.windowTitle() and w.tabs.tabText(0) == "Ports"
    stopped = [k for k in server.locations if b.tiles[k].phase is Phase.STOPPED]  # the other may have passed
    assert w.retry_action.isEnabled() and w.retry_action.text().endswith(f"({len(stopped)})")
    assert station.settings.yields.get(stuck) is None  # a stop counts against no port


def test_the_banner_names_only_boards_red_now_and_agrees_with_retry_failed(stations, monkeypatch, qtbot):
    boards = demo_fleet(3)
    boards[2].faults = EspFaults(flash_write_error=True)
    station, server = _bench(stations, monkeypatch)(boards)
    w, b = station.window, station.bridge
    bad = server.locations[2]
    qtbot.waitUntil(lambda: present(station) == 3)
    station.settings.auto_name(3)
    w.start_clicked()
    qtbot.waitUntil(lambda: finished(station, server.locations), timeout=45_000)
    assert b.tiles[bad].phase is Phase.FAIL
    assert "Take out the red boards: A3" in w.banner.text() and "A1" not in w.banner.text()
    assert w.retry_action.text().endswith("(1)") and w.retry_action.isEnabled()
    assert next_step(b.tiles[bad].reason) in w.grid.tiles[bad].summary()  # what to do, beside the reason
    assert station.settings.yields[bad] == [0, 1] and station.settings.yields[server.locations[0]] == [1, 0]
    assert "1 failed" in w.summary_line.text() and "per board" in w.summary_line.text()

    qtbot.waitUntil(lambda: not b._dirty)  # the last progress figures are painted (15 Hz) before we count
    asked = {k: 0 for k in server.locations}  # repaints the window asks of each tile from here on
    for key, tile_widget in w.grid.tiles.items():
        def counting(*args, key=key, update=tile_widget.update):
            asked[key] += 1
            update(*args)
        tile_widget.update = counting
    server.unplug(2)  # pulled for rework: no longer red, nothing to retry
    qtbot.waitUntil(lambda: not b.tiles[bad].present and b.tiles[bad].phase is Phase.EMPTY)
    qtbot.waitUntil(lambda: "Take out" not in w.banner.text())
    assert not w.retry_action.isEnabled() and w.retry_action.text().endswith("Retry failed")
    assert asked[bad] > 0 and asked[server.locations[0]] == asked[server.locations[1]] == 0  # only the one changed

    boards[2].faults = EspFaults()
    server.plug(2)  # reseated: not red, but Retry failed runs it
    qtbot.waitUntil(lambda: b.tiles[bad].present)
    qtbot.waitUntil(lambda: w.retry_action.isEnabled())
    assert b.red_ports() == [] and "Take out" not in w.banner.text() and "(1)" in w.retry_action.text()
    w.retry_clicked()
    qtbot.waitUntil(lambda: b.tiles[bad].phase is Phase.PASS, timeout=45_000)
    qtbot.waitUntil(lambda: "all 3 passed" in w.banner.text())


def test_a_refused_profile_leaves_nothing_loaded_and_start_disabled(stations, monkeypatch, qtbot, arun, tmp_path):
    station, _server = _bench(stations, monkeypatch)(demo_fleet(1))
    w, c = station.window, station.controller
    assert w.start_action.isEnabled() and c.profile is not None
    broken = tmp_path / "broken.toml"
    broken.write_text('[profile]\nname = "broken"\n[[firmware]]\nchip = "ESP32"\nimages = []\n')
    assert arun(w.select_profile(broken)) is False
    assert c.profile is None and c.engine is None and c.profile_path == ""
    assert not w.start_action.isEnabled() and not w.check_button.isEnabled()
    assert w.banner.property("kind") == "blocked" and "Profile refused" in w.banner.text()
    assert "nothing loaded" in w.profile_title.text()
    assert arun(c.start_batch()) is False
    assert arun(w.select_profile(PROFILE)) is True
    assert w.start_action.isEnabled() and w.banner.property("kind") != "blocked"
    assert w.profile_title.text() == c.profile.name  # the name, large, above the banner
    plan = w.plan_text()  # the pre-Start check: what goes where, with hashes, identity and cloud
    for words in ("ESP32:", "→ flash 0x010000", "SHA-256", "STM32:", "→ alt 0 at 0x08000000", "Identity:",
                  "Cloud for ESP32/ESP32-C3/ESP8266: registered with mosquitto",
                  "Cloud for STM32: none (no device identity to register)",
                  "Cloud for Spark Core/Photon: registered with spark-server"):
        assert words in plan


def test_no_key_press_or_wheel_turn_changes_the_profile_and_a_change_asks_first(stations, monkeypatch, qtbot):
    station, _server = _bench(stations, monkeypatch)(demo_fleet(2))
    w, c = station.window, station.controller
    qtbot.waitUntil(lambda: present(station) == 2)
    before = c.profile_path
    w.profile_button.setFocus()
    for key in (Qt.Key.Key_Down, Qt.Key.Key_Up, Qt.Key.Key_PageDown, Qt.Key.Key_E, Qt.Key.Key_End):
        qtbot.keyClick(w.profile_button, key)
    wheel = QWheelEvent(QPointF(5, 5), QPointF(w.profile_button.mapToGlobal(QPoint(5, 5))), QPoint(0, 0),
                        QPoint(0, -120), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(w.profile_button, wheel)
    qtbot.wait(50)
    assert c.profile_path == before and not c.busy

    other = str(shipped_profiles_dir() / "esp32-mqtt-sensor.toml")
    asked = []
    w.ask = True
    monkeypatch.setattr(w, "confirm_profile_change", lambda name, boards: asked.append((name, boards)) or False)
    w.profile_picked(other)
    assert asked == [("esp32-mqtt-sensor", 2)] and c.profile_path == before
    monkeypatch.setattr(w, "confirm_profile_change", lambda name, boards: True)
    w.profile_picked(other)
    qtbot.waitUntil(lambda: c.profile_path == other)


def test_f5_starts_a_batch_only_from_the_ports_tab(stations, monkeypatch, qtbot):
    station, _server = _bench(stations, monkeypatch)(demo_fleet(1))
    w, c = station.window, station.controller
    qtbot.waitUntil(lambda: present(station) == 1)
    w.activateWindow()
    w.tabs.setCurrentWidget(w.history)
    qtbot.keyClick(w, Qt.Key.Key_F5)
    qtbot.wait(100)
    assert not c.busy and station.bridge.batch_id == ""
    assert "Ports tab" in w.statusBar().currentMessage()
    w.tabs.setCurrentIndex(0)
    qtbot.keyClick(w, Qt.Key.Key_F5)
    qtbot.waitUntil(lambda: station.bridge.batch_id != "")


def test_start_blockers_stand_in_the_banner_and_vanish_when_they_no_longer_hold(stations, monkeypatch, qtbot, arun):
    station, server = _bench(stations, monkeypatch)(demo_fleet(1))
    w, c, page = station.window, station.controller, station.window.settings_page
    qtbot.waitUntil(lambda: present(station) == 1)

    page.lot_required.setChecked(True)  # the supervisor wants a lot on every batch
    assert c.lot_required and station.settings.lot_required
    assert arun(c.start_batch()) is False and not c.busy
    assert w.banner.property("kind") == "blocked" and "lot" in w.banner.text()
    qtbot.keyClicks(w.lot_edit, "LOT-7")
    assert w.banner.property("kind") != "blocked"

    assert arun(c.arm_one_touch()) is False
    assert NO_ALLOWED_PORT in w.banner.text()
    assert w.set_allowed(server.locations[0], True)
    assert NO_ALLOWED_PORT not in w.banner.text()

    assert arun(c.retry_failed()) is False
    assert NOTHING_TO_RETRY in w.banner.text()
    w.start_clicked()  # a start clears it
    qtbot.waitUntil(lambda: finished(station, server.locations) and station.bridge.batch_id != "", timeout=45_000)
    assert NOTHING_TO_RETRY not in w.banner.text()
    assert station.bridge.batch_id and w.lot_edit.text() == "LOT-7"


def test_with_no_ca_the_banner_says_so_with_the_button_that_sets_one_up(stations, monkeypatch, qtbot):
    monkeypatch.setenv("STATION_DEMO_WIFI_PSK", PSK)
    station, _server = stations(demo_fleet(1), PROFILE)  # the station's own CA files: none yet
    w = station.window
    assert NO_CA in w.banner.text() and w.banner.property("kind") == "blocked"
    assert w.fix_button.isVisible()
    qtbot.mouseClick(w.fix_button, Qt.MouseButton.LeftButton)
    assert w.tabs.currentWidget() is w.settings_page


def test_one_touch_live_ports_are_teal_and_ports_not_allowed_step_back(stations, monkeypatch, qtbot):
    station, server = _bench(stations, monkeypatch)(demo_fleet(2), plug=False, prefix="sim-8")
    w, c = station.window, station.controller
    live, other = "sim-8.1", "sim-8.2"
    for key in (live, other):
        station.bridge.ensure_tile(key)
    w._layout_changed()
    assert w.set_allowed(live, True)
    w.one_touch.click()
    qtbot.waitUntil(lambda: c.mode == "one-touch")

    def colours(key: str) -> set[str]:
        image = w.grid.tiles[key].grab().toImage()
        return {QColor(image.pixel(x, y)).name() for x in range(0, image.width(), 2)
                for y in range(0, image.height(), 2)}

    live_px, other_px = colours(live), colours(other)
    assert theme.ARMED in live_px and theme.ARMED not in other_px
    assert theme.SWATCHES[Phase.FAIL].fill not in live_px | other_px  # armed is not FAIL red
    assert theme.SWATCHES[Phase.EMPTY].fill in live_px and theme.SWATCHES[Phase.EMPTY].fill not in other_px  # dimmed
    assert w.banner.property("kind") == "armed"
    w.one_touch.click()
    qtbot.waitUntil(lambda: c.mode == IDLE)


def test_the_grid_fits_the_screen_at_24_ports(qtbot, arun, tmp_path, aloop):
    station = Station(tmp_path / "data", [], profile=PROFILE, operator="t", station_id="s")
    try:
        w = station.window
        for n in range(24):
            station.bridge.ensure_tile(f"usb-1.{n + 1}")
        w._layout_changed()
        screen = QGuiApplication.primaryScreen().availableGeometry().size()
        assert w.grid.sizeHint().width() <= screen.width() and w.grid.sizeHint().height() <= screen.height()
        assert w.minimumSizeHint().boundedTo(QSize(1280, 800)) == w.minimumSizeHint()
        w.resize(1280, 800)
        w.show()
        qtbot.waitExposed(w)
        qtbot.waitUntil(lambda: w.grid.width() > 0)
        assert w.width() <= 1280 and w.height() <= 800
        cols = w.grid._placed[1]
        assert cols * 4 >= 24 and cols <= 8  # rows and columns from the space, not a fixed pattern
        for tile in w.grid.tiles.values():
            g = tile.geometry()
            assert w.grid.rect().contains(g) and g.width() >= TILE_MIN.width() * 0.9
        station.settings.auto_name(cols)  # names follow the rows and columns on screen
        keys = w.grid.order()
        assert station.settings.name(keys[cols]) == "B1" and station.settings.columns == cols
    finally:
        arun(station.close())
        station.window.close()


def test_first_run_has_no_profile_chosen_and_start_is_disabled(qtbot, arun, tmp_path, aloop):
    station = Station(tmp_path / "data", [], operator="t", station_id="s")
    try:
        arun(station.start())
        w = station.window
        assert station.controller.profile is None and not w.start_action.isEnabled()
        assert "No profile chosen" in w.banner.text() and "none chosen" in w.profile_button.text()
    finally:
        arun(station.close())
        station.window.close()


def test_reasons_say_what_to_do_next():
    assert next_step("Board vanished during flash at 62 % (port closed)") == RESEAT
    assert next_step("Verify failed: flash at 0x10000 (4096 bytes) does not hold the image") == SET_ASIDE_FLASH
    assert next_step("Wrong board: profile 'x' is for ESP32; this is a USB DFU board").startswith("Take it out")
    assert "Retry" in next_step("Stopped by the operator")
    assert next_step("The board was unable to connect to 'lab': check the passphrase").startswith("Check the Wi-Fi")
    assert "Improv" in next_step("The firmware did not answer Improv Wi-Fi serial within 10 s; it printed 'x'")


def test_the_supervisor_resets_the_per_port_counters_and_exports_say_where_they_went(stations, monkeypatch, qtbot,
                                                                                     arun, tmp_path):
    station, server = _bench(stations, monkeypatch)(demo_fleet(1))
    w, page = station.window, station.window.settings_page
    key = server.locations[0]
    qtbot.waitUntil(lambda: present(station) == 1)
    w.start_clicked()
    qtbot.waitUntil(lambda: finished(station, [key]) and station.bridge.batch_id != "", timeout=45_000)
    assert station.settings.yields[key] == [1, 0]
    ok, words = arun(station.ca_status())  # the CA as a person checks it: subject and fingerprint
    assert ok and "CN=UI floor test" in words and "SHA-256" in words and "StationCA" not in words

    from PySide6.QtWidgets import QMessageBox
    shown = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: shown.append(
        [b.text() for b in box.buttons()] + [box.informativeText()]))
    w.ask = True
    w.start_clicked()  # the board that passed is still there: asked, and "again" says what it costs
    w.ask = False
    assert any("voids their certificates" in t for t in shown[0]) and "voids the certificates" in shown[0][-1]
    assert not station.controller.busy  # nothing chosen, nothing started
    assert "✔1 ✘0" in w.grid.tiles[key]._tooltip() or "1 passed, 0 failed" in w.grid.tiles[key]._tooltip()
    arun(page.set_supervisor("pass phrase 1", "pass phrase 1", None))
    page.lock_station()
    assert not page.reset_yields.isEnabled() and not page.lot_required.isEnabled()
    assert arun(w.unlock("pass phrase 1"))
    page.reset_yields.click()
    assert station.settings.yields == {} and station.settings.yields_since

    out = tmp_path / "out.csv"
    assert arun(w.history.export_to(out, "csv")) == 1
    assert str(out) in w.banner.text()


def test_the_batch_bar_says_how_far_the_batch_is_and_an_eta_only_once_it_has_one(qtbot):
    from station import events as ev
    from ui.bridge import EngineBridge

    b = EngineBridge()
    steps = ("detect", "flash", "verify", "reset")
    b(ev.BatchStarted("b1", "p", "batch", ("k1", "k2")))
    b(ev.DeviceStarted("k1", "d1", steps))
    b(ev.DeviceStarted("k2", "d2", steps))
    start = b.tiles["k1"].started
    b(ev.StepStarted("k1", "flash", 1))
    b(ev.Progress("k1", "flash", 50, 100, 1000.0))  # k1: 1.5 of 4 steps
    b(ev.StepStarted("k2", "detect", 0))
    assert b.batch_progress(start + 6) == (0, 2, (0.375 + 0.0) / 2, None)  # k2 gives no estimate yet
    b(ev.DeviceDone("k2", "d2", True, "", 10.0))
    done, total, fraction, left = b.batch_progress(start + 6)
    assert (done, total, fraction) == (1, 2, (0.375 + 1) / 2)
    assert left == 6 * (1 - 0.375) / 0.375  # k1's own pace (10 s) beats a finished board's 10 - 6
