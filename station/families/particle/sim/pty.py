"""A board's run-time USB serial as a pty (`/dev/pts/N`), for programs that open only device paths (particle-cli).

The pty carries bytes only: what a program writes reaches the board's console while its firmware runs, and the
board's answers come back. A pty has no line coding a device could see, so the magic baud rates and the
re-enumerations they cause are for particlesim:// hosts; the pty stays where it is while the board is away.
The emulator keeps the slave open itself, so a program may open and close it at will without the master
reading end-of-file in between.
"""
from __future__ import annotations

import os
import select
import threading
import tty

from station.families.particle.sim.board import ParticleBoard


class PtyConsole:
    def __init__(self, board: ParticleBoard):
        self.board = board
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or line editing before the opener configures the port
        self.path = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"{board!r} pty", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._master, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            data = os.read(self._master, 1 << 12)
            answer = self.board.receive(self.board.run_enumeration, data)
            if answer:
                os.write(self._master, answer)

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            os.close(fd)
