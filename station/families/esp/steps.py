"""The ordered steps that turn one blank board into a provisioned one, per profile.

Each step is a blocking function of the device's context, run in the port's worker thread; the engine adds
timeouts, retries, journaling and events around it. Payloads (Wi-Fi and config NVS) are built in a
background worker while the firmware is flashing, and written in the same session right after it.
"""
from __future__ import annotations

from station.families.esp import esptool_glue
from station.families.esp.identity import (build_identity_image, identity_target_step, read_back_certificate,
                                           read_back_length)
from station.families.esp.image import ImageError, check_app_image
from station.families.esp.payloads import PayloadError
from station.families.esp.payloads.partition_table import Partition, find_partition, parse_partition_table
from station.families.esp.profile import ESP_CHIPS, EspOptions, FirmwareSet
from station.identity import IdentityError
from station.identity.ledger import serial_hex
from station.identity.provision import issue_on_board, plan_identity
from station.model import BoardInfo, StepFailed
from station.profiles import Profile
from station.steps import DeviceContext, FlashImage, Step


def esp_steps(profile: Profile) -> list[Step]:
    esp = options(profile)
    steps = [Step("detect", "Detecting", detect, identifies=True), Step("check", "Checking", check),
             Step("flash", "Flashing", flash, transfers=True)]
    if esp.wifi_in_nvs(profile.wifi) or esp.nvs or profile.identity:
        steps.append(Step("write-data", "Writing data", write_data, transfers=True))
    steps += [Step("verify", "Verifying", verify, verifies=True), Step("reset", "Resetting", reset)]
    if profile.identity and profile.identity.certificate.key_origin == "board":
        steps.append(Step("identity", "Identity", identity_on_board))  # the app the reset booted makes the key
    if profile.wifi and esp.wifi_method == "improv":
        steps.append(Step("wifi", "Joining Wi-Fi", wifi_by_improv))  # the booted app takes the credentials
    return steps


def options(profile: Profile) -> EspOptions:
    return profile.options["esp"]


def detect(ctx: DeviceContext) -> str:
    chips = [c for c in ctx.profile.chips if c in ESP_CHIPS]
    if len(chips) == 1:  # the images are known: deflate them (once per batch) while the board connects
        ctx.pool.submit(esptool_glue.precompress, [i.data for i in ctx.profile.firmware[chips[0]].images])
    # one chip allowed: a board that is another chip is refused before the stub goes up
    ctx.board = ctx.session.connect(options(ctx.profile).baud, chip=chips[0] if len(chips) == 1 else None)
    ctx.firmware = ctx.profile.firmware.get(ctx.board.chip)
    if ctx.firmware is None:
        raise StepFailed(f"Wrong chip: profile wants {' or '.join(chips)}, board is {ctx.board.chip}")
    return f"{ctx.board.description}, MAC {ctx.board.mac}, {ctx.board.flash_size // (1024 * 1024)} MB flash"


# (image SHA-256, chip, flash size, offset) that passed check_app_image: a batch's boards share their
# firmware, and parsing a 1 MiB app for each of 24 boards costs the GIL 7 ms a time
_images_that_fit: set[tuple[str, str, int, int]] = set()


def check(ctx: DeviceContext) -> str:
    """Everything that can refuse the board is checked before the first byte is written."""
    board, firmware = _ready(ctx)
    for image in firmware.images:
        end = image.offset + len(image.data)
        if board.flash_size and end > board.flash_size:
            raise StepFailed(f"{image.name} ({len(image.data)} bytes at {image.offset:#x}) does not fit the "
                             f"board's {board.flash_size // 1024} KiB flash")
        fit = (image.sha256, board.chip, board.flash_size or 1 << 30, image.offset)
        if image.kind in ("bootloader", "app") and fit not in _images_that_fit:
            try:
                check_app_image(image.data, *fit[1:], image.name)
            except ImageError as exc:
                raise StepFailed(str(exc)) from exc
            _images_that_fit.add(fit)
    layout = options(ctx.profile).flash_layout
    if layout is not None and board.flash_size and board.flash_size < layout.flash_size:
        raise StepFailed(f"The {layout.name} flash layout needs {layout.flash_size // (1024 * 1024)} MB of flash; "
                         f"this board has {board.flash_size // 1024} KiB")
    if ctx.profile.identity is not None:
        assert ctx.ledger is not None  # the engine refuses an identity profile without a CA
        store, partition = identity_target_step(options(ctx.profile), firmware)
        ctx.identity = plan_identity(ctx.profile.identity, board, ctx.ledger, ctx.reprovision, store, partition,
                                    ctx.device_id)
    if options(ctx.profile).wifi_in_nvs(ctx.profile.wifi) or options(ctx.profile).nvs or ctx.identity:
        ctx.payloads = ctx.pool.submit(build_payloads, ctx)
    identity = f"; identity {ctx.identity.subject_serial}" if ctx.identity else ""
    return f"{len(firmware.images)} images for {board.chip} fit and match{identity}"


def flash(ctx: DeviceContext) -> str:
    _, firmware = _ready(ctx)
    images = [FlashImage(i.name, i.offset, i.data, signer=i.signer) for i in firmware.images]
    ctx.session.write([(i.offset, i.data) for i in images])
    ctx.written += images
    return f"wrote {sum(len(i.data) for i in images)} bytes in {len(images)} images"


def write_data(ctx: DeviceContext) -> str:
    if ctx.payloads is None:
        raise StepFailed("Payloads were not prepared (check step did not run)")
    try:
        images: list[FlashImage] = ctx.payloads.result()
    except (PayloadError, IdentityError) as exc:
        raise StepFailed(str(exc)) from exc
    ctx.session.write([(i.offset, i.data) for i in images])
    ctx.written += images
    return ", ".join(f"{i.name} at {i.offset:#x}" for i in images)


def verify(ctx: DeviceContext) -> str:
    everything = options(ctx.profile).verify == "all"
    asked = ctx.session.verify([(i.offset, i.data) for i in ctx.written], everything=everything)
    detail = f"{len(ctx.written)} regions match their MD5 ({asked} asked again, the rest checked as written)"
    plan = ctx.identity
    if plan is not None and plan.record:
        part = plan.target
        written = next(i for i in ctx.written if i.offset == part.offset)
        data = ctx.session.read(part.offset, read_back_length(plan.store, written.data, options(ctx.profile)))
        try:
            cert = read_back_certificate(plan, data, options(ctx.profile))
        except (PayloadError, KeyError, ValueError) as exc:
            raise StepFailed(f"Verify failed: the identity read back from {part.name} does not parse ({exc})") \
                from exc
        if serial_hex(cert) != plan.record["certificate_serial"]:
            raise StepFailed(f"Verify failed: {part.name} holds certificate {serial_hex(cert)}, not the one issued")
        detail += f"; identity read back from {part.name} ({len(data) // 1024} KiB)"
    return detail


def reset(ctx: DeviceContext) -> str:
    ctx.session.reset()
    return "reset into the app"


def identity_on_board(ctx: DeviceContext) -> str:
    board, _ = _ready(ctx)
    assert ctx.identity is not None and ctx.ca is not None and ctx.ledger is not None
    with ctx.session.app_port() as port:
        return issue_on_board(ctx.identity, ctx.ca, ctx.ledger, ctx.device_id, board, port)


def wifi_by_improv(ctx: DeviceContext) -> str:
    """Send [wifi] to the booted firmware by Improv serial and check that it joined; the URL it reports is recorded
    in this step's detail. The passphrase is sent and nothing else is done with it."""
    from station.families.esp.improv import ImprovClient, ImprovError

    wifi, esp = ctx.profile.wifi, options(ctx.profile)
    assert wifi is not None  # the step is there for a profile with [wifi]
    if not ctx.psk:
        raise StepFailed(f"No Wi-Fi passphrase for '{wifi.ssid}' was read for this batch; set it where [wifi] says")
    with ctx.session.app_port() as port:
        client = ImprovClient(port)
        try:
            client.wait_ready(esp.improv_wait)
            device = client.device_info()
            urls = client.send_wifi(wifi.ssid, ctx.psk)
        except ImprovError as exc:
            raise StepFailed(str(exc)) from exc
    firmware = f"; firmware {' '.join(device[:2])}" if device else ""
    where = f"; it reports {', '.join(urls)}" if urls else "; it reports no URL"
    return f"joined '{wifi.ssid}' by Improv{where}{firmware}"


def build_payloads(ctx: DeviceContext) -> list[FlashImage]:
    """Everything written as data, built in memory while the firmware flashes: the NVS partition (Wi-Fi
    credentials and the profile's namespaces) and, with the key made on the host, the identity partition."""
    from station.families.esp.payloads.nvs import build_nvs_image, build_wifi_nvs

    profile, esp = ctx.profile, options(ctx.profile)
    images = []
    if esp.wifi_in_nvs(profile.wifi) or esp.nvs:
        part = _partition(ctx, esp.wifi_partition)
        if esp.wifi_in_nvs(profile.wifi):
            image = build_wifi_nvs(profile.wifi.ssid, ctx.psk or "", part.size, extra=esp.nvs_values())
        else:
            image = build_nvs_image(esp.nvs_values(), part.size)
        images.append(FlashImage(part.name, part.offset, image, secret=esp.wifi_in_nvs(profile.wifi)))
    plan = ctx.identity
    if plan is not None and plan.spec.certificate.key_origin == "host":
        assert ctx.ca is not None and ctx.ledger is not None
        image = build_identity_image(plan, ctx.ca, ctx.ledger, ctx.device_id, esp)
        images.append(FlashImage(plan.target.name, plan.target.offset, image, secret=True))
    return images


def _partition(ctx: DeviceContext, name: str) -> Partition:
    """A partition of the board's firmware; the profile loader has checked that it exists."""
    _, firmware = _ready(ctx)
    assert firmware.partition_table is not None
    part = find_partition(parse_partition_table(firmware.partition_table.data), name=name)
    assert part is not None
    return part


def _ready(ctx: DeviceContext) -> tuple[BoardInfo, FirmwareSet]:
    if ctx.board is None or ctx.firmware is None:
        raise StepFailed("The board was not detected")
    return ctx.board, ctx.firmware
