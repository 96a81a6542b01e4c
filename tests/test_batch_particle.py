"""Spark Cores and Photons beside ESP boards in one batch, end to end on the emulated hub: each board's memory
holds the profile's firmware, the local cloud's key and address, and a device key whose public half is the one
spark-server stored for its device ID; Wi-Fi was answered; an old Core that has no software switch waits for a
person and carries on when it comes back in DFU mode; a board that vanishes mid-write fails in plain words; the
cloud down during the batch leaves registrations pending and delivers each exactly once later."""
import asyncio
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from station import events as ev
from station.cloud.outbox import DELIVERED, PENDING, Outbox
from station.cloud.registrar import SparkServerRegistrar
from station.cloud.spark_test_server import SparkTestServer
from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.families.esp.sim.fleet import demo_fleet
from station.families.esp.sim.server import EspSimServer
from station.families.particle.sim.board import ParticleBoard, ParticleFaults
from station.families.particle.sim.server import ParticleSimServer
from station.families.particle.steps import DFU_PROMPT
from station.identity.ca import StationCA
from station.journal import Journal
from station.manifest import device_records
from station.profile_library import shipped_profiles_dir
from station.profiles import load_profile
from station.secrets import SecretSpec
from station.voiding import void_device

PROFILES = shipped_profiles_dir()
PSK = "correct horse battery"
SSID = "station-demo"
USER, PASSWORD = "station@example.com", "spark-test-password"
CA = StationCA.ephemeral()


def spark_profile(tmp_path: Path, url: str, device_key: str = "new") -> Path:
    """demo-mixed with its [cloud] on spark-server at `url` (file paths made absolute)."""
    text = (PROFILES / "demo-mixed.toml").read_text().replace('device_key = "new"', f'device_key = "{device_key}"')
    text = re.sub(r'file = "([^"]+)"', lambda m: f'file = "{(PROFILES / m.group(1)).resolve()}"', text)
    cloud = text.index("[cloud]")
    text = text[:cloud] + (f'[cloud]\nregistrar = "spark-server"\nurl = "{url}"\nusername = "{USER}"\n'
                           f'client_id = "spark-server"\nclient_secret = "env:SPARK_TEST_SECRET"\n'
                           f'password = "env:SPARK_TEST_PASSWORD"\n')
    path = tmp_path / "spark.toml"
    path.write_text(text)
    return path


@pytest.fixture
def cloud_env(monkeypatch):
    monkeypatch.setenv("SPARK_TEST_SECRET", "spark-server")
    monkeypatch.setenv("SPARK_TEST_PASSWORD", PASSWORD)


@pytest.fixture
def spark(tmp_path, cloud_env):
    server = SparkTestServer(tmp_path / "core_keys", flavour="brewskey", users={USER: PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture
def hub(tmp_path):
    servers = []

    def plug(esp_count: int, kinds: list[str], faults: dict[int, ParticleFaults] | None = None):
        registry = tmp_path / "registry"
        esp = EspSimServer(demo_fleet(esp_count), registry_dir=registry).start() if esp_count else None
        boards = [ParticleBoard(kind, i, visible={SSID: (3, 1)}, faults=(faults or {}).get(i))
                  for i, kind in enumerate(kinds)]
        particle = ParticleSimServer(boards, registry).start()
        servers.extend(s for s in (esp, particle) if s)
        return esp, particle

    yield plug
    for server in servers:
        server.stop()


def registrar(url: str) -> SparkServerRegistrar:
    return SparkServerRegistrar(url, client_id="spark-server",
                                client_secret=SecretSpec.parse("secret", "env:SPARK_TEST_SECRET"), username=USER,
                                password=SecretSpec.parse("password", "env:SPARK_TEST_PASSWORD"))


def run_batch(profile, registry: Path, journal: Journal, reg, on_event=None, settle: float = 10.0):
    engine = Engine(profile, Discovery([SimPortSource(registry)]), journal, operator="tester",
                    station_id="station-t", psk=PSK, ca=CA, registrars={"spark-server": reg}, reprovision=True)
    if on_event is not None:
        engine.subscribe(lambda e: on_event(engine, e))

    async def go():
        summary = await engine.run_batch()
        pending = await engine.settle_registrations(settle)
        return summary, pending

    try:
        return asyncio.run(go())
    finally:
        engine.close()


def server_block(profile) -> bytes:
    """What the local cloud's key slot must hold: the key's DER, 0xFF, and 127.0.0.1 at offset 384 (§5.2)."""
    options = profile.options["particle"]
    der = serialization.load_pem_public_key(options.server_key.pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der + b"\xff" * (384 - len(der)) + bytes([0, 4, 127, 0, 0, 1])


def device_key_public_pem(board: ParticleBoard) -> str:
    """The public half of the RSA key in the board's device key slot, read from its memory."""
    slots = board.kind.keys
    slot = board.read_memory(slots.alt, slots.device_key, slots.device_key_size)
    der = slot[:4 + int.from_bytes(slot[2:4], "big")]
    key = serialization.load_der_private_key(der, None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_four_cores_and_four_photons_beside_esp_boards(hub, spark, tmp_path):
    # a Photon whose bootloader 0200 does not report the device ID, and whose 0.6.3 firmware says it upper case
    kinds = ["core", "photon", "core", "photon-0200", "core", "photon", "old-core", "photon"]
    esp, particle = hub(2, kinds)
    old_core = particle.locations[6]
    profile = load_profile(spark_profile(tmp_path, spark.url))
    journal = Journal(tmp_path / "journal.sqlite3")
    prompts = []

    def person(engine, e):  # the technician: does what the tile asks, with the board's own buttons
        if isinstance(e, ev.OperatorPrompt):
            prompts.append((e.key, e.prompt))
            particle.hold_mode(e.key, 3.5, tap_reset=True)

    summary, pending = run_batch(profile, tmp_path / "registry", journal, registrar(spark.url), person)

    assert summary.failed == {}
    assert sorted(summary.passed) == sorted(esp.locations + particle.locations)
    assert prompts == [(old_core, DFU_PROMPT)]  # only the Core whose firmware has no magic baud needed a hand
    assert pending == 0
    block = server_block(profile)
    records = {r["port"]: r for r in device_records(journal, summary.batch_id)}
    for location, board in zip(particle.locations, particle.boards):
        chip = "Spark Core" if board.kind.platform == "core" else "Photon"
        for p in profile.firmware[chip].placements:
            assert board.read_memory(0, p.address, len(p.data)) == p.data
        slots = board.kind.keys
        assert board.read_memory(slots.alt, slots.server_key, len(block)) == block
        public = device_key_public_pem(board)
        assert spark.stored_key(board.device_id) == public  # registered under its device ID, with its own key
        assert [(c.ssid, c.password) for c in board.wifi] == [(SSID, PSK)]
        assert board.mode == "run" and board.cloud.ok  # it booted with both keys good
        identity = records[location]["identity"]
        assert identity["particle_device_id"] == board.device_id
        assert records[location]["mac"] == (board.mac if chip == "Photon" else "")
        assert identity["device_public_key"] == public and "PRIVATE" not in str(records[location])
    assert PSK not in json.dumps(list(device_records(journal)))  # the passphrase the boards echoed is nowhere
    journal.close()


def test_a_board_that_vanishes_mid_write_fails_in_plain_words(hub, spark, tmp_path):
    esp, particle = hub(0, ["photon", "core", "photon"], faults={1: ParticleFaults(unplug_after_bytes=30 * 1024)})
    profile = load_profile(spark_profile(tmp_path, spark.url))
    journal = Journal(tmp_path / "journal.sqlite3")

    summary, _ = run_batch(profile, tmp_path / "registry", journal, registrar(spark.url))

    gone = particle.locations[1]
    assert list(summary.failed) == [gone]
    assert re.match(r"Board vanished during flash at \d+ %", summary.failed[gone])
    assert sorted(summary.passed) == [particle.locations[0], particle.locations[2]]
    assert spark.stored_key(particle.boards[1].device_id) is None  # a failed board is not registered
    journal.close()


def test_cloud_down_during_the_batch_leaves_registrations_pending_then_each_is_delivered_once(hub, tmp_path,
                                                                                              cloud_env):
    _, particle = hub(0, ["core", "photon", "photon"])
    with SparkTestServer(tmp_path / "core_keys", flavour="brewskey", users={USER: PASSWORD}) as spark:
        url = spark.url  # a port where the cloud will be; it is down (nothing listens) during the batch
    profile = load_profile(spark_profile(tmp_path, url))
    journal = Journal(tmp_path / "journal.sqlite3")

    summary, pending = run_batch(profile, tmp_path / "registry", journal, registrar(url), settle=0.5)
    assert summary.failed == {} and pending == 3
    outbox = Outbox(journal.path)
    assert {r.state for r in outbox.rows()} == {PENDING}

    port = int(url.rsplit(":", 1)[1])
    with SparkTestServer(tmp_path / "core_keys", flavour="brewskey", users={USER: PASSWORD}, port=port) as up:
        outbox.due_now(["spark-server"])
        delivered = outbox.deliver_due([registrar(url)])
        assert delivered == 3 and outbox.deliver_due([registrar(url)]) == 0
        posts = [path for method, path in up.requests if method == "POST" and path.startswith("/v1/provisioning/")]
        assert sorted(posts) == sorted(f"/v1/provisioning/{b.device_id}" for b in particle.boards)
        for board in particle.boards:
            assert up.stored_key(board.device_id) == device_key_public_pem(board)
    assert {r.state for r in outbox.rows()} == {DELIVERED}
    outbox.close()
    journal.close()


def test_keep_registers_the_boards_own_key_and_leaves_its_slot_alone(hub, spark, tmp_path):
    _, particle = hub(0, ["core", "photon"])
    before = [b.read_memory(b.kind.keys.alt, b.kind.keys.device_key, b.kind.keys.device_key_size)
              for b in particle.boards]
    profile = load_profile(spark_profile(tmp_path, spark.url, device_key="keep"))
    journal = Journal(tmp_path / "journal.sqlite3")

    summary, pending = run_batch(profile, tmp_path / "registry", journal, registrar(spark.url))

    assert summary.failed == {} and pending == 0
    records = {r["port"]: r for r in device_records(journal, summary.batch_id)}
    for location, board, slot in zip(particle.locations, particle.boards, before):
        keys = board.kind.keys
        assert board.read_memory(keys.alt, keys.device_key, keys.device_key_size) == slot
        assert spark.stored_key(board.device_id) == device_key_public_pem(board)
        identity = records[location]["identity"]
        assert identity["device_key_source"] == "board"
        assert identity["previous_key_fingerprint"] == identity["device_key_fingerprint"]
        assert board.cloud.ok

    # voiding one: its record says void, and spark-server, which has no API to remove a key, says what to do
    device_id = records[particle.locations[0]]["device_id"]
    assert "removal from spark-server queued" in void_device(journal, device_id, "returned")
    outbox = Outbox(journal.path)
    outbox.deliver_due([registrar(spark.url)])
    void = [r for r in outbox.rows(device_id=device_id) if r.action == "void"]
    assert [r.state for r in void] == ["failed"]
    assert f"delete core_keys/{particle.boards[0].device_id}.pub.pem" in void[0].last_error
    assert next(d for d in journal.devices() if d.id == device_id).identity["void"] is True
    outbox.close()
    journal.close()


def test_a_board_that_vanishes_on_the_mode_switch_fails_in_plain_words(hub, spark, tmp_path):
    _, particle = hub(0, ["photon", "core"], faults={0: ParticleFaults(vanish_on_switch=True)})
    profile = load_profile(spark_profile(tmp_path, spark.url))
    journal = Journal(tmp_path / "journal.sqlite3")

    summary, _ = run_batch(profile, tmp_path / "registry", journal, registrar(spark.url))

    gone = particle.locations[0]
    assert summary.passed == [particle.locations[1]]
    assert summary.failed[gone].startswith("Board vanished during dfu (The board left the bus after the "
                                           "14400-baud switch")
    journal.close()


def test_boards_that_already_have_wifi_are_put_in_listening_mode_by_the_28800_baud_request(hub, spark, tmp_path):
    _, particle = hub(0, ["photon", "core"])
    profile = load_profile(spark_profile(tmp_path, spark.url))
    journal = Journal(tmp_path / "journal.sqlite3")
    first, _ = run_batch(profile, tmp_path / "registry", journal, registrar(spark.url))
    assert first.failed == {} and all(not b.listening for b in particle.boards)  # `w` ended listening mode

    again, pending = run_batch(profile, tmp_path / "registry", journal, registrar(spark.url))

    assert again.failed == {} and pending == 0
    listens = [s.detail for d in journal.devices(again.batch_id) for s in journal.steps(d.id) if s.name == "listen"]
    assert len(listens) == 2 and all(d.startswith("entered listening mode by the 28800-baud request") for d in listens)
    for board in particle.boards:  # the second key replaced the first on the board and on the server
        assert spark.stored_key(board.device_id) == device_key_public_pem(board)
    journal.close()


def test_stop_while_a_board_is_switching_interrupts_it_and_the_others_go_on(hub, spark, tmp_path):
    _, particle = hub(0, ["old-core", "photon"])
    old_core = particle.locations[0]
    profile = load_profile(spark_profile(tmp_path, spark.url))
    journal = Journal(tmp_path / "journal.sqlite3")

    def stop_the_old_core(engine, e):  # the operator stops it while the station waits for it to re-enumerate
        if isinstance(e, ev.StepStarted) and (e.key, e.step) == (old_core, "dfu"):
            engine.cancel(old_core)

    summary, _ = run_batch(profile, tmp_path / "registry", journal, registrar(spark.url), stop_the_old_core)

    assert summary.passed == [particle.locations[1]]
    assert summary.failed == {old_core: "Stopped by the operator"}
    row = next(d for d in journal.devices(summary.batch_id) if d.port == old_core)
    assert row.result == "interrupted"
    journal.close()


def test_a_blank_core_in_its_bootloader_is_provisioned_and_a_photon_without_system_firmware_is_named(tmp_path, spark):
    registry = tmp_path / "registry"
    boards = [ParticleBoard("core", 0, blank=True), ParticleBoard("photon", 0, blank=True)]
    with ParticleSimServer(boards, registry) as particle:
        profile = load_profile(spark_profile(tmp_path, spark.url))
        journal = Journal(tmp_path / "journal.sqlite3")

        summary, _ = run_batch(profile, registry, journal, registrar(spark.url))

        core, photon = particle.locations
        assert summary.passed == [core]
        assert summary.failed[photon].startswith("The board came back in DFU mode: its bootloader found no "
                                                 "firmware it can run")
        record = next(r for r in device_records(journal, summary.batch_id) if r["port"] == core)
        assert record["identity"]["previous_key_fingerprint"] == "none (the slot was erased)"
        assert spark.stored_key(boards[0].device_id) == device_key_public_pem(boards[0])
        journal.close()
