"""The registration outbox: registrations are written to the journal before they are sent, and marked
delivered only when the cloud confirms.

It lives in the station's journal file (its own connection from station/store.py; WAL, synchronous=FULL),
in one table:

    registrations(id, device_id, registrar, action, payload, state, attempts, next_try, last_error, created,
                  delivered)

`state` is pending → delivered, or pending → failed (the cloud refused; `retry_failed()` puts it back).
`payload` is a DeviceRegistration as JSON: public facts only (the record refuses private keys).

`Outbox.run(registrars, stop)` is an asyncio task that delivers due rows in the background. Each pass claims
the due rows in one write transaction (attempts + 1, next_try pushed out by a lease), so two runners never
send the same row at once; a runner killed mid-send leaves the row pending and it is sent again (registrars
are idempotent), so every registration ends up delivered once. Transient failures wait with capped, jittered
exponential backoff; rows left pending by a previous process are due again as soon as `run` starts. Network
calls and SQLite writes run in a thread pool, never on the loop; progress goes to `on_update`, called on the
loop's thread, so the engine can show "registration pending" / "registration delivered".
"""
from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from station.cloud import CloudError, CloudRefused
from station.cloud.registrar import REGISTER, VOID, DeviceRegistration, Registrar, RegistrationResult
from station.store import Schema, connect

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

TABLES_V1 = """
CREATE TABLE IF NOT EXISTS registrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    registrar TEXT NOT NULL,                      -- the Registrar's name: "mosquitto", "spark-server", …
    action TEXT NOT NULL DEFAULT 'register',      -- register | void
    payload TEXT NOT NULL,                        -- DeviceRegistration as JSON: public facts only
    state TEXT NOT NULL DEFAULT 'pending',        -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,                       -- Unix time the row is due (again)
    last_error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    delivered REAL
);
CREATE INDEX IF NOT EXISTS registrations_due ON registrations(state, next_try);
CREATE INDEX IF NOT EXISTS registrations_device ON registrations(device_id);
"""

SCHEMA = Schema("outbox", (TABLES_V1,))  # version 1: the table as made before versions were kept

_COLUMNS = "id, device_id, registrar, action, payload, state, attempts, next_try, last_error, created, delivered"


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n+1: base * factor**(n-1), at most `cap`, times a random factor in [1-jitter, 1]."""

    base: float = 2.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.5

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        raw = min(self.cap, self.base * self.factor ** max(0, attempts - 1))
        return raw * (1 - self.jitter * (rng or random).random())


@dataclass(frozen=True)
class RegistrationRow:
    id: int
    device_id: str
    registrar: str
    action: str
    payload: dict
    state: str
    attempts: int
    next_try: float
    last_error: str
    created: float
    delivered: float | None

    def device(self) -> DeviceRegistration:
        return DeviceRegistration.from_payload(self.payload)


@dataclass(frozen=True)
class RegistrationUpdate:
    """Progress of one registration, for the engine and the UI."""

    id: int
    device_id: str
    registrar: str
    action: str
    state: str  # pending (will retry at next_try) | delivered | failed
    attempts: int
    error: str = ""
    next_try: float | None = None
    detail: str = ""

    def describe(self) -> str:
        what = "registration" if self.action == REGISTER else "void"
        if self.state == DELIVERED:
            return f"{what} delivered to {self.registrar}" + (f": {self.detail}" if self.detail else "")
        if self.state == FAILED:
            return f"{what} refused by {self.registrar}: {self.error}"
        wait = f"; next try in {max(0.0, self.next_try - time.time()):.0f} s" if self.next_try else ""
        return f"{what} pending for {self.registrar} (attempt {self.attempts}: {self.error}{wait})"


class Outbox:
    def __init__(self, journal_path: Path | str, *, backoff: Backoff = Backoff(),
                 on_update: Callable[[RegistrationUpdate], None] | None = None, batch_size: int = 1000,
                 lease: float = 300.0, workers: int = 4):
        self.path = Path(journal_path)
        self.backoff = backoff
        self.on_update = on_update
        self.batch_size = batch_size
        self.lease = lease  # how long a claimed row is left alone: longer than any registrar call takes
        self._lock = threading.Lock()
        self._db = connect(self.path, SCHEMA)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="outbox")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._in_flight: set[int] = set()  # rows this process claimed and has not recorded an outcome for
        self._resumed = False  # run() has made what earlier runs left pending due again

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            self._db.close()

    # --- writes -------------------------------------------------------------------------------------------

    def enqueue(self, device_id: str, registrar: str, payload: DeviceRegistration | Mapping,
                action: str = REGISTER) -> int:
        """Record a registration (committed and fsynced) before anything is sent; returns its row id.

        The same device, registrar, action and payload again returns the existing row instead of a new one
        (unless that one failed), so a step that is retried does not register twice.
        """
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            rid = add_row(self._db, device_id, registrar, payload, action)
        self.kick()
        return rid

    def enqueue_void(self, device: DeviceRegistration, registrar: str) -> int:
        return self.enqueue(device.device_id, registrar, device, action=VOID)

    def retry_failed(self, registrar: str | None = None) -> int:
        """Put failed rows back to pending, due now (after the cause was fixed). Returns how many."""
        sql = "UPDATE registrations SET state = ?, next_try = ? WHERE state = ?"
        args: tuple = (PENDING, time.time(), FAILED)
        if registrar:
            sql, args = sql + " AND registrar = ?", args + (registrar,)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            count = self._db.execute(sql, args).rowcount
        self.kick()
        return count

    # --- reads --------------------------------------------------------------------------------------------

    def rows(self, state: str | None = None, device_id: str | None = None) -> list[RegistrationRow]:
        sql, args = f"SELECT {_COLUMNS} FROM registrations WHERE 1=1", []
        if state:
            sql += " AND state = ?"
            args.append(state)
        if device_id:
            sql += " AND device_id = ?"
            args.append(device_id)
        with self._lock:
            return [_row(r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def get(self, row_id: int) -> RegistrationRow | None:
        with self._lock:
            r = self._db.execute(f"SELECT {_COLUMNS} FROM registrations WHERE id = ?", (row_id,)).fetchone()
        return _row(r) if r else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            found = dict(self._db.execute("SELECT state, COUNT(*) FROM registrations GROUP BY state").fetchall())
        return {s: found.get(s, 0) for s in (PENDING, DELIVERED, FAILED)}

    def pending_count(self, names: Iterable[str]) -> int:
        """Pending rows for these registrars."""
        names = tuple(names)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM registrations WHERE state = ? AND registrar IN"
                                    f" ({','.join('?' * len(names))})", (PENDING, *names)).fetchone()[0]

    def awaiting_attempt(self, names: Iterable[str]) -> int:
        """Pending rows for these registrars that are due now or being sent: what is worth waiting for. A row
        waiting out its backoff after a failed attempt is not (the cloud did not answer; it goes out later).
        Until run() has made earlier runs' rows due again, there is always something to wait for."""
        names = tuple(names)
        with self._lock:
            due = self._db.execute(f"SELECT COUNT(*) FROM registrations WHERE state = ? AND next_try <= ? AND"
                                   f" registrar IN ({','.join('?' * len(names))})",
                                   (PENDING, time.time(), *names)).fetchone()[0]
            return due + len(self._in_flight) + (0 if self._resumed else 1)

    def device_states(self) -> dict[str, str]:
        """Device id -> its registration state, as device_state() gives it, for every device with rows."""
        rank = {FAILED: 3, PENDING: 2, DELIVERED: 1}
        states: dict[str, str] = {}
        for row in self.rows():
            if rank[row.state] > rank.get(states.get(row.device_id, ""), 0):
                states[row.device_id] = row.state
        return states

    def device_state(self, device_id: str) -> str | None:
        """"failed" if any of the device's registrations failed, else "pending" if any waits, else
        "delivered"; None when it has none."""
        states = {r.state for r in self.rows(device_id=device_id)}
        for state in (FAILED, PENDING, DELIVERED):
            if state in states:
                return state
        return None

    # --- delivery -----------------------------------------------------------------------------------------

    async def run(self, registrars: Mapping[str, Registrar] | Iterable[Registrar], stop: asyncio.Event) -> None:
        """Deliver pending registrations until `stop` is set. Rows for registrars not given are left alone."""
        regs = dict(registrars) if isinstance(registrars, Mapping) else {r.name: r for r in registrars}
        loop = asyncio.get_running_loop()
        self._loop, self._wake = loop, asyncio.Event()
        names = tuple(regs)
        try:
            await loop.run_in_executor(self._pool, self.due_now, names)  # a restart retries at once
            self._resumed = True
            while not stop.is_set():
                self._wake.clear()
                groups = await loop.run_in_executor(self._pool, self._claim, names)
                if groups:
                    await asyncio.gather(*(loop.run_in_executor(self._pool, self._deliver, regs[name], action, rows)
                                           for (name, action), rows in groups.items()))
                    continue
                delay = await loop.run_in_executor(self._pool, self._next_due_in, names)
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                try:
                    await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
        finally:
            self._loop = self._wake = None

    def deliver_due(self, registrars: Mapping[str, Registrar] | Iterable[Registrar]) -> int:
        """One synchronous pass over the rows due now (for a command line `flush`); returns rows attempted."""
        regs = dict(registrars) if isinstance(registrars, Mapping) else {r.name: r for r in registrars}
        groups = self._claim(tuple(regs))
        for (name, action), rows in groups.items():
            self._deliver(regs[name], action, rows)
        return sum(len(rows) for rows in groups.values())

    def kick(self) -> None:
        """Wake the running delivery task: a row was added (here or through add_row)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def due_now(self, names: Iterable[str]) -> None:
        """Make the pending rows for these registrars due now (a restart, or `station cloud sync`)."""
        names = tuple(names)
        if not names:
            return
        marks = ",".join("?" * len(names))
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(f"UPDATE registrations SET next_try = ? WHERE state = ? AND registrar IN ({marks})",
                             (time.time(), PENDING, *names))

    def _next_due_in(self, names: tuple[str, ...]) -> float:
        if not names:
            return 60.0
        marks = ",".join("?" * len(names))
        with self._lock:
            (when,) = self._db.execute(f"SELECT MIN(next_try) FROM registrations WHERE state = ?"
                                       f" AND registrar IN ({marks})", (PENDING, *names)).fetchone()
        return 60.0 if when is None else min(60.0, max(0.0, when - time.time()))

    def _claim(self, names: tuple[str, ...]) -> dict[tuple[str, str], list[RegistrationRow]]:
        """Take the due rows (oldest first; a device's later rows wait for its earlier ones), in one write
        transaction that bumps their attempts and leases them, so no other runner sends them meanwhile."""
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            found = [_row(r) for r in self._db.execute(
                f"SELECT {_COLUMNS} FROM registrations r WHERE state = ? AND next_try <= ?"
                f" AND registrar IN ({marks}) AND NOT EXISTS (SELECT 1 FROM registrations e"
                f" WHERE e.device_id = r.device_id AND e.registrar = r.registrar AND e.state = ? AND e.id < r.id)"
                f" ORDER BY id LIMIT ?", (PENDING, now, *names, PENDING, self.batch_size))]
            self._db.executemany("UPDATE registrations SET attempts = attempts + 1, next_try = ? WHERE id = ?",
                                 [(now + self.lease, r.id) for r in found])
            self._in_flight.update(r.id for r in found)
        groups: dict[tuple[str, str], list[RegistrationRow]] = {}
        for r in found:
            groups.setdefault((r.registrar, r.action), []).append(
                RegistrationRow(**{**r.__dict__, "attempts": r.attempts + 1}))
        return groups

    def _deliver(self, registrar: Registrar, action: str, rows: list[RegistrationRow]) -> None:
        """Send claimed rows (in a worker thread) and record each outcome as soon as it is known."""
        devices: list[DeviceRegistration | None] = []
        for r in rows:
            try:
                devices.append(r.device())
            except (ValueError, TypeError) as exc:
                devices.append(None)
                self._record(r, CloudRefused(f"the stored registration record is unusable ({exc})"))
        todo = [(r, d) for r, d in zip(rows, devices) if d is not None]
        many = getattr(registrar, "register_many", None)
        if action == REGISTER and many is not None and len(todo) > 1:
            try:
                results = many([d for _, d in todo])
            except Exception as exc:  # noqa: BLE001 — a whole-batch failure (cloud down): every row waits
                results = [exc] * len(todo)
            for (r, _), result in zip(todo, results):
                self._record(r, result)
            return
        for r, d in todo:
            try:
                result: RegistrationResult | BaseException = (
                    registrar.register(d) if action == REGISTER else registrar.void(d))
            except Exception as exc:  # noqa: BLE001 — recorded on the row; the runner must keep going
                result = exc
            self._record(r, result)

    def _record(self, row: RegistrationRow, result: RegistrationResult | BaseException) -> None:
        now = time.time()
        if isinstance(result, RegistrationResult):
            state, error, next_try, detail = DELIVERED, "", None, result.detail
            sql = "UPDATE registrations SET state = ?, delivered = ?, last_error = '' WHERE id = ? AND state = ?"
            args: tuple = (DELIVERED, now, row.id, PENDING)
        elif isinstance(result, CloudRefused):
            state, error, next_try, detail = FAILED, str(result), None, ""
            sql = "UPDATE registrations SET state = ?, last_error = ? WHERE id = ? AND state = ?"
            args = (FAILED, error, row.id, PENDING)
        else:
            error = str(result) if isinstance(result, CloudError) else f"{type(result).__name__}: {result}"
            state, next_try, detail = PENDING, now + self.backoff.delay(row.attempts), ""
            sql = "UPDATE registrations SET next_try = ?, last_error = ? WHERE id = ? AND state = ?"
            args = (next_try, error, row.id, PENDING)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            changed = self._db.execute(sql, args).rowcount
            self._in_flight.discard(row.id)
        if not changed:
            return  # another runner finished it first: report nothing twice
        update = RegistrationUpdate(row.id, row.device_id, row.registrar, row.action, state, row.attempts, error,
                                    next_try, detail)
        loop, callback = self._loop, self.on_update
        if callback is None:
            return
        if loop is not None:
            try:
                loop.call_soon_threadsafe(callback, update)
            except RuntimeError:
                pass
        else:
            callback(update)


def add_row(db: sqlite3.Connection, device_id: str, registrar: str, payload: DeviceRegistration | Mapping,
            action: str = REGISTER) -> int:
    """Outbox.enqueue inside the caller's write transaction on the journal's file (a board's end is written
    with its journal record in one transaction); call Outbox.kick() after the commit."""
    if action not in (REGISTER, VOID):
        raise ValueError(f"action must be '{REGISTER}' or '{VOID}', not {action!r}")
    record = payload if isinstance(payload, DeviceRegistration) else DeviceRegistration.from_payload(payload)
    if record.device_id != device_id:
        raise ValueError(f"the payload is for device {record.device_id}, not {device_id}")
    text = json.dumps(record.to_payload(), sort_keys=True)
    now = time.time()
    row = db.execute(
        "SELECT id FROM registrations WHERE device_id = ? AND registrar = ? AND action = ? AND payload = ?"
        " AND state IN (?, ?) ORDER BY id DESC LIMIT 1",
        (device_id, registrar, action, text, PENDING, DELIVERED)).fetchone()
    if row:
        return int(row[0])
    return int(db.execute("INSERT INTO registrations (device_id, registrar, action, payload, state, next_try, created)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?)", (device_id, registrar, action, text, PENDING, now, now)
                          ).lastrowid)


def registrars_of(db: sqlite3.Connection, device_id: str) -> list[str]:
    """The registrars a device has registration rows with (a void goes to each of them)."""
    return [r[0] for r in db.execute("SELECT DISTINCT registrar FROM registrations WHERE device_id = ? ORDER BY 1",
                                     (device_id,))]


def _row(r: tuple) -> RegistrationRow:
    (id_, device_id, registrar, action, payload, state, attempts, next_try, last_error, created, delivered) = r
    return RegistrationRow(int(id_), device_id, registrar, action, json.loads(payload), state, int(attempts),
                           float(next_try), last_error, float(created), delivered)
