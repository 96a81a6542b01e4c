"""Test PKI for the cloud tests (a root + issuing CA made with `cryptography`, device certificates), and the
checks of the broker's own TLS material: its server certificate and the CRL."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from station.cloud import BrokerError
from station.cloud.tls import IssuingCA, check_issuing_ca, issue_server_certificate, make_crl, \
    server_certificate_fits


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(ca: bool, crl_sign: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca and crl_sign,
                         encipher_only=False, decipher_only=False)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(name: str = "Test", crl_sign: bool = True) -> IssuingCA:
    """A root CA and an issuing CA under it, as the station CA has them."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(_name(f"{name} Root CA")).issuer_name(_name(f"{name} Root CA"))
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(days=1)).not_valid_after(_now() + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_key_usage(True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    issuing = (x509.CertificateBuilder().subject_name(_name(f"{name} Issuing CA")).issuer_name(root.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_now() - dt.timedelta(days=1)).not_valid_after(_now() + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(True, crl_sign), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                              critical=False)
               .sign(root_key, hashes.SHA256()))
    return IssuingCA(issuing, key, (issuing, root))


@dataclass(frozen=True)
class DeviceFiles:
    cn: str
    cert: x509.Certificate
    cert_path: Path
    key_path: Path
    ca_path: Path  # what the device trusts for the broker: the station's chain

    @property
    def serial(self) -> int:
        return self.cert.serial_number


def make_device(ca: IssuingCA, cn: str, folder: Path) -> DeviceFiles:
    """A device key + certificate (subject CN = cn, clientAuth) issued by `ca`, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                                     x509.NameAttribute(NameOID.SERIAL_NUMBER, f"SN-{cn}")]))
            .issuer_name(ca.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(days=1)).not_valid_after(_now() + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{cn}-{cert.serial_number % 10**8}"
    cert_path, key_path, ca_path = folder / f"{tag}.crt", folder / f"{tag}.key", folder / f"{tag}-ca.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ca_path.write_bytes(ca.trust_pem())
    return DeviceFiles(cn, cert, cert_path, key_path, ca_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable_tempdir() -> Path:
    """A temp dir the broker's unprivileged user can pass through when the tests run as root (pytest's own
    tmp_path sits under a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="station-cloud-", dir="/tmp"))
    os.chmod(path, 0o711)
    return path


class MqttDevice:
    """A device's MQTT v5 session over mutual TLS (paho-mqtt), with blocking helpers that wait on the
    broker's answers (CONNACK, PUBACK, SUBACK, messages), never on time."""

    def __init__(self, files: DeviceFiles, port: int, timeout: float = 10.0):
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.timeout = timeout
        self.port = port
        self._cond = threading.Condition()
        self.connack = None
        self.disconnected = None
        self.acks: dict[int, object] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{files.cn}-{os.getpid()}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(files.ca_path), certfile=str(files.cert_path), keyfile=str(files.key_path))
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _set(self, fn):
        with self._cond:
            fn()
            self._cond.notify_all()

    def _on_connect(self, _c, _u, _f, reason, _p):
        self._set(lambda: setattr(self, "connack", reason))

    def _on_ack(self, _c, _u, mid, reason, _p):
        self._set(lambda: self.acks.__setitem__(mid, reason))

    def _on_subscribe(self, _c, _u, mid, reasons, _p):
        self._set(lambda: self.acks.__setitem__(mid, reasons[0]))

    def _on_message(self, _c, _u, msg):
        self._set(lambda: self.messages.append((msg.topic, msg.payload)))

    def _on_disconnect(self, _c, _u, _f, reason, _p):
        self._set(lambda: setattr(self, "disconnected", reason))

    def wait(self, condition, what: str):
        with self._cond:
            if not self._cond.wait_for(condition, self.timeout):
                raise AssertionError(f"timed out waiting for {what}")

    def connect(self):
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        self.wait(lambda: self.connack is not None or self.disconnected is not None, "CONNACK")
        return self.connack

    def publish(self, topic: str, payload: bytes = b"hello") -> int:
        info = self.client.publish(topic, payload, qos=1)
        self.wait(lambda: info.mid in self.acks, f"PUBACK for {topic}")
        return self.acks[info.mid].value

    def subscribe(self, topic: str) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        self.wait(lambda: mid in self.acks, f"SUBACK for {topic}")
        return self.acks[mid].value

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


MQTT_CONNECT = bytes([0x10, 0x12, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x06]) + b"probe1"


def tls_refusal(files: DeviceFiles, port: int) -> str | None:
    """Connect with the device's certificate and send an MQTT CONNECT. None if the broker answered with a
    CONNACK; else why the TLS session was refused (OpenSSL's reason, e.g. SSLV3_ALERT_CERTIFICATE_REVOKED).
    TLS 1.2, as the boards speak it: the server checks the client certificate inside the handshake, so a
    refusal is the handshake's alert. (With TLS 1.3 the client's handshake is done before the server has
    judged its certificate, and the alert may be lost in the close.)"""
    import ssl

    context = ssl.create_default_context(cafile=str(files.ca_path))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert_path), str(files.key_path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(MQTT_CONNECT)
                answer = tls.recv(4)
        except ssl.SSLError as exc:
            return exc.reason or str(exc)
        except ConnectionResetError:
            return "connection reset"
    return None if answer[:1] == b"\x20" else f"no CONNACK but {answer!r}"


@pytest.fixture
def open_dir():
    path = reachable_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- tests of station.cloud.tls ---------------------------------------------------------------------------

def test_server_certificate_chains_to_the_station_ca_and_names_the_hosts():
    ca = make_ca()
    key, cert = issue_server_certificate(ca.certificate, ca.key, ["localhost", "127.0.0.1", "station.local"])
    cert.verify_directly_issued_by(ca.certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "station.local"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert server_certificate_fits(cert, ca.certificate, ["localhost", "127.0.0.1"])
    assert not server_certificate_fits(cert, ca.certificate, ["other.example"])
    assert not server_certificate_fits(cert, make_ca("Other").certificate, ["localhost"])


def test_crl_lists_revoked_serials_and_is_signed_by_the_issuing_ca():
    ca = make_ca()
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    crl = make_crl(ca.certificate, ca.key, [(0x1234, when)], number=7, last_update=when)
    assert crl.is_signature_valid(ca.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(0x1234) is not None
    assert crl.get_revoked_certificate_by_serial_number(0x9999) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.next_update_utc > when + dt.timedelta(days=300)


def test_an_issuing_ca_that_cannot_sign_crls_is_refused_with_the_reason():
    with pytest.raises(BrokerError, match="cRLSign"):
        check_issuing_ca(make_ca(crl_sign=False).certificate)
    check_issuing_ca(make_ca().certificate)
