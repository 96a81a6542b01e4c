"""The wiring both front ends share (the `station` command line and the window): how the journal, the station
CA, the registrar and the engine are put together for a profile, and the demo's own CA, broker and manifest.

No Qt and no click here: each front end says things its own way, so what to say comes back as values,
exceptions (StoreError, SecretError, CAError, CloudError: their messages are one line for the operator) or
through a `Note` callback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from station.cloud import CloudError
from station.cloud.registrar import Registrar
from station.discovery import Discovery
from station.engine import Engine
from station.journal import DeviceRow, Journal
from station.profiles import Profile
from station.identity.ca import StationCA
from station.voiding import void_interrupted

JOURNAL_FILE = "journal.sqlite3"
DEMO_PSK_ENV = "STATION_DEMO_WIFI_PSK"  # the demo network's passphrase (made up per run unless given)

Note = Callable[[str, str], None]  # (text, level: "info" | "warning" | "error")


def open_journal(folder: Path) -> tuple[Journal, list[DeviceRow]]:
    """The journal in `folder`, and the boards a crash left mid-step (now marked interrupted, and any
    certificate issued for them voided, with the cloud told through the outbox) to tell about.
    A file that can't be used raises StoreError, with nothing left open."""
    journal = Journal(Path(folder) / JOURNAL_FILE)
    try:
        interrupted = journal.recover()
        void_interrupted(journal)  # also what an earlier run left between marking and voiding
        return journal, interrupted
    except BaseException:
        journal.close()
        raise


def open_station_ca(data: Path, passphrase_source=None, pin_source=None) -> StationCA:
    """The station CA in <data>/ca, unlocked now (a wrong passphrase or a missing token fails here, before
    any board); the sources default to the environment, the keyring, then a terminal prompt."""
    return StationCA.load(data, passphrase_source, pin_source=pin_source)


def registrar(profile: Profile, data: Path, ca: StationCA | None = None, broker=None) -> Registrar | None:
    """The profile's [cloud] registrar (None without one). `broker`: a LocalBroker the caller runs (the demo's);
    else "mosquitto" means the station's own (`station cloud up`)."""
    if profile.cloud is None:
        return None
    from station.cloud.connect import registrar_for

    return registrar_for(profile.cloud, data, ca, broker)


def build_engine(profile: Profile, discovery: Discovery, journal: Journal, *, data: Path, operator: str,
                 station_id: str, lot: str = "", psk: str | None = None, ca: StationCA | None = None,
                 broker=None, reprovision: bool = False, poll_interval: float = 0.25, watch_only: bool = False,
                 on_registrar_error: Note | None = None) -> Engine:
    """The engine for `profile`, with its certificate ledger and registration outbox in the journal's file.

    watch_only: an engine that only watches ports (the window's, before a batch): no CA and no outbox.
    on_registrar_error: a registrar that can't be made (a secret missing, …) is said there and passed boards
    wait in the outbox; without it the error is raised.
    """
    reg = None
    if watch_only:
        profile, ca = dataclasses.replace(profile, cloud=None), None
    elif profile.cloud is not None:
        try:
            reg = registrar(profile, data, ca, broker)
        except (CloudError, ValueError, OSError) as exc:  # SecretError is a ValueError
            if on_registrar_error is None:
                raise
            on_registrar_error(f"cloud registration not set up ({exc}); passed boards wait in the outbox", "warning")
    return Engine(profile, discovery, journal, operator=operator, station_id=station_id, lot=lot, psk=psk, ca=ca,
                  registrar=reg, reprovision=reprovision, poll_interval=poll_interval)


# --- the demo -----------------------------------------------------------------------------------------------------


def demo_ca(data: Path) -> StationCA:
    """The station's CA when one is set up in `data`, else an ephemeral one held in memory for this run."""
    if (data / "ca" / "issuing.crt").exists():
        return open_station_ca(data)
    return StationCA.ephemeral("Demo station")


def _silent(text: str, level: str) -> None:
    pass


@contextlib.contextmanager
def demo_broker(ca: StationCA, note: Note = _silent) -> Iterator:
    """A local Mosquitto broker for one demo run, on free loopback ports, with its own state (its server
    certificate comes from `ca`); stopped by PID at the end. When it can't start (mosquitto missing, …),
    `note` says so and the broker yielded is down: registrations then stay pending."""
    from station.cloud.broker import BrokerPorts, LocalBroker, free_loopback_port, issuing_ca_from

    folder = Path(tempfile.mkdtemp(prefix="station-demo-cloud-", dir="/tmp"))
    os.chmod(folder, 0o711)  # the broker drops to user mosquitto when started as root
    broker = LocalBroker(folder / "cloud", issuing_ca_from(ca),
                         BrokerPorts(admin=free_loopback_port(), devices=free_loopback_port(),
                                     devices_host="127.0.0.1"))
    try:
        broker.up()
        note(f"local cloud: Mosquitto on 127.0.0.1:{broker.ports.devices} (TLS, device certificates)", "info")
    except CloudError as exc:
        note(f"local cloud not started ({exc}); boards will show registration pending", "warning")
    try:
        yield broker
    finally:
        broker.down()
        shutil.rmtree(folder, ignore_errors=True)


def write_demo_manifest(folder: Path, batch_id: str, ca: StationCA, station: str) -> Path:
    """The demo's signed manifest, with the root beside it (an ephemeral CA is gone once the run ends)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from station.manifest import device_records
    from station.manifest_sign import sign_manifest

    journal = Journal(folder / JOURNAL_FILE)
    out = folder / f"manifest-{batch_id}.jsonl"
    key, chain = ca.manifest_signer()
    try:
        with open(out.with_suffix(".part"), "w") as f:
            sign_manifest(device_records(journal, batch_id), key, chain, f, station_id=station,
                          ephemeral_ca=ca.is_ephemeral)
        os.replace(out.with_suffix(".part"), out)
        (folder / "root.crt").write_bytes(ca.root.public_bytes(Encoding.PEM))
    finally:
        journal.close()
    return out
