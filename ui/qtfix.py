"""A guard for a reference-count bug in PySide6 6.12.0 on CPython 3.11.

PySide6-Essentials 6.12.0 (abi3 wheels) returns `None` from every void C++ method (QPainter.setPen,
QWidget.update, QLabel.setText, …) without taking a new reference. From Python 3.12 on, None is immortal
(PEP 683) and nothing happens; on 3.11 every such call takes one reference away from None, and after a few
tens of thousands of calls (seconds of painting 24 tiles) CPython aborts with "Fatal Python error:
none_dealloc". 6.11.3 does not have the bug (measured: 0 per call; 6.12.0: -1 per call).

The guard does on 3.11 what 3.12 does everywhere: it gives None (and True/False) a reference count so large
that it cannot reach zero. It checks first that it found the count where CPython keeps it, and does nothing
on 3.12+. The real fixes are a PySide6 without the bug (pin <6.12) or Python >= 3.12.
"""
from __future__ import annotations

import ctypes
import sys

IMMORTAL = 1 << 60


def none_leak_per_call() -> float:
    """References None loses per void Qt call (0.0 with a sound PySide6); needs a QApplication-free call."""
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(200):
        probe.setObjectName("probe")
    return (sys.getrefcount(None) - before) / 200


def guard_singletons() -> bool:
    """On CPython < 3.12, make None, True and False effectively immortal. True if it did."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    done = False
    for obj in (None, True, False):
        cell = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt is the first field of a release build's object
        seen = sys.getrefcount(obj)
        if abs(cell.value - seen) > 2:  # not where we expect it (debug build?): leave it alone
            continue
        if cell.value < IMMORTAL // 2:
            cell.value += IMMORTAL
        done = True
    return done
