"""The one exception the DFU host, its files and its memory layouts raise, and how device text is shown.

Every message is a plain sentence a technician can act on; callers show it as-is.
"""
from __future__ import annotations


class DfuError(Exception):
    """A DFU operation, file or memory layout that cannot go ahead, with the reason in plain words."""


class DfuLayoutError(DfuError):
    """A memory-layout string that cannot be parsed, or a range the layout does not allow."""


class DfuFileError(DfuError):
    """A .dfu / .bin file that is damaged or not meant for this board."""


def shown(text: str | bytes, limit: int = 80) -> str:
    """Device- or file-supplied text made safe to print: printable ASCII only, bounded length, quoted.

    A descriptor string or file name may hold control characters (terminal escapes, newlines that forge log
    lines) or be absurdly long; it is shown escaped and cut, never trusted.
    """
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    cut = len(text) > limit
    text = text[:limit]
    safe = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                   for c in text)
    return f'"{safe}{"…" if cut else ""}"'
