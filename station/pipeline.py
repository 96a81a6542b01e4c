"""The ordered steps that turn one blank board into a provisioned one, per profile.

Each step is a blocking function of the device's context, run in the port's worker thread; the engine adds
timeouts, retries, journaling and events around it. Payloads (Wi-Fi and config NVS) are built in a
background worker while the firmware is flashing, and written in the same session right after it.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Callable

from station.boards.esp import EspSession
from station.boards.esp_image import ImageError, check_app_image
from station.model import BoardInfo, PortInfo, StepFailed
from station.payloads import PayloadError
from station.payloads.partition_table import find_partition, parse_partition_table
from station.profiles import FirmwareSet, Profile


@dataclass(frozen=True)
class FlashImage:
    """Bytes bound for one flash region, and what to call them in records."""

    name: str
    offset: int
    data: bytes = field(repr=False)
    secret: bool = False  # holds a secret (Wi-Fi PSK, private key): its hash is not recorded either

    def record(self) -> dict:
        entry = {"name": self.name, "offset": self.offset, "size": len(self.data)}
        if not self.secret:
            entry["sha256"] = hashlib.sha256(self.data).hexdigest()
        return entry


@dataclass
class DeviceContext:
    port: PortInfo
    profile: Profile
    session: EspSession
    pool: Executor
    psk: str | None = field(default=None, repr=False)
    board: BoardInfo | None = None
    firmware: FirmwareSet | None = None
    payloads: Future | None = None  # Future[list[FlashImage]], built while the firmware flashes
    written: list[FlashImage] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[DeviceContext], str]  # returns a short detail for the record; raises StepFailed


def steps_for(profile: Profile) -> list[Step]:
    steps = [Step("detect", detect), Step("check", check), Step("flash", flash)]
    if profile.wifi or profile.nvs:
        steps.append(Step("write-data", write_data))
    steps += [Step("verify", verify), Step("reset", reset)]
    return steps


def detect(ctx: DeviceContext) -> str:
    ctx.board = ctx.session.connect(ctx.profile.baud)
    ctx.firmware = ctx.profile.firmware.get(ctx.board.chip)
    if ctx.firmware is None:
        wants = " or ".join(ctx.profile.chips)
        raise StepFailed(f"Wrong chip: profile wants {wants}, board is {ctx.board.chip}")
    return f"{ctx.board.description}, MAC {ctx.board.mac}, {ctx.board.flash_size // (1024 * 1024)} MB flash"


def check(ctx: DeviceContext) -> str:
    """Everything that can refuse the board is checked before the first byte is written."""
    board, firmware = _ready(ctx)
    for image in firmware.images:
        end = image.offset + len(image.data)
        if board.flash_size and end > board.flash_size:
            raise StepFailed(f"{image.name} ({len(image.data)} bytes at {image.offset:#x}) does not fit the "
                             f"board's {board.flash_size // 1024} KiB flash")
        if image.kind in ("bootloader", "app"):
            try:
                check_app_image(image.data, board.chip, board.flash_size or 1 << 30, image.offset, image.name)
            except ImageError as exc:
                raise StepFailed(str(exc)) from exc
    nvs_region = _nvs_region(ctx)  # fails now, not after flashing, if the table has no such partition
    if nvs_region is not None:
        ctx.payloads = ctx.pool.submit(build_payloads, ctx, nvs_region)
    return f"{len(firmware.images)} images for {board.chip} fit and match"


def flash(ctx: DeviceContext) -> str:
    _, firmware = _ready(ctx)
    images = [FlashImage(i.name, i.offset, i.data) for i in firmware.images]
    ctx.session.write([(i.offset, i.data) for i in images])
    ctx.written += images
    return f"wrote {sum(len(i.data) for i in images)} bytes in {len(images)} images"


def write_data(ctx: DeviceContext) -> str:
    if ctx.payloads is None:
        raise StepFailed("Payloads were not prepared (check step did not run)")
    try:
        images: list[FlashImage] = ctx.payloads.result()
    except PayloadError as exc:
        raise StepFailed(str(exc)) from exc
    ctx.session.write([(i.offset, i.data) for i in images])
    ctx.written += images
    return ", ".join(f"{i.name} at {i.offset:#x}" for i in images)


def verify(ctx: DeviceContext) -> str:
    ctx.session.verify([(i.offset, i.data) for i in ctx.written])
    return f"MD5 of {len(ctx.written)} regions match"


def reset(ctx: DeviceContext) -> str:
    ctx.session.reset()
    return "reset into the app"


def build_payloads(ctx: DeviceContext, nvs_region: tuple[int, int]) -> list[FlashImage]:
    """The NVS partition with Wi-Fi credentials and the profile's config namespaces, built in memory."""
    from station.payloads.nvs import build_nvs_image, build_wifi_nvs

    profile = ctx.profile
    offset, size = nvs_region
    if profile.wifi is not None:
        image = build_wifi_nvs(profile.wifi.ssid, ctx.psk or "", size, extra=profile.nvs_values())
    else:
        image = build_nvs_image(profile.nvs_values(), size)
    return [FlashImage("nvs", offset, image, secret=profile.wifi is not None)]


def _nvs_region(ctx: DeviceContext) -> tuple[int, int] | None:
    profile = ctx.profile
    if not (profile.wifi or profile.nvs):
        return None
    _, firmware = _ready(ctx)
    assert firmware.partition_table is not None  # the profile loader insists on one when NVS is used
    name = profile.wifi.partition if profile.wifi else "nvs"
    try:
        table = parse_partition_table(firmware.partition_table.data)
    except PayloadError as exc:
        raise StepFailed(f"{firmware.partition_table.name}: {exc}") from exc
    part = find_partition(table, name=name)
    if part is None:
        raise StepFailed(f"The firmware's partition table ({firmware.partition_table.name}) has no partition "
                         f"named '{name}'; fix [wifi] partition in the profile")
    return part.offset, part.size


def _ready(ctx: DeviceContext) -> tuple[BoardInfo, FirmwareSet]:
    if ctx.board is None or ctx.firmware is None:
        raise StepFailed("The board was not detected")
    return ctx.board, ctx.firmware
