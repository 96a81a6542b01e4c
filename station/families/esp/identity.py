"""Where an ESP board keeps its identity: the esp_secure_cert partition (TLV) or, for BearSSL firmware,
files on LittleFS or SPIFFS; building that image with a host-made key, and reading the certificate back in
verify."""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.families.esp.profile import EspOptions, FirmwareSet, fs_block_size, identity_target
from station.identity.ca import StationCA
from station.identity.ledger import Ledger
from station.identity.provision import IdentityPlan, issue_on_host
from station.model import StepFailed


def identity_target_step(options: EspOptions, firmware: FirmwareSet):
    """(store, partition) for the check step: a firmware without a place for the identity refuses the board."""
    try:
        return identity_target(options, firmware)
    except ValueError as exc:
        raise StepFailed(str(exc)) from exc


def build_identity_image(plan: IdentityPlan, ca: StationCA, ledger: Ledger, device_id: str,
                         options: EspOptions) -> bytes:
    """Make the key and certificate, and return the partition image that carries them (secret: holds a key)."""
    from station.families.esp.payloads.littlefs import build_identity_fs, identity_files
    from station.families.esp.payloads.secure_cert import build_secure_cert
    from station.families.esp.payloads.spiffs import build_spiffs

    key, cert = issue_on_host(plan, ca, ledger, device_id)
    der = cert.public_bytes(serialization.Encoding.DER)
    root_der = ca.root.public_bytes(serialization.Encoding.DER)
    if plan.store == "esp_secure_cert":
        return build_secure_cert(der, root_der, key, partition_size=plan.target.size)
    files = identity_files(der, key, [root_der], options.identity_files, options.broker_fingerprint)
    if plan.store == "spiffs":
        return build_spiffs(files, plan.target.size, fs_block_size(options))
    return build_identity_fs(files, size=plan.target.size, block_size=fs_block_size(options))


def read_identity_files(store: str, image: bytes, options: EspOptions) -> dict[str, bytes]:
    """The files of a filesystem identity store, as the board's firmware will find them."""
    from station.families.esp.payloads.littlefs import read_fs
    from station.families.esp.payloads.spiffs import read_spiffs

    if store == "spiffs":
        return read_spiffs(image, fs_block_size(options))
    return read_fs(image, fs_block_size(options), 32)


def read_back_length(store: str, image: bytes, options: EspOptions) -> int:
    """How much of the identity's place verify reads back: all of it, but of SPIFFS only the blocks in use
    (a megabyte of erased blocks is 12 s of serial reading at 921600 baud)."""
    from station.families.esp.payloads.spiffs import used_length

    return used_length(image, fs_block_size(options)) if store == "spiffs" else len(image)


def read_back_certificate(plan: IdentityPlan, image: bytes, options: EspOptions) -> x509.Certificate:
    """The device certificate as the board's firmware will find it in the partition just written."""
    from station.families.esp.payloads.secure_cert import DEV_CERT, read_secure_cert

    if plan.store == "esp_secure_cert":
        data = read_secure_cert(image)[(DEV_CERT, 0)]
        return x509.load_pem_x509_certificate(data.rstrip(b"\0")) if data.startswith(b"-----") \
            else x509.load_der_x509_certificate(data)
    return x509.load_der_x509_certificate(read_identity_files(plan.store, image, options)[
        options.identity_files.client_cert])
