"""The local cloud's firmware update server, asked as Arduino's ESP8266httpUpdate client asks, with the client
certificates provisioned boards carry in their (emulated) flash; and `station ota publish`'s checks."""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import ssl
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from station.cloud.broker import issuing_ca_from
from station.cloud.ota import OtaError, current, ota_dir, publish
from station.cloud.tls import issue_server_certificate
from station.cloud.update_server import UpdateServer, UpdateServerConfig
from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.families.esp.payloads.littlefs import CLIENT_CERT_PATH, CLIENT_KEY_PATH, read_fs
from station.families.esp.profile import identity_target
from station.families.esp.signed_image import sign_image
from station.families.esp.sim.board import EspBoard
from station.families.esp.sim.firmware import make_app_image
from station.families.esp.sim.server import EspSimServer
from station.identity.ca import StationCA
from station.journal import Journal
from station.profile_library import shipped_profiles_dir
from station.profiles import load_profile
from station.voiding import void_device

PROFILE = shipped_profiles_dir() / "esp8266-ota-switch.toml"
CHANNEL = "esp8266-ota-switch"
PEM = serialization.Encoding.PEM
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NEW_APP = make_app_image("ESP8266", "ota-switch", "2.2.0", size=40 * 1024, arduino=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three ESP8266 boards provisioned with the shipped OTA profile (identity in LittleFS); the third voided.
    Yields (data dir, CA, [(certificate PEM file, key PEM file)] read out of each board's flash)."""
    data = tmp_path_factory.mktemp("data")
    ca = StationCA.ephemeral()
    profile = load_profile(PROFILE)
    boards = [EspBoard("esp8266", n) for n in (1, 2, 3)]
    journal = Journal(data / "journal.sqlite3")
    with EspSimServer(boards, registry_dir=data / "registry"):
        engine = Engine(profile, Discovery([SimPortSource(data / "registry")]), journal, operator="tester",
                        station_id="station-t", psk="switches passphrase", ca=ca)
        try:
            summary = asyncio.run(engine.run_batch())
        finally:
            engine.close()
    assert len(summary.passed) == 3
    _, part = identity_target(profile.options["esp"], profile.firmware["ESP8266"])
    identities = []
    for n, board in enumerate(boards):
        files = read_fs(board.flash.read(part.offset, part.size), 8192, 32)  # what the firmware will load
        cert = data / f"board{n}.pem"
        key = data / f"board{n}.key"
        cert.write_bytes(x509.load_der_x509_certificate(files[CLIENT_CERT_PATH]).public_bytes(PEM))
        key.write_bytes(serialization.load_der_private_key(files[CLIENT_KEY_PATH], None).private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        identities.append((cert, key))
    voided = next(d for d in journal.devices() if d.mac == boards[2].mac_text)
    void_device(journal, voided.id, "returned by the customer")
    journal.close()
    return data, ca, identities


@contextmanager
def serving(fleet, folder: Path, client_certs: bool = True):
    """The update server on loopback; stopped when the block ends."""
    data, ca, _ = fleet
    key, cert = issue_server_certificate(ca.issuing, ca.issuing_key, ["127.0.0.1"])
    (folder / "server.pem").write_bytes(cert.public_bytes(PEM) + ca.issuing.public_bytes(PEM))
    (folder / "server.key").write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    config = UpdateServerConfig("127.0.0.1", 0, str(folder / "ota"), str(data / "journal.sqlite3"), client_certs)
    srv = UpdateServer(config, folder / "server.pem", folder / "server.key", issuing_ca_from(ca).trust_pem())
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.fixture
def server(fleet, tmp_path):
    """Client certificates on."""
    with serving(fleet, tmp_path) as srv:
        yield srv


def published(srv: UpdateServer, version: str = "2.2.0") -> bytes:
    signed = sign_image(NEW_APP, SIGNING_KEY)
    publish(Path(srv.config.ota_dir), CHANNEL, signed, SIGNING_KEY.public_key(), version, "ota-switch.bin.signed")
    return signed


def ask(srv: UpdateServer, ca: StationCA, identity: tuple[Path, Path] | None, version: str = "2.1.0",
        sketch_md5: str = "0" * 32) -> http.client.HTTPResponse:
    """GET as ESP8266httpUpdate sends it (§11.5), over TLS trusting the station's root as the board does."""
    context = ssl.create_default_context(cadata=ca.root.public_bytes(PEM).decode())
    if identity is not None:
        context.load_cert_chain(*identity)
    conn = http.client.HTTPSConnection("127.0.0.1", srv.server_address[1], context=context, timeout=10)
    conn.request("GET", f"/ota/{CHANNEL}", headers={
        "User-Agent": "ESP8266-http-Update", "x-ESP8266-Chip-ID": "1234567",
        "x-ESP8266-STA-MAC": "5C:CF:7F:00:00:01", "x-ESP8266-AP-MAC": "5E:CF:7F:00:00:01",
        "x-ESP8266-free-space": "950272", "x-ESP8266-sketch-size": "290000", "x-ESP8266-sketch-md5": sketch_md5,
        "x-ESP8266-chip-size": "4194304", "x-ESP8266-sdk-version": "2.2.2-dev(38a443e)",
        "x-ESP8266-mode": "sketch", "x-ESP8266-version": version})
    response = conn.getresponse()
    response.body = response.read()
    conn.close()
    return response


def test_a_board_with_its_own_certificate_gets_the_published_firmware(fleet, server):
    _, ca, identities = fleet
    signed = published(server)
    answer = ask(server, ca, identities[0])
    assert answer.status == 200 and answer.body == signed
    assert int(answer.getheader("Content-Length")) == len(signed)
    assert answer.getheader("x-MD5") == hashlib.md5(signed).hexdigest()


def test_a_voided_boards_certificate_is_refused(fleet, server):
    _, ca, identities = fleet
    published(server)
    answer = ask(server, ca, identities[2])
    assert answer.status == 403 and b"voided" in answer.body


def test_a_board_on_the_current_version_gets_304(fleet, server):
    _, ca, identities = fleet
    published(server, version="2.2.0")
    assert ask(server, ca, identities[1], version="2.2.0").status == 304
    # a firmware that sends no version string is told by its sketch MD5 (the signed payload's)
    assert ask(server, ca, identities[1], version="", sketch_md5=hashlib.md5(NEW_APP).hexdigest()).status == 304


def test_nothing_published_is_404_and_no_client_certificate_gets_no_tls_session(fleet, server):
    _, ca, identities = fleet
    assert ask(server, ca, identities[0]).status == 404
    published(server)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ask(server, ca, None)


def test_with_client_certificates_off_any_board_is_served(fleet, tmp_path):
    _, ca, identities = fleet
    with serving(fleet, tmp_path, client_certs=False) as srv:
        signed = published(srv)
        assert ask(srv, ca, None).body == signed
        assert ask(srv, ca, identities[2]).status == 200  # not asked for, so not checked


def test_publish_refuses_unsigned_and_wrongly_signed_files_and_keeps_the_current_release(tmp_path):
    root = ota_dir(tmp_path)
    good = publish(root, CHANNEL, sign_image(NEW_APP, SIGNING_KEY), SIGNING_KEY.public_key(), "2.2.0", "good.bin")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for data, why in ((NEW_APP, "not signed"), (sign_image(NEW_APP, other), "does not verify")):
        with pytest.raises(OtaError) as err:
            publish(root, CHANNEL, data, SIGNING_KEY.public_key(), "9.9.9", "bad.bin")
        assert "bad.bin" in str(err.value) and why in str(err.value) and "Nothing was published" in str(err.value)
    not_an_app = sign_image(b"\x00" * 4096, SIGNING_KEY)
    with pytest.raises(OtaError, match="0xE9"):
        publish(root, CHANNEL, not_an_app, SIGNING_KEY.public_key(), "9.9.9", "zeros.bin")
    release, path = current(root, CHANNEL)
    assert release == good and path.read_bytes() == sign_image(NEW_APP, SIGNING_KEY)
    assert json.loads((root / CHANNEL / "current.json").read_text())["version"] == "2.2.0"


def write_signed_profile(folder: Path, signing_key: bool = True) -> Path:
    """An ESP8266 Arduino profile whose firmware checks updates with SIGNING_KEY's public key."""
    app = sign_image(make_app_image("ESP8266", "ota-switch", "2.1.0", size=40 * 1024, arduino=True), SIGNING_KEY)
    (folder / "app.bin.signed").write_bytes(app)
    (folder / "public.key").write_bytes(SIGNING_KEY.public_key().public_bytes(
        PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    path = folder / "relay-node.toml"
    path.write_text(f'''
[profile]
name = "Relay node"

[[firmware]]
chip = "ESP8266"
{'signing_key = "public.key"' if signing_key else ''}

[[firmware.images]]
offset = 0x0
kind = "app"
file = "app.bin.signed"
sha256 = "{hashlib.sha256(app).hexdigest()}"
''')
    return path


def test_ota_publish_checks_the_file_under_the_profiles_signing_key(tmp_path):
    from click.testing import CliRunner

    from station.cli import main

    profile = write_signed_profile(tmp_path)
    good, forged = tmp_path / "2.2.0.bin.signed", tmp_path / "forged.bin.signed"
    good.write_bytes(sign_image(NEW_APP, SIGNING_KEY))
    forged.write_bytes(sign_image(NEW_APP, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    data = tmp_path / "data"

    def run(*args: str):
        return CliRunner().invoke(main, ["--data-dir", str(data), "ota", "publish", *args])

    done = run(str(good), "--profile", str(profile), "--version", "2.2.0")
    assert done.exit_code == 0, done.output
    assert "published 2.2.0.bin.signed as version 2.2.0 of relay-node" in done.output
    refused = run(str(forged), "--profile", str(profile), "--version", "6.6.6")
    assert refused.exit_code == 1 and "does not verify" in refused.output and "Traceback" not in refused.output
    release, path = current(ota_dir(data), "relay-node")
    assert release.version == "2.2.0" and path.read_bytes() == good.read_bytes()

    (tmp_path / "other").mkdir()
    unsigned_profile = write_signed_profile(tmp_path / "other", signing_key=False)
    nokey = run(str(good), "--profile", str(unsigned_profile), "--version", "2.2.0")
    assert nokey.exit_code == 1 and "signing_key" in nokey.output


def test_a_busy_update_port_is_refused_in_one_line_before_anything_starts(tmp_path):
    import socket

    from station.cloud import BrokerError
    from station.cloud.update_server import UpdateService

    ca = StationCA.ephemeral()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        service = UpdateService(tmp_path / "update-server", UpdateServerConfig(
            "127.0.0.1", port, str(tmp_path / "ota"), str(tmp_path / "journal.sqlite3"), True),
            issuing_ca_from(ca), ["127.0.0.1"])
        with pytest.raises(BrokerError) as err:
            service.up()
    assert f"port {port}" in str(err.value) and "--ota-port" in str(err.value) and "\n" not in str(err.value)
    assert service.running_pid() is None
