"""One-touch and retry-failed, on emulated boards."""
import asyncio
from dataclasses import replace
from pathlib import Path

from station.profile_library import shipped_profiles_dir
from station import events as ev
from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.identity.ca import StationCA
from station.journal import Journal, write_end
from station.profiles import load_profile
from station.steps import StepPolicy
from station.families.esp.sim.board import EspFaults
from station.families.esp.sim.server import EspSimServer
from station.families.esp.sim.fleet import demo_fleet

PROFILE = shipped_profiles_dir() / "demo-mixed.toml"


def make_engine(tmp_path: Path) -> Engine:
    return Engine(load_profile(PROFILE), Discovery([SimPortSource(tmp_path / "registry")]),
                  Journal(tmp_path / "journal.sqlite3"), operator="t", station_id="s", psk="password123",
                  ca=StationCA.ephemeral(), poll_interval=0.05)


def test_one_touch_provisions_allowed_boards_that_appear_and_ignores_others(tmp_path):
    engine = make_engine(tmp_path)
    boards = demo_fleet(2)
    server = EspSimServer(boards, registry_dir=tmp_path / "registry", location_prefix="sim-7")
    allowed, other = "sim-7.1", "sim-7.2"
    started: list[str] = []
    appeared: list[str] = []

    async def scenario():
        done = asyncio.Event()
        stop = asyncio.Event()

        def listen(e):
            if isinstance(e, ev.DeviceStarted):
                started.append(e.key)
            if isinstance(e, ev.PortAppeared):
                appeared.append(e.port.key)
            if isinstance(e, ev.DeviceDone) and e.key == allowed:
                done.set()

        engine.subscribe(listen)
        armed = asyncio.ensure_future(engine.run_one_touch(stop, allowed={allowed}))
        server.start()  # boards are plugged in after arming
        await asyncio.wait_for(done.wait(), 60)
        stop.set()
        return await armed

    try:
        summary = asyncio.run(scenario())
    finally:
        server.stop()
        engine.close()
    assert summary.passed == [allowed] and summary.failed == {}
    assert started == [allowed] and other in appeared
    assert boards[1].flash.read(0, 0x20000) == b"\xff" * 0x20000  # never touched


def test_retry_failed_reruns_only_the_failed_board(tmp_path):
    engine = make_engine(tmp_path)
    boards = demo_fleet(3)
    boards[1].faults = EspFaults(bad_md5=True)
    server = EspSimServer(boards, registry_dir=tmp_path / "registry").start()
    started: list[str] = []
    engine.subscribe(lambda e: started.append(e.key) if isinstance(e, ev.DeviceStarted) else None)

    async def scenario():
        first = await engine.run_batch()
        assert list(first.failed) == [server.locations[1]]
        boards[1].faults = EspFaults()  # the technician reseats the board
        started.clear()
        return first, await engine.retry_failed()

    try:
        first, again = asyncio.run(scenario())
    finally:
        server.stop()
        engine.close()
    assert started == [server.locations[1]]
    assert again.batch_id == first.batch_id and again.failed == {}
    assert sorted(again.passed) == sorted(server.locations)
    results = [(d.port, d.result) for d in engine.journal.devices(first.batch_id)]
    assert sorted(results) == sorted([(server.locations[0], "pass"), (server.locations[1], "fail"),
                                      (server.locations[2], "pass"), (server.locations[1], "pass")])



def test_cancelling_one_port_leaves_the_others_alone(tmp_path):
    engine = make_engine(tmp_path)
    boards = demo_fleet(3)
    server = EspSimServer(boards, registry_dir=tmp_path / "registry").start()
    stopped = server.locations[1]

    def listen(e):
        if isinstance(e, ev.StepStarted) and e.step == "flash" and e.key == stopped:
            engine.cancel(stopped)  # the operator presses Stop on this tile

    engine.subscribe(listen)
    try:
        summary = asyncio.run(engine.run_batch())
    finally:
        server.stop()
        engine.close()
    assert summary.failed == {stopped: "Stopped by the operator"}
    assert sorted(summary.passed) == [server.locations[0], server.locations[2]]
    devices = {d.port: d.result for d in engine.journal.devices(summary.batch_id)}
    assert devices[stopped] == "interrupted"


def test_a_step_over_its_timeout_is_stopped(tmp_path):
    engine = make_engine(tmp_path)
    engine.profile = replace(engine.profile, steps={"esp": {**engine.profile.steps["esp"],
                                                            "flash": StepPolicy(timeout=0.5, retries=0)}})
    server = EspSimServer(demo_fleet(1), registry_dir=tmp_path / "registry", throttle=True).start()  # ~2 s flash
    try:
        summary = asyncio.run(engine.run_batch())
    finally:
        server.stop()
        engine.close()
    reason = summary.failed[server.locations[0]]
    assert reason == "flash took longer than 0.5 s and was stopped"
    (device,) = engine.journal.devices(summary.batch_id)
    assert [(s.name, s.result) for s in engine.journal.steps(device.id)][-1] == ("flash", "fail")


def test_a_board_whose_end_the_journal_refuses_fails_plainly_and_the_others_pass(tmp_path, monkeypatch):
    import sqlite3

    import station.engine

    engine = make_engine(tmp_path)
    server = EspSimServer(demo_fleet(3), registry_dir=tmp_path / "registry", location_prefix="sim-8").start()
    refused = {}

    def end_or_disk_full(db, device_id, result, reason):  # the journal's disk fills up as sim-8.2 ends
        if engine._device_keys[device_id] == "sim-8.2":
            refused[device_id] = result
            raise sqlite3.OperationalError("database or disk is full")
        write_end(db, device_id, result, reason)

    monkeypatch.setattr(station.engine, "write_end", end_or_disk_full)
    done: list[ev.DeviceDone] = []
    engine.subscribe(lambda e: done.append(e) if isinstance(e, ev.DeviceDone) else None)
    try:
        summary = asyncio.run(engine.run_batch())
    finally:
        server.stop()
        engine.close()
    assert sorted(summary.passed) == ["sim-8.1", "sim-8.3"]
    assert "could not be written to the journal" in summary.failed["sim-8.2"]
    assert "database or disk is full" in summary.failed["sim-8.2"]
    assert {e.key: e.ok for e in done} == {"sim-8.1": True, "sim-8.2": False, "sim-8.3": True}
    (device_id,) = refused
    record = {d.id: d for d in engine.journal.devices(summary.batch_id)}[device_id]
    assert record.result == "running"  # rolled back: `station` recovery calls it interrupted at the next start
