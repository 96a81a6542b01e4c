"""Published firmware for the update server: one current release per profile, checked before it is published.

`station ota publish FILE --profile P --version V` verifies the file's Arduino ESP8266 signature under the
public key the profile's firmware trusts (station.families.esp.signed_image, PROTOCOLS.md §11.4) and that what
was signed is an image the ESP8266 update client accepts (first byte 0xE9, or 0x1F for gzip, §11.5); only then
does it become the profile's current release. A board's firmware would refuse anything else, so the server
never offers it.

    <data dir>/ota/<channel>/releases/<sha256>.bin   every file published (kept: the record of what was served)
    <data dir>/ota/<channel>/current.json            the current release (replaced in one rename)

The channel is the profile's file name without `.toml` (`esp8266-ota-switch`), which is also the URL path the
firmware asks: `https://<station>:8443/ota/<channel>`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from station.cloud import CloudError
from station.cloud.server_process import write_file
from station.text import shown

CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_RELEASE_BYTES = 16 * 1024 * 1024  # the largest ESP8266 flash; a sketch is at most half of it
APP_FIRST_BYTES = {0xE9: "ESP8266 image", 0x1F: "gzip"}  # what ESP8266httpUpdate accepts in sketch mode


class OtaError(CloudError):
    """A file can't be published, or the published release can't be read; the message says why and the fix."""


@dataclass(frozen=True)
class Release:
    channel: str
    version: str  # compared with the board's x-ESP8266-version
    file_name: str
    size: int
    sha256: str
    md5: str  # of the file served: the x-MD5 header
    sketch_md5: str  # of the signed payload without its signature: what a board running it reports (§11.5)
    signer: str  # SHA-256 of the signing public key's SubjectPublicKeyInfo
    published: float


def ota_dir(data: Path) -> Path:
    return Path(data) / "ota"


def channel_of(profile_path: Path) -> str:
    channel = Path(profile_path).stem
    if not CHANNEL.fullmatch(channel):
        raise OtaError(f"the profile file name {shown(channel)} can't be a URL path; rename the profile file to "
                       f"letters, digits, '.', '_' and '-'")
    return channel


def signing_key_of(profile):
    """The RSA public key the profile's ESP8266 firmware checks updates with ([[firmware]] signing_key)."""
    from station.families.esp.profile import FirmwareSet
    from station.families.esp.signed_image import key_fingerprint

    keys = {key_fingerprint(fw.signing_key): fw.signing_key for fw in profile.firmware.values()
            if isinstance(fw, FirmwareSet) and fw.signing_key is not None}
    if not keys:
        raise OtaError(f"{profile.path}: no [[firmware]] names a signing_key, so nothing can say which releases its "
                       f"boards accept; add signing_key = \"public.key\" (the firmware's public key) to its ESP8266 "
                       f"[[firmware]] table.")
    if len(keys) > 1:
        raise OtaError(f"{profile.path}: its [[firmware]] tables name different signing keys; a release is checked "
                       f"under one key, so publish per profile with one key.")
    return next(iter(keys.values()))


def publish(root: Path, channel: str, data: bytes, public_key, version: str, file_name: str) -> Release:
    """Check `data` (a signed ESP8266 app) and make it `channel`'s current release; OtaError when refused."""
    from station.families.esp.signed_image import SignedImageError, load_public_key, verify_signed_image

    if not CHANNEL.fullmatch(channel):
        raise OtaError(f"channel {shown(channel)} is not a URL path segment")
    if not re.fullmatch(r"[!-~]{1,64}", version):
        raise OtaError(f"version {shown(version)} must be 1-64 printable characters without spaces (it is sent "
                       f"in an HTTP header), e.g. 2.1.0")
    try:
        key = load_public_key(public_key) if isinstance(public_key, (bytes, bytearray)) else public_key
        signer = verify_signed_image(data, key)
    except SignedImageError as exc:
        raise OtaError(f"{file_name}: {exc} Nothing was published.") from None
    payload = data[:len(data) - key.key_size // 8 - 4]
    if payload[0] not in APP_FIRST_BYTES:
        raise OtaError(f"{file_name}: what was signed starts with byte {payload[0]:#04x}, so it is neither an ESP8266 "
                       f"app image (0xE9) nor gzip (0x1F); the board's update client would refuse it. Publish the "
                       f"sketch's signed .bin. Nothing was published.")
    release = Release(channel, version, file_name, len(data), hashlib.sha256(data).hexdigest(),
                      hashlib.md5(data).hexdigest(), hashlib.md5(payload).hexdigest(), signer, time.time())
    folder = Path(root) / channel
    for directory in (Path(root), folder, folder / "releases"):
        _make_dir(directory)
    # readable by all: a release is public (it goes to every board), and the update server may run unprivileged
    write_file(folder / "releases" / f"{release.sha256}.bin", data, 0o644)
    write_file(folder / "current.json", json.dumps(asdict(release), indent=1).encode(), 0o644)
    return release


class ReleaseShelf:
    """Reads the published releases through one descriptor of the ota folder, opened at the start: the update
    server goes on reading them after it has given up root, and reading relative to that descriptor needs no
    permission on the folders above it (a data dir under /root)."""

    def __init__(self, root: Path):
        _make_dir(Path(root))
        self.root = Path(root)
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        os.close(self._fd)

    def current(self, channel: str) -> Release | None:
        """The channel's current release, or None when nothing was published."""
        if not CHANNEL.fullmatch(channel):
            return None
        try:
            with self.open(f"{channel}/current.json") as file:
                return Release(**json.loads(file.read()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise OtaError(f"{self.root / channel / 'current.json'} is damaged ({exc}); publish the release "
                           f"again") from None

    def open_release(self, release: Release):
        return self.open(f"{release.channel}/releases/{release.sha256}.bin")

    def open(self, name: str):
        return os.fdopen(os.open(name, os.O_RDONLY, dir_fd=self._fd), "rb")


def current(root: Path, channel: str) -> tuple[Release, Path] | None:
    """The channel's current release and its file, or None when nothing was published."""
    shelf = ReleaseShelf(root)
    try:
        release = shelf.current(channel)
    finally:
        shelf.close()
    return None if release is None else (release, Path(root) / channel / "releases" / f"{release.sha256}.bin")


def _make_dir(path: Path) -> None:
    """A folder of the ota tree, readable by all (the update server may read it as an unprivileged user, through
    its descriptor of the ota folder); the folders above it (the data dir) keep their own modes."""
    if not path.is_dir():
        path.mkdir(parents=True)
        os.chmod(path, 0o755)


