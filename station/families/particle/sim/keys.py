"""What the emulated firmware makes of its key slots at boot (PROTOCOLS §5.2, §5.3).

The device key must be what the firmware's fixed-offset parser expects: PKCS#1 RSAPrivateKey DER of an
RSA-1024 key with e = 65537, whose modulus starts at byte 11 (`30 82 02 5x 02 01 00 02 81 81 00`); PKCS#8 or
any other bytes are a bad key. The server key is an RSA SubjectPublicKeyInfo DER; behind it (key offset 384)
the address TLV (`00 04 a b c d` IPv4, `01 len name` domain, anything else: the fallback domain) and at key
offset 450 the port (big-endian, 0xFFFF = 5683).

A board with a bad key slot still runs and answers its console, but never gets through the cloud handshake:
its LED shows it (see board.py) and `CloudSetup.problem` says why.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_INTRO = bytes.fromhex("020100028181 00")  # version 0, INTEGER of 129 bytes: the modulus with its sign byte
MODULUS_OFFSET = 11
ADDRESS_OFFSET = 384
PORT_OFFSET = 450
FALLBACK_DOMAIN = "device.spark.io"
DEFAULT_PORT = 5683


@dataclass(frozen=True)
class CloudSetup:
    device_public_der: bytes | None  # SubjectPublicKeyInfo DER of the device key, None when the slot is bad
    server_public_der: bytes | None
    host: str
    port: int
    problem: str | None  # None: both keys good

    @property
    def ok(self) -> bool:
        return self.problem is None


def der_length(data: bytes) -> int | None:
    """Total length of the DER SEQUENCE at the start of `data` (long form up to 2 length bytes)."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    if data[1] < 0x80:
        return 2 + data[1]
    n = data[1] & 0x7F
    if n not in (1, 2) or len(data) < 2 + n:
        return None
    return 2 + n + int.from_bytes(data[2:2 + n], "big")


def parse_device_key(slot: bytes) -> tuple[bytes | None, str | None]:
    """(public DER, None) for a key the firmware can use, else (None, what is wrong)."""
    if slot[:3] != b"\x30\x82\x02" or slot[3] & 0xF0 != 0x50 or slot[4:MODULUS_OFFSET] != KEY_INTRO:
        return None, "device key slot does not hold a PKCS#1 RSA-1024 private key"
    length = der_length(slot)
    try:
        key = serialization.load_der_private_key(slot[:length], password=None)
    except (ValueError, TypeError):
        return None, "device key slot does not parse as DER"
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 1024:
        return None, "device key is not RSA-1024"
    numbers = key.private_numbers().public_numbers
    if numbers.e != 65537 or int.from_bytes(slot[MODULUS_OFFSET:MODULUS_OFFSET + 128], "big") != numbers.n:
        return None, "device key's exponent or modulus is not where the firmware reads it"
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo), None


def parse_server_key(slot: bytes) -> tuple[bytes | None, str | None]:
    length = der_length(slot)
    if length is None or length > len(slot):
        return None, "server key slot does not hold a DER public key"
    try:
        key = serialization.load_der_public_key(slot[:length])
    except (ValueError, TypeError):
        return None, "server key slot does not parse as a public key"
    if not isinstance(key, rsa.RSAPublicKey):
        return None, "server key is not an RSA key"
    return slot[:length], None


def parse_address(tlv: bytes, port_bytes: bytes) -> tuple[str, int]:
    if tlv[0] == 0 and tlv[1] == 4:
        host = str(ipaddress.IPv4Address(tlv[2:6]))
    elif tlv[0] == 1 and 0 < tlv[1] <= len(tlv) - 2:
        name = tlv[2:2 + tlv[1]].decode("ascii", errors="replace")
        host = name if name.isprintable() and "\ufffd" not in name else FALLBACK_DOMAIN
    else:
        host = FALLBACK_DOMAIN
    port = int.from_bytes(port_bytes, "big")
    return host, DEFAULT_PORT if port == 0xFFFF else port


def read_cloud_setup(device_key_slot: bytes, server_key_slot: bytes) -> CloudSetup:
    """`server_key_slot` runs at least to key offset 452 (key, address TLV, port)."""
    device_der, device_problem = parse_device_key(device_key_slot)
    server_der, server_problem = parse_server_key(server_key_slot[:ADDRESS_OFFSET])
    host, port = parse_address(server_key_slot[ADDRESS_OFFSET:ADDRESS_OFFSET + 128],
                               server_key_slot[PORT_OFFSET:PORT_OFFSET + 2])
    return CloudSetup(device_der, server_der, host, port, device_problem or server_problem)
