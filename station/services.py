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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from station.cloud import CloudError
from station.cloud.registrar import Registrar
from station.discovery import Discovery
from station.engine import Engine
from station.journal import DeviceRow, Journal
from station.profiles import Profile
from station.identity.ca import StationCA
from station.store import StoreError
from station.voiding import void_interrupted

if TYPE_CHECKING:
    from station.replica import Replica

JOURNAL_FILE = "journal.sqlite3"
DEMO_PSK_ENV = "STATION_DEMO_WIFI_PSK"  # the demo network's passphrase (made up per run unless given)

Note = Callable[[str, str], None]  # (text, level: "info" | "warning" | "error")


def open_journal(folder: Path) -> tuple[Journal, list[DeviceRow]]:
    """The journal in `folder`, and the boards a crash left mid-step (now marked interrupted, and any
    certificate issued for them voided, with the cloud told through the outbox) to tell about.
    A file that can't be used raises StoreError, with nothing left open."""
    journal = Journal(Path(folder) / JOURNAL_FILE)
    try:
        return journal, recover(journal)
    except BaseException:
        journal.close()
        raise


def recover(journal: Journal) -> list[DeviceRow]:
    """After a crash: mark the boards left mid-step interrupted and void whatever certificate was issued for
    them (ledger, journal record, the cloud through the outbox), so each can simply be provisioned again.
    Returns those boards."""
    interrupted = journal.recover()
    void_interrupted(journal)  # also what an earlier run left between marking and voiding
    return interrupted


def open_station_ca(data: Path, passphrase_source=None, pin_source=None) -> StationCA:
    """The station CA in <data>/ca, unlocked now (a wrong passphrase or a missing token fails here, before
    any board); the sources default to the environment, the keyring, then a terminal prompt."""
    return StationCA.load(data, passphrase_source, pin_source=pin_source)


def registrars(profile: Profile, data: Path, ca: StationCA | None = None, broker=None,
               spark: Registrar | None = None) -> dict[str, Registrar]:
    """A registrar for each of the profile's clouds, by registrar name. `broker`: a LocalBroker the caller runs
    (the demo's), else "mosquitto" means the station's own (`station cloud up`); `spark`: the demo's spark-server."""
    from station.cloud.connect import registrar_for

    return {name: spark if name == "spark-server" and spark is not None else registrar_for(spec, data, ca, broker)
            for name, spec in profile.clouds.items()}


def open_replica(folder: Path, url: str, station_id: str) -> "Replica":
    """The station's link to the factory database (station/replica.py), sending in the background; the journal
    file in `folder` gets its spool."""
    from station.replica import Replica

    return Replica(Path(folder) / JOURNAL_FILE, url, station_id).start()


def open_record(folder: Path, url: str | None, note: Note = lambda text, level: None) -> Journal:
    """The record to list and export: every station's on the factory database when there is one (its own
    journal file, with a warning, when the database can't be reached), else the station's own journal file."""
    if url:
        try:
            return Journal(url)
        except StoreError as exc:
            note(f"{exc} Showing this station's own journal instead.", "warning")
    return Journal(Path(folder) / JOURNAL_FILE)


def _share_factory_record(engine: Engine, replica: "Replica", offline_boards: int) -> None:
    """The engine's ledger looks at every station's certificates, and its {counter} numbers come from the
    factory's sequence with `offline_boards` reserved ahead. Raises OutOfSerials when the profile numbers
    boards, the database is away and none are reserved: the batch must not start."""
    from station.identity.idevid import uses_counter
    from station.serials import OutOfSerials

    ledger = engine.ledger
    if ledger is None:
        return
    ledger.remote = replica.find_live
    pool = ledger.serials
    pool.ahead, pool.draw, pool.where = offline_boards, replica.draw, replica.where
    replica.pool = pool
    spec = engine.profile.identity.certificate
    if uses_counter(spec):
        pool.use(spec.serial_template, spec.counter_start)
        try:
            pool.top_up(spec.serial_template)
        except StoreError:
            pass  # away: what is reserved carries the line
        if pool.reserved(spec.serial_template) == 0:
            engine.close()
            raise OutOfSerials("Batch not started: " + pool.why_none(spec.serial_template))


def build_engine(profile: Profile, discovery: Discovery, journal: Journal, *, data: Path, operator: str,
                 station_id: str, lot: str = "", psk: str | None = None, ca: StationCA | None = None,
                 broker=None, spark: Registrar | None = None, reprovision: bool = False,
                 poll_interval: float = 0.25, watch_only: bool = False,
                 on_registrar_error: Note | None = None, replica: "Replica | None" = None,
                 offline_boards: int = 10) -> Engine:
    """The engine for `profile`, with its certificate ledger and registration outbox in the journal's file.

    watch_only: an engine that only watches ports (the window's, before a batch): no CA and no outbox.
    on_registrar_error: a registrar that can't be made (a secret missing, …) is said there and passed boards
    wait in the outbox; without it the error is raised.
    replica: the factory database's link (open_replica): "already provisioned" and {counter} numbers are then
    every station's; raises OutOfSerials when the profile numbers boards and none can be had.
    """
    regs: dict[str, Registrar] = {}
    if watch_only:
        profile, ca = dataclasses.replace(profile, cloud=None, family_clouds={}), None
    else:
        try:
            regs = registrars(profile, data, ca, broker, spark)
        except (CloudError, ValueError, OSError) as exc:  # SecretError is a ValueError
            if on_registrar_error is None:
                raise
            on_registrar_error(f"cloud registration not set up ({exc}); passed boards wait in the outbox", "warning")
    engine = Engine(profile, discovery, journal, operator=operator, station_id=station_id, lot=lot, psk=psk, ca=ca,
                    registrars=regs, reprovision=reprovision, poll_interval=poll_interval)
    if replica is not None and not watch_only:
        _share_factory_record(engine, replica, offline_boards)
    return engine


# --- the demo -----------------------------------------------------------------------------------------------------


def demo_ca(data: Path) -> StationCA:
    """The station's CA when one is set up in `data`, else an ephemeral one held in memory for this run."""
    if (data / "ca" / "issuing.crt").exists():
        return open_station_ca(data)
    return StationCA.ephemeral("Demo station")


def _silent(text: str, level: str) -> None:
    pass


DEMO_FOLDER_PREFIX = "station-demo-cloud-"
DEMO_FOLDER_PARENT = Path("/tmp")
OWNER_FILE = "station.owner"  # "PID START_TIME" of the station that made the folder
OWNERLESS_GRACE = 60.0  # seconds a folder without an owner file is left alone (its demo is starting)


@contextlib.contextmanager
def demo_broker(ca: StationCA, note: Note = _silent) -> Iterator:
    """A local Mosquitto broker for one demo run, on free loopback ports, with its own state (its server
    certificate comes from `ca`); stopped by PID at the end. When it can't start (mosquitto missing, …),
    `note` says so and the broker yielded is down: registrations then stay pending.

    The broker dies with the station however the station ends: a tether process (station/cloud/tether.py) stops
    it and deletes its folder (server key, admin password) once the station is gone. What a run left anyway
    (the tether killed too, a reboot) is cleaned up here before the next broker starts."""
    from station.cloud.broker import BrokerPorts, LocalBroker, free_loopback_port, issuing_ca_from

    clean_stale_demo_folders()
    folder = Path(tempfile.mkdtemp(prefix=DEMO_FOLDER_PREFIX, dir=DEMO_FOLDER_PARENT))
    os.chmod(folder, 0o711)  # the broker drops to user mosquitto when started as root
    (folder / OWNER_FILE).write_text(_process_identity(os.getpid()) + "\n")
    broker = LocalBroker(folder / "cloud", issuing_ca_from(ca),
                         BrokerPorts(admin=free_loopback_port(), devices=free_loopback_port(),
                                     devices_host="127.0.0.1"))
    with _tether(folder, broker.state_dir):
        try:
            try:
                broker.up()
                note(f"local cloud: Mosquitto on 127.0.0.1:{broker.ports.devices} (TLS, device certificates)", "info")
            except CloudError as exc:
                note(f"local cloud not started ({exc}); boards will show registration pending", "warning")
            yield broker
        finally:
            broker.down()
            shutil.rmtree(folder, ignore_errors=True)


DEMO_SPARK_USER = "demo@station.local"
DEMO_SPARK_SECRET_ENV = "STATION_DEMO_SPARK_SECRET"  # this run's random client secret and password


@contextlib.contextmanager
def demo_spark_server(profile: Profile, note: Note = _silent) -> Iterator[Registrar | None]:
    """For a profile whose boards register with spark-server, one demo run's stand-in for it
    (station/cloud/spark_test_server.py) on a free loopback port; yields its registrar, else None."""
    if "spark-server" not in profile.clouds:
        yield None
        return
    import secrets

    from station.cloud.registrar import SparkServerRegistrar
    from station.cloud.spark_test_server import SparkTestServer
    from station.secrets import SecretSpec

    secret = secrets.token_urlsafe(18)
    os.environ[DEMO_SPARK_SECRET_ENV] = secret  # read like any spark-server secret, by name; gone after the run
    try:
        with tempfile.TemporaryDirectory(prefix="station-demo-spark-") as folder, \
                SparkTestServer(Path(folder) / "core_keys", users={DEMO_SPARK_USER: secret},
                                clients={"station-demo": secret}) as server:
            note(f"local cloud: spark-server stand-in on {server.url} (device keys of Cores and Photons)", "info")
            place = f"env:{DEMO_SPARK_SECRET_ENV}"
            yield SparkServerRegistrar(server.url, client_id="station-demo",
                                       client_secret=SecretSpec.parse("demo spark-server client secret", place),
                                       username=DEMO_SPARK_USER,
                                       password=SecretSpec.parse("demo spark-server password", place))
    finally:
        os.environ.pop(DEMO_SPARK_SECRET_ENV, None)


@contextlib.contextmanager
def _tether(folder: Path, state_dir: Path) -> Iterator[None]:
    """The tether process for the demo folder, for as long as the block runs (see station/cloud/tether.py)."""
    import subprocess
    import sys

    from station.cloud import tether

    read_end, write_end = os.pipe()  # not inheritable: only the tether gets the read end, as its stdin
    try:
        proc = subprocess.Popen([sys.executable, "-I", tether.__file__, str(folder), str(state_dir)],
                                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={}, close_fds=True, start_new_session=True)
    finally:
        os.close(read_end)
    try:
        yield
    finally:
        os.close(write_end)  # EOF: the tether finds the broker stopped and the folder gone, and ends
        proc.wait()


def clean_stale_demo_folders(parent: Path | None = None) -> list[Path]:
    """Stop the broker of, and delete, every demo folder whose station is no longer running. Returns them."""
    from station.cloud import tether

    cleaned = []
    for folder in sorted((parent or DEMO_FOLDER_PARENT).glob(DEMO_FOLDER_PREFIX + "*")):
        try:
            owner = (folder / OWNER_FILE).read_text().strip()
        except FileNotFoundError:  # a demo writing it right now, or one from before owners were written
            if time.time() - folder.stat().st_mtime < OWNERLESS_GRACE or _has_parent(folder / "cloud"):
                continue
            owner = ""
        except OSError:
            continue
        pid = owner.split()[0] if owner else ""
        if pid.isdigit() and _process_identity(int(pid)) == owner:
            continue  # another demo running now
        tether.stop_broker(str(folder / "cloud"))
        shutil.rmtree(folder, ignore_errors=True)
        cleaned.append(folder)
    return cleaned


def _has_parent(state_dir: Path) -> bool:
    """The folder's broker runs and its parent is still alive (not handed to init): a demo is using it."""
    from station.cloud import tether

    pid = tether.broker_pid(str(state_dir))
    if pid is None:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] != "1"
    except (OSError, IndexError):
        return False


def _process_identity(pid: int) -> str:
    """"PID START_TIME": the start time tells a reused PID from the process that wrote it."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{pid} {start}"


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
