"""The certificate ledger: every certificate the station's CA issued, in the station's journal file.

A certificate is recorded (committed and fsynced) before it is handed to anyone, inside one transaction
that refuses a serial number or a public key already in the ledger; so a serial collision is never issued
twice and a key seen before (a broken RNG, a board agent replaying its key) is caught. At most one live
(not voided) certificate exists per device serial (subject serialNumber): a second one is refused with
"already provisioned on DATE at PORT; use re-provision". A failed device's certificate is voided, never
deleted, so a record can't look valid after the fact.

The ledger opens its own connection to the journal's file (station/store.py: WAL, synchronous=FULL) and
shares it with the journal's tables; the port and date of a device come from the journal's `devices` table.
"""
from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from station.identity import LedgerError
from station.serials import SerialPool
from station.store import MEMORY, IntegrityError, Schema, connect, is_url

JOURNAL_FILE = "journal.sqlite3"  # the journal's file name in the data dir (station/cli.py)

TABLES_V1 = """
CREATE TABLE IF NOT EXISTS certificates (
    serial_hex TEXT PRIMARY KEY,                  -- certificate serialNumber, upper-case hex, even length
    subject_serial TEXT NOT NULL,                 -- the device serial (subject serialNumber, 2.5.4.5)
    device_id TEXT,                               -- journal devices.id of the board it was made for
    public_key_sha256 TEXT NOT NULL UNIQUE,       -- SHA-256 of the SubjectPublicKeyInfo DER, hex
    key_origin TEXT NOT NULL,                     -- "host" (made by the station) or "board" (CSR)
    not_after TEXT NOT NULL,                      -- ISO 8601 UTC, e.g. 9999-12-31T23:59:59Z
    issued REAL NOT NULL,                         -- Unix time
    voided REAL,                                  -- Unix time, NULL while the certificate is live
    void_reason TEXT,
    issuer_sha256 TEXT NOT NULL DEFAULT '',       -- SHA-256 fingerprint of the issuing CA certificate
    certificate BLOB                              -- the DER certificate (public material)
);
CREATE UNIQUE INDEX IF NOT EXISTS certificates_live_subject ON certificates(subject_serial) WHERE voided IS NULL;
CREATE INDEX IF NOT EXISTS certificates_device ON certificates(device_id);
"""

# On PostgreSQL the stations' ledgers meet. A key or a live device serial there twice is a finding that
# `station db status` reports, not a write refused: each station refused it already in its own file, and a
# station that was offline must still be able to hand its records in.
PG_TABLES_V1 = """
CREATE TABLE IF NOT EXISTS certificates (
    serial_hex TEXT PRIMARY KEY,
    subject_serial TEXT NOT NULL,
    device_id TEXT,
    public_key_sha256 TEXT NOT NULL,
    key_origin TEXT NOT NULL,
    not_after TEXT NOT NULL,
    issued DOUBLE PRECISION NOT NULL,
    voided DOUBLE PRECISION,
    void_reason TEXT,
    issuer_sha256 TEXT NOT NULL DEFAULT '',
    certificate BYTEA
);
CREATE INDEX IF NOT EXISTS certificates_subject ON certificates(subject_serial);
CREATE INDEX IF NOT EXISTS certificates_key ON certificates(public_key_sha256);
CREATE INDEX IF NOT EXISTS certificates_device ON certificates(device_id);
"""

SCHEMA = Schema("ledger", (TABLES_V1,), postgres=(PG_TABLES_V1,))  # version 1: the table as made before versions were kept


@dataclass(frozen=True)
class CertRecord:
    serial_hex: str
    subject_serial: str
    device_id: str | None
    public_key_sha256: str
    key_origin: str
    not_after: str
    issued: float
    voided: float | None
    void_reason: str | None
    issuer_sha256: str
    certificate: bytes | None

    @property
    def live(self) -> bool:
        return self.voided is None

    def cert(self) -> x509.Certificate | None:
        return x509.load_der_x509_certificate(self.certificate) if self.certificate else None


COLUMNS = ("serial_hex, subject_serial, device_id, public_key_sha256, key_origin, not_after, issued, voided, "
            "void_reason, issuer_sha256, certificate")
_PREFIXED = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))


class DuplicateSerialError(LedgerError):
    """The certificate serial is in the ledger already (issuance retries with a new one)."""


class DuplicateKeyError(LedgerError):
    """This public key was certified before."""

    def __init__(self, message: str, previous: CertRecord):
        super().__init__(message)
        self.previous = previous


class AlreadyProvisionedError(LedgerError):
    """The device serial has a live certificate already."""

    def __init__(self, message: str, previous: CertRecord):
        super().__init__(message)
        self.previous = previous


def serial_hex(value: int | x509.Certificate) -> str:
    """Certificate serial as upper-case hex of even length (as `openssl x509 -serial` prints it)."""
    number = value.serial_number if isinstance(value, x509.Certificate) else value
    text = f"{number:X}"
    return text if len(text) % 2 == 0 else "0" + text


def public_key_sha256(public_key: PublicKeyTypes) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class Ledger:
    def __init__(self, path: str | Path):
        """`path`: the journal file (data_dir/journal.sqlite3), ":memory:" for a throw-away ledger, or a
        PostgreSQL URL (every station's certificates)."""
        self.path = None if str(path) == MEMORY else path if is_url(path) else Path(path)
        self._lock = threading.Lock()
        self._db = connect(path, SCHEMA)
        self.serials = SerialPool(path)  # the device serial numbers it hands out ({counter}), in the same file
        # every station's live certificates (station/replica.py: Replica.find_live), when the station has a
        # factory database: a device serial live there is "already provisioned" here too
        self.remote: Callable[[str | None, str | None], CertRecord | None] | None = None  # (serial, mac)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path) -> "Ledger":
        return cls(Path(data_dir) / JOURNAL_FILE)

    def __repr__(self) -> str:
        return f"<Ledger {self.path or ':memory:'}>"

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self.serials.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writes ---------------------------------------------------------------------------------------------

    def record_issue(self, cert: x509.Certificate, *, subject_serial: str, key_origin: str,
                     device_id: str | None = None, issuer_sha256: str = "") -> CertRecord:
        """Record a freshly signed certificate, durably, before anyone gets it.

        Raises DuplicateSerialError (issue again with a new serial), DuplicateKeyError (the key was certified
        before) or AlreadyProvisionedError (the device serial has a live certificate).
        """
        record = CertRecord(
            serial_hex=serial_hex(cert), subject_serial=subject_serial, device_id=device_id,
            public_key_sha256=public_key_sha256(cert.public_key()), key_origin=key_origin,
            not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), issued=time.time(), voided=None,
            void_reason=None, issuer_sha256=issuer_sha256, certificate=cert.public_bytes(serialization.Encoding.DER))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._one_locked("serial_hex = ?", (record.serial_hex,)):
                    raise DuplicateSerialError(f"certificate serial {record.serial_hex} is in the ledger already")
                seen = self._one_locked("public_key_sha256 = ?", (record.public_key_sha256,))
                if seen:
                    raise DuplicateKeyError(self._key_seen_message_locked(seen), seen)
                live = self._one_locked("subject_serial = ? AND voided IS NULL", (subject_serial,))
                if live:
                    raise AlreadyProvisionedError(self._already_message_locked(live), live)
                self._db.execute(f"INSERT INTO certificates ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                 astuple(record))
                self._db.execute("COMMIT")
            except (sqlite3.IntegrityError, IntegrityError) as exc:  # another process won a race the checks missed
                self._db.execute("ROLLBACK")
                if "serial_hex" in str(exc):
                    raise DuplicateSerialError(f"certificate serial {record.serial_hex} is in the ledger "
                                               f"already") from None
                raise LedgerError(f"The ledger refused certificate {record.serial_hex} for {subject_serial} "
                                  f"({exc}); it was not issued. Try again.") from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return record

    def void(self, serial: str, reason: str) -> CertRecord:
        """Mark a certificate void (the device failed, or was re-provisioned). Voiding twice keeps the first."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = void_certificate(self._db, serial, reason)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._one_locked("serial_hex = ?", (row.serial_hex,))

    # --- reads ----------------------------------------------------------------------------------------------

    def get(self, serial: str) -> CertRecord | None:
        with self._lock:
            return self._one_locked("serial_hex = ?", (serial.upper(),))

    def find_subject(self, subject_serial: str) -> CertRecord | None:
        """The live (not voided) certificate of a device serial here, else on any station (`remote`), or None."""
        with self._lock:
            found = self._one_locked("subject_serial = ? AND voided IS NULL", (subject_serial,))
        if found is None and self.remote is not None:
            found = self.remote(subject_serial, None)  # copied into this file: its messages and void work here
        return found

    def find_board(self, mac: str) -> CertRecord | None:
        """The live certificate of the board with this MAC (its journal record says which), here, else on any
        station (`remote`), or None. A serial template over the station's {counter} names no board, so this is
        what tells that board apart."""
        with self._lock:
            try:
                row = self._db.execute(f"SELECT {_PREFIXED} FROM certificates c JOIN devices d ON d.id = c.device_id"
                                       f" WHERE d.mac = ? AND c.voided IS NULL ORDER BY c.issued DESC LIMIT 1",
                                       (mac,)).fetchone()
            except sqlite3.OperationalError:  # a ledger file without the journal's tables
                row = None
        found = CertRecord(*row) if row else None
        if found is None and self.remote is not None:
            found = self.remote(None, mac)
        return found

    def find_key(self, public_key: PublicKeyTypes) -> CertRecord | None:
        """The certificate (live or voided) that certified this public key, or None."""
        with self._lock:
            return self._one_locked("public_key_sha256 = ?", (public_key_sha256(public_key),))

    def records(self, device_id: str | None = None) -> list[CertRecord]:
        sql, args = f"SELECT {COLUMNS} FROM certificates", ()
        if device_id is not None:
            sql, args = sql + " WHERE device_id = ?", (device_id,)
        with self._lock:
            return [CertRecord(*r) for r in self._db.execute(sql + " ORDER BY issued", args)]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0]

    def already_provisioned_message(self, record: CertRecord) -> str:
        """"Device X was already provisioned on DATE at port P …; use re-provision" for a live record."""
        with self._lock:
            return self._already_message_locked(record)

    def key_seen_message(self, record: CertRecord) -> str:
        with self._lock:
            return self._key_seen_message_locked(record)

    # --- internals (caller holds the lock) ------------------------------------------------------------------

    def _one_locked(self, where: str, args: tuple) -> CertRecord | None:
        row = self._db.execute(f"SELECT {COLUMNS} FROM certificates WHERE {where}", args).fetchone()
        return CertRecord(*row) if row else None

    def _where_when_locked(self, record: CertRecord) -> tuple[str, str]:
        """(date, port) of the record's device from the journal; the issue time if the journal lacks it."""
        when, port = record.issued, None
        if record.device_id:
            try:
                row = self._db.execute("SELECT port, started FROM devices WHERE id = ?",
                                       (record.device_id,)).fetchone()
            except sqlite3.OperationalError:  # a ledger file without the journal's tables
                row = None
            if row:
                port, when = row[0], row[1] or when
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(when)), port or "an unknown port"

    def _already_message_locked(self, record: CertRecord) -> str:
        date, port = self._where_when_locked(record)
        return (f"Device {record.subject_serial} was already provisioned on {date} at port {port} (certificate "
                f"{record.serial_hex}); use re-provision to give it a new identity (its old certificate is then "
                f"voided).")

    def _key_seen_message_locked(self, record: CertRecord) -> str:
        date, port = self._where_when_locked(record)
        state = "live" if record.voided is None else "voided"
        return (f"this key was seen before on {date} at port {port}, certified for {record.subject_serial} "
                f"(certificate {record.serial_hex}, {state}) — the board's RNG or agent is broken. Do not ship "
                f"this board; fix its key generation (or its agent) and provision it again.")


def void_certificate(db: sqlite3.Connection, serial: str, reason: str) -> CertRecord:
    """Void a certificate inside the caller's write transaction on the journal's file (Ledger.void, or a
    board's end written together with its journal record). Voiding twice keeps the first."""
    row = db.execute(f"SELECT {COLUMNS} FROM certificates WHERE serial_hex = ?", (serial.upper(),)).fetchone()
    if row is None:
        raise LedgerError(f"No certificate with serial {serial} in the ledger {_db_path(db)}; check the serial "
                          f"(upper-case hex, as `station ca` and the manifest show it).")
    record = CertRecord(*row)
    if record.voided is None:
        db.execute("UPDATE certificates SET voided = ?, void_reason = ? WHERE serial_hex = ?",
                   (time.time(), reason, record.serial_hex))
    return record


def _db_path(db: sqlite3.Connection) -> str:
    if not isinstance(db, sqlite3.Connection):
        from station.pg import redact

        return redact(db.url)
    return next((row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"), "") or MEMORY


def already_provisioned_message(ledger: Ledger, record: CertRecord) -> str:
    """The refusal shown for a board whose device serial has a live certificate."""
    return ledger.already_provisioned_message(record)
