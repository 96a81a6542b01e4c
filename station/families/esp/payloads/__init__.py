"""Per-device payload images (NVS, partition tables, ...) built in memory."""
from __future__ import annotations

from dataclasses import dataclass

CLIENT_CERT_PATH = "/client.der"
CLIENT_KEY_PATH = "/client.key"
CERTS_AR_PATH = "/certs.ar"


class PayloadError(ValueError):
    """A payload cannot be built or read; the message names the thing and the fix."""


@dataclass(frozen=True)
class IdentityFileNames:
    """Where BearSSL firmware finds its identity on its filesystem (LittleFS or SPIFFS); None: not written."""

    client_cert: str = CLIENT_CERT_PATH
    client_key: str = CLIENT_KEY_PATH
    ca: str | None = None  # the CA certificate as one DER file
    trust_store: str | None = CERTS_AR_PATH  # the CA certificates as a certs.ar archive
    fingerprint: str | None = None  # the broker certificate's fingerprint as text, "AB:CD:..."


def load_der_certificate(der: bytes, what: str):
    """A certificate given as DER bytes, or a PayloadError saying what was passed instead."""
    from cryptography import x509

    if not isinstance(der, (bytes, bytearray)):
        raise PayloadError(f"The {what} must be DER bytes, not {type(der).__name__}.")
    try:
        return x509.load_der_x509_certificate(bytes(der))
    except ValueError:
        raise PayloadError(
            f"The {what} is not a DER X.509 certificate; pass the certificate's DER bytes "
            "(convert PEM with `openssl x509 -outform der`)."
        ) from None


def check_key_matches(key, device_cert) -> None:
    """Refuse a private key that is not the one the device certificate was issued for."""
    from cryptography.hazmat.primitives import serialization

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != device_cert.public_key().public_bytes(der, spki):
        raise PayloadError(
            "The device private key does not belong to the device certificate (their public "
            "keys differ); pass the key the certificate was issued for."
        )
