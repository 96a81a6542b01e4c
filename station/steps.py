"""Steps, their policies, and the context one board's steps share; no board family's knowledge.

A board family lists its steps (station.families); the engine runs them in order, each as a blocking function
of the device's context in the port's worker thread, and adds timeouts, retries, journaling and events.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from station.model import BoardInfo, PortInfo

if TYPE_CHECKING:
    from station.cloud.registrar import DeviceRegistration
    from station.identity.ca import StationCA
    from station.identity.ledger import Ledger
    from station.identity.provision import IdentityPlan
    from station.profiles import Profile


@dataclass(frozen=True)
class StepPolicy:
    timeout: float  # seconds
    retries: int  # extra attempts after the first


class Session(Protocol):
    """A family's connection to one board; the engine only re-points, aborts and closes it."""

    url: str  # re-resolved after the board re-enumerates at the same USB location

    def abort(self) -> None: ...  # from another thread: unblock a transfer (timeout, Stop)

    def close(self) -> None: ...


@dataclass(frozen=True)
class FlashImage:
    """Bytes bound for one region of a board's memory, and what to call them in records."""

    name: str
    offset: int
    data: bytes = field(repr=False)
    secret: bool = False  # holds a secret (Wi-Fi PSK, private key): its hash is not recorded either
    region: str = ""  # the memory it lands in where a board has several (a DFU alternate setting)
    signer: str = ""  # fingerprint of the key whose signature over it was verified before it was written

    def record(self) -> dict:
        entry: dict = {"name": self.name, "offset": self.offset, "size": len(self.data)}
        if self.region:
            entry["region"] = self.region
        if not self.secret:
            entry["sha256"] = hashlib.sha256(self.data).hexdigest()
        if self.signer:
            entry["signer_key_sha256"] = self.signer
        return entry


@dataclass
class DeviceContext:
    """What one board's steps share, from detect to the last step."""

    port: PortInfo
    profile: "Profile"
    session: Any  # the family's Session
    pool: Executor
    device_id: str = ""
    psk: str | None = field(default=None, repr=False)
    ca: "StationCA | None" = None
    ledger: "Ledger | None" = None
    reprovision: bool = False  # a board whose device serial has a live certificate gets a new one
    board: BoardInfo | None = None
    firmware: Any = None  # the profile's firmware set for the detected chip (the family's own type)
    identity: "IdentityPlan | None" = None
    payloads: Future | None = None  # Future[list[FlashImage]], built while the firmware flashes
    written: list[FlashImage] = field(default_factory=list)
    # a board whose identity is a key its family made or read (no certificate): the journal's identity record
    # (public facts only) and what the cloud learns once the board passes
    key_record: dict | None = None
    registration: "DeviceRegistration | None" = None
    # given by the engine: the port at this board's USB location now (None while it is off the bus), and a wait,
    # blocking the step, until the board is back at its location as `wanted` says (a mode switch re-enumerates
    # it as another USB device): the new port, or None after `timeout` seconds. The engine knows the board left
    # on purpose meanwhile; a Stop or the step's timeout ends the wait with StepFailed.
    port_now: Callable[[], PortInfo | None] = lambda: None
    await_port: Callable[[Callable[[PortInfo], bool], float], PortInfo | None] = lambda wanted, timeout: None


@dataclass(frozen=True)
class Step:
    name: str  # journal and policy name: "detect", "flash", …
    label: str  # what the window shows while it runs: "Flashing"
    run: Callable[[DeviceContext], str]  # returns a short detail for the record; raises StepFailed
    identifies: bool = False  # after it, ctx.board says what the board is
    transfers: bool = False  # moves bytes with progress: a vanished board is reported "at N %"
    verifies: bool = False  # the window shows it as verifying
    leaves_bus: bool = False  # afterwards the board resets off the bus by design (a DFU bootloader's leave)
