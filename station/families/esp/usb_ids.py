"""USB-serial bridges and native USB serial in front of ESP chips (PROTOCOLS.md §2)."""
from __future__ import annotations

ESP_SERIAL_IDS: dict[tuple[int, int], str] = {
    (0x10C4, 0xEA60): "CP210x",
    (0x10C4, 0xEA64): "CP2102C",
    (0x10C4, 0xEA70): "CP2105",
    (0x10C4, 0xEA71): "CP2108",
    (0x1A86, 0x7523): "CH340",
    (0x1A86, 0x5523): "CH341",
    (0x1A86, 0x55D4): "CH9102",
    (0x1A86, 0x55D3): "CH343",
    (0x0403, 0x6001): "FT232R",
    (0x0403, 0x6010): "FT2232",
    (0x0403, 0x6011): "FT4232H",
    (0x0403, 0x6014): "FT232H",
    (0x0403, 0x6015): "FT-X",
    (0x303A, 0x1001): "Espressif USB-Serial/JTAG",
    (0x303A, 0x1002): "esp-usb-bridge",
    (0x303A, 0x0002): "ESP32-S2 USB-OTG",
    (0x303A, 0x0009): "ESP32-S3 USB-OTG",
}
