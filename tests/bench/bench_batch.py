#!/usr/bin/env python3
"""Batch benchmark: the station flashing 8 emulated ESP32s at once, against itself on 1 port and stock esptool.

    python tests/bench/bench_batch.py [--rounds N] [--keep-logs]        (or: make bench)

Not a pytest test. Every number comes from ONE run of this script, measured side by side, because the
machine (2 cores, shared) is noisy: absolute times are printed for context, the ratios are what count.

Setup
  * `station sim esp --chip esp32 --count 8 --baud-throttle --registry DIR` in a separate process, so the
    emulators' CPU does not share the station's GIL. Each board paces its line to 115200 baud at connect and
    921600 after CHANGE_BAUDRATE; a new TCP connection is a reset into the ROM loader (flash persists), so
    runs are independent.
  * A temporary profile (TOML, in a temp dir): ESP32, bootloader at 0x1000, partition table at 0x8000, a
    1 MiB incompressible app at 0x10000, baud 921600, no [wifi]/[nvs] (so what is measured is flashing).

Measurements (each repeated --rounds times, order alternating between rounds; medians are reported)
  station-8   Engine.run_batch() in-process over the 8 boards
  station-1   Engine.run_batch(only=[one location])
  esptool-8   8 stock `python -m esptool ... write-flash` CLI processes in parallel, same boards, same images

Ratios
  (a) station-8 wall / station-1 wall                                   target <= 1.15
  (b) (image bytes / `flash` step seconds) / (921600/10 B/s), 1 port    target >= 0.85
  (c) station-8 wall / esptool-8 wall                                   target <= 1.00

Exit status: 0 all targets met, 1 a target missed, 2 a run failed (a board did not pass) or setup failed.
Child processes are stopped by PID (SIGTERM, then SIGKILL) on every exit path, Ctrl-C included; the temp
dir is removed unless --keep-logs is given.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from station import events as ev  # noqa: E402
from station.discovery import Discovery  # noqa: E402
from station.discovery.sim_ports import SimPortSource  # noqa: E402
from station.engine import Engine  # noqa: E402
from station.journal import Journal  # noqa: E402
from station.profiles import Profile, load_profile  # noqa: E402
from station.families.esp.sim.firmware import make_app_image, make_bootloader_image, make_partition_table  # noqa: E402

PORTS = 8
BAUD = 921600
LINE_RATE = BAUD / 10  # bytes/s: start + 8 data + stop bits
APP_SIZE = 1 << 20
LOCATION_PREFIX = "bench-1"
STEP_ORDER = ("detect", "check", "flash", "verify", "reset")
TARGETS = {  # key: (label, comparison, bound)
    "a": ("(a) station 8-port wall / 1-port wall", "<=", 1.15),
    "b": ("(b) flash effective B/s / line rate (1 port)", ">=", 0.85),
    "c": ("(c) station 8-port wall / 8x esptool CLI wall", "<=", 1.00),
}

# every child we start, so any exit path can stop it by PID
_children: list[subprocess.Popen] = []


class BenchError(RuntimeError):
    """A run did not do what it was meant to (a board failed, the emulator did not come up)."""


# --- child processes -----------------------------------------------------------------------------------------


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(argv, **kwargs)
    _children.append(proc)
    return proc


def stop_child(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM this PID, wait, SIGKILL if it is still there; always reaped."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if proc in _children:
        _children.remove(proc)


def stop_all_children() -> None:
    for proc in list(_children):
        stop_child(proc)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- setup ---------------------------------------------------------------------------------------------------


@dataclass
class Firmware:
    bootloader: Path
    partition_table: Path
    app: Path

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.bootloader, self.partition_table, self.app))


def write_firmware_and_profile(folder: Path) -> tuple[Firmware, Path]:
    images = {
        "bootloader.bin": make_bootloader_image("ESP32"),
        "partition-table.bin": make_partition_table(),
        "bench-app.bin": make_app_image("ESP32", "bench", "1.0", size=APP_SIZE, compressible=False),
    }
    for name, data in images.items():
        (folder / name).write_bytes(data)
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in images.items()}
    profile = folder / "bench-esp32-1mib.toml"
    profile.write_text(f"""\
# Written by tests/bench/bench_batch.py: flashing only (no [wifi], no [nvs]).
[profile]
name = "bench ESP32 1 MiB incompressible"
description = "batch benchmark"
family = "esp"
baud = {BAUD}

[[firmware]]
chip = "ESP32"

[[firmware.images]]
offset = 0x1000
kind = "bootloader"
file = "bootloader.bin"
sha256 = "{sha['bootloader.bin']}"

[[firmware.images]]
offset = 0x8000
kind = "partition-table"
file = "partition-table.bin"
sha256 = "{sha['partition-table.bin']}"

[[firmware.images]]
offset = 0x10000
kind = "app"
file = "bench-app.bin"
sha256 = "{sha['bench-app.bin']}"
""")
    fw = Firmware(folder / "bootloader.bin", folder / "partition-table.bin", folder / "bench-app.bin")
    return fw, profile


@dataclass
class SimServer:
    proc: subprocess.Popen
    locations: list[str]
    urls: list[str]


def start_sim_server(registry: Path, logdir: Path, count: int, prefix: str, timeout: float = 30.0) -> SimServer:
    argv = [sys.executable, "-m", "station.cli", "sim", "esp", "--chip", "esp32", "--count", str(count),
            "--tcp", "127.0.0.1:0", "--baud-throttle", "--registry", str(registry), "--location-prefix", prefix]
    stderr = open(logdir / f"sim-{prefix}.stderr.log", "wb")
    try:
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO)
    finally:
        stderr.close()  # the child holds its own copy
    locations, urls = [], []
    deadline = time.monotonic() + timeout
    buffer = b""
    while len(urls) < count:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            stop_child(proc)
            raise BenchError(f"emulator did not report {count} boards ready within {timeout:g} s "
                             f"(exit {proc.returncode}); see {logdir / f'sim-{prefix}.stderr.log'}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            continue
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            parts = line.decode().split()
            if len(parts) >= 4 and parts[0] == "ready":  # ready <location> <chip> <url> mac=...
                locations.append(parts[1])
                urls.append(parts[3])
    deadline = time.monotonic() + 10
    while len(list(registry.glob("*.json"))) < count:  # registry files are written before `ready` is printed
        if time.monotonic() > deadline:
            raise BenchError("emulator registry files did not appear")
        time.sleep(0.05)
    return SimServer(proc, locations, urls)


# --- measurements --------------------------------------------------------------------------------------------


@dataclass
class Run:
    kind: str  # station-8, station-1, esptool-8
    wall: float
    station_cpu: float = 0.0  # CPU seconds of this process (all threads) during the run
    emulator_cpu: float = 0.0
    esptool_cpu: float = 0.0  # CPU seconds of the esptool children
    # station runs: per port, step -> seconds, plus whole-device seconds
    steps: dict[str, dict[str, float]] = field(default_factory=dict)
    device: dict[str, float] = field(default_factory=dict)
    # esptool runs: per process wall
    per_process: list[float] = field(default_factory=list)


def run_station(profile: Profile, registry: Path, journal: Journal, emulator_pid: int,
                only: list[str] | None, expect: int) -> Run:
    steps: dict[str, dict[str, float]] = {}
    device: dict[str, float] = {}
    failures: list[str] = []

    def listen(event: ev.Event) -> None:
        if isinstance(event, ev.StepDone):
            if event.ok:
                steps.setdefault(event.key, {})[event.step] = event.seconds
            else:
                failures.append(f"{event.key}: {event.step}: {event.detail}")
        elif isinstance(event, ev.DeviceDone):
            device[event.key] = event.seconds

    engine = Engine(profile, Discovery([SimPortSource(registry)]), journal, operator="bench",
                    station_id="bench", lot="bench")
    engine.subscribe(listen)

    async def batch():
        began = time.perf_counter()
        summary = await engine.run_batch(only=only)
        return summary, time.perf_counter() - began

    cpu0, emu0 = time.process_time(), proc_cpu_seconds(emulator_pid)
    try:
        summary, wall = asyncio.run(batch())
    finally:
        engine.close()
    cpu1, emu1 = time.process_time(), proc_cpu_seconds(emulator_pid)
    kind = f"station-{expect}"
    if summary.failed or len(summary.passed) != expect:
        raise BenchError(f"{kind}: {len(summary.passed)} passed, failed: {summary.failed or 'none'}; "
                         f"step failures: {failures}")
    return Run(kind, wall, station_cpu=cpu1 - cpu0, emulator_cpu=emu1 - emu0, steps=steps, device=device)


def run_esptool(urls: list[str], fw: Firmware, logdir: Path, emulator_pid: int, index: int,
                timeout: float = 240.0) -> Run:
    procs: list[tuple[subprocess.Popen, Path]] = []
    child0, emu0 = children_cpu_seconds(), proc_cpu_seconds(emulator_pid)
    began = time.perf_counter()
    for n, url in enumerate(urls):
        argv = [sys.executable, "-m", "esptool", "--chip", "esp32", "--port", url, "--baud", str(BAUD),
                "write-flash", "0x1000", str(fw.bootloader), "0x8000", str(fw.partition_table),
                "0x10000", str(fw.app)]
        log_path = logdir / f"esptool-r{index}-p{n + 1}.log"
        with open(log_path, "wb") as log:
            procs.append((spawn(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=logdir), log_path))
    ended: dict[int, float] = {}
    while len(ended) < len(procs):
        for proc, _ in procs:
            if proc.pid not in ended and proc.poll() is not None:
                ended[proc.pid] = time.perf_counter() - began
        if time.perf_counter() - began > timeout:
            raise BenchError(f"esptool-8: still running after {timeout:g} s")
        time.sleep(0.005)
    wall = time.perf_counter() - began
    emu1 = proc_cpu_seconds(emulator_pid)
    bad = [(proc, path) for proc, path in procs if proc.returncode != 0]
    for proc, _ in procs:
        stop_child(proc)  # already exited: just reaps and forgets it
    child1 = children_cpu_seconds()
    if bad:
        proc, path = bad[0]
        tail = "\n    ".join(path.read_text(errors="replace").splitlines()[-8:])
        raise BenchError(f"esptool-8: {len(bad)} of {len(procs)} processes failed; {path.name} "
                         f"(exit {proc.returncode}) ends:\n    {tail}")
    return Run("esptool-8", wall, emulator_cpu=emu1 - emu0, esptool_cpu=child1 - child0,
               per_process=sorted(ended.values()))


# --- report --------------------------------------------------------------------------------------------------


def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def verdict(key: str, value: float) -> str:
    _, op, bound = TARGETS[key]
    ok = value <= bound if op == "<=" else value >= bound
    return "PASS" if ok else "MISS"


def print_split(title: str, runs: list, batch_walls: list[float]) -> None:
    """Median (and max) seconds per step over every port of every run (anything with `steps` and `device`), and
    what is left of the batch wall time."""
    per_step = {name: [] for name in STEP_ORDER}
    devices, others = [], []
    for run in runs:
        for key, steps in run.steps.items():
            for name in STEP_ORDER:
                if name in steps:
                    per_step[name].append(steps[name])
            if key in run.device:
                devices.append(run.device[key])
                others.append(run.device[key] - sum(steps.values()))
    print(f"  {title}")
    for name in STEP_ORDER:
        print(f"    {name:<8} {med(per_step[name]):7.3f} s   (max {max(per_step[name], default=float('nan')):.3f})")
    print(f"    {'(journal/glue between steps)':<30} {med(others):5.2f} s")
    print(f"    {'whole device (DeviceDone)':<30} {med(devices):5.2f} s")
    print(f"    {'batch wall (run_batch)':<30} {med(batch_walls):5.2f} s")


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each measurement (>= 2)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (logs, journal, profile)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")

    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C so the finally below stops the children
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="station-bench-"))
    journal: Journal | None = None
    started = time.perf_counter()
    try:
        registry, logdir = tmp / "registry", tmp / "logs"
        registry.mkdir()
        logdir.mkdir()
        fw, profile_path = write_firmware_and_profile(tmp)
        profile = load_profile(profile_path)
        journal = Journal(tmp / "journal.sqlite3")
        total = fw.total_bytes
        print(f"bench: {PORTS} emulated ESP32, {BAUD} baud (line rate {LINE_RATE:.0f} B/s), "
              f"{total} image bytes per board ({fw.app.stat().st_size} app, incompressible)")
        print(f"bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {args.rounds} rounds")

        server = start_sim_server(registry, logdir, PORTS, LOCATION_PREFIX)
        print(f"bench: emulator pid {server.proc.pid}: {', '.join(server.locations)}")
        one = [server.locations[0]]

        runs: dict[str, list[Run]] = {"station-8": [], "station-1": [], "esptool-8": []}
        order = ["station-8", "station-1", "esptool-8"]
        for index in range(args.rounds):
            sequence = order if index % 2 == 0 else order[::-1]
            for kind in sequence:
                if kind == "station-8":
                    run = run_station(profile, registry, journal, server.proc.pid, None, PORTS)
                elif kind == "station-1":
                    run = run_station(profile, registry, journal, server.proc.pid, one, 1)
                else:
                    run = run_esptool(server.urls, fw, logdir, server.proc.pid, index)
                runs[kind].append(run)
                cpu = (f"station CPU {run.station_cpu:5.2f} s" if kind.startswith("station")
                       else f"esptool CPU {run.esptool_cpu:5.2f} s")
                extra = ""
                if kind == "station-1":
                    flash = run.steps[one[0]]["flash"]
                    extra = f"  flash {flash:5.2f} s -> {total / flash / LINE_RATE:.3f} of line rate"
                elif kind == "esptool-8":
                    extra = f"  per process {run.per_process[0]:.2f}-{run.per_process[-1]:.2f} s"
                elif kind == "station-8":
                    walls = sorted(run.device.values())
                    extra = f"  per device {walls[0]:.2f}-{walls[-1]:.2f} s"
                print(f"round {index + 1} {kind:<10} wall {run.wall:6.2f} s  {cpu}  "
                      f"emulator CPU {run.emulator_cpu:5.2f} s{extra}", flush=True)

        walls = {kind: [r.wall for r in rs] for kind, rs in runs.items()}
        m8, m1, me = med(walls["station-8"]), med(walls["station-1"]), med(walls["esptool-8"])
        flash_1 = [r.steps[one[0]]["flash"] for r in runs["station-1"]]
        flash_8 = [s["flash"] for r in runs["station-8"] for s in r.steps.values()]
        rate_1 = [total / s / LINE_RATE for s in flash_1]
        ratios = {"a": m8 / m1, "b": med(rate_1), "c": m8 / me}
        paired_a = [a / b for a, b in zip(walls["station-8"], walls["station-1"])]
        paired_c = [a / b for a, b in zip(walls["station-8"], walls["esptool-8"])]

        print()
        print("absolute times (median of rounds; all rounds in brackets)")
        for kind in order:
            print(f"  {kind:<10} wall {med(walls[kind]):6.2f} s  [{', '.join(f'{w:.2f}' for w in walls[kind])}]")
        print(f"  flash step, 1 port        {med(flash_1):6.2f} s  -> {total / med(flash_1):8.0f} B/s effective "
              f"(line rate {LINE_RATE:.0f} B/s; wire time for {total} bytes = {total / LINE_RATE:.2f} s)")
        print(f"  flash step, 8 ports       {med(flash_8):6.2f} s  -> {total / med(flash_8):8.0f} B/s effective "
              f"per port (median of {len(flash_8)})")
        print("  CPU seconds per run (median): "
              f"station-8 {med(r.station_cpu for r in runs['station-8']):.2f} + emulator "
              f"{med(r.emulator_cpu for r in runs['station-8']):.2f};  "
              f"station-1 {med(r.station_cpu for r in runs['station-1']):.2f} + emulator "
              f"{med(r.emulator_cpu for r in runs['station-1']):.2f};  "
              f"esptool-8 {med(r.esptool_cpu for r in runs['esptool-8']):.2f} + emulator "
              f"{med(r.emulator_cpu for r in runs['esptool-8']):.2f}")
        print()
        print("whole-device wall time split (station, median seconds)")
        print_split("1 port", runs["station-1"], walls["station-1"])
        print_split("8 ports (every port of every run)", runs["station-8"], walls["station-8"])
        print()
        print("paired per-round ratios (context): "
              f"(a) {', '.join(f'{x:.3f}' for x in paired_a)};  "
              f"(b) {', '.join(f'{x:.3f}' for x in rate_1)};  "
              f"(c) {', '.join(f'{x:.3f}' for x in paired_c)}")
        print()
        print(f"{'summary':<48} {'median':>8}  {'target':>8}  result")
        for key, (label, op, bound) in TARGETS.items():
            print(f"{label:<48} {ratios[key]:8.3f}  {op} {bound:<5.2f}  {verdict(key, ratios[key])}")
        print(f"(total bench time {time.perf_counter() - started:.0f} s; "
              f"(a) and (c) are ratios of the medians, (b) the median of the 1-port runs)")
        return 0 if all(verdict(k, v) == "PASS" for k, v in ratios.items()) else 1
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the emulator and esptool processes", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()
        stop_all_children()
        if journal is not None:
            journal.close()
        if args.keep_logs:
            print(f"bench: logs, journal and profile kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
