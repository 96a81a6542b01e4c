"""A batch of emulated boards, end to end: what lands in each board's flash is what the profile says."""
import asyncio
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.profile_library import shipped_profiles_dir
from station import events as ev
from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.journal import Journal
from station.families.esp.payloads.nvs import read_nvs
from station.families.esp.payloads.partition_table import find_partition, parse_partition_table
from station.identity.ca import StationCA
from station.families.esp.identity import read_back_certificate
from station.families.esp.profile import identity_target
from station.profiles import load_profile
from station.families.esp.sim.board import EspFaults
from station.families.esp.sim.server import EspSimServer
from station.families.esp.sim.fleet import demo_fleet

PROFILES = shipped_profiles_dir()
PSK = "correct horse battery"


@pytest.fixture
def profile():
    return load_profile(PROFILES / "demo-mixed.toml")


@pytest.fixture
def bench(tmp_path):
    """Start emulated boards with a registry; yields a function that plugs a fleet in."""
    servers = []

    def plug(boards):
        server = EspSimServer(boards, registry_dir=tmp_path / "registry").start()
        servers.append(server)
        return server

    yield plug
    for server in servers:
        server.stop()


CA = StationCA.ephemeral()


def run_batch(profile, registry: Path, journal: Journal, listener=None, reprovision=False):
    engine = Engine(profile, Discovery([SimPortSource(registry)]), journal, operator="tester",
                    station_id="station-t", lot="LOT-1", psk=PSK, ca=CA, reprovision=reprovision)
    if listener:
        engine.subscribe(listener)
    try:
        return asyncio.run(engine.run_batch())
    finally:
        engine.close()


def nvs_of(board, firmware) -> dict:
    table = parse_partition_table(firmware.partition_table.data)
    nvs = find_partition(table, name="nvs")
    return read_nvs(board.flash.read(nvs.offset, nvs.size))


def test_mixed_batch_of_eight_boards(profile, bench, tmp_path):
    boards = demo_fleet(8)
    server = bench(boards)
    journal = Journal(tmp_path / "journal.sqlite3")
    seen: list[ev.Event] = []

    summary = run_batch(profile, tmp_path / "registry", journal, seen.append)

    assert summary.failed == {} and sorted(summary.passed) == sorted(server.locations)
    assert {b.chip.display_name for b in boards} == {"ESP32", "ESP32-C3", "ESP8266"}
    for board, location in zip(boards, server.locations):
        firmware = profile.firmware[board.chip.display_name]
        for image in firmware.images:
            assert board.flash.read(image.offset, len(image.data)) == image.data, (location, image.name)
        values = nvs_of(board, firmware)
        assert values[("nvs.net80211", "sta.ssid")][4:4 + len("station-demo")] == b"station-demo"
        assert values[("nvs.net80211", "sta.pswd")].rstrip(b"\0") == PSK.encode()
        assert values[("mqtt", "host")] == "127.0.0.1" and values[("mqtt", "port")] == 8883
        assert_identity_in_flash(profile, board)

    # progress is attributed to the right port: each port's transfers add up to its own chip's images
    totals = {}
    for e in seen:
        if isinstance(e, ev.Progress) and e.step == "flash":
            totals[e.key] = e.total
    for board, location in zip(boards, server.locations):
        assert totals[location] == sum(len(i.data) for i in profile.firmware[board.chip.display_name].images)

    # the journal holds every board with its MAC, chip and every step passed
    devices = {d.port: d for d in journal.devices(summary.batch_id)}
    for board, location in zip(boards, server.locations):
        dev = devices[location]
        assert (dev.result, dev.chip, dev.mac) == ("pass", board.chip.display_name, board.mac_text)
        assert [s.name for s in journal.steps(dev.id)] == ["detect", "check", "flash", "write-data", "verify",
                                                           "reset"]
        assert all(s.result == "pass" for s in journal.steps(dev.id))
        assert PSK not in str(dev.images)


def assert_identity_in_flash(profile, board):
    """The board's own flash holds a certificate from the station CA, for its MAC, with the matching key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from station.families.esp.payloads.littlefs import CLIENT_KEY_PATH, read_fs
    from station.families.esp.payloads.secure_cert import PRIV_KEY, read_secure_cert

    store, part = identity_target(profile.options["esp"], profile.firmware[board.chip.display_name])
    image = board.flash.read(part.offset, part.size)
    plan = type("Plan", (), {"store": store})()
    cert = read_back_certificate(plan, image, profile.options["esp"])
    cert.verify_directly_issued_by(CA.issuing)
    serial = cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value
    assert serial == f"{board.chip.display_name}-{board.mac_text.replace(':', '').upper()}"
    if store == "esp_secure_cert":
        key = serialization.load_pem_private_key(read_secure_cert(image)[(PRIV_KEY, 0)].rstrip(b"\0"), None)
    else:
        key = serialization.load_der_private_key(read_fs(image, 8192, 32)[CLIENT_KEY_PATH], None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_board_unplugged_mid_write_fails_alone(profile, bench, tmp_path):
    boards = demo_fleet(8)
    boards[3].faults = EspFaults(unplug_after_bytes=64 * 1024)
    server = bench(boards)
    journal = Journal(tmp_path / "journal.sqlite3")

    summary = run_batch(profile, tmp_path / "registry", journal)

    victim = server.locations[3]
    assert list(summary.failed) == [victim]
    assert summary.failed[victim].startswith("Board vanished during flash at ")
    assert len(summary.passed) == 7
    for i, board in enumerate(boards):
        if i != 3:
            app = profile.firmware[board.chip.display_name].images[-1]
            assert board.flash.read(app.offset, len(app.data)) == app.data
    dev = next(d for d in journal.devices() if d.port == victim)
    assert dev.result == "fail" and "vanished" in dev.reason


@pytest.mark.parametrize("fault, words", [
    (EspFaults(no_sync=True), "No answer from the board"),
    (EspFaults(bad_md5=True), "MD5"),
    (EspFaults(flash_write_error=True), "write"),
])
def test_faulty_board_gets_a_clear_reason(profile, bench, tmp_path, fault, words):
    boards = demo_fleet(2)
    boards[0].faults = fault
    server = bench(boards)
    summary = run_batch(profile, tmp_path / "registry", Journal(tmp_path / "j.sqlite3"))
    assert list(summary.failed) == [server.locations[0]]
    assert words.lower() in summary.failed[server.locations[0]].lower()
    assert summary.passed == [server.locations[1]]


def test_wrong_chip_is_refused_before_writing(bench, tmp_path):
    profile = load_profile(PROFILES / "esp8266-ota-switch.toml")
    boards = demo_fleet(1)  # an ESP32
    bench(boards)
    before = boards[0].flash.read(0, 0x20000)
    journal = Journal(tmp_path / "j.sqlite3")
    summary = run_batch(profile, tmp_path / "registry", journal)
    assert list(summary.failed.values()) == ["Wrong chip: profile wants ESP8266, board is ESP32"]
    assert boards[0].flash.read(0, 0x20000) == before
    (device,) = journal.devices()
    assert [(s.name, s.result) for s in journal.steps(device.id)] == [("detect", "fail")]  # a refusal: no retry


def test_board_in_the_wrong_boot_mode_prompts_and_continues_after_replug(profile, bench, tmp_path):
    boards = demo_fleet(2)
    boards[0].faults = EspFaults(wrong_boot_mode=True)
    server = bench(boards)
    prompts = []

    def operator(e):  # a technician who does what the tile says (the station sees the board go, then come back)
        if isinstance(e, ev.OperatorPrompt):
            prompts.append(e)
            server.unplug(0)
        elif isinstance(e, ev.PortGone) and e.key == server.locations[0]:
            boards[0].faults = EspFaults()
            server.plug(0)

    summary = run_batch(profile, tmp_path / "registry", Journal(tmp_path / "j.sqlite3"), operator)
    assert [(p.key, p.prompt) for p in prompts] == [(server.locations[0],
                                                     "Hold BOOT, press and release RESET, then release BOOT")]
    assert "download mode" in prompts[0].reason
    assert summary.failed == {} and sorted(summary.passed) == sorted(server.locations)
    app = profile.firmware["ESP32"].images[-1]
    assert boards[0].flash.read(app.offset, len(app.data)) == app.data


@pytest.mark.parametrize("takes", [0.0, 1.5], ids=["at-once", "after-a-while"])
def test_wrong_boot_mode_prompt_is_satisfied_by_the_buttons_without_re_enumeration(profile, bench, tmp_path, takes):
    """A CP2102/CH340 board does not leave the bus when its buttons are pressed: the station keeps asking the
    board while the prompt shows, sees it answer in download mode and carries on (`takes`: how long the person
    needs to walk over; the station's first asks then find the board not ready)."""
    boards = demo_fleet(2)
    boards[0].faults = EspFaults(wrong_boot_mode=True)  # stays broken: only the BOOT button pulls IO0 low
    server = bench(boards)
    prompts, gone = [], []

    def operator(e):  # a technician who does what the tile says, and nothing else
        if isinstance(e, ev.OperatorPrompt):
            prompts.append(e)
            threading.Timer(takes, boards[0].hold_boot_and_press_reset).start()
        elif isinstance(e, ev.PortGone):
            gone.append(e.key)

    summary = run_batch(profile, tmp_path / "registry", Journal(tmp_path / "j.sqlite3"), operator)
    assert [p.key for p in prompts] == [server.locations[0]]
    assert gone == []
    assert summary.failed == {} and sorted(summary.passed) == sorted(server.locations)
    app = profile.firmware["ESP32"].images[-1]
    assert boards[0].flash.read(app.offset, len(app.data)) == app.data


def test_a_prompt_the_station_could_not_check_cannot_be_written():
    """Every prompt comes with a probe, so no prompt waits only for a re-enumeration some boards never do."""
    from station.model import StepFailed

    with pytest.raises(ValueError, match="needs a probe"):
        StepFailed("Board is not in download mode", operator_prompt="Hold BOOT, press and release RESET")


def test_prompt_nobody_acts_on_fails_the_board(profile, bench, tmp_path):
    boards = demo_fleet(1)
    boards[0].faults = EspFaults(wrong_boot_mode=True)
    bench(boards)
    engine = Engine(profile, Discovery([SimPortSource(tmp_path / "registry")]), Journal(tmp_path / "j.sqlite3"),
                    operator="t", station_id="s", psk=PSK, ca=CA)
    engine.prompt_timeout = 0.3
    try:
        summary = asyncio.run(engine.run_batch())
    finally:
        engine.close()
    (reason,) = summary.failed.values()
    assert "nobody acted on \"Hold BOOT" in reason


def test_key_made_on_the_board(bench, tmp_path):
    """The board's agent makes the key; what lands in its flash is a certificate for that key, and the
    station never held the private key."""
    profile = load_profile(PROFILES / "esp32-secure-sensor.toml")
    boards = demo_fleet(4)[::3]  # two ESP32s
    server = bench(boards)
    journal = Journal(tmp_path / "j.sqlite3")
    summary = run_batch(profile, tmp_path / "registry", journal)
    assert summary.failed == {} and sorted(summary.passed) == sorted(server.locations)
    for board in boards:
        assert_identity_in_flash(profile, board)  # the agent committed it to esp_secure_cert
        record = next(d for d in journal.devices() if d.mac == board.mac_text).identity
        assert record["key_origin"] == "board"
        cert = x509.load_pem_x509_certificate(record["certificate"].encode())
        masa = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.32"))
        assert masa.value.value == b"\x16\x10masa.example.com"
    steps = [s.name for s in journal.steps(journal.devices()[0].id)]
    assert steps[-2:] == ["reset", "identity"]


def test_a_board_that_vanishes_while_its_certificate_is_issued_leaves_no_live_certificate(profile, bench, tmp_path):
    boards = demo_fleet(1)
    boards[0].faults = EspFaults(unplug_after_bytes=4096)  # gone at the very start of the flash
    bench(boards)
    journal = Journal(tmp_path / "j.sqlite3")
    summary = run_batch(profile, tmp_path / "registry", journal)
    assert len(summary.failed) == 1
    from station.identity.ledger import Ledger

    with Ledger(journal.path) as ledger:
        records = ledger.records()
    assert records and all(not r.live for r in records)  # issued, then voided with the failed board


def test_reprovisioning_without_a_cloud_voids_the_old_certificate(profile, bench, tmp_path):
    """A profile with identities but no [cloud]: the journal file has no outbox, and re-provisioning a board it
    knows still ends with the old certificate void and the new one live."""
    from dataclasses import replace

    from station.identity.ledger import Ledger

    no_cloud = replace(profile, cloud=None)
    server = bench(demo_fleet(1))
    journal = Journal(tmp_path / "journal.sqlite3")
    assert run_batch(no_cloud, tmp_path / "registry", journal).ok
    again = run_batch(no_cloud, tmp_path / "registry", journal, reprovision=True)
    assert again.ok, again.failed
    first, second = sorted(journal.devices(), key=lambda d: d.started)
    assert first.identity["void"] is True and second.identity["void"] is False
    with Ledger(tmp_path / "journal.sqlite3") as ledger:
        assert [r.live for r in ledger.records()] == [False, True]
    assert server.locations[0] == second.port
    journal.close()
