"""`espsim://HOST:PORT`: serial over TCP *with* DTR/RTS, for the station's emulated boards.

pyserial finds this module through `serial.protocol_handler_packages` (`station.families.esp.session` registers
`station.families.esp.sim` on import), so `serial.serial_for_url("espsim://127.0.0.1:4001")` gives this `Serial`.

Why not `socket://`: it has no modem lines, so esptool can neither reset a board into download mode (it never
reads the ROM boot log: a board in the wrong boot mode looks like "No serial data received") nor reset it into
its app. Why not `rfc2217://`: pyserial's client polls ~50 ms per line change and renegotiates on every
timeout change, which makes esptool about 4x slower.

Wire format (docs/agent-protocol.md has the agent protocol; this is only the transport):

    client -> server   PREAMBLE = 00 'ESPSIM1' 0A     (a SLIP packet starts with C0, so this never is one)
    server -> client   PREAMBLE                        (the server speaks espsim; no reset has happened)
                    or BUSY = 00 'ESPBUSY' 0A, then the server closes: another espsim:// host holds the board
                       (as a tty another program holds under an exclusive lock; pyserial says EBUSY)
    then both ways     frames: kind u8 | length u16 LE | data

    kind 0 DATA   both ways    serial bytes, 0..65535 per frame
    kind 1 LINES  client ->    u8 bits (bit 0 DTR, bit 1 RTS; 1 = asserted) | u64 LE host time in µs
    kind 2 SYNC   client ->    u32 LE token | u64 LE host time in µs
                  <- server    u32 LE token, sent once every earlier frame has taken effect on the board

A connection without the preamble stays unframed: the stock esptool CLI keeps using `socket://` exactly as
before (each connection is a reset into the ROM loader).

Line changes are sent at once and stamped with the host's clock, so the emulator models the auto-reset
circuit in host time: a line thread that falls behind cannot squeeze esptool's 100 ms reset pulse to nothing.
Before anything reads (in_waiting, read, reset_input_buffer) after a line change, the client sends SYNC and
waits for its echo: by then whatever the change caused (a ROM boot log, an app booting) is in the input
buffer, just as on a real tty the boot log is there after esptool's 50 ms wait.

Like a real tty on Linux, opening asserts DTR and RTS together (EN stays high: opening does not reset the
board), and closing deasserts both. `fileno()` raises ENOTTY, as `TIOCMGET`/`TIOCMSET` do on a pty, so
esptool's UnixTightReset reports "Chip was NOT reset" and its ClassicReset, which uses the `dtr`/`rts`
setters, does the reset.
"""
from __future__ import annotations

import errno
import select
import socket
import struct
import time
import urllib.parse

from serial.serialutil import PortNotOpenError, SerialException, SerialTimeoutException, Timeout, to_bytes
from serial.urlhandler import protocol_socket

PREAMBLE = b"\x00ESPSIM1\n"
BUSY = b"\x00ESPBUSY\n"
KIND_DATA, KIND_LINES, KIND_SYNC = 0, 1, 2
HEADER = struct.Struct("<BH")
LINES = struct.Struct("<BQ")
SYNC = struct.Struct("<IQ")
SYNC_ECHO = struct.Struct("<I")
MAX_FRAME = 0xFFFF
DTR_BIT, RTS_BIT = 1, 2
HANDSHAKE_TIMEOUT = 5.0  # seconds for the server's preamble
SYNC_TIMEOUT = 5.0  # seconds for a SYNC echo (the server defers it at most the modelled EN rise time)
RECV_SIZE = 1 << 16


def encode_frame(kind: int, data: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(data)) + data


def encode_data(data: bytes) -> bytes:
    """DATA frames for any amount of serial bytes (64 KiB each)."""
    if len(data) <= MAX_FRAME:
        return HEADER.pack(KIND_DATA, len(data)) + data
    view = memoryview(data)
    return b"".join(HEADER.pack(KIND_DATA, len(view[i:i + MAX_FRAME])) + view[i:i + MAX_FRAME]
                    for i in range(0, len(data), MAX_FRAME))


def host_time_us() -> int:
    return time.monotonic_ns() // 1000


class FrameDecoder:
    """Splits a received byte stream into (kind, payload) frames.

    DATA payloads come out as they arrive (a 64 KiB frame may come out in pieces; serial bytes are a stream),
    so bulk data is sliced out of each received chunk once instead of being buffered until its frame is whole.
    Control frames (LINES, SYNC) always come out whole.
    """

    def __init__(self):
        self._header = bytearray()
        self._kind = KIND_DATA
        self._left = 0  # payload bytes of the current frame still to come
        self._control = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        frames = []
        pos, end = 0, len(data)
        while pos < end:
            if not self._left:
                take = data[pos:pos + 3 - len(self._header)]
                self._header += take
                pos += len(take)
                if len(self._header) < 3:
                    break
                self._kind, self._left = HEADER.unpack(self._header)
                self._header.clear()
                if not self._left:
                    frames.append((self._kind, b""))
                    continue
            take = min(self._left, end - pos)
            piece = data[pos:pos + take] if take < end or pos else data  # the whole chunk: no copy
            pos += take
            self._left -= take
            if self._kind == KIND_DATA:
                frames.append((KIND_DATA, piece))
            else:
                self._control += piece
                if not self._left:
                    frames.append((self._kind, bytes(self._control)))
                    self._control.clear()
        return frames


class Serial(protocol_socket.Serial):
    """pyserial port for `espsim://host:port`: serial bytes plus DTR/RTS, framed over one TCP connection."""

    def open(self) -> None:
        self.logger = None
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        address = self.from_url(self.portstr)
        self._decoder = FrameDecoder()
        self._rx = bytearray()
        self._sync_token = 0
        self._sync_seen = 0
        self._lines_dirty = False
        try:
            sock = socket.create_connection(address, timeout=HANDSHAKE_TIMEOUT)
        except OSError as e:
            raise SerialException(f"Could not open port {self.portstr}: {e}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # line changes must not wait for Nagle
            sock.sendall(PREAMBLE)
            leftover = self._handshake(sock)
        except (OSError, SerialException) as e:
            sock.close()
            raise SerialException(f"Could not open port {self.portstr}: {e}") from None
        sock.setblocking(False)
        self._socket = sock
        self.is_open = True
        self._take(leftover)
        # a tty on Linux asserts DTR and RTS when opened: EN stays high, the board is not reset
        if not self._dsrdtr:
            self._update_dtr_state()
        if not self._rtscts:
            self._update_rts_state()
        self.reset_input_buffer()

    def _handshake(self, sock: socket.socket) -> bytes:
        got = b""
        while len(got) < len(PREAMBLE):
            try:
                chunk = sock.recv(RECV_SIZE)
            except socket.timeout:
                chunk = None
            if not chunk:
                raise SerialException(
                    f"{self.portstr} did not answer the espsim handshake (is it a `station sim esp` board? "
                    "plain TCP serial servers take socket:// URLs)")
            got += chunk
        if got.startswith(BUSY):
            raise SerialException(errno.EBUSY, f"Could not exclusively lock port {self.portstr}: another program "
                                               f"has it open")
        if not got.startswith(PREAMBLE):
            raise SerialException(f"{self.portstr} answered {got[:len(PREAMBLE)]!r}, not the espsim handshake")
        return got[len(PREAMBLE):]

    def from_url(self, url: str) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "espsim":
            raise SerialException(f"expected espsim://<host>:<port>, not {url!r}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.query or parts.path not in ("", "/"):
            raise SerialException(f"expected espsim://<host>:<port>, not {url!r}")
        return parts.hostname, port

    def close(self) -> None:
        """Close at once (no 0.3 s grace like socket://: the server finishes one connection before the next)."""
        if not self.is_open:
            return
        self.is_open = False
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # --- modem lines ------------------------------------------------------------------------------------------

    def _update_dtr_state(self) -> None:
        self._send_lines()

    def _update_rts_state(self) -> None:
        self._send_lines()

    def _send_lines(self) -> None:
        bits = (DTR_BIT if self._dtr_state else 0) | (RTS_BIT if self._rts_state else 0)
        self._send(encode_frame(KIND_LINES, LINES.pack(bits, host_time_us())))
        self._lines_dirty = True

    def fileno(self) -> int:
        """No tty behind this port: TIOCMGET/TIOCMSET would fail, so say so as a pty does."""
        raise OSError(errno.ENOTTY, "espsim:// is not a tty; set DTR/RTS through the port's dtr/rts attributes")

    def _settle(self) -> None:
        """After line changes, wait until the board has acted on them (its output is then in our buffer)."""
        if not self._lines_dirty:
            return
        self._lines_dirty = False
        self._sync_token = (self._sync_token + 1) & 0xFFFFFFFF
        token = self._sync_token
        self._send(encode_frame(KIND_SYNC, SYNC.pack(token, host_time_us())))
        deadline = time.monotonic() + SYNC_TIMEOUT
        while self._sync_seen != token:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SerialException(f"{self.portstr}: the emulator did not confirm a DTR/RTS change")
            self._pump(left)

    # --- bytes ------------------------------------------------------------------------------------------------

    def _sock(self) -> socket.socket:
        sock = self._socket
        if not self.is_open or sock is None:
            raise PortNotOpenError()
        return sock

    def _send(self, *buffers: bytes | memoryview) -> None:
        """Send the buffers back to back (gathered: a 64 KiB payload is not copied to prefix its header)."""
        sock = self._sock()
        views = [memoryview(b) for b in buffers if len(b)]
        timeout = Timeout(self._write_timeout)
        while views:
            try:
                sent = sock.sendmsg(views)
            except BlockingIOError:
                sent = 0
            except (OSError, ValueError) as e:
                raise SerialException(f"write failed: {e}") from None
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if sent:
                views[0] = views[0][sent:]
            if not views:
                return
            if timeout.expired():
                self.close()  # half a frame is on the wire: this connection cannot carry another one
                raise SerialTimeoutException("Write timeout")
            try:
                select.select([], [sock], [], timeout.time_left())
            except (OSError, ValueError) as e:
                raise SerialException(f"write failed: {e}") from None

    def _take(self, data: bytes) -> None:
        for kind, payload in self._decoder.feed(data):
            if kind == KIND_DATA:
                self._rx += payload
            elif kind == KIND_SYNC and len(payload) == SYNC_ECHO.size:
                (self._sync_seen,) = SYNC_ECHO.unpack(payload)
            # other kinds: ignored, room for later versions

    def _pump(self, wait: float | None) -> None:
        """Receive what has arrived, waiting up to `wait` seconds (None: forever) for the first bytes."""
        sock = self._sock()
        try:
            if wait != 0:
                ready, _, _ = select.select([sock], [], [], wait)
                if not ready:
                    return
            while True:
                try:
                    chunk = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    return
                if not chunk:
                    raise SerialException("socket disconnected")
                self._take(chunk)
                if len(chunk) < RECV_SIZE:
                    return
        except (OSError, ValueError) as e:  # closed under us (abort from another thread) or reset by the peer
            if not self.is_open:
                raise PortNotOpenError() from None
            raise SerialException(f"read failed: {e}") from None

    @property
    def in_waiting(self) -> int:
        """The exact number of received serial bytes (pyserial's socket:// answers only 0 or 1)."""
        self._settle()
        self._pump(0)
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        self._settle()
        if len(self._rx) < size:
            timeout = Timeout(self._timeout)
            self._pump(0)
            while len(self._rx) < size and not timeout.expired():
                self._pump(timeout.time_left())
        if size >= len(self._rx):
            data = bytes(self._rx)
            self._rx.clear()
        else:
            data = bytes(memoryview(self._rx)[:size])
            del self._rx[:size]
        return data

    def write(self, data) -> int:
        d = to_bytes(data)
        view = memoryview(d)
        buffers = []
        for i in range(0, len(d), MAX_FRAME):
            piece = view[i:i + MAX_FRAME]
            buffers += (HEADER.pack(KIND_DATA, len(piece)), piece)
        self._send(*buffers)
        return len(d)

    def reset_input_buffer(self) -> None:
        self._settle()
        self._pump(0)
        self._rx.clear()
