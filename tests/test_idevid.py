"""IDevID certificates as a registrar, a broker and `openssl` see them; the ledger; the CSR path; [identity]."""
import base64
import re
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

import station.identity.idevid as idevid
from station.identity import CsrError, IdentityError, IdentityProfileError
from station.identity.ca import StationCA
from station.identity.idevid import (IdevidProfile, check_csr, host_identity, issue_idevid, parse_identity_table,
                                     public_jwk, render_serial)
from station.identity.ledger import AlreadyProvisionedError, DuplicateKeyError, Ledger, serial_hex
from station.journal import Journal

FACTS = {"chip": "ESP32", "mac": "24:0a:c4:12:34:56"}
WHERE = "profiles/sensor.toml [identity]"


@pytest.fixture(scope="module")
def ca():
    return StationCA.ephemeral("Test Factory")


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "journal.sqlite3") as led:
        yield led


@pytest.fixture(scope="module")
def pems(ca, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chain")
    for name, cert in (("root.pem", ca.root), ("issuing.pem", ca.issuing)):
        (folder / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder


def openssl(*args: str, data: bytes | None = None) -> str:
    done = subprocess.run(["openssl", *args], input=data, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def verify(pems: Path, cert: x509.Certificate) -> str:
    (pems / "dev.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return openssl("verify", "-CAfile", str(pems / "root.pem"), "-untrusted", str(pems / "issuing.pem"),
                   str(pems / "dev.pem"))


def text(cert: x509.Certificate) -> str:
    return openssl("x509", "-text", "-noout", data=cert.public_bytes(serialization.Encoding.PEM))


def facts(n: int) -> dict:
    return {"chip": "ESP32-C3", "mac": f"58:cf:79:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"}


# --- the certificate -------------------------------------------------------------------------------------------

def test_default_profile_is_the_rfc8995_shape(ca, ledger, pems):
    key, cert = host_identity(ca, IdevidProfile(key_origin="host"), FACTS, ledger)
    assert verify(pems, cert).strip().endswith("dev.pem: OK")
    out = text(cert)
    assert "Subject: serialNumber = ESP32-240AC4123456" in out
    assert "Not After : Dec 31 23:59:59 9999 GMT" in out
    assert "CA:FALSE" in out and "X509v3 Subject Key Identifier" in out and "X509v3 Authority Key Identifier" in out
    assert "Key Usage" not in out  # neither keyUsage nor extendedKeyUsage (RFC 8995 §2.3)
    assert "Subject Alternative Name" not in out and "1.3.6.1.5.5.7.1.32" not in out
    assert "NIST CURVE: P-256" in out and "Signature Algorithm: ecdsa-with-SHA256" in out
    assert cert.serial_number.bit_length() >= 64
    assert key.public_key() == cert.public_key()
    der = cert.public_bytes(serialization.Encoding.DER)
    assert b"\x18\x0f99991231235959Z" in der  # GeneralizedTime, as RFC 8995 §2.6.2 asks


def test_full_profile_extensions_as_openssl_prints_them(ca, ledger, pems):
    profile = parse_identity_table({
        "key_origin": "host", "serial_template": "{chip}-{mac_hex}", "common_name": "sensor-{mac_hex}",
        "organization": "Example Devices Ltd", "hw_module_type_oid": "1.3.6.1.4.1.99999.1",
        "masa_url": "masa.example.com:443", "lifetime_days": 3650, "key_usage": ["digitalSignature"],
        "extended_key_usage": ["clientAuth"]}, WHERE)
    _, cert = host_identity(ca, profile, FACTS, ledger)
    verify(pems, cert)
    out = text(cert)
    assert "Subject: O = Example Devices Ltd, CN = sensor-240AC4123456, serialNumber = ESP32-240AC4123456" in out
    assert "othername: 1.3.6.1.5.5.7.8.4::<unsupported>" in out
    assert re.search(r"1\.3\.6\.1\.5\.5\.7\.1\.32: \n\s+\.\.masa\.example\.com:443", out)
    assert re.search(r"X509v3 Key Usage: critical\n\s+Digital Signature\n", out)
    assert re.search(r"X509v3 Extended Key Usage: \n\s+TLS Web Client Authentication\n", out)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 3650  # notBefore is backdated 5 minutes for clock skew

    # hardwareModuleName: SEQUENCE { hwType OID, hwSerialNum OCTET STRING = the device serial }
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    other = san.value.get_values_for_type(x509.OtherName)[0]
    assert other.type_id.dotted_string == "1.3.6.1.5.5.7.8.4"
    parsed = openssl("asn1parse", "-inform", "DER", data=other.value)
    assert ":1.3.6.1.4.1.99999.1" in parsed and "OCTET STRING      :ESP32-240AC4123456" in parsed
    masa = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.32")).value.value
    assert masa == b"\x16\x14masa.example.com:443" and not cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.32")).critical


def test_rsa_2048_for_legacy_boards(ca, ledger, pems):
    key, cert = host_identity(ca, IdevidProfile(key_origin="host", key_type="RSA-2048"), FACTS, ledger)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    verify(pems, cert)
    assert "Public-Key: (2048 bit)" in text(cert)


def test_a_thousand_identities_have_unique_serials_all_in_the_ledger(ca, ledger):
    profile = IdevidProfile(key_origin="host", serial_template="SN{counter:06d}")
    certs = [host_identity(ca, profile, {"counter": n}, ledger)[1] for n in range(1000)]
    serials = {c.serial_number for c in certs}
    assert len(serials) == 1000
    recorded = ledger.records()
    assert len(recorded) == 1000 and {r.serial_hex for r in recorded} == {serial_hex(c) for c in certs}
    assert {r.subject_serial for r in recorded} == {f"SN{n:06d}" for n in range(1000)}
    assert all(r.key_origin == "host" and r.not_after == "9999-12-31T23:59:59Z" and r.live for r in recorded)
    assert ledger.get(serial_hex(certs[123])).cert() == certs[123]


def test_a_colliding_serial_is_never_issued_twice(ca, ledger, monkeypatch):
    first = host_identity(ca, IdevidProfile(key_origin="host"), facts(1), ledger)[1]
    drawn = iter([first.serial_number, first.serial_number, 0x1234_5678_9ABC_DEF0_1122])
    monkeypatch.setattr(idevid.x509, "random_serial_number", lambda: next(drawn))
    second = host_identity(ca, IdevidProfile(key_origin="host"), facts(2), ledger)[1]
    assert second.serial_number == 0x1234_5678_9ABC_DEF0_1122
    assert ledger.count() == 2 and ledger.get(serial_hex(first)).subject_serial == "ESP32-C3-58CF79000001"


def test_ledger_refuses_a_public_key_it_has_seen(ca, ledger):
    key = ec.generate_private_key(ec.SECP256R1())
    profile = IdevidProfile(key_origin="board")
    issue_idevid(ca, profile, key.public_key(), facts(1), ledger)
    with pytest.raises(DuplicateKeyError) as err:
        issue_idevid(ca, profile, key.public_key(), facts(2), ledger)
    assert "this key was seen before" in str(err.value) and "ESP32-C3-58CF79000001" in str(err.value)
    assert ledger.count() == 1


def test_already_provisioned_names_date_and_port_and_void_allows_reprovision(ca, tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    batch = journal.start_batch("p", "00" * 32, "batch", "alice", "st-1")
    device = journal.start_device(batch, "1-2.3", "10c4:ea60", "esp")
    ledger = Ledger(path)  # its own connection to the journal's file
    cert = issue_idevid(ca, IdevidProfile(key_origin="board"), ec.generate_private_key(ec.SECP256R1()).public_key(),
                        FACTS, ledger, device_id=device)
    started = journal.devices(batch)[0].started
    live = ledger.find_subject("ESP32-240AC4123456")
    assert live.serial_hex == serial_hex(cert) and live.device_id == device
    message = ledger.already_provisioned_message(live)
    assert message.startswith(f"Device ESP32-240AC4123456 was already provisioned on "
                              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))} at port 1-2.3")
    assert "use re-provision" in message

    with pytest.raises(AlreadyProvisionedError) as err:
        host_identity(ca, IdevidProfile(key_origin="host"), FACTS, ledger)
    assert str(err.value) == message

    voided = ledger.void(live.serial_hex, "re-provision")
    assert voided.voided is not None and voided.void_reason == "re-provision"
    assert ledger.find_subject("ESP32-240AC4123456") is None
    _, again = host_identity(ca, IdevidProfile(key_origin="host"), FACTS, ledger)
    assert ledger.find_subject("ESP32-240AC4123456").serial_hex == serial_hex(again)
    with pytest.raises(IdentityError, match="No certificate with serial 00FF"):
        ledger.void("00FF", "typo")
    journal.close()
    ledger.close()


# --- the CSR path (key made on the board) ----------------------------------------------------------------------

def make_csr(key, serial: str | None = "ESP32-240AC4123456") -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)] if serial else [])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def test_good_csr_from_openssl_is_certified(ca, ledger, pems, tmp_path):
    profile = IdevidProfile(key_origin="board")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(tmp_path / "board.key"))
    csr_der = subprocess.run(["openssl", "req", "-new", "-key", str(tmp_path / "board.key"), "-subj",
                              "/serialNumber=ESP32-240AC4123456", "-outform", "DER"], capture_output=True,
                             check=True).stdout
    public_key = check_csr(csr_der, profile, FACTS, ledger)
    cert = issue_idevid(ca, profile, public_key, FACTS, ledger)
    verify(pems, cert)
    board_key = serialization.load_pem_private_key((tmp_path / "board.key").read_bytes(), None)
    assert cert.public_key() == board_key.public_key()
    assert ledger.find_subject("ESP32-240AC4123456").key_origin == "board"
    assert check_csr(make_csr(ec.generate_private_key(ec.SECP256R1()), None), profile, FACTS, ledger)  # no DN: ok


def test_csr_with_a_bad_signature_is_refused(ledger):
    der = bytearray(make_csr(ec.generate_private_key(ec.SECP256R1())))
    der[-5] ^= 0x40  # inside the signature's s
    with pytest.raises(CsrError, match="signature does not verify: the board did not prove it holds the private"):
        check_csr(bytes(der), IdevidProfile(key_origin="board"), FACTS, ledger)
    with pytest.raises(CsrError, match="not a valid PKCS#10 request"):
        check_csr(b"\x30\x03garbage", IdevidProfile(key_origin="board"), FACTS, ledger)


def test_csr_with_the_wrong_subject_serial_is_refused(ledger):
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "ESP32-000000000000")
    with pytest.raises(CsrError) as err:
        check_csr(csr, IdevidProfile(key_origin="board"), FACTS, ledger)
    assert str(err.value).startswith("The CSR asks for device serial 'ESP32-000000000000', but this board's facts "
                                     "give 'ESP32-240AC4123456'")


def test_csr_with_a_reused_key_is_refused(ca, ledger):
    key = ec.generate_private_key(ec.SECP256R1())
    profile = IdevidProfile(key_origin="board")
    issue_idevid(ca, profile, check_csr(make_csr(key), profile, FACTS, ledger), FACTS, ledger)
    other_board = {"chip": "ESP32", "mac": "24:0a:c4:65:43:21"}
    with pytest.raises(CsrError) as err:
        check_csr(make_csr(key, "ESP32-240AC4654321"), profile, other_board, ledger)
    assert "this key was seen before on" in str(err.value)
    assert "the board's RNG or agent is broken" in str(err.value)


def test_csr_with_another_key_type_is_refused(ledger):
    csr = make_csr(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(CsrError, match="The board's key is P-384, but the profile's \\[identity\\] key_type is P-256"):
        check_csr(csr, IdevidProfile(key_origin="board"), FACTS, ledger)


# --- the [identity] table --------------------------------------------------------------------------------------

@pytest.mark.parametrize("table, expected", [
    ({"key_origin": "host", "colour": "red"}, "unknown key 'colour'; allowed here: key_origin, key_type"),
    ({}, "missing required key 'key_origin'; add key_origin = \"host\""),
    ({"key_origin": "cloud"}, "'key_origin' is 'cloud'; use \"host\""),
    ({"key_origin": "host", "key_type": "P-384"}, "'key_type' is 'P-384'; use \"P-256\" (default) or \"RSA-2048\""),
    ({"key_origin": "host", "lifetime_days": "10y"}, "'lifetime_days' must be an integer, got a string '10y'"),
    ({"key_origin": "host", "lifetime_days": True}, "'lifetime_days' must be an integer, got a boolean True"),
    ({"key_origin": "host", "masa_url": 443}, "'masa_url' must be a string, got an integer 443"),
    ({"key_origin": "host", "hw_module_type_oid": "1.3.6.1.4.1.x"}, "'hw_module_type_oid' is '1.3.6.1.4.1.x', "
                                                                    "which is not a dotted object identifier"),
    ({"key_origin": "host", "hw_module_type_oid": "1.99.3"}, "not a dotted object identifier"),
    ({"key_origin": "host", "serial_template": "{chip}-{serial}"},
     "'serial_template' '{chip}-{serial}' uses '{serial}', which is not a board fact; use one of mac, mac_hex"),
    ({"key_origin": "host", "common_name": "dev-{macaddr}"}, "'common_name' 'dev-{macaddr}' uses '{macaddr}'"),
    ({"key_origin": "host", "serial_template": "SN{}"}, "has a positional '{}'; name the fact"),
    ({"key_origin": "host", "serial_template": "{chip:d}"}, "'serial_template' '{chip:d}' can't be rendered"),
    ({"key_origin": "host", "serial_template": "{mac.upper}"}, "only plain fact names"),
    ({"key_origin": "host", "serial_template": "{chip}_{mac_hex}"}, "characters a subject serialNumber "
                                                                    "(PrintableString) can't hold: '_'"),
    ({"key_origin": "host", "serial_template": "WI-3005"}, "uses no board fact, so every board would get the same"),
    ({"key_origin": "host", "key_usage": ["sign"]}, "'key_usage' has 'sign', which is not a key usage"),
    ({"key_origin": "host", "key_usage": "digitalSignature"}, "'key_usage' must be an array"),
    ({"key_origin": "host", "extended_key_usage": ["webAuth"]}, "'extended_key_usage' has 'webAuth'"),
    ({"key_origin": "host", "masa_url": "http://masa.example.com"}, "uses a scheme other than https"),
    ({"key_origin": "host", "lifetime_days": 0}, "'lifetime_days' is 0; give 1 to 36600 days, or leave it out"),
])
def test_identity_table_errors_name_the_key_and_the_fix(table, expected):
    with pytest.raises(IdentityProfileError) as err:
        parse_identity_table(table, WHERE)
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(f"{WHERE}: ")
    assert expected in str(err.value)


def test_identity_table_parses_into_the_profile():
    profile = parse_identity_table({"key_origin": "board", "key_type": "RSA-2048",
                                    "serial_template": "SN-{counter:06d}", "key_usage": ["digitalSignature",
                                                                                       "keyEncipherment"],
                                    "extended_key_usage": ["clientAuth", "1.3.6.1.4.1.45605.1"]}, WHERE)
    assert profile == IdevidProfile(key_origin="board", key_type="RSA-2048", serial_template="SN-{counter:06d}",
                                    key_usage=("digitalSignature", "keyEncipherment"),
                                    extended_key_usage=("clientAuth", "1.3.6.1.4.1.45605.1"))
    assert parse_identity_table({"key_origin": "host"}, WHERE) == IdevidProfile(key_origin="host")


def test_render_serial_from_board_facts():
    assert render_serial(IdevidProfile(), {"chip": "ESP32", "mac": "24:0a:c4:12:34:56"}) == "ESP32-240AC4123456"
    assert render_serial(IdevidProfile(serial_template="{mac}"), {"mac_hex": "240AC4123456"}) == "24:0a:c4:12:34:56"
    assert render_serial(IdevidProfile(serial_template="P-{device_id}-{counter:04d}"),
                         {"device_id": "3a0021000947343432313031", "counter": 7}) == "P-3a0021000947343432313031-0007"
    with pytest.raises(IdentityError, match="needs the board fact 'chip_id', which this board did not report"):
        render_serial(IdevidProfile(serial_template="{chip_id}"), {"chip": "ESP32", "mac": "24:0a:c4:12:34:56"})


def test_public_jwk_round_trips():
    def unb64(s: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), "big")

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = public_jwk(key)
    assert set(jwk) == {"kty", "crv", "x", "y"} and jwk["kty"] == "EC" and jwk["crv"] == "P-256"
    assert len(base64.urlsafe_b64decode(jwk["x"] + "=")) == 32 and "=" not in jwk["x"] + jwk["y"]
    assert ec.EllipticCurvePublicNumbers(unb64(jwk["x"]), unb64(jwk["y"]), ec.SECP256R1()).public_key() == key
    rsa_key = rsa.generate_private_key(65537, 1024).public_key()  # size does not matter for the encoding
    jwk = public_jwk(rsa_key)
    assert jwk["kty"] == "RSA" and jwk["e"] == "AQAB" and unb64(jwk["n"]) == rsa_key.public_numbers().n
