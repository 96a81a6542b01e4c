"""`kill -9` of `station provision` at seeded random points of a batch with identity and registration, on the
station's own broker; after each kill, what the journal file and the broker hold is checked, then the station
is started again on the same boards (the next start), and that is checked too.

Per kill: the journal passes PRAGMA integrity_check; every step and board the terminal showed as finished is in
it; the end of a board is all-or-nothing (a registration only for a passed board); after recovery no board the
journal calls interrupted holds a live certificate; no certificate serial, key or live identity repeats; the
next start provisions the interrupted boards again (not refused as "already provisioned"), refuses the ones
that passed, and delivers every registration exactly once, so the broker's accounts are exactly the passed
boards' certificates.
"""
from __future__ import annotations

import json
import random
import re
import signal
import subprocess

import pytest
from cryptography import x509

from station import services
from station.families.esp.sim.fleet import demo_fleet
from station.families.esp.sim.server import EspSimServer
from tests.faults.bench import ROOT, Station, new_station, remove_station

SEED = 20261203
KILLS = 20
BOARDS = 3
LINES = 200  # a batch of three boards prints ~220 lines with -v; a kill point is a line count up to this

STEP_DONE = re.compile(r"^\s*[\d.]+s \[(?P<key>[^\]]+)\] ok  (?P<step>\S+) ")
PASSED = re.compile(r"^\s*[\d.]+s \[(?P<key>[^\]]+)\] PASS ")
BATCH = re.compile(r"^\s*[\d.]+s batch (?P<id>\S+) \(")


@pytest.fixture
def station():
    bench = new_station()
    yield bench
    remove_station(bench)


def run_and_kill(station: Station, after_lines: int) -> tuple[bool, list[str]]:
    """Start `station provision -v` and SIGKILL it once it has printed `after_lines` lines. (killed?, lines)"""
    proc = subprocess.Popen(station.argv(*station.provision_args("-v")), env=station.env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if len(lines) >= after_lines:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    return proc.wait(60) == -signal.SIGKILL, lines


def check_what_the_crash_left(station: Station, lines: list[str]) -> None:
    db = station.db()
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        batch = next((m["id"] for m in map(BATCH.match, lines) if m), None)
        if batch is None:
            return  # killed before the batch began: nothing was shown as finished
        device_of = dict(db.execute("SELECT port, id FROM devices WHERE batch_id = ?", (batch,)))
        finished = {(m["key"], m["step"]) for m in map(STEP_DONE.match, lines) if m}
        for key, step in finished:  # shown as done, so committed before it was shown
            assert db.execute("SELECT COUNT(*) FROM steps WHERE device_id = ? AND name = ? AND result = 'pass'",
                              (device_of[key], step)).fetchone()[0] >= 1, (key, step)
        for key in {m["key"] for m in map(PASSED.match, lines) if m}:
            assert db.execute("SELECT result FROM devices WHERE id = ?", (device_of[key],)).fetchone()[0] == "pass"
        # a board's end is one transaction: a registration exists only for a passed board, and every passed
        # board with an identity has its registration
        assert db.execute("SELECT COUNT(*) FROM registrations r JOIN devices d ON d.id = r.device_id"
                          " WHERE r.action = 'register' AND d.result != 'pass'").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM devices d WHERE d.result = 'pass' AND d.identity != '{}' AND NOT"
                          " EXISTS (SELECT 1 FROM registrations r WHERE r.device_id = d.id)").fetchone()[0] == 0
    finally:
        db.close()


def check_recovered(station: Station) -> None:
    """The next start's recovery (what every `station` command does first), then the ledger."""
    journal, _ = services.open_journal(station.data)
    journal.close()
    db = station.db()
    try:
        assert db.execute("SELECT COUNT(*) FROM devices WHERE result = 'running'").fetchone()[0] == 0
        live_not_passed = db.execute(
            "SELECT c.serial_hex, d.result FROM certificates c JOIN devices d ON d.id = c.device_id"
            " WHERE c.voided IS NULL AND d.result != 'pass'").fetchall()
        assert live_not_passed == []
        for column in ("serial_hex", "public_key_sha256"):
            assert db.execute(f"SELECT COUNT(*) - COUNT(DISTINCT {column}) FROM certificates").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) - COUNT(DISTINCT subject_serial) FROM certificates"
                          " WHERE voided IS NULL").fetchone()[0] == 0
        serials = [json.loads(i).get("certificate_serial") for (i,) in db.execute("SELECT identity FROM devices")]
        serials = [s for s in serials if s]
        assert len(serials) == len(set(serials))
    finally:
        db.close()


def check_next_start(station: Station, boards, killed_lines: list[str]) -> None:
    """The same boards again, without --reprovision: the ones that passed before the kill are refused, every
    other one passes; then every passed board is registered exactly once and the broker holds exactly them."""
    passed_before = {m["key"] for m in map(PASSED.match, killed_lines) if m}
    done = station.run(*station.provision_args())
    results = {m["key"]: m.group(0) for m in map(PASSED.match, done.stdout.splitlines()) if m}
    for key in passed_before:
        assert f"FAILED {key}: Device " in done.stderr and "already provisioned" in done.stderr, done.stderr
    assert len(results) == len(boards) - len(passed_before), done.stdout[-3000:] + done.stderr[-2000:]
    assert "registration pending" not in done.stderr
    db = station.db()
    try:
        rows = db.execute("SELECT d.id, d.result, r.state, r.action FROM registrations r"
                          " JOIN devices d ON d.id = r.device_id").fetchall()
        registered = [device for device, result, state, action in rows if action == "register"]
        assert len(registered) == len(set(registered))  # exactly one registration per board
        assert {(result, state) for _, result, state, action in rows if action == "register"} <= {("pass", "delivered")}
        live = [x509.load_der_x509_certificate(der) for (der,) in db.execute(
            "SELECT c.certificate FROM certificates c JOIN devices d ON d.id = c.device_id"
            " WHERE c.voided IS NULL AND d.result = 'pass'")]
        assert len(registered) == len(live)
    finally:
        db.close()
    common_names = {c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in live}
    assert station.broker_clients() == common_names


def test_kill_the_station_at_random_points_of_a_batch(station):
    rng = random.Random(SEED)
    kills = runs = 0
    while kills < KILLS:
        runs += 1
        assert runs <= KILLS + 10, "too many runs ended before their kill point; lower LINES"
        boards = demo_fleet(BOARDS, seed=runs)  # new boards (new MACs) for each round
        server = EspSimServer(boards, registry_dir=station.registry).start()
        try:
            killed, lines = run_and_kill(station, rng.randint(1, LINES))
            kills += killed
            check_what_the_crash_left(station, lines)
            check_recovered(station)
            check_next_start(station, boards, lines)
        finally:
            server.stop()
    print(f"\nfault matrix: {kills} kills in {runs} runs, 0 inconsistencies")
