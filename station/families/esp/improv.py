"""Host side of Improv Wi-Fi serial (improv-wifi.com/serial; PROTOCOLS.md §3.5, §11.6): Wi-Fi credentials for a
firmware that has no NVS for the station to write (Arduino ESP8266, ESPHome, WLED), sent after it has booted.

    packet = "IMPROV" | version 1 | type | length | data | checksum (low byte of the sum of all bytes before it)
             (+ "\\n", as the JS client and ESPHome write it; the receiving side skips it)

The firmware shares its UART with its log, and an ESP8266 prints its ROM boot message at 74880 baud, which
reads as noise at 115200: the reader searches for the header and takes a packet only when its version and
checksum hold, so a log line that happens to say "IMPROV" is skipped, not misread. The client does what ESP
Web Tools does after a flash: GET_CURRENT_STATE every second until the firmware answers (it may still be
booting), GET_DEVICE_INFO, then WIFI_SETTINGS and the answer: PROVISIONING, then PROVISIONED with an RPC
result carrying the device's URL, or error UNABLE_TO_CONNECT. The passphrase goes into one packet and nowhere
else: not into a log line, an error or anything the device says back.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from station.text import one_line

log = logging.getLogger(__name__)

HEADER = b"IMPROV"
VERSION = 1
CURRENT_STATE, ERROR_STATE, RPC, RPC_RESULT = 0x01, 0x02, 0x03, 0x04
WIFI_SETTINGS, GET_CURRENT_STATE, GET_DEVICE_INFO = 0x01, 0x02, 0x03
STATES = {0x00: "stopped", 0x01: "awaiting authorization", 0x02: "ready", 0x03: "provisioning",
          0x04: "provisioned"}
PROVISIONING, PROVISIONED = 0x03, 0x04
ERRORS = {0x00: "none", 0x01: "invalid RPC packet", 0x02: "unknown RPC command", 0x03: "unable to connect",
          0x04: "not authorized", 0x05: "bad hostname", 0xFF: "unknown error"}
UNABLE_TO_CONNECT = 0x03
POLL_S = 1.0  # how often GET_CURRENT_STATE is repeated while the firmware boots (sdk-serial-js)
RPC_TIMEOUT_S = 35.0  # ESPHome gives up joining after 30 s and says so; a little longer, to hear it say so
PROVISIONED_GRACE_S = 2.0  # after PROVISIONED, how long the RPC result with the URL may take


def encode_packet(ptype: int, data: bytes) -> bytes:
    body = HEADER + bytes((VERSION, ptype, len(data))) + data
    return body + bytes((sum(body) & 0xFF,)) + b"\n"


def encode_rpc(command: int, data: bytes = b"") -> bytes:
    return encode_packet(RPC, bytes((command, len(data))) + data)


def wifi_settings_data(ssid: str, psk: str) -> bytes:
    ssid_b, psk_b = ssid.encode(), psk.encode()
    if not 1 <= len(ssid_b) <= 32 or len(psk_b) > 255:
        raise ValueError("Improv carries an SSID of 1-32 bytes and a passphrase of at most 255")
    return bytes((len(ssid_b),)) + ssid_b + bytes((len(psk_b),)) + psk_b


def parse_strings(data: bytes) -> tuple[int, list[str]]:
    """(command, strings) of an RPC result: command | total length | (length | string)*. sdk-cpp appends a
    BLE-style checksum byte after the strings; the total length says where they end."""
    if len(data) < 2 or len(data) < 2 + data[1]:
        raise ValueError("short RPC result")
    command, end, pos, strings = data[0], 2 + data[1], 2, []
    while pos < end:
        n = data[pos]
        if pos + 1 + n > end:
            raise ValueError("a string runs past the result")
        strings.append(data[pos + 1:pos + 1 + n].decode("utf-8", "replace"))
        pos += 1 + n
    return command, strings


class ImprovError(Exception):
    """The firmware did not take the Wi-Fi credentials. `kind`: absent (no Improv answered), unable_to_connect,
    refused (another Improv error), timeout (it stopped answering), protocol."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImprovResult:
    urls: tuple[str, ...]  # what the firmware reports (its web page), made safe to show and store
    device: tuple[str, ...]  # GET_DEVICE_INFO: firmware, version, chip, device name (may be empty)


class _Reader:
    """Collects bytes, skips log text and noise, cuts out packets whose version and checksum hold."""

    def __init__(self):
        self.buf = bytearray()
        self.skipped = 0
        self.last_text = b""

    def _skip(self, n: int) -> None:
        junk = bytes(self.buf[:n])
        del self.buf[:n]
        self.skipped += len(junk)
        self.last_text = (self.last_text + junk)[-400:]

    def next_packet(self) -> tuple[int, bytes] | None:
        while True:
            at = self.buf.find(HEADER)
            if at < 0:
                self._skip(max(0, len(self.buf) - len(HEADER) + 1))  # half a header may be at the end
                return None
            self._skip(at)
            if len(self.buf) < 9:
                return None
            length = self.buf[8]
            if self.buf[6] != VERSION:
                self._skip(1)  # "IMPROV" in a log line: not a packet
                continue
            if len(self.buf) < 10 + length:
                return None
            packet = bytes(self.buf[:10 + length])
            if sum(packet[:-1]) & 0xFF != packet[-1]:
                self._skip(1)  # damaged, or text that looked like a header
                continue
            del self.buf[:10 + length]
            return packet[7], packet[9:-1]

    def last_line(self) -> str:
        lines = [ln for ln in self.last_text.decode("ascii", "replace").splitlines()
                 if sum(c.isprintable() for c in ln) > len(ln) * 0.8 and ln.strip()]
        return one_line(lines[-1], limit=80) if lines else ""


class ImprovClient:
    """Talks Improv serial on an open pyserial port at the app's baud rate (the caller opens and closes it)."""

    def __init__(self, port, rpc_timeout: float = RPC_TIMEOUT_S, poll: float = POLL_S):
        self.port = port
        self.rpc_timeout = rpc_timeout
        self.poll = poll
        self._reader = _Reader()

    def wait_ready(self, wait: float) -> str:
        """Ask for the current state every `poll` seconds until the firmware answers; its state's name."""
        deadline = time.monotonic() + wait
        while True:
            self._write(encode_rpc(GET_CURRENT_STATE), "GET_CURRENT_STATE")
            until = min(deadline, time.monotonic() + self.poll)
            while (packet := self._next(until)) is not None:
                ptype, data = packet
                if ptype == CURRENT_STATE and data:
                    return STATES.get(data[0], f"state {data[0]:#04x}")
            if time.monotonic() >= deadline:
                seen = self._reader.last_line()
                printed = f"; it printed '{seen}'" if seen else "; it printed nothing" if not self._reader.skipped \
                    else "; it sent only bytes that are not text (wrong baud rate?)"
                raise ImprovError(f"The firmware did not answer Improv Wi-Fi serial within {wait:g} s{printed}. Is "
                                  f"it built with Improv serial, and did it boot?", "absent")

    def device_info(self) -> tuple[str, ...]:
        """GET_DEVICE_INFO's strings (firmware, version, chip, name), or () when the firmware does not have it."""
        self._write(encode_rpc(GET_DEVICE_INFO), "GET_DEVICE_INFO")
        deadline = time.monotonic() + min(self.rpc_timeout, 5.0)
        while (packet := self._next(deadline)) is not None:
            ptype, data = packet
            if ptype == ERROR_STATE and data and data[0] != 0:
                return ()
            if ptype == RPC_RESULT:
                command, strings = self._result(data)
                if command == GET_DEVICE_INFO:
                    return tuple(one_line(s, limit=64) for s in strings)
        return ()

    def send_wifi(self, ssid: str, psk: str) -> tuple[str, ...]:
        """Send the credentials and wait for the firmware to join: the URLs it reports (may be empty)."""
        self._write(encode_rpc(WIFI_SETTINGS, wifi_settings_data(ssid, psk)), f"WIFI_SETTINGS for '{ssid}'")
        deadline = time.monotonic() + self.rpc_timeout
        provisioning = provisioned = False
        while (packet := self._next(deadline)) is not None:
            ptype, data = packet
            if ptype == CURRENT_STATE and data:
                # a state answer to an earlier GET_CURRENT_STATE may still arrive: only PROVISIONING, which the
                # firmware says on receiving the credentials, makes a later PROVISIONED an answer to them
                provisioning |= data[0] == PROVISIONING
                if provisioning and data[0] == PROVISIONED:
                    provisioned = True
                    deadline = min(deadline, time.monotonic() + PROVISIONED_GRACE_S)
            elif ptype == ERROR_STATE and data and data[0] != 0:
                if data[0] == UNABLE_TO_CONNECT:
                    raise ImprovError(f"The board was unable to connect to '{ssid}': check the passphrase and that "
                                      f"the network is in range (Improv error 0x03)", "unable_to_connect")
                raise ImprovError(f"The firmware refused the Wi-Fi settings: {ERRORS.get(data[0], 'unknown error')} "
                                  f"(Improv error {data[0]:#04x})", "refused")
            elif ptype == RPC_RESULT:
                command, strings = self._result(data)
                if command == WIFI_SETTINGS:
                    return tuple(self._safe(s, psk) for s in strings)
        if provisioned:
            return ()  # it joined, and reported no URL
        raise ImprovError(f"The firmware did not say whether it joined '{ssid}' within {self.rpc_timeout:g} s",
                          "timeout")

    # --- the line ---------------------------------------------------------------------------------------------

    def _write(self, packet: bytes, what: str) -> None:
        log.debug("improv %s: %s (%d bytes)", self.port.port, what, len(packet))
        self.port.write(packet)

    def _next(self, deadline: float) -> tuple[int, bytes] | None:
        """The next packet, or None once `deadline` (monotonic) has passed."""
        while (packet := self._reader.next_packet()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.port.timeout = left
            waiting = self.port.in_waiting
            self._reader.buf += self.port.read(waiting if waiting else 1)
        return packet

    @staticmethod
    def _result(data: bytes) -> tuple[int, list[str]]:
        try:
            return parse_strings(data)
        except ValueError as exc:
            raise ImprovError(f"The firmware's Improv RPC result is malformed ({exc})", "protocol") from None

    @staticmethod
    def _safe(text: str, psk: str) -> str:
        """What the device says, one safe line; should it say the passphrase back, that is not repeated."""
        return one_line(text.replace(psk, "…") if psk else text, limit=200)
