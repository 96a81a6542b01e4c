"""The supervisor lock: with a passphrase set, operators run batches but cannot change profiles or settings.

Only a salted scrypt hash is stored (ui-lock.json in the data dir, mode 0600); the passphrase itself is never
written anywhere. A station with a passphrase starts locked.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

MIN_LENGTH = 8


class LockError(ValueError):
    """The passphrase can't be set or checked as asked; the message says why."""


class SupervisorLock:
    FILE = "ui-lock.json"
    N, R, P = 2 ** 14, 8, 1  # 16 MiB, ~50 ms per check: cheap for a person, dear for a guesser

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.FILE
        self._record: dict | None = None
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            if record.get("kdf") == "scrypt" and record.get("hash") and record.get("salt"):
                self._record = record
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            # an unreadable lock file must not unlock the station: keep it locked with no passphrase that fits
            self._record = {"kdf": "scrypt", "salt": "00", "hash": "", "n": self.N, "r": self.R, "p": self.P,
                            "broken": True}
        self.locked = self._record is not None

    @property
    def is_set(self) -> bool:
        return self._record is not None

    @property
    def broken(self) -> bool:
        return bool(self._record and self._record.get("broken"))

    def _derive(self, passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        return hashlib.scrypt(passphrase.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32,
                              maxmem=128 * n * r * p + (1 << 20))

    def verify(self, passphrase: str) -> bool:
        """Blocking (~50 ms of CPU): call it from an executor."""
        record = self._record
        if record is None or not record.get("hash"):
            return False
        digest = self._derive(passphrase, bytes.fromhex(record["salt"]), record["n"], record["r"], record["p"])
        return hmac.compare_digest(digest.hex(), record["hash"])

    def set_passphrase(self, new: str, current: str | None = None) -> None:
        """Set or change the passphrase. Changing needs the current one. Blocking: call it from an executor."""
        if self.is_set and not self.broken and not (current is not None and self.verify(current)):
            raise LockError("The current supervisor passphrase is not right.")
        if len(new) < MIN_LENGTH:
            raise LockError(f"Use at least {MIN_LENGTH} characters for the supervisor passphrase.")
        salt = secrets.token_bytes(16)
        record = {"kdf": "scrypt", "n": self.N, "r": self.R, "p": self.P, "salt": salt.hex(),
                  "hash": self._derive(new, salt, self.N, self.R, self.P).hex()}
        self._write(record)
        self._record = record

    def remove(self, current: str) -> None:
        if self.is_set and not self.verify(current):
            raise LockError("The current supervisor passphrase is not right.")
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self._record = None
        self.locked = False

    def _write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
