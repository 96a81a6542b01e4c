"""CA keys on a PKCS#11 token (an HSM, a smart card, or SoftHSM2), usable by `cryptography` as signing keys.

Keys are generated ON the token, sensitive and non-extractable; the station only ever holds a handle. A
`TokenKey` implements `cryptography`'s `EllipticCurvePrivateKey` far enough for `CertificateBuilder.sign(key,
SHA256())` and `key.sign(data, ECDSA(SHA256()))`: the data is hashed on the host, the token signs the digest
with CKM_ECDSA (SoftHSM 2.6.1 has no CKM_ECDSA_SHA256), and the raw r||s is DER-encoded.

PKCS#11 logs in per application, not per session, so one logged-in session per token is shared by every
key on it (reference counted) and signing on it is serialised by a lock. A module sees tokens as they were
when it was initialised; when no session of ours is open the module is re-initialised once to find a token
that was created after start-up.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass

import pkcs11
import pkcs11.exceptions as p11err
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from station.identity import SecretError, TokenError
from station.identity.keys import SecretSource

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_CURVES = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1}
_PIN_PEPPER = secrets.token_bytes(32)  # in memory only: lets a second open check its PIN against the first


class _Shared:
    """One logged-in session on one token, shared by all `Token`s open on it in this process."""

    def __init__(self, session, pin_digest: bytes):
        self.session = session
        self.pin_digest = pin_digest
        self.users = 0
        self.lock = threading.Lock()


_pool: dict[tuple[str, str], _Shared] = {}  # (module path, token serial) -> shared session
_pool_lock = threading.Lock()


def _pin_digest(pin: str) -> bytes:
    return hmac.new(_PIN_PEPPER, pin.encode("utf-8"), hashlib.sha256).digest()


@dataclass(frozen=True)
class TokenRef:
    """Where a CA key lives: stored in the CA folder (token.json). No secrets in it."""

    module: str
    token_label: str

    def describe(self) -> str:
        return f"PKCS#11 token '{self.token_label}' ({self.module})"


class Token:
    """An open, logged-in token. Use as a context manager, or call close()."""

    def __init__(self, module: str, token_label: str, pin_source: SecretSource):
        self.ref = TokenRef(module, token_label)
        lib = _load_module(module)
        token = _find_token(lib, module, token_label)
        self._key = (module, token.serial)
        pin = pin_source.get()
        digest = _pin_digest(pin.reveal())
        with _pool_lock:
            shared = _pool.get(self._key)
            if shared is not None and not hmac.compare_digest(shared.pin_digest, digest):
                raise SecretError(f"The PKCS#11 PIN for token '{token_label}' is wrong ({pin.origin}); it differs "
                                  f"from the PIN this station is already logged in with. Set STATION_PKCS11_PIN "
                                  f"to the token's user PIN.")
            if shared is None:
                shared = _Shared(_login(token, token_label, pin), digest)
                _pool[self._key] = shared
            shared.users += 1
        self._shared: _Shared | None = shared

    def __repr__(self) -> str:
        return f"<Token {self.ref.describe()}{'' if self._shared else ' (closed)'}>"

    def __enter__(self) -> "Token":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with _pool_lock:
            shared, self._shared = self._shared, None
            if shared is None:
                return
            shared.users -= 1
            if shared.users == 0:
                _pool.pop(self._key, None)
                with shared.lock:
                    try:
                        shared.session.close()
                    except p11err.PKCS11Error:
                        pass

    @property
    def shared(self) -> _Shared:
        if self._shared is None:
            raise TokenError(f"{self.ref.describe()} was closed; load the CA again.")
        return self._shared

    def generate_ec_key(self, label: str, curve: ec.EllipticCurve) -> "TokenKey":
        """A new EC key pair on the token: private half sensitive, non-extractable, sign-only."""
        name = curve.name
        if name not in _CURVES:
            raise TokenError(f"curve {name} is not supported on tokens; use P-256 or P-384.")
        key_id = secrets.token_bytes(16)
        shared = self.shared
        with shared.lock:
            try:
                params = shared.session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(name)}, local=True)
                params.generate_keypair(
                    store=True, label=label, id=key_id,
                    public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
                    private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                                      Attribute.SIGN: True, Attribute.DECRYPT: False, Attribute.DERIVE: False,
                                      Attribute.TOKEN: True, Attribute.PRIVATE: True})
            except p11err.PKCS11Error as exc:
                raise TokenError(f"{self.ref.describe()} could not generate an {name} key ({_name(exc)}); check "
                                 f"that the token supports EC keys and has free space.") from None
        return self.key(label)

    def key(self, label: str) -> "TokenKey":
        """The EC private key labelled `label` (and its public half) on this token."""
        shared = self.shared
        with shared.lock:
            try:
                private = shared.session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC,
                                                 label=label)
                public = shared.session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC,
                                                label=label)
                spki = encode_ec_public_key(public)
            except p11err.NoSuchKey:
                raise TokenError(f"{self.ref.describe()} has no EC key pair labelled '{label}'. Is this the token "
                                 f"the CA was made on? Plug in that token, or set the CA up again with "
                                 f"`station ca init --pkcs11-module … --token-label …`.") from None
            except p11err.MultipleObjectsReturned:
                raise TokenError(f"{self.ref.describe()} has several keys labelled '{label}'; remove the "
                                 f"duplicates with the token's tools.") from None
        return TokenKey(self, label, private, serialization.load_der_public_key(spki))


def _load_module(module: str):
    if not os.path.isfile(module):
        raise TokenError(f"PKCS#11 module {module} not found. Install the token's PKCS#11 library (for SoftHSM2: "
                         f"apt-get install softhsm2, module {SOFTHSM2_MODULE}) or fix --pkcs11-module.")
    try:
        return pkcs11.lib(module)
    except p11err.PKCS11Error as exc:
        raise TokenError(f"PKCS#11 module {module} can't be loaded ({exc}); is it a PKCS#11 library for this "
                         f"machine's architecture?") from None


def _find_token(lib, module: str, label: str):
    for attempt in range(2):
        try:
            return lib.get_token(token_label=label)
        except p11err.NoSuchToken:
            with _pool_lock:
                busy = any(m == module for m, _ in _pool)
            if attempt or busy:
                break
            # tokens made after the module was initialised are invisible until it is initialised again
            try:
                lib.reinitialize()
            except p11err.PKCS11Error:
                break
        except p11err.MultipleTokensReturned:
            raise TokenError(f"More than one PKCS#11 token is labelled '{label}' in {module}; relabel one or "
                             f"unplug it.") from None
    try:
        present = sorted({t.label for t in lib.get_tokens()} - {""})
    except p11err.PKCS11Error:
        present = []
    listing = ", ".join(f"'{p}'" for p in present) if present else "none initialised"
    raise TokenError(f"No PKCS#11 token labelled '{label}' in {module} (tokens present: {listing}). Plug it in, "
                     f"initialise it (SoftHSM2: softhsm2-util --init-token --free --label {label}), or fix "
                     f"--token-label.")


def _login(token, label: str, pin) -> object:
    try:
        return token.open(rw=True, user_pin=pin.reveal())
    except (p11err.PinIncorrect, p11err.PinInvalid, p11err.PinLenRange):
        raise SecretError(f"The PKCS#11 PIN for token '{label}' is wrong ({pin.origin}). Set STATION_PKCS11_PIN "
                          f"(or the keyring entry provisioning-station/pkcs11-pin) to the token's user PIN.") from None
    except p11err.PinLocked:
        raise SecretError(f"The user PIN of token '{label}' is locked after too many wrong tries; unlock it with "
                          f"the security officer PIN using the token's tools.") from None
    except p11err.PinExpired:
        raise SecretError(f"The user PIN of token '{label}' has expired; set a new one with the token's "
                          f"tools.") from None
    except p11err.UserAlreadyLoggedIn:
        # another program in this process is logged in: the token is usable, and our PIN is remembered
        return token.open(rw=True)
    except p11err.PKCS11Error as exc:
        raise TokenError(f"Could not open a session on token '{label}' ({_name(exc)}); check that it is plugged "
                         f"in and not in use by another program.") from None


def _name(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class TokenKey(ec.EllipticCurvePrivateKey):
    """An EC private key held on a token. Signs; never exports."""

    def __init__(self, token: Token, label: str, handle, public: ec.EllipticCurvePublicKey):
        self._token = token
        self.label = label
        self._handle = handle
        self._public = public

    def __repr__(self) -> str:
        return f"<TokenKey '{self.label}' on {self._token.ref.describe()}>"

    @property
    def token(self) -> Token:
        return self._token

    @property
    def extractable(self) -> bool:
        """CKA_EXTRACTABLE as the token reports it (False for keys this module made)."""
        with self._token.shared.lock:
            return bool(self._handle[Attribute.EXTRACTABLE])

    @property
    def sensitive(self) -> bool:
        with self._token.shared.lock:
            return bool(self._handle[Attribute.SENSITIVE])

    # --- the EllipticCurvePrivateKey interface --------------------------------------------------------------

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TokenError(f"token keys sign with ECDSA only, not {type(signature_algorithm).__name__}.")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)
        else:
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        shared = self._token.shared
        with shared.lock:
            try:
                raw = self._handle.sign(digest, mechanism=Mechanism.ECDSA)
            except p11err.PKCS11Error as exc:
                raise TokenError(f"{self._token.ref.describe()} refused to sign with '{self.label}' "
                                 f"({_name(exc)}); is the token still plugged in?") from None
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def exchange(self, algorithm, peer_public_key) -> bytes:
        raise TokenError(f"{self!r} is a signing key; it does no key exchange.")

    def private_numbers(self):
        raise TokenError(f"{self!r} can't be exported: it is non-extractable on the token, by design.")

    def private_bytes(self, encoding, format, encryption_algorithm) -> bytes:
        raise TokenError(f"{self!r} can't be exported: it is non-extractable on the token, by design.")

    def __copy__(self) -> "TokenKey":
        return self

    def __deepcopy__(self, memo) -> "TokenKey":
        return self

    def __reduce__(self):
        raise TypeError("a token key handle can't be pickled")
