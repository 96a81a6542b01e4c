"""`station sim particle`: serve emulated Spark Cores and Photons until Ctrl-C / SIGTERM.

One `ready …` line per board. While it runs, a person's hands are commands on stdin, one per line, each answered
with one line on stdout ("ok …" or "error: …"):

    reset LOCATION                  press and release RESET
    mode LOCATION SECONDS           hold MODE while running (3 s: listening mode, 10 s: also clear Wi-Fi)
    dfu LOCATION                    hold MODE, tap RESET, hold 3 s (DFU mode)
    unplug LOCATION | plug LOCATION the cable
    led LOCATION                    what the LED shows, and the mode
"""
from __future__ import annotations

import itertools
import logging
import sys
import threading
from pathlib import Path

import click

from station.families.particle.sim.board import HOLD_FOR_DFU_S, ParticleBoard, ParticleFaults
from station.families.particle.sim.console import AES, AES_TKIP, TKIP, UNSEC, WEP, WPA, WPA2
from station.families.particle.sim.kinds import KINDS
from station.families.particle.sim.server import ParticleSimServer
from station.sim.cli import apply_faults, serve_until_stopped

MIXED_ORDER = ("core", "photon")
SECURITY = {"open": (UNSEC, 0), "wep": (WEP, 0), "wpa": (WPA, TKIP), "wpa2": (WPA2, AES),
            "wpa2-mixed": (WPA2, AES_TKIP)}


def parse_network(text: str) -> tuple[str, tuple[int, int]]:
    ssid, sep, security = text.rpartition(":")
    if not sep or not ssid or security.lower() not in SECURITY:
        raise click.BadParameter(f"{text!r}: expected SSID:SECURITY with SECURITY one of {', '.join(SECURITY)}",
                                 param_hint="--network")
    return ssid, SECURITY[security.lower()]


def build_boards(kind: str, count: int, blank: bool, visible: dict[str, tuple[int, int]],
                 fault_specs: tuple[str, ...], throttle: bool = False) -> list[ParticleBoard]:
    kinds = MIXED_ORDER if kind == "mixed" else (kind,)
    numbers = {k: itertools.count() for k in KINDS}  # each kind's boards get that kind's UID sequence
    boards = [ParticleBoard(k, next(numbers[k]), blank=blank, visible=visible, throttle=throttle)
              for k, _ in zip(itertools.cycle(kinds), range(count))]
    apply_faults(boards, fault_specs)
    return boards


def dump_memories(server: ParticleSimServer, directory: Path) -> None:
    """One file per board and alt setting: <location>.alt<N>.bin."""
    directory.mkdir(parents=True, exist_ok=True)
    for location, board in zip(server.locations, server.boards):
        for alt in range(len(board.dfu.memories)):
            (directory / f"{location}.alt{alt}.bin").write_bytes(board.dfu.snapshot(alt))


def run_command(server: ParticleSimServer, line: str) -> str:
    """One stdin command (see the module docstring); the answer line."""
    words = line.split()
    if not words:
        return ""
    verb, args = words[0], words[1:]
    try:
        if verb in ("reset", "dfu", "unplug", "plug", "led") and len(args) == 1:
            location = args[0]
            index = server.index(location)
            if verb == "reset":
                server.press_reset(location)
            elif verb == "dfu":
                server.hold_mode(location, HOLD_FOR_DFU_S, tap_reset=True)
            elif verb == "unplug":
                server.unplug(index)
            elif verb == "plug":
                server.plug(index)
        elif verb == "mode" and len(args) == 2:
            location = args[0]
            server.hold_mode(location, float(args[1]))
        else:
            return f"error: {line.strip()!r}: expected reset|dfu|unplug|plug|led LOCATION or mode LOCATION SECONDS"
    except KeyError as e:
        return f"error: {e.args[0]}; the locations are {', '.join(server.locations)}"
    except ValueError:
        return f"error: {args[1]!r} is not a number of seconds"
    board = server.board(location)
    return f"ok {location} mode={board.mode} led={board.led.replace(' ', '-')}"


def answer_stdin(server: ParticleSimServer) -> None:
    for line in sys.stdin:
        answer = run_command(server, line)
        if answer:
            click.echo(answer)
            sys.stdout.flush()


@click.command("particle")
@click.option("--kind", type=click.Choice([*KINDS, "mixed"]), default="photon", show_default=True,
              help="Board kind; mixed cycles core, photon.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 127), help="Number of boards.")
@click.option("--registry", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of <location>.json files, one per plugged board, in its current personality.")
@click.option("--dump", type=click.Path(file_okay=False, path_type=Path),
              help="On exit, write every board's memories here, one file per alt setting.")
@click.option("--fault", "fault_specs", multiple=True, metavar="I:NAME[=VALUE]",
              help=f"Inject a fault into board I (from 1): {', '.join(ParticleFaults.NAMES)}.")
@click.option("--network", "networks", multiple=True, metavar="SSID:SECURITY",
              help=f"A Wi-Fi network in range ({', '.join(SECURITY)}); a Photon's scan finds it.")
@click.option("--blank", is_flag=True, help="Boards without firmware or keys: they start in DFU mode.")
@click.option("--pty", "use_pty", is_flag=True,
              help="Also offer each board's console on a pty (bytes only, no baud switches), for particle-cli.")
@click.option("--throttle/--no-throttle", default=False, show_default=True,
              help="In DFU mode, erase and program take as long as on the real parts.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port of the USB serials (0: any); the DFU side takes any free port.")
@click.option("-v", "--verbose", is_flag=True, help="Log server events to stderr.")
def particle(kind, count, registry, dump, fault_specs, networks, blank, use_pty, throttle, host, port,
             verbose) -> None:
    """Serve COUNT emulated Spark Cores / Photons: particlesim:// USB serials and usbsim:// DFU bootloaders.

    Each board keeps its location (sim-3.N) and swaps its registry entry when it re-enumerates. Lines on stdin
    are a person's hands: `reset LOC`, `mode LOC SECONDS` (hold MODE), `dfu LOC` (hold MODE, tap RESET),
    `unplug LOC`, `plug LOC`, `led LOC`; each is answered with one line.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    visible = dict(parse_network(n) for n in networks)
    boards = build_boards(kind, count, blank, visible, fault_specs, throttle)
    server = ParticleSimServer(boards, registry, host=host, port=port)
    try:
        server.start()
    except OSError as e:
        raise click.ClickException(f"cannot serve on {host}:{port}: {e.strerror}; pick another --port") from None
    try:
        ptys = [f" pty={server.open_pty(i)}" if use_pty else "" for i in range(len(boards))]
        threading.Thread(target=answer_stdin, args=(server,), name="particle-sim-stdin", daemon=True).start()
        serve_until_stopped([f"ready {location} {board.kind.name} {server.registry_entry(i)['url']} mode={board.mode} "
                             f"device_id={board.device_id}{pty}"
                             for i, (location, board, pty) in enumerate(zip(server.locations, server.boards, ptys))])
    finally:
        server.stop()
        if dump is not None:
            dump_memories(server, dump)
