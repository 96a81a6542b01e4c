"""`station sim esp`: serve emulated ESP boards until Ctrl-C / SIGTERM, one `ready ...` line per board."""
from __future__ import annotations

import itertools
import logging
import os

import click

from station.sim.cli import apply_faults, serve_until_stopped

from station.families.esp.sim.board import EspBoard, EspFaults
from station.families.esp.sim.chips import MIXED_ORDER, chip_facts, parse_flash_size
from station.families.esp.sim.server import EspSimServer


ACCESS_POINT_PSK_ENV = "STATION_WIFI_PSK"


def expand_chips(chips: tuple[str, ...]) -> list[str]:
    """`mixed` stands for esp32, esp32c3, esp8266; the boards cycle through the resulting list."""
    names: list[str] = []
    for chip in chips or ("esp32",):
        names.extend(MIXED_ORDER if chip.lower() == "mixed" else (chip_facts(chip).name,))
    return names


def build_boards(chips: list[str], count: int, flash_size: int, seed: int,
                 fault_specs: tuple[str, ...]) -> list[EspBoard]:
    boards = [EspBoard(chip, number, seed=seed, flash_size=flash_size)
              for number, chip in zip(range(1, count + 1), itertools.cycle(chips))]
    apply_faults(boards, fault_specs)
    return boards


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise click.BadParameter(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:4001", param_hint="--tcp")
    return host, int(port)


@click.command("esp")
@click.option("--chip", "chips", multiple=True, metavar="CHIP",
              help="esp32, esp32c3, esp8266 or mixed; repeat to cycle through several. Default esp32.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 256), help="Number of boards.")
@click.option("--tcp", "tcp", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="Address of the first board; the others take consecutive ports (port 0: any free port).")
@click.option("--pty", "use_pty", is_flag=True, help="Serve each board on a pty (its /dev/pts path) instead of TCP.")
@click.option("--baud-throttle", is_flag=True, help="Pace bytes to the line rate (115200, then CHANGE_BAUDRATE).")
@click.option("--registry", type=click.Path(file_okay=False), help="Directory of <location>.json files, one per board.")
@click.option("--flash-size", default="4MB", show_default=True, help="SPI flash size per board, e.g. 4MB, 16MB.")
@click.option("--fault", "fault_specs", multiple=True, metavar="I:NAME[=VALUE]",
              help=f"Inject a fault into board INDEX (from 1): {', '.join(EspFaults.KINDS)}.")
@click.option("--location-prefix", default="sim-1", show_default=True,
              help="Locations are <prefix>.1, <prefix>.2, ...; give each server its own prefix.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 255),
              help="Goes into the MACs so two servers' boards differ.")
@click.option("--access-point", "access_points", multiple=True, metavar="SSID",
              help=f"A Wi-Fi network in the boards' range, for firmware that joins by Improv; its passphrase is "
                   f"read from ${ACCESS_POINT_PSK_ENV} (what a profile's psk_env usually names).")
@click.option("-v", "--verbose", is_flag=True, help="Log protocol events to stderr.")
def esp(chips, count, tcp, use_pty, baud_throttle, registry, flash_size, fault_specs, location_prefix, seed,
        access_points, verbose) -> None:
    """Serve COUNT emulated ESP boards that the stock esptool accepts (socket:// URLs or ptys).

    Each TCP board also answers espsim:// on the same port (serial plus DTR/RTS, for the station: its
    resets reach the board's auto-reset circuit); the registry files carry those URLs.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        chip_names = expand_chips(chips)
        size = parse_flash_size(flash_size)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    host, port = parse_host_port(tcp)
    boards = build_boards(chip_names, count, size, seed, fault_specs)
    if access_points:
        psk = os.environ.get(ACCESS_POINT_PSK_ENV)
        if not psk:
            raise click.BadParameter(f"set ${ACCESS_POINT_PSK_ENV} to the networks' passphrase",
                                     param_hint="--access-point")
        for board in boards:
            board.access_points = {ssid: psk for ssid in access_points}
    server = EspSimServer(boards, host=host, base_port=port, transport="pty" if use_pty else "tcp",
                          throttle=baud_throttle, registry_dir=registry, location_prefix=location_prefix)

    server.start()
    try:
        # the url for the stock esptool CLI first (socket://, unframed), then what the station opens
        # (espsim://, the same TCP port with DTR/RTS) and what the registry files advertise
        serve_until_stopped([f"ready {location} {board.chip.name} {url} station={station_url} mac={board.mac_text}"
                             for location, board, url, station_url in zip(server.locations, server.boards,
                                                                           server.urls, server.station_urls)])
    finally:
        server.stop()
