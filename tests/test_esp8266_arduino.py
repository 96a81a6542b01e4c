"""ESP8266 boards with Arduino firmware, emulated, end to end: the identity as files in SPIFFS at the flash
layout's filesystem, and signed firmware refused or flashed by its signature."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.families.esp.payloads.spiffs import read_spiffs
from station.families.esp.signed_image import key_fingerprint, sign_image
from station.families.esp.sim.board import EspBoard
from station.families.esp.sim.firmware import make_app_image
from station.families.esp.sim.server import EspSimServer
from station.identity.ca import StationCA
from station.journal import Journal
from station.manifest import device_records
from station.profile_library import shipped_profiles_dir
from station.profiles import ProfileError, load_profile
from tests.test_spiffs import scan_pages

SPIFFS_PROFILE = shipped_profiles_dir() / "esp8266-spiffs-node.toml"
FS_START, FS_END = 0x300000, 0x3FA000  # eagle.flash.4m1m.ld: _FS_start/_FS_end - 0x40200000
CA = StationCA.ephemeral()
PSK = "nodes in the loft 7"  # the shipped profile's network "nodes-2g", in range of every emulated board here


@pytest.fixture
def bench(tmp_path):
    servers = []

    def plug(boards):
        for board in boards:
            board.access_points = {"nodes-2g": PSK}
        servers.append(EspSimServer(boards, registry_dir=tmp_path / "registry").start())
        return servers[-1]

    yield plug
    for server in servers:
        server.stop()


def run_batch(profile, registry: Path, journal: Journal):
    engine = Engine(profile, Discovery([SimPortSource(registry)]), journal, operator="tester",
                    station_id="station-t", lot="LOT-1", ca=CA, psk=PSK)
    try:
        return asyncio.run(engine.run_batch())
    finally:
        engine.close()


def test_esp8266_boards_get_their_identity_files_in_spiffs(bench, tmp_path):
    profile = load_profile(SPIFFS_PROFILE)
    boards = [EspBoard("esp8266", n) for n in (1, 2, 3)]
    server = bench(boards)
    journal = Journal(tmp_path / "journal.sqlite3")

    summary = run_batch(profile, tmp_path / "registry", journal)

    assert summary.failed == {} and sorted(summary.passed) == sorted(server.locations)
    app = profile.firmware["ESP8266"].images[0]
    records = {r["mac"]: r for r in device_records(journal)}
    for board in boards:
        assert board.flash.read(0, len(app.data)) == app.data
        image = board.flash.read(FS_START, FS_END - FS_START)
        files = scan_pages(image, 8192)  # the page-header reader from test_spiffs, not the station's own
        assert files == read_spiffs(image, 8192)
        assert set(files) == {"/client.der", "/client.key", "/ca.der", "/broker.fp"}
        record = records[board.mac_text]["identity"]
        issued = x509.load_pem_x509_certificate(record["certificate"].encode())
        assert files["/client.der"] == issued.public_bytes(serialization.Encoding.DER)
        assert files["/ca.der"] == CA.root.public_bytes(serialization.Encoding.DER)
        key = serialization.load_der_private_key(files["/client.key"], None)
        assert key.public_key().public_numbers() == issued.public_key().public_numbers()
        assert files["/client.key"] == key.private_bytes(serialization.Encoding.DER,
                                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                                         serialization.NoEncryption())  # SEC1, as BearSSL reads
        assert files["/broker.fp"] == b"9B:0E:6F:21:37:5A:C4:D8:01:2E:73:AA:5C:90:B1:64:E2:7D:38:F5"
        assert record["store"] == "spiffs"
        assert board.wifi == ("nodes-2g", PSK)  # the sketch joined the profile's network, told by Improv
        assert board.flash.read(FS_END, 0x400000 - FS_END) == b"\xFF" * (0x400000 - FS_END)  # EEPROM, RF, Wi-Fi
        assert board.flash.read(len(app.data), FS_START - len(app.data)).count(b"\xFF") == FS_START - len(app.data)
    steps = {r["port"]: [s["detail"] for s in r["steps"] if s["name"] == "verify"] for r in records.values()}
    assert all("identity read back from spiffs (4M1M) (24 KiB)" in d[0] for d in steps.values())  # blocks in use


def test_a_1m64_board_gets_spiffs_of_4096_byte_blocks_with_a_certs_ar_trust_store(bench, tmp_path):
    from station.families.esp.payloads.littlefs import read_ar

    path = edited(tmp_path, 'ca = "/ca.der"', 'trust_store = "/certs.ar"')
    path.write_text(path.read_text().replace('flash_layout = "4M1M"', 'flash_layout = "1M64"'))
    boards = [EspBoard("esp8266", 1, flash_size="1MB")]
    bench(boards)
    summary = run_batch(load_profile(path), tmp_path / "registry", Journal(tmp_path / "j.sqlite3"))
    assert summary.failed == {}
    image = boards[0].flash.read(0xEB000, 0x10000)  # eagle.flash.1m64.ld: 0xEB000-0xFB000, blocks of 4096
    files = scan_pages(image, 4096)
    assert files == read_spiffs(image, 4096)
    assert set(files) == {"/client.der", "/client.key", "/certs.ar", "/broker.fp"}
    assert read_ar(files["/certs.ar"]) == [("ca_000.der", CA.root.public_bytes(serialization.Encoding.DER))]


def test_the_store_key_alone_moves_the_same_files_to_littlefs(bench, tmp_path):
    from station.families.esp.payloads.littlefs import read_fs

    profile = load_profile(edited(tmp_path, 'store = "spiffs"', 'store = "littlefs"'))
    boards = [EspBoard("esp8266", 1)]
    bench(boards)
    summary = run_batch(profile, tmp_path / "registry", Journal(tmp_path / "j.sqlite3"))
    assert summary.failed == {}
    files = read_fs(boards[0].flash.read(FS_START, FS_END - FS_START), 8192, 32)
    assert set(files) == {"/client.der", "/client.key", "/ca.der", "/broker.fp"}
    assert files["/ca.der"] == CA.root.public_bytes(serialization.Encoding.DER)


def test_a_board_with_less_flash_than_the_layout_is_refused_before_writing(bench, tmp_path):
    profile = load_profile(SPIFFS_PROFILE)
    boards = [EspBoard("esp8266", 1, flash_size="1MB")]
    bench(boards)
    summary = run_batch(profile, tmp_path / "registry", Journal(tmp_path / "j.sqlite3"))
    assert list(summary.failed.values()) == ["The 4M1M flash layout needs 4 MB of flash; this board has 1024 KiB"]
    assert boards[0].flash.read(0, 0x100000) == b"\xFF" * 0x100000


# --- signed firmware ------------------------------------------------------------------------------------------

APP = make_app_image("ESP8266", "mqtt-node", "1.0.1", size=64 * 1024, seed=9, arduino=True)
SIGNER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed_profile(folder: Path, signed_with: rsa.RSAPrivateKey) -> Path:
    """A profile naming SIGNER's public key, whose app is signed with `signed_with`."""
    import hashlib

    folder.mkdir(exist_ok=True)
    app = sign_image(APP, signed_with)
    (folder / "app.bin.signed").write_bytes(app)
    (folder / "public.key").write_bytes(SIGNER.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    path = folder / "signed.toml"
    path.write_text(f"""[profile]
name = "Signed node"

[[firmware]]
chip = "ESP8266"
signing_key = "public.key"

[[firmware.images]]
offset = 0x0
kind = "app"
file = "app.bin.signed"
sha256 = "{hashlib.sha256(app).hexdigest()}"
""")
    return path


def test_a_correctly_signed_app_is_flashed_and_its_signer_is_in_the_manifest(bench, tmp_path):
    profile = load_profile(signed_profile(tmp_path / "p", SIGNER))
    boards = [EspBoard("esp8266", 1)]
    bench(boards)
    journal = Journal(tmp_path / "j.sqlite3")

    summary = run_batch(profile, tmp_path / "registry", journal)

    assert summary.failed == {}
    signed = (tmp_path / "p" / "app.bin.signed").read_bytes()
    assert boards[0].flash.read(0, len(signed)) == signed
    (record,) = device_records(journal)
    (image,) = record["images"]
    assert image["signer_key_sha256"] == key_fingerprint(SIGNER.public_key())
    assert profile.firmware["ESP8266"].signing_key == SIGNER.public_key()


def test_an_app_signed_with_another_key_is_refused_before_the_first_byte(bench, tmp_path):
    profile = signed_profile(tmp_path / "p", OTHER)
    boards = [EspBoard("esp8266", 1)]
    bench(boards)
    env = {**os.environ, "STATION_OPERATOR": "alice"}
    run = subprocess.run([sys.executable, "-m", "station.cli", "--data-dir", str(tmp_path / "data"), "provision",
                          "--profile", str(profile), "--sim-registry", str(tmp_path / "registry")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    error = run.stderr.strip()
    assert "\n" not in error and "Traceback" not in error
    assert "app.bin.signed: the image's signature does not verify under the public key" in error
    assert "signed with another key" in error
    assert boards[0].flash.read(0, 0x400000) == b"\xFF" * 0x400000  # not a byte written


def test_an_unsigned_app_with_a_signing_key_is_refused_at_load(tmp_path):
    path = signed_profile(tmp_path / "p", SIGNER)
    (tmp_path / "p" / "app.bin.signed").write_bytes(APP)
    import hashlib

    text = path.read_text().replace(path.read_text().split('sha256 = "')[1][:64], hashlib.sha256(APP).hexdigest())
    path.write_text(text)
    with pytest.raises(ProfileError, match=r"\[firmware\[0\]\.images\[0\]\.file\] app\.bin\.signed: the image is "
                                           r"not signed for this key"):
        load_profile(path)


def test_a_signing_key_for_other_chips_is_refused(tmp_path):
    path = signed_profile(tmp_path / "p", SIGNER)
    path.write_text(path.read_text().replace('chip = "ESP8266"', 'chip = "ESP32"'))
    with pytest.raises(ProfileError, match="signing_key checks ESP8266 Arduino signed updates; ESP32 firmware"):
        load_profile(path)


# --- profile checks -------------------------------------------------------------------------------------------

def edited(tmp_path: Path, old: str, new: str) -> Path:
    import shutil

    shutil.copytree(shipped_profiles_dir() / "firmware", tmp_path / "firmware", dirs_exist_ok=True)
    text = SPIFFS_PROFILE.read_text()
    assert old in text
    path = tmp_path / "p.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old, new, words", [
    ('flash_layout = "4M1M"', "", "add flash_layout"),
    ('flash_layout = "4M1M"', 'flash_layout = "4M9M"', "not a known ESP8266 Arduino layout"),
    ('store = "spiffs"', 'store = "esp_secure_cert"', "set store = \"spiffs\" or \"littlefs\""),
    ('client_cert = "/client.der"', 'client_cert = "/a-name-far-too-long-for-spiffs.der"', "at most 31 bytes"),
    ('ca = "/ca.der"', 'ca = "/client.der"', "/client.der is named for two files"),
    ('fingerprint = "/broker.fp"', "", "broker_fingerprint needs a file"),
    ('"9B:0E:6F:21:37:5A', '"9B:0E:6F', "SHA-1 (40 hex digits) or SHA-256"),
    ('key_origin = "host"', 'key_origin = "board"', "key must be made on the host"),
    ('offset = 0x0', 'offset = 0x2F0000', "overlaps the 4M1M layout's filesystem"),
])
def test_spiffs_profile_mistakes_are_refused_by_name(tmp_path, old, new, words):
    with pytest.raises(ProfileError) as err:
        load_profile(edited(tmp_path, old, new))
    assert words in str(err.value) and "\n" not in str(err.value)
