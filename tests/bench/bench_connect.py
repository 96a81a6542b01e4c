#!/usr/bin/env python3
"""Connect benchmark: time to the first flashed byte, one board against stock esptool, 24 ports against one,
discovery's system calls per poll, and what the verify step asks the board again.

    python tests/bench/bench_connect.py [--rounds 3] [--ports 24] [--keep-logs]

Not a pytest test. Every number comes from ONE run of this script, side by side (2 shared cores: absolute
times are context, the ratios count).

Setup
  * `station sim esp --chip esp32 --count 24 --baud-throttle` in its own process (bench_batch.py's helper):
    each board paces its line to 115200 baud until CHANGE_BAUDRATE, then to the new rate.
  * A temporary profile: ESP32 only, bootloader, partition table and a compressible 1 MiB app, baud 921600.
  * Board 1 is reset into its app after the session-only run and after esptool (socket:// cannot reset it),
    so no run finds a flasher stub left running by the one before (a connect that never resets would answer
    at once and look fast).

Measurements (each round; order alternating)
  ttfb-engine   the target figure: through the engine on 1 board (station-1 below), detect step started (it
                opens the port) -> first Progress of the flash step with bytes done (first block accepted)
  ttfb-session  EspSession alone on board 1's espsim:// URL: port opened -> first progress tick with bytes
                done, the profile's one chip given (context: no journal, no engine)
  station-1     Engine.run_batch on board 1, whole device (detect ... reset)
  esptool-1     one stock `python -m esptool write-flash` process on board 1 (socket://), same images
  station-N     Engine.run_batch on all N boards; its CPU seconds (all threads of this process) / N
  discovery     system calls per scan() (strace -c, N scans minus 0 scans, in a child process) for --port
                URLs and for the emulator registry, at 1 and N ports
  verify        regions the verify step asked the board for again, default and with [profile] verify = "all"
Context lines: step times at 1 and N ports, CPU of the station and of the emulator process during station-N.

Targets: ttfb <= 0.6 s; station-1 / esptool-1 <= 0.85; station-N / station-1 <= 1.03; CPU per board at N ports
<= 0.15 s; discovery syscalls per poll at N ports / at 1 port <= 1.0 (O(1)).
Exit status: 0 all targets met, 1 a target missed, 2 a run failed.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_batch as bb  # noqa: E402  (REPO on sys.path, child-process helpers)
import serial  # noqa: E402
from esptool.reset import HardReset  # noqa: E402

from station import events as ev  # noqa: E402
from station.discovery import Discovery  # noqa: E402
from station.discovery.sim_ports import SimPortSource  # noqa: E402
from station.engine import Engine  # noqa: E402
from station.families.esp.session import EspSession  # noqa: E402
from station.families.esp.sim.firmware import make_app_image, make_bootloader_image, make_partition_table  # noqa: E402
from station.journal import Journal  # noqa: E402
from station.profiles import load_profile  # noqa: E402

BAUD = 921600
APP_SIZE = 1 << 20
TARGETS = {  # key: (label, comparison, bound)
    "ttfb": ("time to first byte, 1 ESP32, engine (s)", "<=", 0.60),
    "e2e": ("station-1 / esptool-1 (compressible 1 MiB)", "<=", 0.85),
    "scale": ("station-N / station-1 wall", "<=", 1.03),
    "cpu": ("station CPU per board at N ports (s)", "<=", 0.15),
    "poll_static": ("--port: syscalls per poll, N / 1 ports", "<=", 1.00),
    "poll_sim": ("registry: syscalls per poll, N / 1 ports", "<=", 1.00),
}


def write_profile(folder: Path, verify: str = "unchecked") -> tuple[list[tuple[int, Path]], Path]:
    images = [(0x1000, "bootloader.bin", make_bootloader_image("ESP32")),
              (0x8000, "partition-table.bin", make_partition_table()),
              (0x10000, "app.bin", make_app_image("ESP32", "bench", "1.0", size=APP_SIZE, compressible=True))]
    parts = []
    for offset, name, data in images:
        (folder / name).write_bytes(data)
        parts.append(f'[[firmware.images]]\noffset = {offset:#x}\nkind = "{name.split(".")[0]}"'
                     f'\nfile = "{name}"\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n')
    profile = folder / f"bench-connect-{verify}.toml"
    profile.write_text(f'[profile]\nname = "bench connect"\nfamily = "esp"\nbaud = {BAUD}\nverify = "{verify}"\n\n'
                       '[[firmware]]\nchip = "ESP32"\n\n' + "\n".join(parts))
    return [(offset, folder / name) for offset, name, _ in images], profile


def boot_app(url: str) -> None:
    """Pulse EN so the board boots its app, as a board on the bench would be: no run starts talking to a flasher
    stub a previous run left behind (a connect that never resets would find it and look fast)."""
    port = serial.serial_for_url(url, do_not_open=True)
    port.open()
    try:
        port.dtr = False  # opening asserted it; with DTR asserted, esptool's RTS pulse would hold IO0, not EN
        HardReset(port)()
    finally:
        port.close()


def ttfb_session(url: str, app: bytes) -> float:
    first: list[float] = []
    session = EspSession(url, lambda level, message: None,
                         lambda done, total: first.append(time.perf_counter()) if done and not first else None)
    began = time.perf_counter()
    try:
        session.connect(BAUD, chip="ESP32")
        session.write([(0x10000, app)])
    finally:
        session.close()
    return first[0] - began


def run_engine(profile_path: Path, registry: Path, journal: Journal, only: list[str] | None, expect: int) -> dict:
    marks: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, str]] = {}
    seconds: dict[str, list[float]] = {}
    failures: list[str] = []

    def listen(event: ev.Event) -> None:
        now = time.perf_counter()
        if isinstance(event, ev.StepStarted) and event.step == "detect":
            marks.setdefault(event.key, {})["detect"] = now
        elif isinstance(event, ev.Progress) and event.step == "flash" and event.done:
            marks.setdefault(event.key, {}).setdefault("first", now)
        elif isinstance(event, ev.StepDone):
            details.setdefault(event.key, {})[event.step] = event.detail
            seconds.setdefault(event.step, []).append(event.seconds)
            if not event.ok:
                failures.append(f"{event.key}: {event.step}: {event.detail}")

    engine = Engine(load_profile(profile_path), Discovery([SimPortSource(registry)]), journal, operator="bench",
                    station_id="bench", lot="bench")
    engine.subscribe(listen)

    async def batch():
        began = time.perf_counter()
        summary = await engine.run_batch(only=only)
        return summary, time.perf_counter() - began

    cpu0 = time.process_time()
    try:
        summary, wall = asyncio.run(batch())
    finally:
        engine.close()
    cpu = time.process_time() - cpu0
    if summary.failed or len(summary.passed) != expect:
        raise bb.BenchError(f"station-{expect}: {len(summary.passed)} passed; failures: {failures}")
    ttfb = [m["first"] - m["detect"] for m in marks.values() if "first" in m]
    return {"wall": wall, "cpu": cpu, "ttfb": ttfb, "details": details, "steps": seconds,
            "started": sorted(m["detect"] for m in marks.values())}


def run_esptool(url: str, images: list[tuple[int, Path]], logdir: Path, index: int) -> float:
    argv = [sys.executable, "-m", "esptool", "--chip", "esp32", "--port", url, "--baud", str(BAUD), "write-flash"]
    for offset, path in images:
        argv += [hex(offset), str(path)]
    log_path = logdir / f"esptool-{index}.log"
    began = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = bb.spawn(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=logdir)
        try:
            proc.wait(timeout=120)
        finally:
            bb.stop_child(proc)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise bb.BenchError(f"esptool-1 failed (exit {proc.returncode}); see {log_path}")
    return wall


SCAN_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
kind, arg, scans = sys.argv[2], sys.argv[3], int(sys.argv[4])
if kind == "static":
    from station.discovery.static_ports import StaticPortSource
    source = StaticPortSource(arg.split(","))
elif kind == "sim":
    from station.discovery.sim_ports import SimPortSource
    source = SimPortSource(arg)
else:
    from station.discovery import Discovery, hub_sources
    source = Discovery(hub_sources())
source.scan()  # the first scan reads everything
for _ in range(scans):
    source.scan()
"""


def syscalls(kind: str, arg: str, scans: int, tmp: Path) -> int:
    out = tmp / f"strace-{kind}-{scans}.txt"
    subprocess.run(["strace", "-f", "-c", "-o", str(out), sys.executable, "-c", SCAN_CHILD, str(bb.REPO), kind, arg,
                    str(scans)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = re.search(r"^-+.*\n\s*100\.00\s+\S+\s+\S+\s+(\d+)", out.read_text(), re.M)
    if total is None:
        raise bb.BenchError(f"cannot read strace's summary in {out}")
    return int(total.group(1))


def per_poll(kind: str, arg: str, tmp: Path, scans: int = 200) -> float:
    return (syscalls(kind, arg, scans, tmp) - syscalls(kind, arg, 0, tmp)) / scans


def spread(values: list[float]) -> str:
    return f"{bb.med(values):8.3f}  [{min(values):.3f}-{max(values):.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ports", type=int, default=24)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, bb._interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="station-bench-connect-"))
    journal: Journal | None = None
    try:
        registry, logdir = tmp / "registry", tmp / "logs"
        registry.mkdir()
        logdir.mkdir()
        images, profile = write_profile(tmp)
        _, profile_all = write_profile(tmp, verify="all")
        app = images[2][1].read_bytes()
        journal = Journal(tmp / "journal.sqlite3")
        print(f"bench: {args.ports} emulated ESP32 at {BAUD} baud, compressible {len(app)} B app; python "
              f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        server = bb.start_sim_server(registry, logdir, args.ports, "bench-c")
        entries = [json.loads(p.read_text()) for p in registry.glob("*.json")]
        by_location = {e["location"]: e["url"] for e in entries}  # the espsim:// URLs the station opens
        one = server.locations[0]
        socket_url = server.urls[0]

        results: dict[str, list[float]] = {k: [] for k in
                                           ("ttfb", "ttfb_engine", "station1", "esptool1", "stationN", "cpuN",
                                            "emuN")}
        verify_details: list[str] = []
        steps1: list[dict[str, list[float]]] = []
        stepsN: list[dict[str, list[float]]] = []
        starts: list[float] = []
        for index in range(args.rounds):
            plan = ["ttfb", "station1", "esptool1", "stationN"]
            for kind in plan if index % 2 == 0 else plan[::-1]:
                if kind == "ttfb":
                    results["ttfb"].append(ttfb_session(by_location[one], app))
                    boot_app(by_location[one])
                elif kind == "station1":
                    run = run_engine(profile, registry, journal, [one], 1)
                    results["station1"].append(run["wall"])
                    steps1.append(run["steps"])
                    results["ttfb_engine"] += run["ttfb"]
                    verify_details.append(run["details"][one]["verify"])
                elif kind == "esptool1":
                    results["esptool1"].append(run_esptool(socket_url, images, logdir, index))
                    boot_app(by_location[one])  # socket:// cannot reset: the stub would still be running
                else:
                    emu0 = bb.proc_cpu_seconds(server.proc.pid)
                    run = run_engine(profile, registry, journal, None, args.ports)
                    results["emuN"].append(bb.proc_cpu_seconds(server.proc.pid) - emu0)
                    results["stationN"].append(run["wall"])
                    stepsN.append(run["steps"])
                    starts.append(run["started"][-1] - run["started"][0])
                    results["cpuN"].append(run["cpu"] / args.ports)
            print(f"round {index + 1}: ttfb {results['ttfb_engine'][-1]:.3f} s (session {results['ttfb'][-1]:.3f} s)  "
                  f"station-1 {results['station1'][-1]:.2f} s  "
                  f"esptool-1 {results['esptool1'][-1]:.2f} s  station-{args.ports} {results['stationN'][-1]:.2f} s "
                  f"(CPU/board {results['cpuN'][-1]:.3f} s)", flush=True)
        run_all = run_engine(profile_all, registry, journal, [one], 1)

        urls = list(by_location.values())
        one_registry = tmp / "registry-1"
        one_registry.mkdir()
        shutil.copy(next(registry.glob("*.json")), one_registry)
        polls = {
            "static_1": per_poll("static", urls[0], tmp), "static_N": per_poll("static", ",".join(urls), tmp),
            "sim_1": per_poll("sim", str(one_registry), tmp), "sim_N": per_poll("sim", str(registry), tmp),
            "hub": per_poll("hub", "", tmp),
        }

        e2e = [s / e for s, e in zip(results["station1"], results["esptool1"])]
        scale = [n / s for n, s in zip(results["stationN"], results["station1"])]
        figures = {
            "ttfb": results["ttfb_engine"], "e2e": e2e, "scale": scale, "cpu": results["cpuN"],
            "poll_static": [polls["static_N"] / max(polls["static_1"], 1.0)],
            "poll_sim": [polls["sim_N"] / max(polls["sim_1"], 1.0)],
        }
        print()
        print("context (median [range] of rounds)")
        print(f"  ttfb of EspSession alone (port opened -> first block accepted) {spread(results['ttfb'])} s")
        for key, label in (("station1", "station-1 wall"), ("esptool1", "esptool-1 wall"),
                           ("stationN", f"station-{args.ports} wall")):
            print(f"  {label:<28} {spread(results[key])} s")
        print(f"  CPU during station-{args.ports}: station {spread([c * args.ports for c in results['cpuN']])} s, "
              f"emulator process {spread(results['emuN'])} s (of {2 * bb.med(results['stationN']):.1f} core-seconds)")
        for label, runs in (("1 port", steps1), (f"{args.ports} ports", stepsN)):
            names = list(runs[0])
            print(f"  steps at {label:<9} " + "  ".join(
                f"{n} {bb.med([s for r in runs for s in r.get(n, [])]):.2f}" for n in names) + " s (median)")
        print(f"  last detect started {bb.med(starts):.3f} s after the first, at {args.ports} ports")
        print(f"  syscalls per poll: --port 1 URL {polls['static_1']:.1f}, {args.ports} URLs {polls['static_N']:.1f}; "
              f"registry 1 board {polls['sim_1']:.1f}, {args.ports} boards {polls['sim_N']:.1f}; "
              f"real hub (serial + USB, this machine) {polls['hub']:.1f}")
        print(f"  verify, default:      {verify_details[-1]}")
        print(f"  verify, verify=all:   {run_all['details'][one]['verify']}")
        print()
        print(f"{'summary':<46} {'median':>8}  {'range':<13}  {'target':>8}  result")
        ok = True
        for key, (label, op, bound) in TARGETS.items():
            value = bb.med(figures[key])
            passed = value <= bound if op == "<=" else value >= bound
            ok &= passed
            print(f"{label:<46} {value:8.3f}  [{min(figures[key]):.3f}-{max(figures[key]):.3f}]  {op} {bound:<5.2f}  "
                  f"{'PASS' if passed else 'MISS'}")
        return 0 if ok else 1
    except bb.BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()
        bb.stop_all_children()
        if journal is not None:
            journal.close()
        if args.keep_logs:
            print(f"bench: logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
