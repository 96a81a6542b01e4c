"""`station sim dfu`: serve emulated DFU devices until Ctrl-C / SIGTERM, one `ready ...` line per device."""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import click

from station.sim.cli import apply_faults, serve_until_stopped

from station.families.dfu.sim.device import DfuDevice, DfuFaults, make_device
from station.families.dfu.sim.kinds import KINDS, MIXED_ORDER
from station.families.dfu.sim.server import DfuSimServer


def build_devices(kind: str, count: int, throttle: bool, fault_specs: tuple[str, ...]) -> list[DfuDevice]:
    kinds = MIXED_ORDER if kind == "mixed" else (kind,)
    numbers = {k: itertools.count() for k in KINDS}  # each kind's instances get that kind's UID sequence
    devices = [make_device(k, next(numbers[k]), throttle=throttle)
               for k, _ in zip(itertools.cycle(kinds), range(count))]
    apply_faults(devices, fault_specs)
    return devices


def dump_memories(server: DfuSimServer, directory: Path) -> None:
    """One file per device and alt: <location>.alt<N>.bin."""
    directory.mkdir(parents=True, exist_ok=True)
    for location, device in zip(server.locations, server.devices):
        for alt in range(len(device.memories)):
            (directory / f"{location}.alt{alt}.bin").write_bytes(device.snapshot(alt))


@click.command("dfu")
@click.option("--kind", type=click.Choice([*KINDS, "mixed"]), default="stm32", show_default=True,
              help="Device kind; mixed cycles stm32, core, photon.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 127), help="Number of devices.")
@click.option("--registry", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of <location>.json files, one per plugged device.")
@click.option("--dump", type=click.Path(file_okay=False, path_type=Path),
              help="On exit, write every device's memories here, one file per alt setting.")
@click.option("--fault", "fault_specs", multiple=True, metavar="I:NAME[=VALUE]",
              help=f"Inject a fault into device I (from 1): {', '.join(DfuFaults.NAMES)}.")
@click.option("--throttle/--no-throttle", default=False, show_default=True,
              help="Erase and program take as long as on the real parts.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="TCP port (0: any).")
@click.option("-v", "--verbose", is_flag=True, help="Log server events to stderr.")
def dfu(kind, count, registry, dump, fault_specs, throttle, host, port, verbose) -> None:
    """Serve COUNT emulated USB DFU devices (STM32 ROM, Spark Core, Photon) as usbsim:// urls.

    The station finds them through the registry directory; pyusb code opens a url with
    station.families.dfu.sim.remote.open_device.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    devices = build_devices(kind, count, throttle, fault_specs)
    server = DfuSimServer(devices, registry, host=host, port=port)
    try:
        server.start()
    except OSError as e:
        raise click.ClickException(f"cannot serve on {host}:{port}: {e.strerror}; pick another --port") from None
    try:
        serve_until_stopped([f"ready {location} {device.kind.name} {url} serial={device.serial} uid={device.uid.hex()}"
                             for location, device, url in zip(server.locations, server.devices, server.urls)])
    finally:
        server.stop()
        if dump is not None:
            dump_memories(server, dump)
