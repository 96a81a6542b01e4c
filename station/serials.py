"""Device serial numbers the station hands out: the `{counter}` of a profile's serial template.

A counter is named by its template ("SN{counter:06d}": prefix and width are the template's, the first number is
[identity] counter_start), so profiles that render the same strings share one counter and can never collide.
Every number is recorded in the journal file's `serials` table before it is used, and a number is never handed
out twice, whatever crashes: a board's number is `used` (with its device id) and stays its number across the
step's retries; a board that then fails turns it `void`, which is recorded, not reissued.

One station counts by itself (`counters` in its file). With a factory database (station/replica.py) every
station draws from one PostgreSQL sequence per counter: a station keeps `ahead` numbers `reserved` in its own
file, drawn in a block, so it can go on provisioning that many boards while the database is away. A station
that has no database and no reserved numbers left refuses to take one (OutOfSerials: the board fails, and a
batch does not start), saying why.
"""
from __future__ import annotations

import hashlib
import threading
import time
from typing import Callable

from station.store import Schema, StoreError, connect

RESERVED, USED, VOID = "reserved", "used", "void"
DEFAULT_AHEAD = 10  # boards a station may provision with the database away (setting: offline_boards)

TABLES_V1 = """
CREATE TABLE IF NOT EXISTS serials (
    counter TEXT NOT NULL,                        -- the serial template the number is for
    value INTEGER NOT NULL,
    state TEXT NOT NULL,                          -- reserved | used | void
    device_id TEXT,                               -- journal devices.id of the board that took it
    taken REAL,                                   -- Unix time it was taken
    PRIMARY KEY (counter, value)
);
CREATE INDEX IF NOT EXISTS serials_free ON serials(counter, state, value);
CREATE TABLE IF NOT EXISTS counters (counter TEXT PRIMARY KEY, next INTEGER NOT NULL);
"""

PG_TABLES_V1 = """
CREATE TABLE IF NOT EXISTS serials (
    counter TEXT NOT NULL,
    value BIGINT NOT NULL,
    state TEXT NOT NULL,
    device_id TEXT,
    taken DOUBLE PRECISION,
    station_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (counter, value)
);
CREATE TABLE IF NOT EXISTS counters (
    counter TEXT PRIMARY KEY,
    sequence TEXT NOT NULL,                       -- the PostgreSQL sequence every station draws from
    start BIGINT NOT NULL
);
"""

SCHEMA = Schema("serials", (TABLES_V1,), postgres=(PG_TABLES_V1,))

Draw = Callable[[str, int, int], list[int]]  # (counter, start, how many) -> fresh numbers from the shared sequence


class OutOfSerials(StoreError):
    """No number can be handed out: no database and none reserved. The message says why and the fix."""


def sequence_name(counter: str) -> str:
    return "serial_" + hashlib.sha256(counter.encode()).hexdigest()[:20]


def draw_from(db, counter: str, start: int, count: int) -> list[int]:
    """`count` numbers from the counter's sequence on PostgreSQL (made on first use). nextval is never rolled
    back, so a number drawn is never drawn again, even if the drawing station dies before it records it."""
    seq = sequence_name(counter)
    with db:
        db.execute("BEGIN")  # stations making the sequence at once: one makes it, the others wait and find it
        db.execute("SELECT pg_advisory_xact_lock(?)", (int(hashlib.sha256(seq.encode()).hexdigest()[:15], 16),))
        if db.execute("SELECT to_regclass(?)", (seq,)).fetchone()[0] is None:
            # past every number a station recorded before it shared the database (it counted alone then)
            first = max(int(start), int(db.execute("SELECT COALESCE(MAX(value) + 1, 0) FROM serials WHERE counter = ?",
                                                   (counter,)).fetchone()[0]))
            db.execute(f"CREATE SEQUENCE {seq} START WITH {first} MINVALUE {min(0, first)}")
        db.execute("INSERT INTO counters (counter, sequence, start) VALUES (?, ?, ?) ON CONFLICT (counter) DO NOTHING",
                   (counter, seq, start))
    return [int(r[0]) for r in db.execute(f"SELECT nextval('{seq}') FROM generate_series(1, ?)", (count,))]


class SerialPool:
    """The numbers this station may hand out, in its journal file."""

    def __init__(self, path, ahead: int = DEFAULT_AHEAD):
        self._db = connect(path, SCHEMA)
        self._lock = threading.Lock()
        self.ahead = ahead
        self.draw: Draw | None = None  # set when the station shares a factory database
        self.where = ""  # the database, for messages
        self._counters: dict[str, int] = {}  # counter -> start: the ones to keep reserved numbers of

    def close(self) -> None:
        with self._lock:
            self.draw, self._counters = None, {}  # the replica may still hold this pool: it tops up nothing now
            self._db.close()

    def use(self, counter: str, start: int) -> None:
        """Keep numbers of this counter reserved from now on (a batch's profile uses it)."""
        self._counters[counter] = start

    def take(self, counter: str, start: int, device_id: str) -> int:
        """The board's number: the one it took already (a retried step), else a new one, recorded as used."""
        if not device_id:
            raise ValueError("a serial number is taken for a device: pass its journal id")
        self.use(counter, start)
        with self._lock:
            row = self._db.execute("SELECT value FROM serials WHERE counter = ? AND device_id = ? AND state = ?",
                                   (counter, device_id, USED)).fetchone()
            if row:
                return int(row[0])
            if self.draw is None:
                return self._count_locally(counter, start, device_id)
            value = self._take_reserved(counter, device_id)
        if value is None:
            try:
                self.top_up(counter)
            except StoreError:
                pass  # the database is away: nothing reserved is left, said below
            with self._lock:
                value = self._take_reserved(counter, device_id)
        if value is None:
            raise OutOfSerials(self.why_none(counter))
        return value

    def why_none(self, counter: str) -> str:
        return (f"No device serial number left for {counter}: the station database {self.where} can't be reached "
                f"and the {self.ahead} numbers reserved ahead are used up; reconnect the database (or allow more "
                f"boards offline: offline_boards in the station settings).")

    def reserved(self, counter: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM serials WHERE counter = ? AND state = ?",
                                    (counter, RESERVED)).fetchone()[0]

    def top_up(self, counter: str | None = None) -> None:
        """Draw from the shared sequence until `ahead` numbers are reserved: for one counter now, or (no
        `counter`) for each counter in use once it is down to half.
        Errors (the database away) propagate to the caller; the numbers drawn are recorded before return."""
        if self.draw is None:
            return
        for name in ([counter] if counter else list(self._counters)):
            have = self.reserved(name)
            if have >= self.ahead or (counter is None and have > self.ahead // 2):
                continue  # in the background, refill in blocks at half: fewer commits beside the boards'
            missing = self.ahead - have
            draw = self.draw
            if draw is None:
                return  # closed meanwhile
            numbers = draw(name, self._counters.get(name, 1), missing)
            with self._lock, self._db:
                if self.draw is None:
                    return  # closed while drawing: those numbers are skipped, never reused
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR IGNORE INTO serials (counter, value, state) VALUES (?, ?, ?)",
                                     [(name, n, RESERVED) for n in numbers])

    def _take_reserved(self, counter: str, device_id: str) -> int | None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM serials WHERE counter = ? AND state = ? ORDER BY value LIMIT 1",
                                   (counter, RESERVED)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE serials SET state = ?, device_id = ?, taken = ? WHERE counter = ? AND value = ?",
                             (USED, device_id, time.time(), counter, row[0]))
            return int(row[0])

    def _count_locally(self, counter: str, start: int, device_id: str) -> int:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO counters (counter, next) VALUES (?, ?) ON CONFLICT (counter) DO NOTHING",
                             (counter, start))
            value = int(self._db.execute("UPDATE counters SET next = next + 1 WHERE counter = ? RETURNING next - 1",
                                         (counter,)).fetchone()[0])
            self._db.execute("INSERT INTO serials (counter, value, state, device_id, taken) VALUES (?, ?, ?, ?, ?)",
                             (counter, value, USED, device_id, time.time()))
        return value


def void_serials(db, device_id: str) -> None:
    """The numbers a board took turn void (it failed or was interrupted), in the caller's transaction."""
    db.execute("UPDATE serials SET state = ? WHERE device_id = ? AND state = ?", (VOID, device_id, USED))


def void_serials_of_interrupted(db) -> None:
    db.execute("UPDATE serials SET state = ? WHERE state = ? AND device_id IN (SELECT id FROM devices WHERE result"
               " = 'interrupted')", (VOID, USED))
