"""`particlesim://HOST:PORT/N`: the USB CDC serial of emulated Particle board N, as pyserial opens it.

Importing this module registers the scheme with pyserial (`serial.serial_for_url` then finds this `Serial`).
It carries the serial bytes and the bit rate the host sets, which is what the board's firmware sees of a host's
SET_LINE_CODING: opening at 14400 resets a board into DFU mode, 28800 starts listening mode (PROTOCOLS §11.1),
where the firmware has those switches. Like Linux's cdc-acm driver, the server sends the firmware a new line
coding only when the rate differs from the one last sent in this enumeration (9600 when it appears): opening
again at the same magic rate does nothing, which is why device-os's serial_switcher.py opens at 9600 after the
magic rate. Closing the port is seen by the board (DTR drops).

Wire format (the espsim:// framing, see station/families/esp/sim/protocol_espsim.py):

    client -> server   PREAMBLE | slot u16 BE | bit rate u32 BE (the rate the port is opened at)
    server -> client   PREAMBLE (open), or BUSY (another host has the port open), or GONE (board N has no USB
                       serial now: it is in DFU mode or unplugged); after BUSY or GONE the server closes
    then both ways     frames: kind u8 | length u16 LE | data
    kind 0 DATA  both ways   serial bytes
    kind 2 SYNC  client ->   u32 LE token | u64 LE host time; the server echoes the token once every earlier
                             frame has taken effect (`flush()` and the first read after a rate change wait
                             for it)
    kind 3 BAUD  client ->   u32 LE bit rate (SET_LINE_CODING)

When the board re-enumerates (reset, DFU, unplug) the server closes the connection: reads and writes then fail
as on a tty whose device went away.
"""
from __future__ import annotations

import errno
import socket
import struct
import urllib.parse

import serial
from serial.serialutil import SerialException

from station.families.esp.sim.protocol_espsim import FrameDecoder, Serial as EspSimSerial, encode_frame

PREAMBLE = b"\x00PARTSIM\n"
BUSY = b"\x00PARTBSY\n"
GONE = b"\x00PARTGON\n"
KIND_BAUD = 3
OPEN = struct.Struct(">HI")  # slot, bit rate
BAUD = struct.Struct("<I")
HANDSHAKE_TIMEOUT = 5.0
SCHEME = "particlesim"

if "station.families.particle.sim" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("station.families.particle.sim")


def parse_url(url: str) -> tuple[str, int, int]:
    """(host, port, slot) of particlesim://HOST:PORT/N; SerialException naming the expected form otherwise."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
        slot = int(parts.path.strip("/"))
    except ValueError:
        port = slot = None
    if parts.scheme != SCHEME or not parts.hostname or port is None or slot is None or not 1 <= slot <= 0xFFFF:
        raise SerialException(f"expected particlesim://<host>:<port>/<board>, as the emulator's registry lists it, "
                              f"not {url!r}")
    return parts.hostname, port, slot


class Serial(EspSimSerial):
    """pyserial port for `particlesim://host:port/N`: serial bytes plus the line coding, over one TCP connection."""

    def open(self) -> None:
        self.logger = None
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        host, port, slot = parse_url(self.portstr)
        self._decoder = FrameDecoder()
        self._rx = bytearray()
        self._sync_token = 0
        self._sync_seen = 0
        self._lines_dirty = False
        try:
            sock = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT)
        except OSError as e:
            raise SerialException(f"Could not open port {self.portstr}: {e}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(PREAMBLE + OPEN.pack(slot, self._baudrate))
            leftover = self._handshake(sock)
        except (OSError, SerialException) as e:
            sock.close()
            raise SerialException(e.errno, f"Could not open port {self.portstr}: {e}") from None
        sock.setblocking(False)
        self._socket = sock
        self.is_open = True
        self._take(leftover)
        self._lines_dirty = True  # what the open rate caused is in effect before the first read

    def _handshake(self, sock: socket.socket) -> bytes:
        got = b""
        while len(got) < len(PREAMBLE):
            try:
                chunk = sock.recv(1 << 12)
            except socket.timeout:
                chunk = None
            if not chunk:
                raise SerialException(f"{self.portstr} did not answer the particlesim handshake (is it a "
                                      "`station sim particle` board?)")
            got += chunk
        if got.startswith(BUSY):
            raise SerialException(errno.EBUSY, "another program has the port open")
        if got.startswith(GONE):
            raise SerialException(errno.ENOENT, "no such device: the board has no USB serial now (DFU mode or "
                                                "unplugged)")
        if not got.startswith(PREAMBLE):
            raise SerialException(f"{self.portstr} answered {got[:len(PREAMBLE)]!r}, not the particlesim handshake")
        return got[len(PREAMBLE):]

    def from_url(self, url: str) -> tuple[str, int]:
        host, port, _ = parse_url(url)
        return host, port

    def _reconfigure_port(self) -> None:
        """A new bit rate on an open port: SET_LINE_CODING."""
        if self.is_open:
            self._send(encode_frame(KIND_BAUD, BAUD.pack(self._baudrate)))
            self._lines_dirty = True

    def close(self) -> None:
        """Close and wait until the board has seen it, as closing a tty is done when close() returns: another
        program may open the port right after."""
        if not self.is_open:
            return
        self.is_open = False
        sock, self._socket = self._socket, None
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(HANDSHAKE_TIMEOUT)
            while sock.recv(1 << 12):
                pass  # what the board still said: nobody reads it now
        except OSError:
            pass
        finally:
            sock.close()

    def flush(self) -> None:
        """Wait until everything written has reached the board (and what it answered is in our buffer)."""
        self._lines_dirty = True
        self._settle()

    def _update_dtr_state(self) -> None:
        """DTR is asserted while the port is open and drops when it closes; nothing else is modelled."""

    def _update_rts_state(self) -> None:
        """The CDC firmware ignores RTS."""

    def fileno(self) -> int:
        raise OSError(errno.ENOTTY, "particlesim:// is not a tty")
