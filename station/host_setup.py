"""`station setup`: what a bench computer needs once, as root: the udev rules (generated from the board
families' USB IDs), the user in the rules' group, and the desktop entry, icon and AppStream metadata. Every change
is recorded under the root given, so `station setup --remove` puts back exactly what was there before.

`root` is "/" on a real system; another folder (the tests, an image being built) gets the same files under
it, the group change goes to its etc/group (usermod --prefix), and the running system's udev is left alone."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from station.udev import GROUP, udev_rules

RULES = Path("etc/udev/rules.d/60-provisioning-station.rules")
DESKTOP = Path("usr/local/share/applications/provisioning-station.desktop")
ICON = Path("usr/local/share/icons/hicolor/scalable/apps/provisioning-station.svg")
METAINFO = Path("usr/local/share/metainfo/io.github.provisioning_station.metainfo.xml")
RECORD = Path("var/lib/provisioning-station/setup.json")  # what setup changed, for --remove

Runner = Callable[[list[str]], subprocess.CompletedProcess]


class SetupError(Exception):
    """Setup can't go on; the message says what and the fix."""


def run_command(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True)


def _resource(*parts: str) -> bytes:
    return resources.files("station_resources").joinpath(*parts).read_bytes()


def desktop_entry(station_command: str) -> bytes:
    """The shipped desktop entry, starting the window through this installation's own `station`."""
    lines = _resource("desktop", "provisioning-station.desktop").decode().splitlines()
    return "".join(f"Exec={station_command} gui\n" if line.startswith("Exec=") else line + "\n"
                   for line in lines).encode()


def files_to_install(station_command: str) -> dict[Path, bytes]:
    return {RULES: udev_rules().encode(),
            DESKTOP: desktop_entry(station_command),
            ICON: _resource("icons", "provisioning-station.svg"),
            METAINFO: _resource("desktop", "io.github.provisioning_station.metainfo.xml")}


def group_members(root: Path, group: str) -> list[str] | None:
    """The members etc/group lists for `group` under `root`; None when there is no such group."""
    try:
        lines = (root / "etc/group").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) == 4 and fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return None


@dataclass
class Record:
    """What setup changed: each file's content before (None: there was none) and the user it added to GROUP."""
    files: dict[str, str | None] = field(default_factory=dict)
    added_to_group: str | None = None

    @classmethod
    def load(cls, root: Path) -> Record:
        path = root / RECORD
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(raw["files"], raw["added_to_group"])

    def save(self, root: Path) -> None:
        path = root / RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"files": self.files, "added_to_group": self.added_to_group}, indent=1))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _usermod(root: Path, *args: str) -> list[str]:
    return ["usermod", *(["--prefix", str(root)] if root != Path("/") else []), *args]


def _reload_udev(root: Path, run: Runner) -> str:
    if root != Path("/"):
        return f"udev not reloaded: {root} is not the running system (reload it there, then replug the boards)"
    if shutil.which("udevadm") is None:
        return "udev not reloaded: udevadm not found (is udev running here?); replug the boards once it is"
    for args in (["udevadm", "control", "--reload-rules"], ["udevadm", "trigger", "--subsystem-match=usb",
                                                          "--subsystem-match=tty"]):
        done = run(args)
        if done.returncode != 0:
            return f"udev not reloaded ({' '.join(args)}: {done.stderr.strip()}); replug the boards after a reboot"
    return "reloaded the udev rules; unplug and replug boards that were already connected"


def install(root: Path, user: str | None, station_command: str, run: Runner = run_command) -> list[str]:
    """Install everything; returns what was done, one line each."""
    record = Record.load(root)
    said: list[str] = []
    try:  # the record is kept whatever happens, so --remove can undo a setup that stopped half way
        for rel, data in files_to_install(station_command).items():
            path = root / rel
            before = path.read_bytes() if path.exists() else None
            if before == data:
                said.append(f"unchanged {path}")
                continue
            # a file setup put there itself keeps its first "before"; anything else is remembered for --remove
            record.files.setdefault(str(rel), None if before is None else before.decode())
            _write(path, data)
            said.append(f"{'replaced' if before is not None else 'installed'} {path}")
        said.append(_reload_udev(root, run))
        said.append(_add_to_group(root, user, record, run))
    finally:
        record.save(root)
    undo = "sudo station setup --remove" + ("" if root == Path("/") else f" --root {root}")
    said.append(f"recorded in {root / RECORD}; undo all of it with: {undo}")
    return said


def _add_to_group(root: Path, user: str | None, record: Record, run: Runner) -> str:
    members = group_members(root, GROUP)
    if members is None:
        return (f"no group '{GROUP}' in {root / 'etc/group'}: the rules' uaccess tag still gives the logged-in "
                f"user the boards; for a service without a seat, groupadd --system {GROUP} and run setup again")
    if user is None:
        return f"no user added to '{GROUP}': run setup with sudo from your own account, or give --user NAME"
    if user in members:
        return f"{user} is already in the group '{GROUP}'"
    done = run(_usermod(root, "-aG", GROUP, user))
    if done.returncode != 0:
        raise SetupError(f"could not add {user} to the group '{GROUP}' ({done.stderr.strip()}); check the user "
                         f"name (--user NAME)")
    record.added_to_group = user
    return f"added {user} to the group '{GROUP}' (log out and in again for it to count)"


def uninstall(root: Path, run: Runner = run_command) -> list[str]:
    """Put back what install() changed, as its record says."""
    if not (root / RECORD).exists():
        raise SetupError(f"nothing to remove: {root / RECORD} is missing, so setup never ran under {root}")
    record = Record.load(root)
    said: list[str] = []
    for rel, before in record.files.items():
        path = root / rel
        if before is None:
            path.unlink(missing_ok=True)
            said.append(f"removed {path}")
        else:
            _write(path, before.encode())
            said.append(f"restored {path} as it was before setup")
    if record.added_to_group:
        done = run(_usermod(root, "-rG", GROUP, record.added_to_group))
        if done.returncode != 0:
            raise SetupError(f"could not take {record.added_to_group} out of the group '{GROUP}' "
                             f"({done.stderr.strip()}); do it by hand: gpasswd -d {record.added_to_group} {GROUP}")
        said.append(f"took {record.added_to_group} out of the group '{GROUP}'")
    (root / RECORD).unlink()
    if not any((root / RECORD).parent.iterdir()):
        (root / RECORD).parent.rmdir()
    said.append(_reload_udev(root, run))
    return said
