"""What a board family brings to the station: one interface, so the engine, the journal and the window
never learn which kind of board they drive.

A family owns its USB IDs, how its ports are found and opened, the profile tables and chips it understands,
its steps and their default policies, and its emulator. Adding a family is a folder plus one line in
`station.families.FAMILIES`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from station.model import PortInfo
from station.steps import Session, Step, StepPolicy

if TYPE_CHECKING:
    import click

    from station.profiles import Profile, Table

LogFn = Callable[[str, str], None]  # (level, message)
ProgressFn = Callable[[int, int], None]  # (done bytes, total bytes) of the current transfer


class BoardFamily:
    name: ClassVar[str]  # registry key, recorded with every board ("esp")
    title: ClassVar[str]  # for people: "ESP (serial bootloader)"
    usb_ids: ClassVar[dict[tuple[int, int], str]]  # (VID, PID) -> what carries the board ("CP210x")
    transport: ClassVar[str]  # "serial" (found by pyserial) or "usb" (found by pyusb)
    # USB IDs found over another transport than `transport`: a board with a bootloader and a run-time personality
    # (Particle: DFU over pyusb, its firmware's USB serial over pyserial) is one family at one USB location
    transports: ClassVar[dict[tuple[int, int], str]] = {}
    # a board registers with the cloud by a key the family makes or reads (not by an [identity] certificate)
    registers_device_keys: ClassVar[bool] = False
    takes_identity: ClassVar[bool] = False  # its boards get the profile's [identity] certificate (and register by it)
    url_schemes: ClassVar[tuple[str, ...]]  # `--port URL` schemes this family opens ("" = a device path)
    chips: ClassVar[tuple[str, ...]]  # what a profile's [[firmware]] chip may name
    # keys this family reads in shared profile tables, beyond the generic ones ({"wifi": ("partition",)})
    profile_keys: ClassVar[dict[str, tuple[str, ...]]] = {}
    policies: ClassVar[dict[str, StepPolicy]]  # default timeout and retries per step

    def transport_of(self, usb_id: tuple[int, int]) -> str:
        return self.transports.get(usb_id, self.transport)

    # --- profiles ------------------------------------------------------------------------------------------

    def load_firmware(self, table: "Table", base: Path, chip: str) -> Any:
        """One [[firmware]] set for `chip`, every image read, pinned and checked; ProfileError otherwise."""
        raise NotImplementedError

    def describe_firmware(self, firmware: Any) -> list[str]:
        """What one firmware set writes where, a line per image (name, place, size, SHA-256): the pre-Start
        check in the window and `station` front ends show it."""
        raise NotImplementedError

    def load_options(self, top: "Table", firmware: dict[str, Any], generic: dict[str, Any]) -> Any:
        """The family's share of the other tables ([wifi] partition, [nvs], [identity] store …), checked against
        its firmware sets. `generic` holds what the profile loader already read (wifi, identity, …)."""
        raise NotImplementedError

    # --- boards --------------------------------------------------------------------------------------------

    def open_session(self, port: PortInfo, log: LogFn, progress: ProgressFn) -> Session:
        raise NotImplementedError

    def steps(self, profile: "Profile") -> list[Step]:
        raise NotImplementedError

    def sim_command(self) -> "click.Command":
        """`station sim <family>`: serve emulated boards of this family to other processes."""
        raise NotImplementedError
