"""Has anything been plugged or unplugged since the last look? One stat() per watched directory.

Creating or removing a device node (/dev/ttyUSB0, /dev/bus/usb/001/007) or an emulator's registry file
changes its directory's mtime, so a source re-lists its ports (pyserial's comports(), libusb's enumeration,
reading the registry: work that grows with the number of ports) only when a watched mtime has moved. Two
changes within one tick of the filesystem clock can leave the mtime as the first change set it, so while an
mtime is that recent every look counts as a change.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

RECENT_NS = 1_000_000_000  # an mtime younger than this may still hide a second change in the same tick


class NodeWatch:
    def __init__(self, *folders: str | Path, subfolders: bool = False):
        self.folders = [Path(f) for f in folders]
        self.subfolders = subfolders  # watch each folder's subdirectories too (/dev/bus/usb/001, …)
        self._seen: dict[Path, int] | None = None

    def changed(self) -> bool:
        """True on the first look, and whenever a watched directory changed (or may have) since the last one."""
        now = self._mtimes()
        fresh = self._seen is None or now != self._seen or any(time.time_ns() - m < RECENT_NS for m in now.values())
        self._seen = now
        return fresh

    def _mtimes(self) -> dict[Path, int]:
        mtimes = {}
        for folder in self.folders:
            try:
                mtimes[folder] = os.stat(folder).st_mtime_ns
                if self.subfolders:
                    with os.scandir(folder) as entries:
                        for entry in entries:
                            if entry.is_dir(follow_symlinks=False):
                                mtimes[Path(entry.path)] = entry.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                mtimes[folder] = -1  # missing: compared like any other value
        return mtimes
