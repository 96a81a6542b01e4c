"""Text from outside the station (a board, a file, a server) made safe to show and to store.

A board can say anything: newlines that forge a "PASS" line in the terminal, ANSI escapes that repaint it,
bidirectional overrides that reverse what a reader sees, or megabytes. Everything a board or a file says goes
through here before it reaches a person, a log or the journal.
"""
from __future__ import annotations

import re
import unicodedata

# CSI (ESC [ … final) and OSC (ESC ] … BEL or ESC \) sequences: dropped whole, so no fragment of them shows
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # controls, format (bidi), surrogates, unassigned
REASON_LIMIT = 500  # characters: a failure reason fits a tile and a journal column


def _escaped(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def one_line(text: str | bytes, limit: int = REASON_LIMIT) -> str:
    """One printable line of at most `limit` characters: escape sequences dropped, line breaks shown as " / ",
    every other control or invisible format character escaped (\\x1b, \\u202e), the rest cut with "…"."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = _ESCAPE_SEQUENCE.sub("", text[:limit * 4])
    text = re.sub(r"\s*[\r\n\u2028\u2029]+\s*", " / ", text.strip()).replace("\t", " ")
    safe = "".join(_escaped(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)
    return safe if len(safe) <= limit else safe[:limit - 1] + "…"


def shown(text: str | bytes, limit: int = 80) -> str:
    """A name a device or file supplies (a descriptor string, a file name), quoted: printable ASCII only, the rest
    escaped, at most `limit` characters before the cut."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    cut = len(text) > limit
    safe = "".join(c if " " <= c <= "~" else _escaped(c) for c in text[:limit])
    return f'"{safe}{"…" if cut else ""}"'
