"""The keys a Spark Core or Photon holds, in the forms its firmware reads (PROTOCOLS §5.2, §5.3).

- The device key: RSA-1024, e = 65537, PKCS#1 RSAPrivateKey DER (the firmware copies the modulus from fixed
  offsets, so PKCS#8 does not work). Made on the station in memory, or read from the board's slot.
- The server key block: the local cloud's RSA public key as SubjectPublicKeyInfo DER, 0xFF fill, and at offset
  384 the server address TLV (`00 04 a b c d` for IPv4, `01 len name` for a host name, odd length padded with
  one 0); the port at offset 450 stays 0xFFFF (the default).
- Fingerprints: SHA-256 of the public key's SubjectPublicKeyInfo DER, the same for a key wherever it sits.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from station.families.particle.platforms import SERVER_ADDRESS_AT, SERVER_ADDRESS_SIZE

DEVICE_KEY_BITS = 1024
EXPONENT = 65537
HOST_NAME = re.compile(r"^(?=.{1,126}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class ParticleKeyError(ValueError):
    """Key material that is not what the firmware can use; the message says what is wrong."""


@dataclass(frozen=True)
class DeviceKey:
    der: bytes = field(repr=False)  # PKCS#1 RSAPrivateKey DER: a secret, never recorded
    public_pem: str

    @property
    def fingerprint(self) -> str:
        return public_fingerprint(self.public_pem)


def make_device_key() -> DeviceKey:
    key = rsa.generate_private_key(public_exponent=EXPONENT, key_size=DEVICE_KEY_BITS)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    return DeviceKey(der, _public_pem(key.public_key()))


def read_device_key(slot: bytes) -> DeviceKey:
    """The device key in a slot read from the board: PKCS#1 DER at its start, 0xFF (or an older key's tail)
    after it. ParticleKeyError when the slot is empty or holds anything the firmware could not use."""
    if slot[:4] == b"\xff" * 4:
        raise ParticleKeyError("the key slot is empty (erased flash)")
    if len(slot) < 4 or slot[0] != 0x30 or slot[1] != 0x82:
        raise ParticleKeyError("the key slot does not start with a DER sequence (30 82 …)")
    length = 4 + int.from_bytes(slot[2:4], "big")
    if length > len(slot):
        raise ParticleKeyError(f"the key's DER says {length} bytes, more than the slot's {len(slot)}")
    der = slot[:length]
    try:
        key = serialization.load_der_private_key(der, password=None)
    except ValueError:
        raise ParticleKeyError("the key slot holds no readable PKCS#1 RSA private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != DEVICE_KEY_BITS \
            or key.public_key().public_numbers().e != EXPONENT:
        raise ParticleKeyError(f"the key is not RSA-{DEVICE_KEY_BITS} with e = {EXPONENT}, which the firmware needs")
    if der != key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()):
        raise ParticleKeyError("the key is not PKCS#1 DER (the firmware reads the modulus at fixed offsets)")
    return DeviceKey(der, _public_pem(key.public_key()))


def slot_fingerprint(slot: bytes) -> str:
    """What the old key in a slot was, for the record, before it is overwritten."""
    if slot == b"\xff" * len(slot):
        return "none (the slot was erased)"
    try:
        return read_device_key(slot).fingerprint
    except ParticleKeyError as exc:
        return f"unusable ({exc}); slot SHA-256 {hashlib.sha256(slot).hexdigest()}"


@dataclass(frozen=True)
class ServerKey:
    der: bytes  # SubjectPublicKeyInfo DER of the cloud's RSA key
    pem: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def load_server_key(data: bytes) -> ServerKey:
    """The local cloud's public key from a PEM or DER file (spark-server's default_key.pub.pem, or its DER)."""
    try:
        key = (serialization.load_pem_public_key(data) if data.lstrip().startswith(b"-----")
               else serialization.load_der_public_key(data))
    except ValueError:
        raise ParticleKeyError("it is not an RSA public key in PEM or DER (spark-server's default_key.pub.pem)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ParticleKeyError(f"it is a {type(key).__name__}; spark-server's device protocol needs an RSA key")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if len(der) > SERVER_ADDRESS_AT:
        raise ParticleKeyError(f"its DER is {len(der)} bytes; the firmware's slot holds {SERVER_ADDRESS_AT} (RSA-2048)")
    return ServerKey(der, _public_pem(key))


def address_tlv(address: str) -> bytes:
    """The server address field: IPv4 `00 04 a b c d`, or a host name `01 len ascii` (odd length + one 0)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if not HOST_NAME.match(address):
            raise ParticleKeyError(f"'{address}' is neither an IPv4 address nor a host name") from None
        name = address.encode("ascii")
        field_ = bytes([1, len(name)]) + name + (b"\0" if len(name) % 2 else b"")
    else:
        if ip.version != 4:
            raise ParticleKeyError(f"'{address}' is IPv6; the firmware's address field takes IPv4 or a host name")
        field_ = bytes([0, 4]) + ip.packed
    if len(field_) > SERVER_ADDRESS_SIZE:
        raise ParticleKeyError(f"'{address}' is too long for the firmware's {SERVER_ADDRESS_SIZE}-byte address field")
    return field_


def server_block(key: ServerKey, address: str, size: int) -> bytes:
    block = bytearray(b"\xff" * size)
    block[:len(key.der)] = key.der
    tlv = address_tlv(address)
    block[SERVER_ADDRESS_AT:SERVER_ADDRESS_AT + len(tlv)] = tlv
    return bytes(block)


def public_fingerprint(public_pem: str) -> str:
    key = serialization.load_pem_public_key(public_pem.encode())
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _public_pem(key) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
