"""Wi-Fi by Improv serial: the station's client against emulated boards whose flashed app runs Improv, alone and
in a batch."""
from __future__ import annotations

import asyncio
import hashlib
from contextlib import closing
from pathlib import Path

import pytest
import serial

from station.discovery import Discovery
from station.discovery.sim_ports import SimPortSource
from station.engine import Engine
from station.families.esp import improv
from station.families.esp.improv import ImprovClient, ImprovError
from station.families.esp.session import EspSession
from station.families.esp.sim.board import EspBoard
from station.families.esp.sim.firmware import make_app_image, make_bootloader_image, make_partition_table
from station.families.esp.sim.improv import device_url
from station.families.esp.sim.server import EspSimServer
from station.journal import Journal
from station.manifest import device_records
from station.profiles import ProfileError, load_profile

SSID = "workshop-2g"
PSK = "tea and biscuits 42"


def arduino_app(improv_on: bool = True) -> bytes:
    return make_app_image("ESP8266", "relay", "3.1.0", size=48 * 1024, arduino=True, improv=improv_on)


def flashed_esp8266(number: int = 1, improv_on: bool = True, networks: dict | None = None) -> EspBoard:
    board = EspBoard("esp8266", number)
    board.flash.program(0, arduino_app(improv_on))
    board.access_points = {SSID: PSK} if networks is None else networks
    return board


def open_app(server: EspSimServer, index: int = 0):
    """The board's port as the station opens it after the reset step: 115200, no reset on open."""
    return closing(serial.serial_for_url(server.station_urls[index], baudrate=115200, timeout=0.1))


# --- the packets -----------------------------------------------------------------------------------------------------


def test_wifi_settings_packet_is_the_spec_example_with_its_checksum():
    packet = improv.encode_rpc(improv.WIFI_SETTINGS, improv.wifi_settings_data("MyWirelessAP", "mysecurepassword"))
    data = bytes.fromhex("01 1E 0C") + b"MyWirelessAP" + b"\x10" + b"mysecurepassword"  # improv-wifi.com/serial
    head = b"IMPROV\x01\x03" + bytes((len(data),))
    assert packet[:9] == head and packet[9:-2] == data
    assert packet[-2] == sum(head + data) % 256 and packet[-1:] == b"\n"


def test_result_strings_stop_at_the_total_length_so_a_trailing_checksum_byte_is_ignored():
    data = bytes((0x01, 0x0A, 0x09)) + b"http://x/" + b"\x5a"  # sdk-cpp appends its BLE checksum
    assert improv.parse_strings(data) == (0x01, ["http://x/"])


def test_the_reader_skips_noise_a_log_line_saying_improv_and_a_damaged_packet():
    good = improv.encode_packet(improv.CURRENT_STATE, b"\x02")
    damaged = bytearray(improv.encode_packet(improv.CURRENT_STATE, b"\x04"))
    damaged[-2] ^= 0x01  # the checksum no longer holds
    reader = improv._Reader()
    reader.buf += b"\xe0\x1c\x8c\xf0" + b"[C][improv_serial]: IMPROV serial ready\r\n" + bytes(damaged) + good
    assert reader.next_packet() == (improv.CURRENT_STATE, b"\x02")
    assert reader.next_packet() is None and reader.last_line().endswith("IMPROV serial ready")


# --- client against the emulated firmware ------------------------------------------------------------------------------


def test_the_board_joins_the_network_and_reports_its_url():
    board = flashed_esp8266()
    with EspSimServer([board]) as server, open_app(server) as port:
        client = ImprovClient(port)
        assert client.wait_ready(5) == "ready"  # after the boot noise and a log line that says "IMPROV"
        assert client.device_info()[2] == "ESP8266"
        assert client.send_wifi(SSID, PSK) == (device_url(board),)
    assert board.wifi == (SSID, PSK)


def test_a_wrong_passphrase_is_unable_to_connect_and_the_passphrase_is_not_in_the_reason():
    board = flashed_esp8266()
    wrong = "not the right one"
    with EspSimServer([board]) as server, open_app(server) as port:
        client = ImprovClient(port)
        client.wait_ready(5)
        with pytest.raises(ImprovError) as err:
            client.send_wifi(SSID, wrong)
    assert err.value.kind == "unable_to_connect"
    assert "unable to connect" in str(err.value) and SSID in str(err.value) and wrong not in str(err.value)
    assert board.wifi is None


def test_firmware_without_improv_is_reported_in_plain_words_with_what_it_printed():
    board = flashed_esp8266(improv_on=False)
    with EspSimServer([board]) as server, open_app(server) as port:
        with pytest.raises(ImprovError) as err:
            ImprovClient(port, poll=0.1).wait_ready(0.3)
    assert err.value.kind == "absent"
    assert "did not answer Improv" in str(err.value)


def test_esptool_hard_reset_boots_the_app_and_improv_answers_on_the_same_port():
    """As on a CP2102/CH340 board: the station's reset step pulses RTS, the app boots, the port is reopened."""
    board = flashed_esp8266()
    with EspSimServer([board]) as server:
        session = EspSession(server.station_urls[0], log=lambda *_: None, progress=lambda *_: None)
        session.connect(115200)
        session.reset()
        with session.app_port() as port:
            client = ImprovClient(port)
            client.wait_ready(5)
            assert client.send_wifi(SSID, PSK) == (device_url(board),)
    assert board.boot_count >= 1 and board.wifi == (SSID, PSK)


def test_an_app_with_the_identity_agent_and_improv_answers_both_on_one_uart():
    from station.identity.agent import AgentClient

    board = EspBoard("esp8266", 1)
    board.flash.program(0, make_app_image("ESP8266", "relay", "3.1.0", size=48 * 1024, arduino=True,
                                          identity_agent=True, improv=True))
    board.access_points = {SSID: PSK}
    with EspSimServer([board]) as server, open_app(server) as port:
        assert AgentClient(port).get_info().state == "fresh"
        client = ImprovClient(port)
        client.wait_ready(5)
        assert client.send_wifi(SSID, PSK) == (device_url(board),)


# --- in a batch ------------------------------------------------------------------------------------------------------------


def write_improv_profile(folder: Path) -> Path:
    """ESP8266 Arduino firmware with Improv; ESP32 firmware (another product) without it."""
    files = {"relay.bin": arduino_app(), "bootloader.bin": make_bootloader_image("ESP32"),
             "partition-table.bin": make_partition_table(),
             "esp32-app.bin": make_app_image("ESP32", "no-improv", "1.0.0", size=64 * 1024)}
    for name, data in files.items():
        (folder / name).write_bytes(data)

    def image(name: str, offset: int, kind: str) -> str:
        return (f'[[firmware.images]]\noffset = {offset:#x}\nkind = "{kind}"\nfile = "{name}"\n'
                f'sha256 = "{hashlib.sha256(files[name]).hexdigest()}"\n')

    path = folder / "improv.toml"
    path.write_text(f'''
[profile]
name = "Relay with Improv"
baud = 460800

[[firmware]]
chip = "ESP8266"
{image("relay.bin", 0, "app")}
[[firmware]]
chip = "ESP32"
{image("bootloader.bin", 0x1000, "bootloader")}{image("partition-table.bin", 0x8000, "partition-table")}\
{image("esp32-app.bin", 0x10000, "app")}
[wifi]
ssid = "{SSID}"
psk_env = "RELAY_WIFI_PSK"
method = "improv"
improv_wait = 1
''')
    return path


def run_batch(profile_path: Path, registry: Path, journal: Journal, psk: str = PSK):
    engine = Engine(load_profile(profile_path), Discovery([SimPortSource(registry)]), journal, operator="tester",
                    station_id="station-t", lot="LOT-W", psk=psk)
    try:
        return asyncio.run(engine.run_batch())
    finally:
        engine.close()


def test_improv_boards_pass_and_a_board_whose_firmware_has_no_improv_fails_alone(tmp_path):
    boards = [flashed_esp8266(1, networks={SSID: PSK}), EspBoard("esp32", 2), flashed_esp8266(3)]
    boards[1].access_points = {SSID: PSK}  # in range too: only its firmware lacks Improv
    for board in (boards[0], boards[2]):
        board.flash.erase(0, 0x10000)  # blank: the batch flashes them
    journal = Journal(tmp_path / "journal.sqlite3")
    with EspSimServer(boards, registry_dir=tmp_path / "registry") as server:
        summary = run_batch(write_improv_profile(tmp_path), tmp_path / "registry", journal)

    esp8266 = [server.locations[0], server.locations[2]]
    assert sorted(summary.passed) == sorted(esp8266) and list(summary.failed) == [server.locations[1]]
    assert boards[0].wifi == boards[2].wifi == (SSID, PSK) and boards[1].wifi is None
    devices = {d.port: d for d in journal.devices(summary.batch_id)}
    assert "did not answer Improv" in devices[server.locations[1]].reason
    for board, location in ((boards[0], esp8266[0]), (boards[2], esp8266[1])):
        wifi = journal.steps(devices[location].id)[-1]
        assert (wifi.name, wifi.result) == ("wifi", "pass")
        assert f"joined '{SSID}'" in wifi.detail and device_url(board) in wifi.detail  # the URL, recorded
    records = list(device_records(journal))
    assert PSK not in str(records) and len(records) == 3
    journal.close()


def test_a_wrong_passphrase_fails_the_board_with_unable_to_connect(tmp_path):
    board = flashed_esp8266(1, networks={SSID: "the real passphrase"})
    journal = Journal(tmp_path / "journal.sqlite3")
    with EspSimServer([board], registry_dir=tmp_path / "registry") as server:
        summary = run_batch(write_improv_profile(tmp_path), tmp_path / "registry", journal)
    reason = summary.failed[server.locations[0]]
    assert "unable to connect" in reason and SSID in reason and PSK not in reason
    assert board.wifi is None
    journal.close()


# --- the profile ---------------------------------------------------------------------------------------------------------


def test_improv_needs_no_partition_table_and_adds_the_wifi_step_without_writing_nvs(tmp_path):
    from station.families.esp.steps import esp_steps

    profile = load_profile(write_improv_profile(tmp_path))
    names = [s.name for s in esp_steps(profile)]
    assert names[-1] == "wifi" and "write-data" not in names


def test_an_unknown_wifi_method_is_refused_naming_the_key(tmp_path):
    path = write_improv_profile(tmp_path)
    path.write_text(path.read_text().replace('method = "improv"', 'method = "smartconfig"'))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert "[wifi.method]" in str(err.value) and "improv" in str(err.value)
