"""The stores on a PostgreSQL server (psycopg 3): a connection that takes the statements written for SQLite.

The journal, the ledger and the outbox write plain SQL with `?` parameters and open their write transactions
with BEGIN IMMEDIATE; `PgConnection` turns those into psycopg's `%s` and a plain BEGIN, runs in autocommit
mode (so, as with sqlite3 in isolation_level=None, a transaction is exactly what the caller opened), and gives
rows that answer both `row[0]` and `row["name"]`, as sqlite3.Row does. Rows are read-committed; the
stores' checks that must not race (the counter, the ledger's live subject) are made by PostgreSQL itself.

The password is never in the URL (a URL is shown in logs and settings): it comes from STATION_DB_PASSWORD,
else the OS keyring entry provisioning-station-db/<user>, else the server's own ways (PGPASSWORD, ~/.pgpass).
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import pq

from station.secrets import SecretError, SecretSpec
from station.store import IntegrityError, Schema, StoreError, _statements

PASSWORD_ENV = "STATION_DB_PASSWORD"
KEYRING_SERVICE = "provisioning-station-db"
CONNECT_TIMEOUT_S = 5
MIGRATION_LOCK = 0x5354_4E44  # pg_advisory_xact_lock key: one migrating station at a time
_migrated: set[tuple[str, str]] = set()  # (url, store) brought up to date by this process
_migrated_lock = threading.Lock()


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> str:
    """The URL, or StoreError when it carries a password (it would end up in settings, logs, `ps`)."""
    parts = urlsplit(url)
    if parts.password is not None:
        raise StoreError(f"The database URL {redact(url)} carries a password; leave it out of the URL and set "
                         f"{PASSWORD_ENV} or store it with `keyring set {KEYRING_SERVICE} {parts.username or 'USER'}`.")
    if not parts.path.strip("/"):
        raise StoreError(f"The database URL {url} names no database; end it with /DATABASE, e.g. "
                         f"postgresql://station@db.factory.lan/provisioning.")
    return url


def password(url: str) -> str | None:
    user = urlsplit(url).username or "station"
    spec = SecretSpec.parse("database password", f"env:{PASSWORD_ENV}", f"keyring:{KEYRING_SERVICE}/{user}")
    try:
        return spec.resolve().reveal()
    except SecretError:
        return None  # libpq's own ways then (PGPASSWORD, ~/.pgpass), or a server that trusts this host


class Row(tuple):
    """A result row: by position like a tuple, by column name like sqlite3.Row."""

    def __new__(cls, values: Iterable[Any], index: dict[str, int]):
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor):
    names = [c.name for c in cursor.description] if cursor.description else []
    index = {name: i for i, name in enumerate(names)}
    return lambda values: Row(values, index)


@functools.lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    """A statement written for SQLite, as psycopg takes it (the stores write no `?` or `%` inside strings)."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    return "BEGIN" if sql.strip().upper() == "BEGIN IMMEDIATE" else sql


class PgConnection:
    """What the stores use of sqlite3.Connection, on PostgreSQL. A connection the server dropped is opened
    again for the next statement that starts something (never inside a transaction: that one is lost, and
    says so), so a reader outlives a server restart."""

    def __init__(self, conn: psycopg.Connection, url: str):
        self._conn = conn
        self.url = url
        self._open_tx = False  # a BEGIN of ours is open

    def execute(self, sql: str, args: Iterable[Any] = ()) -> psycopg.Cursor:
        statement = _dialect(sql)
        if self.broken:
            if self._open_tx:
                raise StoreError(f"The station database {redact(self.url)} went away during a transaction; it "
                                 f"was not committed.")
            self._conn = _connect(self.url)
        cur = self._conn.cursor()
        try:
            cur.execute(statement, tuple(args))
        except psycopg.IntegrityError as exc:
            raise IntegrityError(str(exc).splitlines()[0]) from None
        except psycopg.OperationalError as exc:
            raise StoreError(f"The station database {redact(self.url)} went away ({_first_line(exc)}); it is "
                             f"tried again on the next read.") from None
        word = statement.lstrip()[:8].upper()
        if word.startswith("BEGIN"):
            self._open_tx = True
        elif word.startswith(("COMMIT", "ROLLBACK")):
            self._open_tx = False
        return cur

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> psycopg.Cursor:
        cur = self._conn.cursor()
        rows = [tuple(r) for r in rows]
        if rows:
            cur.executemany(_dialect(sql), rows)
        return cur

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        return self._conn.closed or self._conn.broken

    def __enter__(self) -> "PgConnection":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """As sqlite3's: commit what the block opened, or roll it back on an error; the connection stays open."""
        self._open_tx = False
        if self.in_transaction and not self.broken:
            self._conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def close(self) -> None:
        self._conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _connect(url: str) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, password=password(url),
                               row_factory=_row_factory, application_name="provisioning-station")
    except psycopg.Error as exc:
        raise StoreError(f"The station database {redact(url)} can't be reached ({_first_line(exc)}); check the "
                         f"server, the URL and the password ({PASSWORD_ENV} or the keyring).") from None


def open_pg(url: str) -> PgConnection:
    """A connection to the database at `url`, or StoreError naming the server and the fix."""
    check_url(url)
    return PgConnection(_connect(url), url)


def connect_pg(url: str, schema: Schema) -> PgConnection:
    db = open_pg(url)
    try:
        key = (url, schema.name)
        with _migrated_lock:
            done = key in _migrated
        if not done:
            migrate(db, schema)
            with _migrated_lock:
                _migrated.add(key)
    except BaseException:
        db.close()
        raise
    return db


def versions(db: PgConnection) -> dict[str, int]:
    """Each store's version in the database ({} for an empty one)."""
    if db.execute("SELECT to_regclass('store_versions')").fetchone()[0] is None:
        return {}
    return {r[0]: r[1] for r in db.execute("SELECT store, version FROM store_versions")}


def migrate(db: PgConnection, schema: Schema) -> int:
    """Bring the schema's PostgreSQL tables up to date in one transaction; returns how many steps ran."""
    if not schema.postgres:
        raise StoreError(f"The {schema.name} store has no PostgreSQL tables; keep it in the station's own file.")
    try:
        with db:
            db.execute("BEGIN")
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS store_versions (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM store_versions WHERE store = ?", (schema.name,)).fetchone()
            version = row[0] if row else 0
            if version > len(schema.postgres):
                raise StoreError(f"The station database {redact(db.url)} was written by a newer station "
                                 f"({schema.name} tables at version {version}, this one knows "
                                 f"{len(schema.postgres)}); update this station.")
            for script in schema.postgres[version:]:
                for statement in _statements(script):
                    db.execute(statement)
            if version < len(schema.postgres):
                db.execute("INSERT INTO store_versions (store, version) VALUES (?, ?) ON CONFLICT (store)"
                           " DO UPDATE SET version = excluded.version", (schema.name, len(schema.postgres)))
    except psycopg.Error as exc:
        raise StoreError(f"The station database {redact(db.url)} refused the {schema.name} tables "
                         f"({str(exc).strip().splitlines()[0]}); the role in the URL needs CREATE on the database "
                         f"(README: factory set-up).") from None
    return len(schema.postgres) - version
