"""Per-device payload images (NVS, partition tables, ...) built in memory."""


class PayloadError(ValueError):
    """A payload cannot be built or read; the message names the thing and the fix."""


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
