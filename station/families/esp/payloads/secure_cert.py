"""`esp_secure_cert` partition images (espressif/esp_secure_cert_mgr TLV format), built in memory.

Format (esp_secure_cert_mgr 2.9.x, `private_include/esp_secure_cert_tlv_private.h`): a run of
TLVs from offset 0, each a 12-byte header `<I B 3s B B H>` (magic 0xBA5EBA11, flags, 3 reserved
zero bytes, type, subtype, length), the value, zero padding to a 16-byte multiple, and a CRC32
footer over header + value + padding (`zlib.crc32(..., 0xFFFFFFFF)`, = the device's
`esp_crc32_le(UINT32_MAX, ...)`). The device walks TLVs until a header without the magic.

What is stored, and why (checked against esp-secure-cert-tool 2.6.1, the PyPI tool, run as
`configure_esp_secure_cert.py --ca-cert ca.pem --device-cert dev.pem --private-key key.pem
--skip_flash`; tests/fixtures/esp_secure_cert_tool_2.6.1.bin is its output, and this module
rebuilds it byte for byte from the certificates and key parsed out of it):
- Order CA_CERT (0), DEV_CERT (1), PRIV_KEY (2), then INTEGRITY (9), all subtype 0: the order the
  tool's CLI adds them in. The device looks TLVs up by (type, subtype), so order is cosmetic.
- Certificates as PEM plus one NUL byte, the NUL counted in the TLV length (the tool's
  `add_certificate`). The device API hands back value and length unchanged
  (`esp_secure_cert_tlv_get_addr` in `srcs/esp_secure_cert_tlv_read.c`), and mbedTLS's
  `mbedtls_x509_crt_parse` / `mbedtls_pk_parse_key` take PEM only when that length includes the
  terminating NUL (`examples/esp_secure_cert_app/main/app_main.c` passes it straight through).
- The private key (plaintext, flags 0) as "traditional" PEM plus NUL: SEC1 `EC PRIVATE KEY` for
  EC, PKCS#1 `RSA PRIVATE KEY` for RSA. The tool re-encodes every key it is given with
  `PrivateFormat.TraditionalOpenSSL` (`esp_secure_cert_helper.load_private_key`), keeping PEM for
  a PEM file; mbedtls_pk_parse_key reads both. Compare keys by their numbers, not their bytes.
- INTEGRITY: SHA-256 of every byte before it (`add_integrity_tlv`; the device's
  `esp_secure_cert_verify_partition_integrity` checks the one with the highest subtype).
- The tool writes only the used bytes; this module pads with 0xFF to the partition size, so
  writing the image also erases whatever an earlier provisioning left in the rest of the
  partition (esptool erases only the sectors it writes; the device would keep walking into
  stale TLVs that happen to follow the new ones).
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from station.families.esp.payloads import PayloadError, check_key_matches, load_der_certificate

MAGIC = 0xBA5EBA11
DEFAULT_PARTITION_SIZE = 0x2000

# TLV types (esp_secure_cert_tlv_config.h)
CA_CERT = 0
DEV_CERT = 1
PRIV_KEY = 2
DS_DATA = 3
DS_CONTEXT = 4
HMAC_ECDSA_KEY_SALT = 5
SEC_CFG = 6
TEE_SEC_STORAGE_KEY = 7
SIGNATURE_BLOCK = 8
INTEGRITY = 9

_HEADER = struct.Struct("<IB3sBBH")  # magic, flags, reserved, type, subtype, length
_FOOTER = struct.Struct("<I")
_ALIGN = 16
_SECTOR = 0x1000
_SHA256_LEN = 32
_NAMES = {
    CA_CERT: "CA_CERT", DEV_CERT: "DEV_CERT", PRIV_KEY: "PRIV_KEY", DS_DATA: "DS_DATA",
    DS_CONTEXT: "DS_CONTEXT", HMAC_ECDSA_KEY_SALT: "HMAC_ECDSA_KEY_SALT", SEC_CFG: "SEC_CFG",
    TEE_SEC_STORAGE_KEY: "TEE_SEC_STORAGE_KEY", SIGNATURE_BLOCK: "SIGNATURE_BLOCK",
    INTEGRITY: "INTEGRITY",
}


def build_secure_cert(
    device_cert_der: bytes,
    ca_cert_der: bytes,
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    partition_size: int = DEFAULT_PARTITION_SIZE,
) -> bytes:
    """An esp_secure_cert partition image of exactly `partition_size` bytes.

    `private_key` is a host-made key (a `cryptography` EC or RSA private key) stored in plaintext;
    leave it None when the key was made on the device and never leaves it.
    """
    if partition_size <= 0 or partition_size % _SECTOR:
        raise PayloadError(
            f"esp_secure_cert partition size {partition_size:#x} is not a positive multiple of "
            "4096 bytes; fix the esp_secure_cert partition size in the partition table."
        )
    device_cert = load_der_certificate(device_cert_der, "device certificate")
    ca_cert = load_der_certificate(ca_cert_der, "CA certificate")
    entries = [
        (CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM) + b"\x00"),
        (DEV_CERT, device_cert.public_bytes(serialization.Encoding.PEM) + b"\x00"),
    ]
    if private_key is not None:
        _check_key(private_key, device_cert)
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        entries.append((PRIV_KEY, pem + b"\x00"))

    body = b"".join(_tlv(tlv_type, 0, value) for tlv_type, value in entries)
    body += _tlv(INTEGRITY, 0, hashlib.sha256(body).digest())
    if len(body) > partition_size:
        raise PayloadError(
            f"esp_secure_cert data is {len(body)} bytes but the partition is {partition_size:#x} "
            f"({partition_size}) bytes; enlarge the esp_secure_cert partition in the partition "
            "table (a multiple of 0x1000) or use shorter certificates."
        )
    return body + b"\xff" * (partition_size - len(body))


def read_secure_cert(image: bytes, *, require_integrity: bool = True) -> dict[tuple[int, int], bytes]:
    """(type, subtype) -> value for every TLV, INTEGRITY included, as the device would find them.

    Checks every TLV's magic, bounds and CRC, that no (type, subtype) appears twice, and every
    INTEGRITY TLV's SHA-256 of the bytes before it. With `require_integrity` (the default) the
    last TLV must be an INTEGRITY TLV, so a partition cut short is not taken for a complete one;
    pass False for partitions made before esp_secure_cert_mgr 2.9.2 added it.
    Raises PayloadError on any corruption; values never appear in messages.
    """
    image = bytes(image)
    result: dict[tuple[int, int], bytes] = {}
    last_type = None
    offset = 0
    while offset + _HEADER.size <= len(image):
        magic, _flags, _reserved, tlv_type, subtype, length = _HEADER.unpack_from(image, offset)
        if magic != MAGIC:
            break  # end of the TLVs (0xFFFFFFFF on an erased partition)
        what = f"esp_secure_cert TLV {_name(tlv_type)} (type {tlv_type}, subtype {subtype}) at {offset:#x}"
        end = offset + _HEADER.size + length + _pad(length)
        if end + _FOOTER.size > len(image):
            raise PayloadError(
                f"{what} says {length} bytes, running past the end of the {len(image)}-byte "
                "image; the partition is truncated or corrupt. Rebuild and rewrite it."
            )
        (stored_crc,) = _FOOTER.unpack_from(image, end)
        if stored_crc != _crc(image[offset:end]):
            raise PayloadError(
                f"{what}: CRC mismatch; the partition is corrupt. Rebuild and rewrite it."
            )
        if (tlv_type, subtype) in result:
            raise PayloadError(
                f"{what} appears twice; the partition is inconsistent. Rebuild and rewrite it."
            )
        value = image[offset + _HEADER.size : offset + _HEADER.size + length]
        if tlv_type == INTEGRITY:
            if length != _SHA256_LEN:
                raise PayloadError(f"{what} holds {length} bytes, not a 32-byte SHA-256; corrupt.")
            if hashlib.sha256(image[:offset]).digest() != value:
                raise PayloadError(
                    f"{what}: SHA-256 of the {offset} bytes before it does not match; the "
                    "partition is corrupt. Rebuild and rewrite it."
                )
        result[(tlv_type, subtype)] = value
        last_type = tlv_type
        offset = end + _FOOTER.size

    if not result:
        found = image[:4].hex() if len(image) >= 4 else "nothing"
        raise PayloadError(
            f"No esp_secure_cert TLV at offset 0 (found {found}, expected magic "
            f"{struct.pack('<I', MAGIC).hex()}); the partition is erased, corrupt or not an "
            "esp_secure_cert TLV partition."
        )
    if require_integrity and last_type != INTEGRITY:
        raise PayloadError(
            f"esp_secure_cert TLVs end at {offset:#x} without an INTEGRITY TLV; the partition is "
            "cut short or corrupt (or predates esp_secure_cert_mgr 2.9.2). Rebuild and rewrite it."
        )
    return result


def _tlv(tlv_type: int, subtype: int, value: bytes, flags: int = 0) -> bytes:
    if len(value) > 0xFFFF:
        raise PayloadError(
            f"esp_secure_cert {_name(tlv_type)} value is {len(value)} bytes; a TLV holds at most "
            "65535. Use a shorter certificate."
        )
    body = _HEADER.pack(MAGIC, flags, b"\x00" * 3, tlv_type, subtype, len(value))
    body += value + b"\x00" * _pad(len(value))
    return body + _FOOTER.pack(_crc(body))


def _pad(length: int) -> int:
    return -length % _ALIGN


def _crc(data: bytes) -> int:
    return zlib.crc32(data, 0xFFFFFFFF)  # esp_crc32_le(UINT32_MAX, ...) on the device


def _name(tlv_type: int) -> str:
    return _NAMES.get(tlv_type, f"USER_DATA_{tlv_type - 50}" if 51 <= tlv_type <= 55 else "unknown")


def _check_key(key: object, device_cert: x509.Certificate) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PayloadError(
            f"The device private key is a {type(key).__name__}; esp_secure_cert stores EC or RSA "
            "keys (pass a cryptography EllipticCurvePrivateKey or RSAPrivateKey)."
        )
    check_key_matches(key, device_cert)
