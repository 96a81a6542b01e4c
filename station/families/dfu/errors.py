"""The one exception the DFU host, its files and its memory layouts raise (device text in them goes through
station.text.shown).

Every message is a plain sentence a technician can act on; callers show it as-is.
"""
from __future__ import annotations


class DfuError(Exception):
    """A DFU operation, file or memory layout that cannot go ahead, with the reason in plain words."""


class DfuLayoutError(DfuError):
    """A memory-layout string that cannot be parsed, or a range the layout does not allow."""


class DfuFileError(DfuError):
    """A .dfu / .bin file that is damaged or not meant for this board."""
