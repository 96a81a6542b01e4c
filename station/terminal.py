"""Terminal front end: turns engine events into one readable line per thing that happened, per port."""
from __future__ import annotations

import sys
import time
from typing import IO

from station import events as ev
from station.text import one_line


class TerminalReport:
    PROGRESS_EVERY = 25  # percent between progress lines, so 24 ports don't flood the terminal

    def __init__(self, out: IO[str] = sys.stdout, verbose: bool = False):
        self.out = out
        self.verbose = verbose
        self._shown: dict[str, int] = {}
        self._t0 = time.monotonic()

    def __call__(self, event: ev.Event) -> None:
        line = self._format(event)
        if line:  # events carry what boards said: one line each, so no board can print a line of its own
            self.out.write(f"{time.monotonic() - self._t0:7.1f}s {one_line(line, limit=2000)}\n")
            self.out.flush()

    def _format(self, e: ev.Event) -> str | None:
        match e:
            case ev.BatchStarted():
                ports = ", ".join(e.ports) if e.ports else "every allowed board that is plugged in"
                return f"batch {e.batch_id} ({e.mode}, {e.profile}): {ports}"
            case ev.PortAppeared():
                return f"[{e.port.key}] port appeared: {e.port.description or e.port.url} ({e.port.usb_id})"
            case ev.PortGone():
                return f"[{e.key}] port gone"
            case ev.StepStarted() if e.attempt > 1:
                return f"[{e.key}] {e.step}: attempt {e.attempt}"
            case ev.Progress():
                pct = e.percent - e.percent % self.PROGRESS_EVERY
                if pct <= self._shown.get(e.key, -1) or e.done == 0:
                    return None
                self._shown[e.key] = pct
                return f"[{e.key}] {e.step} {pct:3d} %  {e.rate / 1024:6.1f} KiB/s"
            case ev.StepDone():
                self._shown.pop(e.key, None)
                mark = "ok " if e.ok else "ERR"
                return f"[{e.key}] {mark} {e.step} ({e.seconds:.1f} s): {e.detail}"
            case ev.OperatorPrompt():
                return f"[{e.key}] NEEDS YOU: {e.prompt} (then the station carries on by itself)"
            case ev.DeviceDone():
                verdict = "PASS" if e.ok else f"STOPPED: {e.reason}" if e.interrupted else f"FAIL: {e.reason}"
                return f"[{e.key}] {verdict}  ({e.seconds:.1f} s)"
            case ev.RegistrationChanged():
                return f"[{e.key or e.device_id[:12]}] {e.detail}"
            case ev.BatchDone():
                return f"batch {e.batch_id} done: {e.passed} passed, {e.failed} failed"
            case ev.Log() if self.verbose or e.level in ("warning", "error"):
                where = f"[{e.key}] " if e.key else ""
                return f"{where}{e.level}: {e.message}"
        return None
