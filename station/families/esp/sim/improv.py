"""Improv Wi-Fi serial, as an emulated firmware runs it (improv-wifi.com/serial; PROTOCOLS.md §3.5, §11.6).

An app *declares* Improv by holding the serial packet header constant `IMPROV` + version 1 in its read-only data
(`make_app_image(..., improv=True)`); when the board boots such an app, `ImprovMode` owns its UART after the
app's boot log. It behaves as ESPHome's improv_serial component does: it answers GET_CURRENT_STATE with its
state (and, once provisioned, an RPC result with its URL), GET_DEVICE_INFO with four strings, and WIFI_SETTINGS
with state PROVISIONING, then either PROVISIONED plus an RPC result carrying the URL, or error UNABLE_TO_CONNECT
and state back to AUTHORIZED. Whether a network can be joined is the board's radio environment:
`board.access_points` (SSID -> passphrase). What it joined is kept in `board.wifi` (the firmware's own
preferences survive resets).

Written from the spec facts, separately from the station's client (station.families.esp.improv), so the tests
check one against the other.
"""
from __future__ import annotations

import logging

from station.families.esp.sim.board import EspBoard

log = logging.getLogger(__name__)

IMPROV_MARKER = b"IMPROV\x01"  # the declaration: the packet header constant in the app's rodata
HEADER = b"IMPROV"
VERSION = 1
CURRENT_STATE, ERROR_STATE, RPC, RPC_RESULT = 0x01, 0x02, 0x03, 0x04
AUTHORIZED, PROVISIONING, PROVISIONED = 0x02, 0x03, 0x04
ERROR_NONE, INVALID_RPC, UNKNOWN_RPC, UNABLE_TO_CONNECT = 0x00, 0x01, 0x02, 0x03
WIFI_SETTINGS, GET_CURRENT_STATE, GET_DEVICE_INFO = 0x01, 0x02, 0x03
# what an ESP8266 prints at 74880 baud before the app starts, as a 115200 listener hears it: no text, no packet
ROM_NOISE = bytes((0xE0, 0x1C, 0x8C, 0xF0, 0x13, 0x7E, 0x92, 0x00, 0x6C, 0x9C, 0xE2, 0x0C, 0x8E, 0x7C))


def app_declares_improv(board: EspBoard) -> bool:
    app = board.app_partition()
    offset, size = app if app is not None else (0, min(board.flash.size, 0x100000))
    return board.flash.data.find(IMPROV_MARKER, offset, offset + size) >= 0


def device_url(board: EspBoard) -> str:
    """The address a board's web page would have on the network it joined (one per board)."""
    return f"http://192.168.{100 + board.number // 250}.{10 + board.number % 250}/"


class ImprovMode:
    """Owns the board's UART after an Improv-declaring app boots: prints its log, then answers Improv packets."""

    def __init__(self, board: EspBoard):
        self.board = board
        self._buf = bytearray()
        self.state = PROVISIONED if board.wifi is not None else AUTHORIZED
        board.send(ROM_NOISE + b"\r\n[I][app:029]: Running through setup()...\r\n"
                   b"[C][improv_serial:032]: Setting up IMPROV serial...\r\n"  # text with the header word in it
                   b"[D][wifi:298]: Starting scan...\r\n")

    def receive(self, data: bytes) -> None:
        self._buf += data
        while True:
            at = self._buf.find(HEADER)
            if at < 0:
                del self._buf[:max(0, len(self._buf) - len(HEADER) + 1)]  # a header may be split across reads
                return
            del self._buf[:at]
            if len(self._buf) < 9:
                return
            version, ptype, length = self._buf[6], self._buf[7], self._buf[8]
            if version != VERSION:
                del self._buf[:1]  # not a packet
                continue
            if len(self._buf) < 10 + length:
                return
            packet = bytes(self._buf[:10 + length])
            del self._buf[:10 + length]  # a trailing '\n' after the checksum is skipped by the next search
            if sum(packet[:-1]) & 0xFF != packet[-1]:
                self._error(INVALID_RPC)
                continue
            if ptype == RPC:
                self._rpc(packet[9:-1])

    def _send(self, ptype: int, data: bytes) -> None:
        body = HEADER + bytes((VERSION, ptype, len(data))) + data
        self.board.send(body + bytes((sum(body) & 0xFF,)) + b"\n")

    def _state(self, state: int) -> None:
        self.state = state
        self._send(CURRENT_STATE, bytes((state,)))

    def _error(self, code: int) -> None:
        self._send(ERROR_STATE, bytes((code,)))

    def _result(self, command: int, strings: list[str]) -> None:
        payload = b"".join(bytes((len(s.encode()),)) + s.encode() for s in strings)
        self._send(RPC_RESULT, bytes((command, len(payload))) + payload)

    def _rpc(self, data: bytes) -> None:
        if len(data) < 2 or len(data) != 2 + data[1]:
            self._error(INVALID_RPC)
            return
        command, body = data[0], data[2:]
        if command == GET_CURRENT_STATE:
            self._state(self.state)
            if self.state == PROVISIONED:
                self._result(GET_CURRENT_STATE, [device_url(self.board)])
        elif command == GET_DEVICE_INFO:
            self._result(GET_DEVICE_INFO, ["ESPHome", "2026.11.0", self.board.chip.display_name,
                                           f"switch-{self.board.mac.hex()[-6:]}"])
        elif command == WIFI_SETTINGS:
            self._wifi_settings(body)
        else:
            self._error(UNKNOWN_RPC)

    def _wifi_settings(self, body: bytes) -> None:
        try:
            ssid_len = body[0]
            ssid = body[1:1 + ssid_len].decode()
            psk_len = body[1 + ssid_len]
            psk = body[2 + ssid_len:2 + ssid_len + psk_len].decode()
            if 2 + ssid_len + psk_len != len(body) or not ssid:
                raise ValueError
        except (IndexError, ValueError):
            self._error(INVALID_RPC)
            return
        self._state(PROVISIONING)
        if self.board.access_points.get(ssid) != psk:  # not in range, or the passphrase does not match
            log.info("%s: Improv: could not join '%s'", self.board.name, ssid)
            self._error(UNABLE_TO_CONNECT)
            self._state(AUTHORIZED)
            return
        self.board.wifi = (ssid, psk)
        log.info("%s: Improv: joined '%s'", self.board.name, ssid)  # the passphrase is never logged
        self._state(PROVISIONED)
        self._result(WIFI_SETTINGS, [device_url(self.board)])
