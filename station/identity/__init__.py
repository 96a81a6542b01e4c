"""Device identity: the station's CA, IDevID certificates, and the ledger of every certificate issued.

    ca.py       StationCA: root + issuing CA + manifest signing key; file keys or a PKCS#11 token
    keys.py     passphrase/PIN lookup (env, OS keyring, prompt), encrypted key files, 0600 atomic writes
    pkcs11.py   CA keys held on a PKCS#11 token (SoftHSM2 in tests), usable by `cryptography` as signers
    idevid.py   the IDevID profile ([identity] in a product profile), host keys, the CSR path
    ledger.py   the certificate ledger: a table in the station's journal file
    cli.py      `station ca init | import | show`

Errors are `IdentityError`s (a `ValueError`): the message names the thing and the fix, and never carries a
secret. Submodules are imported on use, so importing this package does not load the PKCS#11 wrapper.
"""
from __future__ import annotations


class IdentityError(ValueError):
    """Something about identities or the CA can't be used as it is. The message says what and how to fix it."""


class CAError(IdentityError):
    """The station CA is missing, unreadable, or its key can't be unlocked."""


class SecretError(CAError):
    """A passphrase or PIN is missing or wrong (the message says where it came from, never what it is)."""


class TokenError(CAError):
    """The PKCS#11 module, token or key can't be used."""


class IdentityProfileError(IdentityError):
    """The [identity] table of a profile is wrong. The message names the file/table, the key and the fix."""


class CsrError(IdentityError):
    """A board's certificate signing request is refused."""


class LedgerError(IdentityError):
    """The certificate ledger refused a record."""


__all__ = ["IdentityError", "CAError", "SecretError", "TokenError", "IdentityProfileError", "CsrError",
           "LedgerError"]
