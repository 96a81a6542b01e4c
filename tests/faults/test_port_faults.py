"""Each fault an emulated board can have, on one port of eight: that board fails with one plain line (never an
"Internal error"), its certificate (if one was issued) is voided, and the other seven pass untouched."""
from __future__ import annotations

import asyncio
import functools
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.families.esp.sim.board import EspBoard, EspFaults
from station.families.esp.sim.fleet import demo_fleet
from station.families.esp.sim.server import EspSimServer
from station.identity.ca import StationCA
from station.identity.ledger import Ledger
from station.journal import Journal
from station.profiles import load_profile
from tests.faults.bench import ROOT

CA = StationCA.ephemeral("Faults")
MIXED = ROOT / "profiles" / "demo-mixed.toml"
ON_BOARD_KEYS = ROOT / "profiles" / "esp32-secure-sensor.toml"  # the board's agent makes the key
FAULTY = 5  # the port (index) that gets the fault

AGENT_FAULTS = ("agent_garbage", "agent_silent", "agent_bad_crc", "agent_commit_refused")
LINE_FAULTS = ("no_sync", "wrong_boot_mode", "bad_md5", "flash_write_error")


def run(profile_path, boards, *, prompt_timeout: float = 300.0, retries: int | None = None):
    """One batch on `boards`; (summary, journal devices by port, ledger records, server locations).
    `retries`: every step's retries (a board that never answers fails at its first timeout)."""
    profile = load_profile(profile_path)
    if retries is not None:
        for own in profile.steps.values():
            own.update({name: replace(policy, retries=retries) for name, policy in own.items()})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = EspSimServer(boards, registry_dir=folder / "registry").start()
        journal = Journal(folder / "journal.sqlite3")
        engine = Engine(profile, Discovery([SimPortSource(folder / "registry")]), journal,
                        operator="t", station_id="s", psk="password123", ca=CA)
        engine.prompt_timeout = prompt_timeout  # nobody is at the bench to press BOOT
        try:
            summary = asyncio.run(engine.run_batch())
        finally:
            engine.close()
            server.stop()
        devices = {d.port: d for d in journal.devices()}
        with Ledger(journal.path) as ledger:
            records = ledger.records()
        journal.close()
    return summary, devices, records, server.locations


def check_one_failed(boards, profile_path, **kw) -> str:
    summary, devices, records, locations = run(profile_path, boards, **kw)
    bad = locations[FAULTY]
    assert sorted(summary.passed) == sorted(k for k in locations if k != bad)
    reason = summary.failed[bad]
    assert "\n" not in reason and not reason.startswith("Internal error"), reason
    assert devices[bad].result == "fail"
    live = {r.device_id for r in records if r.live}
    assert devices[bad].id not in live
    assert all(devices[k].id in live for k in summary.passed)
    return reason


@pytest.mark.parametrize("fault", LINE_FAULTS)
def test_a_line_fault_on_one_port_of_eight(fault):
    boards = demo_fleet(8)
    boards[FAULTY].faults = EspFaults().with_fault(fault)
    check_one_failed(boards, MIXED, prompt_timeout=1.0)


@pytest.mark.parametrize("fault", AGENT_FAULTS)
def test_an_agent_fault_on_one_port_of_eight(fault):
    boards = [EspBoard("esp32", i + 1) for i in range(8)]
    boards[FAULTY].faults = EspFaults().with_fault(fault)
    check_one_failed(boards, ON_BOARD_KEYS, retries=0)




@functools.cache
def flash_data_bytes() -> int:
    """How many flash-data bytes the faulty port's board receives in a whole provisioning."""
    clean = demo_fleet(8)
    run(MIXED, clean)
    return clean[FAULTY].flash_bytes_received


@pytest.mark.parametrize("where", ["flash", "write-data"])
def test_unplugged_mid_transfer_on_one_port_of_eight(where):
    total = flash_data_bytes()
    boards = demo_fleet(8)
    cut = total // 3 if where == "flash" else total - 100  # write-data's blocks are the last ones sent
    boards[FAULTY].faults = replace(EspFaults(), unplug_after_bytes=cut)
    reason = check_one_failed(boards, MIXED)
    assert reason.startswith(f"Board vanished during {where} at "), reason
    percent = int(reason.split(" at ")[1].split(" %")[0])
    assert 0 < percent < 100, reason


def test_a_port_another_program_holds_is_said_to_be_in_use():
    """A real tty (a pseudo-terminal) that another program holds with an exclusive lock, as a second station or
    a serial terminal would: the board is not "lost", its port is in use."""
    import os

    import serial

    from station.families.esp.session import EspSession
    from station.model import StepFailed

    controller, device = os.openpty()
    holder = serial.Serial(os.ttyname(device), exclusive=True)
    try:
        session = EspSession(os.ttyname(device), log=lambda level, message: None, progress=lambda done, total: None)
        with pytest.raises(StepFailed) as failed:
            session.connect(115200, connect_attempts=1)
    finally:
        holder.close()
        os.close(controller)
        os.close(device)
    assert failed.value.reason.startswith("The port is in use by another program"), failed.value.reason


def test_two_stations_on_one_emulated_board_the_second_hears_it_is_in_use():
    """An emulated board served over espsim:// is held like a locked tty: while one station has it open, a
    second one is told the port is in use; once the first lets go, the second gets in."""
    from station.families.esp.session import EspSession
    from station.model import StepFailed

    board = EspBoard("esp32", 1)
    with EspSimServer([board]) as server:
        url = server.station_urls[0]
        first = EspSession(url, lambda level, message: None, lambda done, total: None)
        second = EspSession(url, lambda level, message: None, lambda done, total: None)
        first.connect(115200)
        with pytest.raises(StepFailed) as failed:
            second.connect(115200, connect_attempts=1)
        assert failed.value.reason.startswith("The port is in use by another program"), failed.value.reason
        first.close()
        assert second.connect(115200).chip == "ESP32"
        second.close()
