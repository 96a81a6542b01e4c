"""The on-board identity agent: the station's AgentClient against an emulated ESP32 whose flashed app runs it."""
from __future__ import annotations

import datetime
import hashlib
import zlib
from contextlib import closing, contextmanager

import esptool.cmds
import pytest
import serial
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from esptool.reset import ClassicReset, HardReset

from station.identity import agent as proto
from station.identity.agent import AgentClient, AgentError
from station.families.esp.session import EspSession
from station.families.esp.payloads.partition_table import (
    SUBTYPE_APP_FACTORY, SUBTYPE_DATA_NVS, SUBTYPE_DATA_PHY, TYPE_APP, TYPE_DATA, TYPE_ESP_SECURE_CERT, Partition,
)
from station.families.esp.payloads.secure_cert import CA_CERT, DEV_CERT, PRIV_KEY, read_secure_cert
from station.families.esp.sim import agent as sim_agent
from station.families.esp.sim.agent import AGENT_MARKER, AgentIdentity, AgentMode
from station.families.esp.sim.board import EspBoard, EspFaults, IdleAppMode
from station.families.esp.sim.server import EspSimServer
from station.families.esp.sim.firmware import (
    make_app_image, make_bootloader_image, make_partition_table, ota_partitions,
)

SECURE_CERT_AT = 0xD000
PARTITIONS = [Partition("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, 0x9000, 0x4000),
              Partition("esp_secure_cert", TYPE_ESP_SECURE_CERT, 0, SECURE_CERT_AT, 0x2000),
              Partition("phy_init", TYPE_DATA, SUBTYPE_DATA_PHY, 0xF000, 0x1000),
              Partition("factory", TYPE_APP, SUBTYPE_APP_FACTORY, 0x10000, 0x100000)]
SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
FAST = 0.3  # seconds the client waits per try in the failure tests


def firmware(agent: bool = True) -> list[tuple[int, bytes]]:
    return [(0x1000, make_bootloader_image("ESP32")), (0x8000, make_partition_table(PARTITIONS)),
            (0x10000, make_app_image("ESP32", "sensor-agent", "1.0.0", size=64 * 1024, identity_agent=agent))]


def flashed(agent: bool = True, faults: EspFaults | None = None) -> EspBoard:
    """An ESP32 whose flash already holds the firmware (as if flashed before): it boots into it when plugged."""
    board = EspBoard("esp32", 1, faults=faults)
    for offset, data in firmware(agent):
        board.flash.program(offset, data)
    return board


@contextmanager
def agent_on(board: EspBoard, timeout: float = 2.0, wrap=None):
    with EspSimServer([board]) as server, closing(serial.serial_for_url(server.station_urls[0])) as port:
        yield AgentClient(wrap(port) if wrap else port, timeout=timeout)


class MakerCA:
    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Manufacturer CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now)
                     .not_valid_after(now + datetime.timedelta(days=365))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.der = self.cert.public_bytes(serialization.Encoding.DER)

    def issue(self, public_key, subject: x509.Name) -> bytes:
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.DER)


def serial_of(name: x509.Name) -> list[str]:
    return [a.value for a in name.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]


class Flaky:
    """A serial line that damages one frame: the next one written (`writes`) or read (`reads`)."""

    def __init__(self, port, writes: bool = False, reads: bool = False):
        self.port, self.damage_write, self.damage_read = port, writes, reads
        self.written: list[bytes] = []
        self.heard = bytearray()
        self._scan_from = 0

    def __getattr__(self, name):
        return getattr(self.port, name)

    def __setattr__(self, name, value):
        if name == "timeout":
            self.port.timeout = value
        else:
            super().__setattr__(name, value)

    def write(self, data: bytes) -> int:
        self.written.append(bytes(data))
        if self.damage_write:
            self.damage_write = False
            data = data[:3] + bytes((data[3] ^ 0x40,)) + data[4:]  # a flipped bit in the type byte
        return self.port.write(data)

    def read(self, size: int = 1) -> bytes:
        data = bytearray(self.port.read(size))
        start = len(self.heard)
        self.heard += data
        while self.damage_read:  # flip the first payload byte of the next frame (its magic may have come earlier)
            at = self.heard.find(proto.MAGIC, self._scan_from)
            if at < 0 or at + 8 >= len(self.heard):
                break
            if at + 8 >= start:  # not yet handed to the client
                data[at + 8 - start] ^= 0x01
                self.heard[at + 8] ^= 0x01
                self.damage_read = False
            self._scan_from = at + 2
        return bytes(data)


# --- the station's flow --------------------------------------------------------------------------------------------


def test_station_flashes_resets_and_the_board_makes_its_key_gets_its_chain_and_commits():
    board = EspBoard("esp32", 1)
    ca = MakerCA()
    with EspSimServer([board]) as server:
        url = server.station_urls[0]
        session = EspSession(url, lambda level, message: None, lambda done, total: None)
        session.connect(baud=921600)
        session.write(firmware())
        session.verify(firmware())
        session.reset()  # RTS pulse over espsim://: EN low, released with IO0 high -> the app boots
        assert board.wait_for_app_boot(timeout=5) and isinstance(board.mode, AgentMode)

        with closing(serial.serial_for_url(url)) as port:
            client = AgentClient(port, timeout=2)
            info = client.get_info()
            assert (info.state, info.chip, info.mac, info.key_types) == ("fresh", "ESP32", board.mac_text, ("P-256",))
            assert (info.firmware, info.protocol, info.chain_stored) == ("sensor-agent 1.0.0", 1, False)

            public = client.generate_key("SN-0042")
            csr = client.get_csr()
            assert csr.is_signature_valid and serial_of(csr.subject) == ["SN-0042"]
            assert csr.public_key().public_bytes(*SPKI) == public.public_bytes(*SPKI)
            assert client.get_info().state == "keyed" and client.get_info().subject_serial == "SN-0042"

            device = ca.issue(csr.public_key(), csr.subject)
            client.put_chain([device], [ca.der])
            assert client.get_info().chain_stored
            client.commit()
            assert client.get_info().state == "committed"

            with pytest.raises(AgentError) as refused:
                client.generate_key("SN-0043")
            assert (refused.value.kind, refused.value.code) == ("refused", proto.E_COMMITTED)
            assert "refused GENERATE_KEY: its identity is already committed" in str(refused.value)
            with pytest.raises(AgentError, match="refused PUT_CHAIN: its identity is already committed"):
                client.put_chain([device], [ca.der])

            HardReset(port)()  # the committed flag and the key survive a reset
            client = AgentClient(port, timeout=2)
            assert client.get_info().state == "committed"

    # the board wrote its identity into its own esp_secure_cert partition; the host never saw the key
    tlvs = read_secure_cert(board.flash.read(SECURE_CERT_AT, 0x2000))
    pem = serialization.Encoding.PEM
    assert tlvs[(DEV_CERT, 0)] == x509.load_der_x509_certificate(device).public_bytes(pem) + b"\0"
    assert tlvs[(CA_CERT, 0)] == ca.cert.public_bytes(pem) + b"\0"
    stored_key = serialization.load_pem_private_key(tlvs[(PRIV_KEY, 0)].rstrip(b"\0"), None)
    assert stored_key.public_key().public_bytes(*SPKI) == public.public_bytes(*SPKI)
    assert board.identity.key.public_key().public_bytes(*SPKI) == public.public_bytes(*SPKI)


def test_esptool_hard_reset_on_the_same_port_hands_the_line_to_the_agent():
    board = EspBoard("esp32", 1)
    with EspSimServer([board]) as server, closing(serial.serial_for_url(server.station_urls[0])) as port:
        esp = esptool.cmds.detect_chip(port, connect_mode="default-reset", connect_attempts=3)
        esp = esptool.cmds.run_stub(esp)
        esptool.cmds.attach_flash(esp)
        esptool.cmds.write_flash(esp, firmware(), flash_freq="keep", flash_mode="keep", flash_size="keep")
        esptool.cmds.reset_chip(esp, "hard-reset")
        info = AgentClient(port, timeout=2).get_info()  # the app's boot log comes first and is skipped
        assert info.state == "fresh" and info.firmware == "sensor-agent 1.0.0"
        ClassicReset(port)()  # and back to the ROM loader, on the same port
        assert b"waiting for download" in port.read(port.in_waiting)


def test_an_esp8266_ota_app_with_the_agent_answers_too():
    board = EspBoard("esp8266", 1)
    for offset, data in [(0x0, make_bootloader_image("ESP8266")), (0x8000, make_partition_table(ota_partitions())),
                         (0x10000, make_app_image("ESP8266", "ota-switch", "2.2.0", identity_agent=True))]:
        board.flash.program(offset, data)
    with agent_on(board) as client:
        info = client.get_info()
    assert (info.chip, info.firmware, info.state) == ("ESP8266", "", "fresh")  # no esp_app_desc_t on the 8266


def test_requests_in_the_wrong_order_are_refused_with_their_reasons():
    ca = MakerCA()
    with agent_on(flashed()) as client:
        with pytest.raises(AgentError, match=r"refused GET_CSR: no key yet; send GENERATE_KEY first .*NO_KEY"):
            client.get_csr()
        client.generate_key("SN-7")
        with pytest.raises(AgentError, match="refused COMMIT: no certificate chain stored") as no_chain:
            client.commit()
        assert no_chain.value.code == proto.E_NO_CHAIN
        stranger = ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key(),
                            x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-7")]))
        with pytest.raises(AgentError, match="not for this board's key") as mismatch:
            client.put_chain([stranger], [ca.der])
        assert mismatch.value.code == proto.E_CERT_MISMATCH
        other_serial = ca.issue(client.get_csr().public_key(),
                                x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-8")]))
        with pytest.raises(AgentError, match="subject serialNumber is not SN-7"):
            client.put_chain([other_serial], [ca.der])
        with pytest.raises(ValueError, match="PrintableString"):
            client.generate_key("SN_7")  # '_' is not a PrintableString character: caught before sending
        assert client.get_info().state == "keyed"


def test_generate_key_again_before_commit_replaces_the_key():
    board = flashed()
    with agent_on(board) as client:
        first = client.generate_key("SN-1").public_bytes(*SPKI)
        second = client.generate_key("SN-2").public_bytes(*SPKI)
        assert first != second and serial_of(client.get_csr().subject) == ["SN-2"]
    assert board.identity.key.public_key().public_bytes(*SPKI) == second


# --- a noisy line: retries with the same sequence number -----------------------------------------------------------


def test_a_damaged_answer_is_asked_for_again_and_the_board_makes_only_one_key(monkeypatch):
    made = []
    generate = ec.generate_private_key
    monkeypatch.setattr(sim_agent.ec, "generate_private_key", lambda curve: made.append(generate(curve)) or made[-1])
    board = flashed()
    with agent_on(board, wrap=lambda port: Flaky(port, reads=True)) as client:
        client.get_info()
        client.port.damage_read = True
        key = client.generate_key("SN-9")  # first answer damaged -> same request again -> the remembered answer
        requests = [w for w in client.port.written if w[3] == proto.GENERATE_KEY]
    assert len(requests) == 2 and requests[0] == requests[1]  # same seq: the agent recognises the retry
    assert len(made) == 1 and board.identity.key is made[0]
    assert made[0].public_key().public_bytes(*SPKI) == key.public_bytes(*SPKI)


def test_a_damaged_request_gets_a_crc_error_and_is_sent_again():
    with agent_on(flashed(), timeout=30, wrap=lambda port: Flaky(port, writes=True)) as client:
        assert client.get_info().state == "fresh"
        first, again = client.port.written
        assert first == again
        crc_error = proto.encode_frame(proto.ERROR, first[4], bytes((proto.E_CRC,)) + b"request failed its CRC-32 check")
        assert crc_error in client.port.heard  # answered at once, not left to the 30 s timeout


def test_a_frame_of_another_protocol_version_is_refused_by_both_ends():
    class Version2(Flaky):
        def write(self, data: bytes) -> int:
            body = bytes((2,)) + data[3:-4]
            return self.port.write(proto.MAGIC + body + zlib.crc32(body).to_bytes(4, "little"))

    with agent_on(flashed(), wrap=Version2) as client:
        with pytest.raises(AgentError, match="does not speak protocol version 1") as info:
            client.get_info()
    assert (info.value.kind, info.value.code) == ("protocol", proto.E_VERSION)


# --- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "kind", "words"), [
    ("agent_garbage", "garbage", "Garbage on the line"),
    ("agent_silent", "timeout", "No provisioning agent answered GET_INFO"),
    ("agent_bad_crc", "crc", "failed the CRC-32 check 3 times"),
])
def test_a_broken_agent_gives_a_plain_reason(fault, kind, words):
    board = flashed(faults=EspFaults().with_fault(fault))
    with agent_on(board, timeout=FAST) as client:
        with pytest.raises(AgentError) as failed:
            client.get_info()
    assert failed.value.kind == kind and words in str(failed.value)


def test_commit_refused_by_the_board_leaves_it_keyed_and_open_to_a_new_try():
    ca = MakerCA()
    board = flashed(faults=EspFaults(agent_commit_refused=True))
    with agent_on(board) as client:
        csr = (client.generate_key("SN-5"), client.get_csr())[1]
        client.put_chain([ca.issue(csr.public_key(), csr.subject)], [ca.der])
        with pytest.raises(AgentError, match="refused COMMIT: secure storage write failed") as refused:
            client.commit()
        assert (refused.value.kind, refused.value.code) == ("refused", proto.E_STORAGE)
        assert client.get_info().state == "keyed"
        client.generate_key("SN-5")  # not committed: a new key may still be made
    assert not board.identity.committed
    assert board.flash.read(SECURE_CERT_AT, 16) == b"\xff" * 16


def test_an_app_without_the_agent_never_answers():
    board = flashed(agent=False)
    with agent_on(board, timeout=FAST) as client:
        client.port.dtr = False
        HardReset(client.port)()  # as after flashing: the app prints its boot log, then nothing
        with pytest.raises(AgentError) as failed:
            client.get_info()
        assert isinstance(board.mode, IdleAppMode) and board.identity is None
    assert failed.value.kind == "timeout"
    message = str(failed.value)
    assert message.startswith("No provisioning agent answered GET_INFO on espsim://127.0.0.1:")
    assert "within 0.3 s (3 tries); the board printed text (last line: 'I (63) boot: Loaded app from partition " \
           "at offset 0x10000')" in message


def test_the_declaration_is_only_in_images_built_with_the_agent():
    plain = make_app_image("ESP32", "sensor-agent", "1.0.0", size=64 * 1024)
    with_agent = make_app_image("ESP32", "sensor-agent", "1.0.0", size=64 * 1024, identity_agent=True)
    assert AGENT_MARKER not in plain and with_agent.count(AGENT_MARKER) == 1 and len(plain) == len(with_agent)
    assert hashlib.sha256(plain).digest() == hashlib.sha256(make_app_image(
        "ESP32", "sensor-agent", "1.0.0", size=64 * 1024, identity_agent=False)).digest()
    assert AgentIdentity().committed is False
