"""The bridge, the tile grid, the saved layout and the lock, without an engine: events go in by hand."""
import json
import threading
import time

from station import events as ev
from station.model import BoardInfo, PortInfo
from ui.bridge import MASK, EngineBridge
from ui.lock import LockError, SupervisorLock
from ui.logpane import LogPane
from ui.sound import Sounds
from ui.state import Phase
from ui.store import UiSettings
from ui.tiles import REPAINT_HZ, TileGrid

KEY = "sim-1.1"


def plugged(bridge, key=KEY):
    bridge(ev.PortAppeared(PortInfo(key, "socket://127.0.0.1:1", "esp", 0x10C4, 0xEA60, None, "CP2102N")))


def grid_for(bridge, qtbot):
    grid = TileGrid(bridge, order=lambda: [], name=lambda k: k, armed=lambda k: "", columns=lambda: 0)
    qtbot.addWidget(grid)
    grid.resize(900, 600)
    grid.show()
    qtbot.waitExposed(grid)
    return grid


def test_progress_is_coalesced_into_a_few_repaints(qtbot):
    bridge = EngineBridge()
    grid = grid_for(bridge, qtbot)
    plugged(bridge)
    bridge(ev.DeviceStarted(KEY, "dev-1", ("detect", "check", "flash", "verify"),
                            ("Detecting", "Checking", "Flashing", "Verifying"), ("verify",)))
    bridge(ev.StepStarted(KEY, "flash", 2))
    tile = grid.tiles[KEY]
    qtbot.waitUntil(lambda: tile.paints > 0)
    before = tile.paints
    t0 = time.monotonic()
    for i in range(5000):  # far more than 24 busy ports send in a second
        bridge(ev.Progress(KEY, "flash", i * 64, 5000 * 64, 90_000.0))
    assert tile.paints == before  # nothing painted while the events poured in
    assert tile.state.done == 4999 * 64 and tile.state.percent() == 99
    qtbot.waitUntil(lambda: tile.paints > before)  # the grid's timer picked the latest figures up
    # a measuring window, not a synchronisation: 5000 events cost the repaints of the timer, not 5000
    qtbot.waitUntil(lambda: time.monotonic() - t0 >= 1.0, timeout=3000)
    assert tile.paints - before <= (time.monotonic() - t0) * REPAINT_HZ + 2
    assert tile.headline() == "Step 3/4 · Flashing"


def test_operator_prompt_shows_and_the_tile_carries_on_when_the_board_comes_back(qtbot):
    bridge = EngineBridge()
    grid = grid_for(bridge, qtbot)
    plugged(bridge)
    bridge(ev.DeviceStarted(KEY, "dev-1", ("detect", "flash", "verify"), ("Detecting", "Flashing", "Verifying"),
                            ("verify",)))
    bridge(ev.StepStarted(KEY, "detect", 0))
    bridge(ev.StepDone(KEY, "detect", False, "Wrong boot mode detected", 0.4))
    with qtbot.waitSignal(bridge.promptShown) as shown:
        bridge(ev.OperatorPrompt(KEY, "detect", "Hold BOOT, press and release RESET, then release BOOT",
                                 "Wrong boot mode detected"))
    assert shown.args == [KEY, "Hold BOOT, press and release RESET, then release BOOT"]
    tile = bridge.tiles[KEY]
    assert tile.phase is Phase.OPERATOR and grid.tiles[KEY].headline() == "NEEDS YOU"
    assert "Hold BOOT" in grid.tiles[KEY].summary()
    bridge(ev.PortGone(KEY))  # the operator pulls the board…
    bridge(ev.PortAppeared(PortInfo(KEY, "socket://127.0.0.1:2", "esp")))  # …and plugs it back in
    assert tile.phase is Phase.OPERATOR and tile.present
    bridge(ev.StepStarted(KEY, "detect", 0))  # the engine re-runs the step by itself
    assert tile.phase is Phase.WORKING and tile.prompt == "" and tile.url == "socket://127.0.0.1:2"
    bridge(ev.BoardIdentified(KEY, BoardInfo("esp", "ESP32", "24:0a:c4:00:00:01")))
    bridge(ev.StepStarted(KEY, "verify", 1))
    assert tile.phase is Phase.VERIFYING
    bridge(ev.DeviceDone(KEY, "dev-1", True, "", 3.2))
    assert tile.phase is Phase.PASS and bridge.counts() == (1, 0, 0)
    bridge(ev.PortGone(KEY))  # pulled after it passed: the tile is free, and says what was there
    assert tile.phase is Phase.EMPTY and tile.last_result == "PASS"


def test_a_dfu_board_that_leaves_the_bus_after_passing_keeps_its_pass_until_the_next_board(qtbot):
    bridge = EngineBridge()
    plugged(bridge)
    tile = bridge.tiles[KEY]
    bridge(ev.DeviceStarted(KEY, "dev-1", ("detect", "flash", "reset"), ("Detecting", "Flashing", "Leaving DFU"),
                            (), leaves_bus=True))
    bridge(ev.DeviceDone(KEY, "dev-1", True, "", 2.0))
    bridge(ev.PortGone(KEY))  # the bootloader reset into the firmware: still on the hub, just not in DFU
    assert tile.phase is Phase.PASS and not tile.present
    bridge(ev.PortAppeared(PortInfo(KEY, "usb://1-2", "dfu")))  # the next board on this port
    assert tile.phase is Phase.IDLE and tile.last_result == "PASS" and not tile.leaves_bus


def test_secrets_never_reach_the_log_from_any_thread(qtbot):
    bridge = EngineBridge()
    pane = LogPane(bridge, lambda k: k)
    qtbot.addWidget(pane)
    plugged(bridge)
    bridge.secrets.add("correct-horse-battery")
    bridge(ev.Log(KEY, "info", "joining station-demo with correct-horse-battery"))
    worker = threading.Thread(target=bridge, args=(ev.Log(None, "warning", "config: password=hunter22 psk: 'x y'"),))
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: any(line.key is None and "config" in line.text for line in bridge.log))
    text = "\n".join(line.text for line in bridge.log)
    assert "correct-horse-battery" not in text and "hunter22" not in text and "'x y'" not in text
    assert text.count(MASK) == 3
    qtbot.waitUntil(lambda: "config" in pane.text())
    assert "hunter22" not in pane.text() and MASK in pane.text()
    pane.show_port(KEY)
    assert "config" not in pane.text() and "joining" in pane.text()


def test_layout_is_remembered_in_hub_order(tmp_path):
    settings = UiSettings(tmp_path)
    for key in ("1-2.10", "1-2.2", "1-2.1", "1-2.9"):
        settings.add_port(key)
    assert settings.order == ["1-2.1", "1-2.2", "1-2.9", "1-2.10"]  # the hub's numbering, not the text's
    settings.auto_name(2)
    assert [settings.name(k) for k in settings.order] == ["A1", "A2", "B1", "B2"]
    settings.rename("1-2.10", "spare")
    settings.set_allowed("1-2.2", True)
    settings.move("1-2.10", -3)
    settings.columns = 2
    settings.save()

    again = UiSettings(tmp_path)
    assert again.order == ["1-2.10", "1-2.1", "1-2.2", "1-2.9"]
    assert again.name("1-2.10") == "spare" and again.allowed == {"1-2.2"} and again.columns == 2
    again.add_port("1-2.3")  # arranged by hand: a new port goes at the end
    assert again.order[-1] == "1-2.3"
    (tmp_path / "ui.json").write_text("{not json")
    broken = UiSettings(tmp_path)
    assert broken.order == [] and "unreadable" in broken.load_error


def test_supervisor_lock_keeps_only_a_salted_hash(tmp_path):
    lock = SupervisorLock(tmp_path)
    assert not lock.is_set and not lock.locked
    lock.set_passphrase("first passphrase")
    record = json.loads(lock.path.read_text())
    assert set(record) >= {"salt", "hash", "n", "r", "p"} and "first" not in lock.path.read_text()
    assert oct(lock.path.stat().st_mode & 0o777) == "0o600"
    assert lock.verify("first passphrase") and not lock.verify("First passphrase")
    try:
        lock.set_passphrase("second passphrase", current="wrong one")
    except LockError as exc:
        assert "not right" in str(exc)
    else:
        raise AssertionError("changed without the current passphrase")
    lock.set_passphrase("second passphrase", current="first passphrase")
    assert SupervisorLock(tmp_path).locked  # a station with a passphrase starts locked
    other = SupervisorLock(tmp_path)
    assert other.verify("second passphrase") and record["salt"] != json.loads(lock.path.read_text())["salt"]
    lock.path.write_text("garbage")
    assert SupervisorLock(tmp_path).locked  # a damaged lock file does not unlock the station


def test_sounds_are_optional_and_fall_back_to_the_bell(qtbot):
    sounds = Sounds()
    sounds.play(True)
    assert sounds.played == []  # off unless switched on
    sounds.enabled = True
    sounds.play(True)
    sounds.play(False)
    assert sounds.played == ["pass", "fail"]
    assert sounds.backend in ("QSoundEffect", "system bell (QApplication.beep)")
