"""A station's share of the factory record: every row it writes reaches PostgreSQL once, in order, in the
background, so a board never waits for the network and a database that goes away stops nothing.

The station keeps writing its own journal file (station/store.py: fsynced at every step end). With a
PostgreSQL URL set, that file also gets a spool: triggers add (table, key) to `spool` in the same transaction
as each insert or update of a batch, device, step, certificate, registration or device serial, so what a
board wrote and its spool entry are committed together or not at all. `Replica` runs a thread that takes the
oldest entries, reads those rows as they are now, and upserts them into PostgreSQL in one transaction that
also moves this station's mark in `replication` to the last entry sent; then it deletes the entries. A crash
between the two finds the mark already past them and only deletes them: every entry is applied exactly once,
in order. While the server is unreachable the entries wait (with everything the station wrote before it was
first pointed at PostgreSQL, which the spool's first version queues) and go out when it answers again.

The other way: `find_live(serial)` is the ledger's look-up on every station's certificates (the duplicate-board
guard across stations). A live certificate found there is copied into this file with its board's journal
record, so the "already provisioned" message and a re-provision's void work as for a local one, and the void
travels back up through the spool.
"""
from __future__ import annotations

import functools
import sqlite3
import threading
import time
from dataclasses import dataclass

from station.cloud import outbox as outbox_store
from station.identity import ledger as ledger_store
from station.identity.ledger import CertRecord
from station.journal import SCHEMA as JOURNAL_SCHEMA
from station.serials import SCHEMA as SERIALS_SCHEMA
from station.store import Schema, StoreError, connect

CHUNK = 500  # spool entries per PostgreSQL transaction
POLL_S = 0.05  # how long a caught-up replica gathers entries before it looks again (one indexed local read)
RETRY_S = (0.25, 5.0)  # first and longest wait before trying an unreachable server again


@dataclass(frozen=True)
class Table:
    name: str
    key: str  # the local key the spool holds (an SQL expression over NEW / the row)
    columns: tuple[str, ...]
    conflict: tuple[str, ...]  # the PostgreSQL key
    stamp: str = ""  # a column the server adds: "stream" (ids a journal file counts itself: part of the key)
    #                  or "station_id" (who took a serial number)
    keep_void: bool = False  # a void recorded by another station is not undone


TABLES = (
    Table("batches", "id", ("id", "profile", "profile_sha256", "mode", "operator", "station_id", "lot", "started",
                            "ended"), ("id",)),
    Table("devices", "id", ("id", "batch_id", "port", "usb_id", "family", "chip", "mac", "board", "images",
                            "identity", "result", "reason", "started", "ended"), ("id",)),
    Table("steps", "id", ("id", "device_id", "name", "attempt", "started", "ended", "result", "detail"),
          ("stream", "id"), stamp="stream"),
    Table("certificates", "serial_hex", tuple(c.strip() for c in ledger_store.COLUMNS.split(",")), ("serial_hex",),
          keep_void=True),
    Table("registrations", "id", tuple(c.strip() for c in outbox_store._COLUMNS.split(",")), ("stream", "id"),
          stamp="stream"),
    Table("serials", "counter || '/' || value", ("counter", "value", "state", "device_id", "taken"),
          ("counter", "value"), stamp="station_id"),
)
BY_NAME = {t.name: t for t in TABLES}


def _spool_v1() -> str:
    triggers = "".join(
        f"CREATE TRIGGER IF NOT EXISTS spool_{t.name}_{op} AFTER {op.upper()} ON {t.name} BEGIN"
        f" INSERT INTO spool (tbl, key) VALUES ('{t.name}', {_new(t.key)}); END;\n"
        for t in TABLES for op in ("insert", "update"))
    seed = "".join(f"INSERT INTO spool (tbl, key) SELECT '{t.name}', {t.key} FROM {t.name} ORDER BY rowid;\n"
                   for t in TABLES)
    return ("CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL,"
            " key TEXT NOT NULL);\n"
            # this file's stream: a journal file that replaces a lost one counts its ids and entries from 1 again
            "CREATE TABLE IF NOT EXISTS spool_stream (id TEXT NOT NULL);\n"
            "INSERT INTO spool_stream (id) SELECT lower(hex(randomblob(8))) WHERE NOT EXISTS"
            " (SELECT 1 FROM spool_stream);\n" + triggers + seed)


def _new(expression: str) -> str:
    return " || '/' || ".join(f"NEW.{part.strip()}" for part in expression.split("|| '/' ||"))


# The spool lives only in a file whose station sends its records to PostgreSQL; its first version queues every
# row the file holds, so a station's history goes up when it is first pointed at the server.
SPOOL_SCHEMA = Schema("spool", (_spool_v1(),))

# What only the shared database has: each journal file's mark (the last spool entry applied).
FACTORY_SCHEMA = Schema("factory", (), postgres=("""
CREATE TABLE IF NOT EXISTS replication (
    stream TEXT PRIMARY KEY,                      -- "station id/file id": one journal file of one station
    station_id TEXT NOT NULL,
    upto BIGINT NOT NULL,                         -- the last spool entry of that file applied here
    updated DOUBLE PRECISION NOT NULL
);
""",))

ALL_PG_SCHEMAS = (JOURNAL_SCHEMA, ledger_store.SCHEMA, outbox_store.SCHEMA, SERIALS_SCHEMA, FACTORY_SCHEMA)


def migrate_all(url: str) -> dict[str, int]:
    """Every store's tables on the server, up to date (`station db init|migrate`); returns steps run per store."""
    from station.pg import migrate, open_pg

    db = open_pg(url)
    try:
        return {schema.name: migrate(db, schema) for schema in ALL_PG_SCHEMAS}
    finally:
        db.close()


def prepare_file(path) -> None:
    """The journal file with every store's tables and the spool (its triggers need the tables)."""
    for schema in (JOURNAL_SCHEMA, ledger_store.SCHEMA, outbox_store.SCHEMA, SERIALS_SCHEMA, SPOOL_SCHEMA):
        connect(path, schema).close()


class _Link:
    """One connection to the server with its lock, opened (tables brought up to date) on first use and again
    after a failure. The replica has two, so a board's look-up never waits behind a send."""

    def __init__(self, url: str):
        self.url = url
        self.lock = threading.Lock()
        self._db = None

    def get(self):
        """The connection; the caller holds `lock`."""
        if self._db is None or self._db.broken:
            from station.pg import migrate, open_pg

            self.drop()
            db = open_pg(self.url)
            for schema in ALL_PG_SCHEMAS:
                migrate(db, schema)
            self._db = db
        return self._db

    def drop(self) -> None:
        """Forget the connection (the caller holds `lock`): a connection to a dead server may not even close."""
        if self._db is not None:
            try:
                self._db.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass
            self._db = None


class Replica:
    """Sends one journal file's rows to the PostgreSQL database at `url`; see the module's doc."""

    def __init__(self, path, url: str, station_id: str):
        self.path, self.url, self.station_id = path, url, station_id
        prepare_file(path)
        self._local = connect(path, SPOOL_SCHEMA)
        # Its own writes need no fsync of their own, so they never hold the file's write lock through one while
        # a board commits: a deleted spool entry lost to a power cut is sent again and skipped (the mark), and a
        # copy of another station's record is fetched again. The boards' commits stay synchronous=FULL.
        self._local.execute("PRAGMA synchronous=NORMAL")
        (file_id,) = self._local.execute("SELECT id FROM spool_stream").fetchone()
        self.stream = f"{station_id}/{file_id}"  # the server's mark and per-file ids are this file's
        self._local_lock = threading.Lock()
        self._send = _Link(url)  # the sender's
        self._look = _Link(url)  # the boards' look-ups and serial draws
        self.online = False
        self.last_error = ""
        self.sent = 0  # spool entries applied by this process
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pool = None  # the engine's SerialPool (station/serials.py): kept topped up while the server answers

    @property
    def where(self) -> str:
        from station.pg import redact

        return redact(self.url)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> "Replica":
        """Sending in the background; the first attempt is made now, so `online` tells at once."""
        try:
            with self._send.lock:
                self._send.get()
            self._set_online(True, "")
        except (StoreError, _pg_errors()) as exc:
            self._set_online(False, _first_line(exc))
        self._thread = threading.Thread(target=self._run, name="replica", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for link in (self._send, self._look):
            with link.lock:
                link.drop()
        with self._local_lock:
            self._local.close()

    def pending(self) -> int:
        with self._local_lock:
            return self._local.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def flush(self, timeout: float) -> int:
        """Wait until the spool is empty or `timeout` passed; returns the entries still waiting."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (left := self.pending()) and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
        return left

    # --- sending ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        wait = RETRY_S[0]
        while not self._stop.is_set():
            try:
                sent = self.send_once()
                self._set_online(True, "")
                self._top_up()
                wait = RETRY_S[0]
                if sent < CHUNK:  # caught up: gather the next entries for a moment (one server commit for many)
                    self._stop.wait(POLL_S)
            except Exception as exc:  # noqa: BLE001 - the server away, or a row it refuses: said, tried again later
                with self._send.lock:
                    self._send.drop()
                self._set_online(False, _first_line(exc))
                self._stop.wait(wait)
                wait = min(RETRY_S[1], wait * 2)

    def _top_up(self) -> None:
        pool = self.pool
        if pool is not None:
            try:
                pool.top_up()
            except (StoreError, sqlite3.ProgrammingError):
                pass  # the server went away (the next send says so), or the engine closed its pool meanwhile

    def _set_online(self, online: bool, error: str) -> None:
        self.online, self.last_error = online, error
        with self._changed:
            self._changed.notify_all()

    def draw(self, counter: str, start: int, count: int) -> list[int]:
        """Fresh numbers from the counter's shared sequence (SerialPool.draw); StoreError when away."""
        from station.serials import draw_from

        try:
            with self._look.lock:
                try:
                    return draw_from(self._look.get(), counter, start, count)
                except (StoreError, _pg_errors()):
                    self._look.drop()
                    raise
        except (StoreError, _pg_errors()) as exc:
            self._set_online(False, _first_line(exc))
            raise StoreError(f"The station database {self.where} can't be reached ({_first_line(exc)}).") from None

    def send_once(self) -> int:
        """Apply the oldest spool entries to the server (one transaction); returns how many were taken."""
        with self._local_lock:
            self._local.execute("BEGIN")  # one snapshot: the entries and the rows they name
            try:
                entries = self._local.execute("SELECT seq, tbl, key FROM spool ORDER BY seq LIMIT ?",
                                              (CHUNK,)).fetchall()
                keys = list(dict.fromkeys((tbl, key) for _seq, tbl, key in entries))  # first appearance order
                rows = [(BY_NAME[tbl], self._local_row(BY_NAME[tbl], key)) for tbl, key in keys]
            finally:
                self._local.execute("COMMIT")
        with self._send.lock:
            db = self._send.get()
            if not entries:
                return 0
            last = entries[-1][0]
            with db:
                self._apply(db, entries, rows, last)
        with self._local_lock:
            self._local.execute("DELETE FROM spool WHERE seq <= ?", (last,))
        self.sent += len(entries)
        with self._changed:
            self._changed.notify_all()
        return len(entries)

    def _apply(self, db, entries: list, rows: list, last: int) -> None:
        """One transaction: the rows of the entries past this station's mark, then the mark. Grouped by table in
        the order their keys refer to each other (a batch before its devices, a device before its steps)."""
        db.execute("BEGIN")
        mark = db.execute("SELECT upto FROM replication WHERE stream = ? FOR UPDATE", (self.stream,)).fetchone()
        upto = mark[0] if mark else 0
        if last <= upto:
            return  # applied before a crash kept the entries from being deleted here
        fresh = {(tbl, key) for seq, tbl, key in entries if seq > upto}
        grouped: dict[str, list[tuple]] = {}
        for table, row in rows:
            if row is not None and (table.name, _key_text(table, row)) in fresh:
                grouped.setdefault(table.name, []).append(
                    self._stamp(table) + tuple(row))
        for table in TABLES:
            if table.name in grouped:
                db.executemany(_upsert_sql(table), grouped[table.name])
        db.execute("INSERT INTO replication (stream, station_id, upto, updated) VALUES (?, ?, ?, ?) ON CONFLICT"
                   " (stream) DO UPDATE SET upto = excluded.upto, updated = excluded.updated",
                   (self.stream, self.station_id, last, time.time()))

    def _stamp(self, table: Table) -> tuple:
        return {"": (), "stream": (self.stream,), "station_id": (self.station_id,)}[table.stamp]

    def _local_row(self, table: Table, key: str) -> tuple | None:
        return self._local.execute(f"SELECT {', '.join(table.columns)} FROM {table.name} WHERE {table.key} = ?",
                                   (key,)).fetchone()

    # --- reading every station's record -------------------------------------------------------------------------

    def find_live(self, subject_serial: str | None, mac: str | None = None) -> CertRecord | None:
        """The live certificate of a device serial, or of the board with this MAC, on any station (None when
        none, or the server is away), copied into this file with its board's finished journal record."""
        if not self.online:
            return None
        columns = ", ".join(f"c.{c.strip()}" for c in ledger_store.COLUMNS.split(","))
        if subject_serial is not None:
            where, args = "c.subject_serial = ?", (subject_serial,)
        else:
            where, args = "c.device_id IN (SELECT id FROM devices WHERE mac = ?)", (mac,)
        try:
            with self._look.lock:
                try:
                    db = self._look.get()
                    cert = db.execute(f"SELECT {columns} FROM certificates c WHERE {where} AND c.voided IS NULL"
                                      f" ORDER BY c.issued DESC LIMIT 1", args).fetchone()
                    if cert is None:
                        return None
                    record = CertRecord(*cert)
                    device = batch = None
                    if record.device_id:
                        device = db.execute(f"SELECT {', '.join(BY_NAME['devices'].columns)} FROM devices"
                                            f" WHERE id = ? AND result <> 'running'", (record.device_id,)).fetchone()
                        if device is not None:
                            batch = db.execute(f"SELECT {', '.join(BY_NAME['batches'].columns)} FROM batches"
                                               f" WHERE id = ?", (device[1],)).fetchone()
                except (StoreError, _pg_errors()):
                    self._look.drop()
                    raise
        except (StoreError, _pg_errors()):
            return None  # away: this station's own ledger decides until it is back
        with self._local_lock:
            self._local.execute("BEGIN IMMEDIATE")
            try:
                for table, row in ((BY_NAME["batches"], batch), (BY_NAME["devices"], device),
                                   (BY_NAME["certificates"], cert)):
                    if row is not None:
                        self._local.execute(f"INSERT OR IGNORE INTO {table.name} ({', '.join(table.columns)}) VALUES"
                                            f" ({', '.join('?' * len(table.columns))})", tuple(row))
                self._local.execute("COMMIT")
            except BaseException:
                self._local.execute("ROLLBACK")
                raise
        return record


@functools.lru_cache(maxsize=None)
def _upsert_sql(table: Table) -> str:
    """Insert the row, or bring the server's copy up to it (a void another station recorded stays)."""
    columns = ((table.stamp,) if table.stamp else ()) + table.columns
    updates = [f"{c} = COALESCE({table.name}.{c}, excluded.{c})" if table.keep_void and c in ("voided", "void_reason")
               else f"{c} = excluded.{c}" for c in columns if c not in table.conflict]
    return (f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            f" ON CONFLICT ({', '.join(table.conflict)}) DO UPDATE SET {', '.join(updates)}")


def _key_text(table: Table, row: tuple) -> str:
    named = dict(zip(table.columns, row))
    return "/".join(str(named[part.strip()]) for part in table.key.split("|| '/' ||"))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _pg_errors() -> type[Exception]:
    import psycopg

    return psycopg.Error


def status(url: str) -> dict:
    """What `station db status` shows: store versions, stations and their marks, devices, findings."""
    from station.pg import open_pg, versions

    db = open_pg(url)
    try:
        found = versions(db)
        info: dict = {"versions": found, "expected": {s.name: len(s.postgres) for s in ALL_PG_SCHEMAS}}
        if found.get("factory"):
            info["stations"] = [tuple(r) for r in db.execute(
                "SELECT r.station_id, MAX(r.updated), (SELECT COUNT(*) FROM devices d JOIN batches b ON"
                " b.id = d.batch_id WHERE b.station_id = r.station_id) FROM replication r GROUP BY r.station_id"
                " ORDER BY 1")]
            info["twice_live"] = [r[0] for r in db.execute(
                "SELECT subject_serial FROM certificates WHERE voided IS NULL GROUP BY subject_serial"
                " HAVING COUNT(*) > 1")]
        return info
    finally:
        db.close()


__all__ = ["Replica", "migrate_all", "prepare_file", "status", "SPOOL_SCHEMA", "FACTORY_SCHEMA", "TABLES"]
