#!/usr/bin/env python3
"""Factory database benchmark: what sharing the record on PostgreSQL costs a station, and what one server carries.

    python tests/bench/bench_pg.py [--rounds N] [--boards N] [--stations N] [--ports N] [--devices N]

Not a pytest test. A real PostgreSQL server (Debian's binaries, tests/pg_server.py) is started in a temp folder
for the run and stopped by PID at the end. Every number comes from this one run, measured side by side.

(a) batch ratio: the same batch of emulated ESP32 boards (`station sim esp --baud-throttle` in its own process,
    the real line rate; the counter profile: identity, {counter} serials, each kind its own station folder kept
    across runs, so every measured batch re-provisions boards its station knows) with the
    station's journal file alone, and with the factory database (replica + shared counter + the guard across
    stations); rounds alternate. Ratio = median wall with PostgreSQL / median wall with SQLite, target <= 1.02.
(b) 20 stations x 24 ports of journal traffic straight into one server: each station one connection (the
    Journal class on the URL), each port a thread running devices of 6 steps (start_step + end_step each a
    commit). p50 / p99 step-commit latency and commits per second.
(c) the same stations as the station really runs them: 24 port threads write each station's own journal file,
    its Replica sends the rows to the server; rows per second the server takes and the p99 lag from a step's
    end in the file to its arrival on the server.
(d) serials per second: every station takes numbers of one counter at once (SerialPool: a block of
    offline_boards drawn from the shared sequence, each number recorded used in the station's file); all unique.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from station import events as ev  # noqa: E402
from station import services  # noqa: E402
from station.discovery import Discovery  # noqa: E402
from station.discovery.sim_ports import SimPortSource  # noqa: E402
from station.identity.ca import StationCA  # noqa: E402
from station.journal import Journal  # noqa: E402
from station.profiles import load_profile  # noqa: E402
from station.replica import Replica  # noqa: E402
from station.serials import SerialPool, draw_from  # noqa: E402
from tests.pg_server import PASSWORD, PgServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import start_sim_server, stop_child  # noqa: E402

STEPS = ("detect", "check", "flash", "write-data", "verify", "reset")


def counter_profile(folder: Path):
    shipped = REPO / "profiles" / "demo-mixed.toml"
    text = re.sub(r'file = "([^"/][^"]*)"', lambda m: f'file = "{shipped.parent / m.group(1)}"', shipped.read_text())
    text = text.replace('serial_template = "{chip}-{mac_hex}"', 'serial_template = "SN{counter:06d}"')
    path = folder / "counter.toml"
    path.write_text(text.split("[cloud]")[0])
    return load_profile(path)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# --- (a) the batch -------------------------------------------------------------------------------------------------

def one_batch(folder: Path, profile, registry: Path, ca: StationCA, url: str | None,
              steps: dict[str, list[float]] | None = None) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    journal = Journal(folder / services.JOURNAL_FILE)
    replica = services.open_replica(folder, url, f"bench-{folder.name}") if url else None
    engine = services.build_engine(profile, Discovery([SimPortSource(registry)]), journal, data=folder,
                                   operator="bench", station_id=f"bench-{folder.name}", psk="bench-passphrase-42",
                                   ca=ca, reprovision=True, replica=replica)
    if steps is not None:
        engine.subscribe(lambda e: steps.setdefault(e.step, []).append(e.seconds) if isinstance(e, ev.StepDone)
                         else None)
    try:
        began = time.perf_counter()
        summary = asyncio.run(engine.run_batch())
        wall = time.perf_counter() - began
    finally:
        engine.close()
        journal.close()
    if replica is not None:
        left = replica.flush(60)
        replica.close()
        if left:
            raise SystemExit(f"the replica did not hand in {left} entries")
    if not summary.ok:
        raise SystemExit(f"a board failed: {summary.failed}")
    return wall


def bench_batch(tmp: Path, url: str, rounds: int, boards: int) -> float:
    os.environ["STATION_DEMO_WIFI_PSK"] = "bench-passphrase-42"
    tmp.mkdir()
    profile = counter_profile(tmp)
    ca = StationCA.ephemeral("Bench station")
    # the boards in their own process (as bench_batch.py does), so their emulation does not share our GIL
    server = start_sim_server(tmp / "registry", tmp, boards, "bench-pg")
    walls: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    steps: dict[str, dict[str, list[float]]] = {"sqlite": {}, "postgresql": {}}
    try:
        # each kind keeps its station's folder, as a station does: after the warm-up run every batch re-provisions
        # boards its journal knows (the same work both ways: the old certificate voided, a new number taken)
        for kind in ("sqlite", "postgresql"):
            one_batch(tmp / kind, profile, tmp / "registry", ca, url if kind == "postgresql" else None)
        for r in range(rounds):
            order = ("sqlite", "postgresql") if r % 2 == 0 else ("postgresql", "sqlite")
            for kind in order:
                walls[kind].append(one_batch(tmp / kind, profile, tmp / "registry", ca,
                                             url if kind == "postgresql" else None, steps[kind]))
    finally:
        stop_child(server.proc)
    sq, pg = statistics.median(walls["sqlite"]), statistics.median(walls["postgresql"])
    print(f"(a) {boards} boards at the line rate, {rounds} rounds each, alternating")
    print(f"    journal file alone   median {sq:6.2f} s  ({', '.join(f'{w:.2f}' for w in walls['sqlite'])})")
    print(f"    + factory database   median {pg:6.2f} s  ({', '.join(f'{w:.2f}' for w in walls['postgresql'])})")
    print(f"    ratio PostgreSQL / SQLite = {pg / sq:.3f}  (target <= 1.02)")
    print("    step medians (s)  " + "  ".join(
        f"{name} {statistics.median(steps['sqlite'][name]):.3f}/{statistics.median(steps['postgresql'][name]):.3f}"
        for name in steps["sqlite"] if name in steps["postgresql"]) + "   (file alone / with the database)")
    return pg / sq


# --- (b) journal traffic straight into the server ----------------------------------------------------------------

def bench_direct(url: str, stations: int, ports: int, devices: int) -> None:
    journals = [Journal(url) for _ in range(stations)]
    latencies: list[float] = []
    lock = threading.Lock()

    def port(journal: Journal, batch: str, index: int) -> None:
        mine = []
        for _ in range(devices):
            device = journal.start_device(batch, f"1-{index}", "303a:1001", "esp")
            for step in STEPS:
                t0 = time.perf_counter()
                step_id = journal.start_step(device, step, 1)
                t1 = time.perf_counter()
                journal.end_step(step_id, True, "ok")
                t2 = time.perf_counter()
                mine += [t1 - t0, t2 - t1]
        with lock:
            latencies.extend(mine)

    batches = [j.start_batch("bench", "0" * 64, "batch", "bench", f"direct-{i}") for i, j in enumerate(journals)]
    threads = [threading.Thread(target=port, args=(j, b, p)) for j, b in zip(journals, batches) for p in range(ports)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    for j in journals:
        j.close()
    print(f"(b) {stations} stations x {ports} ports straight into the server, {devices} devices per port, "
          f"{len(STEPS)} steps each")
    print(f"    step commits {len(latencies)} in {wall:.1f} s = {len(latencies) / wall:,.0f}/s; latency p50 "
          f"{pct(latencies, 50) * 1e3:.1f} ms, p99 {pct(latencies, 99) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms")


# --- (c) the way stations run: own file, replica to the server ----------------------------------------------------

def bench_replicated(tmp: Path, url: str, stations: int, ports: int, devices: int) -> None:
    import psycopg

    folders = [tmp / f"station-{i}" for i in range(stations)]
    journals, replicas = [], []
    for i, folder in enumerate(folders):
        folder.mkdir()
        journals.append(Journal(folder / services.JOURNAL_FILE))
        replicas.append(Replica(folder / services.JOURNAL_FILE, url, f"replicated-{i}").start())
    ended: dict[tuple[str, int], float] = {}
    local: list[float] = []
    lock = threading.Lock()

    def port(journal: Journal, stream: str, batch: str, index: int) -> None:
        mine, lat = {}, []
        for _ in range(devices):
            device = journal.start_device(batch, f"1-{index}", "303a:1001", "esp")
            for step in STEPS:
                step_id = journal.start_step(device, step, 1)
                t0 = time.perf_counter()
                journal.end_step(step_id, True, "ok")
                now = time.perf_counter()
                lat.append(now - t0)
                mine[(stream, step_id)] = time.time()
        with lock:
            ended.update(mine)
            local.extend(lat)

    sids = [f"replicated-{i}" for i in range(stations)]
    batches = [j.start_batch("bench", "0" * 64, "batch", "bench", sid) for j, sid in zip(journals, sids)]
    threads = [threading.Thread(target=port, args=(j, r.stream, b, p))
               for j, r, b in zip(journals, replicas, batches) for p in range(ports)]
    arrived: dict[tuple[str, int], float] = {}
    stop = threading.Event()

    def watch() -> None:  # when each step's end reached the server (polled: the bench's own clock, not a test)
        with psycopg.connect(url, password=PASSWORD, autocommit=True) as db:
            while not stop.is_set():
                now = time.time()
                for stream, step_id in db.execute("SELECT stream, id FROM steps WHERE ended IS NOT NULL"):
                    arrived.setdefault((stream, step_id), now)
                stop.wait(0.02)
            now = time.time()  # what arrived since the last look (the replicas are flushed by now)
            for stream, step_id in db.execute("SELECT stream, id FROM steps WHERE ended IS NOT NULL"):
                arrived.setdefault((stream, step_id), now)

    watcher = threading.Thread(target=watch)
    watcher.start()
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in replicas:
        r.flush(300)
    wall = time.perf_counter() - began
    stop.set()
    watcher.join()
    for r, j in zip(replicas, journals):
        r.close()
        j.close()
    lags = [arrived[k] - ended[k] for k in ended if k in arrived]
    sent = sum(r.sent for r in replicas)
    print(f"(c) {stations} stations x {ports} ports, each station its own file + replica to the server")
    print(f"    local step-end commit p50 {pct(local, 50) * 1e3:.1f} ms, p99 {pct(local, 99) * 1e3:.1f} ms; "
          f"{sent:,} spool entries sent in {wall:.1f} s = {sent / wall:,.0f}/s")
    print(f"    step end in the file -> on the server: p50 {pct(lags, 50) * 1e3:.0f} ms, p99 {pct(lags, 99) * 1e3:.0f} ms"
          f" ({len(lags)} of {len(ended)} steps seen arriving; the watcher polls every 20 ms)")


# --- (d) serials -------------------------------------------------------------------------------------------------

def bench_serials(tmp: Path, url: str, stations: int, per_station: int) -> None:
    from station.pg import open_pg
    from station.replica import migrate_all

    migrate_all(url)
    pools, conns = [], []
    for i in range(stations):
        pool = SerialPool(tmp / f"serials-{i}.sqlite3", ahead=10)
        conn = open_pg(url)
        pool.draw = lambda counter, start, n, conn=conn: draw_from(conn, counter, start, n)
        pools.append(pool)
        conns.append(conn)
    taken: list[int] = []
    lock = threading.Lock()

    def run(pool: SerialPool, index: int) -> None:
        mine = [pool.take("BENCH{counter:08d}", 1, f"dev-{index}-{n}") for n in range(per_station)]
        with lock:
            taken.extend(mine)

    threads = [threading.Thread(target=run, args=(p, i)) for i, p in enumerate(pools)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    for p, c in zip(pools, conns):
        p.close()
        c.close()
    assert len(taken) == len(set(taken)), "a serial number was handed out twice"
    print(f"(d) {stations} stations taking numbers of one counter at once: {len(taken):,} serials in {wall:.1f} s = "
          f"{len(taken) / wall:,.0f}/s, all unique (each recorded used, fsynced, in its station's file)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--boards", type=int, default=8)
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--ports", type=int, default=24)
    parser.add_argument("--devices", type=int, default=3, help="devices per port in (b) and (c)")
    parser.add_argument("--serials", type=int, default=200, help="numbers per station in (d)")
    parser.add_argument("--parts", default="abcd", help="which measurements to run (default: all)")
    args = parser.parse_args()
    os.environ["STATION_DB_PASSWORD"] = PASSWORD
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    server = PgServer().init().start()
    try:
        server.setup_role()
        ratio = 1.0
        if "a" in args.parts:
            ratio = bench_batch(tmp / "a", server.fresh_database(), args.rounds, args.boards)
        if "b" in args.parts:
            bench_direct(server.fresh_database(), args.stations, args.ports, args.devices)
        if "c" in args.parts:
            (tmp / "c").mkdir()
            bench_replicated(tmp / "c", server.fresh_database(), args.stations, args.ports, args.devices)
        if "d" in args.parts:
            (tmp / "d").mkdir()
            bench_serials(tmp / "d", server.fresh_database(), args.stations, args.serials)
    finally:
        server.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ratio <= 1.02 else 1


if __name__ == "__main__":
    sys.exit(main())
