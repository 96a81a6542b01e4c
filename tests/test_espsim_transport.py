"""espsim://: serial over TCP with DTR/RTS, and the auto-reset circuit it drives on the emulated board."""
from __future__ import annotations

import errno
import json
import socket
import threading
from contextlib import closing

import esptool.cmds
import pytest
import serial
from esptool.reset import ClassicReset, HardReset, UnixTightReset
from esptool.targets import ESP32ROM
from esptool.util import FatalError

import station.families.esp.session  # noqa: F401 - registers the espsim:// scheme, as the station does
from station.families.esp.session import BOOT_MODE_PROMPT, EspSession
from station.model import StepFailed
from station.families.esp.sim import protocol_espsim as espsim
from station.families.esp.sim.board import EN_RISE_S, DeafMode, EspBoard, EspFaults, RomLoader
from station.families.esp.sim.server import EspSimServer

ESP32 = EspBoard("esp32", 1).chip
SPI_BOOT_TEXT = ESP32.boot_log_spi + b"I (29) boot: 2nd stage bootloader\r\nI (63) boot: Loaded app from partition\r\n"


class RecordingApp:
    """Firmware that records what it hears and answers `n?` with n bytes."""

    def __init__(self, board):
        self.board = board
        board.heard = bytearray()

    def receive(self, data: bytes) -> None:
        self.board.heard += data
        if data.endswith(b"?"):
            self.board.send(bytes(i & 0xFF for i in range(int(data[:-1]))))


def app_board(**kwargs) -> EspBoard:
    """An ESP32 whose flash holds something the ROM boots (a bootloader header at 0x1000), running RecordingApp."""
    board = EspBoard("esp32", 1, **kwargs)
    board.flash.program(0x1000, b"\xe9")
    board.app_mode_factory = RecordingApp
    return board


def open_port(url: str, timeout: float = 3.0) -> serial.SerialBase:
    port = serial.serial_for_url(url, exclusive=True, do_not_open=True)
    port.timeout = timeout
    port.open()
    return port


def logged() -> tuple[list[str], object]:
    lines: list[str] = []
    return lines, lambda level, message: lines.append(message)


# --- opening and the reset sequences ---------------------------------------------------------------------------


def test_the_station_opens_registry_urls_as_espsim_and_opening_does_not_reset(tmp_path):
    board = app_board()
    with EspSimServer([board], registry_dir=tmp_path) as server:
        assert board.boot_count == 1  # plugging in powers the board up: it boots its firmware
        entry = json.loads(server.registry_path(0).read_text())
        assert entry["url"] == server.station_urls[0] and entry["url"].startswith("espsim://127.0.0.1:")
        with closing(open_port(entry["url"], timeout=0.05)) as port:
            assert isinstance(port, espsim.Serial)
            assert port.in_waiting == 0  # no boot log: DTR and RTS asserted together leave EN high
            port.write(b"hello")
            assert port.read(3) == b""  # nothing to read yet; the app only records
            port.timeout = 3
            port.write(b"3?")
            assert port.read(3) == b"\x00\x01\x02"
        assert board.boot_count == 1 and bytes(board.heard) == b"hello3?"


def test_classic_reset_boots_the_rom_loader_and_its_boot_log_is_waiting():
    board = app_board()
    with EspSimServer([board]) as server, closing(open_port(server.station_urls[0])) as port:
        ClassicReset(port)()
        assert port.in_waiting == len(ESP32.boot_log_download)  # in the buffer when esptool looks, exactly
        log_text = port.read(port.in_waiting)
        assert b"boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))" in log_text
        assert log_text.endswith(b"waiting for download\r\n")
        assert isinstance(board.mode, RomLoader) and (board.dtr, board.rts) == (False, False)
        esp = ESP32ROM(port)
        esp.sync()
        assert not esp.sync_stub_detected
        assert esp.read_reg(0x40001000) == ESP32.magic_value


def test_unix_tight_reset_cannot_reach_the_lines_and_says_enotty():
    board = app_board()
    with EspSimServer([board]) as server, closing(open_port(server.station_urls[0])) as port:
        with pytest.raises(OSError) as info:
            port.fileno()
        assert info.value.errno == errno.ENOTTY
        UnixTightReset(port, 0.05)()  # esptool catches ENOTTY: "Chip was NOT reset", and moves on
        assert port.in_waiting == 0
    assert board.boot_count == 1


def test_hard_reset_boots_the_firmware_in_flash():
    board = app_board()
    with EspSimServer([board]) as server, closing(open_port(server.station_urls[0])) as port:
        ClassicReset(port)()
        port.reset_input_buffer()
        HardReset(port)()
        assert port.read(len(SPI_BOOT_TEXT)) == SPI_BOOT_TEXT
        assert port.in_waiting == 0
        assert board.boot_count == 2 and isinstance(board.mode, RecordingApp)
        port.write(b"after")
        port.write(b"1?")
        assert port.read(1) == b"\x00"
    assert bytes(board.heard).endswith(b"after1?")


def test_blank_flash_boots_nowhere_and_says_invalid_header():
    board = EspBoard("esp32", 1)
    expected = ESP32.boot_log_spi + b"invalid header: 0xffffffff\r\n"
    with EspSimServer([board]) as server, closing(open_port(server.station_urls[0])) as port:
        HardReset(port)()  # DTR is asserted since opening: RTS cannot pull EN low through the circuit
        assert port.in_waiting == 0
        port.dtr = False  # as every esptool reset leaves it
        HardReset(port)()
        assert port.read(len(expected)) == expected and port.in_waiting == 0
    assert board.boot_count == 0


def test_en_held_low_keeps_the_chip_silent_and_closing_the_port_lets_it_boot():
    board = app_board()
    with EspSimServer([board]) as server:
        port = open_port(server.station_urls[0], timeout=0.05)
        port.dtr = False  # RTS alone asserted: EN low
        port.write(b"lost")
        assert port.read(10) == b"" and board.in_reset and isinstance(board.mode, DeafMode)
        port.close()  # a closed tty releases DTR and RTS: EN rises, IO0 is high, the firmware boots
        assert board.wait_for_app_boot(count=2, timeout=5)
    assert b"lost" not in bytes(board.heard)


def test_the_strap_is_sampled_when_en_has_risen_in_host_time():
    """Frames carry the host's clock: a slow line thread cannot change what the chip sees, only late writes can."""
    def reset(release_gap: float) -> bytes:
        board = app_board()
        with EspSimServer([board]) as server:
            with socket.create_connection(("127.0.0.1", int(server.urls[0].rsplit(":", 1)[1])), timeout=3) as sock:
                sock.sendall(espsim.PREAMBLE)
                t0 = 1_000_000_000
                frames = [(espsim.RTS_BIT, t0),  # EN low
                          (espsim.DTR_BIT | espsim.RTS_BIT, t0 + 100_000),  # EN let go, IO0 still high
                          (espsim.DTR_BIT, t0 + 100_000 + int(release_gap * 1e6)),  # IO0 low
                          (0, t0 + 150_000)]
                stream = b"".join(espsim.encode_frame(espsim.KIND_LINES, espsim.LINES.pack(bits, t))
                                  for bits, t in frames)
                sock.sendall(stream + espsim.encode_frame(espsim.KIND_SYNC, espsim.SYNC.pack(7, t0 + 150_000)))
                decoder, frames_in, got = espsim.FrameDecoder(), [], sock.recv(len(espsim.PREAMBLE))
                assert got == espsim.PREAMBLE
                while (espsim.KIND_SYNC, espsim.SYNC_ECHO.pack(7)) not in frames_in:
                    frames_in += decoder.feed(sock.recv(4096))
                return b"".join(data for kind, data in frames_in if kind == espsim.KIND_DATA)

    assert reset(0.0001).endswith(b"waiting for download\r\n")  # ClassicReset's two writes, microseconds apart
    assert reset(EN_RISE_S + 0.005).startswith(ESP32.boot_log_spi)  # IO0 went low after EN had risen


def test_a_sync_waits_for_en_to_rise_when_the_host_asks_at_once():
    board = app_board()
    with EspSimServer([board]) as server, closing(open_port(server.station_urls[0])) as port:
        port.dtr, port.rts = False, True
        port.rts = False  # released just now; the chip starts EN_RISE_S later
        assert port.read(len(SPI_BOOT_TEXT)) == SPI_BOOT_TEXT  # the SYNC echo waited for it
        assert board.boot_count == 2


# --- esptool over espsim://, both ways ---------------------------------------------------------------------------


def test_esptool_default_reset_write_and_hard_reset_then_again_from_the_app():
    board = app_board()
    data = bytes(range(256)) * 1024
    with EspSimServer([board]) as server:
        port = open_port(server.station_urls[0])
        esp = esptool.cmds.detect_chip(port, connect_mode="default-reset", connect_attempts=3)
        assert esp.CHIP_NAME == "ESP32" and board.boot_count == 1
        esp = esptool.cmds.run_stub(esp)
        esp.change_baud(921600)
        esptool.cmds.attach_flash(esp)
        esptool.cmds.write_flash(esp, [(0x20000, data)], flash_freq="keep", flash_mode="keep", flash_size="keep")
        esptool.cmds.reset_chip(esp, "hard-reset")
        port.reset_input_buffer()
        assert board.boot_count == 2 and board.baud == 115200 and isinstance(board.mode, RecordingApp)
        esp = esptool.cmds.detect_chip(port, connect_mode="default-reset", connect_attempts=3)  # app -> ROM
        assert esp.flash_md5sum(0x20000, len(data)) == __import__("hashlib").md5(data).hexdigest()
        port.close()
    assert board.read_flash(0x20000, len(data)) == data


def test_station_session_over_espsim_connects_and_resets_into_the_app():
    board = app_board()
    lines, log = logged()
    with EspSimServer([board]) as server:
        session = EspSession(server.station_urls[0], log, lambda done, total: None)
        info = session.connect(baud=460800)
        assert (info.chip, info.mac) == ("ESP32", board.mac_text)
        session.write([(0x30000, b"\x42" * 8192)])
        session.reset()
        assert board.wait_for_app_boot(count=2, timeout=5)
    assert board.read_flash(0x30000, 8192) == b"\x42" * 8192


def test_wrong_boot_mode_over_espsim_is_named_and_asks_for_the_operator():
    board = app_board(faults=EspFaults(wrong_boot_mode=True))
    lines, log = logged()
    with EspSimServer([board]) as server:
        session = EspSession(server.station_urls[0], log, lambda done, total: None)
        with pytest.raises(StepFailed) as failed:
            session.connect(baud=115200)
    assert isinstance(failed.value.__cause__, FatalError)
    assert "Wrong boot mode detected (0x13)! The chip needs to be in download mode." in str(failed.value.__cause__)
    assert failed.value.operator_prompt == BOOT_MODE_PROMPT
    assert "not in download mode (boot:0x13)" in failed.value.reason
    # power-on, then each ClassicReset attempt (1st and 3rd of 3; the tight reset needs an ioctl espsim:// has
    # not) booted the firmware in flash instead of the ROM loader
    assert board.boot_count == 3


def test_the_prompts_probe_sees_boot_and_reset_pressed_and_the_next_connect_keeps_download_mode():
    """A board whose auto-reset can't pull IO0 low: the probe says no until a person holds BOOT and presses RESET,
    then yes; the connect after it does not reset the board out of download mode."""
    board = app_board(faults=EspFaults(wrong_boot_mode=True))
    lines, log = logged()
    with EspSimServer([board]) as server:
        session = EspSession(server.station_urls[0], log, lambda done, total: None)
        with pytest.raises(StepFailed) as failed:
            session.connect(baud=115200)
        assert failed.value.probe() is False  # nobody has touched the board yet
        board.hold_boot(True)
        board.press_reset()
        board.hold_boot(False)
        assert failed.value.probe() is True
        info = session.connect(baud=460800)
        assert (info.chip, info.mac) == ("ESP32", board.mac_text)
        session.write([(0x30000, b"\x42" * 4096)])
        session.close()
        assert board.faults.wrong_boot_mode and server.is_plugged(0)  # the circuit is still broken; no cable touched
    assert board.read_flash(0x30000, 4096) == b"\x42" * 4096


def test_no_sync_over_espsim_shows_download_mode_without_answers():
    board = EspBoard("esp32", 1, faults=EspFaults(no_sync=True))
    with EspSimServer([board]) as server, closing(open_port(server.station_urls[0])) as port:
        with pytest.raises(FatalError, match="Download mode successfully detected, but getting no sync reply"):
            esptool.cmds.detect_chip(port, connect_mode="default-reset", connect_attempts=3)


# --- the transport itself ----------------------------------------------------------------------------------------


def test_socket_and_espsim_share_one_tcp_port():
    board = app_board()
    with EspSimServer([board]) as server:
        assert server.urls[0].replace("socket://", "espsim://") == server.station_urls[0]
        esp = ESP32ROM(server.urls[0])  # stock socket://: the connection itself is the reset into the ROM
        with closing(esp._port):
            esp.sync()
            assert isinstance(board.mode, RomLoader)
        with closing(open_port(server.station_urls[0])) as port:
            assert port.in_waiting == 0 and isinstance(board.mode, RomLoader)  # espsim:// left it alone


def test_big_writes_arrive_whole_and_in_waiting_is_exact():
    board = app_board()
    payload = bytes(range(251)) * 4200  # ~1 MiB: sixteen 64 KiB frames
    with EspSimServer([board]) as server, closing(open_port(server.station_urls[0])) as port:
        port.write(payload)
        port.write(b"70000?")
        answer = port.read(70000)
        assert answer == bytes(i & 0xFF for i in range(70000)) and port.in_waiting == 0
        port.write(b"5?")
        assert port.read(2) == b"\x00\x01"
        assert port.in_waiting == 3 and port.read(3) == b"\x02\x03\x04"
    assert bytes(board.heard) == payload + b"70000?5?"


def test_frame_decoder_reassembles_frames_split_anywhere():
    frames = [(0, b"abc"), (1, espsim.LINES.pack(3, 12345)), (0, bytes(range(256)) * 255), (0, b""),
              (2, b"\x01" * 12), (0, b"end")]
    stream = b"".join(espsim.encode_frame(kind, data) for kind, data in frames[:3]) + \
        espsim.encode_data(bytes(range(256)) * 600) + b"".join(espsim.encode_frame(k, d) for k, d in frames[3:])
    for step in (1, 2, 7, 4096, len(stream)):
        decoder, out = espsim.FrameDecoder(), []
        for i in range(0, len(stream), step):
            out += decoder.feed(stream[i:i + step])
        # serial bytes may come out in pieces; control frames come out whole and in their place
        merged: list[tuple[int, bytes]] = []
        for kind, data in out:
            if kind == espsim.KIND_DATA and merged and merged[-1][0] == espsim.KIND_DATA:
                merged[-1] = (kind, merged[-1][1] + data)
            else:
                merged.append((kind, data))
        assert merged == [(0, b"abc"), frames[1], (0, bytes(range(256)) * 855), frames[4], (0, b"end")], step
    assert [len(data) for _, data in espsim.FrameDecoder().feed(espsim.encode_data(bytes(140000)))] == \
        [65535, 65535, 8930]


def test_an_espsim_url_that_is_not_an_emulator_is_refused_clearly():
    listener = socket.create_server(("127.0.0.1", 0))
    port_number = listener.getsockname()[1]

    def answer_and_hang_up():
        conn, _ = listener.accept()
        conn.recv(64)
        conn.close()

    thread = threading.Thread(target=answer_and_hang_up)
    thread.start()
    try:
        with pytest.raises(serial.SerialException, match="did not answer the espsim handshake"):
            open_port(f"espsim://127.0.0.1:{port_number}")
    finally:
        thread.join(5)
        listener.close()
    with pytest.raises(serial.SerialException, match=r"expected espsim://<host>:<port>"):
        open_port("espsim://127.0.0.1")


def test_a_late_preamble_still_gets_a_framed_connection(monkeypatch):
    import station.families.esp.sim.server as esp_server

    monkeypatch.setattr(esp_server, "SNIFF_S", 0.0)  # as if the client thread stalled past the sniff window
    board = app_board()
    with EspSimServer([board]) as server, closing(open_port(server.station_urls[0])) as port:
        assert isinstance(board.mode, RomLoader)  # the server took it for socket:// and reset the board
        ClassicReset(port)()
        assert port.read(port.in_waiting).endswith(b"waiting for download\r\n")
