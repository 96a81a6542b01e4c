"""The broker's TLS material, made with the station's issuing CA: its server certificate and the CRL.

The station CA module is not needed here: the functions take the issuing certificate and a signing key object
(anything `CertificateBuilder.sign` accepts: an EC, RSA or EdDSA private key, or a PKCS#11 signer; SHA-256
is used except with EdDSA).
`IssuingCA` bundles those with the chain the broker trusts for device certificates.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from station.cloud import BrokerError

SERVER_CERT_DAYS = 397  # what browsers accept for a TLS server certificate; renewed by `up()` 30 days ahead
CRL_DAYS = 365  # an expired CRL makes OpenSSL refuse every device, so `up()` re-signs it each start


@dataclass(frozen=True)
class IssuingCA:
    """What the broker needs from the station CA."""

    certificate: x509.Certificate  # the issuing CA: signs device certificates, the server certificate, the CRL
    key: Any = None  # its signing key object; None when only status/down are wanted
    chain: tuple[x509.Certificate, ...] = ()  # issuing CA .. root: the device listener's `cafile`

    def trust_pem(self) -> bytes:
        certs = self.chain or (self.certificate,)
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _hash_for(key: Any) -> hashes.HashAlgorithm | None:
    """SHA-256, except for EdDSA keys, which sign without a separate hash."""
    return None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def check_issuing_ca(issuing_cert: x509.Certificate) -> None:
    """Refuse an issuing certificate that can't sign certificates and CRLs (OpenSSL checks keyUsage)."""
    try:
        bc = issuing_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            raise BrokerError("the issuing certificate is not a CA certificate (basicConstraints CA:FALSE); "
                              "use the station's issuing CA (`station ca show`).")
    except x509.ExtensionNotFound:
        raise BrokerError("the issuing certificate has no basicConstraints; it can't act as a CA.") from None
    try:
        ku = issuing_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign or not ku.crl_sign:
        raise BrokerError("the issuing CA certificate's keyUsage lacks keyCertSign or cRLSign, so the broker "
                          "could not check its CRL; re-create the issuing CA with both.")


def issue_server_certificate(issuing_cert: x509.Certificate, issuing_key: Any,
                             hostnames: Iterable[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh P-256 key and a TLS server certificate for `hostnames` (DNS names or IP addresses)."""
    names = list(dict.fromkeys(hostnames))
    if not names:
        raise ValueError("the server certificate needs at least one host name or address")
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "station local broker")]))
        .issuer_name(issuing_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing_cert.public_key()),
                       critical=False)
    )
    return key, builder.sign(issuing_key, _hash_for(issuing_key))


def server_certificate_fits(cert: x509.Certificate, issuing_cert: x509.Certificate, hostnames: Iterable[str],
                            margin_days: int = 30) -> bool:
    """True when `cert` was issued by `issuing_cert`, covers `hostnames`, and is valid for `margin_days` more."""
    if cert.issuer != issuing_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuing_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc < _now() + dt.timedelta(days=margin_days):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return set(hostnames) <= have


def make_crl(issuing_cert: x509.Certificate, issuing_key: Any, revoked: Iterable[tuple[int, dt.datetime]],
             *, number: int, last_update: dt.datetime) -> x509.CertificateRevocationList:
    """A CRL signed by the issuing CA listing `revoked` (serial, when).

    OpenSSL keeps every CRL it ever loaded for a listener and, among CRLs of the same issuer, uses the one with
    the latest lastUpdate; so each new CRL must have a strictly later `last_update` than the one before it.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuing_cert.subject)
        .last_update(last_update)
        .next_update(last_update + dt.timedelta(days=CRL_DAYS))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing_cert.public_key()),
                       critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(issuing_key, _hash_for(issuing_key))


def spki_sha256(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def cert_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
