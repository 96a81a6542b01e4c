"""`station sim <family>`: each board family's emulator, served to other processes until interrupted."""
from __future__ import annotations

import click


@click.group("sim")
def sim() -> None:
    """Emulated boards, so the station can be exercised without hardware."""


def add_family_commands() -> None:
    from station.families import FAMILIES

    for family in FAMILIES.values():
        sim.add_command(family.sim_command())


add_family_commands()
