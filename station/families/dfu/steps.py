"""The steps that flash a DFU board: detect, check, flash, verify (read back), and leave DFU mode.

Every range is checked against the board's own memory layout in `check`, so a refused board is untouched.
`verify` reads every written range back before `reset` asks the board to leave: after leave it resets and
is gone, so the read-back is what proves the write (PROTOCOLS §4.4).
"""
from __future__ import annotations

from station.families.dfu.errors import DfuError
from station.text import shown
from station.families.dfu.host import DfuHost, LeaveOutcome
from station.families.dfu.profile import DFU_CHIPS, DfuFirmwareSet, Placement
from station.model import BoardInfo, StepFailed
from station.profiles import Profile
from station.steps import DeviceContext, FlashImage, Step

CHIP_OF_USB_ID = {usb_id: chip for chip, usb_id in DFU_CHIPS.items()}


def dfu_steps(profile: Profile) -> list[Step]:
    return [Step("detect", "Detecting", detect, identifies=True), Step("check", "Checking", check),
            Step("flash", "Flashing", flash, transfers=True), Step("verify", "Reading back", verify, verifies=True),
            Step("reset", "Leaving DFU", leave, leaves_bus=True)]


def detect(ctx: DeviceContext) -> str:
    host = ctx.session.open()
    device = host.device
    chip = CHIP_OF_USB_ID.get((device.idVendor, device.idProduct))
    if chip is None:
        raise StepFailed(f"USB device {device.idVendor:04x}:{device.idProduct:04x} is not a DFU board this "
                         f"station knows")
    memories = []
    for alt in host.alts:
        memories.append(f"alt {alt.number} {shown(alt.name)}")
    main = host.select(0)
    try:
        size = sum(s.end - s.start for s in host.layout.segments)
    except DfuError:
        size = 0
    ctx.board = BoardInfo(family="dfu", chip=chip, flash_size=size,
                          description=f"{chip} DFU bootloader, {shown(main.name)} {size // 1024} KiB",
                          features=memories)
    ctx.firmware = ctx.profile.firmware.get(chip)
    if ctx.firmware is None:
        wants = " or ".join(c for c in ctx.profile.chips if c in DFU_CHIPS)
        raise StepFailed(f"Wrong chip: profile wants {wants}, board is {chip}")
    return f"{ctx.board.description}; {', '.join(memories)}"


def check(ctx: DeviceContext) -> str:
    """Every range must lie in writeable memory of the alt it names, on this board, before anything is erased."""
    host, firmware = _ready(ctx)
    for p in firmware.placements:
        _select(host, p)
        try:
            host.layout.check_write(p.address, len(p.data))
        except DfuError as exc:
            raise StepFailed(f"{p.name} can't be written to this board: {exc}") from exc
    total = sum(len(p.data) for p in firmware.placements)
    # the profile's Wi-Fi and identity are for its other boards: say so, so nobody expects them here
    skipped = " and ".join(t for t, v in (("Wi-Fi", ctx.profile.wifi), ("identity", ctx.profile.identity)) if v)
    note = f"; no {skipped} on a DFU board" if skipped else ""
    return f"{_ranges(firmware)} ({total} bytes) fit the board's memory layout{note}"


def flash(ctx: DeviceContext) -> str:
    host, firmware = _ready(ctx)
    total = sum(len(p.data) for p in firmware.placements)
    done = 0
    erased: set[int] = set()
    ctx.session.progress(0, total)
    for p in firmware.placements:
        alt = _select(host, p)
        mass = firmware.mass_erase and alt.number not in erased
        erased.add(alt.number)
        base = done
        try:
            host.write(p.address, p.data, lambda n, _t, base=base: ctx.session.progress(base + n, total),
                       mass_erase=mass)
        except DfuError as exc:
            raise StepFailed(f"Flash failed: {exc}") from exc
        done += len(p.data)
        ctx.written.append(FlashImage(p.name, p.address, p.data, region=shown(alt.name)))
    return f"wrote {total} bytes in {_ranges(firmware)}"


def verify(ctx: DeviceContext) -> str:
    host, firmware = _ready(ctx)
    for p in firmware.placements:
        _select(host, p)
        try:
            back = host.read(p.address, len(p.data))
        except DfuError as exc:
            raise StepFailed(f"Verify failed: {exc}") from exc
        if back != p.data:
            at = next(i for i, (a, b) in enumerate(zip(back, p.data)) if a != b)
            raise StepFailed(f"Verify failed: {p.name} reads back different at {p.address + at:#010x} "
                             f"(wrote {p.data[at]:#04x}, board has {back[at]:#04x}); the flash may be faulty")
    return f"{_ranges(firmware)} read back equal"


def leave(ctx: DeviceContext) -> str:
    host, _ = _ready(ctx)
    try:
        outcome = host.leave()
    except DfuError as exc:
        raise StepFailed(f"Leaving DFU mode failed: {exc}") from exc
    finally:
        ctx.session.close()
    return {LeaveOutcome.MANIFEST: "the board left DFU mode to run its firmware",
            LeaveOutcome.DNLOAD_IDLE: "the board acknowledged and resets into its firmware",
            LeaveOutcome.VANISHED: "the board reset into its firmware at once"}[outcome]


def _ranges(firmware: DfuFirmwareSet) -> str:
    n = len(firmware.placements)
    return f"{n} range" if n == 1 else f"{n} ranges"


def _select(host: DfuHost, p: Placement):
    try:
        return host.select(p.alt)
    except DfuError as exc:
        raise StepFailed(f"{p.name}: {exc}") from exc


def _ready(ctx: DeviceContext) -> tuple[DfuHost, DfuFirmwareSet]:
    if ctx.board is None or ctx.firmware is None:
        raise StepFailed("The board was not detected")
    return ctx.session.host, ctx.firmware
