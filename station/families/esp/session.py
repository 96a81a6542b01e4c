"""One ESP board's flashing session, driven through esptool's library API.

The session connects once (sync, chip detect, stub, baud change, flash attach) and every later step uses the
same loader, so firmware and payloads go to the board in one session. All calls block: the engine runs them
in the port's worker thread. `abort()` may be called from another thread to unblock a stuck transfer.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import threading
from typing import Callable

import esptool
import esptool.cmds
from esptool.util import FatalError, NotImplementedInROMError, flash_size_bytes
import serial
from serial import SerialException

from station.families.esp import esptool_glue
from station.model import BoardInfo, StepFailed

ProgressFn = Callable[[int, int], None]  # (done bytes, total bytes) of the current write
BOOT_MODE_PROMPT = "Hold BOOT, press and release RESET, then release BOOT"

# Emulated boards are opened as espsim://host:port (serial over TCP with DTR/RTS, so esptool's resets work):
# pyserial looks the scheme up as station.families.esp.sim.protocol_espsim. Opening the port is the only difference.
if "station.families.esp.sim" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("station.families.esp.sim")


class EspSession:
    def __init__(self, url: str, log: Callable[[str, str], None], progress: ProgressFn):
        self.url = url
        self._log = log
        self._progress = progress
        self._esp = None
        self._serial = None  # opened here, not by esptool, so a failed detect never leaves the port locked
        self._lock = threading.Lock()
        self._aborted = False
        self._write_plan: list[int] = []  # sizes of the images in the current write, for overall progress
        self._write_index = -1
        self._last_cur = 0
        self._last_total = -1
        # "no-reset" once a person has put the board in download mode: a reset by the bridge would undo it
        self._connect_mode = "default-reset"
        self._checked: list[tuple[int, int]] = []  # (offset, size) esptool's write checked, not overwritten since

    # PortSink for esptool_glue: what esptool says in this thread comes here
    def log(self, level: str, message: str) -> None:
        self._log(level, message)

    def progress(self, cur: int, total: int) -> None:
        # esptool reports (bytes sent, compressed size) of one image at a time, each image in a fresh progress
        # context: a new total (or a count going back) means the next image. Map it to overall plain bytes.
        if self._write_index < 0 or total != self._last_total or cur < self._last_cur:
            self._write_index += 1
        self._last_cur, self._last_total = cur, total
        i = min(self._write_index, len(self._write_plan) - 1)
        done = sum(self._write_plan[:i]) + (self._write_plan[i] * cur // total if total else 0)
        self._progress(done, sum(self._write_plan))

    @property
    def connected(self) -> bool:
        return self._esp is not None and self._serial is not None

    def connect(self, baud: int, chip: str | None = None, connect_attempts: int = 3) -> BoardInfo:
        """Reset into the ROM loader, start the stub at `baud`, attach the flash. With `chip` (the one chip the
        profile allows) a board that is another chip is refused before anything is uploaded."""
        self.close()
        self._aborted = False
        self._checked = []  # another connection may be another board
        with esptool_glue.routed_to(self):
            try:
                serial_port = serial.serial_for_url(self.url, exclusive=True, do_not_open=True)
                with self._lock:
                    self._serial = serial_port
                serial_port.open()
                mode, self._connect_mode = self._connect_mode, "default-reset"
                esp = esptool_glue.connect_rom(serial_port, chip, connect_attempts, mode)
                # ROMs that can (ESP32 and later) switch the line rate before the stub upload, so the ~20 KB
                # stub goes at `baud`, not 115200 (0.65 s); the stub keeps the UART rate it starts with. The
                # ESP8266 ROM has no CHANGE_BAUDRATE: its stub is uploaded at 115200 and changes it below.
                if baud != esp.get_baud():
                    with contextlib.suppress(NotImplementedInROMError):
                        esp.change_baud(baud)
                esp = esptool.cmds.run_stub(esp)
                with self._lock:
                    self._esp = esp
                # the station has its own retry policy; esptool's reconnect loop would sleep 7 s on an unplug
                esp.WRITE_FLASH_ATTEMPTS = 1
                if baud != esp.get_baud():
                    esp.change_baud(baud)
                esptool.cmds.attach_flash(esp)
                size_name = esptool.cmds.detect_flash_size(esp)
                mac = ":".join(f"{b:02x}" for b in esp.read_mac("BASE_MAC"))
                return BoardInfo(family="esp", chip=esp.CHIP_NAME, mac=mac,
                                 flash_size=flash_size_bytes(size_name) if size_name else 0,
                                 description=esp.get_chip_description(), features=list(esp.get_chip_features()))
            except esptool_glue.WrongChip as exc:
                self.close()
                raise StepFailed(str(exc)) from exc
            except (FatalError, SerialException, OSError) as exc:
                self.close()
                if "wrong boot mode" in str(exc).lower():
                    raise StepFailed(explain(exc, "connect"), operator_prompt=BOOT_MODE_PROMPT,
                                     probe=self.in_download_mode) from exc
                raise StepFailed(explain(exc, "connect"), retryable=True) from exc

    def in_download_mode(self) -> bool:
        """Whether the ROM loader answers now, asked without resetting the board: after BOOT and RESET on a
        board whose bridge does not re-enumerate, this is how the station sees the person has done it. The next
        `connect` then does not reset the board either."""
        try:
            serial_port = serial.serial_for_url(self.url, exclusive=True, do_not_open=True)
            with self._lock:
                self._serial = serial_port
            serial_port.open()
            with esptool_glue.routed_to(_Quiet()):
                esptool_glue.connect_rom(serial_port, None, 1, "no-reset")
        except (FatalError, SerialException, OSError):
            return False
        finally:
            self.close()
        self._connect_mode = "no-reset"
        return True

    def write(self, images: list[tuple[int, bytes]]) -> None:
        """Write images (compressed, through the stub) and let esptool check each one's MD5 (which it does
        unless the chip is in secure download mode)."""
        esp = self._require()
        self._write_plan = [len(data) for _, data in images]
        self._write_index, self._last_cur, self._last_total = -1, 0, -1
        self._progress(0, sum(self._write_plan))
        with esptool_glue.routed_to(self):
            try:
                esptool.cmds.write_flash(esp, images, flash_freq="keep", flash_mode="keep", flash_size="keep")
            except (FatalError, SerialException, OSError) as exc:
                self.close()
                raise StepFailed(explain(exc, "write")) from exc
        written = [(offset, len(data)) for offset, data in images]
        self._checked = [r for r in self._checked if not any(_overlap(r, w) for w in written)]
        if not esp.secure_download_mode:
            self._checked += written

    def verify(self, images: list[tuple[int, bytes]], everything: bool = False) -> int:
        """Ask the board for the MD5 of each region written and compare it with what was meant to be there:
        every region with `everything`, else those esptool's write has not checked already (it asks the MD5
        of each image once written; an MD5 of 4 MB takes the board seconds). How many regions were asked."""
        esp = self._require()
        asked = 0
        with esptool_glue.routed_to(self):
            for offset, data in images:
                if not everything and (offset, len(data)) in self._checked:
                    continue
                asked += 1
                try:
                    actual = esp.flash_md5sum(offset, len(data))
                except (FatalError, SerialException, OSError) as exc:
                    self.close()
                    raise StepFailed(explain(exc, "verify")) from exc
                if actual != hashlib.md5(data).hexdigest():
                    raise StepFailed(f"Verify failed: flash at {offset:#x} ({len(data)} bytes) does not hold "
                                     f"what was written (MD5 {actual[:8]}…). The flash may be faulty.")
        return asked

    def read(self, offset: int, size: int) -> bytes:
        esp = self._require()
        with esptool_glue.routed_to(self):
            try:
                return esptool.cmds.read_flash(esp, offset, size, None, no_progress=True)
            except (FatalError, SerialException, OSError) as exc:
                self.close()
                raise StepFailed(explain(exc, "read-back")) from exc

    def reset(self) -> None:
        """Reset into the app. Over TCP there is no RTS line; that is the transport's limit, not an error."""
        esp = self._require()
        with esptool_glue.routed_to(self):
            try:
                esptool.cmds.reset_chip(esp, "hard-reset")
            except (FatalError, SerialException, OSError) as exc:
                raise StepFailed(explain(exc, "reset")) from exc
        self.close()

    @contextlib.contextmanager
    def app_port(self, baud: int = 115200):
        """The board's serial port at the app's baud rate, after `reset()` booted the app. Opening it does not
        reset the board (DTR and RTS both asserted hold EN and IO0 where they are)."""
        port = serial.serial_for_url(self.url, baudrate=baud, timeout=0.1, exclusive=True, do_not_open=True)
        with self._lock:
            self._serial = port
        try:
            port.open()
            yield port
        except (SerialException, OSError) as exc:
            raise StepFailed(f"Lost the connection to the board's app ({exc})") from exc
        finally:
            self.close()

    def abort(self) -> None:
        """Unblock a transfer from another thread (timeout, Stop): closing the port makes esptool's read fail."""
        self._aborted = True
        self.close()

    def close(self) -> None:
        with self._lock:
            port, self._serial, self._esp = self._serial, None, None
        if port is not None:
            try:
                port.close()
            except Exception:  # noqa: BLE001 - closing a vanished port may fail in many ways; it is gone anyway
                pass

    def _require(self):
        esp = self._esp if self._serial is not None else None
        if esp is None:
            raise StepFailed("Lost the connection to the board" if self._aborted else "Board is not connected")
        return esp


class _Quiet:
    """Where esptool's words go while the station only asks whether the board answers."""

    def log(self, level: str, message: str) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def explain(exc: Exception, doing: str) -> str:
    """esptool's and pyserial's errors in words a technician can act on."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lower = str(exc).lower()
    if "digest mismatch" in lower:
        return f"Read-back failed: the data the board sent does not match its own digest; the serial line " \
               f"corrupts data (cable, noise or baud rate?) ({text})"
    if "md5 of file does not match" in lower:
        return "Verify failed: the board's flash does not hold what was written (MD5 mismatch)"
    if "wrong boot mode" in lower:
        return ("Board is not in download mode (boot:0x13): hold BOOT while pressing RESET, "
                f"or check the EN/IO0 auto-reset circuit ({text})")
    if "exclusively lock" in lower or (isinstance(exc, OSError) and exc.errno in (errno.EBUSY, errno.EAGAIN)):
        return (f"The port is in use by another program (another station, or a serial terminal): close it and "
                f"try again ({text})")
    if "failed to connect" in lower or "no serial data received" in lower:
        return f"No answer from the board: is it powered and in download mode? ({text})"
    if isinstance(exc, (SerialException, OSError)) or "socket disconnected" in lower or "could not open" in lower:
        return f"Lost the connection to the board during {doing} ({text})"
    if "failed to write" in lower or "flash write" in lower or "0x08" in lower:
        return f"Flash write error reported by the board: the flash may be faulty ({text})"
    return f"{doing.capitalize()} failed: {text}"

