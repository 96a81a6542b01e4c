"""The usbsim:// wire protocol between `DfuSimServer` and `RemoteUsbBackend`: one request, one reply, over TCP.

Every message is a frame: a 4-byte big-endian payload length, then the payload. A client sends a request and
waits for its reply before sending the next (one round trip per control transfer). Requests:

- `D` + slot (u16): describe. Reply `OK` + JSON {"descriptors": Descriptors.to_dict(), "bus", "address",
  "port_numbers"}, or ENODEV while nothing is plugged in that slot.
- `O` + slot (u16) + address (u32): open; OK while that enumeration is still on the bus, else ENODEV.
- `C` + slot (u16) + address (u32) + bmRequestType, bRequest (u8 each) + wValue, wIndex, wLength (u16 each)
  + timeout in ms (u32) + OUT data: control transfer. Reply OK + IN data (OUT: nothing).

A reply's first byte is 0 (OK) or the errno libusb would report (32 stall, 19 gone, 110 timeout), then either the
data or, for an error, a UTF-8 explanation. The address identifies the enumeration: after a re-plug the device
has a new one, and requests carrying the old address fail with ENODEV like a stale libusb handle.
"""
from __future__ import annotations

import socket
import struct

LENGTH = struct.Struct(">I")
SLOT = struct.Struct(">H")
OPEN = struct.Struct(">HI")
CONTROL = struct.Struct(">HIBBHHHI")
OK = 0
MAX_FRAME = 1 << 20  # far above any control transfer (wLength is 16 bits) or descriptor set


class FrameError(ConnectionError):
    """The peer closed the connection or sent something that is not a frame."""


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(LENGTH.pack(len(payload)) + payload)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise FrameError("connection closed")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> bytes:
    (length,) = LENGTH.unpack(recv_exact(sock, LENGTH.size))
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes is too long")
    return recv_exact(sock, length)
