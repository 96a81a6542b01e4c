"""Secrets and key files: where the CA passphrase and the token PIN come from, and how keys are kept on disk.

A secret comes from an environment variable, else the OS keyring (service "provisioning-station"), else an
interactive prompt when stdin is a terminal; never from a file the station wrote. The lookup is
`station.secrets`; the value is held in a `Secret`, whose repr names only where it came from.

Private keys on disk are PKCS#8 PEM encrypted with `BestAvailableEncryption`; every file the CA writes is
created 0600 next to its final name and moved into place with os.replace, so a crash never leaves a
half-written key under the real name.
"""
from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from station import secrets
from station.identity import CAError, SecretError
from station.secrets import ENV, KEYRING, Place, Prompt, Secret, SecretSpec, stdin_is_terminal

KEYRING_SERVICE = "provisioning-station"
CA_PASSPHRASE_ENV = "STATION_CA_PASSPHRASE"
CA_PASSPHRASE_KEYRING_USER = "ca"
PKCS11_PIN_ENV = "STATION_PKCS11_PIN"
PKCS11_PIN_KEYRING_USER = "pkcs11-pin"
MIN_NEW_PASSPHRASE = 8


class SecretSource:
    """One of the CA's secrets (passphrase, PIN): the environment variable, else the OS keyring entry
    provisioning-station/<keyring_user>, else a prompt (only when stdin is a terminal) — a `SecretSpec`
    lookup, done once, on first `get()`, and remembered for this object's life only.
    """

    def __init__(self, what: str, env: str | None, keyring_user: str | None, *,
                 environ: Mapping[str, str] | None = None, interactive: bool | None = None,
                 prompt: Prompt | None = None):
        places = ((Place(ENV, env),) if env else ()) + \
                 ((Place(KEYRING, f"{KEYRING_SERVICE}/{keyring_user}"),) if keyring_user else ())
        self.spec = SecretSpec(what, places, typed=interactive is not False)
        self.what = what  # "CA key passphrase", "PKCS#11 PIN for token 'station'"
        self._environ = environ
        self._interactive = interactive
        self._prompt = prompt or getpass.getpass
        self._cached: Secret | None = None

    @classmethod
    def fixed(cls, value: str, what: str = "secret", origin: str = "given by the caller") -> "SecretSource":
        """A source that always gives `value` (for programs that already hold the secret)."""
        source = cls(what, None, None, interactive=False)
        source._cached = Secret(value, origin)
        return source

    def __repr__(self) -> str:
        return f"<SecretSource {self.what}: {self.describe()}>"

    def describe(self) -> str:
        return self._cached.origin if self._cached is not None and not self.spec.places else self.spec.describe()

    def get(self, *, confirm: bool = False) -> Secret:
        """The secret, or SecretError saying where it was looked for and how to provide it.

        `confirm` asks twice when the secret is typed at a prompt (for a new passphrase).
        """
        if self._cached is None:
            interactive = self._interactive if self._interactive is not None else stdin_is_terminal()
            try:
                self._cached = self.spec.resolve(environ=self._environ, prompt=self._prompt if interactive else None,
                                                 confirm=confirm)
            except secrets.SecretError as exc:
                raise SecretError(str(exc)) from None
        return self._cached


def ca_passphrase_source(environ: Mapping[str, str] | None = None, interactive: bool | None = None) -> SecretSource:
    """STATION_CA_PASSPHRASE, else keyring provisioning-station/ca, else a prompt."""
    return SecretSource("CA key passphrase", CA_PASSPHRASE_ENV, CA_PASSPHRASE_KEYRING_USER, environ=environ,
                        interactive=interactive)


def pkcs11_pin_source(environ: Mapping[str, str] | None = None, interactive: bool | None = None) -> SecretSource:
    """STATION_PKCS11_PIN, else keyring provisioning-station/pkcs11-pin, else a prompt."""
    return SecretSource("PKCS#11 user PIN", PKCS11_PIN_ENV, PKCS11_PIN_KEYRING_USER, environ=environ,
                        interactive=interactive)


def as_source(value: "SecretSource | Secret | str | None", default: Callable[[], SecretSource]) -> SecretSource:
    """Accept a source, a Secret, a plain string (taken as given), or None (the default lookup)."""
    if value is None:
        return default()
    if isinstance(value, SecretSource):
        return value
    if isinstance(value, Secret):
        return SecretSource.fixed(value.reveal(), origin=value.origin)
    if isinstance(value, str):
        return SecretSource.fixed(value)
    raise TypeError(f"expected a SecretSource, Secret or str, got {type(value).__name__}")


def check_new_passphrase(secret: Secret) -> None:
    if len(secret.reveal()) < MIN_NEW_PASSPHRASE:
        raise SecretError(f"The new CA key passphrase ({secret.origin}) is shorter than {MIN_NEW_PASSPHRASE} "
                          f"characters; choose a longer one. It protects every device identity this station makes.")


# --- key files -------------------------------------------------------------------------------------------------

def encrypt_private_key(key: PrivateKeyTypes, secret: Secret) -> bytes:
    """PKCS#8 PEM, encrypted with the best scheme `cryptography` offers."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(secret.encoded()))


def load_encrypted_key(path: Path, source: SecretSource) -> PrivateKeyTypes:
    """Decrypt a key file the station wrote. A key stored in clear is refused (the station never writes one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CAError(f"The CA key file {path} is missing; restore it from your backup, or run `station ca init "
                      f"--force` / `station ca import` to set up a CA again.") from None
    except PermissionError:
        raise CAError(f"The CA key file {path} can't be read by this user; run the station as the user that "
                      f"created the CA (files are 0600).") from None
    if b"ENCRYPTED" not in data.split(b"\n", 1)[0] and b"Proc-Type: 4,ENCRYPTED" not in data:
        raise CAError(f"The CA key file {path} is not encrypted; the station never keeps a CA key in clear. "
                      f"Move it away and import it with `station ca import`, which stores it encrypted.")
    secret = source.get()
    try:
        return serialization.load_pem_private_key(data, password=secret.encoded())
    except ValueError:
        raise SecretError(f"The CA key passphrase is wrong ({secret.origin}); {path.name} in {path.parent} can't "
                          f"be decrypted with it. Use the passphrase given at `station ca init` "
                          f"(set {CA_PASSPHRASE_ENV} or the keyring entry {KEYRING_SERVICE}/"
                          f"{CA_PASSPHRASE_KEYRING_USER}).") from None


def load_any_private_key(data: bytes, what: str, source: SecretSource) -> PrivateKeyTypes:
    """A key to import: PEM or DER, in clear or encrypted (then `source` gives its passphrase)."""
    loaders = (serialization.load_pem_private_key, serialization.load_der_private_key)
    loader = loaders[0] if data.lstrip().startswith(b"-----") else loaders[1]
    try:
        return loader(data, password=None)
    except TypeError:  # encrypted: it needs a passphrase
        pass
    except ValueError:
        raise CAError(f"{what} is not a private key this station can read (PEM or DER, PKCS#8 or "
                      f"traditional); export the issuing CA's key in one of those.") from None
    secret = source.get()
    try:
        return loader(data, password=secret.encoded())
    except ValueError:
        raise SecretError(f"The passphrase for {what} is wrong ({secret.origin}); give the passphrase that "
                          f"file was encrypted with.") from None


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` as a 0600 file, atomically (temp file in the same folder, fsync, os.replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
