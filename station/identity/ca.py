"""The station's certificate authority: a root, an issuing CA that signs IDevIDs, and a manifest signing key.

    root CA        ECDSA P-384, self-signed, pathlen 1, notAfter 99991231235959Z
    issuing CA     ECDSA P-256, signed by the root, pathlen 0, notAfter 99991231235959Z: signs device certs
    manifest key   ECDSA P-256, end-entity cert from the issuing CA (digitalSignature, EKU documentSigning):
                   signs exported manifests, so the CA key itself never signs anything but certificates

On disk, under `<data_dir>/ca/`: root.crt, issuing.crt, manifest.crt (+ intermediates.crt after an import of
a longer chain), and either the keys as encrypted PKCS#8 files (root.key, issuing.key, manifest.key) or,
with a PKCS#11 token, token.json naming the module, token and key labels (no secrets). Every file is 0600
and written atomically; a new CA is assembled in a temporary folder and moved into place in one rename, and
`--force` keeps the replaced one as `ca.replaced-<time>/` (losing a CA key is as bad as disclosing it).

`StationCA.load()` does everything that can fail (missing CA, wrong passphrase, missing token, wrong PIN,
key not matching its certificate, broken chain) before it returns, so a batch never starts with a CA it
can't use. `StationCA.ephemeral()` is a CA held in memory only, for `station demo` on a fresh machine.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from station.identity import CAError
from station.identity.keys import (SecretSource, as_source, ca_passphrase_source, check_new_passphrase,
                                   encrypt_private_key, fsync_dir, load_any_private_key, load_encrypted_key,
                                   pkcs11_pin_source, write_private_file)

CA_SUBDIR = "ca"
FOREVER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)  # GeneralizedTime
MANIFEST_CERT_DAYS = 3650
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")  # id-kp-documentSigning (RFC 9336)
DEFAULT_ORGANIZATION = "Provisioning Station"
_SIGNING_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


def ca_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / CA_SUBDIR


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, lower-case hex without colons."""
    return cert.fingerprint(hashes.SHA256()).hex()


def hash_for(key) -> hashes.HashAlgorithm | None:
    """The signature hash that fits a CA key: SHA-384 for P-384, SHA-512 for P-521, none for EdDSA."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {384: hashes.SHA384(), 521: hashes.SHA512()}.get(key.curve.key_size, hashes.SHA256())
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _same_key(a, b) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def subject_text(name: x509.Name) -> str:
    """A name in its encoded order, as people read it: "O=Example Devices, CN=Example Devices IDevID Root CA"."""
    return ", ".join(attr.rfc4514_string() for attr in name)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _ca_cert(subject: x509.Name, public_key, issuer: x509.Name, issuer_key, issuer_ski, pathlen: int,
             not_after: datetime.datetime) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(_now() - datetime.timedelta(minutes=5)).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=True, crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(ski, critical=False))
    if issuer_ski is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
    return builder.sign(issuer_key, hash_for(issuer_key))


def _manifest_cert(organization: str, public_key, issuing: x509.Certificate, issuing_key) -> x509.Certificate:
    now = _now()
    builder = (x509.CertificateBuilder()
               .subject_name(_name(organization, f"{organization} Manifest Signer"))
               .issuer_name(issuing.subject).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=MANIFEST_CERT_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuing)),
                              critical=False))
    return builder.sign(issuing_key, hash_for(issuing_key))


def _name(organization: str, common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class CertInfo:
    """One certificate of the CA as `station ca show` prints it."""

    role: str  # "root", "intermediate", "issuing", "manifest"
    subject: str
    sha256: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    key_location: str
    pem: str


class StationCA:
    """The CA that signs device identities. Build with `load`, `init`, `import_chain` or `ephemeral`."""

    def __init__(self, *, root: x509.Certificate, issuing: x509.Certificate, issuing_key,
                 manifest_cert: x509.Certificate, manifest_key, intermediates: tuple[x509.Certificate, ...] = (),
                 key_location: str = "memory", ca_dir: Path | None = None, is_ephemeral: bool = False,
                 token=None):
        if not isinstance(issuing_key, _SIGNING_KEYS):
            raise CAError(f"the issuing CA key is a {type(issuing_key).__name__}; use an EC, RSA or EdDSA key.")
        if not _same_key(issuing_key.public_key(), issuing.public_key()):
            raise CAError(f"the issuing CA key does not match the certificate '{_cn(issuing)}'; give the key "
                          f"that belongs to it.")
        self.root = root
        self.issuing = issuing
        self.intermediates = tuple(intermediates)
        self.manifest_cert = manifest_cert
        self.key_location = key_location
        self.ca_dir = ca_dir
        self.is_ephemeral = is_ephemeral
        self._issuing_key = issuing_key
        self._manifest_key = manifest_key
        self._token = token
        self._hash = hash_for(issuing_key)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuing))
        self._issuer = issuing.subject
        self.issuing_sha256 = fingerprint(issuing)

    @property
    def issuing_key(self):
        """The issuing CA's signing key (in memory, or a handle on the token): the station's local broker signs
        its server certificate and CRL with it."""
        return self._issuing_key

    def __repr__(self) -> str:
        kind = "ephemeral " if self.is_ephemeral else ""
        return f"<StationCA {kind}'{_cn(self.issuing)}' key: {self.key_location}>"

    # --- use ------------------------------------------------------------------------------------------------

    @property
    def chain(self) -> list[x509.Certificate]:
        """Issuing CA first, up to the root."""
        return [self.issuing, *self.intermediates, self.root]

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign a certificate as the issuing CA.

        `builder` carries subject, public key, serial, validity and the certificate's own extensions; it must
        NOT set the issuer name or the authority key identifier: this method adds both, from the issuing CA,
        and picks the hash that fits the CA key. Thread-safe.
        """
        builder = builder.issuer_name(self._issuer).add_extension(self._aki, critical=False)
        return builder.sign(self._issuing_key, self._hash)

    def manifest_signer(self) -> tuple[object, list[x509.Certificate]]:
        """(private key of the manifest signer, [manifest cert, issuing, …, root]); the key signs with
        `key.sign(data, ec.ECDSA(hashes.SHA256()))` whether it is a file key or on a token."""
        return self._manifest_key, [self.manifest_cert, *self.chain]

    def close(self) -> None:
        """Log out of the token, if any. The CA can't sign afterwards."""
        token, self._token = self._token, None
        if token is not None:
            token.close()

    def __enter__(self) -> "StationCA":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- construction ---------------------------------------------------------------------------------------

    @classmethod
    def ephemeral(cls, organization: str = "Demo station") -> "StationCA":
        """A complete CA held only in memory: nothing written, gone when the process ends (demo use)."""
        org = f"{organization} (ephemeral, not for production)"
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _name(org, f"{organization} Ephemeral Root CA")
        root = _ca_cert(root_name, root_key.public_key(), root_name, root_key, None, 1, FOREVER)
        issuing_key = ec.generate_private_key(ec.SECP256R1())
        issuing = _ca_cert(_name(org, f"{organization} Ephemeral Issuing CA"), issuing_key.public_key(),
                           root.subject, root_key, _ski(root), 0, FOREVER)
        manifest_key = ec.generate_private_key(ec.SECP256R1())
        manifest = _manifest_cert(org, manifest_key.public_key(), issuing, issuing_key)
        return cls(root=root, issuing=issuing, issuing_key=issuing_key, manifest_cert=manifest,
                   manifest_key=manifest_key, key_location="memory only (ephemeral CA)", is_ephemeral=True)

    @classmethod
    def load(cls, data_dir: str | os.PathLike, passphrase_source: SecretSource | str | None = None, *,
             pin_source: SecretSource | str | None = None) -> "StationCA":
        """Open the CA in `<data_dir>/ca/`, unlocking its keys now (wrong passphrase/PIN fail here)."""
        folder = ca_dir(data_dir)
        if not (folder / "issuing.crt").is_file():
            raise CAError(f"No station CA in {folder}; run `station ca init` or `station ca import`.")
        root = _read_cert(folder / "root.crt")
        issuing = _read_cert(folder / "issuing.crt")
        intermediates = tuple(_read_certs(folder / "intermediates.crt")) if (folder / "intermediates.crt").exists() \
            else ()
        manifest = _read_cert(folder / "manifest.crt")
        _verify_chain([issuing, *intermediates, root], str(folder))
        _check_dates(issuing, root)
        token_file = folder / "token.json"
        if token_file.exists():
            from station.identity.pkcs11 import Token

            conf = json.loads(token_file.read_text())
            token = Token(conf["module"], conf["token_label"], as_source(pin_source, pkcs11_pin_source))
            try:
                issuing_key = token.key(conf["keys"]["issuing"])
                manifest_key = token.key(conf["keys"]["manifest"])
                for key, name in ((issuing_key, "issuing.crt"), (manifest_key, "manifest.crt")):
                    cert = issuing if name == "issuing.crt" else manifest
                    if not _same_key(key.public_key(), cert.public_key()):
                        raise CAError(f"The key '{key.label}' on {token.ref.describe()} does not match "
                                      f"{folder / name}; is this the token the CA was made on?")
                return cls(root=root, issuing=issuing, issuing_key=issuing_key, manifest_cert=manifest,
                           manifest_key=manifest_key, intermediates=intermediates,
                           key_location=f"{token.ref.describe()}, key '{conf['keys']['issuing']}'",
                           ca_dir=folder, token=token)
            except BaseException:
                token.close()
                raise
        source = as_source(passphrase_source, ca_passphrase_source)
        issuing_key = load_encrypted_key(folder / "issuing.key", source)
        manifest_key = load_encrypted_key(folder / "manifest.key", source)
        for key, cert, name in ((issuing_key, issuing, "issuing"), (manifest_key, manifest, "manifest")):
            if not _same_key(key.public_key(), cert.public_key()):
                raise CAError(f"{folder / (name + '.key')} does not belong to {folder / (name + '.crt')}; restore "
                              f"the matching pair from your backup.")
        return cls(root=root, issuing=issuing, issuing_key=issuing_key, manifest_cert=manifest,
                   manifest_key=manifest_key, intermediates=intermediates,
                   key_location=f"encrypted file {folder / 'issuing.key'}", ca_dir=folder)

    @classmethod
    def init(cls, data_dir: str | os.PathLike, *, organization: str = DEFAULT_ORGANIZATION,
             passphrase_source: SecretSource | str | None = None, pkcs11_module: str | None = None,
             token_label: str | None = None, pin_source: SecretSource | str | None = None,
             force: bool = False) -> "StationCA":
        """Create a new root, issuing CA and manifest key. Keys go to encrypted files, or all three onto the
        PKCS#11 token when `pkcs11_module` and `token_label` are given. Refuses to replace a CA unless
        `force` (the old one is then kept in `ca.replaced-<time>/`)."""
        folder = ca_dir(data_dir)
        _refuse_existing(folder, force, "init")
        if (pkcs11_module is None) != (token_label is None):
            raise CAError("A CA on a PKCS#11 token needs both --pkcs11-module and --token-label; give both, or "
                          "neither for encrypted key files.")
        if not organization.strip():
            raise CAError("The organization name is empty; give --organization \"Your Company\".")
        stamp = time.strftime("%Y%m%d%H%M%S")
        token = None
        if pkcs11_module:
            from station.identity.pkcs11 import Token

            token = Token(pkcs11_module, token_label, as_source(pin_source, pkcs11_pin_source))
            labels = {role: f"station-{role}-{stamp}" for role in ("root", "issuing", "manifest")}
            try:
                root_key = token.generate_ec_key(labels["root"], ec.SECP384R1())
                issuing_key = token.generate_ec_key(labels["issuing"], ec.SECP256R1())
                manifest_key = token.generate_ec_key(labels["manifest"], ec.SECP256R1())
            except BaseException:
                token.close()
                raise
            secret = None
        else:
            secret = as_source(passphrase_source, ca_passphrase_source).get(confirm=True)
            check_new_passphrase(secret)
            root_key = ec.generate_private_key(ec.SECP384R1())
            issuing_key = ec.generate_private_key(ec.SECP256R1())
            manifest_key = ec.generate_private_key(ec.SECP256R1())
        try:
            root_name = _name(organization, f"{organization} IDevID Root CA")
            root = _ca_cert(root_name, root_key.public_key(), root_name, root_key, None, 1, FOREVER)
            issuing = _ca_cert(_name(organization, f"{organization} IDevID Issuing CA"), issuing_key.public_key(),
                               root.subject, root_key, _ski(root), 0, FOREVER)
            manifest = _manifest_cert(organization, manifest_key.public_key(), issuing, issuing_key)
            files = {"root.crt": _pem(root), "issuing.crt": _pem(issuing), "manifest.crt": _pem(manifest)}
            if token is not None:
                files["token.json"] = json.dumps({"module": pkcs11_module, "token_label": token_label,
                                                  "keys": labels}, indent=2).encode()
                location = f"{token.ref.describe()}, key '{labels['issuing']}'"
            else:
                files.update({"root.key": encrypt_private_key(root_key, secret),
                              "issuing.key": encrypt_private_key(issuing_key, secret),
                              "manifest.key": encrypt_private_key(manifest_key, secret)})
                location = f"encrypted file {folder / 'issuing.key'}"
            _install(folder, files, force)
            return cls(root=root, issuing=issuing, issuing_key=issuing_key, manifest_cert=manifest,
                       manifest_key=manifest_key, key_location=location, ca_dir=folder, token=token)
        except BaseException:
            if token is not None:
                token.close()
            raise

    @classmethod
    def import_chain(cls, data_dir: str | os.PathLike, chain_data: bytes, key_data: bytes, *,
                     chain_name: str = "the chain file", key_name: str = "the key file",
                     passphrase_source: SecretSource | str | None = None,
                     key_passphrase_source: SecretSource | str | None = None, force: bool = False) -> "StationCA":
        """Adopt an existing issuing CA: its certificate with the chain up to a self-signed root (PEM or DER),
        and its private key (encrypted or not; `key_passphrase_source`, default the CA passphrase lookup,
        opens an encrypted one). The key is stored encrypted with the station's CA passphrase, and a new
        manifest signing key is issued by the imported CA. The root's key is not needed and not stored."""
        folder = ca_dir(data_dir)
        _refuse_existing(folder, force, "import")
        station_source = as_source(passphrase_source, ca_passphrase_source)
        key = load_any_private_key(key_data, key_name,
                                   as_source(key_passphrase_source, lambda: station_source))
        if not isinstance(key, _SIGNING_KEYS):
            raise CAError(f"{key_name} holds a {type(key).__name__}; an issuing CA key must be EC, RSA or EdDSA.")
        certs = _parse_certs(chain_data, chain_name)
        issuing = next((c for c in certs if _same_key(c.public_key(), key.public_key())), None)
        if issuing is None:
            raise CAError(f"The key in {key_name} does not match any certificate in {chain_name} (it holds "
                          f"{', '.join(repr(_cn(c)) for c in certs)}); give the issuing CA's own key.")
        chain = _build_chain(issuing, certs, chain_name)
        _verify_chain(chain, chain_name)
        _check_dates(*chain)
        _check_is_ca(issuing, chain_name)
        secret = station_source.get(confirm=True)
        check_new_passphrase(secret)
        organization = next((str(a.value) for a in issuing.subject.get_attributes_for_oid(
            NameOID.ORGANIZATION_NAME)), DEFAULT_ORGANIZATION)
        manifest_key = ec.generate_private_key(ec.SECP256R1())
        manifest = _manifest_cert(organization, manifest_key.public_key(), issuing, key)
        root, intermediates = chain[-1], tuple(chain[1:-1])
        files = {"root.crt": _pem(root), "issuing.crt": _pem(issuing), "manifest.crt": _pem(manifest),
                 "issuing.key": encrypt_private_key(key, secret),
                 "manifest.key": encrypt_private_key(manifest_key, secret)}
        if intermediates:
            files["intermediates.crt"] = _pem(*intermediates)
        _install(folder, files, force)
        return cls(root=root, issuing=issuing, issuing_key=key, manifest_cert=manifest, manifest_key=manifest_key,
                   intermediates=intermediates, key_location=f"encrypted file {folder / 'issuing.key'}",
                   ca_dir=folder)


# --- reading and checking ---------------------------------------------------------------------------------------

def describe(data_dir: str | os.PathLike) -> list[CertInfo]:
    """The CA's certificates and where each key lives, without unlocking anything (for `station ca show`)."""
    folder = ca_dir(data_dir)
    if not (folder / "issuing.crt").is_file():
        raise CAError(f"No station CA in {folder}; run `station ca init` or `station ca import`.")
    token = json.loads((folder / "token.json").read_text()) if (folder / "token.json").exists() else None

    def where(role: str) -> str:
        if token is not None and role in token["keys"]:
            return f"PKCS#11 token '{token['token_label']}' ({token['module']}), key '{token['keys'][role]}'"
        file = folder / f"{role}.key"
        return f"encrypted file {file}" if file.exists() else "not on this station"

    entries = [("root", _read_cert(folder / "root.crt"))]
    if (folder / "intermediates.crt").exists():
        entries += [("intermediate", c) for c in reversed(_read_certs(folder / "intermediates.crt"))]
    entries += [("issuing", _read_cert(folder / "issuing.crt")), ("manifest", _read_cert(folder / "manifest.crt"))]
    return [CertInfo(role=role, subject=subject_text(cert.subject), sha256=fingerprint(cert),
                     not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                     key_location=where(role) if role != "intermediate" else "not on this station",
                     pem=cert.public_bytes(serialization.Encoding.PEM).decode())
            for role, cert in entries]


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CAError(f"{path} is missing, so the station CA in {path.parent} is incomplete; restore it from your "
                      f"backup, or set the CA up again with `station ca init --force`.") from None
    return _parse_certs(data, str(path))


def _read_cert(path: Path) -> x509.Certificate:
    return _read_certs(path)[0]


def _parse_certs(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CAError(f"{what} holds no readable X.509 certificate; give PEM (one or more "
                      f"'-----BEGIN CERTIFICATE-----' blocks) or one DER certificate.") from None
    return certs


def _build_chain(issuing: x509.Certificate, certs: list[x509.Certificate], what: str) -> list[x509.Certificate]:
    chain = [issuing]
    while chain[-1].issuer != chain[-1].subject:
        parent = next((c for c in certs if c.subject == chain[-1].issuer and c not in chain), None)
        if parent is None:
            raise CAError(f"The chain in {what} stops at '{_cn(chain[-1])}': its issuer "
                          f"'{chain[-1].issuer.rfc4514_string()}' is not in the file. Add every certificate up "
                          f"to the self-signed root.")
        chain.append(parent)
        if len(chain) > 8:
            raise CAError(f"The chain in {what} is longer than 8 certificates or loops; give issuing CA → root.")
    return chain


def _verify_chain(chain: list[x509.Certificate], what: str) -> None:
    for child, parent in zip(chain, chain[1:] + chain[-1:]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise CAError(f"In {what}, '{_cn(child)}' is not signed by '{_cn(parent)}'; the chain does not verify. "
                          f"Give the issuing CA's certificate with its own chain up to its root.") from None


def _check_dates(*certs: x509.Certificate) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    for cert in certs:
        if cert.not_valid_after_utc < now:
            raise CAError(f"CA certificate '{_cn(cert)}' expired on {cert.not_valid_after_utc:%Y-%m-%d}; devices "
                          f"signed now would not verify. Set up a new CA (`station ca init --force`).")
        if cert.not_valid_before_utc > now + datetime.timedelta(minutes=10):
            start = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M")
            raise CAError(f"CA certificate '{_cn(cert)}' is valid only from {start} UTC; check this machine's "
                          f"clock.")


def _check_is_ca(cert: x509.Certificate, what: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAError(f"'{_cn(cert)}' in {what} is not a CA certificate (basicConstraints CA:TRUE missing); give "
                      f"the issuing CA's certificate, not a device or server certificate.")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise CAError(f"'{_cn(cert)}' in {what} may not sign certificates (keyUsage lacks keyCertSign); give "
                          f"an issuing CA certificate.")
    except x509.ExtensionNotFound:
        pass


# --- writing ----------------------------------------------------------------------------------------------------

def _refuse_existing(folder: Path, force: bool, verb: str) -> None:
    if force or not folder.exists() or not any(folder.iterdir()):
        return
    try:
        issuing = _read_cert(folder / "issuing.crt")
        what = f" (issuing CA '{_cn(issuing)}', SHA-256 {fingerprint(issuing)[:16]}…)"
    except CAError:
        what = ""
    raise CAError(f"A station CA already exists in {folder}{what}; nothing was changed. Keep using it, or run "
                  f"`station ca {verb} --force` to replace it (the old CA is kept in {folder.name}.replaced-<time>/, "
                  f"and devices it issued still chain to it).")


def _install(folder: Path, files: dict[str, bytes], force: bool) -> None:
    """Write all files into a fresh temp folder (0700, files 0600), then move it into place in one rename."""
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-new-", dir=parent))
    try:
        os.chmod(staging, 0o700)
        for name, data in files.items():
            write_private_file(staging / name, data)
        if folder.exists():
            if any(folder.iterdir()):
                if not force:  # raced with another init
                    raise CAError(f"A station CA appeared in {folder} meanwhile; nothing was changed.")
                backup = parent / f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                n = 1
                while backup.exists():
                    backup = parent / f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
                    n += 1
                os.replace(folder, backup)
            else:
                folder.rmdir()
        os.replace(staging, folder)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
