"""DfuSe memory-layout strings (PROTOCOLS §4.3, §5.1): parsing, page lookup and range refusals."""
import pytest

from station.families.dfu.errors import DfuLayoutError
from station.families.dfu.layout import Segment, parse_layout

PHOTON = "@Internal Flash   /0x08000000/03*016Ka,01*016Kg,01*064Kg,07*128Kg"
CORE_SPI = "@SPI Flash : SST25x/0x00000000/512*04Kg"
K = 1024


def test_photon_internal_flash_segments():
    layout = parse_layout(PHOTON)
    assert layout.name == "Internal Flash"
    assert layout.segments == (
        Segment(0x08000000, 0x0800C000, 16 * K, readable=True, erasable=False, writeable=False),
        Segment(0x0800C000, 0x08010000, 16 * K, readable=True, erasable=True, writeable=True),
        Segment(0x08010000, 0x08020000, 64 * K, readable=True, erasable=True, writeable=True),
        Segment(0x08020000, 0x08100000, 128 * K, readable=True, erasable=True, writeable=True),
    )


def test_core_spi_flash_and_name_with_colon():
    layout = parse_layout(CORE_SPI)
    assert layout.name == "SPI Flash : SST25x"
    assert layout.segments == (Segment(0, 0x200000, 4 * K, True, True, True),)


@pytest.mark.parametrize("letter, bits", [("a", (1, 0, 0)), ("b", (0, 1, 0)), ("c", (1, 1, 0)), ("d", (0, 0, 1)),
                                          ("e", (1, 0, 1)), ("f", (0, 1, 1)), ("g", (1, 1, 1))])
def test_type_letters_are_access_bits(letter, bits):
    seg = parse_layout(f"@X/0x1000/1*1K{letter}").segments[0]
    assert (seg.readable, seg.erasable, seg.writeable) == tuple(map(bool, bits))


@pytest.mark.parametrize("spec, size", [("2*016 e", 16), ("2*016Be", 16), ("2*3Ke", 3 * K), ("2*1Me", 1 << 20)])
def test_multipliers(spec, size):
    seg = parse_layout(f"@Option Bytes  /0x1FFF0000/{spec}").segments[0]
    assert (seg.page_size, seg.end - seg.start) == (size, 2 * size)


def test_several_address_groups():
    layout = parse_layout("@Flash/0x08000000/2*1Kg/0x1FFF7800/1*512 a")
    assert [(s.start, s.end) for s in layout.segments] == [(0x08000000, 0x08000800), (0x1FFF7800, 0x1FFF7A00)]
    assert layout.segment_at(0x080007FF).start == 0x08000000
    assert layout.segment_at(0x08000800) is None
    assert layout.segment_at(0x1FFF79FF).writeable is False


def test_pages_are_only_those_touched():
    layout = parse_layout(PHOTON)
    # 5 bytes into the 16K page at 0x0800C000, across into the first byte of the 64K page at 0x08010000
    assert layout.pages(0x0800C005, 0x08010001) == [0x0800C000, 0x08010000]
    assert layout.pages(0x0800C000, 0x0800C000 + 16 * K) == [0x0800C000]
    assert parse_layout(CORE_SPI).pages(0x1000, 0x1000 + 294) == [0x1000]
    assert parse_layout(CORE_SPI).pages(0x0FFF, 0x2001) == [0x0000, 0x1000, 0x2000]


def test_write_inside_writeable_segments_passes():
    parse_layout(PHOTON).check_write(0x080A0000, 128 * K)
    parse_layout(PHOTON).check_write(0x0800C000, 0x08100000 - 0x0800C000)  # everything writeable, to the last byte


def test_write_into_read_only_bootloader_is_refused():
    with pytest.raises(DfuLayoutError, match=r"0x08000000-0x0800BFFF of \"Internal Flash\".*read-only"):
        parse_layout(PHOTON).check_write(0x0800BFF0, 32)


def test_write_outside_the_layout_is_refused():
    with pytest.raises(DfuLayoutError, match=r"starts outside \"SPI Flash : SST25x\", which holds "
                                              r"0x00000000-0x001FFFFF"):
        parse_layout(CORE_SPI).check_write(0x200000, 4)


def test_write_larger_than_the_segments_is_refused():
    with pytest.raises(DfuLayoutError, match=r"larger than \"DCT Flash\": only 16 bytes fit from 0x00003FF0"):
        parse_layout("@DCT Flash   /0x00000000/01*016Kg").check_write(0x3FF0, 17)


def test_write_across_a_gap_between_groups_is_refused():
    with pytest.raises(DfuLayoutError, match="larger than"):
        parse_layout("@Flash/0x0/1*1Kg/0x1000/1*1Kg").check_write(0x300, 0x200)


def test_empty_write_is_refused():
    with pytest.raises(DfuLayoutError, match="empty"):
        parse_layout(CORE_SPI).check_write(0x1000, 0)


def test_read_from_write_only_segment_is_refused():
    with pytest.raises(DfuLayoutError, match="does not allow to be read"):
        parse_layout("@OTP/0x1FFF7800/1*512 d").check_read(0x1FFF7800, 16)
    parse_layout(PHOTON).check_read(0x08000000, 64)  # the bootloader may be read


@pytest.mark.parametrize("text, why", [
    ("Internal Flash/0x0/1*1Kg", "does not start with '@'"),
    ("@Internal Flash", "needs '/0xADDRESS/segments'"),
    ("@Flash/0x0/1*1Kg/0x1000", "needs '/0xADDRESS/segments'"),
    ("@Flash/zero/1*1Kg", "is not an address"),
    ("@Flash/0x0/1*1Kz", "is not COUNT\\*SIZE"),
    ("@Flash/0x0/1x1Kg", "is not COUNT\\*SIZE"),
    ("@Flash/0x0/0*1Kg", "is empty"),
    ("@Flash/0xFFFFF000/2*4Kg", "runs past the 4 GiB"),
    ("@Flash/0x0/4*1Kg/0x800/1*1Kg", "overlap at 0x00000800"),
])
def test_malformed_strings_are_refused_with_the_reason(text, why):
    with pytest.raises(DfuLayoutError, match=f"DFU memory layout .* is malformed: .*{why}"):
        parse_layout(text)


def test_device_text_is_escaped_and_cut_in_messages():
    hostile = "@Flash\x1b[2J\n/0x0/1*1Kq" + "A" * 500
    with pytest.raises(DfuLayoutError) as caught:
        parse_layout(hostile)
    message = str(caught.value)
    assert "\x1b" not in message and "\n" not in message
    assert "\\x1b[2J\\x0a" in message
    assert len(message) < 400
