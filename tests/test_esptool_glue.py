"""The C-speed checksum and SLIP reader the glue puts into esptool, on a real pyserial port (loop://), and what
the session's connect and verify do with them on an emulated board."""
from __future__ import annotations

import functools
import operator
import os

import pytest
import serial
from esptool.util import FatalError

import station.families.esp.session  # noqa: F401 - registers the espsim:// scheme, as the station does
from station.families.esp import esptool_glue
from station.families.esp.session import EspSession
from station.families.esp.sim.board import EspBoard
from station.families.esp.sim.server import EspSimServer
from station.model import StepFailed


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 1024, 16385])
def test_checksum_is_the_xor_of_every_byte_seeded_with_0xef(size):
    data = os.urandom(size)
    assert esptool_glue.checksum(data) == functools.reduce(operator.xor, data, 0xEF)
    assert esptool_glue.checksum(data, 0) == functools.reduce(operator.xor, data, 0)


def loop_port(*chunks: bytes) -> serial.SerialBase:
    port = serial.serial_for_url("loop://", timeout=0.05)
    for chunk in chunks:
        port.write(chunk)
    return port


def test_slip_reader_yields_packets_unescaped_across_chunks():
    payload = bytes(range(256)) + b"\xdb\xdc\xc0\xdb\xdd"
    escaped = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    port = loop_port(b"\xc0" + escaped[:100])
    reader = esptool_glue.slip_reader(port)
    port.write(escaped[100:] + b"\xc0\xc0\xc0\xc0ok\xc0")  # the rest, an empty packet and a short one
    packets = [next(reader), next(reader), next(reader)]
    assert packets == [payload, b"", b"ok"]
    with pytest.raises(FatalError, match="Serial data stream stopped"):
        next(reader)


def test_slip_reader_refuses_what_is_not_slip_in_words():
    with pytest.raises(FatalError, match=r"Invalid head of packet \(0x41\)"):
        next(esptool_glue.slip_reader(loop_port(b"ABC")))
    with pytest.raises(FatalError, match="Invalid SLIP escape"):
        next(esptool_glue.slip_reader(loop_port(b"\xc0\x01\xdb\x02\xc0")))
    with pytest.raises(FatalError, match="Guru Meditation Error detected"):
        next(esptool_glue.slip_reader(loop_port(b"Guru Meditation Error: Core 0 panic'ed")))
    with pytest.raises(FatalError, match=r"Packet content transfer stopped \(received 2 bytes\)"):
        next(esptool_glue.slip_reader(loop_port(b"\xc0\x01\x02")))
    with pytest.raises(FatalError, match="No serial data received"):
        next(esptool_glue.slip_reader(loop_port()))


def session(url: str, said: list[str] | None = None) -> EspSession:
    return EspSession(url, lambda level, message: (said if said is not None else []).append(message),
                      lambda done, total: None)


def test_connect_with_the_profiles_chip_refuses_another_chip_before_uploading_anything():
    board, said = EspBoard("esp32c3", 1), []
    with EspSimServer([board]) as server:
        with pytest.raises(StepFailed, match="Wrong chip: profile wants ESP32, board is ESP32-C3"):
            session(server.station_urls[0], said).connect(baud=460800, chip="ESP32")
        assert said and not any("stub" in line.lower() or "baud" in line.lower() for line in said)
        info = session(server.station_urls[0]).connect(baud=460800, chip="ESP32-C3")
    assert info.chip == "ESP32-C3"


def test_verify_asks_again_only_what_esptool_did_not_check_unless_told_to_ask_everything():
    board = EspBoard("esp32", 1)
    first, second = b"\x11" * 8192, b"\x22" * 4096
    with EspSimServer([board]) as server:
        s = session(server.station_urls[0])
        s.connect(baud=460800)
        s.write([(0x30000, first)])
        s.write([(0x40000, second)])
        assert s.verify([(0x30000, first), (0x40000, second)]) == 0  # both checked by esptool as written
        s.write([(0x31000, second)])  # overwrites the second half of `first` after esptool checked it
        with pytest.raises(StepFailed, match="flash at 0x30000"):
            s.verify([(0x30000, first), (0x40000, second)])
        board.flash.program(0x40000, b"\x00" * 16)  # the flash changes behind esptool's back (bits cleared)
        assert s.verify([(0x40000, second)]) == 0
        with pytest.raises(StepFailed, match="flash at 0x40000"):
            s.verify([(0x40000, second)], everything=True)
    assert board.read_flash(0x31000, 4096) == second
