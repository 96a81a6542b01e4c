"""DFU boards beside ESP boards in one batch, end to end: each board's memory holds exactly the profile's
images, a board unplugged mid-write fails in plain words while the others pass, and every refusal leaves the
board untouched."""
import asyncio
import hashlib
from pathlib import Path

import pytest

from station.profile_library import shipped_profiles_dir
from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.families.dfu.dfufile import Element, Target, build_dfuse_file
from station.families.dfu.sim.device import DfuFaults, make_device
from station.families.dfu.sim.server import DfuSimServer
from station.families.esp.sim.fleet import demo_fleet
from station.families.esp.sim.server import EspSimServer
from station.identity.ca import StationCA
from station.journal import Journal
from station.profiles import ProfileError, load_profile

PROFILES = shipped_profiles_dir()
PSK = "correct horse battery"
CA = StationCA.ephemeral()


@pytest.fixture
def profile():
    return load_profile(PROFILES / "demo-mixed.toml")


@pytest.fixture
def hub(tmp_path):
    """Emulated ESP and DFU boards on one emulated hub (one registry); yields (esp_server, dfu_server)."""
    servers = []

    def plug(esp_count: int, dfu_kinds: list[str]):
        registry = tmp_path / "registry"
        esp = EspSimServer(demo_fleet(esp_count), registry_dir=registry).start() if esp_count else None
        devices = [make_device(kind, i) for i, kind in enumerate(dfu_kinds)]
        dfu = DfuSimServer(devices, registry).start()
        servers.extend(s for s in (esp, dfu) if s)
        return esp, dfu

    yield plug
    for server in servers:
        server.stop()


def run_batch(profile, registry: Path, journal: Journal):
    engine = Engine(profile, Discovery([SimPortSource(registry)]), journal, operator="tester",
                    station_id="station-t", psk=PSK, ca=CA, reprovision=True)
    try:
        return asyncio.run(engine.run_batch())
    finally:
        engine.close()


def expected_memory(profile, chip: str) -> list[tuple[int, int, bytes]]:
    """(alt, address, bytes) the profile puts on a board of `chip`."""
    return [(p.alt if isinstance(p.alt, int) else 0, p.address, p.data) for p in profile.firmware[chip].placements]


def test_eight_dfu_boards_beside_four_esp_boards(profile, hub, tmp_path):
    kinds = ["stm32"] * 8
    esp, dfu = hub(4, kinds)
    journal = Journal(tmp_path / "journal.sqlite3")

    summary = run_batch(profile, tmp_path / "registry", journal)

    assert summary.failed == {}
    assert sorted(summary.passed) == sorted(esp.locations + dfu.locations)
    chips = {"stm32": "STM32"}
    for device, kind in zip(dfu.devices, kinds):
        for alt, address, data in expected_memory(profile, chips[kind]):
            assert device.read_memory(alt, address, len(data)) == data
        # nothing beyond the image was programmed: the next page of internal flash is still erased
        alt, address, data = expected_memory(profile, chips[kind])[-1]
        assert device.read_memory(alt, address + len(data), 1024) == b"\xff" * 1024
    rows = {d.port: d for d in journal.devices(summary.batch_id)}
    assert {rows[loc].family for loc in dfu.locations} == {"dfu"}
    assert {rows[loc].chip for loc in dfu.locations} == {"STM32"}
    journal.close()


def test_a_board_unplugged_mid_write_fails_in_plain_words_and_the_others_pass(profile, hub, tmp_path):
    esp, dfu = hub(0, ["stm32"] * 4)
    dfu.devices[2].faults = DfuFaults(unplug_after_bytes=40 * 1024)
    journal = Journal(tmp_path / "journal.sqlite3")

    summary = run_batch(profile, tmp_path / "registry", journal)

    gone = dfu.locations[2]
    assert list(summary.failed) == [gone]
    assert summary.failed[gone].startswith("Board vanished during flash at ")
    assert sorted(summary.passed) == sorted(set(dfu.locations) - {gone})
    journal.close()


def test_an_image_outside_the_boards_memory_is_refused_before_anything_is_written(hub, tmp_path):
    tinker = (PROFILES / "firmware" / "tinker-core" / "tinker.bin").read_bytes()
    profile = load_profile(write_profile(tmp_path, "STM32", "tinker.bin", tinker, "address = 0x080FF000"))
    _, dfu = hub(0, ["stm32"])
    before = dfu.devices[0].snapshot(0)
    journal = Journal(tmp_path / "journal.sqlite3")

    summary = run_batch(profile, tmp_path / "registry", journal)

    reason = summary.failed[dfu.locations[0]]
    assert "tinker.bin can't be written to this board" in reason and "only 4096 bytes fit from 0x080FF000" in reason
    assert dfu.devices[0].snapshot(0) == before  # nothing was erased or written
    journal.close()


def write_profile(folder: Path, chip: str, name: str, data: bytes, image_keys: str = "") -> Path:
    """A one-image profile for `chip` with its firmware file beside it, pinned."""
    (folder / name).write_bytes(data)
    path = folder / "p.toml"
    path.write_text(f'''
[profile]
name = "One {chip} image"

[[firmware]]
chip = "{chip}"

[[firmware.images]]
file = "{name}"
sha256 = "{hashlib.sha256(data).hexdigest()}"
{image_keys}
''')
    return path


def dfu_profile(folder: Path, data: bytes) -> Path:
    return write_profile(folder, "STM32", "fw.dfu", data)


def test_a_dfu_file_with_a_bad_crc_is_refused_naming_the_file(tmp_path):
    good = build_dfuse_file([Target(0, "Internal Flash", (Element(0x08000000, b"\x01" * 256),))], 0x0483, 0xDF11)
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])
    with pytest.raises(ProfileError) as err:
        load_profile(dfu_profile(tmp_path, bad))
    assert "fw.dfu" in str(err.value) and "CRC" in str(err.value)


def test_a_dfu_file_for_another_board_is_refused(tmp_path):
    other = build_dfuse_file([Target(0, "Internal Flash", (Element(0x08000000, b"\x01" * 256),))], 0x2B04, 0xD006)
    with pytest.raises(ProfileError) as err:
        load_profile(dfu_profile(tmp_path, other))
    assert "2b04:d006" in str(err.value).lower()


def test_wifi_on_a_profile_of_dfu_boards_alone_is_refused(tmp_path):
    data = build_dfuse_file([Target(0, "Internal Flash", (Element(0x08000000, b"\x01" * 256),))], 0x0483, 0xDF11)
    path = dfu_profile(tmp_path, data)
    path.write_text(path.read_text() + '\n[wifi]\nssid = "lab"\npsk_env = "LAB_PSK"\n')
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert "[wifi] has no place on STM32 boards in DFU mode" in str(err.value)
