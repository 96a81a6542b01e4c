"""Provisioned boards join the local cloud with their own identity, and nothing else gets in.

A real Mosquitto broker on loopback, emulated boards, the engine: each board's certificate and key are read
back out of its emulated flash and used to connect over mutual TLS.
"""
import asyncio
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.profile_library import shipped_profiles_dir
from station import events as ev
from station.cloud.broker import BrokerPorts, LocalBroker
from station.cloud.broker import issuing_ca_from
from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.identity.ca import StationCA
from station.identity.idevid import IdevidProfile, host_identity
from station.identity.ledger import Ledger
from station.journal import Journal
from station.families.esp.payloads.littlefs import CLIENT_CERT_PATH, CLIENT_KEY_PATH, read_fs
from station.families.esp.payloads.secure_cert import DEV_CERT, PRIV_KEY, read_secure_cert
from station.families.esp.profile import identity_target
from station.profiles import load_profile
from station.families.esp.sim.server import EspSimServer
from station.families.esp.sim.fleet import demo_fleet
from station.voiding import void_device
from tests.test_cloud_pki import DeviceFiles, MqttDevice, free_port, reachable_tempdir, tls_refusal

PROFILE = shipped_profiles_dir() / "demo-mixed.toml"
ACCEPTED = (0, 16)
NOT_AUTHORIZED = 135


@pytest.fixture
def cloud():
    """A station CA and the local broker it runs, stopped by PID at the end."""
    folder = reachable_tempdir()
    ca = StationCA.ephemeral()
    broker = LocalBroker(folder / "cloud", issuing_ca_from(ca),
                         BrokerPorts(admin=free_port(), devices=free_port(), devices_host="127.0.0.1"))
    yield ca, broker, folder
    broker.down()


def provision(folder: Path, ca, broker, boards, registrations=None):
    """One batch on `boards`; returns (summary, journal, pending registrations after settling)."""
    registry = folder / "registry"
    server = EspSimServer(boards, registry_dir=registry).start()
    journal = Journal(folder / "journal.sqlite3")
    engine = Engine(load_profile(PROFILE), Discovery([SimPortSource(registry)]), journal, operator="t",
                    station_id="s", psk="password123", ca=ca, registrars={"mosquitto": broker.registrar()})
    if registrations is not None:
        engine.subscribe(lambda e: registrations.append(e) if isinstance(e, ev.RegistrationChanged) else None)

    async def run():
        summary = await engine.run_batch()
        return summary, await engine.settle_registrations(timeout=60 if broker.status().running else 1)

    try:
        summary, pending = asyncio.run(run())
    finally:
        engine.close()
        server.stop()
    return summary, journal, pending


def device_files(board, folder: Path) -> DeviceFiles:
    """The board's own certificate and key, read out of its emulated flash, as files an MQTT client uses."""
    profile = load_profile(PROFILE)
    store, part = identity_target(profile.options["esp"], profile.firmware[board.chip.display_name])
    image = board.flash.read(part.offset, part.size)
    if store == "esp_secure_cert":
        tlv = read_secure_cert(image)
        cert = x509.load_pem_x509_certificate(tlv[(DEV_CERT, 0)].rstrip(b"\0"))
        key = serialization.load_pem_private_key(tlv[(PRIV_KEY, 0)].rstrip(b"\0"), None)
    else:
        files = read_fs(image, 8192, 32)
        cert = x509.load_der_x509_certificate(files[CLIENT_CERT_PATH])
        key = serialization.load_der_private_key(files[CLIENT_KEY_PATH], None)
    return write_device_files(folder, board.name.replace("#", "-"), cert, key)


def write_device_files(folder: Path, tag: str, cert, key) -> DeviceFiles:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path, ca_path = folder / f"{tag}.crt", folder / f"{tag}.key", folder / f"{tag}-ca.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return DeviceFiles(cn(cert), cert, cert_path, key_path, ca_path)


def cn(cert) -> str:
    return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


def test_boards_join_with_their_own_identity_and_nothing_else_gets_in(cloud):
    ca, broker, folder = cloud
    broker.up()
    boards = demo_fleet(3)
    updates: list[ev.RegistrationChanged] = []
    summary, journal, pending = provision(folder, ca, broker, boards, updates)
    assert summary.failed == {} and pending == 0
    assert sorted(u.state for u in updates if u.state == "delivered") == ["delivered"] * 3

    trust = folder / "trust.pem"
    trust.write_bytes(broker.ca.trust_pem())
    files = [device_files(b, folder / "devices") for b in boards]
    files = [DeviceFiles(f.cn, f.cert, f.cert_path, f.key_path, trust) for f in files]
    for mine, other in zip(files, files[1:] + files[:1]):
        device = MqttDevice(mine, broker.ports.devices)
        try:
            assert device.connect().value == 0
            assert device.publish(f"devices/{mine.cn}/temperature", b"21.5") in ACCEPTED
            assert device.publish(f"devices/{other.cn}/temperature") == NOT_AUTHORIZED
        finally:
            device.close()

    # a certificate from the same CA that was never registered can connect but do nothing
    with Ledger(":memory:") as scratch:
        key, cert = host_identity(ca, IdevidProfile(common_name="{mac_hex}"), {"mac": "02:00:00:00:00:99",
                                                                             "chip": "ESP32"}, scratch)
    stranger = write_device_files(folder / "devices", "stranger", cert, key)
    device = MqttDevice(DeviceFiles(stranger.cn, cert, stranger.cert_path, stranger.key_path, trust),
                        broker.ports.devices)
    try:
        device.connect()
        assert device.publish(f"devices/{stranger.cn}/x") == NOT_AUTHORIZED
    finally:
        device.close()

    # a voided board can no longer connect at all
    victim = next(d for d in journal.devices() if d.mac == boards[0].mac_text)
    assert "removal from mosquitto queued" in void_device(journal, victim.id, "returned as faulty")
    engine = Engine(load_profile(PROFILE), Discovery([]), journal, operator="t", station_id="s", psk="x" * 8,
                    ca=ca, registrars={"mosquitto": broker.registrar()})

    try:
        assert asyncio.run(engine.settle_registrations(timeout=60)) == 0
    finally:
        engine.close()
    assert tls_refusal(files[0], broker.ports.devices)  # the handshake itself is refused now
    assert next(d for d in journal.devices() if d.id == victim.id).identity["void"] is True


def test_cloud_down_for_the_whole_batch_then_back_delivers_each_once_and_survives_restart(cloud):
    ca, broker, folder = cloud  # the broker is not started
    boards = demo_fleet(3)
    summary, journal, pending = provision(folder, ca, broker, boards)
    assert summary.failed == {} and pending == 3  # every board finished, registration pending
    journal.close()

    broker.up()  # the cloud comes back; a new station process (new engine, same journal file) delivers
    journal = Journal(folder / "journal.sqlite3")
    engine = Engine(load_profile(PROFILE), Discovery([]), journal, operator="t", station_id="s", psk="x" * 8,
                    ca=ca, registrars={"mosquitto": broker.registrar()})

    try:
        assert asyncio.run(engine.settle_registrations(timeout=60)) == 0
        counts = engine.outbox.counts()
    finally:
        engine.close()
    assert counts == {"pending": 0, "delivered": 3, "failed": 0}
    client = broker.admin_client()
    try:
        names = [c for c in client.list_clients() if c != "admin"]
    finally:
        client.close()
    assert sorted(names) == sorted(b.mac_text.replace(":", "").upper() for b in boards)
