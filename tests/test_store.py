"""station.store: every connection to the journal file gets the same pragmas; each store's tables are versioned,
and a file written before versions were kept opens and migrates without losing a row."""
import datetime
import json
import sqlite3

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from station.cloud.outbox import Outbox
from station.cloud.registrar import DeviceRegistration
from station.identity.ledger import Ledger, public_key_sha256, serial_hex
from station.journal import Journal
from station.model import Result
from station.store import BUSY_TIMEOUT_S, FILE_FORMAT, Schema, StoreError, connect

# The tables exactly as the station created them before station/store.py (journal, ledger, outbox each ran
# its own script with executescript). OLD_DEVICES_NO_IDENTITY is the devices table of journals older still.
OLD_JOURNAL = """
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
OLD_JOURNAL_NO_IDENTITY = OLD_JOURNAL.replace("    identity TEXT NOT NULL DEFAULT '{}',\n", "")

OLD_LEDGER = """
CREATE TABLE IF NOT EXISTS certificates (
    serial_hex TEXT PRIMARY KEY,                  -- certificate serialNumber, upper-case hex, even length
    subject_serial TEXT NOT NULL,                 -- the device serial (subject serialNumber, 2.5.4.5)
    device_id TEXT,                               -- journal devices.id of the board it was made for
    public_key_sha256 TEXT NOT NULL UNIQUE,       -- SHA-256 of the SubjectPublicKeyInfo DER, hex
    key_origin TEXT NOT NULL,                     -- "host" (made by the station) or "board" (CSR)
    not_after TEXT NOT NULL,                      -- ISO 8601 UTC, e.g. 9999-12-31T23:59:59Z
    issued REAL NOT NULL,                         -- Unix time
    voided REAL,                                  -- Unix time, NULL while the certificate is live
    void_reason TEXT,
    issuer_sha256 TEXT NOT NULL DEFAULT '',       -- SHA-256 fingerprint of the issuing CA certificate
    certificate BLOB                              -- the DER certificate (public material)
);
CREATE UNIQUE INDEX IF NOT EXISTS certificates_live_subject ON certificates(subject_serial) WHERE voided IS NULL;
CREATE INDEX IF NOT EXISTS certificates_device ON certificates(device_id);
"""

OLD_OUTBOX = """
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

def old_station_file(path, journal_script: str) -> dict:
    """A journal file as the pre-store station left it: all three stores' tables and a row in each."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old board"),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-OLD-1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x1234ABCD).not_valid_before(datetime.datetime(2024, 1, 1))
            .not_valid_after(datetime.datetime(2034, 1, 1)).sign(key, hashes.SHA256()))
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    for script in (journal_script, OLD_LEDGER, OLD_OUTBOX):
        db.executescript(script)
    db.execute("INSERT INTO batches (id, profile, profile_sha256, mode, operator, station_id, lot, started, ended)"
               " VALUES ('b-old', 'demo.toml', ?, 'batch', 'alice', 'st-1', 'L1', 1700000000, 1700000100)",
               ("ab" * 32,))
    db.execute("INSERT INTO devices (id, batch_id, port, usb_id, family, chip, mac, result, reason, started, ended)"
               " VALUES ('d-old', 'b-old', '1-1.4', '10c4:ea60', 'esp', 'ESP32', 'aa:bb:cc:dd:ee:ff', 'pass', '',"
               " 1700000010, 1700000090)")
    db.execute("INSERT INTO steps (device_id, name, attempt, started, ended, result, detail)"
               " VALUES ('d-old', 'flash', 1, 1700000020, 1700000080, 'pass', 'wrote 3 images')")
    db.execute("INSERT INTO certificates (serial_hex, subject_serial, device_id, public_key_sha256, key_origin,"
               " not_after, issued, issuer_sha256, certificate) VALUES (?, 'SN-OLD-1', 'd-old', ?, 'host',"
               " '2034-01-01T00:00:00Z', 1700000050, '', ?)",
               (serial_hex(cert), public_key_sha256(key.public_key()), cert.public_bytes(serialization.Encoding.DER)))
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    payload = json.dumps(DeviceRegistration("d-old", public_key_pem=pem).to_payload(), sort_keys=True)
    db.execute("INSERT INTO registrations (device_id, registrar, payload, next_try, created)"
               " VALUES ('d-old', 'mosquitto', ?, 1700000060, 1700000060)", (payload,))
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    return {"serial": serial_hex(cert), "pem": pem}


def versions(path) -> tuple[int, dict[str, int]]:
    db = sqlite3.connect(path)
    try:
        return (db.execute("PRAGMA user_version").fetchone()[0],
                dict(db.execute("SELECT store, version FROM store_versions").fetchall()))
    finally:
        db.close()


@pytest.mark.parametrize("journal_script", [OLD_JOURNAL, OLD_JOURNAL_NO_IDENTITY], ids=["current", "pre-identity"])
def test_a_file_from_before_versions_opens_and_migrates_without_losing_rows(tmp_path, journal_script):
    path = tmp_path / "journal.sqlite3"
    old = old_station_file(path, journal_script)

    journal, ledger, outbox = Journal(path), Ledger(path), Outbox(path)
    try:
        assert [(b.id, b.lot, b.ended) for b in journal.batches()] == [("b-old", "L1", 1700000100)]
        (device,) = journal.devices("b-old")
        assert (device.port, device.chip, device.mac, device.result, device.identity) == (
            "1-1.4", "ESP32", "aa:bb:cc:dd:ee:ff", "pass", {})
        assert [(s.name, s.result, s.detail) for s in journal.steps("d-old")] == [("flash", "pass", "wrote 3 images")]
        record = ledger.find_subject("SN-OLD-1")
        assert record.serial_hex == old["serial"] and record.device_id == "d-old" and record.cert() is not None
        assert "at port 1-1.4" in ledger.already_provisioned_message(record)  # the ledger still reads the journal
        (row,) = outbox.rows()
        assert (row.device_id, row.registrar, row.state, row.device().public_key_pem) == (
            "d-old", "mosquitto", "pending", old["pem"])

        # the migrated file takes new rows in every table
        batch = journal.start_batch("demo.toml", "cd" * 32, "batch", "bob", "st-1")
        new = journal.start_device(batch, "1-1.5", "10c4:ea60", "esp")
        journal.set_identity(new, {"subject_serial": "SN-NEW-1"})
        journal.end_device(new, Result.PASS)
        assert journal.devices(batch)[0].identity == {"subject_serial": "SN-NEW-1"}
    finally:
        journal.close(), ledger.close(), outbox.close()

    # the ledger brings its device serial numbers ({counter}, station/serials.py) along
    assert versions(path) == (FILE_FORMAT, {"journal": 2, "ledger": 1, "outbox": 1, "serials": 1})


def test_every_connection_gets_the_stations_pragmas(tmp_path):
    db = connect(tmp_path / "sub" / "file.sqlite3", Schema("t", ("CREATE TABLE t (a)",)))
    try:
        pragma = {name: db.execute(f"PRAGMA {name}").fetchone()[0]
                  for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
    finally:
        db.close()
    assert pragma == {"journal_mode": "wal", "synchronous": 2,  # 2 = FULL: every commit fsynced
                      "foreign_keys": 1, "busy_timeout": int(BUSY_TIMEOUT_S * 1000)}


def test_the_journal_refuses_a_device_of_no_batch(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            journal.start_device("no-such-batch", "1-1.1", "10c4:ea60", "esp")
    finally:
        journal.close()


def test_steps_run_once_in_order_and_the_version_is_recorded(tmp_path):
    path = tmp_path / "file.sqlite3"
    ran = []
    first = Schema("things", ("CREATE TABLE things (name TEXT); INSERT INTO things VALUES ('one')",
                              lambda db: ran.append("step 2")))
    connect(path, first).close()
    connect(path, first).close()  # already at version 2: nothing runs again
    assert ran == ["step 2"] and versions(path) == (FILE_FORMAT, {"things": 2})

    grown = Schema("things", first.steps + ("ALTER TABLE things ADD COLUMN size INTEGER NOT NULL DEFAULT 7",))
    db = connect(path, grown)
    try:
        assert db.execute("SELECT name, size FROM things").fetchall() == [("one", 7)]
    finally:
        db.close()
    assert ran == ["step 2"] and versions(path) == (FILE_FORMAT, {"things": 3})


def test_semicolons_in_comments_and_strings_stay_in_their_statement(tmp_path):
    script = """
    CREATE TABLE notes (
        text TEXT NOT NULL DEFAULT 'a;b'   -- a default; with a semicolon
    );
    INSERT INTO notes DEFAULT VALUES;
    INSERT INTO notes VALUES ('c;d');
    """
    db = connect(tmp_path / "file.sqlite3", Schema("notes", (script,)))
    try:
        assert db.execute("SELECT text FROM notes").fetchall() == [("a;b",), ("c;d",)]
    finally:
        db.close()


def test_a_failing_step_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "file.sqlite3"
    connect(path, Schema("other", ("CREATE TABLE other (a)",))).close()

    def broken(db):
        raise RuntimeError("step 2 broke")

    with pytest.raises(RuntimeError, match="step 2 broke"):
        connect(path, Schema("things", ("CREATE TABLE things (a)", broken)))
    db = sqlite3.connect(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()
    assert "things" not in tables  # step 1 rolled back with step 2
    assert versions(path) == (FILE_FORMAT, {"other": 1})


def test_a_file_from_a_newer_station_is_refused(tmp_path):
    path = tmp_path / "journal.sqlite3"
    connect(path, Schema("things", ("CREATE TABLE things (a)", "CREATE TABLE more (b)"))).close()
    with pytest.raises(StoreError) as err:
        connect(path, Schema("things", ("CREATE TABLE things (a)",)))
    assert str(err.value) == (f"{path} was written by a newer station (things tables at version 2, this one knows "
                              f"1); run that station's version, or move the file away to start anew.")

    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {FILE_FORMAT + 1}")
    db.close()
    with pytest.raises(StoreError, match=f"newer station \\(file format {FILE_FORMAT + 1}, this one knows"):
        Journal(path)


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"these are not the tables you are looking for" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError) as err:
        Journal(path)
    assert str(err.value).startswith(f"{path} can't be used as the station's journal file (file is not a database)")
    assert "move it away" in str(err.value) and path.read_bytes() == before


def test_a_throw_away_ledger_in_memory(tmp_path):
    with Ledger(":memory:") as ledger:
        assert ledger.count() == 0 and ledger.path is None
    assert not list(tmp_path.iterdir())  # nothing written to disk
