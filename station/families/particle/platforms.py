"""Where a Spark Core and a Photon keep what the station writes (PROTOCOLS §5.1–5.3), and their USB IDs in both
personalities (§2): the DFU bootloader and the run-time firmware's USB serial."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    chip: str  # the name a profile's [[firmware]] chip uses
    platform_id: int  # device-os PLATFORM_ID
    dfu_id: tuple[int, int]  # the DFU bootloader's VID:PID
    serial_id: tuple[int, int]  # the run-time firmware's USB CDC VID:PID
    key_alt: int  # the alt setting that holds the keys (external flash on the Core, the DCT on the Photon)
    server_key_at: int
    server_block: int  # bytes written there: the key's DER, 0xFF fill, the address TLV at SERVER_ADDRESS_AT
    device_key_at: int
    device_key_slot: int  # bytes the firmware reserves for the device's private key
    app_address: int  # where the user application lives on alt 0
    has_wifi_mac: bool  # listening mode's `m` reports the MAC (the Core's CC3000 firmware has no `m`)

    @property
    def usb_ids(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.dfu_id, self.serial_id


SERVER_ADDRESS_AT = 384  # offset of the server address TLV in the server key block (§5.2)
SERVER_ADDRESS_SIZE = 128
SERVER_PORT_AT = 450  # big-endian u16 in the block; 0xFFFF = the default port

CORE = Platform("Spark Core", 0, (0x1D50, 0x607F), (0x1D50, 0x607D), key_alt=1, server_key_at=0x1000,
                server_block=1024, device_key_at=0x2000, device_key_slot=612, app_address=0x08005000,
                has_wifi_mac=False)
PHOTON = Platform("Photon", 6, (0x2B04, 0xD006), (0x2B04, 0xC006), key_alt=1, server_key_at=2082,
                  server_block=512, device_key_at=34, device_key_slot=1216, app_address=0x080A0000,
                  has_wifi_mac=True)

PLATFORMS: dict[str, Platform] = {p.chip: p for p in (CORE, PHOTON)}
BY_USB_ID: dict[tuple[int, int], Platform] = {i: p for p in PLATFORMS.values() for i in p.usb_ids}


def is_dfu(usb_id: tuple[int | None, int | None]) -> bool:
    return usb_id in {p.dfu_id for p in PLATFORMS.values()}


def is_serial(usb_id: tuple[int | None, int | None]) -> bool:
    return usb_id in {p.serial_id for p in PLATFORMS.values()}
