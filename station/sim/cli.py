"""`station sim <family>`: each board family's emulator, served to other processes until interrupted."""
from __future__ import annotations

import signal
import threading

import click


class FamilyCommands(click.Group):
    """One subcommand per board family, looked up when used (a family's command imports its emulator)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from station.families import FAMILIES

        return sorted(FAMILIES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from station.families import FAMILIES

        return FAMILIES[name].sim_command() if name in FAMILIES else None


@click.group("sim", cls=FamilyCommands)
def sim() -> None:
    """Emulated boards, so the station can be exercised without hardware."""


def serve_until_stopped(ready_lines: list[str]) -> None:
    """Print one `ready …` line per board, then block until Ctrl-C or SIGTERM; the caller stops its server."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for line in ready_lines:
        click.echo(line)
    click.get_text_stream("stdout").flush()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def apply_faults(boards: list, specs: tuple[str, ...] | list[str]) -> None:
    """`--fault I:NAME[=VALUE]` for each spec: board I (from 1) gets `board.faults.with_fault(NAME, VALUE)`; a bad
    spec is a one-line usage error naming the fix."""
    for spec in specs:
        index_text, sep, rest = spec.partition(":")
        if not sep or not index_text.strip().isdigit():
            raise click.BadParameter(f"{spec!r}: expected I:NAME[=VALUE], e.g. 2:unplug_after_bytes=4096",
                                     param_hint="--fault")
        index = int(index_text)
        if not 1 <= index <= len(boards):
            raise click.BadParameter(f"{spec!r}: board {index}, but only {len(boards)} board(s)",
                                     param_hint="--fault")
        name, _, value = rest.partition("=")
        board = boards[index - 1]
        try:
            board.faults = board.faults.with_fault(name, value or None)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--fault") from None
