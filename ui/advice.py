"""What a technician does next about a failed board, in a few words, from the engine's reason.

The engine's reasons are precise ("Verify failed: flash at 0x10000 (4096 bytes) does not hold …"); the tile
leads with what to do and keeps the reason beneath it, and the log and history keep the whole detail. The
first pattern that matches wins; a reason nothing matches gets the generic advice.
"""
from __future__ import annotations

import re

RESEAT = "Reseat the cable and press Retry failed"
SET_ASIDE_FLASH = "Set the board aside: its flash fails to write"
_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p, re.IGNORECASE), words) for p, words in (
    (r"^Stopped by the operator", "Stopped: press Retry failed to finish it"),
    (r"vanished|lost the connection|not detected|can't open", RESEAT),
    (r"took longer than", RESEAT),
    (r"^Wrong board|^Wrong chip|is not a DFU board", "Take it out: this profile is not for this board"),
    (r"already (holds|provisioned)|already has", "Set it aside for the supervisor: it already has an identity"),
    (r"^Verify failed|^Flash failed|write error|flash may be faulty|can't be written|does not fit",
     SET_ASIDE_FLASH),
    (r"nobody acted on", "Do what the tile asked, then press Retry failed"),
    (r"agent|identity|CSR", "Set it aside for the supervisor: its firmware's identity agent misbehaves"),
    (r"unable to connect to", "Check the Wi-Fi network (in range? passphrase?), then press Retry failed"),
    (r"did not answer Improv", "Set it aside: its firmware does not take Wi-Fi by Improv (wrong firmware?)"),
    (r"^Internal error", "Copy diagnostics for the supervisor, then Retry failed"),
))
GENERIC = "Press Retry failed once; if it fails again, set the board aside"


def next_step(reason: str) -> str:
    for pattern, words in _RULES:
        if pattern.search(reason):
            return words
    return GENERIC
