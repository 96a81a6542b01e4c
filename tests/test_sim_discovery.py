"""The emulator registry as a port source: plugs and unplugs are seen at the next poll, and a poll of an
unchanged registry reads no files."""
from __future__ import annotations

import os

from station.discovery.sim_ports import SimPortSource
from station.families.esp.usb_ids import ESP_SERIAL_IDS
from station.sim.registry import write_registry_file

VID, PID = next(iter(ESP_SERIAL_IDS))


def entry(location: str) -> dict:
    return {"location": location, "url": f"espsim://127.0.0.1:{4000 + len(location)}", "vid": VID, "pid": PID,
            "serial": None, "description": "emulated"}


def age(folder, seconds: float = 60) -> None:
    """Make the directory look untouched for a while (as between plugs on a real bench)."""
    st = os.stat(folder)
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_plug_and_unplug_are_seen_at_the_next_poll(tmp_path):
    source = SimPortSource(tmp_path)
    assert source.scan() == []
    write_registry_file(tmp_path, entry("sim-1.1"))
    assert [p.key for p in source.scan()] == ["sim-1.1"]
    age(tmp_path)
    assert [p.key for p in source.scan()] == ["sim-1.1"]
    write_registry_file(tmp_path, entry("sim-1.2"))
    assert [p.key for p in source.scan()] == ["sim-1.1", "sim-1.2"]
    age(tmp_path)
    (tmp_path / "sim-1.1.json").unlink()
    assert [p.key for p in source.scan()] == ["sim-1.2"]


def test_an_unchanged_registry_is_not_read_again(tmp_path):
    write_registry_file(tmp_path, entry("sim-1.1"))
    source = SimPortSource(tmp_path)
    assert source.scan()[0].description == "emulated"
    age(tmp_path)
    source.scan()
    # rewritten in place (not how the registry publishes): the directory is unchanged, so the poll does not read it
    (tmp_path / "sim-1.1.json").write_text((tmp_path / "sim-1.1.json").read_text().replace("emulated", "changed"))
    assert source.scan()[0].description == "emulated"
