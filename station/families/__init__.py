"""The board families the station knows, by name: the only place that lists them.

Like esptool's `targets`: a plain dict from name to class. Everything else asks this registry which family
a USB ID, a chip or a port URL belongs to.
"""
from __future__ import annotations

from station.families.base import BoardFamily
from station.families.dfu import DfuFamily
from station.families.esp import EspFamily
from station.families.particle import ParticleFamily

FAMILIES: dict[str, BoardFamily] = {
    "esp": EspFamily(),
    "dfu": DfuFamily(),
    "particle": ParticleFamily(),
}


def family_of_usb_id(vid: int | None, pid: int | None) -> BoardFamily | None:
    for family in FAMILIES.values():
        if (vid, pid) in family.usb_ids:
            return family
    return None


def family_of_chip(chip: str) -> BoardFamily | None:
    for family in FAMILIES.values():
        if chip in family.chips:
            return family
    return None


def family_of_url(url: str) -> BoardFamily:
    """The family that opens a `--port URL`: by its scheme; a plain device path is a serial port."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    for family in FAMILIES.values():
        if scheme in family.url_schemes:
            return family
    known = sorted({s for f in FAMILIES.values() for s in f.url_schemes if s})
    raise ValueError(f"{url}: no board family opens '{scheme}://' URLs; use a device path or one of "
                     f"{', '.join(s + '://' for s in known)}")


def all_chips() -> tuple[str, ...]:
    return tuple(chip for family in FAMILIES.values() for chip in family.chips)


def usb_ids(transport: str) -> dict[tuple[int, int], tuple[str, str]]:
    """(VID, PID) -> (family name, what it is) for every family found over `transport` ("serial"/"usb")."""
    return {usb_id: (family.name, what) for family in FAMILIES.values() for usb_id, what in family.usb_ids.items()
            if family.transport_of(usb_id) == transport}
