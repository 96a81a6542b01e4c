"""The listening-mode console on the USB serial, as the firmware that was flashed runs it (PROTOCOLS §5.6, §11.2).

A command is one character, no newline. Line input (`read_line`) echoes every character, honours BS and DEL,
ends on CR or LF or when the buffer is full, then prints CRLF and discards all input already received: an
answer sent before its prompt has been printed is lost, so a host must wait for each prompt. In the emulator
"already received" is the rest of the chunk that completed the line (the next prompt is printed at once).

Which commands and prompts exist depends on the firmware version:
- before 0.4.0 (the 2014 Core firmware, `wifi_credentials_reader.cpp`): only `i` ("Your core id is …") and `w`
  (SSID, always the security prompt, password; "Spark <3 you!").
- 0.4.0 and later (`system_setup.cpp`): `i`, `v`, `s`, `x`, `c`, `m` (not on the Core), and `w` with a scan: a
  Photon skips the security and cipher prompts when the SSID is one it can see; device ids are upper case before
  0.7.0. The Core's CC3000 gives no scan results, so a Core always asks. The lines between "Awesome" and the end
  marker are the firmware's greeting; hosts wait for the "<3 you!" line.
WPA Enterprise (security 4/5) is asked for on Photon builds but its EAP dialog is not emulated: the answer is
taken as "couldn't save".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Generator

from station.families.particle.sim.firmware import Version

BS, DEL = 8, 127
UNSEC, WEP, WPA, WPA2, WPA_ENTERPRISE, WPA2_ENTERPRISE = range(6)
AES, TKIP, AES_TKIP = 1, 2, 3

SECURITY_PROMPT = "Security 0=unsecured, 1=WEP, 2=WPA, 3=WPA2: "
SECURITY_PROMPT_ENTERPRISE = "Security 0=unsecured, 1=WEP, 2=WPA, 3=WPA2, 4=WPA Enterprise, 5=WPA2 Enterprise: "
CIPHER_PROMPT = "Security Cipher 1=AES, 2=TKIP, 3=AES+TKIP: "
UNIFIED = (0, 4, 0)  # first device-os with system_setup.cpp on the Core and the Photon
UPPER_CASE_IDS_BEFORE = (0, 7, 0)


@dataclass(frozen=True)
class Credentials:
    ssid: str
    security: int
    cipher: int
    password: str


@dataclass(frozen=True)
class ConsoleFacts:
    """What the running firmware knows about itself."""

    platform: str  # "core" or "photon"
    platform_id: int
    version: Version
    device_id: str  # 24 lower-case hex
    mac: str
    modules: list[dict]
    visible: dict[str, tuple[int, int]]  # SSID -> (security, cipher) a scan finds; {} when it cannot scan


class ListeningConsole:
    """Bytes in, bytes out. `save(credentials) -> bool` stores Wi-Fi credentials; `leave()` ends listening mode."""

    def __init__(self, facts: ConsoleFacts, save: Callable[[Credentials], bool], leave: Callable[[], None]):
        self.facts = facts
        self._save = save
        self._leave = leave
        self._dialog: Generator[None, int, None] | None = None
        self._out = bytearray()
        self._line_done = False  # set by read_line: what follows in the same chunk is discarded

    @property
    def legacy(self) -> bool:
        return self.facts.version < UNIFIED

    def feed(self, data: bytes) -> bytes:
        """Process what the host sent; returns what the board prints in answer."""
        for i, byte in enumerate(data):
            if self._dialog is None:
                self._command(byte)
                continue
            self._line_done = False
            try:
                self._dialog.send(byte)
            except StopIteration:
                self._dialog = None
            if self._line_done:
                break  # the rest was received ahead of the next prompt: discarded
        out, self._out = bytes(self._out), bytearray()
        return out

    # --- commands -----------------------------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        self._out += text.encode()

    def _command(self, byte: int) -> None:
        c = chr(byte)
        f = self.facts
        if c == "i":
            if self.legacy:
                self._print(f"Your core id is {f.device_id}\r\n")
            else:
                shown = f.device_id.upper() if f.version < UPPER_CASE_IDS_BEFORE else f.device_id
                self._print(f"Your device id is {shown}\r\n")
        elif c == "w":
            self._dialog = self._wifi_legacy() if self.legacy else self._wifi()
            next(self._dialog)  # prints the first prompt
        elif self.legacy:
            return  # the 2014 firmware knows only i and w
        elif c == "v":
            self._print(f"system firmware version: {'.'.join(map(str, f.version))}\n\r\n")
        elif c == "s":
            self._print(json.dumps({"p": f.platform_id, "m": f.modules}, separators=(",", ":")) + "\r\n")
        elif c == "m" and f.platform != "core":
            self._print(f"Your device MAC address is\r\n{f.mac}\r\n")
        elif c == "c":
            self._print("Device claimed: no\r\n")
        elif c == "x":
            self._leave()

    # --- line input ---------------------------------------------------------------------------------------------

    def _read_line(self, prompt: str, max_len: int) -> Generator[None, int, str]:
        self._print(prompt)
        line = bytearray()
        while True:
            byte = yield
            if byte in (0x0D, 0x0A):
                break
            if byte in (BS, DEL):
                if line:
                    line.pop()
                    self._out.append(byte)
                continue
            line.append(byte)
            self._out.append(byte)
            if len(line) >= max_len:
                break
        self._print("\r\n")
        self._line_done = True
        return line.decode("utf-8", errors="replace")

    def _read_choice(self, prompt: str, allowed: str) -> Generator[None, int, int]:
        while True:
            answer = yield from self._read_line(prompt, 1)
            if answer in allowed:
                return int(answer)

    # --- 'w' ------------------------------------------------------------------------------------------------------

    def _wifi(self) -> Generator[None, int, None]:
        ssid = ""
        while not ssid:
            ssid = yield from self._read_line("SSID: ", 32)
        found = self.facts.visible.get(ssid)
        if found is not None:
            security, cipher = found
        else:
            enterprise = self.facts.platform == "photon"
            security = yield from self._read_choice(SECURITY_PROMPT_ENTERPRISE if enterprise else SECURITY_PROMPT,
                                                    "012345" if enterprise else "0123")
            cipher = 0
            if security in (WPA, WPA2):
                cipher = yield from self._read_choice(CIPHER_PROMPT, "123")
        password = ""
        if security in (WEP, WPA, WPA2):
            password = yield from self._read_line("Password: ", 64)
        self._print("Thanks! Wait while I save those credentials...\r\n\r\n")
        if security in (WPA_ENTERPRISE, WPA2_ENTERPRISE) or not self._save(Credentials(ssid, security, cipher,
                                                                                         password)):
            self._print("Derp. Sorry, we couldn't save the credentials.\r\n\r\n")
            return
        self._print("Awesome. Now we'll connect!\r\n\r\n"
                    "If you see a pulsing cyan light, your device\r\n"
                    "has connected to the Cloud and is ready to go!\r\n\r\n"
                    "If your LED flashes red or you encounter any other problems,\r\n"
                    "visit https://www.particle.io/support to debug.\r\n\r\n"
                    "    Particle <3 you!\r\n\r\n")
        self._leave()

    def _wifi_legacy(self) -> Generator[None, int, None]:
        ssid = ""
        while not ssid:
            ssid = yield from self._read_line("SSID: ", 32)
        security = yield from self._read_choice(SECURITY_PROMPT, "0123")  # (the real one adds a warning for WEP)
        password = ""
        if security != UNSEC:
            password = yield from self._read_line("Password: ", 64)
        self._print("Thanks! Wait about 7 seconds while I save those credentials...\r\n\r\n")
        self._save(Credentials(ssid, security, 0, password))
        self._print("Awesome. Now we'll connect!\r\n\r\n"
                    "If you see a pulsing cyan light, your Spark Core\r\n"
                    "has connected to the Cloud and is ready to go!\r\n\r\n"
                    "If your LED flashes red or you encounter any other problems,\r\n"
                    "visit https://www.spark.io/support to debug.\r\n\r\n"
                    "    Spark <3 you!\r\n\r\n")
        self._leave()
