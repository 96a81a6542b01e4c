"""Real serial ports from pyserial's list_ports, filtered by the VID:PID table and keyed by USB location."""
from __future__ import annotations

from serial.tools import list_ports

from station.discovery.usb_ids import bridge_name, family_of
from station.model import PortInfo


class SerialPortSource:
    def scan(self) -> list[PortInfo]:
        ports = []
        for info in list_ports.comports():
            family = family_of(info.vid, info.pid)
            if family is None or not info.location:
                continue  # not a board we know, or not on USB (no physical location to key it by)
            ports.append(PortInfo(key=info.location, url=info.device, family=family, vid=info.vid, pid=info.pid,
                                  serial=info.serial_number,
                                  description=info.product or bridge_name(info.vid, info.pid)))
        return ports


def location_of(device: str) -> str | None:
    """The USB location of a tty path such as /dev/ttyUSB0, if it is a USB port."""
    for info in list_ports.comports():
        if info.device == device:
            return info.location
    return None
