"""The journal keeps every finished step and reports boards a dead station left half-done."""
from station.journal import Journal
from station.model import Result


def test_finished_steps_survive_and_running_devices_are_reported_interrupted(tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    batch = journal.start_batch("p", "00" * 32, "batch", "alice", "st-1", lot="L7")
    done = journal.start_device(batch, "1-1.1", "10c4:ea60", "esp")
    step = journal.start_step(done, "detect", 1)
    journal.end_step(step, True, "ESP32")
    journal.end_device(done, Result.PASS)
    cut = journal.start_device(batch, "1-1.2", "10c4:ea60", "esp")
    step = journal.start_step(cut, "detect", 1)
    journal.end_step(step, True, "ESP32-C3")
    journal.start_step(cut, "flash", 1)
    # no close(): the process dies here

    reopened = Journal(path)
    interrupted = reopened.recover()
    assert [d.port for d in interrupted] == ["1-1.2"]
    assert [(s.name, s.result) for s in reopened.steps(cut)] == [("detect", "pass"), ("flash", "interrupted")]
    assert {d.port: d.result for d in reopened.devices(batch)} == {"1-1.1": "pass", "1-1.2": "interrupted"}
    assert reopened.recover() == []  # reported once
    assert reopened.batch(batch).lot == "L7"


def test_recovery_voids_an_interrupted_boards_certificate_everywhere(tmp_path):
    """A board cut short after its certificate was issued (and, in a journal from before a board's end was one
    transaction, even registered): recovery voids the certificate in the ledger and the journal record, and
    queues its removal from the cloud, once; the same board can then be provisioned again."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from station.cloud.outbox import Outbox
    from station.cloud.registrar import DeviceRegistration
    from station.identity.ca import StationCA
    from station.identity.idevid import IdevidProfile, host_identity
    from station.identity.ledger import Ledger
    from station.services import recover

    path = tmp_path / "journal.sqlite3"
    journal, ledger, outbox = Journal(path), Ledger(path), Outbox(path)
    batch = journal.start_batch("p", "00" * 32, "batch", "alice", "st-1")
    cut = journal.start_device(batch, "1-1.2", "10c4:ea60", "esp")
    facts = {"mac": "24:0a:c4:00:00:07", "chip": "ESP32"}
    _, cert = host_identity(StationCA.ephemeral("T"), IdevidProfile(common_name="{mac_hex}"), facts, ledger,
                            device_id=cut)
    serial = ledger.records(cut)[0].serial_hex
    pem = cert.public_bytes(Encoding.PEM).decode()
    journal.set_identity(cut, {"subject_serial": ledger.records(cut)[0].subject_serial, "certificate_serial": serial,
                               "certificate": pem, "void": False})
    outbox.enqueue(cut, "mosquitto", DeviceRegistration(cut, certificate_pem=pem))
    # the process dies here

    reopened = Journal(path)
    assert [d.id for d in recover(reopened)] == [cut]
    assert recover(reopened) == []
    assert not ledger.records(cut)[0].live
    assert reopened.devices()[0].identity["void"] is True
    assert [(r.action, r.state) for r in outbox.rows(device_id=cut)] == [("register", "pending"), ("void", "pending")]
    assert ledger.find_subject(ledger.records(cut)[0].subject_serial) is None  # not "already provisioned"
    for store in (ledger, outbox, journal, reopened):
        store.close()
