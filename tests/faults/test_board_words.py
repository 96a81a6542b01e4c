"""What a board (or anyone who can write a file the station reads) says reaches a person as one safe line, and
errors from deep inside a transfer end as a plain reason on their own port, never an "Internal error"."""
from __future__ import annotations

import io
import logging

import pytest

from station import events as ev
from station.discovery.sim_ports import SimPortSource
from station.families.esp.session import EspSession
from station.families.esp.sim.board import EspBoard, EspFaults
from station.families.esp.sim.server import EspSimServer
from station.journal import Journal
from station.model import Result, StepFailed
from station.terminal import TerminalReport
from station.text import one_line

FORGED = "flash busy\r\n\x1b[32m[sim-1.2] PASS  (3.1 s)\x1b[0m\n\u202eevil\x00"


def test_one_line_drops_escapes_and_shows_breaks_and_invisible_characters():
    assert one_line(FORGED) == "flash busy / [sim-1.2] PASS  (3.1 s) / \\u202eevil\\x00"
    assert one_line("ünïcødé 日本") == "ünïcødé 日本"
    assert len(one_line("x" * 100_000)) == 500


def test_a_forged_line_from_a_board_stays_inside_its_ports_line_in_the_terminal_and_the_journal(tmp_path):
    failure = StepFailed(f"The board refused COMMIT: {FORGED}")
    out = io.StringIO()
    report = TerminalReport(out)
    report(ev.DeviceDone("sim-1.1", "d1", False, failure.reason, 1.0))
    report(ev.Log("sim-1.1", "error", FORGED))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all("[sim-1.1]" in line and "\x1b" not in line for line in lines)
    journal = Journal(tmp_path / "j.sqlite3")
    batch = journal.start_batch("p", "0" * 64, "batch", "op", "st", "")
    device = journal.start_device(batch, "sim-1.1", "10c4:ea60", "esp")
    journal.end_device(device, Result.FAIL, FORGED)
    (row,) = journal.devices()
    assert row.reason == one_line(FORGED)


def test_a_read_back_over_a_corrupting_line_is_a_plain_reason():
    board = EspBoard("esp32", 1)
    with EspSimServer([board]) as server:
        session = EspSession(server.station_urls[0], lambda level, message: None, lambda done, total: None)
        session.connect(baud=115200)
        board.faults = EspFaults(bad_md5=True)  # READ_FLASH's digest no longer matches what was sent
        with pytest.raises(StepFailed) as failed:
            session.read(0x9000, 0x1000)
        session.close()
    assert failed.value.reason.startswith("Read-back failed: the data the board sent does not match its own digest")


@pytest.mark.parametrize("content", [
    "[]", "{}", '{"location": "sim-9.1"}', '{"location": 5, "url": "x", "vid": 4292, "pid": 60000}',
    '{"location": "sim-9.1", "url": "espsim://127.0.0.1:1", "vid": "10c4", "pid": 60000}',
    '{"location": "sim-9.1", "url": "espsim://127.0.0.1:1", "vid": 4292, "pid": 70000}',
    '{"location": "sim-9.1", "url": "espsim://127.0.0.1:1", "vid": 4292, "pid": 60000, "description": 7}',
    '{"location": "sim-9.1", "url": "espsim://127.0.0.1:1", "vid": true, "pid": 60000}',
    "null", "1e999",
])
def test_a_malformed_registry_file_is_left_out_and_said_once(content, tmp_path, caplog):
    good = EspBoard("esp32", 1)
    with EspSimServer([good], registry_dir=tmp_path) as server:
        (tmp_path / "sim-9.1.json").write_text(content)
        source = SimPortSource(tmp_path)
        with caplog.at_level(logging.WARNING, logger="station.discovery.sim_ports"):
            first, second = source.scan(), source.scan()
        assert [p.key for p in first] == [p.key for p in second] == server.locations
    said = [r for r in caplog.records if "sim-9.1.json" in r.getMessage()]
    assert len(said) == 1 and all("\n" not in r.getMessage() for r in said)
