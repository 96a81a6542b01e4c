"""The cloud under faults, through the command line: the broker down for a batch and back; a voided board shut
out at the TLS handshake (`station void` + `station cloud sync`); a void that can't be delivered does not hold
up later runs."""
from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from cryptography import x509

from station.cloud import CloudError
from station.cloud.registrar import DeviceRegistration, RegistrationResult
from station.discovery import Discovery
from station.engine import Engine
from station.families.esp.sim.fleet import demo_fleet
from station.families.esp.sim.server import EspSimServer
from station.journal import Journal
from station.profiles import load_profile
from tests.faults.bench import PROFILE, new_station, remove_station
from tests.test_cloud_pki import DeviceFiles, tls_refusal
from tests.test_registration import device_files


@pytest.fixture
def station():
    bench = new_station()
    yield bench
    remove_station(bench)


def registrations(station) -> list[tuple[str, str, str, int]]:
    with sqlite3.connect(station.data / "journal.sqlite3") as db:
        return db.execute("SELECT device_id, action, state, attempts FROM registrations ORDER BY id").fetchall()


def test_broker_down_for_a_batch_then_back_delivers_each_registration_once(station):
    boards = demo_fleet(3, seed=7)
    server = EspSimServer(boards, registry_dir=station.registry).start()
    try:
        assert station.run("cloud", "down").returncode == 0
        down = station.run(*station.provision_args())
        assert down.returncode == 0, down.stderr
        assert "registration pending for 3 board(s)" in down.stderr
        rows = registrations(station)
        # the grace waited for one attempt per row, not for the backoff's retries
        assert [(action, state, attempts) for _, action, state, attempts in rows] == [("register", "pending", 1)] * 3

        assert station.cloud_up().returncode == 0
        synced = station.run("cloud", "sync")
        assert synced.returncode == 0 and synced.stdout.startswith("3 sent; 0 pending, 3 delivered"), synced.stdout
        assert len(station.broker_clients()) == 3

        again = station.run(*station.provision_args())  # the same boards: refused, nothing sent again
        assert again.stderr.count("already provisioned") == 3
        assert [(action, state) for _, action, state, _ in registrations(station)] == [("register", "delivered")] * 3
    finally:
        server.stop()


def test_void_from_the_command_line_shuts_the_board_out_at_the_tls_handshake(station):
    boards = demo_fleet(2, seed=8)
    server = EspSimServer(boards, registry_dir=station.registry).start()
    try:
        assert station.run(*station.provision_args()).returncode == 0
    finally:
        server.stop()
    trust = station.data / "cloud" / "broker" / "ca-chain.pem"
    files = [device_files(b, station.data.parent / "devices") for b in boards]
    files = [DeviceFiles(f.cn, f.cert, f.cert_path, f.key_path, trust) for f in files]
    assert [tls_refusal(f, station.device_port) for f in files] == [None, None]

    listing = station.run("devices").stdout
    victim = next(line.split()[0] for line in listing.splitlines() if boards[0].mac_text in line)
    voided = station.run("void", victim, "--reason", "returned as faulty")
    assert voided.returncode == 0 and "removal from mosquitto queued" in voided.stdout, voided.stderr
    synced = station.run("cloud", "sync")
    assert synced.returncode == 0 and synced.stdout.startswith("1 sent; 0 pending"), synced.stdout + synced.stderr

    assert "REVOKED" in (tls_refusal(files[0], station.device_port) or "").upper()
    assert tls_refusal(files[1], station.device_port) is None  # the other board still gets in
    assert station.broker_clients() == {files[1].cn}


def test_a_reprovisioned_boards_old_certificate_is_shut_out_and_its_new_one_gets_in(station):
    boards = demo_fleet(1, seed=9)
    server = EspSimServer(boards, registry_dir=station.registry).start()
    trust = station.data / "cloud" / "broker" / "ca-chain.pem"
    try:
        assert station.run(*station.provision_args()).returncode == 0
        old = device_files(boards[0], station.data.parent / "old")
        again = station.run(*station.provision_args("--reprovision"))
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        server.stop()
    new = device_files(boards[0], station.data.parent / "new")
    old, new = (DeviceFiles(f.cn, f.cert, f.cert_path, f.key_path, trust) for f in (old, new))
    assert old.cn == new.cn and old.cert.serial_number != new.cert.serial_number

    assert "REVOKED" in (tls_refusal(old, station.device_port) or "").upper()
    assert tls_refusal(new, station.device_port) is None
    assert station.broker_clients() == {new.cn}
    listing = station.run("devices").stdout
    assert listing.count(boards[0].mac_text) == 2  # both records stay; the first one's identity is void
    with station.db() as db:
        identities = [json.loads(i) for (i,) in db.execute("SELECT identity FROM devices ORDER BY started")]
    assert [i["void"] for i in identities] == [True, False]


class Unreachable:
    """A registrar whose cloud never answers (a broker that is down, a void it can't carry out)."""

    name = "mosquitto"

    def __init__(self):
        self.calls = 0

    def register(self, device: DeviceRegistration) -> RegistrationResult:
        self.calls += 1
        raise CloudError("the broker did not answer")

    void = register


def test_an_undeliverable_void_does_not_hold_up_a_later_run(tmp_path):
    """The grace after a batch waits for an attempt at each row, not for the backoff's retries."""
    journal = Journal(tmp_path / "journal.sqlite3")
    profile = load_profile(PROFILE)
    registrar = Unreachable()
    engine = Engine(profile, Discovery([]), journal, operator="t", station_id="s", psk="x" * 8,
                    registrars={"mosquitto": registrar})
    try:
        cert_pem = _self_signed_pem()
        engine.outbox.enqueue_void(DeviceRegistration("d" * 32, certificate_pem=cert_pem), "mosquitto")
        assert asyncio.run(engine.settle_registrations(timeout=600)) == 1
        (row,) = engine.outbox.rows()
    finally:
        engine.close()
        journal.close()
    assert registrar.calls == 1 and row.attempts == 1 and row.state == "pending"


def _self_signed_pem() -> str:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "240AC4000001")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()
