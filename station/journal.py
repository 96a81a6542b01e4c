"""The journal: an SQLite file (WAL) that records every batch, device and step as it happens.

Each write commits with synchronous=FULL (station/store.py opens the file), so a step that has ended survives
a crash or power cut. A device still marked "running" when the station starts again was interrupted;
`recover()` marks and reports those. Calls come from the ports' worker threads, so one connection is shared
under a lock.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from station.model import Result
from station.store import Schema, add_column, connect
from station.text import one_line

# Version 1 is the tables as the station made them before versions were kept, so such a file opens as it is.
TABLES_V1 = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    profile_sha256 TEXT NOT NULL,
    mode TEXT NOT NULL,
    operator TEXT NOT NULL,
    station_id TEXT NOT NULL,
    lot TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL,
    ended REAL
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL REFERENCES batches(id),
    port TEXT NOT NULL,
    usb_id TEXT NOT NULL DEFAULT '',
    family TEXT NOT NULL DEFAULT '',
    chip TEXT NOT NULL DEFAULT '',
    mac TEXT NOT NULL DEFAULT '',
    board TEXT NOT NULL DEFAULT '{}',
    images TEXT NOT NULL DEFAULT '[]',
    identity TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS devices_batch ON devices(batch_id);
CREATE INDEX IF NOT EXISTS devices_mac ON devices(mac);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL REFERENCES devices(id),
    name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS steps_device ON steps(device_id);
"""

SCHEMA = Schema("journal", (
    TABLES_V1,
    add_column("devices", "identity", "TEXT NOT NULL DEFAULT '{}'"),  # journals older than the identity record
))


@dataclass(frozen=True)
class DeviceRow:
    id: str
    batch_id: str
    port: str
    usb_id: str
    family: str
    chip: str
    mac: str
    board: dict
    images: list
    identity: dict
    result: str
    reason: str
    started: float
    ended: float | None


@dataclass(frozen=True)
class StepRow:
    name: str
    attempt: int
    started: float
    ended: float | None
    result: str
    detail: str


@dataclass(frozen=True)
class BatchRow:
    id: str
    profile: str
    profile_sha256: str
    mode: str
    operator: str
    station_id: str
    lot: str
    started: float
    ended: float | None


class Journal:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, SCHEMA)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple) -> None:
        with self.transaction() as db:
            db.execute(sql, args)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the journal's file, committed (and fsynced) on exit, rolled back on an
        error. The ledger's and the outbox's tables live in the same file, so writes to all three that must
        happen together (a board's end) go through the connection yielded here."""
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db

    # --- writes -------------------------------------------------------------------------------------------

    def start_batch(self, profile: str, profile_sha256: str, mode: str, operator: str, station_id: str,
                    lot: str = "") -> str:
        batch_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self._write("INSERT INTO batches (id, profile, profile_sha256, mode, operator, station_id, lot, started)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (batch_id, profile, profile_sha256, mode, operator, station_id, lot, time.time()))
        return batch_id

    def end_batch(self, batch_id: str) -> None:
        self._write("UPDATE batches SET ended = ? WHERE id = ?", (time.time(), batch_id))

    def start_device(self, batch_id: str, port: str, usb_id: str, family: str) -> str:
        device_id = uuid.uuid4().hex
        self._write("INSERT INTO devices (id, batch_id, port, usb_id, family, result, started)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (device_id, batch_id, port, usb_id, family, Result.RUNNING.value, time.time()))
        return device_id

    def set_board(self, device_id: str, chip: str, mac: str, board: dict) -> None:
        self._write("UPDATE devices SET chip = ?, mac = ?, board = ? WHERE id = ?",
                    (chip, mac, json.dumps(board, sort_keys=True), device_id))

    def set_images(self, device_id: str, images: list[dict]) -> None:
        self._write("UPDATE devices SET images = ? WHERE id = ?", (json.dumps(images), device_id))

    def set_identity(self, device_id: str, identity: dict) -> None:
        """Public identity facts only: subject serial, certificate chain, public key (JWK), key origin."""
        with self.transaction() as db:
            write_identity(db, device_id, identity)

    def start_step(self, device_id: str, name: str, attempt: int) -> int:
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute("INSERT INTO steps (device_id, name, attempt, started, result)"
                                       " VALUES (?, ?, ?, ?, ?)",
                                       (device_id, name, attempt, time.time(), Result.RUNNING.value))
                return int(cur.lastrowid)

    def end_step(self, step_id: int, ok: bool, detail: str) -> None:
        self._write("UPDATE steps SET ended = ?, result = ?, detail = ? WHERE id = ?",
                    (time.time(), (Result.PASS if ok else Result.FAIL).value, one_line(detail), step_id))

    def end_device(self, device_id: str, result: Result, reason: str = "") -> None:
        with self.transaction() as db:
            write_end(db, device_id, result, reason)

    def recover(self) -> list[DeviceRow]:
        """Mark devices and steps left running by a previous process as interrupted; return those devices."""
        with self._lock:
            rows = [self._device(r) for r in self._db.execute(
                "SELECT * FROM devices WHERE result = ? ORDER BY started", (Result.RUNNING.value,))]
        now = time.time()
        for row in rows:
            with self.transaction() as db:
                db.execute("UPDATE steps SET result = ?, ended = ?, detail = 'station stopped during this step'"
                           " WHERE device_id = ? AND result = ?",
                           (Result.INTERRUPTED.value, now, row.id, Result.RUNNING.value))
                write_end(db, row.id, Result.INTERRUPTED, "station stopped before this board finished")
        return rows

    # --- reads --------------------------------------------------------------------------------------------

    def batches(self) -> list[BatchRow]:
        with self._lock:
            return [BatchRow(*r) for r in self._db.execute(
                "SELECT id, profile, profile_sha256, mode, operator, station_id, lot, started, ended"
                " FROM batches ORDER BY started")]

    def batch(self, batch_id: str) -> BatchRow | None:
        return next((b for b in self.batches() if b.id == batch_id), None)

    def devices(self, batch_id: str | None = None) -> list[DeviceRow]:
        sql, args = "SELECT * FROM devices", ()
        if batch_id:
            sql, args = sql + " WHERE batch_id = ?", (batch_id,)
        with self._lock:
            return [self._device(r) for r in self._db.execute(sql + " ORDER BY started, port", args)]

    def steps(self, device_id: str) -> list[StepRow]:
        with self._lock:
            return [StepRow(*r) for r in self._db.execute(
                "SELECT name, attempt, started, ended, result, detail FROM steps WHERE device_id = ? ORDER BY id",
                (device_id,))]

    @staticmethod
    def _device(r: sqlite3.Row) -> DeviceRow:
        return DeviceRow(id=r["id"], batch_id=r["batch_id"], port=r["port"], usb_id=r["usb_id"],
                         family=r["family"], chip=r["chip"], mac=r["mac"], board=json.loads(r["board"]),
                         images=json.loads(r["images"]), identity=json.loads(r["identity"]), result=r["result"],
                         reason=r["reason"], started=r["started"], ended=r["ended"])


# --- writes inside a caller's transaction (Journal.transaction) ---------------------------------------------------


def write_identity(db: sqlite3.Connection, device_id: str, identity: dict) -> None:
    db.execute("UPDATE devices SET identity = ? WHERE id = ?", (json.dumps(identity, sort_keys=True), device_id))


def write_end(db: sqlite3.Connection, device_id: str, result: Result, reason: str) -> None:
    db.execute("UPDATE devices SET result = ?, reason = ?, ended = ? WHERE id = ?",
               (result.value, one_line(reason), time.time(), device_id))
