"""The demo broker's tether: a tiny process that stops the demo's Mosquitto and deletes its folder (server key,
admin password) once the station that started it is gone, however it went (exit, crash, `kill -9`).

The station holds the write end of a pipe whose read end is this process's stdin; the kernel closes it when the
station dies, and the read here returns EOF. A PR_SET_PDEATHSIG on the broker would not do: it fires when the
*thread* that started the broker ends (the window starts it from a worker thread), and it is cleared when
Mosquitto drops from root to its own user.

Run as a script with `python -I tether.py FOLDER STATE_DIR`: it imports nothing from the station, so it needs
no environment at all (it gets none of the station's secrets).
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import sys

STOP_TIMEOUT = 10.0


def broker_pid(state_dir: str) -> int | None:
    """The PID in STATE_DIR/broker.pid if it is a live Mosquitto started with STATE_DIR's config."""
    try:
        with open(os.path.join(state_dir, "broker.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if os.path.join(state_dir, "broker", "mosquitto.conf").encode() in cmdline else None


def stop_broker(state_dir: str) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; waited for through a pidfd (no polling)."""
    pid = broker_pid(state_dir)
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([pidfd], [], [], STOP_TIMEOUT)[0]:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], STOP_TIMEOUT)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def main(folder: str, state_dir: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the station; its end is what counts here
    while os.read(0, 4096):
        pass
    stop_broker(state_dir)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
