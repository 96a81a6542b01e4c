"""Ports named on the command line (`--port URL`): keyed by USB location when the URL is a local USB tty."""
from __future__ import annotations

from station.discovery.serial_ports import location_of
from station.model import PortInfo


class StaticPortSource:
    def __init__(self, urls: list[str], family: str = "esp"):
        self.urls, self.family = urls, family

    def scan(self) -> list[PortInfo]:
        return [PortInfo(key=location_of(url) or url, url=url, family=self.family, description=url)
                for url in self.urls]
