"""`station doctor`: what a bench needs, checked, each problem with its fix. The checks are functions over
`BenchFacts`, which `gather_facts()` reads from this computer, so each check can be tried on any facts."""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from station.cloud.broker import find_mosquitto
from station.families import FAMILIES
from station.host_setup import RULES
from station.udev import GROUP

SETUP_FIX = f"sudo station setup (udev rules, the '{GROUP}' group), log out and in again, then replug the board"


@dataclass(frozen=True)
class DeviceNode:
    path: str  # /dev/ttyUSB0, /dev/bus/usb/001/004
    board: str  # what carries the board and where: "CH340 at USB 1-2.3"
    usable: bool  # this user may read and write it


@dataclass(frozen=True)
class BenchFacts:
    nodes: tuple[DeviceNode, ...]
    rules_installed: bool
    running: frozenset[str]  # names of running processes
    brltty_installed: bool
    mosquitto: str | None  # its path
    display: bool
    token_module: str | None  # the PKCS#11 module the station CA's keys are on, when they are on a token
    token_module_present: bool
    libusb: bool


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str


def check_ports(facts: BenchFacts) -> list[Problem]:
    return [Problem(f"{n.path} ({n.board}): this user may not read and write it", SETUP_FIX)
            for n in facts.nodes if not n.usable]


def check_modemmanager(facts: BenchFacts) -> list[Problem]:
    if "ModemManager" not in facts.running or facts.rules_installed:
        return []  # the rules tell it to keep its hands off the boards (ID_MM_DEVICE_IGNORE)
    return [Problem("ModemManager is running and no rules keep it off the boards: it probes new serial ports and "
                    "can hold a board's port mid-flash",
                    "sudo station setup (its rules tell ModemManager to ignore the boards), or "
                    "sudo systemctl disable --now ModemManager")]


def check_brltty(facts: BenchFacts) -> list[Problem]:
    if not facts.brltty_installed:
        return []
    return [Problem("brltty is installed: its udev rules take CH340 serial bridges (1a86:7523) for braille "
                    "displays, and the board's /dev/ttyUSB port disappears",
                    "sudo apt remove brltty (unless a braille display is used on this computer)")]


def check_mosquitto(facts: BenchFacts) -> list[Problem]:
    if facts.mosquitto:
        return []
    return [Problem("Mosquitto is missing: the local cloud can't start, so boards stay 'registration pending'",
                    "sudo apt install mosquitto (the station runs its own broker; the packaged service can stay off)")]


def check_display(facts: BenchFacts) -> list[Problem]:
    if facts.display:
        return []
    return [Problem("no display (neither DISPLAY nor WAYLAND_DISPLAY is set): the window can't open",
                    "run it in a desktop session; without one use the terminal (station provision, "
                    "station demo --headless)")]


def check_token(facts: BenchFacts) -> list[Problem]:
    if facts.token_module is None or facts.token_module_present:
        return []
    return [Problem(f"the station CA's keys are on a PKCS#11 token, and its module {facts.token_module} is missing",
                    "sudo apt install softhsm2 for SoftHSM, or install the token's own PKCS#11 driver")]


def check_libusb(facts: BenchFacts) -> list[Problem]:
    if facts.libusb:
        return []
    dfu = [f.title for f in FAMILIES.values() if any(f.transport_of(i) == "usb" for i in f.usb_ids)]
    return [Problem(f"pyusb finds no libusb: {', '.join(dfu)} boards can't be found or flashed",
                    "sudo apt install libusb-1.0-0")]


CHECKS: dict[str, Callable[[BenchFacts], list[Problem]]] = {
    "board ports": check_ports, "ModemManager": check_modemmanager, "brltty": check_brltty,
    "Mosquitto": check_mosquitto, "display": check_display, "PKCS#11 token": check_token, "libusb": check_libusb,
}


# --- the facts of this computer ------------------------------------------------------------------------------

TTY = re.compile(r"tty(USB|ACM)\d+$")


def may_use(path: Path) -> bool:
    return os.access(path, os.R_OK | os.W_OK)


def board_nodes(sys_usb: Path = Path("/sys/bus/usb/devices"), dev: Path = Path("/dev"),
                usable: Callable[[Path], bool] = may_use) -> tuple[DeviceNode, ...]:
    """The USB device node and the serial ttys of every plugged board a family knows by its USB ID."""
    known = {usb_id: name for family in FAMILIES.values() for usb_id, name in family.usb_ids.items()}
    nodes = []
    for device in sorted(sys_usb.glob("*")):
        try:
            usb_id = (int((device / "idVendor").read_text(), 16), int((device / "idProduct").read_text(), 16))
            bus, number = int((device / "busnum").read_text()), int((device / "devnum").read_text())
        except (OSError, ValueError):
            continue  # an interface, not a device
        if usb_id not in known:
            continue
        board = f"{known[usb_id]} at USB {device.name}"
        paths = [dev / "bus" / "usb" / f"{bus:03d}" / f"{number:03d}"]
        paths += sorted(dev / p.name for p in device.glob("*:*/**/tty*") if TTY.match(p.name))
        nodes += [DeviceNode(str(p), board, usable(p)) for p in dict.fromkeys(paths)]
    return tuple(nodes)


def running_processes(proc: Path = Path("/proc")) -> frozenset[str]:
    names = set()
    for comm in proc.glob("[0-9]*/comm"):
        try:
            names.add(comm.read_text().strip())
        except OSError:
            continue  # the process ended while we looked
    return frozenset(names)


def ca_token_module(data: Path) -> str | None:
    from station.identity.ca import ca_dir

    token = ca_dir(data) / "token.json"
    return json.loads(token.read_text())["module"] if token.is_file() else None


def libusb_found() -> bool:
    import usb.backend.libusb1

    return usb.backend.libusb1.get_backend() is not None


def gather_facts(data: Path) -> BenchFacts:
    module = ca_token_module(data)
    return BenchFacts(
        nodes=board_nodes(), rules_installed=(Path("/") / RULES).is_file(), running=running_processes(),
        brltty_installed=shutil.which("brltty", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is not None,
        mosquitto=find_mosquitto(), display=bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")),
        token_module=module, token_module_present=module is not None and Path(module).is_file(),
        libusb=libusb_found())


def diagnose(facts: BenchFacts) -> dict[str, list[Problem]]:
    return {name: check(facts) for name, check in CHECKS.items()}
