"""Serves emulated ESP boards the way a USB hub presents real ones: one serial endpoint per board, discoverable.

Each board gets a TCP listener or a pty (`/dev/pts/N`). Plugging a board in powers it up: with DTR/RTS released
it boots whatever is in its flash. The TCP port speaks two ways, told apart by the first bytes the client sends:

- `espsim://127.0.0.1:<port>` (station.families.esp.sim.protocol_espsim, what the station opens): framed serial bytes plus
  DTR/RTS. The lines drive the board's auto-reset circuit (`EspBoard.set_lines`), so esptool's reset sequences
  really reset it: into download mode with the ROM's boot log, or into the app in flash. Opening does not reset
  the board (DTR and RTS asserted together leave EN high); closing releases both lines.
- `socket://127.0.0.1:<port>` (any other first byte, or silence for `SNIFF_S`; what the stock esptool CLI opens):
  raw bytes, and a *new connection is a reset into download mode*, since socket:// cannot toggle EN/IO0. The
  flasher stub therefore never survives a reconnect; flash contents always do. On a pty the same happens when
  the first bytes arrive after every opener had closed the slave.

While a board is plugged, `<registry_dir>/<location>.json` describes it like `list_ports` describes a real port
(location, url, USB VID/PID of the bridge, serial, description, manufacturer) and never names the chip; the url
is the espsim:// one for TCP boards.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import select
import socket
import struct
import termios
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from station.families.esp.sim.board import EspBoard
from station.sim.registry import write_registry_file
from station.families.esp.sim.protocol_espsim import (
    BUSY, DTR_BIT, KIND_DATA, KIND_LINES, KIND_SYNC, LINES, PREAMBLE, RTS_BIT, SYNC, SYNC_ECHO, FrameDecoder,
    encode_data, encode_frame,
)

log = logging.getLogger(__name__)

SNIFF_S = 0.25  # a TCP client that has said nothing by then is a socket:// client that reads first

BITS_PER_BYTE = 10  # start + 8 data + stop
PACE_SLICE_S = 0.004  # throttled traffic moves in ~4 ms slices so the host sees bytes trickle in


class LinePacer:
    """Holds one direction of a UART to its line rate with a monotonic budget (no per-byte sleeps)."""

    def __init__(self):
        self._done_at = 0.0

    @staticmethod
    def slice_bytes(baud: int) -> int:
        return max(32, int(baud / BITS_PER_BYTE * PACE_SLICE_S))

    def spend(self, nbytes: int, baud: int) -> None:
        """Sleep until `nbytes` more bytes would have finished crossing the wire."""
        now = time.monotonic()
        self._done_at = max(self._done_at, now) + nbytes * BITS_PER_BYTE / baud
        delay = self._done_at - now
        if delay > 0:
            time.sleep(delay)


# --- USB identity for the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsbBridge:
    vid: int
    pid: int
    description: str
    manufacturer: str
    serial_style: str  # "hex32" (CP2102N unique id), "none" (CH340 has no serial), "mac" (Espressif USB-JTAG)


CP2102N = UsbBridge(0x10C4, 0xEA60, "CP2102N USB to UART Bridge Controller", "Silicon Labs", "hex32")
CH340 = UsbBridge(0x1A86, 0x7523, "USB Serial", "QinHeng Electronics", "none")
ESPRESSIF_USB_JTAG = UsbBridge(0x303A, 0x1001, "USB JTAG/serial debug unit", "Espressif", "mac")
BRIDGE_BY_CHIP = {"esp32": CP2102N, "esp8266": CH340, "esp32c3": ESPRESSIF_USB_JTAG}


def registry_entry(board: EspBoard, location: str, url: str) -> dict:
    bridge = BRIDGE_BY_CHIP[board.chip.name]
    if bridge.serial_style == "hex32":
        serial = hashlib.sha256(f"cp2102n:{location}:{board.mac.hex()}".encode()).hexdigest()[:32]
    elif bridge.serial_style == "mac":
        serial = board.mac_text.upper()  # the USB-Serial/JTAG peripheral reports the MAC as its serial
    else:
        serial = None
    return {"location": location, "url": url, "vid": bridge.vid, "pid": bridge.pid, "serial": serial,
            "description": bridge.description, "manufacturer": bridge.manufacturer}


# --- one live serial line ------------------------------------------------------------------------------------------


class _Line:
    """Moves bytes between one transport and one board, paced when throttled. Subclasses own the transport."""

    def __init__(self, board: EspBoard, throttle: bool, name: str):
        self.board = board
        self.throttle = throttle
        self.rx_pacer = LinePacer()
        self.tx_pacer = LinePacer()
        self.closing = False
        self.thread = threading.Thread(target=self._run_safely, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        if self.thread is not threading.current_thread() and self.thread.ident is not None:
            self.thread.join(timeout=5)

    def read_chunk(self) -> int:
        return LinePacer.slice_bytes(self.board.baud) if self.throttle else 1 << 16

    def deliver(self, data: bytes) -> None:
        """Bytes from the host reach the chip once they would have crossed the wire."""
        if self.throttle:
            self.rx_pacer.spend(len(data), self.board.baud)
        try:
            self.board.receive(data)
        except Exception:  # a bug in one board must not take the line down silently
            log.exception("%s: error handling %d bytes", self.board.name, len(data))

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            if not self.throttle:
                self.write_raw(data)
                return
            step = LinePacer.slice_bytes(self.board.baud)
            for i in range(0, len(data), step):
                piece = data[i:i + step]
                self.tx_pacer.spend(len(piece), self.board.baud)  # the host sees a slice once it has fully arrived
                self.write_raw(piece)
        except OSError as e:
            log.debug("%s: write failed: %s", self.board.name, e)
            self.hang_up()

    def hang_up(self) -> None:
        """The host end went away mid-write."""
        self.closing = True

    def _run_safely(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("%s: line thread crashed", self.board.name)
        finally:
            self.close_transport()

    def run(self) -> None:
        raise NotImplementedError

    def write_raw(self, data: bytes) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def close_transport(self) -> None:
        raise NotImplementedError


HOLD_GRACE_S = 0.2  # how long a line that looks open gets for its host's close to arrive before it counts as held


def _refuse_busy(conn: socket.socket) -> None:
    """Say BUSY and hang up once the host has (closing with its preamble unread would reset the connection,
    and the host might lose the answer)."""
    try:
        conn.sendall(BUSY)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(HOLD_GRACE_S * 5)
        while conn.recv(1 << 12):
            pass
    except OSError:
        pass
    finally:
        conn.close()


class _TcpLine(_Line):
    """One TCP connection: espsim:// (framed, with DTR/RTS) or socket:// (raw; the connection is the reset)."""

    def __init__(self, board: EspBoard, sock: socket.socket, throttle: bool, name: str):
        super().__init__(board, throttle, name)
        self.sock = sock
        self.framed = False
        self._send_lock = threading.Lock()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def held(self) -> bool:
        """An espsim:// host still has this line open, as the station holds a tty (exclusively locked); one
        that has just closed it to open it again (a reconnect) gets a moment for its close to arrive."""
        if not self.framed or self.closing or not self.thread.is_alive():
            return False
        try:
            if select.select([self.sock], [], [], HOLD_GRACE_S)[0] \
                    and self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                return False  # the host closed it
        except BlockingIOError:
            pass  # the line thread read what was there: the host is talking
        except OSError:
            return False
        return self.thread.is_alive() and not self.closing

    def run(self) -> None:
        framed, first, eof = self._sniff()
        if framed:
            self._run_framed(first)
        else:
            self._run_raw(first, eof)

    def _sniff(self) -> tuple[bool, bytes, bool]:
        """(espsim?, bytes after the preamble or everything received, peer already gone)."""
        got = b""
        deadline = time.monotonic() + SNIFF_S
        while len(got) < len(PREAMBLE) and PREAMBLE.startswith(got) and not self.closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    break
                chunk = self.sock.recv(1 << 16)
            except (OSError, ValueError):
                return False, got, True
            if not chunk:
                return False, got, True
            got += chunk
        if got.startswith(PREAMBLE):
            return True, got[len(PREAMBLE):], False
        return False, got, False

    # socket://: unframed, the connection is the reset pulse

    def _run_raw(self, first: bytes, eof: bool) -> None:
        self.board.attach(self.write)
        self.board.reset()  # fresh ROM loader in download mode
        late_preamble = b""
        try:
            if first:
                self.deliver(first)
            while not self.closing and not eof:
                try:
                    data = self.sock.recv(self.read_chunk())
                except OSError:
                    break
                if not data:
                    break
                if not first and data.startswith(PREAMBLE):
                    late_preamble = data  # an espsim:// client that was slower than SNIFF_S to say so
                    break
                first = first or data
                self.deliver(data)
        finally:
            self.board.detach(self.write)
        if late_preamble:
            log.warning("%s: espsim:// preamble came after %.2f s; the board was reset as for socket://",
                        self.board.name, SNIFF_S)
            self._run_framed(late_preamble[len(PREAMBLE):])

    # espsim://: framed, DTR/RTS drive the auto-reset circuit

    def _run_framed(self, first: bytes) -> None:
        self.framed = True
        self._send_frame(PREAMBLE)
        self.board.attach(self.write)  # no reset: the chip goes on doing whatever it was doing
        decoder = FrameDecoder()
        self._waiting_syncs: list[int] = []
        self._clock_offset = 0.0  # our monotonic clock minus the host's, from the last stamped frame
        try:
            self._handle(decoder.feed(first))
            while not self.closing:
                due = self.board.strap_sample_due
                try:
                    if due is not None:
                        timeout = max(0.0, due + self._clock_offset - time.monotonic())
                        ready, _, _ = select.select([self.sock], [], [], timeout)
                        if not ready:
                            self.board.settle(due)  # EN has risen: the chip starts now
                            self._answer_syncs()
                            continue
                    data = self.sock.recv(self.read_chunk())
                except (OSError, ValueError):
                    break
                if not data:
                    break
                self._handle(decoder.feed(data))
        finally:
            self.board.detach(self.write)
            self.board.drop_lines()  # a closed port releases DTR and RTS

    def _handle(self, frames: list[tuple[int, bytes]]) -> None:
        for kind, payload in frames:
            if self.closing:
                return
            if kind == KIND_DATA:
                self._deliver_paced(payload)
            elif kind == KIND_LINES and len(payload) == LINES.size:
                bits, host_us = LINES.unpack(payload)
                at = self._host_time(host_us)
                self.board.set_lines(bool(bits & DTR_BIT), bool(bits & RTS_BIT), at)
            elif kind == KIND_SYNC and len(payload) == SYNC.size:
                token, host_us = SYNC.unpack(payload)
                self.board.settle(self._host_time(host_us))
                self._waiting_syncs.append(token)
            # anything else: a later protocol version; ignored
            self._answer_syncs()

    def _host_time(self, host_us: int) -> float:
        at = host_us / 1e6
        self._clock_offset = time.monotonic() - at
        return at

    def _answer_syncs(self) -> None:
        """Echo SYNC tokens once nothing the host did before them is still pending (EN still rising)."""
        if self.board.strap_sample_due is not None:
            return
        while self._waiting_syncs:
            self._send_frame(encode_frame(KIND_SYNC, SYNC_ECHO.pack(self._waiting_syncs.pop(0))))

    def _deliver_paced(self, payload: bytes) -> None:
        if not self.throttle:
            self.deliver(payload)
            return
        i = 0
        while i < len(payload) and not self.closing:
            step = LinePacer.slice_bytes(self.board.baud)
            self.deliver(payload[i:i + step])
            i += step

    def _send_frame(self, frame: bytes) -> None:
        try:
            with self._send_lock:
                self.sock.sendall(frame)
        except OSError as e:
            log.debug("%s: write failed: %s", self.board.name, e)
            self.hang_up()

    def write_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(encode_data(data) if self.framed else data)

    def abort(self) -> None:
        """Drop the line at once, as a yanked cable would: no goodbye, pending data discarded."""
        self.closing = True
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the line thread; it closes the socket (RST)
        except OSError:
            pass

    def close_transport(self) -> None:
        self.closing = True
        try:
            self.sock.close()
        except OSError:
            pass


class _PtyLine(_Line):
    """A pty pair; the slave path is the board's URL. Nobody holding the slave open reads as EIO on the master."""

    WRITE_STALL_S = 3.0  # nobody drained the slave for this long: treat the opener as gone

    def __init__(self, board: EspBoard, throttle: bool, name: str):
        super().__init__(board, throttle, name)
        self.master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line editing before the opener configures the port
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self.master, False)  # a host that stops reading must not wedge this thread
        self._writable = select.poll()
        self._writable.register(self.master, select.POLLOUT)  # POLLHUP (slave closed) is always reported
        self._wake_r, self._wake_w = os.pipe()
        self.opened = False

    def run(self) -> None:
        while not self.closing:
            ready, _, _ = select.select([self.master, self._wake_r], [], [], 0.5)
            if self.closing:
                break
            if self.master not in ready:
                continue
            try:
                data = os.read(self.master, self.read_chunk())
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                self.hang_up()  # the last opener closed the slave: that "connection" is over
                time.sleep(0.02)  # EIO repeats until someone opens the slave again
                continue
            if not self.opened:
                self.opened = True
                self.board.attach(self.write)
                self.board.reset()
            self.deliver(data)

    def write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + self.WRITE_STALL_S
        while view and not self.closing:
            events = self._writable.poll(100)
            flags = events[0][1] if events else 0
            if flags & select.POLLHUP:
                raise OSError(errno.EIO, "pty slave closed")
            if flags & select.POLLOUT:
                try:
                    view = view[os.write(self.master, view):]
                    deadline = time.monotonic() + self.WRITE_STALL_S
                except BlockingIOError:
                    pass
            elif time.monotonic() > deadline:
                raise OSError(errno.EIO, "pty not drained")

    def hang_up(self) -> None:
        """End the session, not the pty: output queued for the old opener is dropped, the next one gets a reset."""
        if not self.opened:
            return
        self.opened = False
        self.board.detach(self.write)
        try:  # open the slave ourselves just long enough to discard what the old opener never read
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                termios.tcflush(fd, termios.TCIFLUSH)
            finally:
                os.close(fd)
        except OSError as e:
            log.debug("%s: could not flush %s: %s", self.board.name, self.path, e)

    def abort(self) -> None:
        self.closing = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close_transport(self) -> None:
        self.closing = True
        self.board.detach(self.write)
        for fd in (self.master, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


# --- one board's slot on the hub -----------------------------------------------------------------------------------


class _Slot:
    def __init__(self, server: "EspSimServer", index: int, board: EspBoard, port: int):
        self.server = server
        self.index = index
        self.board = board
        self.location = f"{server.location_prefix}.{index + 1}"
        self.port = port  # wanted TCP port (0 = any); after plugging, the bound one
        self.url: str | None = None  # for the stock esptool CLI: socket:// (TCP) or the pty path
        self.station_url: str | None = None  # what the registry advertises: espsim:// (TCP) or the pty path
        self.plugged = False
        self.listener: socket.socket | None = None
        self.accept_thread: threading.Thread | None = None
        self.line: _Line | None = None
        self.lock = threading.RLock()
        board.on_vanish = lambda _board: server.unplug(index)

    # plugging

    def plug(self) -> None:
        with self.lock:
            if self.plugged:
                return
            if self.server.transport == "pty":
                line = _PtyLine(self.board, self.server.throttle, f"sim-pty-{self.location}")
                self.line, self.url, self.station_url = line, line.path, line.path
                line.start()
            else:
                self.listener = self._listen()
                self.port = self.listener.getsockname()[1]
                self.url = f"socket://{self.server.host}:{self.port}"
                self.station_url = f"espsim://{self.server.host}:{self.port}"
                self.accept_thread = threading.Thread(target=self._accept_loop, args=(self.listener,),
                                                      name=f"sim-accept-{self.location}", daemon=True)
                self.accept_thread.start()
            self.plugged = True
            self.board.flash_bytes_received = 0
            self.board.power_on()  # USB power: with DTR/RTS released the chip boots from flash
            self.server._publish(self)

    def _listen(self) -> socket.socket:
        for port in dict.fromkeys((self.port, 0)):  # a re-plug keeps its port when it can
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.server.host, port))
            except OSError:
                sock.close()
                if port == 0:
                    raise
                continue
            sock.listen(4)
            sock.settimeout(0.5)  # lets the accept loop notice an unplug even if shutdown() did not wake it
            return sock
        raise OSError("no port to listen on")

    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            while True:
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    if self.listener is not listener:
                        return
                    continue
                except OSError:
                    return  # listener shut down: unplugged or stopping
                conn.settimeout(None)
                with self.lock:
                    if self.listener is not listener:
                        conn.close()
                        return
                    previous = self.line
                if isinstance(previous, _TcpLine) and previous.held():
                    _refuse_busy(conn)  # like a tty another program holds under an exclusive lock
                    continue
                with self.lock:
                    self.line = None
                if previous is not None:  # a second opener resets the chip under the first
                    previous.abort()
                    previous.join()
                line = _TcpLine(self.board, conn, self.server.throttle, f"sim-line-{self.location}")
                with self.lock:
                    if self.listener is not listener:
                        line.close_transport()
                        return
                    self.line = line
                line.start()
        finally:
            listener.close()

    def unplug(self) -> None:
        with self.lock:
            if not self.plugged:
                return
            self.plugged = False
            self.server._withdraw(self)
            self.board.power_off()  # before the line goes: a dying line's released DTR/RTS must not boot it
            listener, self.listener = self.listener, None
            line, self.line = self.line, None
            accept_thread, self.accept_thread = self.accept_thread, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # refuse reconnects now; the accept thread closes it
            except OSError:
                pass
        if line is not None:
            line.abort()
            line.join()
        if accept_thread is not None and accept_thread is not threading.current_thread():
            accept_thread.join(timeout=5)
        self.board.detach()


class EspSimServer:
    """Serves `boards`, each on its own TCP port (or pty), with optional line-rate pacing and a registry dir.

    Board indexes in this API are 0-based positions in `boards`; locations and MACs count from 1.
    """

    def __init__(self, boards: Sequence[EspBoard], *, host: str = "127.0.0.1", base_port: int = 0,
                 transport: str = "tcp", throttle: bool = False, registry_dir: str | os.PathLike | None = None,
                 location_prefix: str = "sim-1"):
        if transport not in ("tcp", "pty"):
            raise ValueError("transport must be 'tcp' or 'pty'")
        self.boards = list(boards)
        self.host = host
        self.transport = transport
        self.throttle = throttle
        self.registry_dir = Path(registry_dir) if registry_dir is not None else None
        self.location_prefix = location_prefix
        self._slots = [_Slot(self, i, board, base_port + i if base_port else 0) for i, board in enumerate(self.boards)]
        self._started = False

    def start(self) -> "EspSimServer":
        if self.registry_dir is not None:
            self.registry_dir.mkdir(parents=True, exist_ok=True)
        for slot in self._slots:
            slot.plug()
        self._started = True
        return self

    def stop(self) -> None:
        for slot in self._slots:
            slot.unplug()
        self._started = False

    def __enter__(self) -> "EspSimServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def urls(self) -> list[str | None]:
        """Current URL per board (None while unplugged)."""
        return [slot.url if slot.plugged else None for slot in self._slots]

    @property
    def locations(self) -> list[str]:
        return [slot.location for slot in self._slots]

    def url(self, index: int) -> str | None:
        return self.urls[index]

    @property
    def station_urls(self) -> list[str | None]:
        """What the station opens, per board (espsim:// for TCP: serial plus DTR/RTS); None while unplugged."""
        return [slot.station_url if slot.plugged else None for slot in self._slots]

    def station_url(self, index: int) -> str | None:
        return self.station_urls[index]

    def is_plugged(self, index: int) -> bool:
        return self._slots[index].plugged

    def registry_path(self, index: int) -> Path | None:
        if self.registry_dir is None:
            return None
        return self.registry_dir / f"{self._slots[index].location}.json"

    def unplug(self, index: int) -> None:
        """Yank the cable: live connection dropped, reconnects refused, registry file gone."""
        self._slots[index].unplug()

    def plug(self, index: int) -> None:
        """Plug back in: a new listener (same port when free) and the registry file returns."""
        self._slots[index].plug()

    # registry

    def _publish(self, slot: _Slot) -> None:
        if self.registry_dir is not None:
            write_registry_file(self.registry_dir, registry_entry(slot.board, slot.location, slot.station_url))

    def _withdraw(self, slot: _Slot) -> None:
        if self.registry_dir is not None:
            try:
                (self.registry_dir / f"{slot.location}.json").unlink()
            except FileNotFoundError:
                pass
