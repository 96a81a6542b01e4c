#!/usr/bin/env python3
"""DFU benchmark: the station flashing 8 emulated STM32 DFU boards at once, against itself on 1 board and
the station's DFU write against pyfu-usb 2.0.2 on the same emulated board.

    python tests/bench/bench_dfu.py [--rounds N] [--keep-logs]

Not a pytest test. Every number comes from ONE run of this script, measured side by side, because the
machine (2 cores, shared) is noisy: absolute times are printed for context, the ratios are what count.

Setup
  * `station sim dfu --kind stm32 --throttle --registry DIR --count N --dump DIR` in a separate process, so the
    emulators' CPU does not share the station's GIL; erase and program take as long as on an STM32F4
    (16 KiB sector 0.5 s, 64 KiB 1.1 s, 128 KiB 2.0 s, 4 us per byte). A board that leaves DFU mode resets off
    the bus, so every measurement gets a freshly started emulator (start-up is not timed); on exit it dumps
    its memories, which this script compares with the image.
  * A temporary profile (TOML, in a temp dir) with one DfuSe file: a 192 KiB Cortex-M image at 0x08000000.
    192 KiB ends inside the 128 KiB sector at 0x08020000, so the station and pyfu-usb erase the same six
    sectors (pyfu-usb also erases a sector that merely starts at the image's end; this size has none).

Measurements (each repeated --rounds times, order alternating between rounds; medians are reported)
  station-8   Engine.run_batch() in-process over 8 boards (detect, check, flash, verify read-back, reset)
  station-1   Engine.run_batch(only=[one board]) with the same 8 boards plugged
  write       one board, through the same pyusb backend (RemoteUsbBackend to the emulator process):
                station: usb.core.find + DfuHost() + DfuHost.write (erase + program) + DfuHost.leave()
                pyfu-usb: pyfu_usb.download(file, vid, pid, address) with usb.core.find bound to that backend:
                          find + claim + erase + program + set jump address + leave
              both include finding/opening the device and leaving DFU mode: the same work.

Ratios
  (1) station-8 wall / station-1 wall                                    target <= 1.10
  (2) station write B/s / pyfu-usb write B/s (same work, one board)      target >= 1.00
      Both are bound by the board's erase/program time. The station waits each GETSTATUS's bwPollTimeout (whole
      ms, rounded up: 9 ms for a 2 KiB block that programs in 8.2 ms) before polling again, as DFU 1.1 asks;
      pyfu-usb polls at once and the busy board holds the request until it is done, so it never pays the rounding.

Exit status: 0 all targets met, 1 a target missed, 2 a run failed or setup failed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import io
import logging
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
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pyfu_usb  # noqa: E402
import usb.core  # noqa: E402

from station import events as ev  # noqa: E402
from station.discovery import Discovery  # noqa: E402
from station.discovery.sim_ports import SimPortSource  # noqa: E402
from station.engine import Engine  # noqa: E402
from station.families.dfu.host import DfuHost  # noqa: E402
from station.families.dfu.sim.firmware import cortex_m_image, dfuse_image  # noqa: E402
from station.families.dfu.sim.kinds import STM32  # noqa: E402
from station.families.dfu.sim.remote import RemoteUsbBackend  # noqa: E402
from station.journal import Journal  # noqa: E402
from station.profiles import Profile, load_profile  # noqa: E402
from tests.bench.bench_batch import (BenchError, med, print_split, proc_cpu_seconds, spawn,  # noqa: E402
                                     stop_all_children, stop_child)

BOARDS = 8
BASE = 0x08000000
IMAGE_SIZE = 192 * 1024
IMAGE_NAME = "bench-stm32"
TARGETS = {  # key: (label, comparison, bound)
    "1": ("(1) station 8-board wall / 1-board wall", "<=", 1.10),
    "2": ("(2) station write B/s / pyfu-usb write B/s", ">=", 1.00),
}


# --- setup ---------------------------------------------------------------------------------------------------


def write_firmware_and_profile(folder: Path) -> tuple[bytes, Path, Path]:
    """(raw image, the raw .bin for pyfu-usb, the profile whose DfuSe file holds the same image)."""
    image = cortex_m_image(BASE, IMAGE_SIZE, IMAGE_NAME)
    raw = folder / "bench.bin"
    raw.write_bytes(image)
    dfu = dfuse_image(BASE, IMAGE_SIZE, IMAGE_NAME, STM32.vid, STM32.pid)
    (folder / "bench.dfu").write_bytes(dfu)
    profile = folder / "bench-stm32.toml"
    profile.write_text(f"""\
# Written by tests/bench/bench_dfu.py: flashing only.
[profile]
name = "bench STM32 {IMAGE_SIZE // 1024} KiB"
description = "DFU benchmark"

[[firmware]]
chip = "STM32"

[[firmware.images]]
file = "bench.dfu"
sha256 = "{hashlib.sha256(dfu).hexdigest()}"
""")
    return image, raw, profile


@dataclass
class Emulator:
    proc: subprocess.Popen
    registry: Path
    dump: Path
    locations: list[str]
    urls: list[str]

    def stop_and_check(self, image: bytes, boards: list[str]) -> None:
        """Stop it (it dumps its memories on SIGTERM) and check `boards` hold the image at BASE."""
        stop_child(self.proc)
        for location in boards:
            path = self.dump / f"{location}.alt0.bin"
            if not path.exists():
                raise BenchError(f"the emulator left no memory dump {path}")
            with open(path, "rb") as dump:
                if dump.read(len(image)) != image:
                    raise BenchError(f"{location}: the flash does not hold the image after the run")


def start_emulator(workdir: Path, name: str, count: int, timeout: float = 30.0) -> Emulator:
    registry, dump = workdir / f"registry-{name}", workdir / f"dump-{name}"
    registry.mkdir()
    log_path = workdir / f"sim-{name}.stderr.log"
    argv = [sys.executable, "-m", "station.cli", "sim", "dfu", "--kind", "stm32", "--count", str(count),
            "--throttle", "--registry", str(registry), "--dump", str(dump)]
    with open(log_path, "wb") as stderr:
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO)
    locations, urls = [], []
    deadline = time.monotonic() + timeout
    buffer = b""
    while len(urls) < count:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            stop_child(proc)
            raise BenchError(f"emulator did not report {count} boards ready within {timeout:g} s "
                             f"(exit {proc.returncode}); see {log_path}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 4096)
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            parts = line.decode().split()
            if len(parts) >= 4 and parts[0] == "ready":  # ready <location> <kind> <url> serial=... uid=...
                locations.append(parts[1])
                urls.append(parts[3])
    return Emulator(proc, registry, dump, locations, urls)  # registry files are written before `ready`


# --- measurements --------------------------------------------------------------------------------------------


@dataclass
class BatchRun:
    wall: float
    station_cpu: float
    emulator_cpu: float
    steps: dict[str, dict[str, float]] = field(default_factory=dict)  # board -> step -> seconds
    device: dict[str, float] = field(default_factory=dict)  # board -> whole-device seconds


def run_station(profile: Profile, journal: Journal, emulator: Emulator, only: list[str] | None) -> BatchRun:
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

    engine = Engine(profile, Discovery([SimPortSource(emulator.registry)]), journal, operator="bench",
                    station_id="bench", lot="bench")
    engine.subscribe(listen)

    async def batch():
        began = time.perf_counter()
        summary = await engine.run_batch(only=only)
        return summary, time.perf_counter() - began

    cpu0, emu0 = time.process_time(), proc_cpu_seconds(emulator.proc.pid)
    try:
        summary, wall = asyncio.run(batch())
    finally:
        engine.close()
    cpu1, emu1 = time.process_time(), proc_cpu_seconds(emulator.proc.pid)
    expect = len(only) if only else len(emulator.locations)
    if summary.failed or len(summary.passed) != expect:
        raise BenchError(f"station-{expect}: {len(summary.passed)} passed, failed: {summary.failed or 'none'}; "
                         f"step failures: {failures}")
    return BatchRun(wall, cpu1 - cpu0, emu1 - emu0, steps, device)


@dataclass
class WriteRun:
    total: float  # find/open + erase + program + leave
    write: float | None = None  # the station's DfuHost.write alone (pyfu-usb does not expose it)


def station_write(url: str, image: bytes) -> WriteRun:
    backend = RemoteUsbBackend(url)
    try:
        began = time.perf_counter()
        host = DfuHost(usb.core.find(backend=backend))
        opened = time.perf_counter()
        host.write(BASE, image)
        written = time.perf_counter()
        host.leave()
        ended = time.perf_counter()
    finally:
        backend.close()
    return WriteRun(ended - began, written - opened)


def pyfu_write(url: str, raw: Path) -> WriteRun:
    backend = RemoteUsbBackend(url)
    find = functools.partial(usb.core.find, backend=backend)
    try:
        # pyfu-usb draws a rich progress bar on stdout and warns about the board resetting on leave: keep both out
        with mock.patch.object(usb.core, "find", find), contextlib.redirect_stdout(io.StringIO()):
            began = time.perf_counter()
            pyfu_usb.download(str(raw), vid=STM32.vid, pid=STM32.pid, address=BASE)
            ended = time.perf_counter()
    finally:
        backend.close()
    return WriteRun(ended - began)


# --- report --------------------------------------------------------------------------------------------------


def verdict(key: str, value: float) -> str:
    _, op, bound = TARGETS[key]
    return "PASS" if (value <= bound if op == "<=" else value >= bound) else "MISS"


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of each measurement (>= 2)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (logs, journal, profile)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")

    signal.signal(signal.SIGTERM, _interrupt)  # unwind like Ctrl-C so the finally below stops the emulators
    logging.getLogger("pyfu_usb").setLevel(logging.ERROR)  # its "ignoring USB error when exiting DFU" warning
    tmp = Path(tempfile.mkdtemp(prefix="station-bench-dfu-"))
    journal: Journal | None = None
    started = time.perf_counter()
    runs_made = 0

    def emulator(count: int) -> Emulator:
        nonlocal runs_made
        runs_made += 1
        return start_emulator(tmp, str(runs_made), count)

    try:
        image, raw, profile_path = write_firmware_and_profile(tmp)
        profile = load_profile(profile_path)
        journal = Journal(tmp / "journal.sqlite3")
        print(f"bench: {BOARDS} emulated STM32F4 DFU boards (throttled), image {len(image)} bytes at 0x{BASE:08X} "
              f"(DfuSe file for the station, raw .bin for pyfu-usb {pyfu_usb_version()})")
        print(f"bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {args.rounds} rounds")

        batches: dict[str, list[BatchRun]] = {"station-8": [], "station-1": []}
        writes: dict[str, list[WriteRun]] = {"station": [], "pyfu-usb": []}
        for index in range(args.rounds):
            for kind in (["station-8", "station-1"] if index % 2 == 0 else ["station-1", "station-8"]):
                emu = emulator(BOARDS)
                only = None if kind == "station-8" else emu.locations[:1]
                run = run_station(profile, journal, emu, only)
                emu.stop_and_check(image, only or emu.locations)
                batches[kind].append(run)
                walls = sorted(run.device.values())
                print(f"round {index + 1} {kind:<10} wall {run.wall:6.2f} s  per device {walls[0]:.2f}-"
                      f"{walls[-1]:.2f} s  station CPU {run.station_cpu:5.2f} s  emulator CPU "
                      f"{run.emulator_cpu:5.2f} s", flush=True)
            for tool in (["station", "pyfu-usb"] if index % 2 == 0 else ["pyfu-usb", "station"]):
                emu = emulator(1)
                url = emu.urls[0]
                run = station_write(url, image) if tool == "station" else pyfu_write(url, raw)
                emu.stop_and_check(image, emu.locations)
                writes[tool].append(run)
                extra = f"  (DfuHost.write alone {run.write:6.3f} s)" if run.write is not None else ""
                print(f"round {index + 1} write {tool:<9} {run.total:6.3f} s -> {len(image) / run.total:8.0f} B/s"
                      f"{extra}", flush=True)

        m8 = med(r.wall for r in batches["station-8"])
        m1 = med(r.wall for r in batches["station-1"])
        station_s = med(r.total for r in writes["station"])
        pyfu_s = med(r.total for r in writes["pyfu-usb"])
        write_only = med(r.write for r in writes["station"])
        ratios = {"1": m8 / m1, "2": (len(image) / station_s) / (len(image) / pyfu_s)}

        print()
        print("absolute times (median of rounds; all rounds in brackets)")
        for kind, runs in batches.items():
            print(f"  {kind:<10} wall {med(r.wall for r in runs):6.3f} s  "
                  f"[{', '.join(f'{r.wall:.3f}' for r in runs)}]  station CPU "
                  f"{med(r.station_cpu for r in runs):.2f} s, emulator CPU {med(r.emulator_cpu for r in runs):.2f} s")
        print(f"  write, station  {station_s:6.3f} s -> {len(image) / station_s:8.0f} B/s  "
              f"[{', '.join(f'{r.total:.3f}' for r in writes['station'])}]  "
              "(find + open + erase + program + leave)")
        print(f"  write, pyfu-usb {pyfu_s:6.3f} s -> {len(image) / pyfu_s:8.0f} B/s  "
              f"[{', '.join(f'{r.total:.3f}' for r in writes['pyfu-usb'])}]  "
              "(find + claim + erase + program + jump address + leave)")
        print(f"  station DfuHost.write alone (erase + program) {write_only:6.3f} s -> "
              f"{len(image) / write_only:8.0f} B/s")
        print()
        print("whole-device wall time split (station, median seconds)")
        for title, kind in (("1 board", "station-1"), (f"{BOARDS} boards (every board of every run)", "station-8")):
            print_split(title, batches[kind], [r.wall for r in batches[kind]])
        print()
        print(f"{'summary':<48} {'median':>8}  {'target':>8}  result")
        for key, (label, op, bound) in TARGETS.items():
            print(f"{label:<48} {ratios[key]:8.3f}  {op} {bound:<5.2f}  {verdict(key, ratios[key])}")
        print(f"(total bench time {time.perf_counter() - started:.0f} s; ratios of the medians)")
        return 0 if all(verdict(k, v) == "PASS" for k, v in ratios.items()) else 1
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the emulators", file=sys.stderr)
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


def pyfu_usb_version() -> str:
    from importlib.metadata import version

    return version("pyfu-usb")


if __name__ == "__main__":
    sys.exit(main())
