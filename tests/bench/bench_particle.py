#!/usr/bin/env python3
"""Particle benchmark: the station taking 8 emulated Photons through the whole pipeline at once, against itself
on 1 Photon, and the seconds of operator attention each board needs.

    python tests/bench/bench_particle.py [--rounds N] [--keep-logs]

Not a pytest test. The ratios come from ONE run of this script, measured side by side, because the machine
(2 cores, shared) is noisy.

Setup
  * The emulated boards run in a separate process (this script with --serve), so their CPU does not share the
    station's GIL: ParticleSimServer with Photons (bootloader 0250, device-os 2.3.1) whose DFU bootloaders are
    throttled: erase and program take as long as on the STM32F205 (128 KiB sector 2.0 s, 4 us per byte; the DCT
    bootloader's advertised 500 ms per write). Mode switches (14400 / 28800 baud, leaving DFU) re-enumerate at
    once: a real board needs about a second each, the same for 1 or 8 boards. Every measurement gets a freshly
    started emulator (start-up is not timed); each board starts running its factory firmware.
  * A temporary profile: the shipped Tinker user part for the Photon, the demo cloud's key and address, a new
    device key per board, Wi-Fi "station-bench" (the Photons see it, so they skip the security prompts). No cloud:
    the registration is the outbox's and is measured by bench_registration.py.

Measurements (each repeated --rounds times, order alternating; medians reported)
  photon-8   Engine.run_batch() over 8 Photons: detect, 14400-baud switch to DFU, check + old key read, keys and
             firmware written, read back, leave DFU, back as USB serial, listening mode, `i`, Wi-Fi with `w`
  photon-1   the same with only the first board (the other 7 plugged and idle)
  attention  seconds from an OperatorPrompt to the board carrying on, summed per board: the time a person spends
             on it. Photons: no prompt at all. For contrast (not a target), one old Core (2014 firmware, no magic
             baud) with a scripted person who does what the prompt says the moment it shows (hold MODE, tap RESET:
             a real person also holds MODE about 3 s until the LED blinks yellow, which is not counted here).

Targets
  (1) photon-8 wall / photon-1 wall                       <= 1.15
  (2) operator attention per Photon (s)                    == 0
Exit status: 0 targets met, 1 a target missed, 2 a run or the setup failed.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import select
import shutil
import signal
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
from station.families.particle.steps import SWITCH_WAIT_S  # noqa: E402
from station.journal import Journal  # noqa: E402
from station.profile_library import shipped_profiles_dir  # noqa: E402
from station.profiles import Profile, load_profile  # noqa: E402
from tests.bench.bench_batch import BenchError, med, proc_cpu_seconds, spawn, stop_all_children, stop_child  # noqa: E402

BOARDS = 8
SSID, PSK = "station-bench", "bench passphrase 1"
TARGETS = {"1": ("(1) 8 Photons wall / 1 Photon wall", "<=", 1.15),
           "2": ("(2) operator attention per Photon, s", "<=", 0.0)}


# --- the emulator process ---------------------------------------------------------------------------------------

def serve(kinds: list[str], registry: Path) -> None:
    """--serve: the boards, throttled, until SIGTERM; "ready LOCATION" per board, then stdin commands "dfu LOC"."""
    from station.families.particle.sim.board import ParticleBoard
    from station.families.particle.sim.server import ParticleSimServer

    boards = [ParticleBoard(kind, i, visible={SSID: (3, 1)}) for i, kind in enumerate(kinds)]
    for board in boards:
        board.dfu.throttle = True  # erase/program as long as the part takes
    server = ParticleSimServer(boards, registry).start()
    signal.signal(signal.SIGTERM, lambda *_: (server.stop(), os._exit(0)))
    for location in server.locations:
        print(f"ready {location}", flush=True)
    for line in sys.stdin:
        verb, _, location = line.strip().partition(" ")
        if verb == "dfu":
            server.hold_mode(location, 3.5, tap_reset=True)
    server.stop()


@dataclass
class Emulator:
    proc: subprocess.Popen
    registry: Path
    locations: list[str]

    def dfu_button(self, location: str) -> None:
        self.proc.stdin.write(f"dfu {location}\n".encode())
        self.proc.stdin.flush()


def start_emulator(workdir: Path, name: str, kinds: list[str], timeout: float = 30.0) -> Emulator:
    registry = workdir / f"registry-{name}"
    registry.mkdir()
    log_path = workdir / f"sim-{name}.stderr.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", ",".join(kinds), str(registry)]
    with open(log_path, "wb") as stderr:
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.PIPE, cwd=REPO)
    locations: list[str] = []
    deadline = time.monotonic() + timeout
    buffer = b""
    while len(locations) < len(kinds):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            stop_child(proc)
            raise BenchError(f"emulator did not report {len(kinds)} boards within {timeout:g} s; see {log_path}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            buffer += os.read(proc.stdout.fileno(), 4096)
            *lines, buffer = buffer.split(b"\n")
            locations += [line.split()[1].decode() for line in lines if line.startswith(b"ready ")]
    return Emulator(proc, registry, locations)


# --- the station ------------------------------------------------------------------------------------------------

def write_profile(folder: Path) -> Path:
    shipped = shipped_profiles_dir()
    tinker = shipped / "firmware" / "tinker-photon" / "tinker.bin"
    key = shipped / "keys" / "demo-cloud.pub.pem"
    profile = folder / "bench-particle.toml"
    profile.write_text(f"""\
# Written by tests/bench/bench_particle.py
[profile]
name = "bench Photon / Spark Core"

[[firmware]]
chip = "Photon"
[[firmware.images]]
file = "{tinker}"
address = 0x080A0000
sha256 = "{hashlib.sha256(tinker.read_bytes()).hexdigest()}"

[[firmware]]
chip = "Spark Core"
[[firmware.images]]
file = "{shipped / 'firmware' / 'tinker-core' / 'tinker.bin'}"
address = 0x08005000
sha256 = "{hashlib.sha256((shipped / 'firmware' / 'tinker-core' / 'tinker.bin').read_bytes()).hexdigest()}"

[particle]
server_key = {{ file = "{key}", sha256 = "{hashlib.sha256(key.read_bytes()).hexdigest()}" }}
server_address = "192.168.1.10"

[wifi]
ssid = "{SSID}"
psk_env = "BENCH_PARTICLE_PSK"
""")
    return profile


@dataclass
class BatchRun:
    wall: float
    station_cpu: float
    emulator_cpu: float
    attention: dict[str, float] = field(default_factory=dict)  # board -> seconds a person spent on it
    device: dict[str, float] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)  # step -> slowest board's seconds


def run_station(profile: Profile, journal: Journal, emulator: Emulator, only: list[str] | None,
                person: bool = False) -> BatchRun:
    failures: list[str] = []
    prompted: dict[str, float] = {}
    run = BatchRun(0.0, 0.0, 0.0)

    def listen(event: ev.Event) -> None:
        if isinstance(event, ev.OperatorPrompt):
            prompted[event.key] = time.perf_counter()
            if person:
                emulator.dfu_button(event.key)
        elif isinstance(event, ev.StepDone):
            if event.ok:
                run.steps[event.step] = max(run.steps.get(event.step, 0.0), event.seconds)
                if event.key in prompted:
                    run.attention[event.key] = (run.attention.get(event.key, 0.0)
                                                + time.perf_counter() - prompted.pop(event.key))
            elif event.key not in prompted:
                failures.append(f"{event.key}: {event.step}: {event.detail}")
        elif isinstance(event, ev.DeviceDone):
            run.device[event.key] = event.seconds

    engine = Engine(profile, Discovery([SimPortSource(emulator.registry)]), journal, operator="bench",
                    station_id="bench", lot="bench", psk=PSK)
    engine.subscribe(listen)

    async def batch():
        began = time.perf_counter()
        summary = await engine.run_batch(only=only)
        return summary, time.perf_counter() - began

    cpu0, emu0 = time.process_time(), proc_cpu_seconds(emulator.proc.pid)
    try:
        summary, run.wall = asyncio.run(batch())
    finally:
        engine.close()
    run.station_cpu, run.emulator_cpu = time.process_time() - cpu0, proc_cpu_seconds(emulator.proc.pid) - emu0
    expect = len(only) if only else len(emulator.locations)
    if summary.failed or len(summary.passed) != expect:
        raise BenchError(f"{expect} boards: {len(summary.passed)} passed, failed: {summary.failed or 'none'}; "
                         f"{failures}")
    return run


# --- report -----------------------------------------------------------------------------------------------------

def verdict(key: str, value: float) -> str:
    _, op, bound = TARGETS[key]
    return "PASS" if (value <= bound if op == "<=" else value >= bound) else "MISS"


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each measurement (>= 2)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (logs, journal, profile)")
    parser.add_argument("--serve", nargs=2, metavar=("KINDS", "REGISTRY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0].split(","), Path(args.serve[1]))
        return 0
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")

    signal.signal(signal.SIGTERM, _interrupt)  # unwind like Ctrl-C so the finally below stops the emulators
    os.environ["BENCH_PARTICLE_PSK"] = PSK
    tmp = Path(tempfile.mkdtemp(prefix="station-bench-particle-"))
    made = 0

    def emulator(kinds: list[str]) -> Emulator:
        nonlocal made
        made += 1
        return start_emulator(tmp, str(made), kinds)

    journal: Journal | None = None
    try:
        profile = load_profile(write_profile(tmp))
        journal = Journal(tmp / "journal.sqlite3")
        print(f"bench: {BOARDS} emulated Photons (DFU throttled to the STM32F205's erase/program times), the whole "
              f"pipeline; python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {args.rounds} rounds")
        batches: dict[str, list[BatchRun]] = {"photon-8": [], "photon-1": []}
        for index in range(args.rounds):
            for kind in (["photon-8", "photon-1"] if index % 2 == 0 else ["photon-1", "photon-8"]):
                emu = emulator(["photon"] * BOARDS)
                only = None if kind == "photon-8" else emu.locations[:1]
                try:
                    run = run_station(profile, journal, emu, only)
                finally:
                    stop_child(emu.proc)
                batches[kind].append(run)
                walls = sorted(run.device.values())
                print(f"round {index + 1} {kind:<9} wall {run.wall:6.2f} s  per board {walls[0]:.2f}-{walls[-1]:.2f} s"
                      f"  prompts {len(run.attention)}  station CPU {run.station_cpu:5.2f} s  emulator CPU "
                      f"{run.emulator_cpu:5.2f} s", flush=True)
        emu = emulator(["old-core"])
        try:
            old = run_station(profile, journal, emu, None, person=True)
        finally:
            stop_child(emu.proc)

        m8, m1 = med(r.wall for r in batches["photon-8"]), med(r.wall for r in batches["photon-1"])
        photons = [sum(r.attention.values()) / BOARDS for r in batches["photon-8"]]
        ratios = {"1": m8 / m1, "2": max(photons)}
        print()
        print("absolute times (median of rounds; all rounds in brackets)")
        for kind, runs in batches.items():
            print(f"  {kind:<9} wall {med(r.wall for r in runs):6.3f} s  [{', '.join(f'{r.wall:.3f}' for r in runs)}]"
                  f"  station CPU {med(r.station_cpu for r in runs):.2f} s, emulator CPU "
                  f"{med(r.emulator_cpu for r in runs):.2f} s")
        slowest = batches["photon-8"][-1].steps
        print("  slowest board per step, last photon-8 round: "
              + ", ".join(f"{step} {seconds:.2f} s" for step, seconds in slowest.items()))
        print(f"  old Core (no magic baud), person acting at once: wall {old.wall:.2f} s, attention "
              f"{sum(old.attention.values()):.2f} s (prompt shown -> board carrying on), plus ~3 s holding MODE; "
              f"the prompt came after the 14400-baud switch had been given {SWITCH_WAIT_S:g} s")
        print()
        for key, (label, op, bound) in TARGETS.items():
            print(f"{label:<45} {ratios[key]:6.3f}   target {op} {bound:g}   {verdict(key, ratios[key])}")
        return 0 if all(verdict(k, v) == "PASS" for k, v in ratios.items()) else 1
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if journal is not None:
            journal.close()
        stop_all_children()
        if args.keep_logs:
            print(f"logs: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
