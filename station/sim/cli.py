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
