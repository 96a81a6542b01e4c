"""Firmware image checks and the demo firmware generator, judged by esptool itself."""

import hashlib
import re
import subprocess
import sys
import zlib

import pytest

from station.families.esp.image import (
    ImageError,
    check_app_image,
    check_bootloader_image,
    image_chip,
)
from station.families.esp.payloads.partition_table import find_partition, parse_partition_table
from station.families.esp.sim import firmware
from station.families.esp.sim.firmware import make_app_image, make_bootloader_image, make_partition_table

MiB = 1 << 20


@pytest.fixture(scope="module")
def apps():
    return {
        "ESP32": make_app_image("ESP32", "mqtt-sensor", "1.4.0", size=300 * 1024, seed=1),
        "ESP32-C3": make_app_image("ESP32-C3", "mqtt-sensor", "1.4.0", size=280 * 1024, seed=2),
        "ESP8266": make_app_image("ESP8266", "ota-switch", "2.1.0", size=300 * 1024, seed=3, arduino=True),
    }


def image_info(tmp_path, data: bytes) -> str:
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-m", "esptool", "image-info", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("chip", ["ESP32", "ESP32-C3"])
def test_esptool_image_info_shows_project_and_valid_hashes(tmp_path, apps, chip):
    out = image_info(tmp_path, apps[chip])
    assert f"Detected image type: {chip}" in out
    assert "Project name: mqtt-sensor" in out
    assert "App version: 1.4.0" in out
    assert re.search(r"Checksum: 0x[0-9a-f]{2} \(valid\)", out)
    assert re.search(r"Validation hash: [0-9a-f]{64} \(valid\)", out)
    assert "invalid" not in out


@pytest.mark.parametrize("chip", ["ESP32", "ESP32-C3"])
def test_esptool_image_info_reads_bootloader(tmp_path, chip):
    out = image_info(tmp_path, make_bootloader_image(chip))
    assert f"Detected image type: {chip}" in out
    assert "Bootloader Information" in out
    assert re.search(r"Validation hash: [0-9a-f]{64} \(valid\)", out)
    assert "invalid" not in out


def test_esptool_image_info_detects_esp8266(tmp_path, apps):
    out = image_info(tmp_path, apps["ESP8266"])
    assert "Detected image type: ESP8266" in out
    assert re.search(r"Checksum: 0x[0-9a-f]{2} \(valid\)", out)


def test_generator_is_deterministic_and_sized(apps):
    again = make_app_image("ESP32", "mqtt-sensor", "1.4.0", size=300 * 1024, seed=1)
    assert again == apps["ESP32"]
    assert make_app_image("ESP32", "mqtt-sensor", "1.4.0", size=300 * 1024, seed=9) != again
    for chip, wanted in (("ESP32", 300), ("ESP32-C3", 280), ("ESP8266", 300)):
        assert abs(len(apps[chip]) - wanted * 1024) < 1024, chip


def test_compressible_flag_changes_what_goes_on_the_wire():
    dense = make_app_image("ESP32", "p", "1", size=128 * 1024, compressible=False)
    loose = make_app_image("ESP32", "p", "1", size=128 * 1024, compressible=True)
    assert len(zlib.compress(dense)) > 0.95 * len(dense)
    assert len(zlib.compress(loose)) < 0.7 * len(loose)


def test_partition_table_default_layout():
    parts = parse_partition_table(make_partition_table())
    assert (find_partition(parts, name="nvs").offset, find_partition(parts, name="nvs").size) == (0x9000, 0x6000)
    assert find_partition(parts, name="factory").offset == 0x10000


@pytest.mark.parametrize("chip, offset", [("ESP32", 0x10000), ("ESP32-C3", 0x10000), ("ESP8266", 0x0)])
def test_good_images_pass(apps, chip, offset):
    check_app_image(apps[chip], chip, 4 * MiB, offset, "firmware/app.bin")
    assert image_chip(apps[chip]) == chip


def test_checks_log_nothing(apps, capfd):
    # esptool would log "Suspicious segment" for the Arduino sketch's irom0 segment
    check_app_image(apps["ESP8266"], "ESP8266", 4 * MiB, 0x0, "ota-switch.bin")
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("chip", ["ESP32", "ESP32-C3"])
def test_bootloaders_pass_at_their_offset(chip):
    check_bootloader_image(make_bootloader_image(chip), chip, 4 * MiB, "bootloader.bin")


def test_app_passed_as_bootloader_is_refused(apps):
    with pytest.raises(ImageError, match="is an application, not a bootloader"):
        check_bootloader_image(apps["ESP32"], "ESP32", 4 * MiB, "firmware/app.bin")


@pytest.mark.parametrize(
    "image_for, board",
    [("ESP32-C3", "ESP32"), ("ESP32", "ESP32-C3"), ("ESP8266", "ESP32"), ("ESP32", "ESP8266")],
)
def test_wrong_chip_is_refused(apps, image_for, board):
    with pytest.raises(ImageError) as err:
        check_app_image(apps[image_for], board, 4 * MiB, 0x10000, "firmware/app.bin")
    assert str(err.value) == (
        f"firmware/app.bin is built for {image_for} but the board is {board}; "
        f"pick the profile for {image_for} or rebuild the firmware for {board}"
    )


def test_truncated_wrong_chip_image_still_names_the_chip(apps):
    with pytest.raises(ImageError, match="built for ESP32-C3 but the board is ESP32"):
        check_app_image(apps["ESP32-C3"][:50000], "ESP32", 4 * MiB, 0x10000, "firmware/app.bin")


@pytest.mark.parametrize("chip", ["ESP32", "ESP32-C3", "ESP8266"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_image_cut_inside_a_segment_is_refused(apps, chip, keep):
    data = apps[chip]
    with pytest.raises(ImageError, match="truncated"):
        check_app_image(data[: int(len(data) * keep)], chip, 4 * MiB, 0x10000, "firmware/app.bin")


def test_image_cut_in_checksum_or_hash_is_refused(apps):
    data = apps["ESP32"]
    with pytest.raises(ImageError, match="ends before its checksum byte"):
        check_app_image(data[:-40], "ESP32", 4 * MiB, 0x10000, "firmware/app.bin")
    with pytest.raises(ImageError, match="ends inside its appended SHA-256"):
        check_app_image(data[:-10], "ESP32", 4 * MiB, 0x10000, "firmware/app.bin")


def test_flipped_byte_is_refused(apps):
    data = bytearray(apps["ESP32"])
    data[5000] ^= 0x01
    with pytest.raises(ImageError, match="corrupt"):
        check_app_image(bytes(data), "ESP32", 4 * MiB, 0x10000, "firmware/app.bin")


@pytest.mark.parametrize("data", [b"\x00" * 4096, b"PK\x03\x04 a zip file"])
def test_bad_magic_is_refused(data):
    with pytest.raises(ImageError) as err:
        check_app_image(data, "ESP32", 4 * MiB, 0x10000, "firmware/app.bin")
    assert f"firmware/app.bin is not an ESP image (bad magic {data[0]:#04x}, expected 0xE9)" in str(err.value)
    assert image_chip(data) is None


def test_image_too_big_for_flash_is_refused():
    data = make_app_image("ESP32", "big", "1.0", size=int(1.2 * MiB))
    with pytest.raises(ImageError) as err:
        check_app_image(data, "ESP32", 1 * MiB, 0x10000, "firmware/app.bin")
    assert str(err.value) == "firmware/app.bin (1.2 MiB at 0x10000) does not fit the board's 1 MiB flash"
    check_app_image(data, "ESP32", 2 * MiB, 0x10000, "firmware/app.bin")


def test_demo_set_script_writes_and_pins_files(tmp_path, capsys):
    assert firmware.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    written = sorted(p for p in tmp_path.rglob("*.bin"))
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {
        "mqtt-sensor-esp32/bootloader.bin", "mqtt-sensor-esp32/partition-table.bin",
        "mqtt-sensor-esp32/mqtt-sensor.bin", "mqtt-sensor-esp32c3/bootloader.bin",
        "mqtt-sensor-esp32c3/partition-table.bin", "mqtt-sensor-esp32c3/mqtt-sensor.bin",
        "ota-switch-esp8266/bootloader.bin", "ota-switch-esp8266/partition-table.bin",
        "ota-switch-esp8266/ota-switch.bin", "secure-sensor-esp32/bootloader.bin",
        "secure-sensor-esp32/partition-table.bin", "secure-sensor-esp32/secure-sensor.bin",
        "mqtt-node-esp8266/mqtt-node.bin",
    }
    for path in written:
        assert hashlib.sha256(path.read_bytes()).hexdigest() in printed
    esp32_app = (tmp_path / "mqtt-sensor-esp32/mqtt-sensor.bin").read_bytes()
    check_app_image(esp32_app, "ESP32", 4 * MiB, 0x10000, "mqtt-sensor.bin")
