"""Ports named on the command line (`--port URL`): keyed by USB location when the URL is a local USB tty; the
URL's scheme says which board family opens it."""
from __future__ import annotations

from station.discovery.serial_ports import location_of
from station.families import family_of_url
from station.model import PortInfo


class StaticPortSource:
    def __init__(self, urls: list[str]):
        self.ports = [PortInfo(key=location_of(url) or url, url=url, family=family_of_url(url).name,
                               description=url) for url in urls]

    def scan(self) -> list[PortInfo]:
        return list(self.ports)
