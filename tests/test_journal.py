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
