"""A Spark Core or Photon from whatever mode it is plugged in to the local cloud's device, per the profile:

    detect    which board (by its USB ID in either personality); the device ID if its DFU serial carries one
    dfu       into the DFU bootloader: already there, or the 14400-baud switch; a person only when the
              firmware has no switch (a Core from 2014), and then the board's return is what the station waits for
    check     every image fits the board's memory; the old device key read and fingerprinted (or, with
              device_key = "keep", checked and kept) before anything is written
    flash     the server key block (key + address), the device key, the firmware
    verify    each region read back and compared
    restart   leave DFU; the board comes back at the same USB location running its firmware
    listen    listening mode (28800 baud, else MODE held by a person; polled, as the console does not
              re-enumerate), the device ID with `i`, checked against the bootloader's
    wifi      the profile's network with `w`, each prompt answered once it shows

The registration (device ID + public key) goes to the outbox with the board's result (engine); the journal's
identity record holds the device ID, the key fingerprints and the server key's hash, never the private key.
"""
from __future__ import annotations

import time
from typing import Callable

import usb.util
import usb.core

from station.cloud.registrar import DeviceRegistration
from station.discovery.usb_devices import UsbOpenError, open_usb
from station.families.dfu.errors import DfuError
from station.families.dfu.host import DfuHost
from station.families.dfu.profile import Placement
from station.families.particle.console import DFU_BAUD, LISTEN_BAUD, ConsoleError, normalise_device_id, pulse_baud
from station.families.particle.keys import ParticleKeyError, make_device_key, read_device_key, server_block, \
    slot_fingerprint
from station.families.particle.platforms import BY_USB_ID, PLATFORMS, is_dfu, is_serial
from station.families.particle.profile import ParticleFirmwareSet, ParticleOptions
from station.families.particle.session import BoardState, ParticleSession
from station.model import BoardInfo, PortInfo, StepFailed
from station.profiles import Profile
from station.steps import DeviceContext, FlashImage, Step
from station.text import shown

DFU_PROMPT = "Hold MODE, tap RESET, and release MODE when the LED blinks yellow"
LISTEN_PROMPT = "Hold MODE until the LED blinks blue"
SWITCH_WAIT_S = 4.0  # a board that takes the magic baud is back in its other personality in about a second
BOOT_WAIT_S = 20.0  # leaving DFU to the firmware's USB serial: a reset and the firmware's start
BOOT_POLL_S = 0.5  # how often a board not back yet is looked at: has its bootloader come back instead?
ANSWER_S = 1.0  # a listening board answers `i` at once; a running one never does
WIFI_ANSWER_S = 15.0  # the board saves the credentials before it answers (particle-cli waits 15 s)


def particle_steps(profile: Profile) -> list[Step]:
    steps = [Step("detect", "Detecting", detect, identifies=True), Step("dfu", "Entering DFU mode", enter_dfu),
             Step("check", "Checking", check), Step("flash", "Writing keys and firmware", flash, transfers=True),
             Step("verify", "Reading back", verify, verifies=True), Step("restart", "Restarting", restart),
             Step("listen", "Listening mode", listen, identifies=True)]
    if profile.wifi is not None:
        steps.append(Step("wifi", "Setting Wi-Fi", wifi))
    return steps


# --- the steps ------------------------------------------------------------------------------------------------

def detect(ctx: DeviceContext) -> str:
    port = _here(ctx)
    platform = BY_USB_ID[(port.vid, port.pid)]
    board = ctx.session.board = BoardState(platform)
    ctx.firmware = ctx.profile.firmware.get(platform.chip)
    mode = "in DFU mode" if is_dfu((port.vid, port.pid)) else "running its firmware"
    ctx.board = BoardInfo(family="particle", chip=platform.chip, description=f"{platform.chip} {mode}")
    if ctx.firmware is None:
        wants = " or ".join(c for c in ctx.profile.chips if c in PLATFORMS)
        raise StepFailed(f"Wrong chip: profile wants {wants}, board is a {platform.chip}")
    if _options(ctx).device_key == "new":
        board.new_key = ctx.pool.submit(make_device_key)  # RSA key generation runs while the board is switched
    if not is_dfu((port.vid, port.pid)):
        return f"{ctx.board.description} (USB {port.usb_id})"
    host = _dfu(ctx)
    board.dfu_serial_id = normalise_device_id(_serial_string(host))
    if board.dfu_serial_id:
        ctx.board.description += f", device ID {board.dfu_serial_id}"
        return f"{ctx.board.description} (from its DFU serial)"
    return f"{ctx.board.description}; its bootloader does not report the device ID (asked in listening mode later)"


def enter_dfu(ctx: DeviceContext) -> str:
    port = _here(ctx)
    if is_dfu((port.vid, port.pid)):
        _dfu(ctx)
        return "the board is in DFU mode"
    ctx.session.release()
    try:
        pulse_baud(port.url, DFU_BAUD)
    except ConsoleError as exc:
        raise StepFailed(f"Can't switch the board to DFU mode: {exc}", retryable=True) from None
    back = ctx.await_port(lambda p: is_dfu((p.vid, p.pid)), SWITCH_WAIT_S)
    if back is None and ctx.port_now() is None:
        raise StepFailed(f"The board left the bus after the 14400-baud switch and did not come back within "
                         f"{SWITCH_WAIT_S:g} s")
    if back is None:
        raise StepFailed("The board stayed in its firmware after the 14400-baud switch (firmware before 0.4.0 "
                         "has none)", operator_prompt=DFU_PROMPT, probe=_probe_port(ctx, is_dfu))
    _moved(ctx, back)
    host = _dfu(ctx)
    board = ctx.session.board
    board.dfu_serial_id = normalise_device_id(_serial_string(host))
    return "switched to DFU mode by the 14400-baud request"


def check(ctx: DeviceContext) -> str:
    """Every range in writeable memory of its alt, and the old key read, before anything is erased."""
    host, firmware, board = _ready(ctx)
    options = _options(ctx)
    platform = board.platform
    for p in _writes(ctx, include_key=False):
        _select(host, p.alt, p.name)
        try:
            host.layout.check_write(p.address, len(p.data))
        except DfuError as exc:
            raise StepFailed(f"{p.name} can't be written to this board: {exc}") from exc
    _select(host, platform.key_alt, "the device key")
    try:
        slot = host.read(platform.device_key_at, platform.device_key_slot)
    except DfuError as exc:
        raise StepFailed(f"Reading the board's device key failed: {exc}") from exc
    board.previous_key = slot_fingerprint(slot)
    if options.device_key == "keep":
        try:
            board.device_key = read_device_key(slot)
        except ParticleKeyError as exc:
            raise StepFailed(f"The board's own device key can't be kept: {exc}; use device_key = \"new\"") from None
        kept = "kept"
    else:
        board.device_key = board.new_key.result()
        kept = "replaced by a key made on the station"
    _record(ctx)
    total = sum(len(p.data) for p in _writes(ctx))
    cloud = ctx.profile.cloud_for("particle")
    unregistered = (f"; its key is not registered: [cloud] {cloud.registrar} admits devices by certificate"
                    if cloud is not None and not options.registered else "")
    return (f"{len(_writes(ctx))} ranges ({total} bytes) fit the board's memory; old device key "
            f"{board.previous_key} {kept}{unregistered}")


def flash(ctx: DeviceContext) -> str:
    host, _, _ = _ready(ctx)
    writes = _writes(ctx)
    total = sum(len(p.data) for p in writes)
    done = 0
    ctx.session.progress(0, total)
    for p in writes:
        alt = _select(host, p.alt, p.name)
        base = done
        try:
            host.write(p.address, p.data, lambda n, _t, base=base: ctx.session.progress(base + n, total))
        except DfuError as exc:
            raise StepFailed(f"Writing {p.name} failed: {exc}") from exc
        done += len(p.data)
        ctx.written.append(FlashImage(p.name, p.address, p.data, secret=p.name == DEVICE_KEY,
                                      region=shown(alt.name)))
    return f"wrote {total} bytes: {', '.join(p.name for p in writes)}"


def verify(ctx: DeviceContext) -> str:
    host, _, _ = _ready(ctx)
    for p in _writes(ctx):
        _select(host, p.alt, p.name)
        try:
            back = host.read(p.address, len(p.data))
        except DfuError as exc:
            raise StepFailed(f"Reading back {p.name} failed: {exc}") from exc
        if back != p.data:
            at = next(i for i, (a, b) in enumerate(zip(back, p.data)) if a != b)
            raise StepFailed(f"{p.name} reads back different at {p.address + at:#010x}; the flash may be faulty")
    return f"{len(_writes(ctx))} ranges read back equal"


def restart(ctx: DeviceContext) -> str:
    host, _, _ = _ready(ctx)
    address = host.device.address  # a bootloader that comes back re-enumerates with another one
    try:
        host.leave()
    except DfuError as exc:
        raise StepFailed(f"Leaving DFU mode failed: {exc}") from exc
    finally:
        ctx.session.release()
    deadline = time.monotonic() + BOOT_WAIT_S
    while (back := ctx.await_port(lambda p: is_serial((p.vid, p.pid)), BOOT_POLL_S)) is None:
        now = ctx.port_now()
        if now is not None and is_dfu((now.vid, now.pid)) and _bootloader_address(now) not in (None, address):
            raise StepFailed("The board came back in DFU mode: its bootloader found no firmware it can run; check "
                             "that the profile's firmware (and, on a Photon, its system firmware) is for this board")
        if time.monotonic() > deadline:
            where = "it is still in DFU mode" if now is not None and is_dfu((now.vid, now.pid)) else "it is not back"
            raise StepFailed(f"The board did not start its firmware within {BOOT_WAIT_S:g} s of leaving DFU mode "
                             f"({where}); check that the profile's firmware is for this board")
    _moved(ctx, back)
    return f"the board runs its firmware (USB serial {back.usb_id})"


def listen(ctx: DeviceContext) -> str:
    port = _here(ctx)
    board = ctx.session.board
    if not is_serial((port.vid, port.pid)):
        raise StepFailed(f"The board is not running its firmware (USB {port.usb_id})")
    device_id = _ask_id(ctx)
    how = "was listening"
    if device_id is None:
        ctx.session.release()
        try:
            pulse_baud(_here(ctx).url, LISTEN_BAUD)
        except ConsoleError as exc:
            raise StepFailed(f"Can't switch the board to listening mode: {exc}", retryable=True) from None
        device_id = _ask_id(ctx)
        how = "entered listening mode by the 28800-baud request"
    if device_id is None:
        raise StepFailed("The board did not enter listening mode (its firmware has no 28800-baud switch)",
                         operator_prompt=LISTEN_PROMPT, probe=_probe_listening(ctx))
    if board.dfu_serial_id and board.dfu_serial_id != device_id:
        raise StepFailed(f"The board says device ID {device_id} in listening mode but {board.dfu_serial_id} in "
                         f"DFU mode; it is not the board the station started with")
    board.device_id = device_id
    ctx.board.description = f"{board.platform.chip}, device ID {device_id}"
    if board.platform.has_wifi_mac:
        try:
            ctx.board.mac = ctx.session.console().mac(ANSWER_S) or ""
        except ConsoleError as exc:
            raise StepFailed(f"Listening mode: {exc}", retryable=True) from None
    _record(ctx)
    return f"{how}; device ID {device_id}" + (f", MAC {ctx.board.mac}" if ctx.board.mac else "")


def wifi(ctx: DeviceContext) -> str:
    spec = ctx.profile.wifi
    try:
        said = ctx.session.console().set_wifi(spec.ssid, ctx.psk or "", WIFI_ANSWER_S)
    except ConsoleError as exc:
        raise StepFailed(f"Wi-Fi '{spec.ssid}' not set: {exc}") from None
    return f"network '{spec.ssid}': {said}"


# --- what goes where ------------------------------------------------------------------------------------------

SERVER_KEY, DEVICE_KEY = "server key", "device key"


def _writes(ctx: DeviceContext, include_key: bool = True) -> list[Placement]:
    """Server key block, device key (unless kept), firmware: what this board gets, in the order written."""
    board: BoardState = ctx.session.board
    platform, options = board.platform, _options(ctx)
    writes = [Placement(SERVER_KEY, platform.key_alt, platform.server_key_at,
                        server_block(options.server_key, options.server_address, platform.server_block))]
    if include_key and options.device_key == "new":
        writes.append(Placement(DEVICE_KEY, platform.key_alt, platform.device_key_at, board.device_key.der))
    firmware: ParticleFirmwareSet = ctx.firmware
    return writes + list(firmware.placements)


def _record(ctx: DeviceContext) -> None:
    """The journal's identity record and, once the device ID is known, the registration for the outbox."""
    board: BoardState = ctx.session.board
    options = _options(ctx)
    key = board.device_key
    ctx.key_record = {"particle_device_id": board.device_id, "device_public_key": key.public_pem,
                      "device_key_fingerprint": key.fingerprint,
                      "device_key_source": "board" if options.device_key == "keep" else "station",
                      "previous_key_fingerprint": board.previous_key, "server_key_sha256": options.server_key.sha256,
                      "server_address": options.server_address}
    if board.device_id and options.registered:
        ctx.registration = DeviceRegistration(
            ctx.device_id, cloud_id=board.device_id, public_key_pem=key.public_pem,
            facts={"chip": board.platform.chip, "platform_id": board.platform.platform_id,
                   "device_key_fingerprint": key.fingerprint})


# --- helpers --------------------------------------------------------------------------------------------------

def _options(ctx: DeviceContext) -> ParticleOptions:
    return ctx.profile.options["particle"]


def _here(ctx: DeviceContext) -> PortInfo:
    """The port at the board's USB location now; the session follows it across re-enumerations."""
    port = ctx.port_now()
    if port is None:
        raise StepFailed("The board is not on the hub")
    _moved(ctx, port)
    return port


def _moved(ctx: DeviceContext, port: PortInfo) -> None:
    ctx.port = port
    ctx.session.url = port.url


def _dfu(ctx: DeviceContext) -> DfuHost:
    session: ParticleSession = ctx.session
    return session.dfu()  # StepFailed (retryable) when the bootloader can't be opened


def _ready(ctx: DeviceContext) -> tuple[DfuHost, ParticleFirmwareSet, BoardState]:
    if ctx.board is None or ctx.firmware is None or ctx.session.board is None:
        raise StepFailed("The board was not detected")
    port = _here(ctx)
    if not is_dfu((port.vid, port.pid)):
        raise StepFailed(f"The board left DFU mode (it is USB {port.usb_id} now)")
    return _dfu(ctx), ctx.firmware, ctx.session.board


def _select(host: DfuHost, alt: int | str, what: str):
    try:
        return host.select(alt)
    except DfuError as exc:
        raise StepFailed(f"{what}: {exc}") from exc


def _serial_string(host: DfuHost) -> str:
    index = host.device.iSerialNumber
    if not index:
        return ""
    try:
        return usb.util.get_string(host.device, index) or ""
    except (ValueError, usb.core.USBError):
        return ""  # no serial to read: the device ID comes from listening mode


def _bootloader_address(port: PortInfo) -> int | None:
    """The USB address of the DFU bootloader at `port` now (None if it can't be looked at)."""
    try:
        return open_usb(port.url).address
    except (UsbOpenError, usb.core.USBError):
        return None


def _ask_id(ctx: DeviceContext) -> str | None:
    """`i` over the console: the device ID if the board is listening, None if it does not answer."""
    try:
        return ctx.session.console().device_id(ANSWER_S)
    except ConsoleError as exc:
        raise StepFailed(f"Listening mode: {exc}", retryable=True) from None


def _probe_port(ctx: DeviceContext, wanted: Callable[[tuple[int | None, int | None]], bool]) -> Callable[[], bool]:
    def probe() -> bool:
        now = ctx.port_now()
        return now is not None and wanted((now.vid, now.pid))
    return probe


def _probe_listening(ctx: DeviceContext) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return _ask_id(ctx) is not None
        except StepFailed:
            return False  # the serial is busy or re-enumerating: ask again next time
    return probe
