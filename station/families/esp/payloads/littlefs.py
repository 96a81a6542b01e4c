"""LittleFS images with a device identity for ESP8266/Arduino-style firmware, built in memory.

The firmware reads its TLS identity from files at the filesystem root (ESP8266 Arduino core,
BearSSL): `/client.der` (DER client certificate), `/client.key` (DER private key) and
`/certs.ar`, the trust store `BearSSL::CertStore::initCertStore(fs, "certs.idx", "certs.ar")`
indexes on the device: a UNIX `ar` archive of DER CA certificates, as the core's
`certs-from-mozilla.py` makes with `ar mcs certs.ar ca_000.der ...`.

Geometry and limits follow the ESP8266 core's `libraries/LittleFS/src/LittleFS.h`: 8 KiB blocks
(`_FS_block` in the linker scripts), read/prog/cache/lookahead size 64, block_cycles 16,
`LFS_NAME_MAX` 32, and `pathValid()` refusing any path element of `LFS_NAME_MAX` bytes or more,
so names here are limited to `name_max - 1` bytes per element.

Library behaviour this module works around (littlefs-python 0.19.0):
- `LittleFS(...)` mounts by default and silently formats a buffer it cannot mount, so every
  filesystem here is made with `mount=False`; a reader must see a broken image as broken.
- Images default to on-disk version 2.1; firmware built with littlefs 2.0-2.4 (ESP8266 Arduino
  core 2.x/3.x era) cannot mount those and reformats, hence `disk_version=0x00020000`.
- A `disk_version` other than 2.0/2.1, or a block size not a multiple of the cache size, trips a
  C assertion that aborts the whole process, so geometry is validated before the library sees it.
- The superblock records name_max and block_count; firmware with a smaller LFS_NAME_MAX or a
  different partition size refuses to mount the image (and an auto-formatting core erases it).
- littlefs checksums metadata only: file contents in their own blocks carry no CRC, so a flipped
  bit inside a certificate is not caught by mounting. Compare what was read with what was meant.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from littlefs import LittleFS, LittleFSError, UserContext

from station.families.esp.payloads import (  # the default names stay importable from here, where they were
    CERTS_AR_PATH,  # noqa: F401
    CLIENT_CERT_PATH,  # noqa: F401
    CLIENT_KEY_PATH,  # noqa: F401
    IdentityFileNames,
    PayloadError,
    check_key_matches,
    load_der_certificate,
)

DISK_VERSION_2_0 = 0x00020000
DISK_VERSION_2_1 = 0x00020001

_IO_SIZE = 64  # read/prog/cache/lookahead size of the ESP8266 core
_BLOCK_CYCLES = 16
_NAME_MAX_LIMIT = 255  # upstream LFS_NAME_MAX
_TYPE_FILE = 1
_TYPE_DIR = 2
_BEARSSL_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER_SIZE = 60
_AR_NAME_MAX = 15  # 16-byte name field, GNU style: name + "/"


@dataclass(frozen=True)
class LittleFsInfo:
    """What an image's superblock records."""

    disk_version: int
    block_size: int
    block_count: int
    name_max: int


# --- identity files ---------------------------------------------------------------------


def identity_files(
    device_cert_der: bytes,
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None,
    ca_certs_der: list[bytes],
    names: IdentityFileNames = IdentityFileNames(),
    fingerprint: bytes | None = None,
) -> dict[str, bytes]:
    """The files BearSSL firmware reads its identity from, under `names`.

    The client certificate (DER) always; the key only for a host-made key (SEC1 "raw EC" DER for
    EC, PKCS#1 DER for RSA, both of which BearSSL's key decoder takes); when CA certificates are
    given, the trust store (members `ca_000.der`, `ca_001.der`, ... in the order given) and/or the
    one CA as DER; the broker's certificate fingerprint as the text `setFingerprint()` takes.
    """
    device_cert = load_der_certificate(device_cert_der, "device certificate")
    files = {names.client_cert: device_cert.public_bytes(serialization.Encoding.DER)}
    if private_key is not None:
        _check_key(private_key, device_cert)
        files[names.client_key] = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    cas = [load_der_certificate(der, f"CA certificate #{n + 1}").public_bytes(serialization.Encoding.DER)
           for n, der in enumerate(ca_certs_der)]
    if cas and names.trust_store:
        files[names.trust_store] = build_ar([(f"ca_{n:03d}.der", der) for n, der in enumerate(cas)])
    if cas and names.ca:
        if len(cas) > 1:
            raise PayloadError(f"{names.ca} holds one DER CA certificate, but {len(cas)} were given; "
                               "name a trust_store (certs.ar) for several.")
        files[names.ca] = cas[0]
    if fingerprint is not None and names.fingerprint:
        files[names.fingerprint] = fingerprint_text(fingerprint)
    return files


def fingerprint_text(digest: bytes) -> bytes:
    """A certificate fingerprint as BearSSL's `WiFiClientSecure::setFingerprint(const char *)` parses it:
    hex pairs, here upper-case and separated by colons (as `openssl x509 -fingerprint` prints them)."""
    return digest.hex(":").upper().encode("ascii")


# --- LittleFS ---------------------------------------------------------------------------


def build_identity_fs(
    files: dict[str, bytes],
    size: int,
    block_size: int = 8192,
    name_max: int = 32,
    disk_version: int = DISK_VERSION_2_0,
) -> bytes:
    """A LittleFS image of exactly `size` bytes holding `files` (path -> contents).

    Paths are absolute or relative to the root ("/client.der" or "client.der"); parent
    directories are created. Unused space is 0xFF, as erased flash.
    """
    _check_geometry(size, block_size, name_max, "LittleFS partition")
    if disk_version not in (DISK_VERSION_2_0, DISK_VERSION_2_1):
        raise PayloadError(
            f"LittleFS disk_version {disk_version:#010x} is not supported; use 0x00020000 "
            "(littlefs 2.0, ESP8266 Arduino and older firmware) or 0x00020001 (littlefs >= 2.5)."
        )
    paths: dict[str, bytes] = {}
    for name, data in files.items():
        path = check_path(name, name_max)
        if path in paths:
            raise PayloadError(f"LittleFS file {path} is given twice; keep one of them.")
        if not isinstance(data, (bytes, bytearray)):
            raise PayloadError(f"LittleFS file {path} must be bytes, not {type(data).__name__}.")
        paths[path] = data

    fs = LittleFS(
        mount=False,
        block_size=block_size,
        block_count=size // block_size,
        name_max=name_max,
        disk_version=disk_version,
        **_io_config(),
    )
    try:
        fs.format()
        fs.mount()
        for path, data in paths.items():
            parent = path.rsplit("/", 1)[0]
            if parent:
                fs.makedirs(parent, exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(bytes(data))
        fs.unmount()
    except LittleFSError as e:
        if e.code == LittleFSError.Error.LFS_ERR_NOSPC:
            total = sum(len(d) for d in paths.values())
            raise PayloadError(
                f"LittleFS files ({total} bytes in {len(paths)} files) do not fit in the "
                f"{size:#x}-byte filesystem of {block_size}-byte blocks; enlarge the filesystem "
                "partition or store fewer files."
            ) from None
        raise PayloadError(
            f"LittleFS image could not be built ({e.name}); check the geometry "
            f"(size {size:#x}, block size {block_size}, name_max {name_max})."
        ) from None
    image = bytes(fs.context.buffer)
    if len(image) != size:
        raise PayloadError(
            f"littlefs-python produced {len(image):#x} bytes for a {size:#x}-byte filesystem; "
            "check the littlefs-python version (0.19.x expected)."
        )
    return image


def read_fs(
    image: bytes,
    block_size: int,
    name_max: int,
    *,
    disk_version: int | None = None,
) -> dict[str, bytes]:
    """path -> contents of every file in a LittleFS image, as firmware with these limits sees it.

    Mounts without formatting: an image the firmware could not mount (blank, corrupt, other
    block size or partition size, larger name_max, or newer than `disk_version` when given)
    raises PayloadError instead of reading as an empty filesystem.
    """
    _check_geometry(len(image), block_size, name_max, "LittleFS image")
    if disk_version is not None and disk_version not in (DISK_VERSION_2_0, DISK_VERSION_2_1):
        raise PayloadError(
            f"LittleFS disk_version {disk_version:#010x} is not supported; use 0x00020000 or "
            "0x00020001."
        )
    fs = LittleFS(
        UserContext(buffer=bytearray(image)),
        mount=False,
        block_size=block_size,
        block_count=len(image) // block_size,
        name_max=name_max,
        disk_version=disk_version or 0,
        **_io_config(),
    )
    try:
        fs.mount()
    except LittleFSError as e:
        raise PayloadError(_mount_failure(image, block_size, name_max, disk_version, e)) from None
    try:
        files: dict[str, bytes] = {}
        _walk(fs, "/", files)
        return files
    except LittleFSError as e:
        raise PayloadError(
            f"LittleFS image is corrupt ({e.name} while reading its files); rebuild and rewrite it."
        ) from None
    finally:
        try:
            fs.unmount()
        except LittleFSError:
            pass


def fs_info(image: bytes, block_size: int) -> LittleFsInfo:
    """The version, geometry and name_max an image's superblock records."""
    if block_size < 128 or block_size % _IO_SIZE or len(image) < 2 * block_size:
        raise PayloadError(
            f"LittleFS image of {len(image)} bytes cannot hold a superblock with {block_size}-"
            "byte blocks; check the block size (ESP8266 Arduino: 8192)."
        )
    fs = LittleFS(
        UserContext(buffer=bytearray(image)),
        mount=False,
        block_size=block_size,
        block_count=0,  # take it from the superblock
        name_max=_NAME_MAX_LIMIT,
        **_io_config(),
    )
    try:
        fs.mount()
        stat = fs.fs_stat()
        fs.unmount()
    except LittleFSError as e:
        raise PayloadError(
            f"LittleFS image has no valid superblock with {block_size}-byte blocks ({e.name}); "
            "it is blank, corrupt or uses another block size."
        ) from None
    return LittleFsInfo(stat.disk_version, stat.block_size, stat.block_count, stat.name_max)


def _io_config() -> dict[str, int]:
    return dict(
        read_size=_IO_SIZE,
        prog_size=_IO_SIZE,
        cache_size=_IO_SIZE,
        lookahead_size=_IO_SIZE,
        block_cycles=_BLOCK_CYCLES,
    )


def _check_geometry(size: int, block_size: int, name_max: int, what: str) -> None:
    if block_size < 128 or block_size % _IO_SIZE:
        raise PayloadError(
            f"LittleFS block size {block_size} must be a multiple of {_IO_SIZE} and at least "
            "128; use the firmware's block size (ESP8266 Arduino: 8192, ESP-IDF: 4096)."
        )
    if size <= 0 or size % block_size or size // block_size < 2:
        raise PayloadError(
            f"{what} size {size:#x} is not a whole number (at least 2) of {block_size}-byte "
            "blocks; use the filesystem partition's size from the firmware's flash layout."
        )
    if not 1 <= name_max <= _NAME_MAX_LIMIT:
        raise PayloadError(
            f"LittleFS name_max {name_max} must be 1-{_NAME_MAX_LIMIT}; use the firmware's "
            "LFS_NAME_MAX (ESP8266 Arduino: 32, ESP-IDF esp_littlefs: 64)."
        )


def check_path(path: str, name_max: int) -> str:
    if not isinstance(path, str) or not path.strip("/"):
        raise PayloadError(f"LittleFS file name {path!r} is empty; name the file, e.g. /client.der.")
    parts = (path[1:] if path.startswith("/") else path).split("/")
    for part in parts:
        if part in ("", ".", "..") or "\x00" in part:
            raise PayloadError(
                f"LittleFS file name {path!r} has an empty, '.', '..' or NUL path element; "
                "use a plain path such as /certs/ca.der."
            )
        length = len(part.encode("utf-8"))
        if length >= name_max:
            raise PayloadError(
                f"LittleFS file name {path!r}: element {part!r} is {length} bytes; with "
                f"name_max {name_max} the firmware opens at most {name_max - 1}-byte names "
                "(ESP8266 Arduino pathValid). Shorten it."
            )
    return "/" + "/".join(parts)


def _walk(fs: LittleFS, directory: str, files: dict[str, bytes]) -> None:
    for entry in fs.scandir(directory):
        path = directory.rstrip("/") + "/" + entry.name
        if entry.type == _TYPE_DIR:
            _walk(fs, path, files)
        elif entry.type == _TYPE_FILE:
            with fs.open(path, "rb") as f:
                files[path] = f.read()


def _mount_failure(
    image: bytes, block_size: int, name_max: int, disk_version: int | None, e: LittleFSError
) -> str:
    try:
        info = fs_info(image, block_size)
    except PayloadError as bad:
        return str(bad) + " The firmware would reformat it (losing its files)."
    problems = []
    if info.block_count != len(image) // block_size:
        problems.append(
            f"it records {info.block_count} blocks ({info.block_count * block_size:#x} bytes) but "
            f"the partition is {len(image):#x} bytes; rebuild it for the partition's size"
        )
    if info.name_max > name_max:
        problems.append(
            f"it records name_max {info.name_max} but the firmware allows {name_max}; rebuild "
            f"it with name_max={name_max}"
        )
    if disk_version is not None and info.disk_version > disk_version:
        problems.append(
            f"it is on-disk version {info.disk_version >> 16}.{info.disk_version & 0xFFFF} but "
            f"the firmware reads up to {disk_version >> 16}.{disk_version & 0xFFFF}; rebuild it "
            f"with disk_version={disk_version:#010x}"
        )
    detail = "; ".join(problems) or "rebuild and rewrite it"
    return f"LittleFS image cannot be mounted ({e.name}): {detail}. The firmware would reformat it."


# --- ar ---------------------------------------------------------------------------------


def build_ar(members: list[tuple[str, bytes]]) -> bytes:
    """A UNIX ar archive, byte for byte what Debian's GNU ar (deterministic mode) writes.

    GNU short names ("name/"), mtime/uid/gid 0, mode 644, no symbol table (BearSSL's CertStore
    would read one as a certificate), a "\\n" pad byte after odd-sized members.
    """
    out = [_AR_MAGIC]
    seen = set()
    for name, data in members:
        raw = name.encode("ascii", "replace")
        if not name or len(raw) > _AR_NAME_MAX or "/" in name or " " in name or not name.isascii():
            raise PayloadError(
                f"ar member name {name!r} must be 1-{_AR_NAME_MAX} ASCII characters without "
                "'/' or spaces; rename it."
            )
        if name in seen:
            raise PayloadError(f"ar member name {name!r} is used twice; names must be unique.")
        seen.add(name)
        if not data:
            raise PayloadError(
                f"ar member {name!r} is empty; BearSSL's CertStore stops reading at an empty "
                "member. Leave it out."
            )
        header = (
            f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(data):<10}`\n"
        ).encode("ascii")
        out += [header, bytes(data), b"\n" * (len(data) % 2)]
    return b"".join(out)


def read_ar(data: bytes) -> list[tuple[str, bytes]]:
    """(name, contents) of every member of a UNIX ar archive (GNU or BSD short names).

    Refuses what BearSSL's CertStore would misread: a symbol table, empty members, and members
    after which the archive is truncated. GNU long names are resolved through the "//" table.
    """
    data = bytes(data)
    if not data.startswith(_AR_MAGIC):
        raise PayloadError(
            "certs.ar does not start with the ar magic '!<arch>\\n'; it is not an ar archive. "
            "Rebuild it (ar rcD certs.ar ca_000.der ...)."
        )
    members: list[tuple[str, bytes]] = []
    long_names = b""
    offset = len(_AR_MAGIC)
    while offset < len(data):
        header = data[offset : offset + _AR_HEADER_SIZE]
        where = f"ar member header at offset {offset}"
        if len(header) < _AR_HEADER_SIZE or header[58:60] != b"`\n":
            raise PayloadError(f"{where} is truncated or malformed; the archive is corrupt.")
        try:
            size = int(header[48:58].decode("ascii"))
        except ValueError:
            raise PayloadError(f"{where} has no decimal size; the archive is corrupt.") from None
        start = offset + _AR_HEADER_SIZE
        body = data[start : start + size]
        if size < 0 or len(body) != size:
            raise PayloadError(f"{where} says {size} bytes, past the end; the archive is truncated.")
        offset = start + size + (size % 2)
        name = header[:16].decode("ascii", "replace").rstrip(" ")
        if name == "//":
            long_names = body  # GNU long-name table; CertStore skips it too
            continue
        if name in ("/", "/SYM64/", "__.SYMDEF", "__.SYMDEF SORTED"):
            raise PayloadError(
                "ar archive has a symbol table, which BearSSL's CertStore would read as a "
                "certificate; rebuild it without one (ar rcD, not ar rcs, for non-object files)."
            )
        if name.startswith("/") and name[1:].isdigit():
            at = int(name[1:])
            end = long_names.find(b"/\n", at)
            if not long_names or end < 0:
                raise PayloadError(f"{where} names a missing long-name entry; corrupt archive.")
            name = long_names[at:end].decode("utf-8", "replace")
        elif name.startswith("#1/") and name[3:].isdigit():  # BSD: name stored before the data
            name_len = int(name[3:])
            name, body = body[:name_len].rstrip(b"\x00").decode("utf-8", "replace"), body[name_len:]
        else:
            name = name.removesuffix("/")
        if not body:
            raise PayloadError(
                f"ar member {name!r} is empty; BearSSL's CertStore stops reading at an empty "
                "member, so later certificates would be ignored."
            )
        members.append((name, body))
    return members


# --- helpers ----------------------------------------------------------------------------


def _check_key(key: object, device_cert: x509.Certificate) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, _BEARSSL_CURVES):
            raise PayloadError(
                f"The device key is on curve {key.curve.name}; BearSSL client certificates need "
                "P-256, P-384 or P-521. Issue the identity with one of those."
            )
    elif not isinstance(key, rsa.RSAPrivateKey):
        raise PayloadError(
            f"The device private key is a {type(key).__name__}; BearSSL firmware takes EC or RSA "
            "keys (pass a cryptography EllipticCurvePrivateKey or RSAPrivateKey)."
        )
    check_key_matches(key, device_cert)
