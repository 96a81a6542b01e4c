"""Voiding a provisioned board everywhere at once: its certificate in the ledger, its journal record, and its
registration with the cloud (which for the local broker deletes the client and revokes the certificate)."""
from __future__ import annotations

from station.cloud.outbox import Outbox
from station.cloud.registrar import DeviceRegistration
from station.identity.ledger import Ledger
from station.journal import Journal


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
    if not identity.get("certificate_serial"):
        raise VoidError(f"device {device.id[:12]} has no certificate to void.")
    with Ledger(journal.path) as ledger:
        ledger.void(identity["certificate_serial"], reason)
    identity["void"] = True
    journal.set_identity(device.id, identity)
    done = f"certificate {identity['certificate_serial']} of {identity['subject_serial']} voided"
    outbox = Outbox(journal.path)
    try:
        for registrar in sorted({row.registrar for row in outbox.rows(device_id=device.id)}):
            outbox.enqueue_void(DeviceRegistration(device.id, certificate_pem=identity["certificate"]), registrar)
            done += f"; removal from {registrar} queued"
    finally:
        outbox.close()
    return done
