"""Registrations per second against the local Mosquitto broker: the station's batched dynsec client versus one
`mosquitto_ctrl` call per command, measured side by side in one run.

    .venv/bin/python tests/bench/bench_registration.py [--boards 1000] [--sample 50] [--full]

Each side gets a fresh broker. The batched client registers all boards in one round trip (createRole with its
four ACLs inline + createClient with its role inline: 2 commands per board). The baseline registers each board
the way the mosquitto_ctrl man page shows it: createRole, addRoleACL x4, createClient, addClientRole, one
process per command (7 per board). 1,000 boards that way take minutes, so by default the baseline runs
`--sample` boards and its rate is extrapolated (`--full` runs them all). The sample starts from an empty
broker, where each of Mosquitto's per-command JSON saves is cheapest, so the extrapolation flatters the
baseline. A third line shows the same boards going through the outbox (journal + MosquittoRegistrar).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from station.cloud.broker import BrokerPorts, LocalBroker  # noqa: E402
from station.cloud.dynsec import DEVICE_ACL_TYPES, device_topic, role_name  # noqa: E402
from station.cloud.outbox import DELIVERED, Outbox  # noqa: E402
from station.cloud.registrar import DeviceRegistration  # noqa: E402
from tests.test_cloud_pki import free_port, make_ca, reachable_tempdir  # noqa: E402


def start_broker(root: Path, name: str, ca) -> LocalBroker:
    broker = LocalBroker(root / name, ca, BrokerPorts(admin=free_port(), devices=free_port(),
                                                      devices_host="127.0.0.1"))
    broker.up()
    return broker


def broker_cpu(broker: LocalBroker) -> float:
    """CPU seconds the broker process has used (user + system)."""
    fields = Path(f"/proc/{broker.status().pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batched(broker: LocalBroker, names: list[str], cpu: list | None = None) -> float:
    with broker.admin_client(timeout=120) as admin:
        before = len(admin.list_clients())  # connected and warm: time the registrations only
        cpu_before = broker_cpu(broker)
        start = time.perf_counter()
        outcomes = admin.register_devices([(n, "devices") for n in names])
        elapsed = time.perf_counter() - start
        if cpu is not None:
            cpu.append(broker_cpu(broker) - cpu_before)
        assert all(o.error is None and o.changed for o in outcomes)
        assert len(admin.list_clients()) == before + len(names)
    return elapsed


def per_command_ctrl(broker: LocalBroker, names: list[str], workdir: Path, expect: int | None = None) -> float:
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl is None:
        raise SystemExit("mosquitto_ctrl is not installed (Debian package mosquitto)")
    # the admin password stays off the command line: mosquitto_ctrl reads $XDG_CONFIG_HOME/mosquitto_ctrl
    # (2.0.11 ignores `-o FILE`: it parses the option after loading the options file)
    options = workdir / "mosquitto_ctrl"
    fd = os.open(options, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"-h {broker.ports.admin_host}\n-p {broker.ports.admin}\n-u admin\n-P {broker.admin_password()}\n")
    base = [ctrl, "dynsec"]
    env = dict(os.environ, XDG_CONFIG_HOME=str(workdir))
    start = time.perf_counter()
    for name in names:
        role, topic = role_name(name), device_topic(name)
        calls = [["createRole", role]] + [["addRoleACL", role, t, topic, "allow"] for t in DEVICE_ACL_TYPES] + \
                [["createClient", name], ["addClientRole", name, role]]
        for args in calls:
            # createClient asks for a password on stdin; an empty answer means "no password"
            done = subprocess.run(base + args, input="\n\n", capture_output=True, text=True,
                                  env=env)
            if done.returncode != 0 or "Error" in done.stdout + done.stderr:
                raise SystemExit(f"mosquitto_ctrl {' '.join(args)} failed: {done.stdout}{done.stderr}")
    elapsed = time.perf_counter() - start
    with broker.admin_client() as admin:
        assert len(admin.list_clients()) == (expect or len(names)) + 1
        assert admin.get_client(names[0])["roles"] == [{"rolename": role_name(names[0])}]
    return elapsed


def through_outbox(broker: LocalBroker, names: list[str], journal: Path) -> float:
    async def run() -> float:
        outbox = Outbox(journal)
        start = time.perf_counter()
        for n in names:
            outbox.enqueue(f"board-{n}", "mosquitto", DeviceRegistration(f"board-{n}", common_name=n))
        stop = asyncio.Event()
        runner = asyncio.create_task(outbox.run([broker.registrar()], stop))
        done = asyncio.Event()
        outbox.on_update = lambda u: done.set() if outbox.counts()[DELIVERED] == len(names) else None
        await done.wait()
        elapsed = time.perf_counter() - start
        stop.set()
        await runner
        outbox.close()
        return elapsed

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=50, help="boards registered with mosquitto_ctrl, twice")
    parser.add_argument("--full", action="store_true", help="register every board with mosquitto_ctrl too")
    args = parser.parse_args()
    n = args.boards
    sample = min(args.sample, n // 2)
    names = [f"bench-{i:05d}" for i in range(n)]

    root = reachable_tempdir()
    ca = make_ca("Bench")
    brokers: list[LocalBroker] = []

    def fresh(name: str) -> LocalBroker:
        brokers.append(start_broker(root, name, ca))
        return brokers[-1]

    try:
        cpu: list[float] = []
        t_batch = batched(fresh("batched"), names, cpu)
        t_batch_small = batched(fresh("batched-small"), names[:sample])
        if args.full:
            t_ctrl = per_command_ctrl(fresh("ctrl"), names, root)
            ctrl_how = f"all {n} boards measured"
        else:
            # the broker's cost per command grows with what it holds, so sample both ends and integrate:
            # the first `sample` boards on an empty broker, the last `sample` on one holding n - sample
            b2 = fresh("ctrl")
            t_first = per_command_ctrl(b2, names[:sample], root)
            batched(b2, names[sample:n - sample])
            t_last = per_command_ctrl(b2, names[n - sample:], root, expect=n)
            t_ctrl = n * (t_first + t_last) / (2 * sample)
            ctrl_how = (f"{sample} boards on an empty broker at {sample / t_first:.1f}/s and {sample} on a full one "
                        f"at {sample / t_last:.1f}/s, averaged")
        t_outbox = through_outbox(fresh("outbox"), names, root / "journal.sqlite3")
    finally:
        for b in brokers:
            b.down()
        shutil.rmtree(root, ignore_errors=True)

    print(f"boards: {n}")
    print(f"batched dynsec client (2 commands/board, one round trip): {t_batch:7.2f} s  {n / t_batch:7.0f} boards/s")
    print(f"mosquitto_ctrl (7 calls/board, one process each)        : {t_ctrl:7.2f} s  {n / t_ctrl:7.1f} boards/s")
    print(f"    ({ctrl_how})")
    print(f"outbox end to end (journal + MosquittoRegistrar)        : {t_outbox:7.2f} s  {n / t_outbox:7.0f} boards/s")
    print(f"ratio batched / mosquitto_ctrl: {t_ctrl / t_batch:.1f}x for {n} boards (target: at least 10x)")
    if not args.full:
        print(f"ratio on an empty broker, first {sample} boards: {t_first / t_batch_small:.0f}x "
              f"({sample / t_batch_small:.0f} vs {sample / t_first:.1f} boards/s)")
    print(f"broker CPU during the batched run: {cpu[0]:.2f} s of {t_batch:.2f} s: the broker rewrites its whole "
          f"dynsec JSON after every changing command, so a registry of {n} costs it O(n^2)")


if __name__ == "__main__":
    main()
