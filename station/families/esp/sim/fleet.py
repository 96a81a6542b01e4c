"""A mixed bench of emulated boards, as the demo and the tests plug them in."""
from __future__ import annotations

from station.families.esp.sim.board import EspBoard, EspFaults

MIX = ("esp32", "esp32c3", "esp8266")


def demo_fleet(count: int, faults: bool = False, seed: int = 0) -> list[EspBoard]:
    """`count` boards cycling ESP32, ESP32-C3, ESP8266. With `faults`, the last one vanishes mid-flash."""
    boards = [EspBoard(MIX[i % len(MIX)], i + 1, seed=seed) for i in range(count)]
    if faults and boards:
        boards[-1].faults = EspFaults(unplug_after_bytes=96 * 1024)
    return boards
