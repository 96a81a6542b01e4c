"""Identity payloads: the esp_secure_cert partition and the LittleFS identity files for BearSSL firmware.

What a user relies on: the certificates and key the device reads back are the ones issued, the
images fit the partition exactly, corruption is reported instead of passed on, and no error ever
shows key material.
"""

import datetime
import hashlib
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from station.families.esp.payloads import PayloadError
from station.families.esp.payloads.littlefs import (
    DISK_VERSION_2_0,
    DISK_VERSION_2_1,
    build_ar,
    build_identity_fs,
    fs_info,
    identity_files,
    read_ar,
    read_fs,
)
from station.families.esp.payloads.secure_cert import (
    CA_CERT,
    DEV_CERT,
    INTEGRITY,
    PRIV_KEY,
    build_secure_cert,
    read_secure_cert,
)

# Output of esp-secure-cert-tool 2.6.1 (PyPI), made with
#   configure_esp_secure_cert.py --ca-cert ca.pem --device-cert dev.pem --private-key key.pem --skip_flash
# from a throwaway test CA, device certificate and EC P-256 key (PKCS#8 PEM); the tool writes only
# the used bytes. The key inside exists for this test only.
TOOL_BIN = Path(__file__).parent / "fixtures" / "esp_secure_cert_tool_2.6.1.bin"

ESP8266_FS_SIZE = 0x1FA000  # eagle.flash.4m2m.ld: _FS_start 0x40400000 .. _FS_end 0x405FA000
MAGIC = struct.pack("<I", 0xBA5EBA11)


# --- test identity ------------------------------------------------------------------------


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer, public_key, signer, *, ca=False, sans=()):
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def identity():
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_der = _cert("Test CA", "Test CA", ca_key.public_key(), ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    device_der = _cert("device-0001", "Test CA", key.public_key(), ca_key)
    second_ca_key = ec.generate_private_key(ec.SECP384R1())
    second_ca_der = _cert("Other CA", "Other CA", second_ca_key.public_key(), second_ca_key, ca=True)
    return {"ca": ca_der, "ca2": second_ca_der, "device": device_der, "key": key, "ca_key": ca_key}


def _key_secrets(key):
    """Every form of the private key that must never show up in a message."""
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    body = b"".join(pem.splitlines()[1:-1]).decode()
    scalar = key.private_numbers().private_value
    return [der.hex(), body[:40], body[-40:], format(scalar, "x"), str(scalar), repr(der)[2:40]]


def _assert_no_key_material(message, key):
    for secret in _key_secrets(key):
        assert secret not in message


def _used_bytes(tlvs):
    """Bytes the TLVs take: 12-byte header, value padded to 16, 4-byte CRC each."""
    return sum(12 + len(v) + (-len(v) % 16) + 4 for v in tlvs.values())


def _same_key(a, b):
    assert type(a) is type(b)
    assert a.private_numbers() == b.private_numbers()


# --- esp_secure_cert --------------------------------------------------------------------------


def test_secure_cert_reads_back_what_the_device_asks_for(identity):
    image = build_secure_cert(identity["device"], identity["ca"], identity["key"])
    assert len(image) == 0x2000

    tlvs = read_secure_cert(image)
    assert set(tlvs) == {(CA_CERT, 0), (DEV_CERT, 0), (PRIV_KEY, 0), (INTEGRITY, 0)}
    # PEM with its terminating NUL counted in the length, as mbedTLS wants it
    for tlv_type, der in ((DEV_CERT, identity["device"]), (CA_CERT, identity["ca"])):
        value = tlvs[(tlv_type, 0)]
        assert value.endswith(b"-----END CERTIFICATE-----\n\x00")
        cert = x509.load_pem_x509_certificate(value[:-1])
        assert cert.public_bytes(serialization.Encoding.DER) == der
    key_value = tlvs[(PRIV_KEY, 0)]
    assert key_value.startswith(b"-----BEGIN EC PRIVATE KEY-----\n")  # SEC1, as the tool stores it
    assert key_value.endswith(b"\x00")
    _same_key(serialization.load_pem_private_key(key_value[:-1], None), identity["key"])
    # erased flash after the last TLV, so the device's walk stops there
    used = _used_bytes(tlvs)
    assert image[used - 48 : used - 48 + 4] == MAGIC and image[used - 48 + 8] == INTEGRITY
    assert image[used:] == b"\xff" * (0x2000 - used)


def test_secure_cert_integrity_is_sha256_of_everything_before_it(identity):
    image = build_secure_cert(identity["device"], identity["ca"], identity["key"])
    digest = read_secure_cert(image)[(INTEGRITY, 0)]
    at = image.index(digest) - 12  # the INTEGRITY TLV header
    assert image[at : at + 4] == MAGIC and image[at + 8] == INTEGRITY
    assert digest == hashlib.sha256(image[:at]).digest()
    # each TLV's footer is CRC32 (init 0xFFFFFFFF) of header + value + zero padding
    footer = struct.unpack_from("<I", image, at + 12 + 32)[0]
    assert footer == zlib.crc32(image[at : at + 12 + 32], 0xFFFFFFFF)


def test_secure_cert_without_host_key_has_no_key_tlv(identity):
    tlvs = read_secure_cert(build_secure_cert(identity["device"], identity["ca"]))
    assert set(tlvs) == {(CA_CERT, 0), (DEV_CERT, 0), (INTEGRITY, 0)}


def test_secure_cert_rsa_key_is_pkcs1(identity):
    key = rsa.generate_private_key(65537, 2048)
    device = _cert("device-rsa", "Test CA", key.public_key(), identity["ca_key"])
    tlvs = read_secure_cert(build_secure_cert(device, identity["ca"], key))
    assert tlvs[(PRIV_KEY, 0)].startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    _same_key(serialization.load_pem_private_key(tlvs[(PRIV_KEY, 0)][:-1], None), key)


def test_secure_cert_matches_esp_secure_cert_tool_byte_for_byte():
    tool = TOOL_BIN.read_bytes()
    tlvs = read_secure_cert(tool)  # the reader accepts the tool's (unpadded) output
    assert set(tlvs) == {(CA_CERT, 0), (DEV_CERT, 0), (PRIV_KEY, 0), (INTEGRITY, 0)}
    ca = x509.load_pem_x509_certificate(tlvs[(CA_CERT, 0)].rstrip(b"\x00"))
    device = x509.load_pem_x509_certificate(tlvs[(DEV_CERT, 0)].rstrip(b"\x00"))
    key = serialization.load_pem_private_key(tlvs[(PRIV_KEY, 0)].rstrip(b"\x00"), None)

    ours = build_secure_cert(
        device.public_bytes(serialization.Encoding.DER),
        ca.public_bytes(serialization.Encoding.DER),
        key,
    )
    assert ours[: len(tool)] == tool
    assert ours[len(tool) :] == b"\xff" * (0x2000 - len(tool))


def test_secure_cert_every_flipped_byte_is_detected(identity):
    image = build_secure_cert(identity["device"], identity["ca"], identity["key"])
    secrets = _key_secrets(identity["key"])
    for pos in range(_used_bytes(read_secure_cert(image))):
        bad = bytearray(image)
        bad[pos] ^= 0x01
        with pytest.raises(PayloadError) as err:
            read_secure_cert(bytes(bad))
        assert not [s for s in secrets if s in str(err.value)]


def test_secure_cert_tlv_changed_with_a_fresh_crc_fails_integrity(identity):
    image = bytearray(build_secure_cert(identity["device"], identity["ca"], identity["key"]))
    ca_len = struct.unpack_from("<H", image, 10)[0]
    end = 12 + ca_len + (-ca_len % 16)
    image[40] ^= 0x01  # inside the CA certificate's PEM text
    image[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(image[:end]), 0xFFFFFFFF))
    with pytest.raises(PayloadError, match=r"INTEGRITY \(type 9, subtype 0\).*SHA-256"):
        read_secure_cert(bytes(image))

    first_tlv = bytes(image[: end + 4])  # the device would only ever see the first of two copies
    with pytest.raises(PayloadError, match=r"CA_CERT \(type 0, subtype 0\) at 0x.* appears twice"):
        read_secure_cert(first_tlv + bytes(image))


def test_secure_cert_corruption_messages_name_the_tlv_and_hold_no_key(identity):
    image = bytearray(build_secure_cert(identity["device"], identity["ca"], identity["key"]))
    key_tlv = bytes(image).index(b"-----BEGIN EC PRIVATE KEY")
    image[key_tlv + 40] ^= 0x20
    with pytest.raises(PayloadError, match=r"PRIV_KEY \(type 2, subtype 0\).*CRC mismatch") as err:
        read_secure_cert(bytes(image))
    _assert_no_key_material(str(err.value), identity["key"])


def test_secure_cert_blank_or_truncated_partition_is_refused(identity):
    with pytest.raises(PayloadError, match="No esp_secure_cert TLV"):
        read_secure_cert(b"\xff" * 0x2000)
    image = build_secure_cert(identity["device"], identity["ca"], identity["key"])
    integrity_at = _used_bytes(read_secure_cert(image)) - 48
    cut = image[:integrity_at] + b"\xff" * (0x2000 - integrity_at)  # integrity TLV lost
    with pytest.raises(PayloadError, match="without an INTEGRITY TLV"):
        read_secure_cert(cut)
    assert (PRIV_KEY, 0) in read_secure_cert(cut, require_integrity=False)
    with pytest.raises(PayloadError, match="past the end"):
        read_secure_cert(image[:100])


def test_secure_cert_too_small_partition_is_refused(identity):
    many = [f"sensor-{n:04d}.devices.example.com" for n in range(200)]
    big = _cert("device-0001", "Test CA", identity["key"].public_key(), identity["ca_key"], sans=many)
    assert len(build_secure_cert(big, identity["ca"], identity["key"], partition_size=0x3000)) == 0x3000
    with pytest.raises(PayloadError, match=r"partition is 0x2000 .*enlarge the esp_secure_cert") as err:
        build_secure_cert(big, identity["ca"], identity["key"])
    _assert_no_key_material(str(err.value), identity["key"])
    with pytest.raises(PayloadError, match="multiple of 4096"):
        build_secure_cert(identity["device"], identity["ca"], partition_size=0x1800)


def test_secure_cert_refuses_a_key_that_is_not_the_certificates(identity):
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(PayloadError, match="does not belong to the device certificate") as err:
        build_secure_cert(identity["device"], identity["ca"], other)
    _assert_no_key_material(str(err.value), other)
    with pytest.raises(PayloadError, match="not a DER X.509 certificate"):
        build_secure_cert(b"-----BEGIN CERTIFICATE-----", identity["ca"])


# --- LittleFS identity files --------------------------------------------------------------------


def test_identity_files_hold_der_cert_raw_key_and_ca_archive(identity):
    files = identity_files(identity["device"], identity["key"], [identity["ca"], identity["ca2"]])
    assert set(files) == {"/client.der", "/client.key", "/certs.ar"}
    assert files["/client.der"] == identity["device"]
    key = serialization.load_der_private_key(files["/client.key"], None)
    _same_key(key, identity["key"])
    # "raw EC" (RFC 5915 ECPrivateKey, version 1), not PKCS#8 (version 0 + AlgorithmIdentifier)
    assert files["/client.key"][2:5] == b"\x02\x01\x01"
    assert read_ar(files["/certs.ar"]) == [("ca_000.der", identity["ca"]), ("ca_001.der", identity["ca2"])]

    device_only = identity_files(identity["device"], None, [])
    assert set(device_only) == {"/client.der"}


def test_identity_files_rsa_key_is_pkcs1_der(identity):
    key = rsa.generate_private_key(65537, 2048)
    device = _cert("device-rsa", "Test CA", key.public_key(), identity["ca_key"])
    files = identity_files(device, key, [identity["ca"]])
    _same_key(serialization.load_der_private_key(files["/client.key"], None), key)
    assert files["/client.key"][4:7] == b"\x02\x01\x00"  # RSAPrivateKey version 0, no AlgorithmIdentifier
    assert files["/client.key"][7] == 0x02  # then the modulus INTEGER, not a SEQUENCE


def test_identity_files_refuse_a_curve_bearssl_lacks(identity):
    key = ec.generate_private_key(ec.SECP256K1())
    device = _cert("device-k1", "Test CA", key.public_key(), identity["ca_key"])
    with pytest.raises(PayloadError, match="secp256k1.*P-256") as err:
        identity_files(device, key, [])
    _assert_no_key_material(str(err.value), key)


def test_littlefs_image_reads_back_for_esp8266_arduino(identity):
    files = identity_files(identity["device"], identity["key"], [identity["ca"], identity["ca2"]])
    image = build_identity_fs(files, ESP8266_FS_SIZE)
    assert len(image) == ESP8266_FS_SIZE

    info = fs_info(image, 8192)
    assert info.name_max == 32
    assert info.block_size == 8192
    assert info.block_count == ESP8266_FS_SIZE // 8192
    assert info.disk_version == DISK_VERSION_2_0  # older firmware reformats a 2.1 image

    back = read_fs(image, 8192, 32, disk_version=DISK_VERSION_2_0)
    assert back == files
    assert back["/client.der"] == identity["device"]
    _same_key(serialization.load_der_private_key(back["/client.key"], None), identity["key"])


def test_littlefs_nested_paths_and_newer_disk_version(identity):
    image = build_identity_fs(
        {"certs/client.der": identity["device"], "/a.txt": b"x"}, 0x10000,
        block_size=4096, name_max=64, disk_version=DISK_VERSION_2_1,
    )
    assert read_fs(image, 4096, 64) == {"/certs/client.der": identity["device"], "/a.txt": b"x"}
    assert fs_info(image, 4096).disk_version == DISK_VERSION_2_1
    with pytest.raises(PayloadError, match="on-disk version 2.1 .* disk_version=0x00020000"):
        read_fs(image, 4096, 64, disk_version=DISK_VERSION_2_0)


def test_littlefs_long_or_clashing_names_are_refused():
    longest = "/" + "n" * 31
    assert set(read_fs(build_identity_fs({longest: b"x"}, 0x10000), 8192, 32)) == {longest}
    with pytest.raises(PayloadError, match=r"32 bytes; with name_max 32 .* at most 31-byte names"):
        build_identity_fs({"/" + "n" * 32: b"x"}, 0x10000)
    with pytest.raises(PayloadError, match="element 'a-directory-name-far-too-long-for-it'"):
        build_identity_fs({"/a-directory-name-far-too-long-for-it/x": b"x"}, 0x10000)
    with pytest.raises(PayloadError, match="'..'"):
        build_identity_fs({"/../x": b"x"}, 0x10000)
    with pytest.raises(PayloadError, match="/client.der is given twice"):
        build_identity_fs({"client.der": b"1", "/client.der": b"2"}, 0x10000)


def test_littlefs_image_the_firmware_cannot_mount_is_reported_not_formatted(identity):
    image = build_identity_fs(identity_files(identity["device"], identity["key"], []), 0x20000)

    with pytest.raises(PayloadError, match="no valid superblock.*reformat"):
        read_fs(b"\xff" * 0x20000, 8192, 32)  # blank flash
    corrupt = bytes(16384) + image[16384:]  # both superblock copies (blocks 0 and 1) zeroed
    with pytest.raises(PayloadError, match="no valid superblock") as err:
        read_fs(corrupt, 8192, 32)
    _assert_no_key_material(str(err.value), identity["key"])
    with pytest.raises(PayloadError, match="name_max 32 but the firmware allows 16"):
        read_fs(image, 8192, 16)
    with pytest.raises(PayloadError, match="records 16 blocks .* partition is 0x28000"):
        read_fs(image + b"\xff" * 0x8000, 8192, 32)
    with pytest.raises(PayloadError, match="4096-byte blocks"):
        read_fs(image, 4096, 32)
    # reading never wrote to the image it was given
    assert read_fs(image, 8192, 32)["/client.der"] == identity["device"]


def test_littlefs_files_that_do_not_fit_are_refused(identity):
    with pytest.raises(PayloadError, match="do not fit in the 0x8000-byte filesystem"):
        build_identity_fs({"/big.bin": bytes(40000)}, 0x8000)
    with pytest.raises(PayloadError, match="whole number .* 8192-byte blocks"):
        build_identity_fs({"/a": b"x"}, 0x11000)
    with pytest.raises(PayloadError, match="disk_version 0x00010000 is not supported"):
        build_identity_fs({"/a": b"x"}, 0x10000, disk_version=0x00010000)


# --- certs.ar -----------------------------------------------------------------------------------


def test_ar_round_trips_and_matches_gnu_ar(identity, tmp_path):
    members = [("ca_000.der", identity["ca"]), ("ca_001.der", identity["ca2"]), ("odd.der", b"abc")]
    archive = build_ar(members)
    assert archive.startswith(b"!<arch>\n")
    assert read_ar(archive) == members

    (tmp_path / "built.ar").write_bytes(archive)
    listing = subprocess.run(
        ["ar", "t", "built.ar"], cwd=tmp_path, capture_output=True, check=True, text=True
    ).stdout.split()
    assert listing == [name for name, _ in members]
    subprocess.run(["ar", "x", "built.ar"], cwd=tmp_path, check=True)
    for name, data in members:
        assert (tmp_path / name).read_bytes() == data  # what `ar x` unpacks
    # byte for byte what binutils writes in deterministic mode (what certs-from-mozilla.py runs)
    subprocess.run(["ar", "rcD", "gnu.ar", *(n for n, _ in members)], cwd=tmp_path, check=True)
    assert (tmp_path / "gnu.ar").read_bytes() == archive


def test_ar_reader_refuses_what_certstore_would_misread(identity):
    archive = build_ar([("ca_000.der", identity["ca"])])
    with pytest.raises(PayloadError, match="truncated"):
        read_ar(archive[:-10])
    with pytest.raises(PayloadError, match="not an ar archive"):
        read_ar(identity["ca"])
    symtab = f"{'/':<16}{0:<12}{0:<6}{0:<6}{0:<8}{4:<10}`\n".encode() + bytes(4)  # as `ar rcs` on objects
    with pytest.raises(PayloadError, match="symbol table"):
        read_ar(archive[:8] + symtab + archive[8:])
    with pytest.raises(PayloadError, match="empty"):
        build_ar([("ca_000.der", b"")])
    with pytest.raises(PayloadError, match="1-15 ASCII"):
        build_ar([("a-name-too-long-for-ar.der", b"x")])

