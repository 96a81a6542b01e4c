"""The station's SQLite file (data_dir/journal.sqlite3): one way to open it, and each store's schema versions.

The journal, the certificate ledger and the registration outbox keep their tables in this one file, each
through its own connection from `connect(path, schema)`, which sets the same pragmas on every connection:

    journal_mode=WAL     readers don't wait for the writer (the file gets a -wal and a -shm beside it)
    synchronous=FULL     a commit is fsynced before it returns, so a step that ended survives a power cut
    foreign_keys=ON
    busy timeout         a write by another connection or process is waited for, not failed at once

and brings that store's tables up to date. A `Schema` is a store's ordered migration steps: step i takes the
store from version i to i + 1. The version each store is at is kept in the file's `store_versions` table;
PRAGMA user_version is the version of that bookkeeping itself, so a file from a newer station is refused
rather than misread. A file made before versions were kept (user_version 0) holds whatever tables the station
made then; each store's first steps accept those as they are (CREATE … IF NOT EXISTS, a column added only
when missing), so such a file migrates without losing a row. Migrating is one write transaction: every
pending step, or none.

The same stores also live on a PostgreSQL server (a factory's shared record): `connect("postgresql://…",
schema)` gives a `PgConnection` that takes the very statements the stores write for SQLite (`?` parameters,
BEGIN IMMEDIATE, RETURNING), so one store class serves both back ends. A schema's `postgres` steps are its
PostgreSQL tables, versioned the same way in that database's `store_versions` table; migrating there holds an
advisory lock, so stations starting at once migrate one after the other. The password comes from
STATION_DB_PASSWORD or the keyring (station/secrets.py), never from the URL, so no log or profile carries it.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Union

FILE_FORMAT = 1  # PRAGMA user_version: 1 = store versions kept in `store_versions`
BUSY_TIMEOUT_S = 30.0
MEMORY = ":memory:"
PG_SCHEMES = ("postgresql://", "postgres://")

Step = Union[str, Callable[[sqlite3.Connection], None]]  # an SQL script, or code for what SQL can't say


class StoreError(Exception):
    """The journal file can't be used as it is. The message names the file and the fix."""


class IntegrityError(Exception):
    """A PostgreSQL constraint refused a write (what sqlite3.IntegrityError is for the file)."""


@dataclass(frozen=True)
class Schema:
    """One store's tables, as the steps that build them; append a step to change them, never edit one."""

    name: str  # "journal", "ledger", "outbox": its row in store_versions
    steps: tuple[Step, ...]
    postgres: tuple[str, ...] = ()  # the same store's tables on PostgreSQL, as SQL scripts

    @property
    def version(self) -> int:
        return len(self.steps)


def add_column(table: str, column: str, declaration: str) -> Step:
    """A step adding a column unless it is there already (files from before versions were kept may have it)."""
    def step(db: sqlite3.Connection) -> None:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    return step


def is_url(target: str | Path) -> bool:
    """True for a PostgreSQL URL (postgresql://… or postgres://…), false for a journal file's path."""
    return str(target).startswith(PG_SCHEMES)


def connect(path: str | Path, schema: Schema):
    """A connection to the file at `path` (":memory:" for a throw-away one) with `schema` up to date; for a
    PostgreSQL URL, a PgConnection to that database (station/pg.py) with the schema's `postgres` tables.

    In autocommit mode (isolation_level=None): callers open their transactions themselves (BEGIN IMMEDIATE),
    so a commit happens exactly where they decide, e.g. at a step's end. Usable from any thread; callers
    serialise their use of it with a lock.
    """
    if is_url(path):
        from station.pg import connect_pg

        return connect_pg(str(path), schema)
    memory = str(path) == MEMORY
    if not memory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    try:
        if not memory:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db, schema, str(path))
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"{path} can't be used as the station's journal file ({exc}); move it away (the station "
                         f"starts a new one) or restore it from a backup.") from None
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection, schema: Schema, where: str) -> None:
    db.execute("BEGIN IMMEDIATE")  # two processes opening one old file: the second waits, then finds it done
    try:
        file_format = db.execute("PRAGMA user_version").fetchone()[0]
        if file_format > FILE_FORMAT:
            raise StoreError(f"{where} was written by a newer station (file format {file_format}, this one knows "
                             f"{FILE_FORMAT}); run that station's version, or move the file away to start anew.")
        if file_format < FILE_FORMAT:
            db.execute("CREATE TABLE IF NOT EXISTS store_versions (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            db.execute(f"PRAGMA user_version = {FILE_FORMAT}")
        row = db.execute("SELECT version FROM store_versions WHERE store = ?", (schema.name,)).fetchone()
        version = row[0] if row else 0
        if version > schema.version:
            raise StoreError(f"{where} was written by a newer station ({schema.name} tables at version {version}, "
                             f"this one knows {schema.version}); run that station's version, or move the file "
                             f"away to start anew.")
        for step in schema.steps[version:]:
            if callable(step):
                step(db)
            else:
                for statement in _statements(step):
                    db.execute(statement)
        if version < schema.version:
            db.execute("INSERT INTO store_versions (store, version) VALUES (?, ?)"
                       " ON CONFLICT (store) DO UPDATE SET version = excluded.version", (schema.name, schema.version))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script one by one (executescript() would commit the open transaction)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):  # false while the ';' is inside a comment or a string
            if pending.strip(" \t\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\n;"):
        raise ValueError(f"unfinished SQL statement in a schema step: {pending.strip()[:60]}")


__all__ = ["Schema", "Step", "StoreError", "IntegrityError", "add_column", "connect", "is_url", "FILE_FORMAT", "BUSY_TIMEOUT_S"]
