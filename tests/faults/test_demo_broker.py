"""The demo's Mosquitto: started with none of the station's secrets in its environment, it dies with the station
however the station ends (`kill -9` included) and takes its key and admin password with it; what an earlier run
left anyway is cleaned up when the next demo broker starts."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from station import services
from station.cloud.broker import BrokerPorts, LocalBroker, free_loopback_port, issuing_ca_from
from station.identity.ca import StationCA
from tests.faults.bench import ROOT

CA = StationCA.ephemeral("Demo")
SECRETS = {"STATION_CA_PASSPHRASE": "ca-passphrase-never-in-the-broker", "STATION_WIFI_PSK": "psk-never-there"}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if item)


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    """Wait for a process that is not our child to end (its pidfd becomes readable); False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_the_broker_gets_none_of_the_stations_environment(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    with services.demo_broker(CA) as broker:
        pid = broker.status().pid
        assert pid is not None
        env = environ(pid)
    assert not [name for name in env if name.startswith("STATION_")]
    assert not any(value in "".join(env.values()) for value in SECRETS.values())


DEMO = """
import sys
from station import services
from station.identity.ca import StationCA
with services.demo_broker(StationCA.ephemeral("Demo")) as broker:
    print(broker.status().pid, broker.state_dir.parent, flush=True)
    sys.stdin.read()  # until killed
"""


def test_a_killed_demo_takes_its_broker_and_its_secrets_with_it():
    proc = subprocess.Popen([sys.executable, "-c", DEMO], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, **SECRETS})
    assert proc.stdout is not None
    pid_text, folder_text = proc.stdout.readline().split()
    broker_pid, folder = int(pid_text), Path(folder_text)
    assert (folder / "cloud" / "admin-password").exists()
    tether = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                  and _cmdline(p).endswith(f"tether.py {folder} {folder / 'cloud'}"))
    assert not [name for name in environ(tether) if name.startswith("STATION_")]

    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert wait_gone(broker_pid) and wait_gone(tether)
    assert not folder.exists()  # server key, admin password, the broker's files: gone


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_the_next_demo_cleans_up_what_an_earlier_run_left():
    """A leftover as a `kill -9` of the station and its tether leaves it: the folder of a station that is gone,
    its broker still running (adopted by init); and one whose station is still running, left alone."""
    left = _leftover(owner="1 0")  # PID 1 with another start time: not the station that made it
    mine = _leftover(owner=services._process_identity(os.getpid()))
    try:
        left_pid = left.status().pid
        assert left_pid is not None
        cleaned = services.clean_stale_demo_folders()
        assert left.state_dir.parent in cleaned and mine.state_dir.parent not in cleaned
        assert wait_gone(left_pid) and not left.state_dir.parent.exists()
        assert mine.status().running
    finally:
        for broker in (left, mine):
            broker.down()
            services.shutil.rmtree(broker.state_dir.parent, ignore_errors=True)


def _leftover(owner: str) -> LocalBroker:
    folder = Path(tempfile.mkdtemp(prefix=services.DEMO_FOLDER_PREFIX, dir=services.DEMO_FOLDER_PARENT))
    os.chmod(folder, 0o711)
    (folder / services.OWNER_FILE).write_text(owner + "\n")
    broker = LocalBroker(folder / "cloud", issuing_ca_from(CA),
                         BrokerPorts(admin=free_loopback_port(), devices=free_loopback_port(), devices_host="127.0.0.1"))
    broker.up()
    return broker
