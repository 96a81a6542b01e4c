"""`station doctor`: each check, given the facts of a bench, names the problem and its fix, and stays quiet
when there is none; the facts about plugged boards come from sysfs."""
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli import main
from station.doctor import CHECKS, BenchFacts, DeviceNode, board_nodes, diagnose

GOOD = BenchFacts(nodes=(DeviceNode("/dev/ttyUSB0", "CH340 at USB 1-2", True),), rules_installed=True,
                  running=frozenset({"systemd", "ModemManager"}), brltty_installed=False,
                  mosquitto="/usr/sbin/mosquitto", display=True, token_module=None, token_module_present=False,
                  libusb=True)


def only_problem(facts: BenchFacts) -> tuple[str, str, str]:
    found = {name: problems for name, problems in diagnose(facts).items() if problems}
    assert len(found) == 1 and len(next(iter(found.values()))) == 1, found
    name, (problem,) = next(iter(found.items()))
    return name, problem.what, problem.fix


def test_a_good_bench_has_no_problems():
    assert diagnose(GOOD) == {name: [] for name in CHECKS}


@pytest.mark.parametrize("change, check, what, fix", [
    ({"nodes": (DeviceNode("/dev/bus/usb/001/004", "STM32 ROM DFU at USB 1-3", False),)}, "board ports",
     "/dev/bus/usb/001/004 (STM32 ROM DFU at USB 1-3): this user may not read and write it", "sudo station setup"),
    ({"rules_installed": False}, "ModemManager", "ModemManager is running", "systemctl disable --now ModemManager"),
    ({"brltty_installed": True}, "brltty", "CH340", "sudo apt remove brltty"),
    ({"mosquitto": None}, "Mosquitto", "Mosquitto is missing", "sudo apt install mosquitto"),
    ({"display": False}, "display", "no display", "station demo --headless"),
    ({"token_module": "/usr/lib/softhsm/libsofthsm2.so"}, "PKCS#11 token", "module /usr/lib/softhsm/libsofthsm2.so "
     "is missing", "sudo apt install softhsm2"),
    ({"libusb": False}, "libusb", "pyusb finds no libusb: USB DFU, Particle", "sudo apt install libusb-1.0-0"),
])
def test_each_problem_is_named_with_its_fix(change, check, what, fix):
    name, said, says_fix = only_problem(replace(GOOD, **change))
    assert name == check and what in said and fix in says_fix


def test_modemmanager_is_no_problem_when_not_running():
    assert diagnose(replace(GOOD, rules_installed=False, running=frozenset({"systemd"})))["ModemManager"] == []


def test_a_token_whose_module_is_there_is_no_problem():
    facts = replace(GOOD, token_module="/usr/lib/softhsm/libsofthsm2.so", token_module_present=True)
    assert diagnose(facts)["PKCS#11 token"] == []


def plug(sys_usb: Path, name: str, vid: int, pid: int, bus: int, number: int, *ttys: str) -> None:
    device = sys_usb / name
    device.mkdir(parents=True)
    for attr, value in (("idVendor", f"{vid:04x}"), ("idProduct", f"{pid:04x}"), ("busnum", bus),
                        ("devnum", number)):
        (device / attr).write_text(f"{value}\n")
    for tty in ttys:
        (device / f"{name}:1.0" / tty).mkdir(parents=True)


def test_board_nodes_are_read_from_sysfs(tmp_path):
    sys_usb = tmp_path / "sys"
    plug(sys_usb, "1-2", 0x1A86, 0x7523, 1, 4, "ttyUSB0")  # CH340: usb-serial puts the tty in the interface
    plug(sys_usb, "1-3", 0x303A, 0x1001, 1, 5, "tty/ttyACM0")  # CDC ACM: one folder deeper
    plug(sys_usb, "1-4", 0x0483, 0xDF11, 1, 7)  # an STM32 in DFU mode: no tty
    plug(sys_usb, "1-5", 0x046D, 0xC52B, 1, 9)  # a mouse: not a board
    (sys_usb / "1-2:1.0" / "x").mkdir(parents=True)  # an interface entry, not a device
    dev = tmp_path / "dev"
    denied = {dev / "ttyUSB0", dev / "bus/usb/001/007"}
    nodes = board_nodes(sys_usb, dev, usable=lambda p: p not in denied)
    assert nodes == (
        DeviceNode(f"{dev}/bus/usb/001/004", "CH340 at USB 1-2", True),
        DeviceNode(f"{dev}/ttyUSB0", "CH340 at USB 1-2", False),
        DeviceNode(f"{dev}/bus/usb/001/005", "Espressif USB-Serial/JTAG at USB 1-3", True),
        DeviceNode(f"{dev}/ttyACM0", "Espressif USB-Serial/JTAG at USB 1-3", True),
        DeviceNode(f"{dev}/bus/usb/001/007", "STM32 ROM DFU at USB 1-4", False),
    )


def test_station_doctor_prints_every_check_on_this_computer(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "doctor"])
    assert result.exit_code == 1  # no display, at least
    assert "PROBLEM  no display" in result.output and "fix: run it in a desktop session" in result.output
    assert sum(line.startswith(("ok ", "PROBLEM ")) for line in result.output.splitlines()) >= len(CHECKS)
