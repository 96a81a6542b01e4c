"""Arduino ESP8266 signed firmware: check an image's appended signature against the firmware's public key.

Format (esp8266/Arduino `tools/signing.py`, `cores/esp8266/Updater.cpp`; ../shared/PROTOCOLS.md §11.4):
`<unsigned .bin> || <signature> || <u32 little-endian signature length>`, the signature being
RSASSA-PKCS1-v1_5 over the SHA-256 of the unsigned bytes (with DigestInfo, as `openssl dgst -sha256 -sign`
makes it). The device's Updater requires the length to equal the key's modulus size (256 for RSA-2048) and
refuses anything else, so an image that fails here would be refused by the board's own signed-update check.

Cores up to 2.5.2 signed the bare digest (`openssl rsautl -sign`, no DigestInfo); later cores refuse such
images, and so does this module, saying which format it found.

A signer is named by the SHA-256 of its public key's DER SubjectPublicKeyInfo (lower-case hex), which is
what the manifest records.
"""
from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

_LENGTH = struct.Struct("<I")


class SignedImageError(ValueError):
    """An image is not signed, or not by the key the firmware trusts; the message says which and the fix."""


def load_public_key(data: bytes, what: str = "the public key") -> rsa.RSAPublicKey:
    """An RSA public key from PEM (`public.key` as the core's docs make it) or DER bytes."""
    try:
        key = serialization.load_pem_public_key(data) if data.lstrip().startswith(b"-----") \
            else serialization.load_der_public_key(data)
    except ValueError:
        raise SignedImageError(f"{what} is not a PEM or DER public key; make it with `openssl rsa -in "
                               f"private.key -outform PEM -pubout -out public.key`.") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignedImageError(f"{what} is a {type(key).__name__.removeprefix('_')}, but the ESP8266 core's "
                               f"signed updates take RSA keys only; use an RSA-2048 key.")
    return key


def key_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, lower-case hex."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def split_signed_image(data: bytes, signature_length: int) -> tuple[bytes, bytes]:
    """(unsigned image, signature) of an image whose trailer says `signature_length`; SignedImageError if not."""
    if len(data) < _LENGTH.size + signature_length + 1:
        raise SignedImageError(f"the image ({len(data)} bytes) is too short to carry a {signature_length}-byte "
                               f"signature; sign it (Arduino: put private.key beside the sketch and rebuild).")
    (stated,) = _LENGTH.unpack_from(data, len(data) - _LENGTH.size)
    if stated != signature_length:
        raise SignedImageError(f"the image is not signed for this key: its last 4 bytes give a signature length "
                               f"of {stated}, not the key's {signature_length}; sign it (Arduino: put "
                               f"private.key beside the sketch and rebuild) or name the right public key.")
    end = len(data) - _LENGTH.size
    return data[:end - signature_length], data[end - signature_length:end]


def verify_signed_image(data: bytes, public_key: rsa.RSAPublicKey | bytes) -> str:
    """The signer's fingerprint (key_fingerprint) if `data` carries a signature that verifies under
    `public_key` (an RSA key, or its PEM/DER bytes); SignedImageError otherwise."""
    key = load_public_key(public_key) if isinstance(public_key, (bytes, bytearray)) else public_key
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignedImageError("the ESP8266 core's signed updates take RSA keys only; use an RSA-2048 key.")
    payload, signature = split_signed_image(bytes(data), key.key_size // 8)
    fingerprint = key_fingerprint(key)
    try:
        key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        if _is_legacy_signature(key, signature, payload):
            raise SignedImageError("the image is signed in the legacy format of cores up to 2.5.2 (bare digest, "
                                   "no DigestInfo), which later cores refuse; sign it again with the current "
                                   "tools/signing.py.") from None
        raise SignedImageError(f"the image's signature does not verify under the public key {fingerprint[:16]}…: "
                               f"it was signed with another key or changed after signing; sign it with the "
                               f"private key that belongs to the profile's public key.") from None
    return fingerprint


def sign_image(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """`data` with its signature and signature length appended, as the core's `signing.py --mode sign` writes."""
    signature = private_key.sign(bytes(data), padding.PKCS1v15(), hashes.SHA256())
    return bytes(data) + signature + _LENGTH.pack(len(signature))


def _is_legacy_signature(key: rsa.RSAPublicKey, signature: bytes, payload: bytes) -> bool:
    try:
        recovered = key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except InvalidSignature:
        return False
    return recovered == hashlib.sha256(payload).digest()
