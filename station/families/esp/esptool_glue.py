"""What it takes to drive many ports with esptool in one process.

1. esptool's logger is a process-wide singleton, so progress from parallel ports can't be told apart
   (espressif/esptool#1102). esptool logs from the calling thread, and each port runs in its own worker
   thread, so a logger that dispatches on a thread-local sink attributes every line and progress tick to
   the right port.
2. esptool formats hex dumps of every packet eagerly, even with tracing off (~2 s of a 2.9 s CLI run), and
   the formatting holds the GIL that the other ports need. The station never traces, so the dump is skipped.
3. pyserial's socket:// `in_waiting` answers 0 or 1, so esptool reads one byte per call (read-flash ~15×
   slower). Asking the kernel (FIONREAD) gives the real count. Only opening the port differs for TCP ports;
   the protocol path is the same for every board.
"""
from __future__ import annotations

import fcntl
import struct
import termios
import threading
from contextlib import contextmanager
from typing import Iterator, Protocol

import esptool.loader
from esp_pylib.logger import EspLog, EspLogBase
from serial.urlhandler import protocol_socket


class PortSink(Protocol):
    def log(self, level: str, message: str) -> None: ...

    def progress(self, done: int, total: int) -> None: ...


class _PortRoutedLog(EspLogBase):
    def __init__(self, fallback: EspLogBase | None):
        self._local = threading.local()
        self._fallback = fallback

    def _sink(self) -> PortSink | None:
        return getattr(self._local, "sink", None)

    def _emit(self, level: str, args: tuple, fallback_name: str, **kwargs) -> None:
        sink = self._sink()
        if sink is not None:
            text = " ".join(str(a) for a in args).strip()
            if text:
                sink.log(level, text)
        elif self._fallback is not None:
            getattr(self._fallback, fallback_name)(*args, **kwargs)

    def print(self, *args, **kwargs) -> None:
        self._emit("debug", args, "print", **kwargs)

    def note(self, *args) -> None:
        self._emit("debug", args, "note")  # esptool's notes are for developers; warnings stay visible

    def hint(self, *args) -> None:
        self._emit("info", args, "hint")

    def debug(self, *args) -> None:
        self._emit("debug", args, "debug")

    def warn(self, *args, suggestion: str | None = None) -> None:
        self._emit("warning", args, "warn", suggestion=suggestion)

    def err(self, *args, suggestion: str | None = None) -> None:
        self._emit("error", args, "err", suggestion=suggestion)

    def set_verbosity(self, mode) -> None:
        if self._fallback is not None:
            self._fallback.set_verbosity(mode)

    def stage(self, finish: bool = False) -> None:
        if self._sink() is None and self._fallback is not None:
            self._fallback.stage(finish)

    def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                     bar_length: int = 30) -> None:
        sink = self._sink()
        if sink is not None:
            sink.progress(cur_iter, total_iters)
        elif self._fallback is not None:
            self._fallback.progress_bar(cur_iter, total_iters, prefix, suffix, bar_length)


_router: _PortRoutedLog | None = None
_install_lock = threading.Lock()


def install() -> None:
    """Install the routing logger and the two speed fixes, once per process."""
    global _router
    with _install_lock:
        if _router is not None:
            return
        _router = _PortRoutedLog(EspLog.instance)
        EspLog.set_logger(_router)
        esptool.loader.HexFormatter.__str__ = lambda self: f"<{len(self._s)} bytes>"
        protocol_socket.Serial.in_waiting = property(_socket_in_waiting)


@contextmanager
def routed_to(sink: PortSink) -> Iterator[None]:
    """Everything esptool logs from this thread inside the block goes to `sink`."""
    install()
    assert _router is not None
    previous = _router._sink()
    _router._local.sink = sink
    try:
        yield
    finally:
        _router._local.sink = previous


def _socket_in_waiting(self) -> int:
    if not self.is_open:
        from serial import PortNotOpenError

        raise PortNotOpenError()
    buf = fcntl.ioctl(self._socket.fileno(), termios.FIONREAD, struct.pack("I", 0))
    return struct.unpack("I", buf)[0]
