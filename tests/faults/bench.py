"""The station as an operator runs it, for the fault matrix: `station` subprocesses on one data dir, with the
station's own Mosquitto (`station cloud up`) and emulated ESP boards; and what the journal file and the broker
say afterwards, read straight from them."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from station.cloud.broker import LocalBroker
from tests.test_cloud_pki import free_port, reachable_tempdir

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "demo-mixed.toml"  # ESP boards only on the bench: identity + registration
ENV = {"STATION_DEMO_WIFI_PSK": "bench-passphrase-42", "STATION_OPERATOR": "faults",
       "STATION_CA_PASSPHRASE": "ca-passphrase-for-fault-tests"}


@dataclass
class Station:
    data: Path
    registry: Path
    admin_port: int
    device_port: int

    def env(self) -> dict[str, str]:
        return {**os.environ, **ENV}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "station.cli", "--data-dir", str(self.data), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=300,
                              cwd=ROOT)

    def provision_args(self, *extra: str) -> list[str]:
        return ["provision", "--profile", str(PROFILE), "--sim-registry", str(self.registry), *extra]

    def cloud_up(self) -> subprocess.CompletedProcess:
        return self.run("cloud", "up", "--admin-port", str(self.admin_port), "--device-port", str(self.device_port),
                        "--device-host", "127.0.0.1", "--ota-port", str(free_port()))

    @property
    def broker(self) -> LocalBroker:
        return LocalBroker(self.data / "cloud")

    def broker_clients(self) -> set[str]:
        with self.broker.admin_client(timeout=10) as admin:
            return {c for c in admin.list_clients() if c != "admin"}

    def db(self) -> sqlite3.Connection:
        """A plain connection to the journal file (no recovery, no migration): what the crash left."""
        return sqlite3.connect(self.data / "journal.sqlite3")


def new_station() -> Station:
    """A data dir with a station CA and a running broker (`station ca init`, `station cloud up`)."""
    folder = reachable_tempdir()
    station = Station(folder / "data", folder / "registry", free_port(), free_port())
    done = station.run("ca", "init")
    assert done.returncode == 0, done.stderr
    up = station.cloud_up()
    assert up.returncode == 0, up.stdout + up.stderr
    return station


def remove_station(station: Station) -> None:
    down = station.run("cloud", "down")  # the broker and the update server
    assert down.returncode == 0, down.stdout + down.stderr
    shutil.rmtree(station.data.parent, ignore_errors=True)
