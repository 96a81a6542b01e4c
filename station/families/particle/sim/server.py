"""Serves emulated Spark Cores and Photons in both personalities, each at one USB location that never changes.

Board N (from 1) sits at location `sim-3.N`. While it is in DFU mode its bootloader is a USB device served as
`usbsim://HOST:USBPORT/N` (station/families/dfu/sim: pyusb code drives it through `remote.open_device`); while its
firmware runs, its USB serial is `particlesim://HOST:PORT/N` (protocol_particlesim.py). Exactly one
`<registry_dir>/sim-3.N.json` describes it at a time, with that personality's URL, VID:PID and serial: a mode
change removes the file and writes the new one, as a real board drops off the bus and re-enumerates.

The buttons (`press_reset`, `hold_mode`) and the cable (`plug`, `unplug`) are here, by location.
"""
from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from station.families.dfu.sim.server import UsbSimService
from station.families.dfu.sim.wire import FrameError, recv_exact
from station.families.esp.sim.protocol_espsim import KIND_DATA, KIND_SYNC, FrameDecoder, encode_data, encode_frame
from station.families.particle.sim.board import ParticleBoard
from station.families.particle.sim.protocol_particlesim import BAUD, BUSY, GONE, KIND_BAUD, OPEN, PREAMBLE
from station.families.particle.sim.pty import PtyConsole
from station.sim.registry import write_registry_file

log = logging.getLogger(__name__)

LOCATION_PREFIX = "sim-3"
SIM_BUS = 3
ACM_INITIAL_RATE = 9600  # what cdc-acm sends when the device appears
OPEN_TIMEOUT_S = 5.0


@dataclass
class _Opened:
    """A host holding board `index`'s USB serial, as enumerated then."""

    index: int
    conn: socket.socket
    enumeration: int


class ParticleSimServer:
    """Indexes in this API are 0-based positions in `boards`; locations and URL slots count from 1."""

    def __init__(self, boards: Sequence[ParticleBoard], registry_dir: str | Path, host: str = "127.0.0.1",
                 port: int = 0):
        self.boards = list(boards)
        self.registry_dir = Path(registry_dir)
        self.host = host
        self.port = port
        self.usb = UsbSimService([b.dfu for b in self.boards], host, 0, bus=SIM_BUS)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._opened: dict[int, _Opened] = {}
        self._acm: dict[int, tuple[int, int]] = {}  # index -> (run enumeration, rate last sent to the firmware)
        self._ptys: list[PtyConsole] = []
        self._lock = threading.Lock()
        for board in self.boards:
            board.add_listener(self._mode_changed)

    # --- names ------------------------------------------------------------------------------------------------------

    @property
    def locations(self) -> list[str]:
        return [f"{LOCATION_PREFIX}.{i + 1}" for i in range(len(self.boards))]

    def index(self, location: str) -> int:
        try:
            return self.locations.index(location)
        except ValueError:
            raise KeyError(f"{location} is not a port of this Particle emulator") from None

    def board(self, location: str) -> ParticleBoard:
        return self.boards[self.index(location)]

    def usb_url(self, index: int) -> str:
        return self.usb.url(index)

    def serial_url(self, index: int) -> str:
        return f"particlesim://{self.host}:{self.port}/{index + 1}"

    def open_pty(self, index: int) -> str:
        """Also offer board `index`'s console on a pty (bytes only: see pty.py); its path."""
        pty = PtyConsole(self.boards[index])
        self._ptys.append(pty)
        return pty.path

    def registry_path(self, index: int) -> Path:
        return self.registry_dir / f"{self.locations[index]}.json"

    # --- lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> "ParticleSimServer":
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        self.usb.listen()
        listener = socket.create_server((self.host, self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, "particle-sim-accept")
        for i in range(len(self.boards)):
            self.plug(i)
        return self

    def stop(self) -> None:
        for i in range(len(self.boards)):
            self.unplug(i)
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _hang_up(conn)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        for pty in self._ptys:
            pty.close()
        self._ptys.clear()
        self.usb.close()

    def __enter__(self) -> "ParticleSimServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the cable and the buttons ---------------------------------------------------------------------------------

    def plug(self, index: int) -> None:
        """Power up through the cable: the board boots what is in its flash (or stays in DFU mode)."""
        self.boards[index].power_on()

    def unplug(self, index: int) -> None:
        self.boards[index].power_off()

    def is_plugged(self, index: int) -> bool:
        return self.boards[index].mode != "off"

    def press_reset(self, location: str) -> None:
        self.board(location).press_reset()

    def hold_mode(self, location: str, seconds: float, tap_reset: bool = False) -> None:
        """Hold MODE for `seconds` (with `tap_reset`: hold MODE, tap RESET, keep holding), then let go."""
        self.board(location).hold_mode(seconds, tap_reset=tap_reset)

    def led(self, location: str) -> str:
        return self.board(location).led

    def wait_mode(self, location: str, mode: str, timeout: float = 5.0) -> bool:
        """Block until the board at `location` is in `mode` ("dfu", "run", "off"); False after `timeout` s."""
        return self.board(location).wait_until(lambda b: b.mode == mode, timeout)

    # --- re-enumeration ---------------------------------------------------------------------------------------------

    def registry_entry(self, index: int) -> dict | None:
        board = self.boards[index]
        location = self.locations[index]
        if board.mode == "dfu":
            k = board.dfu.kind
            return {"location": location, "url": self.usb_url(index), "vid": k.vid, "pid": k.pid,
                    "serial": board.dfu.serial, "description": k.product, "manufacturer": k.manufacturer}
        if board.mode == "run":
            k = board.kind
            return {"location": location, "url": self.serial_url(index), "vid": k.run_vid, "pid": k.run_pid,
                    "serial": board.device_id.upper(), "description": k.run_product,
                    "manufacturer": k.run_manufacturer}
        return None

    def _mode_changed(self, board: ParticleBoard, old: str, new: str) -> None:
        """Runs under the board's lock: the old personality leaves the bus, the new one enumerates."""
        index = self.boards.index(board)
        self.registry_path(index).unlink(missing_ok=True)
        if old == "run":
            with self._lock:
                opened = self._opened.pop(index, None)
            if opened is not None:
                _hang_up(opened.conn)
        if new == "dfu":
            self.usb.bus.plug(board.dfu, port=index + 1)
        elif new == "run":
            with self._lock:
                self._acm[index] = (board.run_enumeration, ACM_INITIAL_RATE)
        entry = self.registry_entry(index)
        if entry is not None:
            write_registry_file(self.registry_dir, entry)

    # --- the USB serial -----------------------------------------------------------------------------------------

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._serve, f"particle-sim-conn-{conn.fileno()}", conn)

    def _serve(self, conn: socket.socket) -> None:
        opened = None
        try:
            opened = self._open(conn)
            if opened is not None:
                self._talk(conn, opened)
            else:
                conn.shutdown(socket.SHUT_WR)
        except (OSError, FrameError):
            pass  # the host went away, or stop() / a re-enumeration hung up
        finally:
            with self._lock:
                self._conns.discard(conn)
                if opened is not None and self._opened.get(opened.index) is opened:
                    del self._opened[opened.index]
            if opened is not None:
                self.boards[opened.index].host_closed(opened.enumeration)
            conn.close()

    def _open(self, conn: socket.socket) -> _Opened | None:
        conn.settimeout(OPEN_TIMEOUT_S)
        head = recv_exact(conn, len(PREAMBLE) + OPEN.size)
        if not head.startswith(PREAMBLE):
            return None
        slot, rate = OPEN.unpack(head[len(PREAMBLE):])
        index = slot - 1
        with self._lock:
            if not 0 <= index < len(self.boards) or self.boards[index].mode != "run":
                answer, entry = GONE, None
            elif index in self._opened:
                answer, entry = BUSY, None
            else:
                answer, entry = PREAMBLE, _Opened(index, conn, self.boards[index].run_enumeration)
                self._opened[index] = entry
        if entry is None:
            conn.sendall(answer)
            return None
        conn.settimeout(None)
        self.boards[index].host_opened(entry.enumeration)  # DTR: seen before open() returns on the host
        conn.sendall(answer)
        self._line_coding(index, entry.enumeration, rate)  # after: 14400 takes the board away under the host
        return entry

    def _talk(self, conn: socket.socket, opened: _Opened) -> None:
        board, enumeration = self.boards[opened.index], opened.enumeration
        decoder = FrameDecoder()
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                return
            for kind, payload in decoder.feed(chunk):
                if kind == KIND_DATA:
                    answer = board.receive(enumeration, payload)
                    if answer:
                        conn.sendall(encode_data(answer))
                elif kind == KIND_BAUD and len(payload) == BAUD.size:
                    self._line_coding(opened.index, enumeration, BAUD.unpack(payload)[0])
                elif kind == KIND_SYNC:
                    conn.sendall(encode_frame(KIND_SYNC, payload[:4]))

    def _line_coding(self, index: int, enumeration: int, rate: int) -> None:
        """cdc-acm's rule: the firmware hears SET_LINE_CODING only when the rate changes."""
        with self._lock:
            sent_enumeration, sent_rate = self._acm[index]
            if sent_enumeration != enumeration or sent_rate == rate:
                return  # a stale handle, or no change
            self._acm[index] = (enumeration, rate)
        self.boards[index].set_line_coding(enumeration, rate)


def _hang_up(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
