"""The stores on both back ends (the journal file and a real PostgreSQL server), the spool's exactly-once, and
the {counter} numbers: never reused, void when a board fails, a reserve that carries the line while the server
is down."""
import sqlite3

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from station.cloud.outbox import Outbox
from station.cloud.registrar import DeviceRegistration
from station.identity.ca import StationCA
from station.identity.idevid import IdevidProfile, host_identity
from station.identity.ledger import AlreadyProvisionedError, Ledger
from station.journal import Journal
from station.model import Result
from station.replica import Replica
from station.serials import OutOfSerials, SerialPool, void_serials
from station.services import recover

TEMPLATE = "SN{counter:06d}"


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where the stores live: the station's journal file, or the factory's database."""
    if request.param == "sqlite":
        return tmp_path / "journal.sqlite3"
    return request.getfixturevalue("pg_url")


def test_journal_ledger_and_outbox_work_the_same_on_both_back_ends(target):
    journal, ledger, outbox = Journal(target), Ledger(target), Outbox(target)
    try:
        batch = journal.start_batch("p", "00" * 32, "batch", "alice", "st-1", lot="L7")
        done = journal.start_device(batch, "1-1.1", "10c4:ea60", "esp")
        journal.end_step(journal.start_step(done, "detect", 1), True, "ESP32")
        journal.end_device(done, Result.PASS)
        cut = journal.start_device(batch, "1-1.2", "10c4:ea60", "esp")
        facts = {"mac": "24:0a:c4:00:00:07", "chip": "ESP32"}
        ca = StationCA.ephemeral("T")
        _, cert = host_identity(ca, IdevidProfile(common_name="{mac_hex}"), facts, ledger, device_id=cut)
        record = ledger.records(cut)[0]
        with pytest.raises(AlreadyProvisionedError, match="already provisioned on .* at port 1-1.2"):
            host_identity(ca, IdevidProfile(common_name="{mac_hex}"), facts, ledger, device_id=cut)
        pem = cert.public_bytes(Encoding.PEM).decode()
        journal.set_identity(cut, {"subject_serial": record.subject_serial, "certificate_serial": record.serial_hex,
                                   "certificate": pem, "void": False})
        row = outbox.enqueue(cut, "mosquitto", DeviceRegistration(cut, certificate_pem=pem))
        assert outbox.enqueue(cut, "mosquitto", DeviceRegistration(cut, certificate_pem=pem)) == row
        journal.start_step(cut, "flash", 1)
        # the station dies here; the next one recovers

        assert [d.id for d in recover(journal)] == [cut]
        assert recover(journal) == []
        assert not ledger.get(record.serial_hex).live and ledger.get(record.serial_hex).cert() == cert
        devices = {d.port: d for d in journal.devices(batch)}
        assert devices["1-1.2"].identity["void"] is True and devices["1-1.2"].result == "interrupted"
        assert devices["1-1.1"].station_id == "st-1" and journal.batch(batch).lot == "L7"
        assert [(s.name, s.result) for s in journal.steps(cut)] == [("flash", "interrupted")]
        assert [r.action for r in outbox.rows(device_id=cut)] == ["register", "void"]
    finally:
        outbox.close()
        ledger.close()
        journal.close()


def test_a_spool_entry_applied_before_a_crash_is_not_applied_again(tmp_path, pg_url):
    """The server took the rows and moved the station's mark, then the station died before deleting its spool
    entries: the next run finds them behind the mark and only deletes them."""
    import psycopg

    from tests.pg_server import PASSWORD

    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    replica = Replica(path, pg_url, "st-a")
    batch = journal.start_batch("p", "00" * 32, "batch", "alice", "st-a")
    device = journal.start_device(batch, "1-1", "303a:1001", "esp")
    spool = sqlite3.connect(path, isolation_level=None)
    left_behind = spool.execute("SELECT seq, tbl, key FROM spool").fetchall()
    assert replica.send_once() == len(left_behind) == 2
    spool.executemany("INSERT INTO spool (seq, tbl, key) VALUES (?, ?, ?)", left_behind)  # as if never deleted
    with psycopg.connect(pg_url, password=PASSWORD, autocommit=True) as db:
        db.execute("UPDATE devices SET reason = 'changed on the server since'")
        assert replica.send_once() == 2
        assert db.execute("SELECT reason FROM devices").fetchone()[0] == "changed on the server since"
        journal.end_device(device, Result.FAIL, "Verify failed")
        assert replica.send_once() == 1  # what comes after the mark is applied
        assert db.execute("SELECT result, reason FROM devices").fetchone() == ("fail", "Verify failed")
        assert db.execute("SELECT upto FROM replication WHERE station_id = 'st-a'").fetchone()[0] == 3
    assert spool.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 0
    spool.close()
    replica.close()
    journal.close()


def test_a_station_alone_numbers_boards_without_reusing_a_number(tmp_path):
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()
    pool = SerialPool(path)
    assert pool.take(TEMPLATE, 1000, "board-1") == 1000
    assert pool.take(TEMPLATE, 1000, "board-1") == 1000  # the step ran again: the same board, the same number
    assert pool.take(TEMPLATE, 1000, "board-2") == 1001
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    void_serials(db, "board-2")  # board-2 failed
    db.execute("COMMIT")
    pool.close()

    again = SerialPool(path)  # a new run (or after a crash)
    assert again.take(TEMPLATE, 1000, "board-3") == 1002
    states = dict(db.execute("SELECT value, state FROM serials"))
    assert states == {1000: "used", 1001: "void", 1002: "used"}
    again.close()
    db.close()


def test_numbers_reserved_ahead_carry_the_line_while_the_server_is_down(tmp_path, pg_url, pg_server):
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()
    replica = Replica(path, pg_url, "st-b")
    pool = SerialPool(path, ahead=2)
    pool.draw, pool.where = replica.draw, replica.where
    taken = [pool.take(TEMPLATE, 1, "board-1")]
    assert pool.reserved(TEMPLATE) == 1
    pg_server.kill()
    try:
        taken.append(pool.take(TEMPLATE, 1, "board-2"))  # from the reserve
        with pytest.raises(OutOfSerials, match="can't be reached and the 2 numbers reserved ahead are used up"):
            pool.take(TEMPLATE, 1, "board-3")
    finally:
        pg_server.start()
    taken.append(pool.take(TEMPLATE, 1, "board-4"))
    assert len(set(taken)) == 3 and taken == sorted(taken)
    pool.close()
    replica.close()


def test_a_reader_of_the_factory_record_outlives_a_server_restart(pg_url, pg_server):
    from station.store import StoreError

    journal = Journal(pg_url)
    try:
        batch = journal.start_batch("p", "00" * 32, "batch", "alice", "st-c")
        journal.start_device(batch, "1-1", "303a:1001", "esp")
        pg_server.kill()
        try:
            with pytest.raises(StoreError, match="went away"):
                journal.devices()
        finally:
            pg_server.start()
        assert [d.station_id for d in journal.devices()] == ["st-c"]  # opened again for the next read
    finally:
        journal.close()


def test_a_new_journal_file_of_the_same_station_hands_in_its_rows_beside_the_old_ones(tmp_path, pg_url):
    """A station whose journal file was moved away starts a new one, whose ids and spool count from 1 again:
    its rows arrive beside the old file's, none skipped, none overwritten."""
    import psycopg

    from tests.pg_server import PASSWORD

    for name in ("old", "new"):
        path = tmp_path / name / "journal.sqlite3"
        journal = Journal(path)
        replica = Replica(path, pg_url, "st-d")
        batch = journal.start_batch("p", "00" * 32, "batch", "alice", "st-d", lot=name)
        device = journal.start_device(batch, "1-1", "303a:1001", "esp")
        journal.end_step(journal.start_step(device, "detect", 1), True, f"from the {name} file")
        assert replica.send_once() == 4  # batch, device, step started, step ended
        replica.close()
        journal.close()
    with psycopg.connect(pg_url, password=PASSWORD) as db:
        details = sorted(r[0] for r in db.execute("SELECT detail FROM steps"))
        assert details == ["from the new file", "from the old file"]
        assert db.execute("SELECT COUNT(*) FROM replication WHERE station_id = 'st-d'").fetchone()[0] == 2
