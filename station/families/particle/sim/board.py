"""One emulated Spark Core or Photon: its bootloader in DFU mode, its run-time firmware on the USB serial, buttons.

Modes: "off" (not powered: unplugged), "dfu" (the bootloader's DFU device is on the bus: a `DfuDevice` holding the
board's memories), "run" (the firmware runs; the USB CDC serial is on the bus). A mode change is a re-enumeration:
the owner (ParticleSimServer) hears it through `add_listener` and moves the board's registry entry.

What runs after a reset depends on what is in the memories, read at every boot (firmware.py): the Core boots the
image at 0x08005000, the Photon its system parts (and the user part if it was built for that device-os or older;
otherwise safe mode). Nothing valid there: the bootloader stays in DFU mode. The firmware's version decides its
console and which magic baud rates it honours (PROTOCOLS §11.1): 14400 → DFU from 0.4.0 on; 28800 → listening
mode from 0.5.0 to 5.x (0.4.x ran a YMODEM flasher there, which is not emulated). At boot it also parses its key
slots (keys.py).

LED, as a person sees it: "blinking yellow" DFU mode; "blinking blue" listening mode (the firmware starts there
when it has no Wi-Fi credentials); "blinking green" credentials saved but that network is not in range;
"breathing cyan" connected (both key slots good; the emulator does not contact the cloud); "flashing cyan with
orange blips" the device key slot is bad; "flashing cyan with red blips" the server key slot is bad; "breathing
magenta" safe mode (a Photon whose user part needs a newer device-os).

Buttons: `press_reset()`; `hold_mode(seconds)` while running: 3 s → listening mode, 10 s → also clears the Wi-Fi
credentials; `hold_mode(seconds, tap_reset=True)` (hold MODE, tap RESET, keep holding): 3 s → DFU mode.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, replace
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from station.families.dfu.sim.device import DfuDevice, DfuFaults
from station.families.particle.sim import firmware as fw
from station.families.particle.sim.console import ConsoleFacts, Credentials, ListeningConsole
from station.families.particle.sim.keys import CloudSetup, read_cloud_setup
from station.families.particle.sim.kinds import KINDS, ParticleKind

DFU_BAUD, LISTEN_BAUD = 14400, 28800
DFU_BAUD_SINCE, LISTEN_BAUD_SINCE, LISTEN_BAUD_UNTIL = (0, 4, 0), (0, 5, 0), (6, 0, 0)
HOLD_TO_LISTEN_S, HOLD_TO_CLEAR_S, HOLD_FOR_DFU_S = 3.0, 10.0, 3.0
FACTORY_DOMAIN = b"device.spark.io"
SERVER_KEY_AREA = 452  # key, address TLV at 384, port at 450


@dataclass
class ParticleFaults:
    """Misbehaviours to inject (`--fault I:NAME[=VALUE]`)."""

    unplug_after_bytes: int | None = None  # DFU: the board vanishes once this many bytes were downloaded
    vanish_on_switch: bool = False  # a software mode switch (magic baud, DFU leave) leaves the board off the bus

    NAMES = ("unplug_after_bytes", "vanish_on_switch")

    def with_fault(self, name: str, value: str | None) -> "ParticleFaults":
        if name not in self.NAMES:
            raise ValueError(f"unknown Particle fault {name!r}; choose one of {', '.join(self.NAMES)}")
        if name == "unplug_after_bytes":
            if value is None or not value.strip().isdigit():
                raise ValueError("Particle fault unplug_after_bytes needs a number, e.g. unplug_after_bytes=4096")
            return replace(self, unplug_after_bytes=int(value))
        if value not in (None, "1", "true", "yes", "on"):
            raise ValueError(f"Particle fault {name} takes no value (or =1)")
        return replace(self, **{name: True})


@functools.lru_cache(maxsize=1)
def factory_server_key_der() -> bytes:
    """Stand-in for the public cloud's RSA-2048 key the boards ship with (one per process)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_device_key_der() -> bytes:
    """A device key as the factory writes it: RSA-1024, PKCS#1 DER."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def server_key_area(key_der: bytes, domain: bytes) -> bytes:
    """Server key, then at offset 384 the domain TLV (odd length padded with one 0), port 0xFFFF at 450."""
    area = bytearray(b"\xFF" * SERVER_KEY_AREA)
    area[:len(key_der)] = key_der
    tlv = bytes([1, len(domain)]) + domain + (b"\0" if len(domain) % 2 else b"")
    area[384:384 + len(tlv)] = tlv
    return bytes(area)


@dataclass(frozen=True)
class Running:
    """What booted: the device-os version and whether the application runs (or safe mode)."""

    version: fw.Version
    modules: tuple[fw.Module, ...]
    safe_mode: bool


ModeListener = Callable[["ParticleBoard", str, str], None]


class ParticleBoard:
    def __init__(self, kind: ParticleKind | str, index: int = 0, *, blank: bool = False,
                 faults: ParticleFaults | None = None, visible: dict[str, tuple[int, int]] | None = None,
                 throttle: bool = False):
        """`blank`: nothing but the bootloader (it stays in DFU mode); `visible`: SSID -> (security, cipher) of
        the networks in range; `throttle`: erase and program in DFU mode take as long as on the real parts."""
        self.kind = KINDS[kind] if isinstance(kind, str) else kind
        self.index = index
        self.dfu = DfuDevice(self.kind.dfu, self.kind.dfu.uid_for(index), throttle=throttle)
        self.uid = self.dfu.uid
        self.device_id = self.uid.hex()
        self.mac = "6c:0b:84:" + ":".join(f"{b:02x}" for b in self.uid[-3:])
        self.visible = dict(visible or {})
        self.wifi: list[Credentials] = []  # kept by the Wi-Fi module, not in DFU-visible memory
        self.faults = faults or ParticleFaults()
        self.mode = "off"
        self.running: Running | None = None
        self.cloud: CloudSetup | None = None
        self.listening = False
        self.host_open = False  # a host has the USB serial open (DTR asserted)
        self.run_enumeration = 0
        self._console: ListeningConsole | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[ModeListener] = []
        self._dfu_session = 0
        self.dfu.add_listener(self._dfu_left_bus)
        if not blank:
            self._load_factory()

    def __repr__(self) -> str:
        return f"ParticleBoard({self.kind.name}, {self.device_id})"

    @property
    def faults(self) -> ParticleFaults:
        return self._faults

    @faults.setter
    def faults(self, faults: ParticleFaults) -> None:
        self._faults = faults
        self.dfu.faults = DfuFaults(unplug_after_bytes=faults.unplug_after_bytes)

    # --- factory ----------------------------------------------------------------------------------------------------

    def _load_factory(self) -> None:
        k = self.kind
        version = k.factory_version
        if k.platform == "core":
            images = [(fw.CORE_APP_ADDRESS, fw.core_app(version, name=f"factory firmware {version}"))]
        else:
            images = [(address, fw.photon_system_part(i + 1, version))
                      for i, address in enumerate(fw.PHOTON_SYSTEM_PARTS)]
            images.append((fw.PHOTON_USER_ADDRESS, fw.photon_user_part(version, name="factory tinker")))
        for address, image in images:
            self.dfu.memories[0].load(address, image)
        keys = self.dfu.memories[k.keys.alt]
        keys.load(k.keys.device_key, new_device_key_der())
        keys.load(k.keys.server_key, server_key_area(factory_server_key_der(), FACTORY_DOMAIN))

    # --- what the owner sees ----------------------------------------------------------------------------------------

    def add_listener(self, on_mode: ModeListener) -> None:
        """`on_mode(board, old, new)` runs after every mode change, with the board's lock held."""
        self._listeners.append(on_mode)

    @property
    def led(self) -> str:
        with self._lock:
            if self.mode == "off":
                return "off"
            if self.mode == "dfu":
                return "blinking yellow"
            if self.listening:
                return "blinking blue"
            if not any(c.ssid in self.visible for c in self.wifi):
                return "blinking green"
            if self.cloud.device_public_der is None:
                return "flashing cyan with orange blips"
            if self.cloud.server_public_der is None:
                return "flashing cyan with red blips"
            return "breathing magenta" if self.running.safe_mode else "breathing cyan"

    def wait_until(self, predicate: Callable[["ParticleBoard"], bool], timeout: float) -> bool:
        """Block until `predicate(board)` holds (True; at once if it already does) or `timeout` passes (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def read_memory(self, alt: int, address: int, length: int) -> bytes:
        return self.dfu.read_memory(alt, address, length)

    # --- power and buttons ------------------------------------------------------------------------------------------

    def power_on(self) -> None:
        with self._lock:
            if self.mode == "off":
                self._boot()

    def power_off(self) -> None:
        with self._lock:
            self._set_mode("off")
            self.dfu.detach()

    def press_reset(self) -> None:
        with self._lock:
            if self.mode != "off":
                self._boot()

    def hold_mode(self, seconds: float, tap_reset: bool = False) -> None:
        with self._lock:
            if self.mode == "off":
                return
            if tap_reset:
                if seconds >= HOLD_FOR_DFU_S:
                    self._enter_dfu()
                else:
                    self._boot()
            elif self.mode == "run" and seconds >= HOLD_TO_LISTEN_S:
                if seconds >= HOLD_TO_CLEAR_S:
                    self.wifi.clear()
                self._listen()

    # --- the USB serial (run mode) ------------------------------------------------------------------------------

    # Each takes the run enumeration the host opened: requests through a handle from before a reset reach nothing.

    def _current(self, enumeration: int) -> bool:
        return self.mode == "run" and self.run_enumeration == enumeration

    def host_opened(self, enumeration: int) -> None:
        with self._lock:
            if self._current(enumeration):
                self.host_open = True
                self._changed.notify_all()

    def host_closed(self, enumeration: int) -> None:
        with self._lock:
            if self._current(enumeration):
                self.host_open = False
                self._changed.notify_all()

    def set_line_coding(self, enumeration: int, baud: int) -> None:
        """A CDC SET_LINE_CODING from the host: the firmware's bit-rate handler."""
        with self._lock:
            if not self._current(enumeration):
                return
            version = self.running.version
            if baud == DFU_BAUD and version >= DFU_BAUD_SINCE:
                if self.faults.vanish_on_switch:
                    self.power_off()
                else:
                    self._enter_dfu()
            elif baud == LISTEN_BAUD and LISTEN_BAUD_SINCE <= version < LISTEN_BAUD_UNTIL and not self.listening:
                self._listen()

    def receive(self, enumeration: int, data: bytes) -> bytes:
        """Bytes from the host; returns what the board prints back (only the listening console reads)."""
        with self._lock:
            if not self._current(enumeration) or self._console is None:
                return b""
            return self._console.feed(data)

    # --- transitions --------------------------------------------------------------------------------------------

    def _set_mode(self, mode: str) -> None:
        old = self.mode
        if mode != "run":
            self.running = self.cloud = self._console = None
            self.listening = self.host_open = False
        self.mode = mode
        for listener in self._listeners:
            listener(self, old, mode)
        self._changed.notify_all()

    def _enter_dfu(self) -> None:
        self.dfu.detach()  # a reset from DFU mode into DFU mode is a new enumeration too
        self._dfu_session += 1
        self._set_mode("dfu")  # the owner puts the DFU device on the bus

    def _boot(self) -> None:
        self.dfu.detach()
        running = self._find_firmware()
        if running is None:
            self._enter_dfu()
            return
        old = self.mode
        if old == "run":
            self._set_mode("off")  # the USB serial goes away during the reset
            old = "off"
        k = self.kind.keys
        self.running = running
        self.cloud = read_cloud_setup(self.read_memory(k.alt, k.device_key, k.device_key_size),
                                      self.read_memory(k.alt, k.server_key, SERVER_KEY_AREA))
        self.run_enumeration += 1
        self.mode = "run"  # set before the listeners hear of it, with running and cloud in place
        if not self.wifi:
            self._listen()
        for listener in self._listeners:
            listener(self, old, "run")
        self._changed.notify_all()

    def _find_firmware(self) -> Running | None:
        def read(address: int, length: int) -> bytes:
            return self.read_memory(0, address, length)
        platform = self.kind.platform_id
        if self.kind.platform == "core":
            app = fw.read_module(read, fw.CORE_APP_ADDRESS, platform, fw.MONOLITHIC)
            return None if app is None else Running(app.version, (app,), safe_mode=False)
        parts = [fw.read_module(read, address, platform, fw.SYSTEM_PART) for address in fw.PHOTON_SYSTEM_PARTS]
        if None in parts or parts[0].version != parts[1].version:
            return None
        user = fw.read_module(read, fw.PHOTON_USER_ADDRESS, platform, fw.USER_PART)
        modules = tuple(parts) + ((user,) if user else ())
        return Running(parts[0].version, modules, safe_mode=user is None or user.version > parts[0].version)

    def _listen(self) -> None:
        self.listening = True
        self._console = ListeningConsole(self._console_facts(), self._save_credentials, self._stop_listening)
        self._changed.notify_all()

    def _stop_listening(self) -> None:
        self.listening = False
        self._console = None
        self._changed.notify_all()

    def _save_credentials(self, credentials: Credentials) -> bool:
        self.wifi = [c for c in self.wifi if c.ssid != credentials.ssid] + [credentials]
        return True

    def _console_facts(self) -> ConsoleFacts:
        function = {fw.MONOLITHIC: "m", fw.SYSTEM_PART: "s", fw.USER_PART: "u"}
        modules = [{"f": function[m.function], "n": str(m.index), "v": m.version_text, "s": m.size}
                   for m in self.running.modules]
        return ConsoleFacts(self.kind.platform, self.kind.platform_id, self.running.version, self.device_id,
                            self.mac, modules, self.visible if self.kind.platform == "photon" else {})

    def _dfu_left_bus(self, device: DfuDevice) -> None:
        """Runs under the DFU device's lock: the board acts in its own thread, as a reset takes a moment anyway."""
        session, reason = self._dfu_session, device.exit_reason
        threading.Thread(target=self._after_dfu, args=(session, reason), name=f"{self!r} reset",
                         daemon=True).start()

    def _after_dfu(self, session: int, reason: str) -> None:
        with self._lock:
            if self.mode != "dfu" or self._dfu_session != session:
                return  # the board itself took the DFU device off the bus
            if reason == "reset" and not self.faults.vanish_on_switch:
                self._boot()
            else:
                self._set_mode("off")

