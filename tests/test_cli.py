"""The command line, as a technician uses it: provision, a crash mid-batch, devices, export."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from station.profile_library import shipped_profiles_dir
from station.journal import Journal
from station.families.esp.sim.server import EspSimServer
from station.families.esp.sim.fleet import demo_fleet

PROFILE = shipped_profiles_dir() / "demo-mixed.toml"
PSK = "bench-passphrase-42"


CA_PASSPHRASE = "ca-passphrase-for-tests"


def station(data: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "STATION_DEMO_WIFI_PSK": PSK, "STATION_OPERATOR": "alice",
           "STATION_CA_PASSPHRASE": CA_PASSPHRASE}
    return subprocess.run([sys.executable, "-m", "station.cli", "--data-dir", str(data), *args], env=env,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def hub(tmp_path):
    boards = demo_fleet(3)
    boards[2].faults.bad_md5 = True
    server = EspSimServer(boards, registry_dir=tmp_path / "registry").start()
    yield server
    server.stop()


def payloads(manifest: Path) -> list[dict]:
    """The records inside a signed manifest's JWS lines (the last line is the batch head)."""
    import base64

    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [json.loads(base64.urlsafe_b64decode(line["payload"] + "==")) for line in lines[:-1]]


def test_provision_then_devices_and_export(tmp_path, hub):
    data = tmp_path / "data"
    assert station(data, "ca", "init").returncode == 0
    run = station(data, "provision", "--profile", str(PROFILE), "--sim-registry", str(tmp_path / "registry"),
                  "--lot", "L-42")
    assert run.returncode == 1, run.stderr  # one board failed
    assert f"FAILED {hub.locations[2]}: Verify failed" in run.stderr
    assert run.stdout.count("PASS") == 2
    assert PSK not in run.stdout + run.stderr

    listing = station(data, "devices")
    assert listing.stdout.count("pass ") == 2 and listing.stdout.count("fail ") == 1

    out = tmp_path / "export.jsonl"
    assert station(data, "export", "--format", "jsonl", "-o", str(out)).returncode == 0
    root = data / "ca" / "root.crt"
    check = station(data, "manifest", "verify", str(out), "--root", str(root))
    assert check.returncode == 0, check.stdout + check.stderr
    records = payloads(out)
    assert len(records) == 3
    assert all(r["device_id"] in listing.stdout for r in records)  # the id `station void` asks for
    # no broker runs here: the passed boards' registrations wait, and the export says so
    assert sorted(r.get("registration", "none") for r in records) == ["none", "pending", "pending"]
    for rec, board in zip(sorted(records, key=lambda r: r["port"]), hub.boards):
        assert rec["mac"] == board.mac_text and rec["chip"] == board.chip.display_name
        assert rec["operator"] == "alice" and rec["lot"] == "L-42" and rec["station_id"]
        assert rec["port"] in hub.locations and rec["batch_id"]
        assert rec["started"].endswith("Z") and rec["steps"][0]["name"] == "detect"
    good = next(r for r in records if r["result"] == "pass")
    app = next(i for i in good["images"] if i["offset"] == 0x10000)
    assert len(app["sha256"]) == 64
    nvs = next(i for i in good["images"] if i["name"] == "nvs")
    assert "sha256" not in nvs  # it holds the Wi-Fi passphrase
    assert PSK not in out.read_text() and "PRIVATE KEY" not in out.read_text()
    assert good["identity"]["key_origin"] == "host" and good["identity"]["void"] is False
    assert good["identity"]["public_key"]["kty"] == "EC"
    bad = next(r for r in records if r["result"] == "fail")
    assert bad["identity"]["void"] is True  # a failed board's certificate is voided, not left valid-looking

    tampered = tmp_path / "tampered.jsonl"
    lines = out.read_text().splitlines()
    lines.pop(1)
    tampered.write_text("\n".join(lines) + "\n")
    check = station(data, "manifest", "verify", str(tampered), "--root", str(root))
    assert check.returncode == 1 and "removed" in check.stdout

    again = station(data, "provision", "--profile", str(PROFILE), "--sim-registry", str(tmp_path / "registry"))
    assert again.stderr.count("already provisioned") >= 2, again.stderr  # same boards, same serials: refused

    csv_run = station(data, "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(csv_run.stdout)))
    assert {r["mac"] for r in rows} == {b.mac_text for b in hub.boards}


def test_killed_mid_batch_loses_no_finished_step(tmp_path):
    boards = demo_fleet(2)
    server = EspSimServer(boards, registry_dir=tmp_path / "registry", throttle=True).start()  # real line rate
    data = tmp_path / "data"
    assert station(data, "ca", "init").returncode == 0
    env = {**os.environ, "STATION_DEMO_WIFI_PSK": PSK, "STATION_CA_PASSPHRASE": CA_PASSPHRASE}
    proc = subprocess.Popen([sys.executable, "-m", "station.cli", "--data-dir", str(data), "provision",
                             "--profile", str(PROFILE), "--sim-registry", str(tmp_path / "registry")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait until a board is flashing, then pull the plug on the station
            if " flash  25 %" in line:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        server.stop()
    journal = Journal(data / "journal.sqlite3")
    devices = journal.devices()
    assert len(devices) == 2 and all(d.result == "running" for d in devices)
    steps = {s.name: s.result for d in devices for s in journal.steps(d.id)}
    assert steps["detect"] == "pass" and steps["check"] == "pass"
    journal.close()

    again = station(data, "devices")
    assert again.stderr.count("was interrupted last time") == 2
    assert again.stdout.count("interrupted") == 2


def test_wrong_ca_passphrase_stops_before_any_board(tmp_path, hub):
    data = tmp_path / "data"
    assert station(data, "ca", "init").returncode == 0
    env = {**os.environ, "STATION_DEMO_WIFI_PSK": PSK, "STATION_CA_PASSPHRASE": "not-the-passphrase"}
    run = subprocess.run([sys.executable, "-m", "station.cli", "--data-dir", str(data), "provision", "--profile",
                          str(PROFILE), "--sim-registry", str(tmp_path / "registry")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "passphrase" in run.stderr.lower()
    assert all(b.flash.read(0, 0x1000) == b"\xff" * 0x1000 for b in hub.boards)


def test_headless_demo_provisions_esp_and_dfu_boards_on_one_hub(tmp_path):
    """`station demo --headless`: ESP, DFU and Particle boards on one emulated hub, all pass, all signed, each
    registered with its family's cloud."""
    done = station(tmp_path, "demo", "--headless", "--boards", "2", "--dfu-boards", "3", "--no-throttle")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "5 passed, 0 failed" in done.stdout
    manifest = next((tmp_path / "demo").glob("manifest-*.jsonl"))
    records = payloads(manifest)
    assert sorted((r["family"], r["port"], r["chip"], r["result"]) for r in records) == [
        ("dfu", "sim-2.1", "STM32", "pass"), ("esp", "sim-1.1", "ESP32", "pass"), ("esp", "sim-1.2", "ESP32-C3", "pass"),
        ("particle", "sim-3.1", "Spark Core", "pass"), ("particle", "sim-3.2", "Photon", "pass")]
    particle = [r for r in records if r["family"] == "particle"]
    assert all(len(r["identity"]["particle_device_id"]) == 24 for r in particle)  # read in listening mode
    # each cloud of the profile: ESP boards on the demo's Mosquitto, the Core and the Photon on its spark-server
    assert done.stdout.count("registration delivered to mosquitto") == 2
    assert done.stdout.count("registration delivered to spark-server") == 2
    verified = station(tmp_path, "manifest", "verify", str(manifest), "--root", str(manifest.parent / "root.crt"))
    assert verified.returncode == 0, verified.stderr


def test_unusable_journal_file_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    done = station(tmp_path, "devices")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: ") and "journal.sqlite3" in done.stderr and "move it away" in done.stderr
