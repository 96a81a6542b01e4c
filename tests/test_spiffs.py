"""SPIFFS images for the ESP8266 Arduino core, checked against the format's facts (spiffs_nucleus.h with the
core's spiffs_config.h, ../shared/PROTOCOLS.md §11.3) and against a second reader written differently here: the
module finds files through lookup pages and index pages (as SPIFFS does); `scan_pages` below ignores both and
reads every page's header (as spiffs_check does), so the two agree only on a consistent image."""
from __future__ import annotations

import random
import struct

import pytest

from station.families.esp.payloads import PayloadError
from station.families.esp.payloads.spiffs import build_spiffs, read_spiffs, used_length

FS_4M1M = 0xFA000  # _FS_end - _FS_start of eagle.flash.4m1m.ld, blocks of 8192
FS_1M64 = 0x10000  # 1M64: blocks of 4096


def scan_pages(image: bytes, block: int, page: int = 256) -> dict[str, bytes]:
    """Files by page headers alone: span-0 index pages (flags 0xF8, id top bit set) give name and size, data
    pages (flags 0xFC) give the bytes by (object id, span index); lookup pages (the first of each block) are
    skipped without being read."""
    heads, data = {}, {}
    for pix in range(len(image) // page):
        if pix % (block // page) == 0:
            continue
        at = pix * page
        obj_id, span, flags = struct.unpack_from("<HHB", image, at)
        if flags == 0xF8 and obj_id & 0x8000 and span == 0:
            size, kind = struct.unpack_from("<IB", image, at + 8)
            assert kind == 1
            heads[obj_id & 0x7FFF] = (image[at + 13:at + 45].split(b"\0")[0].decode(), size)
        elif flags == 0xFC:
            data[(obj_id, span)] = image[at + 5:at + page]
    files = {}
    for obj_id, (name, size) in heads.items():
        body = b"".join(data[(obj_id, s)] for s in range(-(-size // (page - 5))))
        files[name] = body[:size]
    return files


FILES = {"/client.der": bytes(range(256)) * 3 + b"end", "/client.key": b"\x30\x77" + b"k" * 119,
         "/ca.der": b"\x30\x82" + b"c" * 500, "/broker.fp": b"AB:CD"}


def test_builder_and_both_readers_agree_on_the_files():
    image = build_spiffs(FILES, FS_4M1M, 8192)
    assert len(image) == FS_4M1M
    assert read_spiffs(image, 8192) == FILES
    assert scan_pages(image, 8192) == FILES


def test_a_file_needing_more_index_pages_reads_back_whole():
    big = random.Random(7).randbytes(40_000)  # 160 data pages: the header page's 105 entries and a second index
    image = build_spiffs({"/certs.ar": big, "/x": b"1"}, FS_4M1M, 8192)
    assert read_spiffs(image, 8192) == {"/certs.ar": big, "/x": b"1"}
    assert scan_pages(image, 8192) == {"/certs.ar": big, "/x": b"1"}


def test_the_bytes_are_where_spiffs_nucleus_puts_them():
    data = b"A" * 300  # two data pages: 251 + 49 bytes
    image = build_spiffs({"/a.der": data}, FS_4M1M, 8192)

    # block 0, lookup page 0: one u16 per following page, index page id with the top bit set
    assert image[0:8] == bytes.fromhex("0180 0100 0100 ffff")
    assert image[8:252] == b"\xFF" * 244
    assert image[252:254] == struct.pack("<H", (0x20140529 ^ 256) & 0xFFFF) == b"\x29\x04"  # magic, no length
    assert image[254:256] == b"\x00\x00"  # erase count as SPIFFS_format leaves it
    # page 1: object index header, aligned tables: entries start at byte 46, name at 13 (no metadata)
    head = image[256:512]
    assert head[:8] == bytes.fromhex("0180 0000 f8 ffffff")  # id|0x8000, span 0, flags, 3 unwritten bytes
    assert struct.unpack_from("<IB", head, 8) == (300, 1)
    assert head[13:45] == b"/a.der".ljust(32, b"\0")
    assert struct.unpack_from("<HH", head, 46) == (2, 3)  # data pages 2 and 3, by absolute page number
    assert head[50:] == b"\xFF" * (256 - 50)
    # pages 2 and 3: data pages, 251 bytes after a 5-byte header
    assert image[512:517] == bytes.fromhex("0100 0000 fc")
    assert struct.unpack_from("<HHB", image, 768) == (1, 1, 0xFC)
    assert image[517:768] == b"A" * 251 and image[773:773 + 49] == b"A" * 49
    assert image[773 + 49:1024] == b"\xFF" * (251 - 49)
    # every other block: formatted, empty
    for bix in range(1, FS_4M1M // 8192):
        block = image[bix * 8192:(bix + 1) * 8192]
        assert block[252:256] == b"\x29\x04\x00\x00" and block.count(b"\xFF") == 8192 - 4


def test_4096_byte_blocks_have_fifteen_pages_after_one_lookup_page():
    image = build_spiffs({"/f": b"x" * (251 * 16)}, FS_1M64, 4096)  # 16 data pages + 1 index page: two blocks
    lookup0 = struct.unpack_from("<15H", image, 0)
    assert lookup0 == (0x8001,) + (1,) * 14
    assert struct.unpack_from("<3H", image, 4096) == (1, 1, 0xFFFF)  # block 1 takes the last two at pages 17, 18
    assert struct.unpack_from("<HH", image, 256 + 46) == (1 + 1, 1 + 2)
    assert struct.unpack_from("<H", image, 256 + 46 + 2 * 14) == (17,)  # span 14: block 1's first page
    assert image[4096 + 252:4096 + 256] == b"\x29\x04\x00\x00"
    assert read_spiffs(image, 4096) == scan_pages(image, 4096) == {"/f": b"x" * (251 * 16)}


def test_the_reader_refuses_what_the_firmware_would_format():
    image = build_spiffs(FILES, FS_4M1M, 8192)
    with pytest.raises(PayloadError, match="magic 0xffff"):
        read_spiffs(b"\xFF" * FS_4M1M, 8192)  # erased flash
    with pytest.raises(PayloadError, match="block 1 "):
        read_spiffs(image, 4096)  # written for 8192-byte blocks: block 1 of 4096 has no magic
    damaged = bytearray(image)
    damaged[3 * 8192 + 252] ^= 0xFF
    with pytest.raises(PayloadError, match="block 3 "):
        read_spiffs(bytes(damaged), 8192)


def test_the_reader_refuses_an_inconsistent_image():
    image = bytearray(build_spiffs({"/a": b"A" * 300}, FS_4M1M, 8192))
    image[768 + 2] = 5  # second data page claims another span
    with pytest.raises(PayloadError, match="holds span 5"):
        read_spiffs(bytes(image), 8192)
    image = bytearray(build_spiffs({"/a": b"A" * 300}, FS_4M1M, 8192))
    image[512 + 4] = 0xFE  # a data page that was never finalised
    with pytest.raises(PayloadError, match="not a finished data page"):
        read_spiffs(bytes(image), 8192)


def test_a_file_created_and_never_written_reads_as_empty():
    image = bytearray(build_spiffs({"/a": b"", "/b": b"B"}, FS_4M1M, 8192))
    assert struct.unpack_from("<I", image, 256 + 8) == (0,)
    image[256 + 8:256 + 12] = b"\xFF" * 4  # SPIFFS_UNDEFINED_LEN, as spiffs_object_create leaves it
    assert read_spiffs(bytes(image), 8192) == {"/a": b"", "/b": b"B"}


def test_random_file_sets_read_back_alike_through_both_readers():
    rng = random.Random(15)
    for _ in range(20):
        size, block, largest = rng.choice([(FS_4M1M, 8192, 40_000), (FS_1M64, 4096, 8_000), (0x40000, 4096, 30_000)])
        files = {f"/f{n}.{rng.choice(['der', 'key', 'ar'])}": rng.randbytes(rng.choice([0, 1, 250, 251, 252,
                                                                                          rng.randrange(largest)]))
                 for n in range(rng.randrange(1, 7))}
        image = build_spiffs(files, size, block)
        assert read_spiffs(image, block) == scan_pages(image, block) == files


def test_names_follow_the_cores_limits():
    longest = "/" + "n" * 30
    assert read_spiffs(build_spiffs({longest: b"x"}, FS_1M64, 4096), 4096) == {longest: b"x"}
    for bad, words in (("/" + "n" * 31, "at most 31 bytes"), ("client.der", "leading '/'"), ("/", "leading '/'")):
        with pytest.raises(PayloadError, match=words):
            build_spiffs({bad: b"x"}, FS_1M64, 4096)


def test_two_blocks_stay_free_for_the_firmware():
    assert (FS_1M64 // 4096 - 2) * 15 == 210  # pages in the blocks the station may fill
    fits = b"y" * (208 * 251)  # 208 data pages need 2 index pages (105 + 124 entries): 210 pages
    image = build_spiffs({"/big": fits}, FS_1M64, 4096)
    assert all(image[b * 4096:b * 4096 + 30] == b"\xFF" * 30 for b in (14, 15))  # their lookup pages are empty
    with pytest.raises(PayloadError, match="do not fit"):
        build_spiffs({"/big": fits + b"y"}, FS_1M64, 4096)


def test_bad_geometry_is_refused_by_name():
    with pytest.raises(PayloadError, match="block size 6144"):
        build_spiffs({}, 6144 * 10, 6144)
    with pytest.raises(PayloadError, match="not a whole number"):
        build_spiffs({}, 8192 * 10 + 4096, 8192)


def test_the_blocks_in_use_read_alone_as_the_same_files():
    image = build_spiffs(FILES, FS_4M1M, 8192)
    assert used_length(image, 8192) == 3 * 8192  # the files fill one block; three is the least SPIFFS here
    assert read_spiffs(image[:3 * 8192], 8192) == FILES
    big = {"/certs.ar": random.Random(3).randbytes(40_000)}  # 160 data + 2 index pages: 6 blocks of 31
    image = build_spiffs(big, FS_4M1M, 8192)
    assert used_length(image, 8192) == 6 * 8192
    assert read_spiffs(image[:6 * 8192], 8192) == scan_pages(image[:6 * 8192], 8192) == big
