"""The emulated hub's udev: one JSON file per plugged board in a registry directory, written by every
family's emulator in one schema (location, url, vid, pid, serial, description) and read by SimPortSource."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def write_registry_file(registry_dir: Path, entry: dict) -> Path:
    """Atomically (temp file + os.replace) publish one board; a scanner never sees half a file."""
    path = registry_dir / f"{entry['location']}.json"
    tmp = registry_dir / f".{entry['location']}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(entry, indent=1) + "\n")
    os.replace(tmp, path)
    return path
