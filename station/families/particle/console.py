"""The listening-mode console of a Spark Core or Photon over its USB serial (PROTOCOLS §5.6, §11.2).

A command is one character, no newline. Line answers end with CR or LF; the board echoes every character and
throws away whatever arrives before it prints the next prompt, so each answer is sent only once its prompt has
been seen. The Wi-Fi passphrase goes to the board and nowhere else: the board echoes it, so what it prints
while the passphrase is being typed is never returned, logged or put in an error.

The magic baud rates (§11.1): opening the port at 14400 resets firmware ≥ 0.4.0 into its DFU bootloader, at
28800 firmware 0.5.0 … 5.x enters listening mode. As device-os's own serial_switcher does, the port is opened at
the magic rate, closed, and opened and closed at 9600, so the next open sets a fresh rate.
"""
from __future__ import annotations

import re
import threading
import time

import serial
from serial import SerialException

from station.text import one_line

DFU_BAUD = 14400
LISTEN_BAUD = 28800
CONSOLE_BAUD = 9600

ID_ANSWER = re.compile(rb"Your (?:core|device) id is\s+([0-9A-Za-z]+)")
MAC_ANSWER = re.compile(rb"Your device MAC address is\r?\n([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})\r?\n")
DEVICE_ID = re.compile(r"^[0-9a-f]{24}$")

SSID_PROMPT = b"SSID: "
SECURITY_PROMPTS = (b"Security 0=unsecured, 1=WEP, 2=WPA, 3=WPA2: ",
                    b"Security 0=unsecured, 1=WEP, 2=WPA, 3=WPA2, 4=WPA Enterprise, 5=WPA2 Enterprise: ")
CIPHER_PROMPT = b"Security Cipher 1=AES, 2=TKIP, 3=AES+TKIP: "
PASSWORD_PROMPT = b"Password: "
SAVED = (b"Spark <3 you!", b"Particle <3 you!")
NOT_SAVED = b"Derp. Sorry, we couldn't save the credentials."
WPA2, AES = b"3", b"1"


class ConsoleError(Exception):
    """The board's console did not answer as expected; the message is one plain line."""


def normalise_device_id(text: str) -> str | None:
    """A device ID as the cloud names it: 24 lower-case hex digits (old Photon firmware says upper case)."""
    value = text.strip().lower()
    return value if DEVICE_ID.match(value) else None


def pulse_baud(url: str, baud: int) -> None:
    """Open the port at `baud` and close it, then at 9600 (device-os build/serial_switcher.py)."""
    try:
        port = serial.serial_for_url(url, baudrate=baud, timeout=0.5, exclusive=True)
    except (SerialException, OSError) as exc:
        raise ConsoleError(f"can't open the board's USB serial at {baud} baud: {exc}") from None
    for step in (port.close, lambda: serial.serial_for_url(url, baudrate=CONSOLE_BAUD, exclusive=True).close()):
        try:
            step()
        except (SerialException, OSError):
            return  # the board already left for its other mode: its serial is gone


class Console:
    """The board's USB serial at 9600, for listening-mode commands. `abort()` from another thread stops a wait."""

    def __init__(self, url: str):
        try:
            self._port = serial.serial_for_url(url, baudrate=CONSOLE_BAUD, timeout=0.05, exclusive=True)
        except (SerialException, OSError) as exc:
            raise ConsoleError(f"can't open the board's USB serial: {exc}") from None
        self._stop = threading.Event()

    def close(self) -> None:
        self._port.close()

    def abort(self) -> None:
        self._stop.set()

    def device_id(self, timeout: float) -> str | None:
        """`i`: the device ID the board reports in listening mode; None if it does not answer (not listening)."""
        self._port.reset_input_buffer()
        self._write(b"i")
        seen = self._read_until((b"\n",), timeout, after=b" id is ")
        if seen is None:
            return None
        match = ID_ANSWER.search(seen)
        if match is None:
            raise ConsoleError(f"the board answered 'i' with {one_line(seen.decode('latin-1'), 80)!r}")
        device_id = normalise_device_id(match.group(1).decode("ascii"))
        if device_id is None:
            raise ConsoleError(f"the board's device ID {one_line(match.group(1).decode('ascii'), 40)!r} is not 24 "
                               f"hex digits")
        return device_id

    def mac(self, timeout: float) -> str | None:
        """`m`: the Wi-Fi MAC address a Photon reports in listening mode (a Core has no `m`): aa:bb:cc:dd:ee:ff."""
        self._port.reset_input_buffer()
        self._write(b"m")
        seen = self._read_until((b"\n",), timeout, after=b"MAC address is\r\n")
        match = MAC_ANSWER.search(seen or b"")
        return match.group(1).decode("ascii").lower() if match else None

    def set_wifi(self, ssid: str, psk: str, timeout: float) -> str:
        """`w`: answer each prompt as it comes (a Photon that sees the network skips security and cipher).
        Returns what the board said it did; ConsoleError if it refused or stopped answering."""
        self._port.reset_input_buffer()
        self._write(b"w")
        self._expect((SSID_PROMPT,), timeout, "the SSID prompt")
        self._write(ssid.encode("utf-8") + b"\n")  # each answer ends as particle-cli ends it
        prompts = SECURITY_PROMPTS + (CIPHER_PROMPT, PASSWORD_PROMPT) + SAVED + (NOT_SAVED,)
        while True:
            seen = self._expect(prompts, timeout, "the Wi-Fi prompts after the SSID")
            if seen.endswith(PASSWORD_PROMPT):
                self._write(psk.encode("utf-8") + b"\n")
                # the echo holds the passphrase: wait for the verdict without keeping what came before it
                verdict = self._expect(SAVED + (NOT_SAVED,), timeout, "the board's answer to the credentials",
                                       keep=False)
                return self._verdict(verdict)
            if seen.endswith(CIPHER_PROMPT):
                self._write(AES + b"\n")
            elif seen.endswith(SECURITY_PROMPTS):
                self._write((WPA2 if psk else b"0") + b"\n")
            else:
                return self._verdict(seen)

    @staticmethod
    def _verdict(seen: bytes) -> str:
        if NOT_SAVED in seen:
            raise ConsoleError("the board could not save the Wi-Fi credentials (\"Derp. Sorry, we couldn't save "
                               "the credentials.\")")
        return "the board saved the Wi-Fi credentials and connects"

    # --- bytes ------------------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (SerialException, OSError) as exc:
            raise ConsoleError(f"the board's USB serial went away ({exc})") from None

    def _expect(self, endings: tuple[bytes, ...], timeout: float, what: str, keep: bool = True) -> bytes:
        seen = self._read_until(endings, timeout)
        if seen is None:
            raise ConsoleError(f"the board did not show {what} within {timeout:g} s")
        return seen if keep else seen[-max(len(e) for e in endings) - 2:]

    def _read_until(self, endings: tuple[bytes, ...], timeout: float, after: bytes = b"") -> bytes | None:
        """Bytes up to and including the first of `endings` (looked for after `after`, if given); None when the
        board says nothing of the kind within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        buffer = bytearray()
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise ConsoleError("stopped by the station")
            try:
                chunk = self._port.read(self._port.in_waiting or 1)
            except (SerialException, OSError) as exc:
                raise ConsoleError(f"the board's USB serial went away ({exc})") from None
            buffer += chunk
            start = buffer.find(after) if after else 0
            if start < 0:
                continue
            for ending in endings:
                at = buffer.find(ending, start + len(after))
                if at >= 0:
                    return bytes(buffer[:at + len(ending)])
        return None
