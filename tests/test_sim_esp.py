"""The ESP emulator against the stock esptool: CLI runs as subprocesses, protocol details through esptool's loader."""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from contextlib import closing, contextmanager

import pytest
from esptool.loader import ESPLoader
from esptool.targets import ESP32C3ROM, ESP32ROM
from esptool.util import UnsupportedCommandError

from station.families.esp.sim.board import EspBoard, EspFaults, SlipDecoder, slip_encode, xor_checksum
from station.families.esp.sim.chips import MIB
from station.families.esp.sim.server import EspSimServer, LinePacer

CHIPS = ["esp32", "esp32c3", "esp8266"]
NAMES = {"esp32": "ESP32", "esp32c3": "ESP32-C3", "esp8266": "ESP8266"}
DESCRIPTIONS = {"esp32": "ESP32-D0WD-V3 (revision v3.0)", "esp32c3": "ESP32-C3 (QFN32) (revision v0.4)",
                "esp8266": "ESP8266EX"}
CRYSTALS = {"esp32": 40, "esp32c3": 40, "esp8266": 26}
MACS = {"esp32": "24:0a:c4:00:00:01", "esp32c3": "30:ae:a4:00:00:01", "esp8266": "5c:cf:7f:00:00:01"}
ADDRESS = 0x10000


@pytest.fixture(scope="module")
def esptool_env(tmp_path_factory):
    # One connect attempt everywhere, including esptool's reconnect loop after a lost port (ESPTOOL_CFGFILE).
    cfg = tmp_path_factory.mktemp("esptool") / "esptool.cfg"
    cfg.write_text("[esptool]\nconnect_attempts = 1\n")
    return dict(os.environ, ESPTOOL_CFGFILE=str(cfg))


@pytest.fixture
def esptool(esptool_env):
    def run(url: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "esptool", "--port", url, "--connect-attempts", "1", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, env=esptool_env, timeout=120)
        result.output = result.stdout + result.stderr
        return result
    return run


@contextmanager
def served(*boards: EspBoard, **kwargs):
    with EspSimServer(boards, **kwargs) as server:
        yield server


def image(size: int, seed: int = 1, compressible: bool = False) -> bytes:
    """Deterministic test data that is not an app image (no 0xE9 header, so esptool leaves it alone)."""
    if compressible:
        data = b"".join(hashlib.sha256(bytes([seed, i % 251])).digest()[:8] + bytes(24) for i in range(size // 32))
    else:
        data = b"".join(hashlib.sha256(seed.to_bytes(4, "little") + i.to_bytes(4, "little")).digest()
                        for i in range(size // 32))
    return b"\x42" + data[1:]


def write_file(tmp_path, data: bytes, name: str = "image.bin") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[-1].rsplit(":", 1)  # socket:// or espsim://: the same TCP port
    return host, int(port)


# --- identity ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chip", CHIPS)
def test_chip_id_names_the_chip_and_its_mac(chip, esptool):
    with served(EspBoard(chip, 1)) as server:
        result = esptool(server.urls[0], "chip-id")
    assert result.returncode == 0, result.output
    assert f"Detecting chip type... {NAMES[chip]}\n" in result.output
    assert f"Chip type:          {DESCRIPTIONS[chip]}" in result.output
    assert f"Crystal frequency:  {CRYSTALS[chip]}MHz" in result.output
    assert f"MAC:                {MACS[chip]}" in result.output
    assert "Stub flasher running." in result.output


@pytest.mark.parametrize(("chip", "size", "expected"), [("esp32", "4MB", "4016"), ("esp32c3", "16MB", "4018"),
                                                        ("esp8266", "1MB", "4014")])
def test_flash_id_reports_the_configured_flash(chip, size, expected, esptool):
    with served(EspBoard(chip, 1, flash_size=size)) as server:
        result = esptool(server.urls[0], "flash-id")
    assert result.returncode == 0, result.output
    assert "Manufacturer: ef" in result.output
    assert f"Device: {expected}" in result.output
    assert f"Detected flash size: {size}" in result.output


def test_read_mac_without_stub_and_macs_follow_board_numbers(esptool):
    boards = [EspBoard("esp32", n, seed=7) for n in (1, 2)]
    with served(*boards) as server:
        result = esptool(server.urls[1], "--no-stub", "read-mac")
    assert result.returncode == 0, result.output
    assert "MAC:                24:0a:c4:07:00:02" in result.output
    assert boards[0].mac_text == "24:0a:c4:07:00:01"


# --- flashing through the stock CLI --------------------------------------------------------------------------------


@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize(("options", "compressible"), [
    ([], False),  # stub; random data does not compress, so esptool sends FLASH_DATA
    ([], True),  # stub, FLASH_DEFL_*
    (["--no-stub"], False),  # ROM: erase at FLASH_BEGIN, 1 KiB blocks
], ids=["stub", "stub-deflate", "rom"])
def test_write_flash_puts_exact_bytes_at_the_offset(chip, options, compressible, esptool, tmp_path):
    board = EspBoard(chip, 1)
    board.flash.program(0, b"\x00" * 2 * MIB)  # programmed flash: the write must erase exactly its sectors
    data = image(128 * 1024 + 100, seed=3, compressible=compressible)
    with served(board) as server:
        result = esptool(server.urls[0], *options, "write-flash", hex(ADDRESS), write_file(tmp_path, data))
    assert result.returncode == 0, result.output
    assert board.read_flash(ADDRESS, len(data)) == data
    end = ADDRESS + len(data)
    sector_end = -(-end // 0x1000) * 0x1000
    assert board.read_flash(end, sector_end - end) == b"\xff" * (sector_end - end)  # rest of last sector erased
    assert board.read_flash(sector_end, 0x1000) == bytes(0x1000)  # next sector untouched
    assert board.read_flash(0, ADDRESS) == bytes(ADDRESS)
    if chip == "esp8266" and options:
        assert "Hash of data verified." not in result.output  # the ESP8266 ROM has no MD5 command
    else:
        assert "Hash of data verified." in result.output
    if compressible:
        assert "compressed) at 0x00010000" in result.output


@pytest.mark.parametrize("chip", ["esp32", "esp32c3"])
def test_write_flash_rom_deflate_and_stub_no_compress(chip, esptool, tmp_path):
    board = EspBoard(chip, 1)
    first, second = image(64 * 1024, seed=4, compressible=True), image(64 * 1024, seed=5)
    with served(board) as server:
        rom = esptool(server.urls[0], "--no-stub", "write-flash", "--compress", hex(ADDRESS), write_file(tmp_path, first))
        stub = esptool(server.urls[0], "write-flash", "--no-compress", hex(ADDRESS + 0x10000),
                       write_file(tmp_path, second, "second.bin"))
    assert rom.returncode == 0, rom.output
    assert stub.returncode == 0, stub.output
    assert board.read_flash(ADDRESS, len(first)) == first
    assert board.read_flash(ADDRESS + 0x10000, len(second)) == second


@pytest.mark.parametrize("chip", CHIPS)
def test_verify_flash_matches_then_detects_a_flipped_bit(chip, esptool, tmp_path):
    board = EspBoard(chip, 1)
    data = image(64 * 1024, seed=6)
    board.flash.erase(ADDRESS, len(data))
    board.flash.program(ADDRESS, data)
    path = write_file(tmp_path, data)
    with served(board) as server:
        good = esptool(server.urls[0], "verify-flash", hex(ADDRESS), path)
        i = next(i for i, b in enumerate(data) if b)
        board.flash.program(ADDRESS + i, bytes([data[i] & (data[i] - 1)]))  # clear one bit, as NOR can
        bad = esptool(server.urls[0], "verify-flash", hex(ADDRESS), path)
    assert good.returncode == 0, good.output
    assert "Verification successful (digest matched)." in good.output
    assert bad.returncode != 0
    assert "Verification failed (digest mismatch)." in bad.output


@pytest.mark.parametrize("chip", CHIPS)
def test_read_flash_returns_flash_contents(chip, esptool, tmp_path):
    board = EspBoard(chip, 1)
    data = image(64 * 1024, seed=8)
    board.flash.erase(ADDRESS, len(data))
    board.flash.program(ADDRESS, data)
    out = tmp_path / "read.bin"
    with served(board) as server:
        result = esptool(server.urls[0], "read-flash", hex(ADDRESS), str(len(data)), str(out))
    assert result.returncode == 0, result.output
    assert out.read_bytes() == data


def test_read_flash_through_the_rom_loader(esptool, tmp_path):
    board = EspBoard("esp32", 1)
    data = image(4096 + 64 + 5, seed=9)
    board.flash.program(0x2000, data)
    out = tmp_path / "read.bin"
    with served(board) as server:
        result = esptool(server.urls[0], "--no-stub", "read-flash", "0x2000", str(len(data)), str(out))
    assert result.returncode == 0, result.output
    assert out.read_bytes() == data


def test_flash_survives_reconnects_and_works_over_a_pty(esptool, tmp_path):
    board = EspBoard("esp32c3", 1)
    data = image(64 * 1024, seed=10)
    with served(board, transport="pty") as server:
        assert server.urls[0].startswith("/dev/")
        written = esptool(server.urls[0], "write-flash", hex(ADDRESS), write_file(tmp_path, data))
        verified = esptool(server.urls[0], "verify-flash", hex(ADDRESS), write_file(tmp_path, data))
    assert written.returncode == 0, written.output
    assert verified.returncode == 0, verified.output
    assert "Uploading stub flasher..." in verified.output  # the second opener met a fresh ROM, not the old stub


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_host_leaving_mid_read_does_not_leak_into_the_next_session(transport, esptool):
    board = EspBoard("esp32", 1)
    board.flash.erase_all()  # FF everywhere: stale read data would show up as "Invalid head of packet (0xFF)"
    with served(board, transport=transport) as server:
        esp = ESP32ROM(server.urls[0])
        with closing(esp._port):
            esp.sync()
            stub = esp.run_stub()
            stub.check_command("read flash", 0xD2, struct.pack("<IIII", 0, 4 * MIB, 0x1000, 64))
        # closed without reading or acking: the stub had up to 64 x 4 KiB in flight
        result = esptool(server.urls[0], "chip-id")
    assert result.returncode == 0, result.output
    assert "Uploading stub flasher..." in result.output


# --- app boot ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("chip", "options"), [("esp32", ["--no-stub"]), ("esp8266", [])], ids=["rom-flash-end",
                                                                                                   "stub-run-user-code"])
def test_soft_reset_boots_the_app(chip, options, esptool):
    board = EspBoard(chip, 1)
    with served(board) as server:
        result = esptool(server.urls[0], *options, "--after", "soft-reset", "chip-id")
        assert result.returncode == 0, result.output
        assert board.wait_for_app_boot(timeout=5)
    assert board.booted_app and board.boot_count == 1


def test_after_app_boot_the_app_mode_owns_the_byte_stream():
    seen = []

    class RecordingApp:
        def __init__(self, board):
            self.board = board

        def receive(self, data):
            seen.append(data)
            self.board.send(b"app says hi\r\n")

    board = EspBoard("esp32", 1)
    board.app_mode_factory = RecordingApp
    with served(board) as server:
        esp = ESP32ROM(server.urls[0])
        with closing(esp._port):
            esp.sync()
            esp.flash_begin(0, 0)
            esp.flash_finish(reboot=False)  # FLASH_END(run user code): answered, then the app runs
            esp._port.write(b"AT\r\n")
            esp._port.timeout = 3
            assert esp._port.read(13) == b"app says hi\r\n"
    assert board.booted_app and seen == [b"AT\r\n"]


# --- protocol details via esptool's own loader ---------------------------------------------------------------------


def test_new_connection_is_a_reset_into_the_rom_loader():
    board = EspBoard("esp32", 1)
    with served(board) as server:
        esp = ESP32ROM(server.urls[0])
        with closing(esp._port):
            esp.sync()
            assert not esp.sync_stub_detected
            stub = esp.run_stub()  # MEM_* then OHAI
            stub.sync()
            assert stub.sync_stub_detected  # a running stub answers SYNC with value 0
        again = ESPLoader(server.urls[0])
        with closing(again._port):
            again.sync()
            assert not again.sync_stub_detected


@pytest.mark.parametrize(("stub", "bad_checksum", "bad_length"), [(False, "01070000", "01050000"),
                                                                 (True, "c100", "c000")], ids=["rom", "stub"])
def test_data_checksum_and_length_errors_use_the_loader_error_codes(stub, bad_checksum, bad_length):
    board = EspBoard("esp32", 1)
    with served(board) as server:
        esp = ESP32ROM(server.urls[0])
        with closing(esp._port):
            esp.sync()
            if stub:
                esp = esp.run_stub()
            esp.flash_begin(0x400, 0)
            block = b"\x00" * 0x400
            header = (0x400).to_bytes(4, "little") + bytes(12)
            _, body = esp.command(0x03, header + block, ESPLoader.checksum(block) ^ 1)
            assert body.hex() == bad_checksum
            _, body = esp.command(0x03, header + block[:-1], ESPLoader.checksum(block[:-1]))
            assert body.hex() == bad_length
            esp.flash_block(block, 0)  # a good block with the same sequence number is still accepted
    assert board.read_flash(0, 0x400) == block


def test_rom_answers_unknown_commands_with_invalid_message():
    board = EspBoard("esp8266", 1)
    with served(board) as server:
        esp = ESPLoader(server.urls[0])
        with closing(esp._port):
            esp.sync()
            with pytest.raises(UnsupportedCommandError):
                esp.command(0x14)
            assert esp.read_reg(0x40001000) == 0xFFF0C101  # the line is clean again afterwards


def test_slip_decoder_handles_split_frames_and_escapes():
    payloads = [bytes([0xC0, 0xDB, 0xDC, 0xDD, 0xDB, 0xDD]), b"plain", bytes(range(256))]
    stream = b"boot noise" + b"".join(slip_encode(p) for p in payloads)
    decoder = SlipDecoder()
    frames = []
    for i in range(0, len(stream), 7):
        frames += decoder.feed(stream[i:i + 7])
    assert frames == [b"boot noise", *payloads]  # the junk comes out as a frame the loader drops


def test_checksum_matches_esptool():
    for data in (b"", b"\x01", bytes(range(256)) * 3 + b"\x07", image(16384 + 3)):
        assert xor_checksum(data) == ESPLoader.checksum(data)


def test_stub_streams_deflate_across_blocks_and_rejects_overrun():
    board = EspBoard("esp32c3", 1)
    data = image(40000, seed=11, compressible=True)
    packed = zlib.compress(data, 9)
    with served(board) as server:
        esp = ESP32C3ROM(server.urls[0])
        with closing(esp._port):
            esp.sync()
            stub = esp.run_stub()
            stub.flash_defl_begin(len(data), len(packed), 0x3000)
            for seq, start in enumerate(range(0, len(packed), 1000)):  # blocks smaller than FLASH_WRITE_SIZE
                stub.flash_defl_block(packed[start:start + 1000], seq)
            stub.flash_defl_finish(reboot=False)
            assert stub.flash_md5sum(0x3000, len(data)) == hashlib.md5(data).hexdigest()
            stub.flash_defl_begin(100, len(packed), 0x3000)  # announce less than the stream inflates to
            block = packed[:1000]
            _, body = stub.command(0x11, struct.pack("<IIII", len(block), 0, 0, 0) + block, ESPLoader.checksum(block))
            assert body.hex() == "c900"  # "Too much data"
    assert board.read_flash(0x3000, len(data)) == data


# --- faults --------------------------------------------------------------------------------------------------------


def test_no_sync_board_fails_to_connect(esptool):
    with served(EspBoard("esp32", 1, faults=EspFaults(no_sync=True))) as server:
        result = esptool(server.urls[0], "chip-id")
    assert result.returncode != 0
    assert "Failed to connect to Espressif device: No serial data received." in result.output


def test_wrong_boot_mode_prints_spi_boot_log_and_never_syncs(esptool):
    with served(EspBoard("esp32", 1, faults=EspFaults(wrong_boot_mode=True))) as server:
        with socket.create_connection(host_port(server.urls[0]), timeout=3) as sock:
            log_text = b""
            while b"\r\n" not in log_text.split(b"rst:", 1)[-1]:
                log_text += sock.recv(4096)
        result = esptool(server.urls[0], "chip-id")
    assert b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)" in log_text
    assert re.search(rb"boot:(0x[0-9a-fA-F]+)(.*waiting for download)?", log_text).group(2) is None
    assert result.returncode != 0 and "Failed to connect" in result.output


def test_bad_md5_fails_write_flash(esptool, tmp_path):
    board = EspBoard("esp32c3", 1, faults=EspFaults(bad_md5=True))
    with served(board) as server:
        result = esptool(server.urls[0], "write-flash", hex(ADDRESS), write_file(tmp_path, image(32 * 1024)))
    assert result.returncode != 0
    assert "MD5 of file does not match data in flash!" in result.output


def test_flash_write_error_fails_write_flash(esptool, tmp_path):
    board = EspBoard("esp8266", 1, faults=EspFaults(flash_write_error=True))
    with served(board) as server:
        result = esptool(server.urls[0], "write-flash", hex(ADDRESS), write_file(tmp_path, image(32 * 1024)))
    assert result.returncode != 0
    assert "Failed to write to target flash after seq 0 (result was C400: Failed SPI operation)" in result.output


def test_unplug_after_bytes_vanishes_mid_write_and_plug_brings_it_back(esptool, tmp_path):
    board = EspBoard("esp32", 1, faults=EspFaults(unplug_after_bytes=40000))
    data = image(128 * 1024, seed=12)
    with served(board, registry_dir=tmp_path / "registry") as server:
        entry = server.registry_path(0)
        url = server.urls[0]
        assert entry.exists()
        result = esptool(url, "write-flash", hex(ADDRESS), write_file(tmp_path, data))
        assert result.returncode != 0
        assert not entry.exists()
        assert server.urls[0] is None and not server.is_plugged(0)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(host_port(url), timeout=3).close()
        assert board.read_flash(ADDRESS, len(data)) != data

        server.plug(0)
        assert entry.exists() and json.loads(entry.read_text())["url"] == server.station_urls[0]
        retry = esptool(server.urls[0], "write-flash", hex(ADDRESS), write_file(tmp_path, data))
    assert retry.returncode == 0, retry.output  # the fault is one-shot: a re-plugged board behaves
    assert board.read_flash(ADDRESS, len(data)) == data


# --- registry ------------------------------------------------------------------------------------------------------


def test_registry_files_describe_ports_without_naming_chips(tmp_path):
    registry = tmp_path / "registry"
    boards = [EspBoard(chip, n) for n, chip in enumerate(CHIPS, start=1)]
    with served(*boards, registry_dir=registry) as first, \
            served(EspBoard("esp32", 1, seed=1), registry_dir=registry, location_prefix="sim-2") as second:
        files = sorted(p.name for p in registry.iterdir())
        assert files == ["sim-1.1.json", "sim-1.2.json", "sim-1.3.json", "sim-2.1.json"]
        entries = {p.stem: json.loads(p.read_text()) for p in registry.iterdir()}
        for entry in entries.values():
            assert set(entry) == {"location", "url", "vid", "pid", "serial", "description", "manufacturer"}
        assert [entries[f"sim-1.{n}"]["url"] for n in (1, 2, 3)] == first.station_urls  # espsim://
        assert [url.replace("espsim://", "socket://") for url in first.station_urls] == first.urls  # one TCP port
        assert entries["sim-2.1"]["url"] == second.station_urls[0]
        cp2102, jtag, ch340 = (entries[f"sim-1.{n}"] for n in (1, 2, 3))
        assert (cp2102["vid"], cp2102["pid"]) == (0x10C4, 0xEA60) and re.fullmatch("[0-9a-f]{32}", cp2102["serial"])
        assert (jtag["vid"], jtag["pid"], jtag["serial"]) == (0x303A, 0x1001, "30:AE:A4:00:00:02")
        assert (ch340["vid"], ch340["pid"], ch340["serial"]) == (0x1A86, 0x7523, None)
        # chip names, not numbers: a random TCP port in a URL may well read 8266
        texts = "".join(json.dumps({k: v for k, v in e.items() if k != "url"}) for e in entries.values())
        assert not re.search(r"esp\d|8266|8285", texts, re.I)

        first.unplug(1)
        assert not (registry / "sim-1.2.json").exists()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(host_port(jtag["url"]), timeout=3).close()
        first.plug(1)
        assert json.loads((registry / "sim-1.2.json").read_text()) == jtag  # same port, same file
    assert list(registry.iterdir()) == []


# --- line-rate pacing ----------------------------------------------------------------------------------------------


def test_pacer_spends_ten_bits_per_byte():
    pacer = LinePacer()
    start = time.monotonic()
    for _ in range(10):
        pacer.spend(1152, 115200)  # 10 x 0.1 s of line time
    elapsed = time.monotonic() - start
    assert 0.95 <= elapsed < 1.3


def test_throttled_board_paces_both_directions_and_follows_change_baudrate():
    board = EspBoard("esp32", 1)
    with served(board, throttle=True) as server:
        esp = ESP32ROM(server.urls[0])
        with closing(esp._port):
            esp.sync()

            def upload_block() -> float:  # ~6 KiB host -> chip
                start = time.monotonic()
                esp.mem_begin(0x1800, 1, 0x1800, 0x3FFB0000)
                esp.mem_block(bytes(0x1800), 0)
                return time.monotonic() - start

            def read_slow() -> float:  # 16 x 64-byte answers chip -> host
                start = time.monotonic()
                esp.read_flash_slow(0, 1024, None)
                return time.monotonic() - start

            slow_up, slow_down = upload_block(), read_slow()
            esp.change_baud(921600)
            assert board.baud == 921600
            fast_up = upload_block()
    assert slow_up >= 0x1800 * 10 / 115200  # 0.53 s
    assert slow_down >= 16 * 80 * 10 / 115200  # 0.11 s
    assert 0x1800 * 10 / 921600 <= fast_up < slow_up / 3
