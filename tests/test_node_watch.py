"""NodeWatch: a device node coming or going in a watched directory (or a subdirectory) counts as a change."""
from __future__ import annotations

import os

from station.discovery.node_watch import NodeWatch


def age(folder, seconds: float = 60) -> None:
    st = os.stat(folder)
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_a_node_coming_or_going_is_a_change_and_quiet_is_not(tmp_path):
    bus = tmp_path / "001"
    bus.mkdir()
    age(tmp_path)
    age(bus)
    watch = NodeWatch(tmp_path, subfolders=True)
    assert watch.changed()  # the first look lists everything
    assert not watch.changed()
    (bus / "007").touch()  # a device plugged on bus 1
    assert watch.changed()
    age(bus)
    watch.changed()
    assert not watch.changed()
    (bus / "007").unlink()
    assert watch.changed()


def test_a_recent_change_keeps_counting_until_it_is_old_enough_to_be_the_last(tmp_path):
    watch = NodeWatch(tmp_path)
    (tmp_path / "ttyUSB0").touch()
    assert watch.changed() and watch.changed()  # a second change in the same clock tick would look the same
    age(tmp_path)
    assert watch.changed() and not watch.changed()
