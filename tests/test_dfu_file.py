"""DFU / DfuSe files (PROTOCOLS §4.2, §4.3) checked against bytes assembled by hand from the spec."""
import struct

import pytest

from station.families.dfu.dfufile import (Element, Placement, Target, build_dfuse_file, check_board, parse_dfu,
                                          read_firmware)
from station.families.dfu.errors import DfuFileError


def spec_crc(data: bytes) -> int:
    """DFU 1.1 Annex B CRC, bit by bit: reflected polynomial 0xEDB88320, start 0xFFFFFFFF, no final XOR."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


def with_suffix(body: bytes, vid: int, pid: int, bcd_dfu: int, bcd_device: int = 0xFFFF) -> bytes:
    suffix = (bcd_device.to_bytes(2, "little") + pid.to_bytes(2, "little") + vid.to_bytes(2, "little")
              + bcd_dfu.to_bytes(2, "little") + b"UFD" + bytes([16]))
    return body + suffix + spec_crc(body + suffix).to_bytes(4, "little")


# One DfuSe file, byte by byte: prefix, a named target for alt 1 with two elements, suffix for 1d50:607f.
KEY = bytes(range(1, 7))
TLV = b"\x00\x04\x0a\x00\x00\x01"
TARGET_NAME = b"SPI Flash"
HAND_MADE_BODY = (
    b"DfuSe" + b"\x01" + (11 + 274 + 8 + 6 + 8 + 6).to_bytes(4, "little") + b"\x01"
    + b"Target" + b"\x01" + b"\x01\x00\x00\x00" + TARGET_NAME + bytes(255 - len(TARGET_NAME))
    + (8 + 6 + 8 + 6).to_bytes(4, "little") + (2).to_bytes(4, "little")
    + b"\x00\x10\x00\x00" + b"\x06\x00\x00\x00" + KEY
    + b"\x80\x11\x00\x00" + b"\x06\x00\x00\x00" + TLV
)
HAND_MADE = with_suffix(HAND_MADE_BODY, vid=0x1D50, pid=0x607F, bcd_dfu=0x011A)


def test_crc_matches_the_spec_check_value():
    # CRC-32 of "123456789" is 0xCBF43926 after the final XOR; the DFU suffix stores it without that XOR
    assert spec_crc(b"123456789") == 0x340BC6D9
    body = b"123456789" + b"\xff\xff\x7f\x60\x50\x1d\x00\x01UFD\x10"
    parsed = parse_dfu(body + spec_crc(body).to_bytes(4, "little"), "check.dfu")
    assert parsed.payload == b"123456789"


def test_hand_made_dfuse_file_parses():
    firmware = parse_dfu(HAND_MADE, "keys.dfu")
    assert firmware.is_dfuse
    assert (firmware.suffix.vid, firmware.suffix.pid, firmware.suffix.bcd_dfu) == (0x1D50, 0x607F, 0x011A)
    assert firmware.targets == (Target(alt=1, name="SPI Flash", elements=(Element(0x1000, KEY),
                                                                           Element(0x1180, TLV))),)
    assert firmware.placements(alt=0, address=None) == [Placement(1, 0x1000, KEY), Placement(1, 0x1180, TLV)]


def test_writer_produces_the_hand_made_bytes():
    targets = [Target(alt=1, name="SPI Flash", elements=(Element(0x1000, KEY), Element(0x1180, TLV)))]
    assert build_dfuse_file(targets, vid=0x1D50, pid=0x607F) == HAND_MADE


def test_unnamed_target_and_several_targets_round_trip():
    targets = [Target(alt=0, name="", elements=(Element(0x08020000, b"\xaa" * 300),)),
               Target(alt=1, name="DCT", elements=(Element(34, b"k" * 5), Element(2082, b"s" * 7)))]
    data = build_dfuse_file(targets, vid=0x2B04, pid=0xD006)
    assert data[11 + 6 + 1:11 + 6 + 1 + 4] == b"\x00\x00\x00\x00"  # bTargetNamed = 0
    assert parse_dfu(data, "x.dfu").targets == tuple(targets)


def test_plain_dfu_file_needs_the_profile_address():
    data = with_suffix(b"firmware", vid=0x0483, pid=0xDF11, bcd_dfu=0x0100)
    firmware = read_firmware(data, "fw.dfu")
    assert not firmware.is_dfuse and firmware.payload == b"firmware"
    assert firmware.placements(alt=0, address=0x08004000) == [Placement(0, 0x08004000, b"firmware")]
    with pytest.raises(DfuFileError, match="set the address to write it to in the profile"):
        firmware.placements(alt=0, address=None)


def test_raw_bin_is_taken_as_it_is():
    firmware = read_firmware(b"\x30\x82\x01\x22" + bytes(290), "server.der")
    assert firmware.suffix is None and len(firmware.payload) == 294
    assert firmware.placements(alt=1, address=0x1000) == [Placement(1, 0x1000, firmware.payload)]
    check_board(firmware, 0x1D50, 0x607F)  # a raw file names no board


def test_dfuse_file_with_a_profile_address_is_refused():
    with pytest.raises(DfuFileError, match="carries its own addresses"):
        parse_dfu(HAND_MADE, "keys.dfu").placements(alt=1, address=0x1000)


def test_empty_file_is_refused():
    with pytest.raises(DfuFileError, match="holds no bytes"):
        read_firmware(b"", "empty.bin").placements(alt=0, address=0)


def test_bad_crc_is_refused():
    damaged = bytearray(HAND_MADE)
    damaged[300] ^= 0x01
    with pytest.raises(DfuFileError, match=r"\"keys.dfu\" is damaged: its DFU suffix says CRC 0x[0-9A-F]{8} but "
                                           r"the bytes give 0x[0-9A-F]{8}"):
        parse_dfu(bytes(damaged), "keys.dfu")


def test_suffix_length_other_than_16_is_refused():
    data = bytearray(with_suffix(b"abc", 0xFFFF, 0xFFFF, 0x0100))
    data[-5] = 12
    data[-4:] = spec_crc(bytes(data[:-4])).to_bytes(4, "little")
    with pytest.raises(DfuFileError, match="length 12, not 16"):
        parse_dfu(bytes(data), "odd.dfu")


def test_unknown_dfu_version_is_refused():
    with pytest.raises(DfuFileError, match="DFU version 0x0110 .* only 0x0100 .* and 0x011A"):
        parse_dfu(with_suffix(b"abc", 0xFFFF, 0xFFFF, 0x0110), "new.dfu")


def test_missing_or_short_suffix_is_refused():
    with pytest.raises(DfuFileError, match="truncated: 10 bytes"):
        parse_dfu(b"0123456789", "tiny.dfu")
    with pytest.raises(DfuFileError, match="no DFU suffix"):
        parse_dfu(bytes(64), "plain.bin")


def test_bad_dfuse_prefix_is_refused():
    body = b"DfuSx\x01" + (11).to_bytes(4, "little") + b"\x00"
    with pytest.raises(DfuFileError, match="no DfuSe prefix"):
        parse_dfu(with_suffix(body, 0xFFFF, 0xFFFF, 0x011A), "x.dfu")


def test_prefix_size_disagreeing_with_the_file_is_refused():
    body = bytearray(HAND_MADE_BODY)
    body[6:10] = (len(body) + 1).to_bytes(4, "little")
    with pytest.raises(DfuFileError, match=f"prefix gives {len(body) + 1} bytes, the file holds {len(body)}"):
        parse_dfu(with_suffix(bytes(body), 0x1D50, 0x607F, 0x011A), "x.dfu")


def test_truncated_element_is_refused():
    body = bytearray(HAND_MADE_BODY[:-3])  # lose the last three data bytes
    body[6:10] = len(body).to_bytes(4, "little")
    with pytest.raises(DfuFileError, match="truncated: the file ends inside target 0"):
        parse_dfu(with_suffix(bytes(body), 0x1D50, 0x607F, 0x011A), "x.dfu")


def test_element_overrunning_its_target_is_refused():
    body = bytearray(HAND_MADE_BODY)
    element_size_at = 11 + 274 + 8 + 6 + 4
    body[element_size_at:element_size_at + 4] = struct.pack("<I", 7)
    with pytest.raises(DfuFileError, match="element 1 of target 0"):
        parse_dfu(with_suffix(bytes(body), 0x1D50, 0x607F, 0x011A), "x.dfu")


def test_stray_bytes_after_the_last_target_are_refused():
    body = bytearray(HAND_MADE_BODY + b"junk")
    body[6:10] = len(body).to_bytes(4, "little")
    with pytest.raises(DfuFileError, match="4 stray bytes"):
        parse_dfu(with_suffix(bytes(body), 0x1D50, 0x607F, 0x011A), "x.dfu")


def test_file_for_another_board_is_refused():
    photon_file = read_firmware(build_dfuse_file([], vid=0x2B04, pid=0xD006), "photon.dfu")
    with pytest.raises(DfuFileError, match="made for USB device 2b04:d006, but this board is 1d50:607f"):
        check_board(photon_file, 0x1D50, 0x607F)
    check_board(photon_file, 0x2B04, 0xD006)


@pytest.mark.parametrize("vid, pid", [(0xFFFF, 0xFFFF), (0xFFFF, 0x607F), (0x1D50, 0xFFFF)])
def test_wildcard_ids_match_any_board(vid, pid):
    check_board(read_firmware(with_suffix(b"x", vid, pid, 0x0100), "any.dfu"), 0x1D50, 0x607F)


def test_file_name_is_escaped_in_messages():
    with pytest.raises(DfuFileError) as caught:
        parse_dfu(b"short", "evil\x1b]0;pwned\x07.dfu")
    assert "\x1b" not in str(caught.value) and "\\x1b" in str(caught.value)
