#!/usr/bin/env python3
"""UI benchmark: is the window responsive while 16 ports are busy, how fast does it open, how big is it?

    python tests/bench/bench_ui.py [--boards 16] [--batches 2] [--in-process-boards]

Not a pytest test. Numbers come from one run, side by side (the machine is noisy; compare the idle and busy
lines of the same run, not runs on different days).

Setup
  * `station sim esp --chip mixed --count 16 --baud-throttle --registry DIR` in a separate process (real boards
    cost the station no CPU; --in-process-boards serves them from this process instead, the harsher case).
  * The real window (ui.app.Station) on those boards, profile demo-mixed (identity from an ephemeral CA),
    offscreen unless a display is set; the window is shown, so every tile really paints.

Measurements
  stall probe   a 10 ms QTimer (PreciseTimer); each tick records how late it fired: max and 99th percentile,
                first while the window idles with 16 boards on the hub, then while `--batches` batches run
  first paint   a fresh Python process imports the station, builds the window and shows it; time from
                process start to the first Paint event of the window (median of 3)
  memory        peak resident set (getrusage maxrss) of this process, and of the first-paint processes

Targets: longest stall <= 100 ms, p99 <= 30 ms, first paint <= 2 s.
Exit status: 0 all targets met, 1 a target missed, 2 a run failed (a board did not pass) or setup failed.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TARGET_STALL_MS, TARGET_P99_MS, TARGET_PAINT_S = 100.0, 30.0, 2.0
PSK_ENV = "STATION_DEMO_WIFI_PSK"

FIRST_PAINT = r"""
import os, sys, time, tempfile
t0 = float(os.environ["BENCH_T0"])
sys.path.insert(0, os.environ["BENCH_REPO"])
from pathlib import Path
from ui.app import Station, run
from station.discovery.sim_ports import SimPortSource
from PySide6.QtCore import QEvent, QObject, QTimer

class FirstPaint(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window, self.seen = window, False
    def eventFilter(self, obj, event):
        if not self.seen and event.type() == QEvent.Type.Paint and (obj is self.window or self.window.isAncestorOf(obj)):
            self.seen = True
            print(f"FIRST_PAINT {time.time() - t0:.4f}", flush=True)
            QTimer.singleShot(0, self.close)
        return False
    def close(self):
        self.window.ask = False
        self.window.close()

data = tempfile.mkdtemp(prefix="bench-ui-paint-")
def make():
    station = Station(Path(data), [SimPortSource(Path(data) / "registry")], operator="bench", station_id="bench")
    from PySide6.QtWidgets import QApplication
    QApplication.instance().installEventFilter(FirstPaint(station.window))
    return station
sys.exit(run(make))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def first_paint_seconds(repeats: int = 3) -> list[float]:
    times = []
    for _ in range(repeats):
        env = {**os.environ, "BENCH_T0": repr(time.time()), "BENCH_REPO": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", FIRST_PAINT], env=env, capture_output=True, text=True,
                              timeout=60)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FIRST_PAINT")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"first-paint run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        times.append(float(line.split()[1]))
    return times


class StallProbe:
    """A 10 ms timer that notes how late each tick came (the loop was busy with something else)."""

    def __init__(self, interval_ms: int = 10):
        from PySide6.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000
        self.late: list[float] = []
        self._last = 0.0
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def start(self) -> None:
        self.late = []
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> list[float]:
        self.timer.stop()
        return self.late

    def _tick(self) -> None:
        now = time.perf_counter()
        self.late.append(max(0.0, now - self._last - self.interval) * 1000)
        self._last = now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=16)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--in-process-boards", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault(PSK_ENV, "bench-passphrase-16")

    from station.families.esp.sim.fleet import demo_fleet
    from station.discovery.sim_ports import SimPortSource
    from station.profile_library import shipped_profiles_dir
    from ui.app import Station, run
    from ui.demo import configure_demo, prepare_layout
    from ui.state import Phase

    print(f"platform: {os.environ.get('QT_QPA_PLATFORM') or 'display ' + os.environ.get('DISPLAY', '')}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    try:
        paints = first_paint_seconds()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"first paint: FAILED: {exc}")
        return 2
    child_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    work = tempfile.TemporaryDirectory(prefix="bench-ui-")
    registry = Path(work.name) / "registry"
    registry.mkdir()
    sim = None
    server = None
    if args.in_process_boards:
        from station.families.esp.sim.server import EspSimServer
        server = EspSimServer(demo_fleet(args.boards), registry_dir=registry, throttle=True).start()
    else:
        sim = subprocess.Popen([sys.executable, "-m", "station.cli", "sim", "esp", "--chip", "mixed", "--count",
                                str(args.boards), "--baud-throttle", "--registry", str(registry)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: dict = {}

    def make() -> Station:
        station = Station(Path(work.name) / "data", [SimPortSource(registry)],
                          profile=shipped_profiles_dir() / "demo-mixed.toml", operator="bench", station_id="bench")
        configure_demo(station)
        station.window.resize(1600, 1000)
        return station

    async def scenario(station: Station) -> None:
        b, c = station.bridge, station.controller
        try:
            deadline = time.monotonic() + 20
            while sum(t.present for t in b.tiles.values()) < args.boards:
                if time.monotonic() > deadline:
                    raise RuntimeError("the emulated boards did not show up")
                await asyncio.sleep(0.1)
            prepare_layout(station, sorted(b.tiles))
            probe = StallProbe()
            probe.start()
            await asyncio.sleep(args.idle_seconds)
            result["idle"] = probe.stop()
            events0 = b.events_seen
            probe.start()
            t0 = time.monotonic()
            for _ in range(args.batches):
                if not await c.start_batch():
                    raise RuntimeError("the batch did not start")
                while c.busy:
                    await asyncio.sleep(0.05)
                bad = [k for k, t in b.tiles.items() if t.phase is not Phase.PASS]
                if bad:
                    raise RuntimeError(f"boards did not pass: {', '.join(bad)}: "
                                       f"{[b.tiles[k].reason for k in bad]}")
            result["busy"] = probe.stop()
            result["busy_seconds"] = time.monotonic() - t0
            result["events"] = b.events_seen - events0
            result["paints"] = sum(t.paints for t in station.window.grid.tiles.values())
        except Exception as exc:  # noqa: BLE001 - reported, exit 2
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            station.window.ask = False
            station.window.close()

    try:
        run(make, scenario)
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:
                sim.kill()
        if server is not None:
            server.stop()
        work.cleanup()
    if "error" in result:
        print(f"run FAILED: {result['error']}")
        return 2

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    idle, busy = result["idle"], result["busy"]
    print(f"boards: {args.boards} ({'in this process' if server else 'separate emulator process'}), "
          f"{args.batches} batches in {result['busy_seconds']:.1f} s, {result['events']} engine events "
          f"({result['events'] / result['busy_seconds']:.0f}/s), {result['paints']} tile paints")
    print(f"stall probe (10 ms timer)   idle: max {max(idle):6.1f} ms  p99 {percentile(idle, 99):5.1f} ms  "
          f"({len(idle)} ticks)")
    print(f"                            busy: max {max(busy):6.1f} ms  p99 {percentile(busy, 99):5.1f} ms  "
          f"({len(busy)} ticks; target max <= {TARGET_STALL_MS:g}, p99 <= {TARGET_P99_MS:g})")
    print(f"first paint: median {statistics.median(paints):.2f} s  (runs: "
          f"{', '.join(f'{p:.2f}' for p in paints)}; target <= {TARGET_PAINT_S:g} s)")
    print(f"peak memory: {rss_mb:.0f} MB this process (window + engine, 16 ports busy); "
          f"{child_rss_mb:.0f} MB a freshly opened window")
    ok = max(busy) <= TARGET_STALL_MS and percentile(busy, 99) <= TARGET_P99_MS and \
        statistics.median(paints) <= TARGET_PAINT_S
    print("targets: " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
