"""SPIFFS images as the ESP8266 Arduino core mounts them, built and read in memory.

No package on PyPI, npm or Debian builds or reads SPIFFS (../shared/PROTOCOLS.md §11.3.5), so both are written
here from the format (pellepl/spiffs `src/spiffs_nucleus.h`, `spiffs_nucleus.c`) with the configuration the core
compiles in (`cores/esp8266/spiffs/spiffs_config.h`, the same in every core from 2.4.2 to 3.1.2, and mkspiffs'
`-arduino-esp8266` build): 16-bit object ids, span and page indexes, 32-byte names (31 characters and a NUL),
no metadata, magic on but not length-dependent, object index tables aligned to 16 bits. Logical page 256; the
logical block is the flash layout's `_FS_block` (8192, or 4096 below 512 KB).

On flash, per logical block: lookup pages first (one u16 per following page: the object id that owns it,
with the top bit set for index pages; 0xFFFF free, 0x0000 deleted), whose second-last slot holds the magic
`0x20140529 ^ page size` and last slot the block's erase count; then the pages. Every page but a lookup page
starts with `{u16 obj_id, u16 span_ix, u8 flags}`; flags are active-low (0xFC: used and final data page,
0xF8: also an index page). A file's first index page (span 0) continues, after 3 alignment bytes, with
`{u32 size, u8 type (1 = file), name[32]}` padded to 46 bytes, then the page numbers of its data pages; later
index pages hold page numbers from byte 8. A data page carries 251 bytes after its header.

The mount (spiffs_obj_lu_scan) accepts one block without magic and erases it; this reader accepts none, so an
image the station wrote is either whole or refused. The builder leaves two blocks wholly free, because SPIFFS
allocates nothing once fewer remain (spiffs_obj_lu_find_free) and the firmware writes files of its own
(BearSSL's CertStore writes certs.idx).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from station.families.esp.payloads import PayloadError

PAGE_SIZE = 256  # _FS_page of every ESP8266 Arduino layout
NAME_LEN = 32  # SPIFFS_OBJ_NAME_LEN, the NUL included

_HEADER = struct.Struct("<HHB")  # spiffs_page_header: obj_id, span_ix, flags
_IX_HEADER = struct.Struct("<HHB3xIB32s")  # spiffs_page_object_ix_header, meta length 0
_ID = struct.Struct("<H")
_MAGIC = 0x20140529
_IX_FLAG = 0x8000  # SPIFFS_OBJ_ID_IX_FLAG: the object id of an index page
_FREE = 0xFFFF
_DELETED = 0x0000
_FLAG_USED, _FLAG_FINAL, _FLAG_INDEX, _FLAG_IXDELE, _FLAG_DELET = 0x01, 0x02, 0x04, 0x40, 0x80
_DATA_FLAGS = 0xFF & ~(_FLAG_USED | _FLAG_FINAL)  # 0xFC
_INDEX_FLAGS = _DATA_FLAGS & ~_FLAG_INDEX  # 0xF8
_TYPE_FILE = 1
_UNDEFINED_LEN = 0xFFFFFFFF  # SPIFFS_UNDEFINED_LEN: the size of a file before its first write
_FREE_BLOCKS = 2  # spiffs_obj_lu_find_free allocates nothing with fewer wholly free blocks


@dataclass(frozen=True)
class Geometry:
    """The sizes SPIFFS derives from page and block size (spiffs_nucleus.h macros)."""

    page_size: int
    block_size: int

    @property
    def pages_per_block(self) -> int:
        return self.block_size // self.page_size

    @property
    def lookup_pages(self) -> int:  # SPIFFS_OBJ_LOOKUP_PAGES
        return max(1, self.pages_per_block * _ID.size // self.page_size)

    @property
    def lookup_entries(self) -> int:  # SPIFFS_OBJ_LOOKUP_MAX_ENTRIES: the pages after the lookup pages
        return self.pages_per_block - self.lookup_pages

    @property
    def data_per_page(self) -> int:  # SPIFFS_DATA_PAGE_SIZE
        return self.page_size - _HEADER.size

    @property
    def head_index_offset(self) -> int:  # sizeof(spiffs_page_object_ix_header), aligned to spiffs_page_ix
        return -(-_IX_HEADER.size // 2) * 2

    @property
    def head_index_len(self) -> int:  # SPIFFS_OBJ_HDR_IX_LEN
        return (self.page_size - self.head_index_offset) // 2

    @property
    def index_offset(self) -> int:  # sizeof(spiffs_page_object_ix)
        return 8

    @property
    def index_len(self) -> int:  # SPIFFS_OBJ_IX_LEN
        return (self.page_size - self.index_offset) // 2

    @property
    def magic(self) -> int:  # SPIFFS_MAGIC without SPIFFS_USE_MAGIC_LENGTH
        return (_MAGIC ^ self.page_size) & 0xFFFF

    def lookup_slot(self, bix: int, entry: int) -> int:
        """Image offset of a lookup entry's u16."""
        return bix * self.block_size + entry * _ID.size

    def magic_offset(self, bix: int) -> int:  # SPIFFS_MAGIC_PADDR
        return bix * self.block_size + self.lookup_pages * self.page_size - 2 * _ID.size

    def erase_count_offset(self, bix: int) -> int:  # SPIFFS_ERASE_COUNT_PADDR
        return bix * self.block_size + self.lookup_pages * self.page_size - _ID.size

    def page_of(self, bix: int, entry: int) -> int:  # SPIFFS_OBJ_LOOKUP_ENTRY_TO_PIX
        return bix * self.pages_per_block + self.lookup_pages + entry


def geometry(size: int, block_size: int, page_size: int = PAGE_SIZE) -> Geometry:
    """Checked geometry of a `size`-byte SPIFFS with these logical block and page sizes."""
    if page_size < 64 or page_size & (page_size - 1):
        raise PayloadError(f"SPIFFS page size {page_size} is not a power of two of at least 64; use the layout's "
                           f"_FS_page (ESP8266 Arduino: 256).")
    if block_size < 2 * page_size or block_size % page_size or block_size % 4096:
        raise PayloadError(f"SPIFFS block size {block_size} is not a multiple of the 4096-byte flash sector and of "
                           f"the {page_size}-byte page; use the layout's _FS_block (8192, or 4096 below 512 KB).")
    geo = Geometry(page_size, block_size)
    if geo.lookup_entries % (page_size // _ID.size) * _ID.size > page_size - 2 * _ID.size:
        raise PayloadError(f"SPIFFS with {block_size}-byte blocks of {page_size}-byte pages has no room for the "
                           f"magic (SPIFFS_CHECK_MAGIC_POSSIBLE); pick another block size.")
    if size <= 0 or size % block_size or size // block_size < _FREE_BLOCKS + 1:
        raise PayloadError(f"SPIFFS size {size:#x} is not a whole number (at least {_FREE_BLOCKS + 1}) of "
                           f"{block_size}-byte blocks; use the filesystem's size from the flash layout "
                           f"(_FS_end - _FS_start).")
    return geo


def check_name(name: str) -> bytes:
    """The stored name of a file the firmware opens as `name`, or PayloadError."""
    raw = name.encode("utf-8") if isinstance(name, str) else b""
    if not raw.startswith(b"/") or len(raw) < 2 or b"\0" in raw:
        raise PayloadError(f"SPIFFS file name {name!r} must be a path such as /client.der (a leading '/', "
                           f"no NUL).")
    if len(raw) > NAME_LEN - 1:
        raise PayloadError(f"SPIFFS file name {name!r} is {len(raw)} bytes; the ESP8266 core opens names of at "
                           f"most {NAME_LEN - 1} bytes, the path included (SPIFFS_OBJ_NAME_LEN {NAME_LEN}). "
                           f"Shorten it.")
    return raw


def build_spiffs(files: dict[str, bytes], size: int, block_size: int, page_size: int = PAGE_SIZE) -> bytes:
    """A SPIFFS image of exactly `size` bytes holding `files` (name -> contents); erased flash (0xFF) elsewhere."""
    geo = geometry(size, block_size, page_size)
    names = {}
    for name, data in files.items():
        if not isinstance(data, (bytes, bytearray)):
            raise PayloadError(f"SPIFFS file {name!r} must be bytes, not {type(data).__name__}.")
        names[check_name(name)] = bytes(data)
    blocks = size // block_size
    if len(names) >= _IX_FLAG - 1:
        raise PayloadError(f"{len(names)} SPIFFS files are more than its 16-bit object ids can name; store fewer.")
    image = bytearray(b"\xFF" * size)
    free = ((bix, entry) for bix in range(blocks - _FREE_BLOCKS) for entry in range(geo.lookup_entries))

    def place(obj_id: int, page: bytes) -> int:
        """Put `page` in the next free page, owned by `obj_id` in the lookup table; its page number."""
        try:
            bix, entry = next(free)
        except StopIteration:
            total = sum(len(d) for d in names.values())
            raise PayloadError(f"SPIFFS files ({total} bytes in {len(names)} files) do not fit in the {size:#x}-"
                               f"byte filesystem with two blocks left free for the firmware; use a layout with a "
                               f"larger filesystem or store fewer files.") from None
        struct.pack_into("<H", image, geo.lookup_slot(bix, entry), obj_id)
        pix = geo.page_of(bix, entry)
        image[pix * page_size:pix * page_size + len(page)] = page
        return pix

    for obj_id, (name, data) in enumerate(names.items(), start=1):
        chunks = [data[i:i + geo.data_per_page] for i in range(0, len(data), geo.data_per_page)]
        span = 0  # data span index
        for ix_span in range(_index_pages(geo, len(chunks))):
            room = geo.head_index_len if ix_span == 0 else geo.index_len
            if ix_span == 0:
                index = bytearray(_IX_HEADER.pack(obj_id | _IX_FLAG, 0, _INDEX_FLAGS, len(data), _TYPE_FILE,
                                                  name.ljust(NAME_LEN, b"\0")))
                index[5:8] = b"\xFF" * 3  # the alignment bytes, left unwritten
                index += b"\xFF" * (geo.head_index_offset - len(index))
            else:
                index = bytearray(_HEADER.pack(obj_id | _IX_FLAG, ix_span, _INDEX_FLAGS) + b"\xFF" * 3)
            index_pix = place(obj_id | _IX_FLAG, bytes(index))  # the page numbers follow once known
            for chunk in chunks[span:span + room]:
                pix = place(obj_id, _HEADER.pack(obj_id, span, _DATA_FLAGS) + chunk)
                slot = span if ix_span == 0 else (span - geo.head_index_len) % room
                struct.pack_into("<H", image, index_pix * page_size + len(index) + 2 * slot, pix)
                span += 1
    for bix in range(blocks):  # what SPIFFS_format leaves in every block: erase count 0 and the magic
        struct.pack_into("<H", image, geo.magic_offset(bix), geo.magic)
        struct.pack_into("<H", image, geo.erase_count_offset(bix), 0)
    return bytes(image)


def read_spiffs(image: bytes, block_size: int, page_size: int = PAGE_SIZE) -> dict[str, bytes]:
    """name -> contents of every file, found the way SPIFFS finds them: through the lookup pages and each file's
    index pages. PayloadError if the image is not a whole SPIFFS of this geometry."""
    geo = geometry(len(image), block_size, page_size)
    blocks = len(image) // block_size
    owners: dict[int, list[int]] = {}  # object id (index flag included) -> page numbers it owns
    for bix in range(blocks):
        (magic,) = _ID.unpack_from(image, geo.magic_offset(bix))
        if magic != geo.magic:
            raise PayloadError(f"SPIFFS block {bix} (at {bix * block_size:#x}) has magic {magic:#06x}, not "
                               f"{geo.magic:#06x}: the image is blank, corrupt or made for other page/block sizes "
                               f"({page_size}/{block_size}); the firmware would format it, losing its files.")
        for entry in range(geo.lookup_entries):
            (obj_id,) = _ID.unpack_from(image, geo.lookup_slot(bix, entry))
            if obj_id not in (_FREE, _DELETED):
                owners.setdefault(obj_id, []).append(geo.page_of(bix, entry))
    files: dict[str, bytes] = {}
    for obj_id in sorted(i for i in owners if i & _IX_FLAG):
        indexes = {}
        for pix in owners[obj_id]:
            page_id, span, flags = _HEADER.unpack_from(image, pix * page_size)
            _check_page(pix, page_id, flags, obj_id, index=True)
            if flags & _FLAG_DELET and flags & _FLAG_IXDELE:  # a live index page, not one being deleted
                if span in indexes:
                    raise PayloadError(f"SPIFFS object {obj_id & ~_IX_FLAG:#x} has two index pages with span "
                                       f"{span}; the image is corrupt.")
                indexes[span] = pix
        if 0 not in indexes:
            raise PayloadError(f"SPIFFS object {obj_id & ~_IX_FLAG:#x} has index pages but no header; corrupt.")
        name, data = _read_object(image, geo, obj_id & ~_IX_FLAG, indexes, owners.get(obj_id & ~_IX_FLAG, []))
        if name in files:
            raise PayloadError(f"SPIFFS holds two files named {name!r}; the image is corrupt.")
        files[name] = data
    return files


def used_length(image: bytes, block_size: int, page_size: int = PAGE_SIZE) -> int:
    """Bytes from the start through the last block with a page in use (at least the smallest SPIFFS this module
    takes). The magic does not depend on the block count (no SPIFFS_USE_MAGIC_LENGTH) and page numbers count from
    the start, so those blocks alone read as the same files: verify need not read back erased blocks."""
    geo = geometry(len(image), block_size, page_size)
    used = [bix for bix in range(len(image) // block_size)
            if any(_ID.unpack_from(image, geo.lookup_slot(bix, e))[0] != _FREE for e in range(geo.lookup_entries))]
    return max(used[-1] + 1 if used else 0, _FREE_BLOCKS + 1) * block_size


def _index_pages(geo: Geometry, data_pages: int) -> int:
    extra = max(0, data_pages - geo.head_index_len)
    return 1 + -(-extra // geo.index_len)


def _check_page(pix: int, page_id: int, flags: int, owner: int, index: bool) -> None:
    kind = "index" if index else "data"
    if page_id != owner:
        raise PayloadError(f"SPIFFS page {pix} is listed for object {owner:#06x} but its header says {page_id:#06x}; "
                           f"the image is corrupt.")
    if flags & _FLAG_USED or flags & _FLAG_FINAL or bool(flags & _FLAG_INDEX) == index:
        raise PayloadError(f"SPIFFS {kind} page {pix} has flags {flags:#04x}, not a finished {kind} page; the "
                           f"image is corrupt or was being written.")


def _read_object(image: bytes, geo: Geometry, obj_id: int, indexes: dict[int, int],
                 data_pages: list[int]) -> tuple[str, bytes]:
    head = indexes[0] * geo.page_size
    _, _, _, size, kind, raw_name = _IX_HEADER.unpack_from(image, head)
    name = raw_name.split(b"\0", 1)[0].decode("utf-8", "replace")
    if kind != _TYPE_FILE:
        raise PayloadError(f"SPIFFS object {name!r} has type {kind}, not a file (1); the image is corrupt.")
    if size == _UNDEFINED_LEN:  # created and never written: SPIFFS reads it as empty
        size = 0
    owned = set(data_pages)
    count = -(-size // geo.data_per_page)
    out = bytearray()
    for span in range(count):
        ix_span = 0 if span < geo.head_index_len else 1 + (span - geo.head_index_len) // geo.index_len
        if ix_span not in indexes:
            raise PayloadError(f"SPIFFS file {name!r} ({size} bytes) lacks index page {ix_span}; corrupt.")
        at = indexes[ix_span] * geo.page_size + (geo.head_index_offset + 2 * span if ix_span == 0 else
                                                 geo.index_offset + 2 * ((span - geo.head_index_len) % geo.index_len))
        (pix,) = _ID.unpack_from(image, at)
        if pix not in owned:
            raise PayloadError(f"SPIFFS file {name!r}: its index names page {pix} for bytes {span * geo.data_per_page}"
                               f"-, a page the lookup table does not give it; the image is corrupt.")
        page_id, page_span, flags = _HEADER.unpack_from(image, pix * geo.page_size)
        _check_page(pix, page_id, flags, obj_id, index=False)
        if page_span != span:
            raise PayloadError(f"SPIFFS file {name!r}: page {pix} holds span {page_span}, its index says {span}; "
                               f"the image is corrupt.")
        start = pix * geo.page_size + _HEADER.size
        out += image[start:start + min(geo.data_per_page, size - len(out))]
    return name, bytes(out)
