"""Many stations, one factory record on a real PostgreSQL server (tests/pg_server.py): stations provision emulated
ESP boards at once through the `station` command; device serial numbers from one shared counter never repeat,
every record reaches the server exactly once (also across a server crash mid-batch), one export covers every
station and verifies."""
import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg

from station.families.esp.sim.fleet import demo_fleet
from station.families.esp.sim.server import EspSimServer
from station.replica import TABLES
from tests.pg_server import PASSWORD

SHIPPED = Path(__file__).resolve().parents[1] / "profiles" / "demo-mixed.toml"  # this tree's, with its firmware
PSK = "bench-passphrase-42"
CA_PASSPHRASE = "ca-passphrase-for-tests"
COUNTER_TEMPLATE = "SN{counter:06d}"


def counter_profile(folder: Path) -> Path:
    """The shipped demo profile, its boards numbered by the station's counter, without a cloud."""
    text = re.sub(r'file = "([^"/][^"]*)"', lambda m: f'file = "{SHIPPED.parent / m.group(1)}"', SHIPPED.read_text())
    text = text.replace('serial_template = "{chip}-{mac_hex}"',
                        f'serial_template = "{COUNTER_TEMPLATE}"\ncounter_start = 1000')
    text = text.split("[cloud]")[0]
    path = folder / "counter.toml"
    path.write_text(text)
    return path


def env(url: str | None = None, **more) -> dict:
    out = {**os.environ, "STATION_DEMO_WIFI_PSK": PSK, "STATION_OPERATOR": "alice",
           "STATION_CA_PASSPHRASE": CA_PASSPHRASE, "STATION_DB_PASSWORD": PASSWORD, **more}
    out.pop("STATION_DB", None)
    if url:
        out["STATION_DB"] = url
    return out


def station(data: Path, *args: str, url: str | None = None, **more) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "station.cli", "--data-dir", str(data), *args], env=env(url, **more),
                          capture_output=True, text=True, timeout=300)


def start_station(data: Path, profile: Path, registry: Path, url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "station.cli", "--data-dir", str(data), "provision", "--profile",
                             str(profile), "--sim-registry", str(registry), *args], env=env(url),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def payloads(manifest: Path) -> list[dict]:
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [json.loads(base64.urlsafe_b64decode(line["payload"] + "==")) for line in lines[:-1]]


def server_rows(url: str, table: str, columns: str) -> list[tuple]:
    with psycopg.connect(url, password=PASSWORD) as db:
        return [tuple(r) for r in db.execute(f"SELECT {columns} FROM {table}")]


def test_the_database_is_set_up_and_a_password_in_the_url_is_refused(tmp_path, pg_url):
    data = tmp_path / "data"
    init = station(data, "db", "init", "--url", pg_url, "--offline-boards", "4")
    assert init.returncode == 0, init.stderr
    assert "ready" in init.stdout
    settings = json.loads((data / "station.json").read_text())
    assert settings["db"] == pg_url and settings["offline_boards"] == 4
    status = station(data, "db", "status")  # the URL now comes from the settings
    assert status.returncode == 0, status.stdout + status.stderr
    assert "tables: up to date" in status.stdout
    assert station(data, "db", "migrate").stdout.strip().endswith("nothing to do")

    with_password = pg_url.replace("station@", "station:hunter2@")
    refused = station(tmp_path / "other", "--db", with_password, "db", "status")
    assert refused.returncode == 1
    said = refused.stdout + refused.stderr
    assert "carries a password" in said and "STATION_DB_PASSWORD" in said and "hunter2" not in said
    wrong = station(tmp_path / "other", "--db", pg_url, "db", "status", STATION_DB_PASSWORD="wrong")
    assert wrong.returncode == 1 and "can't be reached" in wrong.stdout and "wrong" not in wrong.stdout


def test_three_stations_at_once_share_one_counter_and_one_verifiable_export(tmp_path, pg_url):
    profile = counter_profile(tmp_path)
    stations, servers = [], []
    try:
        for i in range(3):
            data = tmp_path / f"station{i}"
            assert station(data, "ca", "init").returncode == 0
            registry = tmp_path / f"registry{i}"
            boards = demo_fleet(3, seed=i + 1)
            if i == 2:
                boards[2].faults.bad_md5 = True  # fails after it took its number
            servers.append(EspSimServer(boards, registry_dir=registry).start())
            stations.append((data, registry))
        procs = [start_station(data, profile, registry, pg_url) for data, registry in stations]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for server in servers:
            server.stop()
    for i, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == (1 if i == 2 else 0), out
        assert out.count("PASS") == (2 if i == 2 else 3) and "wait" not in out

    listing = station(stations[0][0], "devices", url=pg_url)
    assert listing.stdout.strip().endswith("9 devices"), listing.stdout + listing.stderr
    ids = {json.loads((data / "station.json").read_text())["station_id"] for data, _ in stations}
    assert all(listing.stdout.count(sid) == 3 for sid in ids)  # the station column

    out = tmp_path / "factory.jsonl"
    export = station(stations[0][0], "export", "-o", str(out), url=pg_url)
    assert export.returncode == 0, export.stderr
    check = station(stations[0][0], "manifest", "verify", str(out), "--root",
                    str(stations[0][0] / "ca" / "root.crt"))
    assert check.returncode == 0, check.stdout + check.stderr
    records = payloads(out)
    assert len(records) == 9 and {r["station_id"] for r in records} == ids
    serials = [r["identity"]["subject_serial"] for r in records]
    assert len(set(serials)) == 9 and all(s.startswith("SN00") for s in serials)
    assert sorted(int(s[2:]) for s in serials)[0] >= 1000
    assert len({r["identity"]["certificate_serial"] for r in records}) == 9
    assert len({json.dumps(r["identity"]["public_key"], sort_keys=True) for r in records}) == 9
    assert len({r["mac"] for r in records}) == 9
    numbers = {state: sorted(v for v, st, _ in server_rows(pg_url, "serials", "value, state, station_id")
                             if st == state) for state in ("used", "void")}
    assert numbers["used"] == sorted(int(r["identity"]["subject_serial"][2:]) for r in records if r["result"] == "pass")
    failed = next(r for r in records if r["result"] == "fail")
    assert numbers["void"] == [int(failed["identity"]["subject_serial"][2:])]  # recorded void, not reissued

    status = station(stations[0][0], "db", "status", url=pg_url)
    assert status.returncode == 0, status.stdout + status.stderr
    assert all(f"station {sid}: 3 devices" in status.stdout for sid in ids)
    assert "0 journal entries wait" in status.stdout and "warning" not in status.stdout

    # station 1's boards, plugged in at station 2: already provisioned there, refused before a byte is written
    again = EspSimServer(demo_fleet(3, seed=1), registry_dir=tmp_path / "again").start()
    try:
        refused = station(stations[1][0], "provision", "--profile", str(profile), "--sim-registry",
                          str(tmp_path / "again"), url=pg_url)
        assert refused.returncode == 1
        assert refused.stderr.count("already provisioned") == 3, refused.stderr
        redo = station(stations[1][0], "provision", "--profile", str(profile), "--sim-registry",
                       str(tmp_path / "again"), "--reprovision", url=pg_url)
        assert redo.returncode == 0, redo.stdout + redo.stderr
    finally:
        again.stop()
    certs = server_rows(pg_url, "certificates c JOIN devices d ON d.id = c.device_id", "d.mac, c.voided IS NULL")
    macs = {board.mac_text for board in demo_fleet(3, seed=1)}
    live = [mac for mac, is_live in certs if mac in macs and is_live]
    assert sorted(live) == sorted(macs)  # one live certificate per board: the first station's were voided
    assert sum(1 for mac, is_live in certs if mac in macs and not is_live) == 3
    used = [v for v, state in server_rows(pg_url, "serials", "value, state") if state == "used"]
    assert len(used) == len(set(used)) == 8 + 3  # the refused boards took no number; re-provisioned ones new ones


def test_server_killed_mid_batch_every_record_arrives_exactly_once(tmp_path, pg_url, pg_server):
    profile = counter_profile(tmp_path)
    data = tmp_path / "data"
    assert station(data, "ca", "init").returncode == 0
    server = EspSimServer(demo_fleet(3, seed=7), registry_dir=tmp_path / "registry", throttle=True).start()
    killed = restarted = False
    try:
        proc = start_station(data, profile, tmp_path / "registry", pg_url, "-v")
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if " flash  25 %" in line and not killed:
                pg_server.kill()  # the database goes away while boards are flashing
                killed = True
            if "PASS" in line and killed and not restarted:  # a board finished with the server away
                pg_server.start()
                restarted = True
        proc.wait(60)
    finally:
        server.stop()
        if not restarted:
            pg_server.start()
    out = "".join(lines)
    assert killed and restarted, out
    assert proc.returncode == 0, out
    assert out.count("PASS") == 3 and "wait for the station database" not in out

    local = sqlite3.connect(data / "journal.sqlite3")
    sid = json.loads((data / "station.json").read_text())["station_id"]
    for table in TABLES:
        columns = ", ".join(table.columns)
        mine = sorted(tuple(r) for r in local.execute(f"SELECT {columns} FROM {table.name}"))
        where = f" WHERE {table.stamp} LIKE '{sid}%'" if table.stamp else ""  # this station's ids
        theirs = sorted(server_rows(pg_url, table.name + where, columns))
        assert _same(theirs, mine), table.name  # every row, once, as the station wrote it last
    assert local.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 0
    assert local.execute("SELECT COUNT(*) FROM steps").fetchone()[0] > 10
    local.close()


def _same(a: list[tuple], b: list[tuple]) -> bool:
    norm = lambda rows: [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]  # noqa: E731
    return norm(a) == norm(b)


def test_no_database_and_no_reserved_numbers_refuses_the_batch(tmp_path, pg_url, pg_server):
    profile = counter_profile(tmp_path)
    data = tmp_path / "data"
    assert station(data, "ca", "init").returncode == 0
    nowhere = pg_url.rsplit(":", 1)[0] + ":1/factory"  # nothing listens on port 1
    run = station(data, "provision", "--profile", str(profile), "--sim-registry", str(tmp_path / "none"),
                  url=nowhere)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "Batch not started" in last and "reserved ahead" in last and "offline_boards" in last, run.stderr
