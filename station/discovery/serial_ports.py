"""Real serial ports from pyserial's list_ports, filtered by the families' VID:PID tables and keyed by USB
location. With a NodeWatch, ports are listed again only when device nodes came or went."""
from __future__ import annotations

from serial.tools import list_ports

from station.discovery.node_watch import NodeWatch
from station.model import PortInfo
from station.text import one_line


class SerialPortSource:
    def __init__(self, ids: dict[tuple[int, int], tuple[str, str]], watch: NodeWatch | None = None):
        self.ids = ids  # (VID, PID) -> (family, what it is)
        self.watch = watch
        self._ports: list[PortInfo] = []

    def scan(self) -> list[PortInfo]:
        if self.watch is None or self.watch.changed():
            self._ports = self._list()
        return list(self._ports)

    def _list(self) -> list[PortInfo]:
        ports = []
        for info in list_ports.comports():
            known = self.ids.get((info.vid, info.pid))
            location = usb_location(info.location)
            if known is None or not location:
                continue  # not a board we know, or not on USB (no physical location to key it by)
            family, what = known
            # the product and serial strings are the bridge's USB descriptors: programmable, so untrusted
            serial = one_line(info.serial_number, limit=64) if info.serial_number else None
            ports.append(PortInfo(key=location, url=info.device, family=family, vid=info.vid, pid=info.pid,
                                  serial=serial, description=one_line(info.product or what, limit=120)))
        return ports


def usb_location(location: str | None) -> str | None:
    """pyserial's "1-2.3:1.0" without the interface part, so a board keeps its key (its tile) when it
    re-enumerates as a USB device of another kind (a DFU bootloader) on the same hub port."""
    return location.split(":", 1)[0] if location else None


def location_of(device: str) -> str | None:
    """The USB location of a tty path such as /dev/ttyUSB0, if it is a USB port."""
    for info in list_ports.comports():
        if info.device == device:
            return usb_location(info.location)
    return None
