"""The local-cloud guide's per-board commands, replayed, leave a Spark Core exactly as the station does.

The guide (spark-server README, spark-cli `keys server` / `keys doctor`, PROTOCOLS §5.5) flashes each Core with

    dfu-util -d 1d50:607f -a 1 -s 0x00001000 -D server-key.der     # `spark keys server key.pub.pem 127.0.0.1`
    dfu-util -d 1d50:607f -a 1 -s 0x00002000 -D device-key.der     # `openssl genrsa 1024` as PKCS#1 DER
    dfu-util -d 1d50:607f -a 0 -s 0x08005000:leave -D tinker.bin

Here a second emulated Core gets those three downloads through the third-party pyfu-usb: its DfuSe requests for
the two alt-1 writes (erase the 4 KiB sectors the file touches, then wTransferSize blocks, as dfu-util does) and
its whole `download()` for the application. The device key file is the key the station made (read from the first
Core's slot, as `openssl` would have written it); the server key file is built here from PROTOCOLS §5.2 (the
key's DER, 0xFF fill, the address TLV at offset 384, 1024 bytes). Both Cores' whole memories must then be equal.
"""
import asyncio
import functools
import re
from pathlib import Path

import pyfu_usb
import pyfu_usb.dfu
import pyfu_usb.dfuse
import usb.core
import usb.util

from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.families.dfu.sim.remote import RemoteUsbBackend
from station.families.particle.sim.board import ParticleBoard
from station.families.particle.sim.server import ParticleSimServer
from station.journal import Journal
from station.profile_library import shipped_profiles_dir
from station.profiles import load_profile

PROFILES = shipped_profiles_dir()
CORE_ALT0 = (0x08000000, 128 * 1024)  # "@Internal Flash /0x08000000/20*001Ka,108*001Kg"
CORE_ALT1 = (0x00000000, 512 * 4096)  # "@SPI Flash : SST25x/0x00000000/512*04Kg"
SECTOR = 4096


def dfu_boards_profile(tmp_path: Path) -> Path:
    """The shipped profile for DFU boards (Tinker, the demo cloud's key at 127.0.0.1, a new device key)."""
    text = (PROFILES / "dfu-boards.toml").read_text()
    text = re.sub(r'file = "([^"]+)"', lambda m: f'file = "{(PROFILES / m.group(1)).resolve()}"', text)
    path = tmp_path / "dfu-boards.toml"
    path.write_text(text)
    return path


def in_dfu_mode(server: ParticleSimServer) -> None:
    """Hold MODE, tap RESET, release MODE when the LED blinks yellow: what the guide asks before dfu-util."""
    server.hold_mode(server.locations[0], 3.5, tap_reset=True)
    assert server.wait_mode(server.locations[0], "dfu")


def dfu_util_download(backend: RemoteUsbBackend, alt: int, address: int, data: bytes, transfer: int) -> None:
    """`dfu-util -a ALT -s ADDRESS -D file` without :leave, through pyfu-usb's DfuSe requests."""
    dev = usb.core.find(backend=backend)
    dev.set_interface_altsetting(interface=0, alternate_setting=alt)
    for sector in range(address - address % SECTOR, address + len(data), SECTOR):
        pyfu_usb.dfuse.page_erase(dev, 0, sector)
    for offset in range(0, len(data), transfer):
        pyfu_usb.dfuse.set_address(dev, 0, address + offset)
        pyfu_usb.dfu.download(dev, 0, 2, data[offset:offset + transfer])
    dev.set_interface_altsetting(interface=0, alternate_setting=0)  # dfu-util -a 0 for the next command
    usb.util.dispose_resources(dev)


def test_the_guides_commands_leave_a_core_as_the_station_does(tmp_path, monkeypatch):
    profile = load_profile(dfu_boards_profile(tmp_path))
    station_core, guide_core = ParticleBoard("core", 0), ParticleBoard("core", 1)
    with ParticleSimServer([station_core], tmp_path / "hub") as hub:
        journal = Journal(tmp_path / "journal.sqlite3")
        engine = Engine(profile, Discovery([SimPortSource(tmp_path / "hub")]), journal, operator="t",
                        station_id="s")
        try:
            summary = asyncio.run(engine.run_batch())
        finally:
            engine.close()
            journal.close()
        assert summary.failed == {} and summary.passed == hub.locations

    # the files the guide's commands download
    options = profile.options["particle"]
    server_key_file = bytearray(b"\xff" * 1024)
    server_key_file[:len(options.server_key.der)] = options.server_key.der
    server_key_file[384:390] = bytes([0x00, 0x04, 127, 0, 0, 1])
    slot = station_core.read_memory(1, 0x2000, 612)
    device_key_file = slot[:4 + int.from_bytes(slot[2:4], "big")]
    assert device_key_file[:3] == b"\x30\x82\x02" and device_key_file[4:11] == bytes.fromhex("02010002818100")
    tinker = (PROFILES / "firmware" / "tinker-core" / "tinker.bin").read_bytes()
    (tmp_path / "tinker.bin").write_bytes(tinker)

    with ParticleSimServer([guide_core], tmp_path / "bench") as bench:
        in_dfu_mode(bench)
        backend = RemoteUsbBackend(bench.usb_url(0))
        monkeypatch.setattr(usb.core, "find", functools.partial(usb.core.find, backend=backend))
        dfu_util_download(backend, 1, 0x1000, bytes(server_key_file), 1024)
        dfu_util_download(backend, 1, 0x2000, device_key_file, 1024)
        pyfu_usb.download(str(tmp_path / "tinker.bin"), vid=0x1D50, pid=0x607F, address=0x08005000)  # :leave
        backend.close()
        assert bench.wait_mode(bench.locations[0], "run")  # it boots the application it was given

    for alt, (start, size) in enumerate((CORE_ALT0, CORE_ALT1)):
        assert station_core.read_memory(alt, start, size) == guide_core.read_memory(alt, start, size), f"alt {alt}"
