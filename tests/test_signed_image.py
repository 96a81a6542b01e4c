"""Arduino ESP8266 signed images, checked against OpenSSL: the core's tools/signing.py signs with
`openssl dgst -sha256 -sign private.key`, and its docs make the keys with `openssl genrsa` / `openssl rsa -pubout`."""
from __future__ import annotations

import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from station.families.esp.signed_image import SignedImageError, key_fingerprint, load_public_key, sign_image, \
    verify_signed_image

PAYLOAD = bytes([0xE9, 0x04, 0x02, 0x40]) + bytes(range(256)) * 40


def openssl(*args: str, cwd: Path) -> bytes:
    return subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """private.key / public.key as the core's docs make them, plus the payload as a file."""
    folder = tmp_path_factory.mktemp("keys")
    openssl("genrsa", "-out", "private.key", "2048", cwd=folder)
    openssl("rsa", "-in", "private.key", "-outform", "PEM", "-pubout", "-out", "public.key", cwd=folder)
    (folder / "sketch.bin").write_bytes(PAYLOAD)
    return folder


def test_an_openssl_signed_image_verifies_and_names_its_signer_by_the_public_key(keys: Path):
    signature = openssl("dgst", "-sha256", "-sign", "private.key", "sketch.bin", cwd=keys)
    assert len(signature) == 256
    signed = PAYLOAD + signature + bytes([0x00, 0x01, 0x00, 0x00])  # the trailer §11.4 gives for RSA-2048

    signer = verify_signed_image(signed, (keys / "public.key").read_bytes())

    spki_der = openssl("rsa", "-pubin", "-in", "public.key", "-outform", "DER", cwd=keys)
    assert signer == hashlib.sha256(spki_der).hexdigest()


def test_sign_image_writes_what_openssl_verifies(keys: Path):
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key((keys / "private.key").read_bytes(), None)
    signed = sign_image(PAYLOAD, private)

    assert signed[:len(PAYLOAD)] == PAYLOAD and len(signed) == len(PAYLOAD) + 256 + 4
    assert struct.unpack("<I", signed[-4:]) == (256,)
    (keys / "sig.bin").write_bytes(signed[len(PAYLOAD):-4])
    assert b"Verified OK" in openssl("dgst", "-sha256", "-verify", "public.key", "-signature", "sig.bin",
                                     "sketch.bin", cwd=keys)


def test_an_image_signed_with_another_key_is_refused(keys: Path):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SignedImageError, match="does not verify under the public key"):
        verify_signed_image(sign_image(PAYLOAD, other), (keys / "public.key").read_bytes())


def test_an_image_changed_after_signing_is_refused(keys: Path):
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key((keys / "private.key").read_bytes(), None)
    signed = bytearray(sign_image(PAYLOAD, private))
    signed[100] ^= 0x01
    with pytest.raises(SignedImageError, match="changed after signing"):
        verify_signed_image(bytes(signed), private.public_key())


def test_an_unsigned_image_is_refused_with_the_length_its_tail_gives(keys: Path):
    with pytest.raises(SignedImageError, match=r"signature length of \d+, not the key's 256"):
        verify_signed_image(PAYLOAD, (keys / "public.key").read_bytes())
    with pytest.raises(SignedImageError, match="too short"):
        verify_signed_image(b"\xE9" * 100, (keys / "public.key").read_bytes())


def test_a_legacy_bare_digest_signature_is_named_as_such(keys: Path):
    (keys / "digest.bin").write_bytes(hashlib.sha256(PAYLOAD).digest())
    signature = openssl("pkeyutl", "-sign", "-inkey", "private.key", "-in", "digest.bin", cwd=keys)  # = rsautl -sign
    with pytest.raises(SignedImageError, match="legacy format"):
        verify_signed_image(PAYLOAD + signature + struct.pack("<I", 256), (keys / "public.key").read_bytes())


def test_keys_the_core_cannot_use_are_refused_by_name():
    from cryptography.hazmat.primitives import serialization

    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SignedImageError, match="RSA keys only"):
        load_public_key(ec_pem, "signing key")
    with pytest.raises(SignedImageError, match="not a PEM or DER public key"):
        load_public_key(b"-----BEGIN NONSENSE-----\n", "signing key")


def test_the_fingerprint_is_stable_across_encodings(keys: Path):
    pem = (keys / "public.key").read_bytes()
    der = openssl("rsa", "-pubin", "-in", "public.key", "-outform", "DER", cwd=keys)
    assert key_fingerprint(load_public_key(pem)) == key_fingerprint(load_public_key(der))
