"""Voiding a provisioned board everywhere at once: its certificate in the ledger, its journal record, and its
registration with the cloud (which for the local broker deletes the client and revokes the certificate).

The three are written in one transaction on the journal's file, so no crash leaves a board voided in one place
and live in another. A board a crash interrupted is voided the same way when the station opens its journal
again (`void_interrupted`): whatever was issued for it must not stay valid, so re-running it is not refused
as "already provisioned"."""
from __future__ import annotations

import json
import sqlite3

from station.cloud import outbox as outbox_store
from station.cloud.registrar import DeviceRegistration
from station.identity import ledger as ledger_store
from station.identity.ledger import CertRecord
from station.journal import Journal, write_identity
from station import serials as serials_store
from station.model import Result
from station.serials import void_serials_of_interrupted
from station.store import connect


class VoidError(ValueError):
    pass


def void_device(journal: Journal, device_id: str, reason: str) -> str:
    """Void device `device_id` (a journal id, or the start of one). Returns what was done, in words.

    The cloud side goes through the outbox, to every registrar the board was registered with, so it is
    durable and retried like a registration."""
    matches = [d for d in journal.devices() if d.id.startswith(device_id)]
    if len(matches) != 1:
        raise VoidError(f"{len(matches)} devices match '{device_id}'; give more of the device id "
                        f"(`station devices` lists them).")
    device = matches[0]
    identity = dict(device.identity)
    if identity.get("device_public_key") and not identity.get("certificate_serial"):
        return _void_device_key(journal, device.id, identity)
    if not identity.get("certificate_serial"):
        raise VoidError(f"device {device.id[:12]} has no certificate to void.")
    _ensure_tables(journal)
    with journal.transaction() as db:
        queued = void_in_transaction(db, device.id, identity, identity["certificate_serial"], reason)
    done = f"certificate {identity['certificate_serial']} of {identity['subject_serial']} voided"
    return done + "".join(f"; removal from {name} queued" for name in queued)


def _void_device_key(journal: Journal, device_id: str, identity: dict) -> str:
    """A board whose identity is a device key (a Spark Core or Photon): its record says void and every cloud it
    was registered with is asked to remove its key, in one transaction."""
    if identity.get("void"):
        raise VoidError(f"device {device_id[:12]} is already void.")
    _ensure_tables(journal)
    name = identity.get("particle_device_id") or device_id
    with journal.transaction() as db:
        write_identity(db, device_id, {**identity, "void": True})
        queued = outbox_store.registrars_of(db, device_id)
        record = DeviceRegistration(device_id, cloud_id=identity.get("particle_device_id") or "",
                                    public_key_pem=identity["device_public_key"])
        for registrar in queued:
            outbox_store.add_row(db, device_id, registrar, record, action=outbox_store.VOID)
    return f"device key of {name} voided" + "".join(f"; removal from {r} queued" for r in queued)


def void_interrupted(journal: Journal) -> list[CertRecord]:
    """Void every live certificate issued for a board the journal marks interrupted (after Journal.recover()).
    Returns the certificates voided; each in one transaction with its journal record and outbox rows."""
    _ensure_tables(journal)
    with journal.transaction() as db:
        void_serials_of_interrupted(db)
        live = _live_certificates_of_interrupted(db)
    for cert in live:
        with journal.transaction() as db:
            identity = dict(identity_of(db, cert.device_id))
            identity.setdefault("subject_serial", cert.subject_serial)
            identity.setdefault("certificate_serial", cert.serial_hex)
            void_in_transaction(db, cert.device_id, identity, cert.serial_hex, "station stopped before this board finished")
    return live


def void_in_transaction(db: sqlite3.Connection, device_id: str, identity: dict, serial: str, reason: str
                        ) -> list[str]:
    """Ledger, journal record and a void row for every registrar the board has rows with, in the caller's
    transaction. Returns those registrars' names."""
    ledger_store.void_certificate(db, serial, reason)
    write_identity(db, device_id, {**identity, "void": True})
    queued = outbox_store.registrars_of(db, device_id)
    if queued and identity.get("certificate"):
        record = DeviceRegistration(device_id, certificate_pem=identity["certificate"])
        for name in queued:
            outbox_store.add_row(db, device_id, name, record, action=outbox_store.VOID)
    return queued


def _live_certificates_of_interrupted(db: sqlite3.Connection) -> list[CertRecord]:
    return [CertRecord(*r) for r in db.execute(
        f"SELECT {ledger_store.COLUMNS} FROM certificates WHERE voided IS NULL AND device_id IN"
        f" (SELECT id FROM devices WHERE result = ?) ORDER BY issued", (Result.INTERRUPTED.value,))]


def identity_of(db: sqlite3.Connection, device_id: str) -> dict:
    row = db.execute("SELECT identity FROM devices WHERE id = ?", (device_id,)).fetchone()
    return json.loads(row[0]) if row else {}


def _ensure_tables(journal: Journal) -> None:
    """The ledger's and the outbox's tables exist in the journal's file (a journal that never saw a CA has none)."""
    for schema in (ledger_store.SCHEMA, outbox_store.SCHEMA, serials_store.SCHEMA):
        connect(journal.path, schema).close()
